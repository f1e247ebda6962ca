"""A longer context for a RoPE model without retraining it: extrapolation, position interpolation, NTK-aware scaling.

    llmpath llama context                       # train at 64 characters, read 64 / 128 / 256: docs/advanced.md

    long = extend_context(model, 256, "interpolate")   # a copy whose RoPE tables cover 256 positions

RoPE has no table of positions to run out of, but a model trained on T positions has only seen the angles
m * theta_i for m < T. Three ways to give it more positions (s = new length / trained length):
    none         plain extrapolation: positions T..sT-1 get angles the model never saw.
    interpolate  position interpolation (Chen et al. 2023, https://arxiv.org/abs/2306.15595): position m is
                 read as m / s, so every angle stays inside the trained range; neighbours get closer together.
    ntk          "NTK-aware" scaling (bloc97 2023; written up in YaRN, Peng et al. 2023,
                 https://arxiv.org/abs/2309.00071, section 3.1): the base theta becomes theta * s^(d/(d-2)). The
                 fastest pair is unchanged (it has turned many times within T anyway), the slowest is slowed by
                 exactly s, as interpolation would.
Hugging Face's equivalents, tested in tests/test_advanced.py: rope_type "linear" with factor s is `interpolate`;
"dynamic" with factor 1, max_position_embeddings = trained, read at the new length, is `ntk`.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor

from llmpath.config import ConfigError
from llmpath.llama.model import Llama, rope_frequencies, rope_tables
from llmpath.plotting import use_cjk

METHODS = ("none", "interpolate", "ntk")
LABELS = {"none": "直接外推", "interpolate": "位置插值（PI）", "ntk": "NTK 感知缩放"}
FINETUNED = "（微调后）"


def ntk_theta(theta: float, head_size: int, scale: float) -> float:
    """The NTK-aware base theta * s^(d/(d-2)): the slowest pair, theta^(-(d-2)/d), turns exactly s times slower."""
    return theta * scale ** (head_size / (head_size - 2))


def scaled_rope_tables(head_size: int, length: int, theta: float, method: str, scale: float) -> tuple[Tensor, Tensor]:
    """cos, sin (length, head_size) for one of METHODS at context scale s (s = 1: plain RoPE for every method)."""
    if method not in METHODS:
        raise ConfigError(f"unknown context method '{method}'; choose one of: {', '.join(METHODS)}")
    if method == "ntk":
        return rope_tables(head_size, length, ntk_theta(theta, head_size, scale))
    if method == "none":
        return rope_tables(head_size, length, theta)
    # interpolate: position m takes the angles of position m / s (model.py's rope_tables at fractional positions)
    angles = torch.outer(torch.arange(length, dtype=torch.float64) / scale, rope_frequencies(head_size, theta))
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def extend_context(model: Llama, block_size: int, method: str = "interpolate", trained: int | None = None) -> Llama:
    """A copy of `model` that reads block_size tokens, its RoPE tables built by `method`.

    trained: the context the model was trained at (default: its block_size now); the scale is
    s = block_size / trained (at least 1). The copy's cfg has the new block_size (and, for ntk, the new
    base, so a model built from that cfg has the same tables); the interpolation scale is not a
    LlamaConfig field and lives only in the copy's tables and its `rope_scaling` attribute.
    """
    cfg = model.cfg
    if cfg.pos != "rope":
        raise ConfigError(f"extend_context rescales RoPE; this model has pos='{cfg.pos}' (a learned table has no "
                          "rows past block_size)")
    trained = trained or cfg.block_size
    if block_size < 1 or trained < 1:
        raise ConfigError(f"block_size ({block_size}) and trained ({trained}) must be at least 1")
    scale = max(block_size / trained, 1.0)
    hs = cfg.n_embd // cfg.n_head
    cos, sin = scaled_rope_tables(hs, block_size, cfg.rope_theta, method, scale)
    long = copy.deepcopy(model)
    theta = ntk_theta(cfg.rope_theta, hs, scale) if method == "ntk" else cfg.rope_theta
    long.cfg = replace(cfg, block_size=block_size, rope_theta=theta)
    long.cos, long.sin = cos.to(model.cos), sin.to(model.sin)  # buffers: they follow the model's device and dtype
    long.rope_scaling = {"method": method, "scale": scale, "trained": trained}
    return long


@torch.no_grad()
def position_losses(model: Llama, ids, length: int, max_windows: int = 256, batch_size: int = 16) -> Tensor:
    """Mean next-token loss at each position 0..length-1 over consecutive non-overlapping windows of ids: (length,)."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    n = min((len(ids) - 1) // length, max_windows)
    if n == 0:
        raise ConfigError(f"the held-out text has {len(ids)} tokens, fewer than one window of {length}")
    x = ids[: n * length].view(n, length)
    y = ids[1: n * length + 1].view(n, length)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = torch.zeros(length, dtype=torch.float64)
    for a in range(0, n, batch_size):
        logits, _ = model(x[a:a + batch_size].to(device))
        loss = F.cross_entropy(logits.transpose(1, 2).float(), y[a:a + batch_size].to(device), reduction="none")
        total += loss.sum(0).double().cpu()  # (length,) summed over the windows of this batch
    model.train(was_training)
    return total / n


def bucket_means(losses: Tensor, edges: list[int]) -> list[float]:
    """Mean of losses over [edges[0], edges[1]), [edges[1], edges[2]), ... (buckets past the end are skipped)."""
    return [float(losses[a:b].mean()) for a, b in zip(edges[:-1], edges[1:]) if a < len(losses)]


def context_figure(curves: dict[str, list[float]], trained: int, title: str, smooth: int = 8) -> Figure:
    """Held-out loss against position, one line per method (mean over `smooth` neighbouring positions)."""
    use_cjk()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    methods: list[str] = []  # one colour per method: dashed as extended, solid after finetuning
    for name, losses in curves.items():
        method = name.replace(FINETUNED, "")
        methods += [method] if method not in methods else []
        t = torch.tensor(losses)
        n = len(t) // smooth * smooth
        ax.plot(torch.arange(n).view(-1, smooth).float().mean(1), t[:n].view(-1, smooth).mean(1), label=name,
                color=f"C{methods.index(method)}", ls="-" if name.endswith(FINETUNED) else "--")
    ax.axvline(trained, color="gray", ls=":", label=f"训练时的上下文（{trained}）")
    ax.set(xlabel="位置（字符）", ylabel=f"留出文本上的损失（奈特/字符，每 {smooth} 个位置平均）", title=title)
    ax.set_ylim(top=min(ax.get_ylim()[1], 5.0))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
