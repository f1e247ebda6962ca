"""The same MLP as `numpy_mlp.MLP`, as a torch nn.Module trained by the shared `llmpath.train.fit`.

Weights are stored as nn.Linear (out, in); `from_numpy` copies a NumPy MLP's weights (in, out)
transposed, so both compute the same function: the tests check forward outputs and gradients agree.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

_ACTS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": lambda: nn.GELU(approximate="tanh")}


class TorchMLP(nn.Module):
    """Linear -> act -> dropout -> ... -> Linear; sizes = (n_in, hidden..., n_classes)."""

    def __init__(self, sizes: tuple[int, ...], activation: str = "relu", dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(_ACTS[activation]())
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def linears(self) -> list[nn.Linear]:
        return [m for m in self.net if isinstance(m, nn.Linear)]

    @torch.no_grad()
    def from_numpy(self, np_model) -> "TorchMLP":
        """Copy the weights of a numpy_mlp.MLP with the same sizes."""
        for lt, ln in zip(self.linears(), np_model.linears()):
            lt.weight.copy_(torch.from_numpy(np.ascontiguousarray(ln.params["W"].T)))
            lt.bias.copy_(torch.from_numpy(ln.params["b"]))
        return self


def classification_loss(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


def sparse_rows_to_tensor(x, idx=None) -> torch.Tensor:
    """Dense float32 tensor of (some) rows of a SciPy sparse or NumPy matrix."""
    rows = x[idx] if idx is not None else x
    rows = rows.toarray() if hasattr(rows, "toarray") else np.asarray(rows)
    return torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))


@torch.no_grad()
def predict_logits(model: nn.Module, x, device="cpu", batch_size: int = 2048) -> np.ndarray:
    was = model.training
    model.eval()
    out = [model(sparse_rows_to_tensor(x[i:i + batch_size]).to(device)).float().cpu()
           for i in range(0, x.shape[0], batch_size)]
    model.train(was)
    return torch.cat(out).numpy()
