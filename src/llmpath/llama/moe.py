"""A sparse mixture-of-experts feed-forward: a router sends each token to its top-k experts.

    moe = MoE(n_embd=128, n_expert=4, top_k=2, make_expert=lambda: SwiGLU(128, 170))
    y, router_logits = moe(x)          # x (B, T, C) -> y (B, T, C), router_logits (B*T, n_expert)

Shazeer et al. 2017 (sparsely-gated MoE), Fedus et al. 2021 (Switch Transformer, the balancing loss),
Jiang et al. 2024 (Mixtral: 8 experts, top-2, weights renormalised over the chosen two).
Each token pays for top_k experts' matmuls while the model holds n_expert of them: more parameters
at the same compute per token. The router is one linear layer; softmax over experts, keep the top_k
probabilities and rescale them to sum to 1. Without a push the router soon sends most tokens to a
few experts (they get better, so they get chosen more): `load_balancing_loss` is that push.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MoE(nn.Module):
    """Router + n_expert feed-forwards; a token's output is the weighted sum of its top_k experts' outputs."""

    def __init__(self, n_embd: int, n_expert: int, top_k: int, make_expert: Callable[[], nn.Module]):
        super().__init__()
        self.n_expert, self.top_k = n_expert, top_k
        self.router = nn.Linear(n_embd, n_expert, bias=False)
        self.experts = nn.ModuleList(make_expert() for _ in range(n_expert))

    def route(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (N, C) -> router logits (N, E), chosen experts (N, k), their weights (N, k) summing to 1."""
        logits = self.router(x)
        probs = logits.float().softmax(-1)
        weights, chosen = probs.topk(self.top_k, dim=-1)
        return logits, chosen, weights / weights.sum(-1, keepdim=True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        B, T, C = x.shape
        flat = x.reshape(-1, C)  # (N, C): routing is per token, the batch and time axes do not matter
        logits, chosen, weights = self.route(flat)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(chosen == e)  # the tokens that picked expert e, and in which of their k slots
            if len(token):
                y = (expert(flat[token]) * weights[token, slot, None]).to(flat.dtype)  # weights in fp32, as Mixtral
                out.index_add_(0, token, y)
        return out.view(B, T, C), logits


def load_balancing_loss(router_logits: list[Tensor], top_k: int, per_layer: bool = False) -> Tensor:
    """Switch Transformer's auxiliary loss: E * sum_i f_i * P_i.

    f_i: the share of (token, slot) assignments that went to expert i (summing to top_k over i);
    P_i: the mean router probability of expert i. It equals top_k when routing is uniform and grows as
    the router favours a few experts (it can dip below top_k when f and P disagree); f has no gradient,
    so the push acts through P: the probabilities of the busy experts are lowered.

    per_layer=False pools f and P over every layer's tokens, as Hugging Face's Mixtral does. But expert
    i of one layer and expert i of another are unrelated: one layer's busy expert can hide behind
    another layer's idle one. per_layer=True is the mean of each layer's own loss (Switch's form).
    """
    if per_layer:
        return torch.stack([load_balancing_loss([r], top_k) for r in router_logits]).mean()
    logits = torch.cat(router_logits, dim=0)  # (L*N, E)
    E = logits.shape[-1]
    probs = logits.float().softmax(-1)
    chosen = probs.topk(top_k, dim=-1).indices
    f = F.one_hot(chosen, E).float().sum(1).mean(0)  # (E,) assignments per token, averaged
    P = probs.mean(0)
    return E * (f * P).sum()


@torch.no_grad()
def expert_usage(router_logits: list[Tensor], top_k: int) -> Tensor:
    """(n_layer, E): the share of each layer's (token, slot) assignments each expert took (rows sum to 1)."""
    rows = []
    for logits in router_logits:
        chosen = logits.topk(top_k, dim=-1).indices  # topk of logits = topk of softmax
        counts = torch.bincount(chosen.flatten(), minlength=logits.shape[-1]).float()
        rows.append(counts / counts.sum())
    return torch.stack(rows)
