"""Intuition figures of stage 1: decision boundaries, activations, optimizers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llmpath.mlp.numpy_mlp import ACTIVATIONS, MLP, make_optimizer, train_numpy
from llmpath.plotting import plt, save_fig, use_cjk


def two_moons(n: int = 400, noise: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_moons

    x, y = make_moons(n, noise=noise, random_state=seed)
    return x.astype(np.float32), y.astype(np.int64)


def xor(n: int = 400, noise: float = 0.15, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Four blobs at (+-1, +-1); the label is 1 when the signs differ: no line separates them."""
    rng = np.random.default_rng(seed)
    centers = rng.choice([-1.0, 1.0], size=(n, 2))
    x = centers + noise * rng.standard_normal((n, 2))
    return x.astype(np.float32), (centers[:, 0] * centers[:, 1] < 0).astype(np.int64)


def fit_small(x, y, hidden: tuple[int, ...], epochs: int, seed: int = 0) -> MLP:
    m = MLP((2, *hidden, 2), activation="tanh", seed=seed)
    train_numpy(m, x, y, make_optimizer("adam", m, 0.02), epochs=epochs, batch_size=32, seed=seed)
    return m


def decision_boundaries(epochs: int = 150, seed: int = 0):
    """2 x 2 panels: two-moons and XOR, each with a linear model and a 1-hidden-layer MLP."""
    use_cjk()
    fig, axes = plt.subplots(2, 2, figsize=(9, 8))
    accs = {}
    shown = {"two-moons": "两月牙", "XOR": "XOR（异或）"}
    for row, (name, (x, y)) in enumerate({"two-moons": two_moons(seed=seed), "XOR": xor(seed=seed)}.items()):
        for col, (label, hidden) in enumerate({"线性模型（无隐藏层）": (), "MLP（1 个隐藏层，16 个单元）": (16,)}.items()):
            m = fit_small(x, y, hidden, epochs, seed)
            acc = float((m.predict(x) == y).mean())
            accs[f"{name}/{'linear' if not hidden else 'mlp'}"] = acc
            lo, hi = x.min(0) - 0.5, x.max(0) + 0.5
            gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 200), np.linspace(lo[1], hi[1], 200))
            grid = np.c_[gx.ravel(), gy.ravel()].astype(np.float32)
            logits = m.predict_logits(grid)
            p = np.exp(logits - logits.max(1, keepdims=True))
            p = (p / p.sum(1, keepdims=True))[:, 1].reshape(gx.shape)
            ax = axes[row, col]
            ax.contourf(gx, gy, p, levels=20, cmap="RdBu_r", alpha=0.6)
            ax.contour(gx, gy, p, levels=[0.5], colors="k", linewidths=1.5)
            ax.scatter(x[:, 0], x[:, 1], c=y, cmap="RdBu_r", s=10, edgecolors="k", linewidths=0.3)
            ax.set_title(f"{shown[name]}：{label}\n训练准确率 {acc:.0%}")
    fig.tight_layout()
    return fig, accs


def activations():
    """Each activation (top) and its derivative (bottom), the derivative from our backward()."""
    use_cjk()
    x = np.linspace(-4, 4, 401)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, cls in ACTIVATIONS.items():
        layer = cls()
        y = layer.forward(x.copy())
        d = layer.backward(np.ones_like(x))
        a1.plot(x, y, label=name)
        a2.plot(x, d, label=name)
    a1.set(title="激活函数 f(x)", xlabel="x")
    a2.set(title="导数 f'(x)（由我们的 backward() 算出）", xlabel="x")
    for a in (a1, a2):
        a.grid(alpha=0.3)
        a.legend()
    fig.tight_layout()
    return fig


_OPT_NAMES = {"sgd": "SGD", "momentum": "动量", "adam": "Adam"}


def optimizer_curves(x, y, n_in: int, n_classes: int, hidden: int = 64, steps: int = 300, batch_size: int = 64,
                     seed: int = 0, lrs: dict[str, float] | None = None):
    """Training loss per step of the same NumPy MLP (same init, same batches) under SGD, momentum, Adam."""
    use_cjk()
    lrs = lrs or {"sgd": 0.5, "momentum": 0.05, "adam": 1e-3}
    curves = {}
    n_epochs = max(1, -(-steps * batch_size // x.shape[0]))
    for name, lr in lrs.items():
        m = MLP((n_in, hidden, n_classes), seed=seed)
        losses: list[float] = []
        train_numpy(m, x, y, make_optimizer(name, m, lr), epochs=n_epochs, batch_size=batch_size, seed=seed,
                    on_step=lambda s, l: losses.append(l))
        curves[name] = losses[:steps]
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, losses in curves.items():
        k = 10
        sm = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(np.arange(k, len(losses) + 1), sm, label=f"{_OPT_NAMES.get(name, name)}（学习率 {lrs[name]:g}）")
    ax.set(xlabel="步数", ylabel="训练损失（10 步滑动平均）", title="SGD、动量与 Adam（NumPy MLP，同一初始化、同一批次顺序）")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig, {k: float(np.mean(v[-20:])) for k, v in curves.items()}


def save_all(out: Path, opt_data=None, seed: int = 0, epochs: int = 150, opt_steps: int = 300) -> dict:
    out = Path(out)
    fig, accs = decision_boundaries(epochs, seed)
    paths = [save_fig(fig, out / "decision_boundary.png"), save_fig(activations(), out / "activations.png")]
    info = {"decision_boundary_train_acc": accs}
    if opt_data is not None:
        fig, final = optimizer_curves(*opt_data, steps=opt_steps, seed=seed)
        paths.append(save_fig(fig, out / "optimizers.png"))
        info["optimizer_final_loss"] = final
    return {"figures": [str(p) for p in paths], **info}
