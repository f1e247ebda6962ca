"""Batches that are a pure function of the step number, so a resumed run sees the same data.

The fit loop asks for `batches(i)` with i = the micro-step index; nothing about the data stream
needs saving in a checkpoint.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from llmpath.data.corpora import DataError


def _rng(seed: int, i: int) -> np.random.Generator:
    return np.random.default_rng([seed, i])


class RandomWindows:
    """Random (x, y) windows of a token stream for language modelling; y is x shifted by one.

    RandomWindows(ids, block_size=8, batch_size=4)(0) -> (x, y) each (4, 8) int64
    """

    def __init__(self, ids, block_size: int, batch_size: int, seed: int = 0):
        self.ids = torch.as_tensor(np.asarray(ids), dtype=torch.long)
        if len(self.ids) <= block_size + 1:
            raise DataError(f"the training text has {len(self.ids)} tokens, too few for one window of "
                            f"block_size={block_size}; use more text or a smaller --model.block_size")
        self.block_size, self.batch_size, self.seed = block_size, batch_size, seed

    def __call__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        starts = _rng(self.seed, i).integers(0, len(self.ids) - self.block_size - 1, self.batch_size)
        offs = torch.as_tensor(starts)[:, None] + torch.arange(self.block_size + 1)  # (B, T+1)
        chunk = self.ids[offs]
        return chunk[:, :-1], chunk[:, 1:]


class EpochBatches:
    """Shuffled mini-batches of a dataset, epoch by epoch; batch i is fixed by (seed, i).

    `collate(indices) -> batch` builds the batch (e.g. tensors indexed by the sample ids).
    """

    def __init__(self, n: int, batch_size: int, collate: Callable[[np.ndarray], object], seed: int = 0,
                 drop_last: bool = True):
        if n <= 0:
            raise DataError("the training split is empty; use more data")
        self.n, self.batch_size, self.collate, self.seed = n, min(batch_size, n), collate, seed
        self.per_epoch = self.n // self.batch_size if drop_last else -(-self.n // self.batch_size)

    def indices(self, i: int) -> np.ndarray:
        epoch, k = divmod(i, self.per_epoch)
        perm = _rng(self.seed, epoch).permutation(self.n)
        return perm[k * self.batch_size:(k + 1) * self.batch_size]

    def __call__(self, i: int):
        return self.collate(self.indices(i))


def sequential_batches(n: int, batch_size: int) -> list[np.ndarray]:
    """Index blocks covering range(n) in order (for evaluation)."""
    return [np.arange(a, min(a + batch_size, n)) for a in range(0, n, batch_size)]


def pad_sequences(seqs: Sequence[Sequence[int]], pad_id: int = 0) -> torch.Tensor:
    """Right-pad lists of ids into a (B, T_max) LongTensor."""
    T = max(1, max(len(s) for s in seqs))
    out = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    for b, s in enumerate(seqs):
        out[b, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
    return out
