"""Tokenizers from scratch: byte-level BPE (GPT-2 style) and WordPiece (BERT), each id-for-id with its reference.

    from llmpath.tokenizers import Tokenizer, WordPiece, load
    tok = Tokenizer.train(text, vocab_size=4096)          # pattern="gpt4" for the cl100k-style regex
    tok.encode("To be, or not to be")                     # == tok.to_tiktoken().encode(...)
    tok.save("tok/"); load("tok/")
    wp = WordPiece.train(lines, vocab_size=8000)          # == transformers.BertTokenizer on wp.save("wp/")
    wp.encode("今天的菜很好吃"); load("wp/")

The shared protocol (TextTokenizer below), which BPE's Tokenizer, WordPiece and llmpath.data.CharTokenizer all
follow: encode(text) -> list[int], decode(ids) -> str, vocab_size (embedding rows a model needs),
state_dict() -> a JSON-ready dict whose "kind" says which one it is ("bpe", "wordpiece", "char"), save(path).
from_state_dict(d) rebuilds any of them: runs store state_dict() in every checkpoint.

Command line: `llmpath tokenizer train --data shakespeare --vocab-size 4096 --out tok/`,
`llmpath tokenizer encode --tok tok/ "text"`. Tutorial: docs/tutorials/05a_tokenization.md.
"""

from typing import Iterable, Protocol, runtime_checkable

from llmpath.tokenizers.bpe import (
    GPT2_PATTERN,
    GPT4_PATTERN,
    PATTERNS,
    bpe_encode,
    bpe_encode_naive,
    get_stats,
    merge,
    pretokenize,
    ranks_from_merges,
    train_fast,
    train_naive,
)
from llmpath.tokenizers.files import from_hf_files, from_state_dict, load, load_hf, load_tiktoken, save, save_hf, save_tiktoken
from llmpath.tokenizers.tokenizer import CHAT_TOKENS, ENDOFTEXT, SPECIAL_TOKENS, SpecialTokenError, Tokenizer, train
from llmpath.tokenizers.wordpiece import WordPiece, basic_tokenize, basic_tokenize_naive


@runtime_checkable
class TextTokenizer(Protocol):
    """What models, runs and the CLI may rely on, whichever tokenizer they hold."""

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def state_dict(self) -> dict: ...

    def save(self, path) -> object: ...


def train_gpt_tokenizer(text: str, vocab_size: int, pattern: str = "gpt2") -> Tokenizer:
    """The tokenizer a GPT run trains: GPT-2 pattern (or another of PATTERNS), <|endoftext|> and the chat tokens
    inside vocab_size."""
    return Tokenizer.train(text, vocab_size, pattern=pattern, special_tokens=SPECIAL_TOKENS)


__all__ = [
    "GPT2_PATTERN", "GPT4_PATTERN", "PATTERNS", "CHAT_TOKENS", "ENDOFTEXT", "SPECIAL_TOKENS", "SpecialTokenError",
    "Tokenizer", "train", "train_fast", "train_naive", "train_gpt_tokenizer", "get_stats", "merge", "pretokenize",
    "ranks_from_merges", "bpe_encode", "bpe_encode_naive", "save", "load", "save_tiktoken", "load_tiktoken",
    "save_hf", "load_hf", "from_hf_files", "from_state_dict", "WordPiece", "basic_tokenize", "basic_tokenize_naive",
    "TextTokenizer",
]
