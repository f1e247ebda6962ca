"""Byte-level BPE (GPT-2 style) from scratch: fast training, tiktoken-identical encoding, both file forms.

    from llmpath.tokenizers import Tokenizer, load
    tok = Tokenizer.train(text, vocab_size=4096)          # pattern="gpt4" for the cl100k-style regex
    tok.encode("To be, or not to be")                     # == tok.to_tiktoken().encode(...)
    tok.save("tok/"); load("tok/")

Command line: `llmpath tokenizer train --data shakespeare --vocab-size 4096 --out tok/`,
`llmpath tokenizer encode --tok tok/ "text"`. Tutorial: docs/tutorials/05a_tokenization.md.
"""

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


def train_gpt_tokenizer(text: str, vocab_size: int) -> Tokenizer:
    """The tokenizer a GPT run trains: GPT-2 pattern, <|endoftext|> and the chat tokens inside vocab_size."""
    return Tokenizer.train(text, vocab_size, pattern="gpt2", special_tokens=SPECIAL_TOKENS)


__all__ = [
    "GPT2_PATTERN", "GPT4_PATTERN", "PATTERNS", "CHAT_TOKENS", "ENDOFTEXT", "SPECIAL_TOKENS", "SpecialTokenError",
    "Tokenizer", "train", "train_fast", "train_naive", "train_gpt_tokenizer", "get_stats", "merge", "pretokenize",
    "ranks_from_merges", "bpe_encode", "bpe_encode_naive", "save", "load", "save_tiktoken", "load_tiktoken",
    "save_hf", "load_hf", "from_hf_files", "from_state_dict",
]
