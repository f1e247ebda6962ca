"""Downstream finetuning: a classification head on a (pretrained) GPT, and the LM objective.

    clf = GPTClassifier(gpt, n_classes=3)
    logits = clf(ids, lengths)                    # (B, n_classes)

The GPT reads each text (right-padded; causal attention means the padding never reaches a real
token), the final-LayerNorm states of the real tokens are averaged, and one linear layer maps that
to classes. Starting from a pretrained GPT instead of random weights is the whole point of
pretraining: the comparison table is in docs/tutorials/05_gpt.md.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmpath.data.batching import pad_sequences
from llmpath.gpt.data import known_text
from llmpath.gpt.model import GPT


def lm_loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    """Next-token cross-entropy: batch = (x, y) with y = x shifted left by one."""
    x, y = batch
    return model(x, y)[1]


@torch.no_grad()
def lm_val_loss(model: GPT, ids: np.ndarray, block_size: int, batch_size: int = 64) -> float:
    """Mean next-token loss over consecutive non-overlapping windows of ids (deterministic)."""
    device = next(model.parameters()).device
    n = (len(ids) - 1) // block_size
    if n == 0:
        raise ValueError(f"validation text of {len(ids)} tokens is shorter than one block ({block_size})")
    t = torch.as_tensor(np.asarray(ids[: n * block_size + 1]), dtype=torch.long)
    x, y = t[:-1].view(n, block_size), t[1:].view(n, block_size)
    total = 0.0
    for a in range(0, n, batch_size):
        _, loss = model(x[a:a + batch_size].to(device), y[a:a + batch_size].to(device))
        total += loss.item() * len(x[a:a + batch_size])
    return total / n


class GPTClassifier(nn.Module):
    """GPT body + mean of the real tokens' final states + a linear layer over classes."""

    def __init__(self, gpt: GPT, n_classes: int, dropout: float = 0.1):
        super().__init__()
        self.gpt = gpt
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(gpt.cfg.n_embd, n_classes)

    def forward(self, ids: Tensor, lengths: Tensor) -> Tensor:
        h = self.gpt.hidden(ids)  # (B, T, C)
        real = (torch.arange(ids.shape[1], device=ids.device)[None] < lengths[:, None]).unsqueeze(-1)
        pooled = (h * real).sum(1) / lengths.clamp(min=1)[:, None]  # mean over the real tokens only
        return self.head(self.drop(pooled))


def classify_loss(model: nn.Module, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    ids, lengths, labels = batch
    return F.cross_entropy(model(ids, lengths), labels)


def encode_texts(tok, texts: list[str], max_len: int) -> list[list[int]]:
    """Token ids of each text (characters outside a char vocabulary dropped), cut to max_len tokens."""
    out = []
    for t in texts:
        ids = tok.encode(known_text(tok, t))[:max_len]
        out.append(ids or tok.encode(" ")[:1])
    return out


def collate(seqs: list[list[int]], labels: np.ndarray, idx: np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
    chosen = [seqs[i] for i in idx]
    return (pad_sequences(chosen), torch.tensor([len(s) for s in chosen]), torch.as_tensor(labels[idx]))


@torch.no_grad()
def predict(model: GPTClassifier, seqs: list[list[int]], batch_size: int = 128) -> np.ndarray:
    """Predicted class of every sequence (eval mode, batched)."""
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    preds = []
    for a in range(0, len(seqs), batch_size):
        ids, lengths, _ = collate(seqs, np.zeros(len(seqs), dtype=np.int64), np.arange(a, min(a + batch_size, len(seqs))))
        preds.append(model(ids.to(device), lengths.to(device)).argmax(-1).cpu().numpy())
    model.train(was)
    return np.concatenate(preds)
