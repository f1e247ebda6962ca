"""A recurrent language model: embedding -> RNN/LSTM/GRU -> linear head over the vocabulary.

    llmpath rnn train --cell=lstm          # char-level Shakespeare, see docs/tutorials/02_rnn_lstm.md
    llmpath rnn sample --prompt "ROMEO:" --temperature 0.8

Characters (or words, `--level=word`) are ids; the model reads x = ids[:-1] and predicts
y = ids[1:], a softmax over the vocabulary at every step. `impl="ours"` uses the hand-written
cells of model.py, `impl="torch"` torch.nn's (same parameter names, so checkpoints load in either).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmpath.config import ConfigError, opt
from llmpath.rnn.model import CELLS, make_rnn


@dataclass
class LMConfig:
    cell: Literal["rnn", "lstm", "gru"] = opt("lstm", "recurrent cell")
    vocab_size: int = opt(0, "set from the tokenizer", min=0)
    n_embd: int = opt(64, "embedding size", min=1)
    n_hidden: int = opt(0, "hidden size (0 = choose it so the model has about n_params parameters)", min=0)
    n_params: int = opt(400_000, "parameter budget used when n_hidden = 0 (matched across cells)", min=1)
    n_layer: int = opt(1, "stacked recurrent layers", min=1)
    dropout: float = opt(0.0, "dropout between layers and before the head", min=0, below=1)
    block_size: int = opt(128, "training sequence length (steps of backpropagation through time)", min=1)
    forget_bias: float = opt(0.0, "LSTM: set the forget-gate bias to this at init (0 = keep torch.nn's init)")
    bias: bool = opt(True, "biases b_ih, b_hh in the recurrent layers (torch.nn's bias; the head keeps its own)")
    nonlinearity: Literal["tanh", "relu"] = opt("tanh", "vanilla RNN only: the activation of h_t (torch.nn.RNN's)")
    impl: Literal["ours", "torch"] = opt("torch", "ours: the hand-written cells; torch: torch.nn (fast path, same weights)")

    def check(self) -> None:
        if self.nonlinearity != "tanh" and self.cell != "rnn":
            raise ConfigError(f"--nonlinearity={self.nonlinearity} is for the vanilla RNN only; the {self.cell} "
                              f"cell's gates fix its activations (use --cell=rnn or drop --nonlinearity)")
        if self.forget_bias and not self.bias:
            raise ConfigError("--forget_bias needs the biases; drop --bias=false or --forget_bias")


def lm_params(cell: str, V: int, E: int, H: int, L: int, bias: bool = True) -> int:
    """Parameter count of CharRNN. lm_params('rnn', 10, 4, 8, 1) -> 10*4 + (8*4 + 8*8 + 16) + 8*10 + 10"""
    g = CELLS[cell][0]
    rec = sum(g * H * ((E if k == 0 else H) + H + (2 if bias else 0)) for k in range(L))
    return V * E + rec + H * V + V


def hidden_for_budget(cell: str, n_params: int, V: int, E: int, L: int, bias: bool = True) -> int:
    """Largest hidden size whose model fits in n_params (so RNN, GRU and LSTM compare at equal size)."""
    lo, hi = 1, 8192
    while lo < hi:  # lm_params grows with H: binary search
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if lm_params(cell, V, E, mid, L, bias) <= n_params else (lo, mid - 1)
    return lo


class CharRNN(nn.Module):
    """Recurrent LM: (B, T) ids -> (B, T, V) logits, plus the final state for the next chunk."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("LMConfig.vocab_size must be set from the tokenizer")
        if cfg.cell == "lstm" and cfg.forget_bias and not cfg.bias:
            raise ValueError(f"forget_bias={cfg.forget_bias} sets a bias, but bias=False; drop one of the two")
        self.cfg = cfg
        H = cfg.n_hidden or hidden_for_budget(cfg.cell, cfg.n_params, cfg.vocab_size, cfg.n_embd, cfg.n_layer, cfg.bias)
        self.n_hidden = H
        self.embed = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.rnn = make_rnn(cfg.cell, cfg.n_embd, H, num_layers=cfg.n_layer, dropout=cfg.dropout,
                            batch_first=True, impl=cfg.impl, bias=cfg.bias, nonlinearity=cfg.nonlinearity)
        if cfg.cell == "lstm" and cfg.forget_bias:
            self._init_forget_bias(cfg.forget_bias)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(H, cfg.vocab_size)

    @torch.no_grad()
    def _init_forget_bias(self, value: float) -> None:
        """b_f = value in every layer (Gers et al. 2000; Jozefowicz et al. 2015): with f = sigmoid(1)
        ~ 0.73 the cell state, and its gradient, survive many steps from the first update on."""
        H = self.n_hidden
        for name, p in self.rnn.named_parameters():
            if name.startswith("bias_ih"):
                p[H:2 * H] = value  # gate order i, f, g, o: rows H..2H are the forget gate
            elif name.startswith("bias_hh"):
                p[H:2 * H] = 0.0  # the two biases add up: b_f = b_ih + b_hh

    def forward(self, idx: Tensor, state=None) -> tuple[Tensor, object]:
        out, state = self.rnn(self.embed(idx), state)  # (B, T, H)
        return self.head(self.drop(out)), state  # (B, T, V)

    @torch.no_grad()
    def generate(self, prompt: Tensor, n: int, temperature: float = 1.0, top_k: int = 0,
                 generator: torch.Generator | None = None, banned: tuple[int, ...] = (0,)) -> Tensor:
        """Continue a (B, T) prompt by n ids, sampling from softmax(logits / temperature).

        `banned` ids are never sampled (default: id 0, `<unk>` in both of our tokenizers).
        """
        logits, state = self(prompt)
        out = []
        for _ in range(n):
            last = logits[:, -1] / max(temperature, 1e-6)
            if banned:
                last[:, list(banned)] = float("-inf")
            if top_k > 0:
                kth = last.topk(min(top_k, last.shape[-1])).values[:, -1:]
                last = last.masked_fill(last < kth, float("-inf"))
            nxt = torch.multinomial(F.softmax(last, dim=-1), 1, generator=generator)  # (B, 1)
            out.append(nxt)
            logits, state = self(nxt, state)  # the state carries the whole past: O(1) per new id
        return torch.cat(out, dim=1)


def lm_loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    """Mean cross-entropy of next-id prediction (nats per token); the objective handed to fit()."""
    x, y = batch
    logits, _ = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@torch.no_grad()
def stream_nll(model: nn.Module, ids: Tensor, streams: int = 32, chunk: int = 256, device="cpu") -> float:
    """Mean NLL (nats/token) of ids[1:] given everything before it: the text is cut into `streams`
    contiguous pieces read in parallel, chunk by chunk, carrying the state across chunks (so every
    prediction sees its whole past, as the n-gram's does). The few ids left over are dropped."""
    n = (len(ids) - 1) // streams * streams
    if n < streams:
        raise ValueError(f"{len(ids)} tokens are too few to evaluate on {streams} streams")
    x = ids[:n].view(streams, -1).to(device)
    y = ids[1:n + 1].view(streams, -1).to(device)
    total, state = 0.0, None
    for a in range(0, x.shape[1], chunk):
        logits, state = model(x[:, a:a + chunk], state)
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[:, a:a + chunk].reshape(-1), reduction="sum").item()
    return total / y.numel()


def perplexity(nats: float) -> float:
    return math.exp(nats)
