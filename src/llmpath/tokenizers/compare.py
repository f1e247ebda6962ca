"""Checks against the references: tiktoken token for token, and a Hugging Face `tokenizers` BPE side by side.

    text = corpus_text("chinese-reviews")              # any dataset name: text, classification or pairs
    same_as_tiktoken(tok, held_out)                   # -> (True, len) or (False, first differing index)
    row = compare_with_hf(train_text, held_out, 4096) # overlap and tokens per character of both
"""

from __future__ import annotations

import time

from llmpath.data import load_classification, load_pairs, load_text
from llmpath.data.corpora import DATASETS, DataError
from llmpath.tokenizers.files import from_unicode
from llmpath.tokenizers.tokenizer import SPECIAL_TOKENS, Tokenizer


def corpus_text(name: str, max_chars: int = 0) -> str:
    """Training text of any dataset: a text corpus, the texts of a classification set, or both sides
    of a pairs set (one sentence a line). hsk-pairs gives Chinese then English lines."""
    info = DATASETS.get(name)
    if info is None or info.kind == "text":
        text = load_text(name)
    elif info.kind == "classification":
        text = "\n".join(load_classification(name).texts) + "\n"
    else:
        text = "".join(f"{a}\n{b}\n" for a, b in load_pairs(name))
    if not text:
        raise DataError(f"dataset '{name}' holds no text")
    return text[:max_chars] if max_chars > 0 else text


def chinese_text() -> str:
    """The Chinese text we have: the reviews, then the Chinese side of hsk-pairs (~1.33M characters)."""
    return corpus_text("chinese-reviews") + "\n".join(zh for zh, _ in load_pairs("hsk-pairs")) + "\n"


def same_as_tiktoken(tok: Tokenizer, text: str, **kwargs) -> tuple[bool, int]:
    """(True, n tokens) if our ids equal tiktoken's with the same ranks, else (False, first differing index)."""
    ours, ref = tok.encode(text, **kwargs), tok.to_tiktoken().encode(text, **kwargs)
    if ours == ref:
        return True, len(ours)
    return False, next((i for i, (a, b) in enumerate(zip(ours, ref)) if a != b), min(len(ours), len(ref)))


def train_hf(text: str, vocab_size: int, special_tokens=SPECIAL_TOKENS, chunk_chars: int = 10_000):
    """A Hugging Face `tokenizers` byte-level BPE (GPT-2 regex, no prefix space) on the same text."""
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=0, show_progress=False,
                                  special_tokens=list(special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator((text[i:i + chunk_chars] for i in range(0, len(text), chunk_chars)), trainer)
    return hf


def hf_token_bytes(hf, special_tokens=SPECIAL_TOKENS) -> set[bytes]:
    return {from_unicode(t) for t in hf.get_vocab() if t not in special_tokens}


def compare_with_hf(train_text: str, held_out: str, vocab_size: int, pattern: str = "gpt2",
                    tok: Tokenizer | None = None) -> dict:
    """Train ours (unless given) and HF's on train_text; vocabulary overlap and tokens per character on held_out."""
    t0 = time.perf_counter()
    tok = tok or Tokenizer.train(train_text, vocab_size, pattern)
    t1 = time.perf_counter()
    row = {"vocab_size": vocab_size, "ours_s": t1 - t0,
           "ours_tpc": len(tok.encode_ordinary(held_out)) / max(len(held_out), 1)}
    try:
        hf = train_hf(train_text, vocab_size)
    except ImportError:
        return row  # `tokenizers` is a dev dependency: the comparison is skipped without it
    row["hf_s"] = time.perf_counter() - t1
    ours, theirs = set(tok.mergeable_ranks), hf_token_bytes(hf)
    row.update(hf_tpc=len(hf.encode(held_out).ids) / max(len(held_out), 1), ours_n=len(ours), hf_n=len(theirs),
               overlap=len(ours & theirs) / len(ours | theirs),
               shared=len(ours & theirs))
    return row
