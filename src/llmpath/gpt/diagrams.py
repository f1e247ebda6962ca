"""Idea diagrams of stage 5 (no training, no data): the causal mask that lets one forward pass train T predictions.

    python docs/figures.py --runs=/nonexistent     # draws every diagram into docs/tutorials/figures/

Functions return a matplotlib Figure; docs/figures.py saves it. The mask is the model's own (`causal_mask`).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from llmpath.plotting import use_cjk
from llmpath.transformer.attention import causal_mask
from llmpath.transformer.diagrams import mask_panel


def _show(c: str) -> str:
    return {"\n": "\\n", " ": "␣"}.get(c, c)


def causal_mask_figure(text: str = "ROMEO:\n") -> Figure:
    """The (T, T) causal keep mask over the characters of `text[:-1]`, each row labelled with the character it
    must predict (the input shifted by one): one forward pass, T next-character predictions, none sees its answer."""
    use_cjk()
    x, y = [_show(c) for c in text[:-1]], [_show(c) for c in text[1:]]
    T = len(x)
    fig, ax = plt.subplots(figsize=(7.6, 5.6))
    rows = [f"{t + 1}: {c}" for t, c in enumerate(x)]
    mask_panel(ax, causal_mask(T).numpy(), x, rows, "", xlabel="键：可以被看的输入字符（位置 1…T）",
               ylabel="查询：位置 t 与它的输入字符")
    for t, target in enumerate(y):
        ax.text(T - 0.3, t, f"→ 预测 “{target}”（只看过 {''.join(x[: t + 1])}）",
                ha="left", va="center", fontsize=9, color="#333333", clip_on=False)
    fig.suptitle(f"因果掩码（T = {T}）：第 t 行只看第 1…t 列（蓝），右上的 × 是“未来”\n"
                 "一次前向同时算出 T 个“下一个字符”的预测，目标就是输入错开一位", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    return fig
