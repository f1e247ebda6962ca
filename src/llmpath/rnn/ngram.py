"""Count-based character n-gram language model with interpolated Kneser-Ney smoothing: the baseline.

    lm = NGram(order=6).fit(train_ids, vocab_size=V)
    lm.nll(val_ids)            # mean negative log-likelihood, nats per token

P(w | ctx) mixes the discounted count of (ctx, w) with the lower-order estimate, recursively down
to a uniform distribution (Chen & Goodman 1998, https://dash.harvard.edu/handle/1/25104739):

    P_k(w | ctx) = max(c(ctx w) - D, 0) / c(ctx)  +  D * N1+(ctx .) / c(ctx) * P_{k-1}(w | ctx[1:])

The highest order uses raw counts c; lower orders use continuation counts (how many different
characters precede ctx w), which is what makes Kneser-Ney better than plain absolute discounting.
Counting is vectorised with NumPy: an n-gram is one int64 key (ids in base V).
"""

from __future__ import annotations

import math

import numpy as np


def _keys(ids: np.ndarray, n: int, V: int) -> np.ndarray:
    """int64 key of every n-gram in ids: keys[j] encodes ids[j : j + n]. (_keys([1, 2, 3], 2, 10) -> [12, 23])"""
    keys = np.zeros(max(len(ids) - n + 1, 0), dtype=np.int64)
    for j in range(n):
        keys = keys * V + ids[j: len(ids) - n + 1 + j]
    return keys


class _Table:
    """Counts of n-grams of one order and the per-context totals used by the formula."""

    def __init__(self, keys: np.ndarray, counts: np.ndarray, V: int):
        self.keys, self.counts = keys, counts.astype(np.float64)  # keys sorted (np.unique)
        ctx = keys // V
        self.ctx, first = np.unique(ctx, return_index=True)
        self.ctx_total = np.add.reduceat(self.counts, first)  # c(ctx)
        self.ctx_types = np.diff(np.append(first, len(keys))).astype(np.float64)  # N1+(ctx .)

    @staticmethod
    def _find(table: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        i = np.minimum(np.searchsorted(table, query), len(table) - 1)
        return i, table[i] == query

    def count(self, keys: np.ndarray) -> np.ndarray:
        i, hit = self._find(self.keys, keys)
        return np.where(hit, self.counts[i], 0.0)

    def context(self, ctx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        i, hit = self._find(self.ctx, ctx)
        return np.where(hit, self.ctx_total[i], 0.0), np.where(hit, self.ctx_types[i], 0.0)


class NGram:
    """Interpolated Kneser-Ney character n-gram model; order 1 is a smoothed unigram."""

    def __init__(self, order: int = 5, discount: float = 0.75):
        if order < 1:
            raise ValueError(f"n-gram order must be >= 1, got {order}")
        self.order, self.discount = order, discount
        self.tables: list[_Table] = []
        self.V = 0

    def fit(self, ids, vocab_size: int) -> "NGram":
        ids = np.asarray(ids, dtype=np.int64)
        if not fits_int64(self.order, vocab_size):
            raise ValueError(f"{self.order}-grams over a vocabulary of {vocab_size} do not fit int64 keys; "
                             f"use order {max_order(vocab_size)} or less")
        self.V = vocab_size
        self.tables = []
        for n in range(1, self.order + 1):
            if n == self.order:  # highest order: raw counts
                keys, counts = np.unique(_keys(ids, n, self.V), return_counts=True)
            else:  # continuation counts: distinct left neighbours of each n-gram
                longer = np.unique(_keys(ids, n + 1, self.V))
                keys, counts = np.unique(longer % self.V ** n, return_counts=True)
            self.tables.append(_Table(keys, counts, self.V))
        return self

    def prob(self, ids) -> np.ndarray:
        """P(ids[t] | ids[t-order+1 : t]) for every t >= 1 (shorter contexts at the start)."""
        ids = np.asarray(ids, dtype=np.int64)
        T = len(ids)
        p = np.full(T, 1.0 / self.V)  # order 0: uniform
        for n, table in enumerate(self.tables, start=1):
            # n-gram ending at t exists for t >= n - 1; earlier positions keep the lower-order estimate
            key = np.zeros(T, dtype=np.int64)
            valid = np.arange(T) >= n - 1
            if T >= n:
                key[n - 1:] = _keys(ids, n, self.V)
            c = table.count(key)
            total, types = table.context(key // self.V)
            seen = valid & (total > 0)
            safe = np.where(seen, total, 1.0)
            mixed = np.maximum(c - self.discount, 0) / safe + self.discount * types / safe * p
            p = np.where(seen, mixed, p)
        return p[1:]

    def nll(self, ids) -> float:
        """Mean negative log-likelihood in nats per token over ids[1:]."""
        return float(-np.log(self.prob(ids)).mean())

    def sample(self, prompt_ids, n: int, temperature: float = 1.0, seed: int = 0) -> list[int]:
        """Continue prompt_ids by n ids, one full distribution at a time (slow but simple)."""
        rng = np.random.default_rng(seed)
        out = list(prompt_ids)
        for _ in range(n):
            ctx = out[-(self.order - 1):] if self.order > 1 else []
            probs = np.array([self.prob(np.array(ctx + [w]))[-1] if ctx else self._unigram(w) for w in range(self.V)])
            logits = np.log(probs) / max(temperature, 1e-6)
            q = np.exp(logits - logits.max())
            out.append(int(rng.choice(self.V, p=q / q.sum())))
        return out[len(prompt_ids):]

    def _unigram(self, w: int) -> float:
        t = self.tables[0]
        c = float(t.count(np.array([w]))[0])
        total, types = float(t.ctx_total[0]), float(t.ctx_types[0])
        return max(c - self.discount, 0) / total + self.discount * types / total / self.V


def fits_int64(order: int, vocab_size: int) -> bool:
    """Whether an order-gram key (order digits in base V) fits int64. fits_int64(9, 80) -> True; fits_int64(6, 5000) -> False"""
    return vocab_size ** order < 2 ** 63


def max_order(vocab_size: int) -> int:
    """The largest order whose keys fit int64 (max_order(80) -> 9, max_order(5000) -> 5)."""
    n = 1
    while fits_int64(n + 1, vocab_size):
        n += 1
    return n


def best_order(train_ids, val_ids, vocab_size: int, orders=range(1, 9)) -> tuple[int, dict[int, float]]:
    """Fit each order, return the one with the lowest val NLL and all scores. Higher orders overfit."""
    scores = {n: NGram(n).fit(train_ids, vocab_size).nll(val_ids) for n in orders}
    return min(scores, key=scores.get), scores


def bits(nats: float) -> float:
    return nats / math.log(2)
