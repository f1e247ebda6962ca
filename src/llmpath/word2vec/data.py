"""Corpora as sentences of words, the vocabulary, subsampling, the noise table and window batches.

    sents = corpus_sentences("wiki")                   # [['anarchism', 'is', 'a', ...], ...]
    vocab = Vocab.build(sents, min_count=5)
    batches = WindowBatches(vocab.encode(sents), vocab, window=5, batch_size=2048, sample=1e-3)
    batches(0)                                         # WindowBatch(centers (B,), contexts (B, 2w), mask (B, 2w))

Everything that word2vec does to its data before the model sees a word happens here, vectorised with NumPy:
drop rare words (min count), drop frequent ones at random (subsampling), give each centre word a window of
random width (dynamic window), and draw negatives from a table of the unigram distribution raised to 3/4.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import torch

from llmpath.config import ConfigError
from llmpath.data.corpora import DataError, load_classification

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def english_words(text: str) -> list[str]:
    """Lower-cased words and numbers; punctuation dropped. english_words("The King's 2 sons.") -> ['the', "king's", '2', 'sons']"""
    return _WORD.findall(text.lower())


@lru_cache(maxsize=2)
def _jieba():
    import jieba

    jieba.setLogLevel(60)  # its "building prefix dict" lines are not ours to print
    return jieba


_HAN = re.compile(r"[\u4e00-\u9fff]")


def chinese_words(text: str) -> list[str]:
    """jieba's segmentation, punctuation and spaces dropped. chinese_words("今天的菜很好吃！") -> ['今天', '的', '菜', '很', '好吃']"""
    return [w for w in _jieba().lcut(text) if _HAN.search(w) or w.isalnum()]


def chinese_chars(text: str) -> list[str]:
    """One token per Chinese character (the comparison for segmentation). chinese_chars("好吃！") -> ['好', '吃']"""
    return [c for c in text if _HAN.match(c)]


@lru_cache(maxsize=6)
def _corpus(name: str) -> tuple[tuple[str, ...], ...]:
    from llmpath.bert.data import shakespeare_documents, wiki_documents  # stage 6 already reads and cleans them

    if name == "wiki":
        sents = (english_words(s) for doc in wiki_documents() for s in doc)
    elif name == "shakespeare":
        sents = (english_words(line) for doc in shakespeare_documents() for line in doc)
    elif name in ("chinese-words", "chinese-chars"):
        cut = chinese_words if name == "chinese-words" else chinese_chars
        sents = (cut(t) for t in load_classification("chinese-reviews").texts)
    else:
        raise ConfigError(f"unknown corpus '{name}'; choose from: {', '.join(CORPORA)}")
    return tuple(tuple(s) for s in sents if len(s) >= 2)


CORPORA = {"wiki": "English Wikipedia sample from gensim's test data (~436k words)",
           "shakespeare": "Shakespeare's plays, one line a sentence (~837k words)",
           "chinese-words": "the Chinese reviews cut into words by jieba",
           "chinese-chars": "the Chinese reviews, one token per character"}


def corpus_sentences(names: str) -> list[list[str]]:
    """Sentences of words of one or more comma-separated corpora. corpus_sentences("wiki")[0][:3] -> ['anarchism', 'is', 'a']"""
    parts = [n.strip() for n in names.split(",") if n.strip()]
    if not parts:
        raise ConfigError(f"no corpus given; choose from: {', '.join(CORPORA)}")
    if bad := [n for n in parts if n not in CORPORA]:
        raise ConfigError(f"unknown corpus '{bad[0]}'; choose from: {', '.join(CORPORA)}")
    return [list(s) for n in parts for s in _corpus(n)]


# ---------------------------------------------------------------------------- vocabulary

@dataclass
class Vocab:
    """Words with at least `min_count` occurrences, most frequent first (ties: first seen first)."""

    words: list[str]
    counts: np.ndarray  # (V,) int64

    @classmethod
    def build(cls, sentences, min_count: int = 5) -> "Vocab":
        """Vocab.build([['a', 'b', 'a']], min_count=2).words -> ['a']"""
        c = Counter(w for s in sentences for w in s)
        kept = [(w, n) for w, n in c.most_common() if n >= min_count]  # most_common keeps insertion order on ties
        if len(kept) < 2:
            raise DataError(f"only {len(kept)} word(s) occur at least {min_count} times; lower --min_count or use more text")
        return cls([w for w, _ in kept], np.array([n for _, n in kept], dtype=np.int64))

    def __post_init__(self) -> None:
        self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, sentences) -> list[np.ndarray]:
        """Word ids of each sentence, words outside the vocabulary dropped (as word2vec does before windowing)."""
        idx = self.index
        return [np.array([idx[w] for w in s if w in idx], dtype=np.int64) for s in sentences]

    def state_dict(self) -> dict:
        return {"words": list(self.words), "counts": self.counts.tolist()}


def vocab_from_state(state: dict) -> Vocab:
    return Vocab(list(state["words"]), np.array(state["counts"], dtype=np.int64))


def keep_probs(counts: np.ndarray, sample: float) -> np.ndarray:
    """Probability of keeping each occurrence of a word (word2vec's subsampling of frequent words).

    With f = count / total: keep = (sqrt(f / sample) + 1) * sample / f, capped at 1; sample=0 keeps all.
    A word at f = sample is kept with probability 1; one 100 times as frequent with about 0.11.
    """
    if sample <= 0:
        return np.ones(len(counts))
    f = counts / counts.sum()
    return np.minimum(1.0, (np.sqrt(f / sample) + 1) * sample / f)


def noise_table(counts: np.ndarray, power: float = 0.75, size: int = 1_000_000) -> np.ndarray:
    """Word ids repeated in proportion to count**power: a uniform draw from it is a negative sample.

    noise_table(np.array([8, 1]), size=10) -> [0 0 0 0 0 0 0 0 1 1] (8**0.75 : 1 = 4.8 : 1; every word at least once)
    """
    p = counts.astype(np.float64) ** power
    reps = np.maximum(1, np.round(p / p.sum() * size)).astype(np.int64)
    return np.repeat(np.arange(len(counts)), reps)


# --------------------------------------------------------------------------- window batches

class WindowBatch(NamedTuple):
    """B centre words, each with up to 2w context words (mask marks the real ones) and K noise words."""

    centers: torch.Tensor  # (B,) int64
    contexts: torch.Tensor  # (B, 2w) int64, 0 where mask is False
    mask: torch.Tensor  # (B, 2w) bool
    negatives: torch.Tensor  # (B, K) int64, or (B, 2w, K) with a set per pair; unused by the full softmax


def windows(ids: np.ndarray, starts: np.ndarray, window: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Context ids (N, 2w) and mask (N, 2w) of every position of a stream of sentences.

    `starts[i]` is the index of the first word of position i's sentence: windows never cross sentences.
    Each position draws its own width b in 1..w (the dynamic window), so a word at distance d is a context
    with probability (w - d + 1) / w: near words count more, as in word2vec.
    """
    n = len(ids)
    pos = np.arange(n)
    ends = np.empty(n, dtype=np.int64)  # one past the last word of each position's sentence
    first = np.flatnonzero(np.r_[True, starts[1:] != starts[:-1]])
    lengths = np.diff(np.r_[first, n])
    ends[:] = np.repeat(first + lengths, lengths)
    b = rng.integers(1, window + 1, n)  # (N,)
    offsets = np.r_[np.arange(-window, 0), np.arange(1, window + 1)]  # (2w,)
    where = pos[:, None] + offsets[None, :]  # (N, 2w)
    mask = (np.abs(offsets)[None, :] <= b[:, None]) & (where >= starts[:, None]) & (where < ends[:, None])
    ctx = np.where(mask, ids[np.clip(where, 0, n - 1)], 0)
    return ctx, mask


class WindowBatches:
    """Batch i of training as a pure function of i (resumable): epoch by epoch, subsample, window, slice.

    An epoch is `per_epoch` batches of `batch_size` centre words, sized by the expected number of words that
    subsampling keeps; the words are taken in corpus order (as word2vec reads its file), so that the linear
    learning-rate decay runs once over the text, and negatives come from the noise table.
    """

    def __init__(self, sentences: list[np.ndarray], vocab: Vocab, window: int = 5, batch_size: int = 1024,
                 negative: int = 5, sample: float = 1e-3, seed: int = 0, pair_negatives: bool = False):
        sentences = [s for s in sentences if len(s) >= 2]
        if not sentences:
            raise DataError("no sentence has two words of the vocabulary; lower --min_count or use more text")
        self.ids = np.concatenate(sentences)
        lengths = np.array([len(s) for s in sentences])
        self.starts = np.repeat(np.cumsum(np.r_[0, lengths[:-1]]), lengths)
        self.keep = keep_probs(vocab.counts, sample)
        self.table = noise_table(vocab.counts)
        self.window, self.batch_size, self.negative, self.seed = window, batch_size, negative, seed
        self.pair_negatives = pair_negatives  # skip-gram as word2vec.c: K new noise words for every (centre, context) pair
        expected = float(self.keep[self.ids].sum())
        self.per_epoch = max(1, int(round(expected / batch_size)))
        self._epoch: tuple[int, np.ndarray, np.ndarray, np.ndarray] | None = None

    @property
    def words(self) -> int:
        """Words of the corpus in the vocabulary (one epoch reads them all, before subsampling)."""
        return len(self.ids)

    def epoch(self, e: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(centres, contexts, mask) of every kept word of epoch e."""
        if self._epoch is None or self._epoch[0] != e:
            rng = np.random.default_rng([self.seed, e])
            kept = rng.random(len(self.ids)) < self.keep[self.ids]
            ids = self.ids[kept]  # subsampled words vanish before windowing: the window reaches further
            ctx, mask = windows(ids, _restart(self.starts[kept]), self.window, rng)
            self._epoch = (e, ids, ctx, mask)
        return self._epoch[1:]

    def __call__(self, i: int) -> WindowBatch:
        e, k = divmod(i, self.per_epoch)
        ids, ctx, mask = self.epoch(e)
        rows = np.arange(k * self.batch_size, (k + 1) * self.batch_size) % len(ids)  # wraps if subsampling kept fewer
        rng = np.random.default_rng([self.seed, e, k, 1])
        shape = (len(rows), 2 * self.window, self.negative) if self.pair_negatives else (len(rows), self.negative)
        neg = self.table[rng.integers(0, len(self.table), shape)]
        return WindowBatch(torch.from_numpy(ids[rows]), torch.from_numpy(ctx[rows]), torch.from_numpy(mask[rows]),
                           torch.from_numpy(neg))


def _restart(starts: np.ndarray) -> np.ndarray:
    """Sentence starts of a subsampled stream: the index of each position's first surviving sentence-mate."""
    n = len(starts)
    new = np.r_[True, starts[1:] != starts[:-1]] if n else np.zeros(0, bool)
    first = np.flatnonzero(new)
    return np.repeat(first, np.diff(np.r_[first, n]))
