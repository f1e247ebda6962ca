"""A Llama-style decoder: RMSNorm, rotary positions (RoPE), SwiGLU, grouped-query attention, optional MoE.

    llmpath llama train --preset=small          # char-level Shakespeare, as stage 5; docs/tutorials/09_modern_llm.md
    llmpath llama ablation                      # from GPT-2's block to Llama's, one change at a time

Touvron et al. 2023, "LLaMA" (https://arxiv.org/abs/2302.13971) and "Llama 2" (https://arxiv.org/abs/2307.09288);
Zhang & Sennrich 2019 (RMSNorm), Su et al. 2021 (RoFormer, RoPE), Shazeer 2020 (GLU variants),
Ainslie et al. 2023 (GQA), Jiang et al. 2024 (Mixtral; the MoE block is in moe.py).

The block is GPT's pre-norm block with four parts swapped, each behind a switch so that the ablation
can go from GPT-2's block to Llama's one change at a time:
    norm:  LayerNorm  -> RMSNorm        (no mean subtraction, no bias)
    pos:   learned wpe -> RoPE          (rotate q and k by their position: scores see only offsets)
    mlp:   GELU 4C    -> SwiGLU 8C/3    (a gated unit at the same parameter count)
    n_kv_head = n_head -> fewer         (query heads share key/value heads: a smaller KV cache)
With norm=layer, pos=learned, mlp=gelu, bias=True and n_kv_head = n_head this is exactly GPT-2
(tests/test_llama_model.py copies a GPT's weights in and gets the same logits). hf.py maps the names to
and from Hugging Face's LlamaForCausalLM and MixtralForCausalLM. Generation and the KV cache are the
shared llmpath.generation. `prefix=` puts P vectors before the token embeddings (stage 13's image patches,
llmpath.vlm): they take the first P positions and the cache, and predict nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmpath.config import ConfigError, check_heads, opt
from llmpath.generation import KVCache, cached_kv
from llmpath.gpt.model import MLP as GeluMLP
from llmpath.gpt.model import GPT, GPTConfig
from llmpath.llama.moe import MoE, load_balancing_loss
from llmpath.transformer.attention import scaled_dot_product_attention


@dataclass
class LlamaConfig:
    vocab_size: int = opt(0, "vocabulary size (set from the tokenizer when 0)", min=0)
    block_size: int = opt(256, "context length: the most tokens the model attends over", min=1)
    n_layer: int = opt(6, "decoder blocks", min=1)
    n_head: int = opt(6, "query heads per block", min=1)
    n_kv_head: int = opt(0, "key/value heads (0 = n_head: multi-head; 1 = multi-query; between: grouped-query)", min=0)
    n_embd: int = opt(384, "width of the residual stream", min=1)
    n_ff: int = opt(0, "SwiGLU hidden width, per expert with MoE (0 = 8 n_embd / 3, divided by top_k with MoE)", min=0)
    rope_theta: float = opt(10000.0, "RoPE base: the slowest pair turns once every ~2π·theta positions", above=0)
    norm_eps: float = opt(1e-5, "epsilon of RMSNorm / LayerNorm", above=0)
    tie_embeddings: bool = opt(True, "the output head shares the token embedding's weights")
    dropout: float = opt(0.0, "dropout on embeddings, attention weights and residual branches", min=0, below=1)
    sdpa: bool = opt(True, "attention through F.scaled_dot_product_attention (fast path); false = hand-written")
    # the four switches of the GPT-2 -> Llama ablation (defaults: Llama)
    norm: Literal["rms", "layer"] = opt("rms", "rms: RMSNorm (Llama); layer: LayerNorm (GPT-2)")
    pos: Literal["rope", "learned"] = opt("rope", "rope: rotary positions (Llama); learned: a position table (GPT-2)")
    mlp: Literal["swiglu", "gelu"] = opt("swiglu", "swiglu: gated feed-forward (Llama); gelu: GPT-2's 4C MLP")
    bias: bool = opt(False, "biases in linear layers and norms (GPT-2 has them, Llama does not)")
    # mixture of experts (moe.py): every block's feed-forward becomes n_expert SwiGLU experts
    n_expert: int = opt(0, "experts per MoE feed-forward (0 = dense)", min=0)
    top_k: int = opt(2, "experts each token is routed to", min=1)
    aux_loss_coef: float = opt(0.01, "weight of the load-balancing loss added to the training loss", min=0)
    aux_loss: Literal["layer", "pooled"] = opt("layer", "layer: balance each MoE layer on its own (Switch Transformer); "
                                                         "pooled: counts pooled over layers (Hugging Face's Mixtral)")

    def check(self) -> None:
        check_heads(self.n_head, self.n_embd)
        if self.n_kv_head and self.n_head % self.n_kv_head:
            raise ConfigError(f"n_head={self.n_head} must be a multiple of n_kv_head={self.n_kv_head} "
                              "(each key/value head serves the same number of query heads)")
        if self.pos == "rope" and (self.n_embd // self.n_head) % 2:
            raise ConfigError(f"RoPE rotates pairs of numbers: the head size n_embd/n_head = "
                              f"{self.n_embd // self.n_head} must be even")
        if self.n_expert and self.top_k > self.n_expert:
            raise ConfigError(f"top_k={self.top_k} is more than n_expert={self.n_expert}; choose top_k <= n_expert")
        if self.n_expert and self.mlp != "swiglu":
            raise ConfigError("the MoE experts are SwiGLU feed-forwards; use --model.mlp=swiglu with --model.n_expert")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def ff_width(self) -> int:
        """SwiGLU hidden width: 8C/3 keeps the three matrices at the parameter count of GPT-2's two 4C ones."""
        if self.n_ff:
            return self.n_ff
        return max(1, round(8 * self.n_embd / 3 / (self.top_k if self.n_expert else 1)))


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight: LayerNorm without centring and without a bias."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()  # the mean of squares in fp32 even when the model runs in bf16
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def make_norm(cfg: LlamaConfig) -> nn.Module:
    if cfg.norm == "rms":
        return RMSNorm(cfg.n_embd, cfg.norm_eps)
    return nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias)


def rope_frequencies(head_size: int, theta: float = 10000.0) -> Tensor:
    """The angle per position of each of the head_size/2 rotated pairs: theta^(-2i/hs), fastest first."""
    return theta ** (-torch.arange(0, head_size, 2, dtype=torch.float64) / head_size)


def rope_tables(head_size: int, max_len: int, theta: float = 10000.0) -> tuple[Tensor, Tensor]:
    """cos and sin (max_len, head_size) of the angle m * freq_i, each frequency written twice (halves layout)."""
    angles = torch.outer(torch.arange(max_len, dtype=torch.float64), rope_frequencies(head_size, theta))
    angles = torch.cat([angles, angles], dim=-1)  # pair i is (x[i], x[i + hs/2]), as in Hugging Face's Llama
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each pair (x[i], x[i + hs/2]) of x (B, nh, T, hs) by its angle: cos, sin are (T, hs)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)  # (a, b) -> (-b, a): a quarter turn
    return x * cos + rotated * sin


class Attention(nn.Module):
    """Causal self-attention with n_head query heads sharing n_kv_head key/value heads; RoPE on q and k."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.n_head, self.n_kv, self.hs = cfg.n_head, cfg.kv_heads, cfg.n_embd // cfg.n_head
        self.rope, self.dropout, self.sdpa = cfg.pos == "rope", cfg.dropout, cfg.sdpa
        self.wq = nn.Linear(cfg.n_embd, self.n_head * self.hs, bias=cfg.bias)
        self.wk = nn.Linear(cfg.n_embd, self.n_kv * self.hs, bias=cfg.bias)  # fewer heads: fewer weights, smaller cache
        self.wv = nn.Linear(cfg.n_embd, self.n_kv * self.hs, bias=cfg.bias)
        self.wo = nn.Linear(self.n_head * self.hs, cfg.n_embd, bias=cfg.bias)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache | None = None, layer: int = 0,
                maps: list | None = None) -> Tensor:
        """(B, T, C) -> (B, T, C); `maps` (a list) gets this layer's weights (B, nh, T, T_k), hand-written path."""
        B, T, C = x.shape
        q = self.wq(x).view(B, T, self.n_head, self.hs).transpose(1, 2)  # (B, nh, T, hs)
        k = self.wk(x).view(B, T, self.n_kv, self.hs).transpose(1, 2)  # (B, n_kv, T, hs)
        v = self.wv(x).view(B, T, self.n_kv, self.hs).transpose(1, 2)
        if self.rope:  # rotate before caching: a cached key keeps the angle of the position it was written at
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k, v, mask, causal = cached_kv(q, k, v, cache, layer)  # GQA: each k, v head repeated for its query heads
        y, w = scaled_dot_product_attention(q, k, v, mask=mask, causal=causal,
                                            dropout=self.dropout if self.training else 0.0,
                                            sdpa=self.sdpa and maps is None)  # the fused kernel gives no weights
        if maps is not None:
            maps.append(w)
        return self.resid_drop(self.wo(y.transpose(1, 2).reshape(B, T, C)))


class SwiGLU(nn.Module):
    """w2(silu(w1 x) * w3 x): one branch decides how much of the other passes, per hidden unit."""

    def __init__(self, n_embd: int, n_ff: int, bias: bool = False, dropout: float = 0.0):
        super().__init__()
        self.w1 = nn.Linear(n_embd, n_ff, bias=bias)  # gate
        self.w3 = nn.Linear(n_embd, n_ff, bias=bias)  # up
        self.w2 = nn.Linear(n_ff, n_embd, bias=bias)  # down
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class Block(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + ffn(norm(x)); the ffn is dense or a mixture of experts."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.attn_norm = make_norm(cfg)
        self.attn = Attention(cfg)
        self.ffn_norm = make_norm(cfg)
        if cfg.n_expert:
            self.ffn = MoE(cfg.n_embd, cfg.n_expert, cfg.top_k,
                           lambda: SwiGLU(cfg.n_embd, cfg.ff_width, cfg.bias, cfg.dropout))
        elif cfg.mlp == "swiglu":
            self.ffn = SwiGLU(cfg.n_embd, cfg.ff_width, cfg.bias, cfg.dropout)
        else:  # GPT-2's own MLP (4C, GELU-tanh), for the ablation
            self.ffn = GeluMLP(GPTConfig(n_embd=cfg.n_embd, bias=cfg.bias, dropout=cfg.dropout))

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache | None = None,
                layer: int = 0, maps: list | None = None) -> tuple[Tensor, Tensor | None]:
        """(new x, router logits (B*T, n_expert) or None for a dense block)."""
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, layer, maps)
        out = self.ffn(self.ffn_norm(x))
        router_logits = None
        if isinstance(out, tuple):
            out, router_logits = out
        return x + out, router_logits


class Llama(nn.Module):
    """(B, T) token ids -> (B, T, vocab_size) next-token logits (and the loss when targets are given)."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("LlamaConfig.vocab_size must be set (from the tokenizer)")
        cfg.check()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        hs = cfg.n_embd // cfg.n_head
        cos, sin = rope_tables(hs, cfg.block_size, cfg.rope_theta) if cfg.pos == "rope" else (torch.ones(0, hs),) * 2
        self.register_buffer("cos", cos, persistent=False)  # computed, never learned: not in the checkpoint
        self.register_buffer("sin", sin, persistent=False)
        self.router_logits: list[Tensor] = []  # the last forward's, one (B*T, n_expert) per MoE block
        self.apply(GPT._init_weights)  # GPT-2's init for every variant: the ablation changes only the architecture
        for name, p in self.named_parameters():
            # and its scaled init: the layers that write into the residual stream start 1/sqrt(2 n_layer) smaller
            if name.endswith(("wo.weight", "w2.weight", "c_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def hidden(self, idx: Tensor, cache: KVCache | None = None, prefix: Tensor | None = None,
               maps: list | None = None) -> Tensor:
        """Final-norm states (B, P + T, n_embd) of the prefix embeddings (B or 1, P, n_embd), if any, then the
        tokens; the MoE router logits are left in self.router_logits; `maps` collects each layer's attention weights."""
        x = self.embed(idx)  # (B, T, C)
        if prefix is not None:  # vectors from elsewhere (an image's patches) read as if they were tokens
            x = torch.cat([prefix.to(x.dtype).expand(len(x), -1, -1), x], 1)  # (B, P + T, C)
        B, T, _ = x.shape
        start = cache.pos if cache is not None else 0
        if start + T > self.cfg.block_size:
            raise ValueError(f"sequence of {start + T} positions is longer than block_size={self.cfg.block_size}; "
                             "crop the input (generate() does this for you)")
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(start, start + T, device=idx.device))
        x = self.drop(x)
        cos, sin = self.cos[start:start + T], self.sin[start:start + T]  # (T, hs): the positions of these tokens
        self.router_logits = []
        for i, block in enumerate(self.layers):
            x, router = block(x, cos, sin, cache, i, maps)
            if router is not None:
                self.router_logits.append(router)
        if cache is not None:
            cache.pos += T
        return self.norm(x)

    def forward(self, idx: Tensor, targets: Tensor | None = None, cache: KVCache | None = None,
                last_only: bool = False, prefix: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Logits (B, T, V) of the token positions (a prefix predicts nothing), or (B, 1, V) with last_only;
        loss = cross-entropy where targets != -100, plus aux_loss_coef x the load-balancing loss in training mode
        with MoE (eval: cross-entropy only)."""
        x = self.hidden(idx, cache, prefix)[:, 0 if prefix is None else prefix.shape[1]:]
        if last_only:
            x = x[:, -1:]
        logits = self.lm_head(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
            if self.training and self.router_logits and self.cfg.aux_loss_coef:
                balance = load_balancing_loss(self.router_logits, self.cfg.top_k, per_layer=self.cfg.aux_loss == "layer")
                loss = loss + self.cfg.aux_loss_coef * balance
        return logits, loss

    def num_params(self, active: bool = False) -> int:
        """Parameters (tied weights once); active=True counts top_k experts per MoE block, not all of them."""
        n = sum(p.numel() for p in self.parameters())
        if active and self.cfg.n_expert:
            per_expert = sum(p.numel() for p in self.layers[0].ffn.experts[0].parameters())
            n -= self.cfg.n_layer * (self.cfg.n_expert - self.cfg.top_k) * per_expert
        return n
