"""GPT: a decoder-only Transformer language model with the exact GPT-2 architecture.

    llmpath gpt train --preset=small        # char-level Shakespeare, see docs/tutorials/05_gpt.md
    llmpath gpt sample --prompt "ROMEO:" --stream

Radford et al. 2019, "Language Models are Unsupervised Multitask Learners"
(https://cdn.openai.com/better-language-models/language_models_are_unsupervised_multitask_learners.pdf).
Token + learned position embeddings -> n_layer pre-LN blocks (x + attn(ln_1(x)), x + mlp(ln_2(x)))
-> final LayerNorm -> output head tied to the token embedding. The attention itself is the
Transformer stage's (llmpath.transformer.attention), called with GPT-2-shaped projections; hf.py maps
these parameter names to and from Hugging Face's `GPT2LMHeadModel`.

During generation a `KVCache` keeps every layer's keys and values, so each new token costs one
row of attention instead of recomputing the whole prefix (llmpath.generation, shared by every decoder).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmpath.config import check_heads, opt
from llmpath.generation import KVCache, cached_kv  # noqa: F401  (KVCache: importable from here too)
from llmpath.transformer.attention import scaled_dot_product_attention


@dataclass
class GPTConfig:
    vocab_size: int = opt(0, "vocabulary size (set from the tokenizer when 0)", min=0)
    block_size: int = opt(256, "context length: the most tokens the model attends over", min=1)
    n_layer: int = opt(6, "Transformer blocks", min=1)
    n_head: int = opt(6, "attention heads per block", min=1)
    n_embd: int = opt(384, "width of the residual stream", min=1)
    dropout: float = opt(0.0, "dropout on embeddings, attention weights and residual branches", min=0, below=1)
    bias: bool = opt(True, "biases in linear layers and LayerNorms (GPT-2 has them)")
    sdpa: bool = opt(True, "attention through F.scaled_dot_product_attention (fast path); false = hand-written")
    layer_norm_eps: float = opt(1e-5, "LayerNorm epsilon (GPT-2: 1e-5)", above=0)

    def check(self) -> None:
        check_heads(self.n_head, self.n_embd)


# Model shapes. `small` trains on two CPU cores in a couple of minutes; `gpt2` is the 124M model.
MODEL_PRESETS: dict[str, dict] = {
    "tiny": dict(n_layer=2, n_head=2, n_embd=32, block_size=32),
    "small": dict(n_layer=4, n_head=4, n_embd=128, block_size=64),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257),
}


class CausalSelfAttention(nn.Module):
    """GPT-2 attention: one fused q,k,v projection, nh heads, causal attention, output projection."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.n_embd % cfg.n_head:
            raise ValueError(f"n_embd={cfg.n_embd} must be divisible by n_head={cfg.n_head}")
        self.n_head, self.dropout, self.sdpa = cfg.n_head, cfg.dropout, cfg.sdpa
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, cache: KVCache | None = None, layer: int = 0, maps: list | None = None) -> Tensor:
        """(B, T, C) -> (B, T, C); `maps` (a list) gets this layer's weights (B, nh, T, T_k), hand-written path."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        k, v, mask, causal = cached_kv(q, k, v, cache, layer)  # with a cache: every key so far
        y, w = scaled_dot_product_attention(q, k, v, mask=mask, causal=causal,
                                            dropout=self.dropout if self.training else 0.0,
                                            sdpa=self.sdpa and maps is None)  # the fused kernel gives no weights
        if maps is not None:
            maps.append(w)
        y = y.transpose(1, 2).reshape(B, T, C)  # heads side by side again
        return self.resid_drop(self.c_proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward: n_embd -> 4 n_embd -> GELU (tanh approximation, as GPT-2) -> n_embd."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    """Pre-LN block: the residual stream x only ever gets things added to it."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: Tensor, cache: KVCache | None = None, layer: int = 0, maps: list | None = None) -> Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer, maps)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """(B, T) token ids -> (B, T, vocab_size) next-token logits (and the loss when targets are given)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("GPTConfig.vocab_size must be set (from the tokenizer)")
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied: reading a token and writing it share one table
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            # GPT-2's scaled init: each block adds two branches to the residual stream, so shrink the
            # layers that write into it by 1/sqrt(2 n_layer) to keep its variance from growing with depth.
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def hidden(self, idx: Tensor, cache: KVCache | None = None, maps: list | None = None) -> Tensor:
        """Final-LayerNorm states (B, T, n_embd): what the LM head and a classifier head read;
        `maps` collects each layer's attention weights."""
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        if start + T > self.cfg.block_size:
            raise ValueError(f"sequence of {start + T} tokens is longer than block_size={self.cfg.block_size}; "
                             "crop the input (generate() does this for you)")
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        for i, block in enumerate(self.h):
            x = block(x, cache, i, maps)
        if cache is not None:
            cache.pos += T
        return self.ln_f(x)

    def forward(self, idx: Tensor, targets: Tensor | None = None, cache: KVCache | None = None,
                last_only: bool = False, maps: list | None = None) -> tuple[Tensor, Tensor | None]:
        """Logits (B, T, V), or (B, 1, V) with last_only; loss = mean cross-entropy where targets != -100;
        `maps` (a list) gets each layer's attention weights (B, nh, T, T_k)."""
        x = self.hidden(idx, cache, maps)
        if last_only:
            x = x[:, -1:]  # generation only needs the next token: skips (T-1) rows of the big head matmul
        logits = self.lm_head(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        return logits, loss

    def num_params(self, embeddings: bool = True) -> int:
        """Parameters (tied weights once); without position embeddings when embeddings=False, as in 6ND."""
        n = sum(p.numel() for p in self.parameters())
        return n if embeddings else n - self.wpe.weight.numel()

    def flops_per_token(self, T: int | None = None) -> float:
        """Training FLOPs per token (PaLM appendix B, as nanoGPT): 6N for the weights, 12 L T C for attention's scores and mix."""
        c = self.cfg
        T = T or c.block_size
        return 6 * self.num_params(embeddings=False) + 12 * c.n_layer * T * c.n_embd
