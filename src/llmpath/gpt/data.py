"""Text and tokenizers for GPT runs: which corpus, which tokenizer, and ids for train/val.

    text = lm_text("hsk-pairs")             # a pairs dataset gives its English side, one sentence a line
    tok = make_tokenizer("char", text)      # or "bpe" (the tokenizer stage's byte-level BPE)
    ids = encode_known(tok, text)           # drops characters a char vocabulary lacks (finetuning)
"""

from __future__ import annotations

import numpy as np

from llmpath.common import log
from llmpath.config import ConfigError
from llmpath.data import CharTokenizer, load_pairs, load_text
from llmpath.data.corpora import DATASETS


def lm_text(name: str) -> str:
    """The text a language model trains on: a text corpus, or the English side of a pairs dataset."""
    if DATASETS.get(name) is not None and DATASETS[name].kind == "pairs":
        return "\n".join(tgt for _, tgt in load_pairs(name)) + "\n"
    return load_text(name)


def _bpe():
    """The tokenizer stage's byte-level BPE module (llmpath.tokenizers)."""
    try:
        import llmpath.tokenizers as bpe
    except ImportError:
        raise ConfigError("--tokenizer=bpe needs the byte-level BPE of the tokenizer stage (llmpath.tokenizers), "
                          "which this install lacks; use --tokenizer=char") from None
    return bpe


def make_tokenizer(kind: str, text: str, vocab_size: int = 1024, pattern: str = "gpt2"):
    """A tokenizer trained on `text`: 'char' (every character seen) or 'bpe' (byte-level BPE, split by `pattern`)."""
    if kind == "char":
        return CharTokenizer.train(text)  # no <unk>: a prompt character outside it is a clear error
    if kind == "bpe":
        return _bpe().train_gpt_tokenizer(text, vocab_size, pattern)
    raise ConfigError(f"unknown tokenizer '{kind}'; choose one of: char, bpe")


def tokenizer_from_state(d: dict):
    if d.get("kind") == "char":
        return CharTokenizer.from_state_dict(d)
    return _bpe().from_state_dict(d)


def tokenizer_from_hf_files(folder) -> object:
    """The GPT-2 tokenizer of a Hugging Face folder (vocab.json + merges.txt)."""
    return _bpe().from_hf_files(folder)


def encode_special(tok, text: str) -> list[int]:
    """Ids of text where special tokens such as <|endoftext|> are single tokens (a BPE option; chars have none)."""
    return tok.encode(text, allowed_special="all") if getattr(tok, "special_tokens", None) else tok.encode(text)


def known_text(tok, text: str) -> str:
    """text without the characters a char vocabulary lacks (a byte-level BPE encodes anything)."""
    if isinstance(tok, CharTokenizer) and not tok.unk:
        return "".join(c for c in text if c in tok.stoi)
    return text


def encode_known(tok, text: str) -> np.ndarray:
    """Token ids of text; characters a char vocabulary lacks are dropped (and counted in the log)."""
    kept = known_text(tok, text)
    if len(kept) < len(text):
        missing = sorted(set(text) - set(kept))
        log.info(f"dropped {len(text) - len(kept):,} characters the vocabulary lacks: {''.join(missing[:30])!r}"
                 + (" ..." if len(missing) > 30 else ""))
    return np.asarray(tok.encode(kept), dtype=np.int64)
