"""Idea diagrams of stage 6 (no training, no data): how BERT builds a masked example, and what its mask lets see.

    python docs/figures.py --runs=/nonexistent     # draws every diagram into docs/tutorials/figures/

Functions return a matplotlib Figure; docs/figures.py saves it. The masks are the models' own
(`padding_mask`, `causal_mask` from the Transformer stage).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch

from llmpath.plotting import use_cjk
from llmpath.transformer.attention import causal_mask, padding_mask
from llmpath.transformer.diagrams import mask_panel

# one sentence pair, the 15% chosen positions and what each became (80% [MASK], 10% random, 10% unchanged)
PAIR_A = ["今", "天", "的", "菜", "很", "好", "吃"]
PAIR_B = ["服", "务", "也", "不", "错", "，", "下", "次", "还", "来"]
CHOSEN = {6: "[MASK]", 10: "贵", 13: "错"}  # 3 of the 17 maskable tokens  # position in [CLS] A [SEP] B [SEP] -> what the input shows


def masking_figure() -> Figure:
    """[CLS] A [SEP] B [SEP] row by row: the tokens, the segment ids, the chosen 15% and what the model is shown
    (80% [MASK], 10% a random token, 10% unchanged), the MLM targets, and the NSP label read from [CLS]."""
    use_cjk()
    tokens = ["[CLS]", *PAIR_A, "[SEP]", *PAIR_B, "[SEP]"]
    segments = [0] * (len(PAIR_A) + 2) + [1] * (len(PAIR_B) + 1)
    shown = [CHOSEN.get(i, t) for i, t in enumerate(tokens)]
    colors = {"[MASK]": "#f4a261", "random": "#e76f51", "same": "#2a9d8f"}
    n = len(tokens)
    fig, ax = plt.subplots(figsize=(15, 4.6))
    ax.set_xlim(-2.6, n), ax.set_ylim(-0.6, 4.9), ax.axis("off")
    rows = [(4.2, "原始词元"), (3.2, "句段编号"), (2.2, "输入模型"), (1.2, "MLM 目标")]
    for y, label in rows:
        ax.text(-2.5, y, label, ha="left", va="center", fontsize=10)

    def cell(x, y, text, fc, ec="#555555"):
        ax.add_patch(FancyBboxPatch((x - 0.42, y - 0.32), 0.84, 0.64, boxstyle="round,pad=0.02", fc=fc, ec=ec, lw=0.8))
        ax.text(x, y, text, ha="center", va="center", fontsize=8 if len(text) > 2 else 11)

    for i, (t, s, v) in enumerate(zip(tokens, segments, shown)):
        special = t in ("[CLS]", "[SEP]")
        seg_fc = "#dbe9f6" if s == 0 else "#fde8c8"
        cell(i, 4.2, t, "#eeeeee" if special else seg_fc)
        cell(i, 3.2, str(s), seg_fc)
        kind = None if i not in CHOSEN else "[MASK]" if v == "[MASK]" else "same" if v == t else "random"
        cell(i, 2.2, v, colors[kind] if kind else ("#eeeeee" if special else "white"))
        cell(i, 1.2, t if kind else "—", "#fff3b0" if kind else "white", ec="#555555" if kind else "#cccccc")
    ax.text(0, 0.35, "[CLS] 的输出 → NSP：B 是 A 的下一句吗？（50% 是真下一句，50% 取自别的文档）",
            ha="left", va="center", fontsize=10)
    legend = [("[MASK]", "被选中，换成 [MASK]（80%）"), ("random", "被选中，换成随机词元（10%）"),
              ("same", "被选中，保持原样（10%）")]
    for k, (key, text) in enumerate(legend):
        x = 0.2 + 4.6 * k
        ax.add_patch(FancyBboxPatch((x - 0.3, -0.45), 0.6, 0.4, boxstyle="round,pad=0.02", fc=colors[key], ec="#555555"))
        ax.text(x + 0.45, -0.25, text, ha="left", va="center", fontsize=9)
    fig.suptitle("BERT 的预训练样本：随机选 15% 的词元（不含 [CLS]/[SEP]），只在这些位置算 MLM 损失", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return fig


def bidirectional_vs_causal_figure() -> Figure:
    """The same padded sentence through BERT's mask (every real token sees every real token) and GPT's causal
    mask (token t sees tokens 1..t): which keys each query may read."""
    use_cjk()
    tokens = ["[CLS]", "菜", "很", "好", "吃", "[SEP]", "[PAD]", "[PAD]"]
    real = torch.tensor([[t != "[PAD]" for t in tokens]])
    T = len(tokens)
    bidir = padding_mask(real)[0, 0, 0].expand(T, T).numpy()  # each query row: the real keys
    words = tokens[1:5]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 5.4), gridspec_kw={"width_ratios": [T, len(words)]})
    mask_panel(a, bidir, tokens, tokens, "BERT（双向）：每个词元看见全部真实词元，[PAD] 被遮住")
    mask_panel(b, causal_mask(len(words)).numpy(), words, words, "GPT（因果）：第 t 个词只看第 1…t 个")
    b.set_ylabel("")
    fig.suptitle("同一句话，两种注意力掩码（蓝 = 可以看，× = 不能看）\n"
                 "“好”在 BERT 里同时看到左边的“很”和右边的“吃”，在 GPT 里只看到左边", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    return fig
