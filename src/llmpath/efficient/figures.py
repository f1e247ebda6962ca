"""Figures of stage 10: LoRA's thin matrices, the int4 grid per channel vs per group, temperature, KL's two directions.

`lora_figure`, `quant_grid_figure`, `temperature_figure` and `kl_direction_figure` need no training; given a
trained GPT, `figures` also draws its quantization error per layer and its own next-character distribution.
Every function returns a matplotlib Figure; callers save it with `llmpath.plotting.save_fig`.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor, nn

from llmpath.efficient.lora import LoRALinear
from llmpath.efficient.quant import QMAX, dequantize_weight, quantize, quantize_weight, weight_error
from llmpath.plotting import save_fig, use_cjk

PROMPT = "ROMEO:\nBut soft, what light through yonder window br"  # the trained GPT's next-character prompt


# ------------------------------------------------------------------------------------ LoRA

def lora_counts(d: int = 128, k: int = 128, ranks=(2, 4, 8, 16)) -> dict[int, int]:
    """Trainable numbers of one d x k layer's adapter per rank, counted on a LoRALinear: {2: 512, 4: 1024, ...}."""
    base = nn.Linear(k, d)  # (out, in) = (d, k)
    return {r: sum(p.numel() for p in LoRALinear(base, r=r).parameters() if p.requires_grad) for r in ranks}


def lora_figure(d: int = 128, k: int = 128, ranks=(2, 4, 8, 16), r_drawn: int = 8) -> Figure:
    """Frozen W (d x k) beside B (d x r) and A (r x k) drawn to scale (left); r (d + k) against d k per rank (right)."""
    use_cjk()
    counts = lora_counts(d, k, ranks)
    fig, (ax, ax_bar) = plt.subplots(1, 2, figsize=(12.5, 4.4), gridspec_kw=dict(width_ratios=[1.45, 1]))
    # the schematic, one unit per row/column: W, then "+ (alpha/r)", then B, then A above-right of B
    u = 1.0
    boxes = [(0, 0, k * u, d * u, "tab:gray", f"W（冻结）\n{d}×{k}\n= {d * k:,} 个数"),
             (k + 60, 0, r_drawn * u, d * u, "tab:orange", f"B\n{d}×{r_drawn}"),
             (k + 60 + r_drawn + 20, d - r_drawn, k * u, r_drawn * u, "tab:blue", f"A：{r_drawn}×{k}")]
    for x0, y0, w, h, color, text in boxes:
        ax.add_patch(Rectangle((x0, y0), w, h, facecolor=color, alpha=0.35 if color == "tab:gray" else 0.8,
                               edgecolor="black"))
    ax.text(k / 2, d / 2, boxes[0][5], ha="center", va="center", fontsize=10)
    ax.text(k + 60 + r_drawn / 2, -6, boxes[1][5], ha="center", va="top", fontsize=9)
    ax.text(k + 60 + r_drawn + 20 + k / 2, d - r_drawn - 6, boxes[2][5], ha="center", va="top", fontsize=9)
    ax.text(k + 30, d / 2, "+ α/r ·", ha="center", va="center", fontsize=12)
    ax.text(k + 60 + r_drawn + 10, d - r_drawn / 2, "×", ha="center", va="center", fontsize=12)
    n_lora = counts.get(r_drawn, r_drawn * (d + k))
    ax.text(k + 60 + r_drawn + 20 + k / 2, d / 2 - 10,
            f"只训练 B 和 A：r(d+k) = {n_lora:,} 个数\n= W 的 {n_lora / (d * k):.1%}\nB 从 0 开始：起点就是原模型\n"
            f"训练后 W ← W + (α/r)·BA（合并）", ha="center", va="center", fontsize=9)
    ax.set(xlim=(-10, 2 * k + r_drawn + 95), ylim=(-30, d + 12), aspect="equal", xticks=[], yticks=[],
           title=f"h = W x + (α/r)·B A x（按比例画：d = {d}，k = {k}，r = {r_drawn}）")
    for side in ax.spines.values():
        side.set_visible(False)
    # the counts: one bar per rank against the full matrix
    names = ["全量微调\nd·k"] + [f"r = {r}" for r in counts]
    vals = [d * k] + list(counts.values())
    bars = ax_bar.bar(range(len(vals)), vals, color=["tab:gray"] + ["tab:orange"] * len(counts))
    for b, v in zip(bars, vals):
        ax_bar.text(b.get_x() + b.get_width() / 2, v * 1.15, f"{v:,}\n({v / (d * k):.1%})", ha="center", va="bottom",
                    fontsize=8)
    ax_bar.set_xticks(range(len(vals)), labels=names)
    ax_bar.set_yscale("log")
    ax_bar.set_ylim(min(vals) / 2, d * k * 8)
    ax_bar.set(ylabel="可训练的数（对数坐标）", title=f"一个 {d}×{k} 层：r(d+k) 对 d·k")
    ax_bar.grid(alpha=0.3, axis="y", which="both")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------- quantization

def example_row(n: int = 128, seed: int = 0, outlier: float = 0.12, at: int = 40) -> Tensor:
    """A weight row that looks trained: N(0, 0.02^2) numbers plus one outlier, as rows of real layers often have."""
    w = 0.02 * torch.randn(n, generator=torch.Generator().manual_seed(seed))
    w[at] = outlier
    return w


def _row_ratios(w: Tensor) -> Tensor:
    """max |w| / median |w| of each row of a (out, in) weight."""
    a = w.detach().float().abs()
    return a.amax(1) / a.median(1).values.clamp(min=1e-12)


def _outlier_ratio(w: Tensor) -> float:
    return _row_ratios(w).max().item()


def outlier_row(w: Tensor) -> int:
    """Index of the row of a (out, in) weight whose largest |w| stands out most from its median |w|."""
    return int(_row_ratios(w).argmax())


def quant_grid_figure(w: Tensor | None = None, bits: int = 4, group: int = 32, name: str = "") -> Figure:
    """One row of weights on the int4 grid of its whole row (top) and of its groups of `group` columns (middle);
    |w - w'| of each (bottom). `w`: a row, or a (out, in) weight whose most outlying row is drawn."""
    use_cjk()
    if w is None:
        row, where = example_row(), "N(0, 0.02²) 的一行，加一个离群值"
    else:
        w = w.detach().float().cpu()
        i = outlier_row(w) if w.dim() == 2 else 0
        row, where = w.reshape(-1, w.shape[-1])[i], f"{name or '一层'} 的第 {i} 行（离群最明显的一行）"
    n = len(row)
    fig, axes = plt.subplots(3, 1, figsize=(12, 8.4), sharex=True, gridspec_kw=dict(height_ratios=[1.2, 1.2, 0.9]))
    cols = np.arange(n)
    errors = {}
    for ax, g, label in ((axes[0], None, "整行一个 scale（per-channel）"), (axes[1], group, f"每 {group} 列一个 scale")):
        q, scale = quantize_weight(row[None], bits, g)  # (1, n), (1, groups)
        back = dequantize_weight(q, scale)[0]
        err = (row - back).abs()
        errors[label] = err
        span = n // scale.shape[1]  # columns per scale
        for j, s in enumerate(scale[0].tolist()):  # this group's levels -qmax..qmax times its scale
            for level in range(-QMAX[bits], QMAX[bits] + 1):
                ax.hlines(level * s, j * span - 0.5, (j + 1) * span - 0.5, color="tab:blue", lw=0.6, alpha=0.35)
            if j:
                ax.axvline(j * span - 0.5, color="gray", ls="--", lw=0.8)
        ax.plot(cols, row.numpy(), "o", ms=3, color="black", label="原权重 w")
        ax.plot(cols, back.numpy(), "x", ms=4, color="tab:red", label="存下的 w' = q·scale")
        ax.set(ylabel="权重", title=f"{label}：{2 * QMAX[bits] + 1} 个 int{bits} 级（蓝线），平均 |w − w'| = "
                                   f"{err.mean().item():.4f}")
        ax.legend(fontsize=8, loc="lower left")
        ax.grid(alpha=0.2, axis="x")
    for (label, err), color in zip(errors.items(), ("tab:orange", "tab:green")):
        axes[2].plot(cols, err.numpy(), lw=1.2, color=color, label=f"{label}：平均 {err.mean().item():.4f}")
    axes[2].set(xlabel="列（输入维）", ylabel="|w − w'|", title="误差：离群值把整行的步长变粗；分组只让它所在的组变粗")
    axes[2].legend(fontsize=8)
    axes[2].grid(alpha=0.3)
    fig.suptitle(f"int{bits} 对称量化：{where}")
    fig.tight_layout()
    return fig


QUANT_SETTINGS = (("int8（每行）", 8, None), ("int4（组长 32）", 4, 32), ("2 位（组长 32）", 2, 32))


def quant_errors(model: nn.Module, settings=QUANT_SETTINGS) -> dict[str, dict[str, float]]:
    """{setting: {layer: mean |w - w'|}} for copies of model quantized by `quantize` (the original stays as it was)."""
    out = {}
    for label, bits, group in settings:
        errors = weight_error(model, quantize(copy.deepcopy(model), bits, group))
        out[label] = {name: e["mean"] for name, e in errors.items()}
    return out


def quant_error_figure(model: nn.Module) -> Figure:
    """Mean |w - w'| of each quantized layer at int8, int4 group 32 and 2-bit group 32 (log axis)."""
    use_cjk()
    errors = quant_errors(model)
    layers = list(next(iter(errors.values())))
    fig, ax = plt.subplots(figsize=(max(7.0, 0.55 * len(layers) + 3), 4.2))
    width = 0.8 / len(errors)
    for i, (label, per_layer) in enumerate(errors.items()):
        ax.bar(np.arange(len(layers)) + (i - (len(errors) - 1) / 2) * width, [per_layer[n] for n in layers], width,
               label=label)
    ax.set_xticks(range(len(layers)), labels=layers, rotation=60, ha="right", fontsize=8)
    ax.set_yscale("log")
    per = list(errors.values())
    ratios = [float(np.median([b[n] / a[n] for n in layers])) for a, b in zip(per, per[1:])]  # each setting vs the last
    steps = "，".join(f"{lb} 是 {la} 的 {r:.0f} 倍" for la, lb, r in zip(errors, list(errors)[1:], ratios))
    ax.set(ylabel="平均 |w − w'|（对数坐标）", title=f"每层权重被量化移动了多少（各层比值的中位数：{steps}）")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: the bars fill the axes
    ax.grid(alpha=0.3, axis="y", which="both")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------- distillation

def _char(s: str) -> str:
    """A character as a readable tick label: space and newline made visible."""
    return {" ": "␣", "\n": "⏎", "\t": "⇥"}.get(s, s)


def temperature_figure(logits: Tensor | None = None, tokens: list[str] | None = None, temps=(1.0, 2.0, 4.0),
                       top: int = 12) -> Figure:
    """softmax(z / T) at each T over the `top` likeliest characters at T = 1. `logits`: (V,), `tokens`: their labels;
    default: a fixed seeded vector over a small alphabet."""
    use_cjk()
    if logits is None:
        tokens = list("etaoinshrdlucmfw ")
        logits = 2.0 * torch.randn(len(tokens), generator=torch.Generator().manual_seed(3))
    logits = torch.as_tensor(logits).detach().float().cpu().reshape(-1)
    tokens = tokens or [str(i) for i in range(len(logits))]
    order = logits.argsort(descending=True)[:top]  # ranked by the model's own (T = 1) preference
    fig, ax = plt.subplots(figsize=(max(7.0, 0.55 * len(order) + 2), 3.8))
    width = 0.8 / len(temps)
    for i, T in enumerate(temps):
        p = F.softmax(logits / T, -1)  # the whole vocabulary, so the bars shown are true shares
        ent = -(p * p.clamp(min=1e-30).log()).sum().item()
        ax.bar(np.arange(len(order)) + (i - (len(temps) - 1) / 2) * width, p[order].numpy(), width,
               label=f"T = {T:g}（熵 {ent:.2f} 奈特）")
    ax.set_xticks(range(len(order)), labels=[_char(tokens[j]) for j in order.tolist()])
    ax.set(xlabel="下一个字符（按 T = 1 时的概率排序）", ylabel="概率 softmax(z / T)",
           title="温度把分布变平：T 越大，第二、三名的概率越看得见（蒸馏就学这些）")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def bimodal(x: Tensor, modes=(-2.0, 2.5), std: float = 0.6, weights=(0.6, 0.4)) -> Tensor:
    """log density of a mixture of two Gaussians at x: the "teacher" of kl_direction_figure."""
    comps = [math.log(w) - 0.5 * ((x - m) / std) ** 2 - math.log(std * math.sqrt(2 * math.pi))
             for m, w in zip(modes, weights)]
    return torch.logsumexp(torch.stack(comps), 0)


def gaussian(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """log N(x; mean, std^2), broadcast."""
    return -0.5 * ((x - mean) / std) ** 2 - torch.log(std * math.sqrt(2 * math.pi))


def fit_gaussian(x: Tensor, log_p: Tensor, kind: str, means: Tensor | None = None,
                 stds: Tensor | None = None) -> tuple[float, float]:
    """(mean, std) of the Gaussian q closest to p on the grid x, by grid search: kind "forward" minimises KL(p || q),
    "reverse" KL(q || p). Both KLs are sums over the grid, each density normalised to sum to 1 on it."""
    if kind not in ("forward", "reverse"):
        raise ValueError(f"unknown KL direction '{kind}'; choose forward or reverse")
    means = torch.linspace(x.min().item(), x.max().item(), 241) if means is None else means
    stds = torch.linspace(0.1, 5.0, 197) if stds is None else stds
    log_p = log_p - torch.logsumexp(log_p, 0)
    log_q = gaussian(x, means[:, None, None], stds[None, :, None])  # (means, stds, grid)
    log_q = log_q - torch.logsumexp(log_q, -1, keepdim=True)
    if kind == "forward":  # large where p has mass that q misses
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    else:  # large where q has mass that p lacks
        kl = (log_q.exp() * (log_q - log_p)).sum(-1)
    i, j = divmod(int(kl.argmin()), len(stds))
    return means[i].item(), stds[j].item()


def kl_direction_figure() -> Figure:
    """A two-mode p and the one Gaussian fitted by forward KL(p‖q) (covers both modes) and by reverse KL(q‖p) (one)."""
    use_cjk()
    x = torch.linspace(-7, 7, 701, dtype=torch.float64)
    log_p = bimodal(x)
    fits = {kind: fit_gaussian(x, log_p, kind) for kind in ("forward", "reverse")}
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), sharey=True)
    titles = {"forward": "前向 KL(p‖q)：p 有质量的地方 q 都得有 → 盖住两个峰（mode-covering）",
              "reverse": "反向 KL(q‖p)：q 有质量的地方 p 都得有 → 只挑一个峰（mode-seeking）"}
    for ax, (kind, (m, s)) in zip(axes, fits.items()):
        ax.fill_between(x.numpy(), log_p.exp().numpy(), color="tab:gray", alpha=0.35, label="教师 p（两个峰）")
        q = gaussian(x, torch.tensor(m, dtype=x.dtype), torch.tensor(s, dtype=x.dtype)).exp()
        ax.plot(x.numpy(), q.numpy(), lw=2, color="tab:blue" if kind == "forward" else "tab:red",
                label=f"学生 q = N({m:.2f}, {s:.2f}²)")
        ax.set(xlabel="x", title=titles[kind])
        ax.title.set_fontsize(9)
        ax.legend(fontsize=8, loc="upper right")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("密度")
    fig.suptitle("只能是一个高斯的学生，按两种 KL 去拟合两个峰的教师（网格搜索均值和标准差）")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------- figures

def figures(out_dir: str | Path, gpt_run: str | Path | None = None) -> list[Path]:
    """Save the diagrams into out_dir; given a trained GPT's run folder, also its quantization and temperature ones."""
    out = Path(out_dir)
    paths = [save_fig(lora_figure(), out / "lora.png"), save_fig(quant_grid_figure(), out / "quant_grid.png"),
             save_fig(temperature_figure(), out / "temperature.png"),
             save_fig(kl_direction_figure(), out / "kl_direction.png")]
    if gpt_run is None or not (Path(gpt_run) / "ckpt").exists():
        return paths
    from llmpath.runs import load_run  # only here: the diagrams need no run machinery

    model, tok, _ = load_run(gpt_run, "cpu", topic="gpt")
    linears = {n: m.weight for n, m in model.named_modules() if isinstance(m, nn.Linear) and not n.endswith("lm_head")}
    name = max(linears, key=lambda n: _outlier_ratio(linears[n]))  # the layer with the most outlying row
    paths.append(save_fig(quant_grid_figure(model.get_submodule(name).weight, name=name), out / "quant_grid_gpt.png"))
    paths.append(save_fig(quant_error_figure(model), out / "quant_error.png"))
    ids = torch.tensor([tok.encode(PROMPT)])[:, -model.cfg.block_size:]
    with torch.no_grad():
        logits = model(ids)[0][0, -1]
    tokens = [tok.decode([i]) for i in range(len(logits))]
    paths.append(save_fig(temperature_figure(logits, tokens), out / "temperature_gpt.png"))
    return paths
