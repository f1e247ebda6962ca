"""Figures of a trained BERT: every layer's attention heads over one sentence, [CLS] states before and after finetuning.

    llmpath bert figures                       # -> runs/bert/small/figures/attention.png, cls_pca_<task>.png

Every function returns a matplotlib Figure; the caller saves it (llmpath.plotting.save_fig).
"""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from llmpath.plotting import use_cjk
from llmpath.transformer.figures import attention_grid


@torch.no_grad()
def attention_heads_figure(model, tok, text: str, title: str = "") -> Figure:
    """One panel per (layer, head): the attention weights of [CLS] text [SEP] (rows = queries, columns = keys)."""
    ids = [tok.cls_id, *tok.encode(text)[: model.cfg.max_len - 2], tok.sep_id]
    labels = [tok.id_to_token(i).removeprefix("##") for i in ids]
    maps: list[torch.Tensor] = []
    was = model.training
    model.eval()
    model.bert(torch.tensor([ids], device=next(model.parameters()).device), maps=maps)
    model.train(was)
    return attention_grid(maps, labels, labels, title or f"每层每个头的注意力：{text}")


def pca_2d(*arrays: np.ndarray) -> list[np.ndarray]:
    """Project each (N, C) array on the first two principal components of that array (centred, via SVD)."""
    out = []
    for x in arrays:
        x = x - x.mean(0)
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        out.append(x @ vt[:2].T)
    return out


def cls_pca_figure(before: np.ndarray, after: np.ndarray, labels: np.ndarray, label_names: Sequence[str],
                   task: str = "") -> Figure:
    """[CLS] states of test texts in 2-D (PCA), coloured by the true label: pretrained only vs after finetuning."""
    use_cjk()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    for ax, pts, title in zip(axes, pca_2d(before, after), ("微调前（只做过预训练）", "微调后")):
        for k, name in enumerate(label_names):
            sel = labels == k
            ax.scatter(pts[sel, 0], pts[sel, 1], s=8, alpha=0.6, label=f"{name}（{int(sel.sum())}）")
        ax.set(title=title, xlabel="主成分 1", ylabel="主成分 2")
        ax.legend(fontsize=8, markerscale=2)
    fig.suptitle(f"{task} 测试集文本的 [CLS] 向量（主成分分析投到二维，颜色 = 真实标签）", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    return fig
