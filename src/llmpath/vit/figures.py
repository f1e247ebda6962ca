"""Figures of stage 7: what a patch sequence is, what the position embeddings learned, where the ViT looks,
what the CNN's filters are, where each model errs, and how the gap changes with data.

Idea diagrams (`patches_figure`, `sincos_similarity_figure`) need no training; the rest read trained models
or results. Every function returns a matplotlib Figure; callers save it with `llmpath.plotting.save_fig`.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor

from llmpath.plotting import use_cjk
from llmpath.vit.model import ViT, attention_rollout, patchify, sincos_2d


def _digit(index: int = 7) -> tuple[Tensor, int]:
    """One mnist-5k training image (28x28 in [0, 1]) and its label: the running example of the chapter."""
    from llmpath.vit.data import load_images, split_images

    train, _, _ = split_images(load_images("mnist-5k"))
    return train.images[index, 0], int(train.labels[index])


def patches_figure(image: Tensor | None = None, patch: int = 7) -> Figure:
    """A digit with its patch grid (left) and the same patches laid out as the token sequence the ViT reads."""
    use_cjk()
    if image is None:
        image, _ = _digit()
    H = image.shape[-1]
    g = H // patch
    seq = patchify(image[None, None], patch)[0]  # (N, p*p)
    fig = plt.figure(figsize=(13, 3.6))
    ax = fig.add_axes([0.0, 0.05, 0.22, 0.85])
    ax.imshow(image.numpy(), cmap="gray_r")
    for k in range(1, g):
        ax.axhline(k * patch - 0.5, color="tab:red", lw=1.5)
        ax.axvline(k * patch - 0.5, color="tab:red", lw=1.5)
    for r in range(g):
        for c in range(g):
            ax.text(c * patch + 0.5, r * patch + 2, str(r * g + c + 1), color="tab:blue", fontsize=8)
    ax.set_title(f"{H}×{H} 图像切成 {g}×{g} 个 {patch}×{patch} 图块")
    ax.axis("off")
    n = len(seq)
    width = 0.74 / (n + 1)
    for i in range(n + 1):
        a = fig.add_axes([0.25 + i * width, 0.35, width * 0.9, 0.4])
        if i == 0:
            a.imshow(np.zeros((patch, patch)), cmap="Oranges", vmin=0, vmax=1)
            a.set_title("[CLS]", fontsize=8)
        else:
            a.imshow(seq[i - 1].view(patch, patch).numpy(), cmap="gray_r", vmin=0, vmax=1)
            a.set_title(str(i), fontsize=8)
        a.set_xticks([]), a.set_yticks([])
    fig.text(0.62, 0.12, f"按行展开成 {n} 个词元（每个 {patch * patch} 维），前面加一个 [CLS]，"
             "线性投影到 n_embd 维后送进 Transformer 编码器", ha="center", fontsize=10)
    return fig


def _similarity_grid(pos: Tensor, grid: int, title: str) -> Figure:
    """pos (N, C) patch position vectors -> a grid x grid panel of grid x grid maps: cosine of each patch with all."""
    use_cjk()
    p = F.normalize(pos.float(), dim=-1)
    sim = (p @ p.T).view(grid * grid, grid, grid).numpy()
    fig, axes = plt.subplots(grid, grid, figsize=(1.4 * grid + 1, 1.4 * grid + 0.6))
    lo = float(sim.min())  # one colour scale for all panels, from the lowest similarity to 1 (a patch with itself)
    for i, ax in enumerate(np.asarray(axes).flat):
        im = ax.imshow(sim[i], cmap="viridis", vmin=lo, vmax=1)
        ax.set_xticks([]), ax.set_yticks([])
        if i % grid == 0:
            ax.set_ylabel(f"第 {i // grid + 1} 行", fontsize=8)
        if i < grid:
            ax.set_title(f"第 {i + 1} 列", fontsize=8)
    fig.colorbar(im, ax=axes, fraction=0.03, pad=0.03, label="余弦相似度")
    fig.suptitle(title)
    return fig


def position_similarity_figure(model: ViT) -> Figure:
    """Learned position embeddings: for each patch, the cosine with every other patch's (2-D structure appears)."""
    cfg = model.cfg
    pos = model.pos.detach()[0, 1:] if cfg.pool == "cls" else model.pos.detach()[0]
    return _similarity_grid(pos, cfg.grid, f"学到的位置嵌入：每个图块与所有图块的余弦相似度（{cfg.grid}×{cfg.grid}）")


def sincos_similarity_figure(grid: int = 7, dim: int = 64) -> Figure:
    """The fixed 2-D sin-cos encoding drawn the same way: the structure the learned table has to discover."""
    return _similarity_grid(sincos_2d(grid, dim), grid, f"固定的二维正弦-余弦位置编码：余弦相似度（{grid}×{grid}，{dim} 维）")


def rollout_figure(model: ViT, images: Tensor, labels: Tensor, preds: Tensor, norm) -> Figure:
    """Attention rollout from [CLS] to the patches over a few digits: what the class decision draws on."""
    use_cjk()
    from dataclasses import replace

    cfg = model.cfg
    slow = ViT(replace(cfg, sdpa=False, dropout=0.0)).eval()  # hand-written attention gives the weights
    slow.load_state_dict(model.state_dict())
    roll = attention_rollout(slow.attention_maps(norm(images)))  # (B, T, T)
    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.6))
    for i in range(n):
        heat = roll[i, 0, 1:].view(1, 1, cfg.grid, cfg.grid)
        heat = F.interpolate(heat, size=(cfg.image_size, cfg.image_size), mode="nearest")[0, 0]
        axes[0, i].imshow(images[i, 0].numpy(), cmap="gray_r")
        axes[0, i].set_title(f"真 {labels[i]}，判 {preds[i]}", fontsize=9, color="black" if labels[i] == preds[i] else "red")
        axes[1, i].imshow(images[i, 0].numpy(), cmap="gray_r")
        axes[1, i].imshow(heat.numpy(), cmap="inferno", alpha=0.6)
        for ax in axes[:, i]:
            ax.set_xticks([]), ax.set_yticks([])
    axes[0, 0].set_ylabel("输入", fontsize=9)
    axes[1, 0].set_ylabel("[CLS] 的注意力展开", fontsize=9)
    fig.suptitle("注意力展开（attention rollout）：各层注意力连乘后，[CLS] 从每个图块取了多少信息")
    fig.tight_layout()
    return fig


def cnn_filters_figure(conv_weight: Tensor) -> Figure:
    """The first convolution's filters (out, 1, k, k) as small images: edge and stroke detectors."""
    use_cjk()
    w = conv_weight.detach()[:, 0]
    n = len(w)
    cols = min(8, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.2 * cols, 1.25 * rows + 0.5), squeeze=False)
    lim = float(w.abs().max())
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(w[i].numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
    fig.suptitle(f"CNN 第一层的 {n} 个 {w.shape[-1]}×{w.shape[-1]} 卷积核（红正蓝负）")
    fig.tight_layout()
    return fig


def misclassified_figure(images: Tensor, labels: np.ndarray, preds: dict[str, np.ndarray], k: int = 8) -> Figure:
    """For each model, k test digits it gets wrong (a seeded sample), titled true -> predicted."""
    use_cjk()
    fig, axes = plt.subplots(len(preds), k, figsize=(1.3 * k, 1.6 * len(preds) + 0.3), squeeze=False)
    for r, (name, pred) in enumerate(preds.items()):
        wrong = np.flatnonzero(pred != labels)
        wrong = np.sort(np.random.default_rng(0).choice(wrong, min(k, len(wrong)), replace=False))  # all classes, not the first
        for c in range(k):
            ax = axes[r, c]
            ax.set_xticks([]), ax.set_yticks([])
            if c < len(wrong):
                i = wrong[c]
                ax.imshow(images[i, 0].numpy(), cmap="gray_r")
                ax.set_title(f"{labels[i]}→{pred[i]}", fontsize=9, color="red")
            else:
                ax.axis("off")
        axes[r, 0].set_ylabel(f"{name}\n错 {np.sum(pred != labels)} 个", fontsize=9)
    fig.suptitle("测试集上分错的数字（真实→预测）")
    fig.tight_layout()
    return fig


def learning_curve_figure(rows: list[dict]) -> Figure:
    """Test accuracy against the number of training images for the CNN and the ViT (rows: arch, images, acc)."""
    use_cjk()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    names = {"cnn": "CNN", "vit": "ViT"}
    for arch in ("cnn", "vit"):
        pts = sorted((r["train_images"], r["test_acc"]) for r in rows if r["arch"] == arch)
        if pts:
            x, y = zip(*pts)
            ax.plot(x, y, "o-", label=names[arch])
    ax.set_xscale("log")
    ax.set(xlabel="训练图像数（对数坐标）", ylabel="测试准确率", title="训练图像数与测试准确率")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig

