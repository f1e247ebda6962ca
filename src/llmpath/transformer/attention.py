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
that attends (transformer, gpt, bert, vit) calls this one function; `MultiHeadAttention` wraps it with
the q, k, v and output projections for self- and cross-attention.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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


class MultiHeadAttention(nn.Module):
    """n_head attention heads side by side on an n_embd-wide stream; self- or cross-attention.

        y, w = mha(x, mask=pad)                 # self-attention: queries, keys and values all from x
        y, w = mha(x, kv=memory, mask=src_pad)  # cross-attention: queries from x, keys/values from memory

    Separate q, k, v projections (torch.nn.MultiheadAttention stacks them in one in_proj_weight; see
    the transformer's `mha_from_torch`). `cache` (a dict) is the KV-cache hook for step-by-step
    decoding: self-attention appends this step's keys/values to the cached ones; cross-attention
    projects the memory once and reuses it.
    """

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, bias: bool = True, sdpa: bool = False):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd={n_embd} must be divisible by n_head={n_head}")
        self.n_head, self.dropout, self.sdpa = n_head, dropout, sdpa
        self.q = nn.Linear(n_embd, n_embd, bias=bias)
        self.k = nn.Linear(n_embd, n_embd, bias=bias)
        self.v = nn.Linear(n_embd, n_embd, bias=bias)
        self.proj = nn.Linear(n_embd, n_embd, bias=bias)

    def _heads(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        return x.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)

    def forward(self, x: Tensor, kv: Tensor | None = None, mask: Tensor | None = None, causal: bool = False,
                cache: dict | None = None, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """x (B, T, C), kv (B, S, C) or None -> (B, T, C) and weights (B, nh, T, S) when need_weights."""
        B, T, C = x.shape
        q = self._heads(self.q(x))
        if cache is not None and kv is not None and "k" in cache:
            k, v = cache["k"], cache["v"]  # cross-attention: the memory's keys/values never change
        else:
            src = x if kv is None else kv
            k, v = self._heads(self.k(src)), self._heads(self.v(src))  # (B, nh, S, hs)
            if cache is not None:
                if kv is None and "k" in cache:  # self-attention: the past positions' keys/values
                    k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
                cache["k"], cache["v"] = k, v
        y, w = scaled_dot_product_attention(q, k, v, mask=mask, causal=causal,
                                            dropout=self.dropout if self.training else 0.0,
                                            sdpa=self.sdpa and not need_weights)
        y = y.transpose(1, 2).reshape(B, T, C)  # heads side by side again
        return self.proj(y), (w if need_weights else None)


def tiled_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = False, block_q: int = 64,
                    block_k: int = 64) -> Tensor:
    """FlashAttention's tiling, written out: softmax(q k^T / sqrt(d_k)) v one (block_q, block_k) tile at a time.

    Dao et al. 2022, "FlashAttention" (https://arxiv.org/abs/2205.14135), algorithm 1 (the forward pass), in
    FlashAttention-2's loop order (https://arxiv.org/abs/2307.08691): query blocks outside, key blocks inside.
    q (..., T_q, d_k), k (..., T_k, d_k), v (..., T_k, d_v) -> (..., T_q, d_v), equal to
    `scaled_dot_product_attention(q, k, v, causal=causal)[0]` (tests/test_advanced.py). The (T_q, T_k)
    score matrix is never formed: each query block keeps, per row, the running maximum m of its scores,
    the running sum l of exp(score - m) and an accumulator of exp(score - m) v, and rescales both by
    exp(m_old - m_new) whenever a new key block raises the maximum (the "online softmax").
    This is the teaching version: Python loops over tiles, so it is slower than the plain path; the speed
    of the real kernel comes from keeping each tile in on-chip memory, which a PyTorch loop cannot do.
    """
    if block_q < 1 or block_k < 1:
        raise ValueError(f"block sizes must be at least 1 (got block_q={block_q}, block_k={block_k})")
    t_q, t_k = q.shape[-2], k.shape[-2]
    offset = t_k - t_q  # causal: query i sees keys 0..i + offset (the queries are the last t_q positions)
    scale = 1.0 / math.sqrt(q.shape[-1])
    out = q.new_empty(*q.shape[:-1], v.shape[-1])
    for i0 in range(0, t_q, block_q):
        qi = q[..., i0:i0 + block_q, :] * scale  # (..., bq, d_k)
        rows = torch.arange(i0, i0 + qi.shape[-2], device=q.device)[:, None]  # (bq, 1) query positions
        m = q.new_full((*qi.shape[:-1], 1), float("-inf"))  # running row maximum
        l = q.new_zeros((*qi.shape[:-1], 1))  # running sum of exp(score - m)
        acc = q.new_zeros((*qi.shape[:-1], v.shape[-1]))  # running sum of exp(score - m) v
        for j0 in range(0, t_k, block_k):
            if causal and j0 > i0 + qi.shape[-2] - 1 + offset:
                break  # this key block and every later one lie in the future of the whole query block
            s = qi @ k[..., j0:j0 + block_k, :].transpose(-2, -1)  # (..., bq, bk): one tile of scores
            if causal:
                cols = torch.arange(j0, j0 + s.shape[-1], device=q.device)[None, :]
                s = s.masked_fill(cols > rows + offset, float("-inf"))
            m_new = torch.maximum(m, s.amax(-1, keepdim=True))
            m_safe = m_new.masked_fill(m_new == float("-inf"), 0.0)  # a row with nothing seen yet: no NaN
            p = torch.exp(s - m_safe)  # (..., bq, bk), every entry <= 1
            alpha = torch.exp(m - m_safe)  # how much the old maximum overstated: rescale what was summed
            l = alpha * l + p.sum(-1, keepdim=True)
            acc = alpha * acc + p @ v[..., j0:j0 + block_k, :]
            m = m_new
        # divide once at the end; a row that saw no key at all (l = 0) gives zeros, as the plain path does
        out[..., i0:i0 + qi.shape[-2], :] = torch.where(l > 0, acc / l.clamp_min(1e-30), 0.0)
    return out
