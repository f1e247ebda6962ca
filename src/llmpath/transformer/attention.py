"""Scaled dot-product attention, by hand and through PyTorch's fused kernel.

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k) + M) V

Vaswani et al. 2017, "Attention Is All You Need" (https://arxiv.org/abs/1706.03762), section 3.2.1.
M is 0 where a query may look and -inf where it may not (padding, or the future under a causal
mask). Dividing by sqrt(d_k) keeps the scores' variance near 1 whatever the head size, so the
softmax does not saturate.

Masks here are boolean *keep* masks: True = this query may attend to this key. They broadcast to
the scores' shape (..., T_q, T_k), so a padding mask is (B, 1, 1, T_k) and a causal one (T_q, T_k).

The hand-written path returns the attention weights (for heatmaps); the fused path
(`F.scaled_dot_product_attention`, `sdpa=True`) is faster and returns None for them. Every model
that attends (transformer, gpt, bert, vit) calls this one function.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def causal_mask(t_q: int, t_k: int | None = None, device: torch.device | str | None = None) -> Tensor:
    """(t_q, t_k) keep mask: query i sees keys 0..i + (t_k - t_q) (the queries are the last t_q positions)."""
    t_k = t_q if t_k is None else t_k
    return torch.ones(t_q, t_k, dtype=torch.bool, device=device).tril(t_k - t_q)


def padding_mask(lengths_or_pad: Tensor, pad_id: int | None = None) -> Tensor:
    """(B, 1, 1, T) keep mask from token ids (with `pad_id`) or from a (B, T) bool "is real token" tensor."""
    keep = lengths_or_pad != pad_id if pad_id is not None else lengths_or_pad.bool()
    return keep[:, None, None, :]


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None,
                                 causal: bool = False, dropout: float = 0.0,
                                 sdpa: bool = False) -> tuple[Tensor, Tensor | None]:
    """q (..., T_q, d_k), k (..., T_k, d_k), v (..., T_k, d_v) -> (output (..., T_q, d_v), weights or None).

    mask: bool keep mask broadcastable to (..., T_q, T_k). causal: also hide the future (the queries
    are the last T_q positions of the keys). dropout: on the attention weights (pass 0.0 in eval).
    sdpa: use F.scaled_dot_product_attention (weights are then not computed and None is returned).
    A query row with every key masked gets zero output (not NaN) on both paths.
    """
    t_q, t_k = q.shape[-2], k.shape[-2]
    if causal:
        cm = causal_mask(t_q, t_k, q.device)
        mask = cm if mask is None else mask & cm
    if sdpa:
        if mask is not None:
            # the fused kernel returns NaN for fully masked rows: let them see everything, zero them after
            empty = ~mask.any(-1, keepdim=True)  # (..., T_q, 1)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask | empty, dropout_p=dropout)
            return out.masked_fill(empty, 0.0), None
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout), None
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., T_q, T_k)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if mask is not None:
        weights = weights.nan_to_num(0.0)  # a row with nothing to attend to: all -inf -> NaN -> 0
    out = F.dropout(weights, p=dropout) @ v if dropout > 0 else weights @ v  # (..., T_q, d_v)
    return out, weights
