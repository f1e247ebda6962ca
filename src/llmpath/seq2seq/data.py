"""Translation data: tokenizers, vocabularies, the fixed hsk-pairs split, padded batches, a synthetic task.

    data = load_translation("hsk-pairs", direction="zh-en")      # 90/5/5 split, seeded
    batches = make_batches(data.train, data.src_vocab, data.tgt_vocab, batch_size=64, seed=0)
    b = batches(0)   # {"src": (B,S), "src_len": (B,), "tgt_in": (B,T) <bos>..., "tgt_out": (B,T) ...<eos>}

Chinese is split into characters (whitespace dropped), English into lower-cased words with
punctuation split off. Vocabularies are built from the training split only; ids 0-3 are
`<pad> <bos> <eos> <unk>`. The stage-4 Transformer imports this module for the same split.

The synthetic task (`synthetic_pairs`) maps a date written as "2024-03-15" to "15 march 2024"
(with digits as separate tokens): it needs reordering, so a model without attention has to squeeze
the whole source into one vector while an attention model can look up each field.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from llmpath.data.batching import EpochBatches, pad_sequences, sequential_batches
from llmpath.data.corpora import DataError, load_pairs, split_indices

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
DIRECTIONS = ("zh-en", "en-zh")
SPLIT = (0.9, 0.05, 0.05)

# ------------------------------------------------------------------------------ tokenizers

_EN_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


def tokenize_zh(s: str) -> list[str]:
    """Characters, whitespace dropped. tokenize_zh('我想 喝水。') -> ['我', '想', '喝', '水', '。']"""
    return [c for c in s if not c.isspace()]


def tokenize_en(s: str) -> list[str]:
    """Lower-cased words, punctuation split off; "n't"/"'s" stay on their word.

    tokenize_en("Thank you! You're welcome.") -> ['thank', 'you', '!', "you're", 'welcome', '.']
    """
    s = s.lower().replace("\u2019", "'").replace("\u2018", "'")
    return _EN_TOKEN.findall(s)


_NO_SPACE_BEFORE = set(".,!?;:%)]}\"'")
_NO_SPACE_AFTER = set("([{$\"")


def detokenize_en(tokens: Sequence[str]) -> str:
    """Words joined by spaces, no space before punctuation; the first letter capitalised.

    detokenize_en(['thank', 'you', '!', 'you', 'are', 'welcome', '.']) -> 'Thank you! You are welcome.'
    """
    out = ""
    for i, t in enumerate(tokens):
        if i > 0 and t not in _NO_SPACE_BEFORE and out[-1:] not in _NO_SPACE_AFTER:
            out += " "
        out += t
    # capitalise sentence starts
    return re.sub(r"(^|[.!?]\s+)([a-z])", lambda m: m.group(1) + m.group(2).upper(), out)


def detokenize_zh(tokens: Sequence[str]) -> str:
    """Characters joined without spaces (a run of Latin words keeps single spaces between words)."""
    out = ""
    for t in tokens:
        if out and re.match(r"[A-Za-z0-9]", t) and re.match(r"[A-Za-z0-9]", out[-1]):
            out += " "
        out += t
    return out




# ------------------------------------------------------------------------------ vocabulary

class Vocab:
    """Token <-> id map with `<pad> <bos> <eos> <unk>` at 0-3."""

    def __init__(self, itos: Sequence[str] | None = None):
        self.itos: list[str] = list(itos) if itos is not None else list(SPECIALS)
        if self.itos[:4] != SPECIALS:
            raise ValueError(f"a Vocab must start with {SPECIALS}")
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(self.itos)}

    @classmethod
    def build(cls, token_lists: Sequence[Sequence[str]], min_freq: int = 1, max_size: int | None = None) -> "Vocab":
        """Most frequent tokens first (ties alphabetical); `max_size` counts the 4 specials."""
        counts = Counter(t for toks in token_lists for t in toks)
        items = sorted((t for t, c in counts.items() if c >= min_freq and t not in SPECIALS), key=lambda t: (-counts[t], t))
        if max_size is not None:
            items = items[: max(0, max_size - len(SPECIALS))]
        return cls(SPECIALS + items)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: Sequence[str], add_bos: bool = False, add_eos: bool = False) -> list[int]:
        ids = [self.stoi.get(t, UNK) for t in tokens]
        return ([BOS] if add_bos else []) + ids + ([EOS] if add_eos else [])

    def decode(self, ids) -> list[str]:
        """Tokens up to the first EOS; PAD and BOS skipped."""
        out = []
        for i in (ids.tolist() if hasattr(ids, "tolist") else ids):
            i = int(i)
            if i == EOS:
                break
            if i in (PAD, BOS):
                continue
            out.append(self.itos[i] if 0 <= i < len(self.itos) else SPECIALS[UNK])
        return out

    def state_dict(self) -> dict:
        return {"itos": list(self.itos)}

    @classmethod
    def from_state_dict(cls, d: dict) -> "Vocab":
        return cls(d["itos"])


# ------------------------------------------------------------------------------ examples

@dataclass
class Example:
    src_text: str
    tgt_text: str
    src_tokens: list[str]
    tgt_tokens: list[str]


@dataclass
class TranslationData:
    train: list[Example]
    val: list[Example]
    test: list[Example]
    src_vocab: Vocab
    tgt_vocab: Vocab
    src_lang: str
    tgt_lang: str
    name: str = ""
    meta: dict = field(default_factory=dict)

    def tokenize_src(self, s: str) -> list[str]:
        return TOKENIZE[self.src_lang](s)

    def detokenize_tgt(self, tokens: Sequence[str]) -> str:
        return DETOKENIZE[self.tgt_lang](tokens)


def _langs(direction: str) -> tuple[str, str]:
    if direction not in DIRECTIONS:
        raise DataError(f"unknown direction '{direction}'; choose one of: {', '.join(DIRECTIONS)}")
    a, b = direction.split("-")
    return a, b


def load_translation(data: str = "hsk-pairs", direction: str = "zh-en", seed: int = 0, min_freq: int = 1,
                     max_vocab: int | None = None) -> TranslationData:
    """The fixed 90/5/5 split (llmpath.data.split_indices, seeded) with vocabularies from train only.

    hsk-pairs: the 4,289 pairs left after dropping 65 whose English side is the word "placeholder".

    `data` is 'hsk-pairs' (Chinese, English), 'dates' (the synthetic task) or a .csv/.tsv/.jsonl file of
    src,tgt pairs written Chinese first (the direction flag swaps them).
    """
    src_lang, tgt_lang = _langs(direction)
    if data == "dates":
        pairs = [(a, b) for a, b in synthetic_pairs(6000, seed=1234)]
        src_lang = tgt_lang = "dates"
        tok_src = tok_tgt = _tokenize_dates
    else:
        pairs = load_pairs(data)
        if data == "hsk-pairs":  # 65 pairs carry the stand-in translation "placeholder": not a translation
            pairs = [(a, b) for a, b in pairs if b.strip().lower() != "placeholder"]
        if direction == "en-zh":
            pairs = [(b, a) for a, b in pairs]
        tok_src, tok_tgt = TOKENIZE[src_lang], TOKENIZE[tgt_lang]
    examples = [Example(a, b, tok_src(a), tok_tgt(b)) for a, b in pairs]
    tr, va, te = split_indices(len(examples), SPLIT, seed=seed)
    train, val, test = ([examples[i] for i in idx] for idx in (tr, va, te))
    src_vocab = Vocab.build([e.src_tokens for e in train], min_freq, max_vocab)
    tgt_vocab = Vocab.build([e.tgt_tokens for e in train], min_freq, max_vocab)
    return TranslationData(train, val, test, src_vocab, tgt_vocab, src_lang, tgt_lang, name=data,
                           meta={"direction": direction, "seed": seed, "sizes": [len(train), len(val), len(test)]})


# ------------------------------------------------------------------------------ batches

def collate(examples: Sequence[Example], src_vocab: Vocab, tgt_vocab: Vocab) -> dict[str, torch.Tensor]:
    """Padded tensors: src (B,S), src_len (B,), tgt_in = <bos> y (B,T), tgt_out = y <eos> (B,T)."""
    src = [src_vocab.encode(e.src_tokens) or [UNK] for e in examples]
    tgt = [tgt_vocab.encode(e.tgt_tokens) for e in examples]
    return {"src": pad_sequences(src, PAD), "src_len": torch.tensor([len(s) for s in src], dtype=torch.long),
            "tgt_in": pad_sequences([[BOS] + t for t in tgt], PAD), "tgt_out": pad_sequences([t + [EOS] for t in tgt], PAD)}


def make_batches(examples: Sequence[Example], src_vocab: Vocab, tgt_vocab: Vocab, batch_size: int,
                 seed: int = 0) -> EpochBatches:
    """Shuffled training batches; batch i is a pure function of (seed, i) (exact resume)."""
    examples = list(examples)
    return EpochBatches(len(examples), batch_size, lambda idx: collate([examples[i] for i in idx], src_vocab, tgt_vocab),
                        seed=seed)


def eval_batches(examples: Sequence[Example], src_vocab: Vocab, tgt_vocab: Vocab, batch_size: int = 128) -> list[dict]:
    """Batches covering `examples` in order (for loss, decoding and BLEU)."""
    examples = list(examples)
    return [collate([examples[i] for i in idx], src_vocab, tgt_vocab) for idx in sequential_batches(len(examples), batch_size)]


# ------------------------------------------------------------------------------ synthetic task

MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december"]


def _tokenize_dates(s: str) -> list[str]:
    """Digits one by one, words whole: '2024-03-15' -> ['2','0','2','4','-','0','3','-','1','5']."""
    return re.findall(r"[a-z]+|\S", s.lower())


def synthetic_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Date-format conversion: ('2024-03-15', '15 march 2024'), days and years drawn uniformly."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        y, m, d = int(rng.integers(1900, 2100)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
        out.append((f"{y:04d}-{m:02d}-{d:02d}", f"{d} {MONTHS[m - 1]} {y}"))
    return out


def _detokenize_dates(tokens: Sequence[str]) -> str:
    """['2', '8', 'december', '2', '0', '9', '5'] -> '28 december 2095'"""
    return re.sub(r"(?<=\d) (?=\d)", "", " ".join(tokens))


TOKENIZE = {"zh": tokenize_zh, "en": tokenize_en, "dates": _tokenize_dates}
DETOKENIZE = {"zh": detokenize_zh, "en": detokenize_en, "dates": _detokenize_dates}
