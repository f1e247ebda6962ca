"""Figures of the vision-language chapter: where each word of a caption looks in the image."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import torch.nn.functional as F
from torch import Tensor

from llmpath.plotting import use_cjk
from llmpath.vlm.model import VLM, caption, caption_attention


def attention_figure(model: VLM, tok, image: Tensor, lang: str = "zh", max_words: int = 8):
    """The image, then one panel per generated token: the decoder's attention (mean over heads and layers) from the
    position that writes that token to each image patch, spread over the patch's pixels."""
    from llmpath.vlm.experiments import (
        prompt,  # the language tag the captioner was trained with
    )

    use_cjk()
    start = prompt(tok, lang)
    text = caption(model, image[None], tok, prompt=start)[0]
    ids = start + tok.encode(text)
    att = caption_attention(model, image, ids)  # (T, n_patches): row t is the query that predicts ids[t + 1]
    g = math.isqrt(att.shape[1])
    words = [(t, tok.itos[ids[t + 1]]) for t in range(len(start) - 1, len(ids) - 1)]
    words = [w for w in words if w[1].strip() and w[1] not in "，,."][:max_words]
    S = image.shape[-1]
    fig, axes = plt.subplots(1, len(words) + 1, figsize=(1.9 * (len(words) + 1), 2.4), squeeze=False)
    shown = image[0] if image.shape[0] == 1 else image.mean(0)
    axes[0, 0].imshow(shown.numpy(), cmap="gray_r")
    axes[0, 0].set_title("输入图像", fontsize=9)
    for ax, (t, word) in zip(axes[0, 1:], words):
        heat = att[t].view(1, 1, g, g)
        heat = F.interpolate(heat / heat.max().clamp_min(1e-9), size=(S, S), mode="nearest")[0, 0]
        ax.imshow(shown.numpy(), cmap="gray_r")
        ax.imshow(heat.numpy(), cmap="inferno", alpha=0.55, vmin=0, vmax=1)
        ax.set_title(f"写“{word}”时", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"描述：{text}（每格的亮度：注意力占该词最大值的比例）", fontsize=10)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------- idea diagrams

_IMG, _TXT, _FROZEN, _NEW = "#cfe3f7", "#fde2c4", "#e3e3e3", "#d4ecd0"


def _box(ax, x: float, y: float, w: float, h: float, text: str, color: str, fontsize: float = 9) -> None:
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.04", fc=color, ec="#555555",
                                lw=0.9))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize)


def _arrow(ax, a: tuple[float, float], b: tuple[float, float], color: str = "#333333") -> None:
    ax.annotate("", xy=b, xytext=a, arrowprops={"arrowstyle": "-|>", "color": color, "lw": 1.1})


def clip_matrix_figure():
    """CLIP's batch: B images and B captions give a B x B similarity table; row i should choose caption i. Two scenes
    with the same caption are each other's positives (our templates repeat), so their cells are positives too."""
    use_cjk()
    caps = ["左边是 3，右边是 7", "左边是 1，右边是 1", "左边是 3，右边是 7", "左边是 0，右边是 5", "左边是 9，右边是 2"]
    B = len(caps)
    fig, ax = plt.subplots(figsize=(9.5, 5.6))
    ax.set_xlim(-4.6, B + 0.6)
    ax.set_ylim(-1.2, B + 2.6)
    ax.axis("off")
    ax.invert_yaxis()
    for j, c in enumerate(caps):  # columns: the captions, through the text encoder
        ax.text(j + 0.5, -0.15, c, rotation=35, ha="left", va="bottom", fontsize=8)
    for i in range(B):  # rows: the images, through the ViT
        _box(ax, -2.2, i + 0.5, 3.6, 0.78, f"图像 {i + 1} → ViT → 单位向量", _IMG, 8)
        for j in range(B):
            pos = caps[i] == caps[j]
            ax.add_patch(plt.Rectangle((j + 0.05, i + 0.05), 0.9, 0.9, fc="#7bc67b" if pos else "#f2f2f2",
                                       ec="#888888", lw=0.6))
            ax.text(j + 0.5, i + 0.5, r"$s\,\langle v_i, t_j\rangle$" if i == j else ("正" if pos else "负"),
                    ha="center", va="center", fontsize=8)
    ax.text(B / 2, B + 0.55, "每一行对各列做 softmax（图→文），每一列对各行做 softmax（文→图），两个交叉熵取平均；\n"
            "s = 1/温度 是学出来的。第 1、3 张图的描述相同：它们互为正例，不当负例。", ha="center", va="top", fontsize=9)
    ax.text(-2.2, -0.5, "文本编码器 → 单位向量", ha="center", fontsize=9)
    fig.suptitle("CLIP 的一个批：B 张图 × B 条描述的相似度表", fontsize=11)
    fig.tight_layout()
    return fig


def prefix_vs_cross_figure():
    """Two ways to let a language model see an image: LLaVA puts projected patch features in front of the text as
    tokens; Flamingo keeps the text alone and adds cross-attention layers between the (frozen) LM's layers."""
    use_cjk()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    for ax in axes:
        ax.set_xlim(0, 10)
        ax.set_ylim(0, 7)
        ax.axis("off")
    ax = axes[0]
    ax.set_title("LLaVA：图块特征当作前缀词元（本章）", fontsize=11)
    _box(ax, 1.6, 1.0, 2.4, 0.8, "图像 → ViT", _FROZEN)
    _box(ax, 1.6, 2.5, 2.4, 0.8, "投影层（新训练）", _NEW)
    _arrow(ax, (1.6, 1.4), (1.6, 2.1))
    for k in range(4):
        _box(ax, 0.7 + 0.6 * k, 3.9, 0.5, 0.6, "图", _IMG, 8)
    for k, w in enumerate(["<bos>", "zh", "左", "边", "是"]):
        _box(ax, 3.4 + 0.95 * k, 3.9, 0.85, 0.6, w, _TXT, 8)
    _arrow(ax, (1.6, 2.9), (1.6, 3.55))
    _box(ax, 5.0, 5.4, 8.6, 0.9, "解码器（第 9 章的 Llama 式模型）：因果自注意力同时读图像词元和文字", _FROZEN)
    _arrow(ax, (5.0, 4.25), (5.0, 4.9))
    ax.text(5.0, 6.4, "第一阶段：只训练投影层；第二阶段：投影层 + 解码器", ha="center", fontsize=9)
    ax = axes[1]
    ax.set_title("Flamingo：文字单独走，图像经交叉注意力插进来", fontsize=11)
    _box(ax, 1.6, 1.0, 2.4, 0.8, "图像 → 视觉编码器", _FROZEN)
    _box(ax, 1.6, 2.5, 2.4, 0.8, "重采样器（定长）", _NEW)
    _arrow(ax, (1.6, 1.4), (1.6, 2.1))
    for k, w in enumerate(["<bos>", "左", "边", "是"]):
        _box(ax, 5.2 + 0.95 * k, 0.5, 0.85, 0.6, w, _TXT, 8)
    for k, (y, text, color) in enumerate([(1.8, "语言模型层 1（冻结）", _FROZEN), (3.1, "门控交叉注意力（新）", _NEW),
                                          (4.4, "语言模型层 2（冻结）", _FROZEN), (5.7, "门控交叉注意力（新）", _NEW)]):
        _box(ax, 6.6, y, 4.2, 0.8, text, color)
        _arrow(ax, (6.6, y - 0.9 if k else 0.8), (6.6, y - 0.4))
    for y in (3.1, 5.7):
        _arrow(ax, (2.8, 2.5), (4.5, y))
    ax.text(5.0, 6.6, "只有文字词元在语言模型里往上走；tanh 门初值为 0，开始时就是原来的语言模型", ha="center", fontsize=9)
    fig.tight_layout()
    return fig
