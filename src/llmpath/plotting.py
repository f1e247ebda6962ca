"""Figures shared by all topics. Every function returns a matplotlib Figure (Agg backend); the
caller saves it with `save_fig`. Chinese text renders with a CJK font when one is available
(`cjk_font()`), so alignment maps and labels show characters, not boxes.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # never opens a window; plots are files
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import font_manager  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

# Font families that carry CJK glyphs, most preferred first.
CJK_FAMILIES = ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei",
                "SimHei", "Microsoft YaHei", "PingFang SC", "Heiti SC", "AR PL UMing CN", "Droid Sans Fallback")


@lru_cache(maxsize=1)
def cjk_font() -> str | None:
    """Name of an installed font with Chinese glyphs (registered with matplotlib), or None."""
    for path in cjk_font_files():
        try:
            font_manager.fontManager.addfont(str(path))
        except (OSError, RuntimeError):
            continue
    available = {f.name for f in font_manager.fontManager.ttflist}
    for fam in CJK_FAMILIES:
        if fam in available:
            return fam
    return None


def cjk_font_files() -> list[Path]:
    """CJK font files shipped inside installed PyPI packages (see README: fonts)."""
    import importlib.util

    files: list[Path] = []
    # mplfonts ships several fonts; we load only Noto Sans CJK SC (SIL Open Font License 1.1).
    spec = importlib.util.find_spec("mplfonts")
    if spec and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            files += list(Path(root).glob("fonts/NotoSansCJKsc-Regular.otf"))
    return files


def use_cjk() -> str | None:
    """Make matplotlib fall back to the CJK font for glyphs the default font lacks.

    Every plot function here calls it first; call it yourself before plt.subplots elsewhere.
    """
    fam = cjk_font()
    # An explicit family list falls back glyph by glyph (a generic 'sans-serif' would not); it
    # applies to text created after this call.
    if fam:
        plt.rcParams["font.family"] = ["DejaVu Sans", fam]
    plt.rcParams["axes.unicode_minus"] = False
    return fam


def save_fig(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Save a figure as PNG (creating folders) and free its memory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def training_curves(rows: Sequence[dict], title: str = "训练曲线") -> Figure:
    """Train/val loss against step (left) and the learning rate (right) from metrics.jsonl rows."""
    use_cjk()
    fig, (ax, ax_lr) = plt.subplots(1, 2, figsize=(10, 3.6))
    train = [(r["step"], r["train_loss"]) for r in rows if "train_loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    lr = [(r["step"], r["lr"]) for r in rows if "lr" in r]
    if train:
        s, v = zip(*train)
        ax.plot(s, v, label="训练损失", alpha=0.5 if len(s) > 50 else 1.0)
        if len(v) > 20:
            k = max(5, len(v) // 20)
            smooth = np.convolve(v, np.ones(k) / k, mode="valid")
            ax.plot(s[k - 1:], smooth, label=f"训练损失（{k} 次记录的滑动平均）")
    if val:
        s, v = zip(*val)
        ax.plot(s, v, "o-", label="验证损失")
    ax.set(xlabel="步数", ylabel="损失", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    if lr:
        s, v = zip(*lr)
        ax_lr.plot(s, v, color="tab:green")
    ax_lr.set(xlabel="步数", ylabel="学习率", title="学习率调度")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def heatmap(matrix, xlabels: Sequence[str] | None = None, ylabels: Sequence[str] | None = None,
            title: str = "", ax=None, cmap: str = "viridis", colorbar: bool = True, annotate: bool = False,
            xlabel: str = "", ylabel: str = "") -> Figure:
    """A labelled heatmap (attention weights, gates, confusion counts); CJK labels render."""
    use_cjk()
    m = np.asarray(matrix, dtype=float)
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(3, 0.35 * m.shape[1] + 2), max(2.5, 0.35 * m.shape[0] + 1.5)))
    else:
        fig = ax.figure
    im = ax.imshow(m, cmap=cmap, aspect="auto")
    if xlabels is not None:
        ax.set_xticks(range(len(xlabels)), labels=list(xlabels), rotation=90 if max(map(len, xlabels), default=0) > 2 else 0)
    if ylabels is not None:
        ax.set_yticks(range(len(ylabels)), labels=list(ylabels))
    if annotate:
        hi = np.nanmax(m) if m.size else 0
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, f"{m[i, j]:.3g}", ha="center", va="center", fontsize=8,
                        color="white" if m[i, j] < 0.6 * hi else "black")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if colorbar:
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return fig


def confusion_matrix(y_true, y_pred, labels: Sequence[str], title: str = "混淆矩阵",
                     normalize: bool = True) -> Figure:
    """Rows are true classes, columns predictions; cells show counts and row-normalised rates."""
    use_cjk()
    n = len(labels)
    cm = np.zeros((n, n), dtype=int)
    for t, p in zip(np.asarray(y_true), np.asarray(y_pred)):
        cm[int(t), int(p)] += 1
    rates = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.2 * n + 2.5, 1.1 * n + 1.5))
    heatmap(rates if normalize else cm, labels, labels, title=title, ax=ax, cmap="Blues",
            xlabel="预测类别", ylabel="真实类别")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{cm[i, j]}\n{rates[i, j]:.0%}", ha="center", va="center", fontsize=9,
                    color="white" if rates[i, j] > 0.5 else "black")
    fig.tight_layout()
    return fig


def bar_table(names: Sequence[str], values: Sequence[float], title: str = "", ylabel: str = "",
              baseline: float | None = None) -> Figure:
    """Bars with their values written on top, and an optional dashed baseline."""
    use_cjk()
    fig, ax = plt.subplots(figsize=(max(4, 1.1 * len(names) + 1), 3.5))
    bars = ax.bar(range(len(names)), values, color="tab:blue")
    ax.set_xticks(range(len(names)), labels=list(names), rotation=20)
    for b, v in zip(bars, values):
        ax.text(b.get_x() + b.get_width() / 2, b.get_height(), f"{v:.3g}", ha="center", va="bottom", fontsize=9)
    if baseline is not None:
        ax.axhline(baseline, ls="--", color="gray", label="baseline")
        ax.legend()
    ax.set(title=title, ylabel=ylabel)
    fig.tight_layout()
    return fig
