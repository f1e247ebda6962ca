"""Idea diagram of stage 3, drawn with boxes and arrows (no training, no data).

    attention_figure()   # one decoding step of an encoder-decoder with (Bahdanau) attention

It returns a matplotlib Figure; docs/figures.py saves it as docs/tutorials/figures/03_attention_step.png.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from llmpath.plotting import use_cjk

FWD, BWD, DEC, CTX = "#fbe3c8", "#dde8f5", "#d9efd9", "#f5d0d0"


def _box(ax, x, y, w, h, text, color, fontsize=11):
    """A rounded box centred at (x, y)."""
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.05", fc=color, ec="black", lw=1))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize)


def _arrow(ax, a, b, color="black", lw=1.2, ls="-", rad=0.0):
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=12, color=color, lw=lw, ls=ls,
                                 connectionstyle=f"arc3,rad={rad}", shrinkA=0, shrinkB=0))


def attention_figure() -> Figure:
    """Source 我想喝水。, decoder about to write "drink": scores e_tj, weights alpha_tj, context c_t, the next word.

    The numbers are made up for the picture (a trained model's weights are in the alignment maps).
    """
    use_cjk()
    fig, ax = plt.subplots(figsize=(13, 7.6))
    ax.set_xlim(-0.6, 16.2), ax.set_ylim(-0.6, 9.4), ax.axis("off")
    src = ["我", "想", "喝", "水", "。"]
    scores = np.array([-0.4, 0.6, 2.4, 0.9, -1.0])
    alpha = np.exp(scores) / np.exp(scores).sum()
    xs = [1.2 + 1.55 * j for j in range(len(src))]
    y_src, y_b, y_f, y_e, y_a = 0.2, 1.35, 2.15, 3.35, 4.1

    # the bidirectional encoder: a forward and a backward state per source character
    for j, (x, ch) in enumerate(zip(xs, src), start=1):
        ax.text(x, y_src, ch, ha="center", va="center", fontsize=14)
        _arrow(ax, (x, y_src + 0.3), (x, y_b - 0.3))
        _box(ax, x, y_b, 1.0, 0.55, rf"$\overleftarrow{{h}}_{j}$", BWD, 10)
        _box(ax, x, y_f, 1.0, 0.55, rf"$\overrightarrow{{h}}_{j}$", FWD, 10)
        if j < len(src):
            _arrow(ax, (x + 0.55, y_f), (xs[j] - 0.55, y_f))
            _arrow(ax, (xs[j] - 0.55, y_b), (x + 0.55, y_b))
    ax.text(xs[0] - 0.75, (y_b + y_f) / 2, "双向\n编码器", ha="right", va="center", fontsize=10.5)
    ax.text(xs[0] - 0.75, y_src, "源句", ha="right", va="center", fontsize=10.5)

    # scores, softmax weights (bars), and the weighted sum
    for x, e, a in zip(xs, scores, alpha):
        ax.text(x, y_e, f"{e:+.1f}", ha="center", va="center", fontsize=10.5,
                bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="0.6"))
        ax.add_patch(plt.Rectangle((x - 0.35, y_a), 0.7, 2.2 * a, fc="0.35", ec="black", lw=0.8))
        ax.text(x, y_a + 2.2 * a + 0.08, f"{a:.2f}", ha="center", va="bottom", fontsize=10)
    # mathtext has no CJK glyphs: Chinese words and formulas are separate texts
    ax.text(xs[0] - 0.75, y_e + 0.15, "分数", ha="right", va="bottom", fontsize=10.5)
    ax.text(xs[0] - 0.75, y_e - 0.05, "$e_{tj}$", ha="right", va="top", fontsize=11)
    ax.text(xs[0] - 0.75, y_a + 0.55, "softmax 权重", ha="right", va="bottom", fontsize=10.5)
    ax.text(xs[0] - 0.75, y_a + 0.35, r"$\alpha_{tj}$", ha="right", va="top", fontsize=11)
    y_c, x_c = 7.9, xs[2]
    _box(ax, x_c, y_c, 4.6, 0.8, "", CTX)
    ax.text(x_c - 0.35, y_c, "上下文向量", ha="right", va="center", fontsize=11)
    ax.text(x_c - 0.25, y_c, r"$c_t=\sum_j \alpha_{tj}\, h_j$", ha="left", va="center", fontsize=12)
    for x, a in zip(xs, alpha):
        _arrow(ax, (x, y_a + 2.2 * a + 0.45), (x_c + 0.45 * (x - x_c), y_c - 0.45), color="0.3", lw=0.6 + 5 * a)

    # the decoder: s_{t-1} queries every h_j; c_t and y_{t-1} make s_t; s_t gives the next word
    x_prev, x_now, y_s = 10.6, 13.6, 2.15
    _box(ax, x_prev, y_s, 1.3, 0.7, "$s_{t-1}$", DEC, 12)
    _box(ax, x_now, y_s, 1.3, 0.7, "$s_t$", DEC, 12)
    ax.text((x_prev + x_now) / 2, y_s + 0.5, "解码器（GRU）", ha="center", va="center", fontsize=10.5)
    _arrow(ax, (x_prev + 0.7, y_s), (x_now - 0.7, y_s))
    ax.text(x_prev - 0.9, y_s, "…", ha="right", va="center", fontsize=14)
    _arrow(ax, (x_prev - 0.85, y_s), (x_prev - 0.68, y_s))
    ax.text(x_prev, y_src, "want", ha="center", va="center", fontsize=13, color="0.4")
    _arrow(ax, (x_prev, y_src + 0.3), (x_prev, y_s - 0.4), color="0.4")
    ax.text(x_now, y_src, "to", ha="center", va="center", fontsize=13)
    ax.text(x_now + 0.45, y_src, "上一步写出的词", ha="left", va="center", fontsize=10)
    ax.text(x_now + 0.12, (y_src + y_s) / 2 - 0.15, "$y_{t-1}$", ha="left", va="center", fontsize=11)
    _arrow(ax, (x_now, y_src + 0.3), (x_now, y_s - 0.4))
    _arrow(ax, (x_prev - 0.7, y_s + 0.25), (xs[-1] + 0.75, y_e), color="#1f5fa8", ls="--", rad=0.15)
    ax.text(8.5, 3.6, "查询", ha="center", va="bottom", fontsize=10.5, color="#1f5fa8")
    _arrow(ax, (x_c + 2.35, y_c), (x_now - 0.3, y_s + 0.4), rad=-0.25)
    y_out = 6.0
    _box(ax, x_now + 0.3, y_out, 2.6, 0.75, "softmax → 下一个词", "#e6dcf2", 10.5)
    _arrow(ax, (x_now, y_s + 0.4), (x_now, y_out - 0.42))
    ax.text(x_now + 0.3, y_out + 0.85, "drink", ha="center", va="center", fontsize=15)
    _arrow(ax, (x_now + 0.3, y_out + 0.42), (x_now + 0.3, y_out + 0.6))

    ax.text(8.0, 9.2, "编码器-解码器 + 注意力（Bahdanau）：解码第 t 步（数字是示意）", ha="center", va="center", fontsize=13)
    ax.text(8.0, 8.75, r"$e_{tj}=v^\top\tanh(W_q s_{t-1}+W_k h_j)\qquad \alpha_{tj}=\mathrm{softmax}_j(e_{tj})$",
            ha="center", va="center", fontsize=11.5)
    return fig
