"""Figures of stage 9: how RoPE turns q and k, where a head looks, how evenly the experts are used, what a KV cache costs.

`rope_frequencies_figure` and `kv_cache_figure` need no training; the others read a model or a training log.
Every function returns a matplotlib Figure; callers save it with `llmpath.plotting.save_fig`.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from llmpath.generation import kv_bytes_per_token
from llmpath.llama.model import Llama, apply_rope, rope_frequencies
from llmpath.plotting import use_cjk
from llmpath.transformer.attention import scaled_dot_product_attention


def rope_frequencies_figure(head_size: int = 64, theta: float = 10000.0, max_pos: int = 256) -> Figure:
    """RoPE's pairs turn at theta^(-2i/hs) per position (left, middle); q·k sees only the angle between them (right)."""
    use_cjk()
    freq = rope_frequencies(head_size, theta).numpy()  # (hs/2,) radians per position, fastest first
    n_pair = len(freq)
    fig, (ax_cos, ax_wave, ax_c) = plt.subplots(1, 3, figsize=(15, 4.2), gridspec_kw=dict(width_ratios=[1.3, 1, 1]))
    m = np.arange(1, max_pos + 1)
    for i in sorted({0, n_pair // 8, n_pair // 4, n_pair // 2, 3 * n_pair // 4, n_pair - 1}):
        ax_cos.plot(m, m * freq[i] / (2 * math.pi), lw=1.5, label=f"第 {i} 对（θ = {freq[i]:.3g} 弧度/位置）")
    ax_cos.axhline(1, ls="--", color="gray", label="一整圈")
    ax_cos.set_yscale("log")
    ax_cos.set(xlabel="位置 m", ylabel="转过的圈数 m·θᵢ / 2π（对数坐标）", title=f"各对维度转过的角度随位置增长（头维 {head_size}）")
    ax_cos.legend(fontsize=7, loc="lower right")
    ax_cos.grid(alpha=0.3, which="both")
    ax_wave.semilogy(np.arange(n_pair), 2 * math.pi / freq, "o-", ms=3)
    ax_wave.axhline(max_pos, ls="--", color="gray", label=f"{max_pos} 个位置")
    ax_wave.set(xlabel="维度对 i", ylabel="波长：转一圈的位置数（对数坐标）",
                title=f"波长 2π·θ^(2i/hs)，θ = {theta:g}")
    ax_wave.legend(fontsize=8)
    ax_wave.grid(alpha=0.3, which="both")
    # one pair (a 2-D vector) at positions 0..N-1: pair 0 turns 1 radian per position
    t = np.linspace(0, 2 * math.pi, 200)
    ax_c.plot(np.cos(t), np.sin(t), color="lightgray")
    n = 6
    for p in range(n):
        a = p * freq[0]
        color = plt.cm.viridis(0.85 * p / (n - 1))
        ax_c.annotate("", xy=(math.cos(a), math.sin(a)), xytext=(0, 0),
                      arrowprops=dict(arrowstyle="->", color=color, lw=1.8))
        ax_c.text(1.15 * math.cos(a), 1.15 * math.sin(a), f"m={p}", ha="center", va="center", fontsize=9, color=color)
    ax_c.set(xlim=(-1.4, 1.4), ylim=(-1.9, 1.4), aspect="equal", xticks=[], yticks=[],
             title="同一个向量在位置 0…5 被转过 m·θ₀")
    ax_c.text(0, -1.85, "q 在 m、k 在 n：q·k = |q||k| cos(φ + (m−n)θ)\n只取决于相对位置 m−n，整体平移不变",
              ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    return fig


@torch.no_grad()
def head_attention(model: Llama, ids: Tensor, layer: int, head: int) -> Tensor:
    """(T, T) attention weights of one head of one layer for a (T,) or (1, T) prompt, from the hand-written path."""
    ids = torch.as_tensor(ids, dtype=torch.long, device=model.embed.weight.device).reshape(1, -1)
    attn = model.layers[layer].attn
    seen = {}
    # the block calls attn(norm(x), cos, sin, cache, layer): keep its input and this prompt's rotation tables
    hook = attn.register_forward_pre_hook(lambda mod, args: seen.update(x=args[0], cos=args[1], sin=args[2]))
    was_training = model.training
    model.eval()
    try:
        model(ids)
    finally:
        hook.remove()
        model.train(was_training)
    x, T = seen["x"], ids.shape[1]
    q = attn.wq(x).view(1, T, attn.n_head, attn.hs).transpose(1, 2)[:, head]  # (1, T, hs)
    k = attn.wk(x).view(1, T, attn.n_kv, attn.hs).transpose(1, 2)[:, head // (attn.n_head // attn.n_kv)]  # its kv head
    if attn.rope:
        q, k = apply_rope(q, seen["cos"], seen["sin"]), apply_rope(k, seen["cos"], seen["sin"])
    _, weights = scaled_dot_product_attention(q, k, k, causal=True, sdpa=False)  # the weights do not need v
    return weights[0].float().cpu()


def attention_maps_figure(maps: dict[str, Tensor], tokens: list[str]) -> Figure:
    """Side-by-side (T, T) attention maps of one head, e.g. {"RoPE": ..., "学习的位置编码": ...}, one colour scale."""
    use_cjk()
    n, T = len(maps), len(tokens)
    size = max(3.0, 0.28 * T + 1.5)
    fig, axes = plt.subplots(1, n, figsize=(size * n + 1, size), squeeze=False)
    im = None
    for ax, (name, w) in zip(axes[0], maps.items()):
        im = ax.imshow(torch.as_tensor(w).float().numpy(), cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(range(T), labels=tokens, fontsize=8, rotation=90 if max(map(len, tokens), default=0) > 2 else 0)
        ax.set_yticks(range(T), labels=tokens, fontsize=8)
        ax.set(title=name, xlabel="键（被看的位置）", ylabel="查询")
    fig.colorbar(im, ax=list(axes[0]), fraction=0.03, pad=0.03, label="注意力权重")
    fig.suptitle("同一个头的注意力：每行是一个查询位置对之前各位置的权重（和为 1）")
    return fig


def expert_usage_figure(history: list[tuple[int, list[list[float]]]]) -> Figure:
    """Share of (token, slot) assignments per expert against the step, one panel per MoE layer."""
    use_cjk()
    steps = [s for s, _ in history]
    usage = np.asarray([u for _, u in history], dtype=float)  # (n_step, n_layer, E)
    _, L, E = usage.shape
    fig, axes = plt.subplots(1, L, figsize=(4.2 * L + 0.5, 3.6), squeeze=False, sharey=True)
    for li, ax in enumerate(axes[0]):
        for e in range(E):
            ax.plot(steps, usage[:, li, e], lw=1.3, label=f"专家 {e}")
        ax.axhline(1 / E, ls="--", color="gray", label=f"均匀 1/{E}")
        ax.axhline(0.40, ls="--", color="tab:red", label="0.40")
        ax.set(xlabel="步数", title=f"第 {li + 1} 层")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("分配份额")
    axes[0, -1].legend(fontsize=7, loc="upper right")
    fig.suptitle("训练中各专家接到的（词元, 槽位）分配的份额")
    fig.tight_layout()
    return fig


def kv_cache_table(context: int = 4096) -> list[dict]:
    """KV-cache cost of MHA/GQA/MQA at our small preset's shape and at Llama-2-7B's and Llama-3-8B's published shapes."""
    shapes = [("small MHA", 4, 4, 4, 32), ("small GQA", 4, 4, 2, 32), ("small MQA", 4, 4, 1, 32),
              ("Llama-2-7B", 32, 32, 32, 128), ("Llama-3-8B", 32, 32, 8, 128)]
    rows = []
    for name, n_layer, n_head, n_kv, hs in shapes:
        bf16, fp32 = kv_bytes_per_token(n_layer, n_kv, hs, 2), kv_bytes_per_token(n_layer, n_kv, hs, 4)
        rows.append(dict(model=name, n_layer=n_layer, n_head=n_head, n_kv_head=n_kv, head_size=hs,
                         bytes_per_token_bf16=bf16, bytes_per_token_fp32=fp32, kib_per_token_bf16=bf16 / 1024,
                         context=context, mib_context_bf16=bf16 * context / 2**20,
                         mib_context_fp32=fp32 * context / 2**20))
    return rows


def kv_cache_figure(context: int = 4096) -> Figure:
    """Bars of the bf16 KV-cache size of a `context`-token sequence for each row of kv_cache_table (log axis)."""
    use_cjk()
    rows = kv_cache_table(context)
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    names = [f"{r['model']}（{r['n_kv_head']}/{r['n_head']} 个 KV 头）" for r in rows]
    vals = [r["mib_context_bf16"] for r in rows]
    bars = ax.barh(range(len(rows)), vals, color=["tab:blue"] * 3 + ["tab:orange"] * 2)
    ax.set_yticks(range(len(rows)), labels=names)
    ax.invert_yaxis()
    ax.set_xscale("log")
    for b, r in zip(bars, rows):
        ax.text(b.get_width() * 1.1, b.get_y() + b.get_height() / 2,
                f"{r['mib_context_bf16']:.4g} MiB（每词元 {r['kib_per_token_bf16']:.4g} KiB）", va="center", fontsize=8)
    ax.set_xlim(min(vals) / 2, max(vals) * 30)
    ax.set(xlabel=f"{context} 个词元的 KV 缓存（bf16，MiB，对数坐标）",
           title="KV 缓存 = 2 × 层数 × KV 头数 × 头维 × 字节 × 词元数\nGQA/MQA 少存 KV 头，缓存按 n_head / n_kv_head 缩小")
    fig.tight_layout()
    return fig
