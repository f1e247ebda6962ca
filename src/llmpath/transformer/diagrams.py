"""Idea diagrams of stage 4 (no training, no data): the three kinds of attention, post-LN against pre-LN.

    python docs/figures.py --runs=/nonexistent     # draws every diagram into docs/tutorials/figures/

Every function returns a matplotlib Figure; docs/figures.py saves it. The masks are the ones the model
uses (`padding_mask`, `causal_mask`), so the pictures cannot drift from the code.
"""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from llmpath.plotting import use_cjk
from llmpath.transformer.attention import causal_mask, padding_mask

KEEP, HIDE = "#4c78a8", "#eeeeee"  # a query may look here / may not


def mask_panel(ax, keep: np.ndarray, keys: Sequence[str], queries: Sequence[str], title: str,
               xlabel: str = "键（被看的位置）", ylabel: str = "查询（正在算的位置）") -> None:
    """One keep mask as a grid: blue = this query may attend to this key, grey with a cross = it may not."""
    keep = np.asarray(keep, dtype=bool)
    ax.imshow(keep.astype(int), cmap=ListedColormap([HIDE, KEEP]), vmin=0, vmax=1, aspect="equal")
    for i, j in zip(*np.nonzero(~keep)):
        ax.text(j, i, "×", ha="center", va="center", color="#999999", fontsize=9)
    ax.set_xticks(range(len(keys)), labels=list(keys))
    for label in ax.get_xticklabels():
        label.set_rotation(90 if len(label.get_text()) > 2 else 0)  # words stand up, characters stay upright
    ax.set_yticks(range(len(queries)), labels=list(queries))
    ax.set_xticks(np.arange(-0.5, len(keys)), minor=True)
    ax.set_yticks(np.arange(-0.5, len(queries)), minor=True)
    ax.grid(which="minor", color="white", lw=1.5)
    ax.tick_params(which="minor", length=0)
    ax.xaxis.set_ticks_position("top")
    ax.xaxis.set_label_position("top")
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.set_title(title, fontsize=10, y=-0.02, va="top", pad=0)


def attention_kinds_figure() -> Figure:
    """Encoder self-attention (padding mask), decoder masked self-attention (causal mask), cross-attention
    (decoder queries, encoder keys, source padding mask) for one short padded sentence pair."""
    use_cjk()
    src = ["我", "想", "喝", "水", "。", "<pad>", "<pad>"]
    tgt = ["<bos>", "i", "want", "water", "."]
    src_keep = padding_mask(torch.tensor([[t != "<pad>" for t in src]]))[0, 0, 0]  # (S,)
    S, T = len(src), len(tgt)
    panels = [
        (src_keep.expand(S, S), src, src, "① 编码器自注意力\nQ、K、V 都来自源句\n填充掩码：谁都不看 <pad>"),
        (causal_mask(T), tgt, tgt, "② 解码器带掩码的自注意力\nQ、K、V 都来自目标句\n因果掩码：只看自己和左边"),
        (src_keep.expand(T, S), src, tgt, "③ 交叉注意力\nQ 来自解码器，K、V 来自编码器输出\n填充掩码：不看源句的 <pad>"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 5.2), gridspec_kw={"width_ratios": [S, T, S]})
    for ax, (keep, keys, queries, title) in zip(axes, panels):
        mask_panel(ax, keep.numpy(), keys, queries, title)
    axes[0].set_ylabel("查询：源句", fontsize=9)
    axes[0].set_xlabel("键：源句", fontsize=9)
    axes[1].set_ylabel("查询：目标句（右移一位）", fontsize=9)
    axes[1].set_xlabel("键：目标句", fontsize=9)
    axes[2].set_ylabel("查询：目标句", fontsize=9)
    axes[2].set_xlabel("键：源句（编码器的输出 memory）", fontsize=9)
    fig.suptitle("Transformer 里的三种注意力：同一个函数，不同的 Q/K/V 来源与掩码（蓝 = 可以看，× = 不许看）", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    return fig


def _box(ax, x, y, w, h, text, color, fontsize=9):
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.04", fc=color, ec="black", lw=1))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize)


def _arrow(ax, p, q, color="black", lw=1.2, style="-|>", connection="arc3"):
    ax.add_patch(FancyArrowPatch(p, q, arrowstyle=style, mutation_scale=11, lw=lw, color=color,
                                 connectionstyle=connection, shrinkA=0, shrinkB=0))


def _plus(ax, x, y):
    ax.add_patch(plt.Circle((x, y), 0.22, fc="white", ec="black", lw=1.2, zorder=3))
    ax.text(x, y, "+", ha="center", va="center", fontsize=12, zorder=4)


def ln_placement_figure() -> Figure:
    """Two sub-layers in a row, post-LN (the paper) beside pre-LN (GPT-2): where the LayerNorm sits and
    which path from input to output is a plain sum (the residual stream, drawn thick)."""
    use_cjk()
    fig, axes = plt.subplots(1, 2, figsize=(11, 7.2))
    stream, ln_c, f_c = "#d62728", "#eeeeee", "#fbe3c8"
    for ax, pre in zip(axes, (False, True)):
        ax.set_xlim(0, 6), ax.set_ylim(-0.6, 11.6), ax.axis("off")
        x_main, x_skip = 3.0, 1.0
        ax.text(x_main, 0.0, "输入 x", ha="center", va="center", fontsize=10)
        y = 0.3
        for i, name in enumerate(("子层 1：自注意力", "子层 2：前馈")):
            base = y + 0.5 + i * 4.6
            if pre:  # x -> LN -> f -> + x
                _box(ax, x_main, base + 0.7, 2.4, 0.6, "LayerNorm", ln_c)
                _box(ax, x_main, base + 1.9, 2.4, 0.8, name, f_c)
                _plus(ax, x_main, base + 3.2)
                _arrow(ax, (x_main, base), (x_main, base + 0.4))
                _arrow(ax, (x_main, base + 1.0), (x_main, base + 1.5))
                _arrow(ax, (x_main, base + 2.3), (x_main, base + 2.98))
                # the skip goes around the norm: the stream itself is never normalised
                ax.plot([x_main, x_skip, x_skip], [base + 0.15, base + 0.15, base + 3.2], color=stream, lw=3, zorder=1)
                _arrow(ax, (x_skip, base + 3.2), (x_main - 0.22, base + 3.2), color=stream, lw=3)
                top = base + 3.42
                if i == 0:
                    _arrow(ax, (x_main, top), (x_main, top + 1.33), color=stream, lw=3)
            else:  # x -> f -> + x -> LN
                _box(ax, x_main, base + 1.0, 2.4, 0.8, name, f_c)
                _plus(ax, x_main, base + 2.2)
                _box(ax, x_main, base + 3.2, 2.4, 0.6, "LayerNorm", ln_c)
                _arrow(ax, (x_main, base), (x_main, base + 0.6))
                _arrow(ax, (x_main, base + 1.4), (x_main, base + 1.98))
                _arrow(ax, (x_main, base + 2.42), (x_main, base + 2.9))
                ax.plot([x_main, x_skip, x_skip], [base + 0.15, base + 0.15, base + 2.2], color=stream, lw=3, zorder=1)
                _arrow(ax, (x_skip, base + 2.2), (x_main - 0.22, base + 2.2), color=stream, lw=3)
                top = base + 3.5
                if i == 0:
                    _arrow(ax, (x_main, top), (x_main, top + 1.1))
        if pre:
            _box(ax, x_main, 10.0, 2.4, 0.6, "最后的 LayerNorm", ln_c)
            _arrow(ax, (x_main, 8.52), (x_main, 9.7), color=stream, lw=3)
            _arrow(ax, (x_main, 10.3), (x_main, 10.8))
            title = "Pre-LN（GPT-2 以后）：x ← x + f(LN(x))"
            note = ("红线从输入到最后一个 LayerNorm 只有加法：\n"
                    "梯度沿恒等路径直通每一层，\n小预算、大学习率也训练得稳")
        else:
            _arrow(ax, (x_main, 9.2), (x_main, 10.8))
            title = "Post-LN（论文、torch 默认）：x ← LN(x + f(x))"
            note = ("每个子层之后都要过一次 LayerNorm：\n"
                    "残差流被反复归一化，没有直通的路径，\n需要较小的学习率和较长的预热")
        ax.text(x_main, 11.15, "输出", ha="center", va="center", fontsize=10)
        ax.text(4.45, 5.2, note, ha="left", va="center", fontsize=9, color="#444444", wrap=True)
        ax.set_title(title, fontsize=11)
    fig.suptitle("LayerNorm 放在哪里：两个子层，红色粗线是残差流（跳连）", fontsize=12)
    fig.tight_layout()
    return fig
