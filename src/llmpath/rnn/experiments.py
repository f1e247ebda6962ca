"""Teaching experiments of stage 2; each returns a matplotlib Figure (and numbers for the tutorial).

- vanishing_gradients: ||d loss / d h_t|| against the distance from the loss, RNN vs LSTM vs GRU.
- exploding_gradients: the vanilla RNN trained with and without gradient clipping.
- gate_heatmap / unit_over_text: what an LSTM's gates and one hidden unit do over a line of text.
- temperature_samples: the same prompt sampled at several temperatures.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.figure import Figure
from torch import Tensor, nn

from llmpath.plotting import heatmap, plt, use_cjk
from llmpath.rnn.lm import CharRNN, LMConfig
from llmpath.rnn.model import RNN


# ------------------------------------------------------------------------ vanishing gradients

def grad_norms_over_time(model: CharRNN, ids: Tensor) -> np.ndarray:
    """Mean over the batch of ||d loss / d h_t|| for every t, loss = cross-entropy at the last step.

    The sequence is fed one step at a time so that each h_t is a tensor in the graph we can ask
    autograd about; the result's index 0 is the last step (distance 0 from the loss). A float64
    copy of the model keeps norms of 1e-30 and below from underflowing (fp32 squares them to 0).
    """
    model = copy.deepcopy(model).double().eval()  # eval: no dropout; gradients still flow
    x, y = ids[:, :-1], ids[:, -1]
    state, hs = None, []
    emb = model.embed(x)
    for t in range(x.shape[1]):
        _, state = model.rnn(emb[:, t:t + 1], state)
        hs.append(state[0] if isinstance(state, tuple) else state)  # h_t of every layer (layers, B, H)
    loss = F.cross_entropy(model.head(hs[-1][-1]), y)  # the last layer's last h_t, equal to output[:, -1]
    grads = torch.autograd.grad(loss, hs)
    norms = torch.stack([g[-1].norm(dim=-1).mean() for g in grads])  # last layer, mean over batch
    return norms.flip(0).detach().numpy()


def vanishing_gradients(panels: dict[str, dict[str, CharRNN]], ids: Tensor) -> tuple[Figure, dict]:
    """Log-scale gradient norm against distance from the loss; one panel per group of models."""
    use_cjk()
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    ratios: dict[str, dict[str, float]] = {}
    for ax, (title, models) in zip(axes[0], panels.items()):
        ratios[title] = {}
        for name, model in models.items():
            g = grad_norms_over_time(model, ids)
            ax.semilogy(np.arange(len(g)), g, label=name.upper())
            ratios[title][name] = float(g[min(100, len(g) - 1)] / g[0])  # share of the signal left after 100 steps
        ax.set(xlabel="与损失所在步的距离（时间步）", ylabel="‖∂ℓ_T / ∂h_t‖ 的批均值（对数坐标）", title=title)
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.tight_layout()
    return fig, ratios


# ------------------------------------------------------------------------ exploding gradients

def exploding_gradients(ids: np.ndarray, vocab_size: int, steps: int = 150, block_size: int = 100,
                        batch_size: int = 16, n_hidden: int = 128, lr: float = 2.0, clip: float = 1.0,
                        gain: float = 1.0, seed: int = 0) -> tuple[Figure, dict]:
    """Train the same vanilla RNN by plain SGD with and without clipping the gradient norm.

    A small loop of its own (not llmpath.train.fit): the lesson needs the gradient norm *before*
    clipping at every step and must keep going past a non-finite loss to show it. W_hh starts as a
    random orthogonal matrix times `gain` (all singular values 1); as training grows some of them
    past 1, gradients through 100 steps spike, and an unclipped step of lr * ||g|| throws the loss up.
    (A much larger gain, e.g. 3, is a different failure: chaotic from step 0, and clipping cannot
    rescue it either. lr 2.0 and gain 1.0 were picked on a small sweep (lr 1, 2, 3) to show the usual
    case: at lr 1 the unclipped spikes are mild, at lr 2 they throw the loss past 100 nats.)
    """
    from llmpath.data import RandomWindows

    batches = RandomWindows(ids, block_size, batch_size, seed=seed)
    curves = {}
    for name, max_norm in (("no clipping", 0.0), (f"clip norm {clip:g}", clip)):  # keys of the summary
        torch.manual_seed(seed)
        model = CharRNN(LMConfig(cell="rnn", vocab_size=vocab_size, n_embd=32, n_hidden=n_hidden, impl="torch"))
        with torch.no_grad():
            nn.init.orthogonal_(model.rnn.weight_hh_l0, gain=gain)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        losses, norms = [], []
        for i in range(steps):
            x, y = batches(i)
            logits, _ = model(x)
            loss = F.cross_entropy(logits.reshape(-1, vocab_size), y.reshape(-1))
            opt.zero_grad()
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm if max_norm > 0 else float("inf"))
            losses.append(loss.item())
            norms.append(float(norm))
            if not (math.isfinite(losses[-1]) and math.isfinite(norms[-1])):
                break  # training is dead: the weights are inf/NaN
            opt.step()
        curves[name] = {"loss": losses, "grad_norm": norms}
    use_cjk()
    shown = {"no clipping": "不裁剪", f"clip norm {clip:g}": f"裁剪到范数 {clip:g}"}
    fig, (ax_l, ax_g) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, c in curves.items():
        loss = np.array(c["loss"], dtype=float)
        ax_l.plot(np.where(np.isfinite(loss), loss, np.nan), label=shown[name])
        ax_g.semilogy(c["grad_norm"], label=shown[name])
        if len(loss) < steps:
            ax_l.axvline(len(loss) - 1, color="red", ls=":", label=f"{shown[name]}：损失变成 inf/NaN")
    ax_l.set(xlabel="步数", ylabel="训练损失 (nats/字符)", title=f"vanilla RNN，SGD 学习率 {lr:g}")
    ax_g.set(xlabel="步数", ylabel="裁剪前的梯度范数（对数坐标）", title="梯度范数")
    for ax in (ax_l, ax_g):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    summary = {name: {"steps_run": len(c["loss"]), "final_loss": c["loss"][-1],
                      "mean_loss_last_10": float(np.mean(c["loss"][-10:])), "max_loss_after_10": max(c["loss"][10:], default=float("nan")),
                      "max_grad_norm": max(c["grad_norm"])}
               for name, c in curves.items()}
    return fig, summary


# --------------------------------------------------------------------------- inside an LSTM

@torch.no_grad()
def lstm_trace(model: CharRNN, ids: list[int]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Gate activations (gate -> (T, H)) and hidden states (T, H) of the first LSTM layer over ids.

    Runs our hand-written cells (which can report their gates) on the model's weights, whatever
    impl it was trained with: the parameter names are the same.
    """
    rnn = model.rnn
    ours = RNN("lstm", rnn.input_size, rnn.hidden_size, num_layers=rnn.num_layers, batch_first=True)
    ours.load_state_dict(rnn.state_dict())
    gates: list[dict] = []
    x = model.embed(torch.tensor([ids]))
    ours.run_direction(x, (x.new_zeros(1, ours.hidden_size), x.new_zeros(1, ours.hidden_size)), 0, 0, gates)
    trace = {k: torch.cat([g[k] for g in gates]).numpy() for k in gates[0]}
    # h_t = o_t * tanh(c_t) with c_t rebuilt from the gates: c_t = f c_{t-1} + i g
    c, hs = np.zeros(ours.hidden_size), []
    for t in range(len(ids)):
        c = trace["forget"][t] * c + trace["input"][t] * trace["cell"][t]
        hs.append(trace["output"][t] * np.tanh(c))
    return trace, np.stack(hs)


def _label(ch: str) -> str:
    return {"\n": "⏎", " ": "␣"}.get(ch, ch)


def gate_heatmap(model: CharRNN, text: str, ids: list[int], n_units: int = 16) -> Figure:
    """Input, forget and output gates of the most active-varying units over a line of text."""
    trace, _ = lstm_trace(model, ids)
    units = np.argsort(-trace["forget"].std(0))[:n_units]  # the units whose forget gate moves most
    fig, axes = plt.subplots(3, 1, figsize=(max(8, 0.22 * len(text) + 2), 9), sharex=True)
    names = {"input": "输入门 i", "forget": "遗忘门 f", "output": "输出门 o"}
    for ax, gate in zip(axes, ("input", "forget", "output")):
        heatmap(trace[gate][:, units].T, xlabels=[_label(c) for c in text], ylabels=[str(u) for u in units],
                title=f"{names[gate]}（0 = 关，1 = 开）", ax=ax, cmap="viridis", ylabel="单元编号")
        ax.images[0].set_clim(0, 1)
    axes[-1].set_xlabel("输入字符")
    fig.tight_layout()
    return fig


def pick_unit(hs: np.ndarray, feature: np.ndarray) -> tuple[int, float]:
    """The hidden unit whose activation correlates most (in absolute value) with a 0/1 feature."""
    f = (feature - feature.mean()) / (feature.std() + 1e-9)
    h = (hs - hs.mean(0)) / (hs.std(0) + 1e-9)
    corr = (h * f[:, None]).mean(0)
    u = int(np.nanargmax(np.abs(corr)))
    return u, float(corr[u])


def unit_over_text(model: CharRNN, text: str, ids: list[int], unit: int | None = None,
                   width: int = 64) -> tuple[Figure, int, float]:
    """The text with each character's background coloured by one hidden unit's activation h_t[unit].

    Default unit: the one that best tracks "inside a speaker's name line" (the all-caps line
    ending in ':' that starts each speech), a structure the model must remember across characters.
    """
    _, hs = lstm_trace(model, ids)
    corr = float("nan")
    if unit is None:
        lines, feat = text.split("\n"), []
        for line in lines:
            is_name = line.endswith(":") and line[:-1].replace(" ", "").isupper()
            feat += [float(is_name)] * (len(line) + 1)
        unit, corr = pick_unit(hs, np.array(feat[:len(text)]))
    act = hs[:, unit]
    cmap = colormaps["coolwarm"]
    rows = []  # wrap the text into lines of at most `width` characters
    for line_start, line in _wrap(text, width):
        rows.append([(line_start + j, ch) for j, ch in enumerate(line)])
    use_cjk()
    fig, ax = plt.subplots(figsize=(0.16 * width + 1, 0.3 * len(rows) + 0.8))
    lim = max(abs(act).max(), 1e-6)
    for r, row in enumerate(rows):
        for t, ch in row:
            ax.text(0.16 * (t - row[0][0]) + 0.1, -0.3 * r, _label(ch) if ch == "\n" else ch, family="monospace",
                    fontsize=10, ha="center", va="center",
                    bbox=dict(boxstyle="square,pad=0.15", fc=cmap(0.5 + 0.5 * act[t] / lim), ec="none"))
    ax.set_xlim(-0.1, 0.16 * width + 0.2)
    ax.set_ylim(-0.3 * len(rows), 0.3)
    ax.axis("off")
    ax.set_title(f"LSTM 第 {unit} 号隐藏单元：蓝 = 负，红 = 正"
                 + (f"（与“说话人名字行”的相关系数 {corr:+.2f}）" if not math.isnan(corr) else ""))
    return fig, unit, corr


def _wrap(text: str, width: int) -> list[tuple[int, str]]:
    out, start = [], 0
    pieces = text.split("\n")
    for k, line in enumerate(pieces):
        line = line + ("\n" if k < len(pieces) - 1 else "")
        for a in range(0, len(line), width):
            out.append((start + a, line[a:a + width]))
        start += len(line)
    return out


# ------------------------------------------------------------------------------- sampling

def temperature_samples(model: CharRNN, encode, decode, prompt: str, temperatures=(0.5, 1.0, 1.5),
                        n: int = 300, seed: int = 0) -> dict[float, str]:
    """prompt + n sampled tokens at each temperature (same seed, so only T differs)."""
    model.eval()
    out = {}
    for temp in temperatures:
        g = torch.Generator().manual_seed(seed)
        ids = model.generate(torch.tensor([encode(prompt)]), n, temperature=temp, generator=g)
        out[temp] = prompt + decode(ids[0].tolist())
    return out
