"""Idea diagrams of chapter 1, drawn from the library's own layers (no data, no training).

    computation_graph()   # the 2-2-2 ReLU network of the worked example: forward values, gradients
    worked_example()      # the numbers that figure (and the chapter) shows
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from llmpath.mlp.numpy_mlp import MLP, softmax_cross_entropy
from llmpath.plotting import plt, use_cjk

# The worked example of chapter 1, section 3: one sample, 2 inputs, 2 ReLU hidden units, 2 classes.
# Chosen so that a learner can follow it with a calculator: the second hidden unit is off (z < 0),
# and the logits differ by 0.9, so p = 1 / (1 + e^-0.9).
EXAMPLE = {
    "x": [[1.0, 2.0]],
    "y": [1],
    "W1": [[0.5, -0.3], [0.2, 0.4]],
    "b1": [0.1, -0.6],
    "W2": [[0.6, -0.4], [0.3, 0.8]],
    "b2": [0.0, 0.1],
}


def worked_example() -> dict[str, np.ndarray | float]:
    """Forward and backward of EXAMPLE through the NumPy MLP's own layers (float64), every intermediate kept.

    Keys: x, y, W1, b1, W2, b2 (inputs); z1, h, z2, p, loss (forward); dz2, dW2, db2, dh, dz1, dW1, db1, dx
    (backward, each d = dloss/d that)."""
    e = {k: np.array(v, dtype=np.int64 if k == "y" else np.float64) for k, v in EXAMPLE.items()}
    m = MLP((2, 2, 2), "relu", dtype=np.float64)
    lin1, relu, lin2 = m.layers
    lin1.need_dx = True  # in training the input is data and needs no gradient; here we show it anyway
    for lin, w, b in ((lin1, "W1", "b1"), (lin2, "W2", "b2")):
        lin.params["W"][...], lin.params["b"][...] = e[w], e[b]
    z1 = lin1.forward(e["x"])
    h = relu.forward(z1)
    z2 = lin2.forward(h)
    loss, dz2 = softmax_cross_entropy(z2, e["y"])
    dh = lin2.backward(dz2)
    dz1 = relu.backward(dh)
    dx = lin1.backward(dz1)
    p = np.exp(z2 - z2.max()) / np.exp(z2 - z2.max()).sum()
    return {**e, "z1": z1, "h": h, "z2": z2, "p": p, "loss": loss, "dz2": dz2, "dW2": lin2.grads["W"],
            "db2": lin2.grads["b"], "dh": dh, "dz1": dz1, "dW1": lin1.grads["W"], "db1": lin1.grads["b"], "dx": dx}


def _vec(a) -> str:
    return "[" + ", ".join(f"{v + 0.0:.4f}" for v in np.ravel(a)) + "]"  # + 0.0 turns -0.0 into 0.0


def _mat(a) -> str:
    return "\n".join(_vec(row) for row in np.asarray(a))


def computation_graph() -> Figure:
    """The worked example as a graph: value nodes (forward value in blue, gradient in red), the operations
    between them, the parameters above; black arrows run forward, red ones backward with the local rule."""
    use_cjk()
    v = worked_example()
    blue, red = "#1f4e9c", "#c0392b"
    # widths along the row (inches = data units): a label column, then value, op, value, ... , loss
    order = ["x", "op1", "z1", "op2", "h", "op3", "z2", "op4", "L"]
    width = {k: (1.15 if k.startswith("op") else 1.25 if k == "L" else 1.7) for k in order}
    gap, left = 0.42, 1.0
    xs, at = {}, left
    for k in order:
        xs[k] = at + width[k] / 2
        at += width[k] + gap
    fig, ax = plt.subplots(figsize=(at, 6.6))
    ax.set_xlim(0, at), ax.set_ylim(0, 6.6), ax.axis("off")

    def box(cx, cy, w, h, color, lines):
        ax.add_patch(FancyBboxPatch((cx - w / 2, cy - h / 2), w, h, boxstyle="round,pad=0.06", fc=color,
                                    ec="black", lw=1))
        n = len(lines)
        for k, (text, c, size) in enumerate(lines):
            ax.text(cx, cy + h / 2 - h * (k + 0.5) / n, text, ha="center", va="center", color=c, fontsize=size)

    def arrow(x0, y0, x1, y1, color="black"):
        ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=14, lw=1.3, color=color))

    y0, vh, oh = 2.9, 1.2, 0.8
    for key, name, bwd in (("x", r"$x$", "dx"), ("z1", r"$z_1$", "dz1"), ("h", r"$h$", "dh"), ("z2", r"$z_2$", "dz2")):
        box(xs[key], y0, width[key], vh, "#eef3fb", [(name, "black", 12), (_vec(v[key]), blue, 9),
                                                     (_vec(v[bwd]), red, 9)])
    box(xs["L"], y0, width["L"], vh, "#f6eef8", [("损失 L", "black", 11), (f"{v['loss']:.4f}", blue, 9.5),
                                                 ("1", red, 9.5)])
    ax.text(left - 0.15, y0, "前向值", ha="right", va="center", color=blue, fontsize=10)
    ax.text(left - 0.15, y0 - vh / 3, "梯度", ha="right", va="center", color=red, fontsize=10)
    ops = {"op1": "线性层 1\n" + r"$xW_1+b_1$", "op2": "ReLU\n" + r"$\max(z_1,0)$",
           "op3": "线性层 2\n" + r"$hW_2+b_2$", "op4": "softmax\n交叉熵"}
    for key, text in ops.items():
        box(xs[key], y0, width[key], oh, "#fdf1dc", [(text, "black", 9.5)])
    for a, b in zip(order, order[1:]):  # forward: left to right, along the row
        arrow(xs[a] + width[a] / 2 + 0.07, y0, xs[b] - width[b] / 2 - 0.07, y0)
    # backward: right to left under the row, each labelled with what turns the gradient on its right
    # into the one on its left
    rules = {"op4": r"$p-\mathrm{onehot}(y)$", "op3": r"$\cdot\,W_2^\top$", "op2": r"$\odot\,\mathbb{1}[z_1>0]$",
             "op1": r"$\cdot\,W_1^\top$"}
    yb = y0 - vh / 2 - 0.45
    for a, op, b in (("z2", "op4", "L"), ("h", "op3", "z2"), ("z1", "op2", "h"), ("x", "op1", "z1")):
        arrow(xs[b] - 0.1, yb, xs[a] + 0.1, yb, color=red)
        ax.text(xs[op], yb - 0.3, rules[op], ha="center", va="center", color=red, fontsize=11)
    # the parameters above the two linear layers, with their gradients
    for op, w, b, dw, db, k in (("op1", "W1", "b1", "dW1", "db1", 1), ("op3", "W2", "b2", "dW2", "db2", 2)):
        cx = xs[op]
        box(cx - 1.0, 5.25, 1.72, 1.45, "#e8f4e8", [(rf"$W_{k}$", "black", 11), (_mat(v[w]), blue, 9),
                                                   (_mat(v[dw]), red, 9)])
        box(cx + 1.0, 5.25, 1.72, 1.45, "#e8f4e8", [(rf"$b_{k}$", "black", 11), (_vec(v[b]), blue, 9),
                                                   (_vec(v[db]), red, 9)])
        arrow(cx - 0.7, 4.45, cx - 0.2, y0 + oh / 2 + 0.06)
        arrow(cx + 0.7, 4.45, cx + 0.2, y0 + oh / 2 + 0.06)
    box(xs["op4"], 4.6, 1.2, 0.5, "#e8f4e8", [("标签 y = 1", "black", 10)])
    arrow(xs["op4"], 4.33, xs["op4"], y0 + oh / 2 + 0.06)
    p = v["p"].ravel()
    ax.text(xs["op4"], yb - 0.75, rf"$p$ = [{p[0]:.4f}, {p[1]:.4f}]", ha="center", va="center", color=blue,
            fontsize=10)
    ax.text(left - 0.8, 0.35, "蓝色：前向的值，从左往右算；红色：损失对它的梯度 ∂L/∂(·)，从右往左算，"
            "红色箭头下面是每一步乘上的东西", ha="left", va="center", fontsize=10)
    ax.text(at / 2, 6.4, "一个 2-2-2 的 ReLU 网络：前向与反向传播的每一个数（一个样本，类别 y = 1）",
            ha="center", va="center", fontsize=13)
    return fig
