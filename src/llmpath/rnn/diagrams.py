"""Idea diagrams of stage 2, drawn with boxes and arrows (no training, no data).

    unrolled_rnn_figure()   # an RNN unrolled over time: shared weights, a loss per step, the gradient going back
    lstm_cell_figure()      # one LSTM step: gates i, f, g, o, the cell-state line, the hidden state

Each returns a matplotlib Figure; docs/figures.py saves them as docs/tutorials/figures/02_*.png.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch

from llmpath.plotting import use_cjk

GRAD = "#c0392b"  # the backward pass is drawn in red, dashed


def _box(ax, x, y, w, h, text, color, fontsize=11):
    """A rounded box centred at (x, y)."""
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.06", fc=color, ec="black", lw=1))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize)


def _pair(ax, x, y, zh, math, fontsize=11, color="black", va="center"):
    """Chinese text ending at x and a formula starting at x: mathtext has no CJK glyphs, so never mix the two."""
    ax.text(x, y, zh, ha="right", va=va, fontsize=fontsize, color=color)
    ax.text(x + 0.05, y, math, ha="left", va=va, fontsize=fontsize, color=color)


def _arrow(ax, a, b, color="black", ls="-", lw=1.3, rad=0.0):
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=13, color=color, ls=ls, lw=lw,
                                 connectionstyle=f"arc3,rad={rad}", shrinkA=0, shrinkB=0))


def unrolled_rnn_figure(steps: int = 4) -> Figure:
    """x_t -> h_t -> loss_t for `steps` steps, the same W_ih, W_hh, W_o everywhere; red: the gradient of BPTT."""
    use_cjk()
    fig, ax = plt.subplots(figsize=(12, 6.4))
    dx = 3.2
    xs = [2.6 + dx * k for k in range(steps)]
    ax.set_xlim(-0.2, xs[-1] + 1.8), ax.set_ylim(-0.9, 7.2), ax.axis("off")
    y_x, y_h, y_l = 0.6, 3.0, 5.4
    _box(ax, 0.6, y_h, 0.9, 0.7, "$h_0$", "#eeeeee")
    for k, x in enumerate(xs, start=1):
        _box(ax, x, y_x, 1.0, 0.7, f"$x_{k}$", "#dde8f5")
        _box(ax, x, y_h, 1.0, 0.8, f"$h_{k}$", "#fbe3c8")
        _box(ax, x, y_l, 1.25, 0.7, rf"$\ell_{k}$", "#e6dcf2")
        # forward: input -> state, state -> loss (through the softmax head)
        _arrow(ax, (x - 0.15, y_x + 0.4), (x - 0.15, y_h - 0.45))
        ax.text(x - 0.25, (y_x + y_h) / 2, "$W_{ih}$", ha="right", va="center", fontsize=10)
        _arrow(ax, (x - 0.15, y_h + 0.45), (x - 0.15, y_l - 0.4))
        ax.text(x - 0.25, (y_h + y_l) / 2, "$W_o$", ha="right", va="center", fontsize=10)
        # backward: the loss of this step sends its gradient into h_k
        _arrow(ax, (x + 0.2, y_l - 0.4), (x + 0.2, y_h + 0.45), color=GRAD, ls="--")
        # forward and backward between neighbouring states
        left = 0.6 + 0.5 if k == 1 else xs[k - 2] + 0.55
        _arrow(ax, (left, y_h + 0.15), (x - 0.55, y_h + 0.15))
        ax.text((left + x - 0.55) / 2, y_h + 0.3, "$W_{hh}$", ha="center", va="bottom", fontsize=10)
        if k > 1:
            _arrow(ax, (x - 0.55, y_h - 0.2), (left, y_h - 0.2), color=GRAD, ls="--")
    mid = (xs[-2] + xs[-1]) / 2
    ax.text(mid, y_h - 0.45, "$\\partial h_t/\\partial h_{t-1}$\n$=\\mathrm{diag}(1-h_t^2)\\,W_{hh}$",
            ha="center", va="top", fontsize=10.5, color=GRAD)
    ax.text(xs[-1] + 0.75, y_h, "…", ha="left", va="center", fontsize=16)
    _pair(ax, (xs[0] + xs[-1]) / 2 - 0.3, y_l + 0.85, "每一步一个损失：",
          r"$L=\sum_t \ell_t,\quad \ell_t=-\log p(x_{t+1}\mid x_{\leq t})$")
    _pair(ax, (xs[0] + xs[-1]) / 2 + 0.2, -0.45, "每个时间步重复使用同一组权重：", r"$W_{ih},\ W_{hh},\ W_o$")
    ax.legend(handles=[Line2D([], [], color="black", lw=1.3, label="前向计算"),
                       Line2D([], [], color=GRAD, lw=1.3, ls="--", label="反向传播的梯度（BPTT）：沿时间往回走，每步乘一个雅可比矩阵")],
              loc="upper left", fontsize=10, frameon=False, bbox_to_anchor=(0.0, 1.02))
    ax.set_title("沿时间展开的 RNN", fontsize=13)
    return fig


def lstm_cell_figure() -> Figure:
    """One LSTM step: [h_{t-1}, x_t] feeds four gates; c_t = f*c_{t-1} + i*g along the top; h_t = o*tanh(c_t)."""
    use_cjk()
    fig, ax = plt.subplots(figsize=(12.5, 6.6))
    ax.set_xlim(-0.4, 13.8), ax.set_ylim(-0.9, 7.6), ax.axis("off")
    ax.add_patch(FancyBboxPatch((1.6, 0.9), 9.3, 5.5, boxstyle="round,pad=0.1", fc="#f6f6f6", ec="0.5", lw=1))
    y_c, y_gate, y_in = 5.6, 2.75, 1.5

    def op(x, y, sym):
        ax.add_patch(Circle((x, y), 0.3, fc="white", ec="black", lw=1.1, zorder=3))
        ax.text(x, y, sym, ha="center", va="center", fontsize=13, zorder=4)

    # the cell-state line: c_{t-1} -> x f -> + i*g -> c_t
    x_f, x_i, x_g, x_o = 3.3, 5.0, 6.6, 8.2
    x_add, x_out, x_h = 5.8, 9.7, 11.6
    ax.text(0.0, y_c, "$c_{t-1}$", ha="center", va="center", fontsize=13)
    _arrow(ax, (0.4, y_c), (x_f - 0.3, y_c), lw=2.2)
    _arrow(ax, (x_f + 0.3, y_c), (x_add - 0.3, y_c), lw=2.2)
    _arrow(ax, (x_add + 0.3, y_c), (12.6, y_c), lw=2.2)
    ax.text(13.0, y_c, "$c_t$", ha="center", va="center", fontsize=13)
    op(x_f, y_c, "×")
    op(x_add, y_c, "+")
    ax.text(4.6, y_c + 0.45, "细胞状态：只有逐元素的 × 和 +（加法通路）", ha="center", va="bottom", fontsize=10.5)

    # the input [h_{t-1}; x_t] runs under the gates
    ax.text(0.0, y_in, "$h_{t-1}$", ha="center", va="center", fontsize=13)
    _arrow(ax, (0.45, y_in), (2.3, y_in))
    ax.text(2.3, -0.45, "$x_t$", ha="center", va="center", fontsize=13)
    _arrow(ax, (2.3, -0.2), (2.3, y_in - 0.05))
    ax.plot([2.3, x_o], [y_in, y_in], color="black", lw=1.3)
    _pair(ax, 3.05, y_in - 0.35, "拼接", r"$[h_{t-1};\, x_t]$", fontsize=10)
    gates = ((x_f, r"$f_t=\sigma(\cdot)$", "遗忘门", "#f5d0d0"), (x_i, r"$i_t=\sigma(\cdot)$", "输入门", "#d9efd9"),
             (x_g, r"$g_t=\tanh(\cdot)$", "候选内容", "#dde8f5"), (x_o, r"$o_t=\sigma(\cdot)$", "输出门", "#fbe3c8"))
    for x, formula, name, color in gates:
        _arrow(ax, (x, y_in), (x, y_gate - 0.5))
        _box(ax, x, y_gate, 1.35, 0.95, "", color)
        ax.text(x, y_gate + 0.2, name, ha="center", va="center", fontsize=10)
        ax.text(x, y_gate - 0.2, formula, ha="center", va="center", fontsize=10.5)

    # f scales the old cell state; i*g is what gets written
    _arrow(ax, (x_f, y_gate + 0.5), (x_f, y_c - 0.3))
    ax.text(x_f + 0.15, (y_gate + y_c) / 2 + 0.3, r"$f_t\odot c_{t-1}$", ha="left", va="center", fontsize=10.5)
    y_ig = 4.3
    op(x_add, y_ig, "×")
    _arrow(ax, (x_i, y_gate + 0.5), (x_add - 0.22, y_ig - 0.22))
    _arrow(ax, (x_g, y_gate + 0.5), (x_add + 0.22, y_ig - 0.22))
    _arrow(ax, (x_add, y_ig + 0.3), (x_add, y_c - 0.3))
    ax.text(x_add + 0.4, y_ig + 0.1, r"$i_t\odot g_t$", ha="left", va="bottom", fontsize=10.5)

    # h_t = o * tanh(c_t)
    y_tanh, y_h = 4.3, 2.75
    _arrow(ax, (x_out, y_c), (x_out, y_tanh + 0.3))
    ax.add_patch(FancyBboxPatch((x_out - 0.42, y_tanh - 0.27), 0.84, 0.54, boxstyle="round,pad=0.05",
                                fc="white", ec="black", lw=1, zorder=3))
    ax.text(x_out, y_tanh, "tanh", ha="center", va="center", fontsize=10, zorder=4)
    _arrow(ax, (x_out, y_tanh - 0.3), (x_out, y_h + 0.3))
    ax.text(x_out + 0.55, y_tanh, r"$h_t=o_t\odot\tanh(c_t)$", ha="left", va="center", fontsize=10.5)
    op(x_out, y_h, "×")
    _arrow(ax, (x_o + 0.7, y_gate), (x_out - 0.3, y_h))
    ax.plot([x_out + 0.3, x_h, x_h], [y_h, y_h, y_in], color="black", lw=1.3)
    _arrow(ax, (x_h, y_in), (12.6, y_in))
    ax.text(13.0, y_in, "$h_t$", ha="center", va="center", fontsize=13)
    ax.text(12.9, y_in - 0.45, "隐藏状态\n（给输出层和下一步）", ha="center", va="top", fontsize=9.5)

    ax.set_title("一个 LSTM 时间步：三个门（0 到 1 之间的“开度”）和一条细胞状态线", fontsize=13, pad=26)
    _pair(ax, 6.9, 7.25, "沿细胞状态线没有反复乘上的权重矩阵：", r"$\partial c_t/\partial c_{t-1}=\mathrm{diag}(f_t)+\ldots$")
    return fig
