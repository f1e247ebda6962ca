"""Vanilla RNN, LSTM and GRU written with plain tensor ops, parameter-compatible with torch.nn.

    rnn = RNN("lstm", input_size=16, hidden_size=32, num_layers=2, bidirectional=True)
    output, (h_n, c_n) = rnn(x)            # x (B, T, 16) -> output (B, T, 64), h_n (4, B, 32)
    RNN("rnn", 16, 32, nonlinearity="relu", bias=False)   # the other options torch.nn has

Parameters are named and shaped like torch.nn.RNN/LSTM/GRU (weight_ih_l0, weight_hh_l0, bias_ih_l0,
bias_hh_l0, ..._reverse; no bias_* with bias=False), so `load_state_dict` works both ways and
tests/test_rnn.py checks that outputs, final states and gradients agree with torch.nn.
`make_rnn(..., impl="torch")` returns the torch.nn module (the fast path, same weights).

The equations (Hochreiter & Schmidhuber 1997, https://www.bioinf.jku.at/publications/older/2604.pdf;
Cho et al. 2014, https://arxiv.org/abs/1406.1078), with W_i* = weight_ih and W_h* = weight_hh:

    rnn   h_t = tanh(W_i x_t + b_i + W_h h_{t-1} + b_h)      (relu instead of tanh with nonlinearity="relu")
    lstm  i, f, g, o = sigmoid(.), sigmoid(.), tanh(.), sigmoid(.)   of  W_i x_t + b_i + W_h h_{t-1} + b_h
          c_t = f * c_{t-1} + i * g          h_t = o * tanh(c_t)
    gru   r, z = sigmoid(W_ir x_t + b_ir + W_hr h + b_hr), sigmoid(W_iz x_t + b_iz + W_hz h + b_hz)
          n = tanh(W_in x_t + b_in + r * (W_hn h + b_hn))           h_t = (1 - z) * n + z * h_{t-1}

bias=False drops every b (the cells then get None, which F.linear reads as "no bias").
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

State = Tensor | tuple[Tensor, Tensor]  # h, or (h, c) for the LSTM


# ---------------------------------------------------------------- one time step of each cell
# `xw` is the input projection W_i x_t + b_i, computed for all t at once before the loop (the only
# speed trick here: it is one big matmul instead of T small ones). Each cell returns its new state
# and its gate activations (for the heatmaps in experiments.py).

def rnn_cell(xw: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None, act=torch.tanh) -> tuple[Tensor, dict]:
    h = act(xw + F.linear(h, w_hh, b_hh))  # (B, H)
    return h, {}


def lstm_cell(xw: Tensor, state: tuple[Tensor, Tensor], w_hh: Tensor,
              b_hh: Tensor | None) -> tuple[tuple[Tensor, Tensor], dict]:
    h, c = state
    i, f, g, o = (xw + F.linear(h, w_hh, b_hh)).chunk(4, dim=-1)  # torch.nn's gate order: i, f, g, o
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c = f * c + i * g  # the additive path: dc_t/dc_{t-1} = f, no squashing, so gradients survive
    h = o * torch.tanh(c)
    return (h, c), {"input": i, "forget": f, "cell": g, "output": o}


def gru_cell(xw: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None) -> tuple[Tensor, dict]:
    x_r, x_z, x_n = xw.chunk(3, dim=-1)  # torch.nn's gate order: r, z, n
    h_r, h_z, h_n = F.linear(h, w_hh, b_hh).chunk(3, dim=-1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)  # the reset gate scales the hidden part only (as torch.nn does)
    h = (1 - z) * n + z * h  # z near 1 copies the old state: again an additive path
    return h, {"reset": r, "update": z, "new": n}


CELLS = {"rnn": (1, rnn_cell), "lstm": (4, lstm_cell), "gru": (3, gru_cell)}  # cell -> (gates, step)
NONLINEARITIES = {"tanh": torch.tanh, "relu": torch.relu}  # the vanilla RNN's choice, as torch.nn.RNN's


def _check_cell(cell: str, nonlinearity: str = "tanh") -> None:
    if cell not in CELLS:
        raise ValueError(f"unknown cell '{cell}'; choose one of: {', '.join(CELLS)}")
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"unknown nonlinearity '{nonlinearity}'; choose one of: {', '.join(NONLINEARITIES)}")
    if cell != "rnn" and nonlinearity != "tanh":
        raise ValueError(f"nonlinearity='{nonlinearity}' is for the vanilla RNN only; the {cell} cell's "
                         "activations are fixed (sigmoid gates, tanh): use cell='rnn' or keep nonlinearity='tanh'")


# ---------------------------------------------------------------------------------- the module

class RNN(nn.Module):
    """Multi-layer (bi)directional RNN/LSTM/GRU; same constructor, forward and parameters as torch.nn."""

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0,
                 batch_first: bool = True, bidirectional: bool = False, bias: bool = True, nonlinearity: str = "tanh"):
        super().__init__()
        _check_cell(cell, nonlinearity)
        self.cell, self.input_size, self.hidden_size = cell, input_size, hidden_size
        self.num_layers, self.dropout, self.batch_first, self.bidirectional = num_layers, dropout, batch_first, bidirectional
        self.bias, self.nonlinearity = bias, nonlinearity
        self.num_directions = 2 if bidirectional else 1
        gates, step = CELLS[cell]
        # the vanilla cell's activation is fixed here, so every cell steps with the same arguments
        self.step = partial(rnn_cell, act=NONLINEARITIES[nonlinearity]) if cell == "rnn" else step
        for layer in range(num_layers):
            # layer k > 0 reads the concatenated outputs of both directions of layer k - 1
            n_in = input_size if layer == 0 else hidden_size * self.num_directions
            for sfx in self._suffixes(layer):
                self.register_parameter(f"weight_ih{sfx}", nn.Parameter(torch.empty(gates * hidden_size, n_in)))
                self.register_parameter(f"weight_hh{sfx}", nn.Parameter(torch.empty(gates * hidden_size, hidden_size)))
                if bias:  # registered after the weights, so the parameter order is torch.nn's too
                    self.register_parameter(f"bias_ih{sfx}", nn.Parameter(torch.empty(gates * hidden_size)))
                    self.register_parameter(f"bias_hh{sfx}", nn.Parameter(torch.empty(gates * hidden_size)))
        self.reset_parameters()

    def _suffixes(self, layer: int) -> list[str]:
        return [f"_l{layer}"] + ([f"_l{layer}_reverse"] if self.bidirectional else [])

    def reset_parameters(self) -> None:
        """U(-1/sqrt(H), 1/sqrt(H)) for every weight and bias, as torch.nn does."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def params(self, layer: int, direction: int) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """(weight_ih, weight_hh, bias_ih, bias_hh) of one layer and direction (0 forward, 1 backward);
        the biases are None when bias=False."""
        sfx = self._suffixes(layer)[direction]
        w_ih, w_hh = getattr(self, f"weight_ih{sfx}"), getattr(self, f"weight_hh{sfx}")
        if not self.bias:
            return w_ih, w_hh, None, None
        return w_ih, w_hh, getattr(self, f"bias_ih{sfx}"), getattr(self, f"bias_hh{sfx}")

    def initial_state(self, batch: int, like: Tensor) -> State:
        """Zeros of shape (num_layers * num_directions, B, H) (a pair of them for the LSTM)."""
        h = like.new_zeros(self.num_layers * self.num_directions, batch, self.hidden_size)
        return (h, h.clone()) if self.cell == "lstm" else h

    def run_direction(self, x: Tensor, state: State, layer: int, direction: int,
                      gates: list | None = None) -> tuple[Tensor, State]:
        """One layer, one direction over a (B, T, C) sequence: outputs (B, T, H) and the final state."""
        w_ih, w_hh, b_ih, b_hh = self.params(layer, direction)
        xw = F.linear(x, w_ih, b_ih)  # (B, T, gates * H), all time steps in one matmul
        T = x.shape[1]
        outs: list[Tensor] = [x.new_empty(0)] * T
        for t in (reversed(range(T)) if direction == 1 else range(T)):  # the backward direction reads right to left
            state, g = self.step(xw[:, t], state, w_hh, b_hh)
            outs[t] = state[0] if self.cell == "lstm" else state
            if gates is not None:
                gates.append(g)
        return torch.stack(outs, dim=1), state

    def forward(self, x: Tensor, h0: State | None = None, gates: list | None = None) -> tuple[Tensor, State]:
        """x (B, T, C) if batch_first else (T, B, C) (or unbatched (T, C)) -> (output, h_n) like torch.nn.

        output holds the last layer's h_t for every t, both directions concatenated (B, T, D*H);
        h_n (and c_n) the final state of every layer and direction, (num_layers * D, B, H).
        Pass a list as `gates` to collect each step's gate activations (first layer, forward direction).
        """
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(0)
            h0 = None if h0 is None else tuple(s.unsqueeze(1) for s in h0) if self.cell == "lstm" else h0.unsqueeze(1)
        elif not self.batch_first:
            x = x.transpose(0, 1)  # work in (B, T, C) inside
        B = x.shape[0]
        h0 = self.initial_state(B, x) if h0 is None else h0
        h_last, c_last = [], []
        for layer in range(self.num_layers):
            outs = []
            for d in range(self.num_directions):
                k = layer * self.num_directions + d  # row of h0 / h_n, in torch.nn's order
                state = (h0[0][k], h0[1][k]) if self.cell == "lstm" else h0[k]
                keep = gates if (layer == 0 and d == 0) else None
                out, state = self.run_direction(x, state, layer, d, keep)
                outs.append(out)
                h_last.append(state[0] if self.cell == "lstm" else state)
                if self.cell == "lstm":
                    c_last.append(state[1])
            x = torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]
            if layer < self.num_layers - 1 and self.dropout > 0:
                x = F.dropout(x, self.dropout, self.training)  # between layers only, as torch.nn
        h_n: State = (torch.stack(h_last), torch.stack(c_last)) if self.cell == "lstm" else torch.stack(h_last)
        if unbatched:
            return x.squeeze(0), tuple(s.squeeze(1) for s in h_n) if self.cell == "lstm" else h_n.squeeze(1)
        return (x if self.batch_first else x.transpose(0, 1)), h_n

    def extra_repr(self) -> str:
        return (f"{self.cell}, {self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"dropout={self.dropout}, batch_first={self.batch_first}, bidirectional={self.bidirectional}, "
                f"bias={self.bias}" + (f", nonlinearity={self.nonlinearity}" if self.cell == "rnn" else ""))


TORCH_MODULES = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


def make_rnn(cell: str, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0,
             batch_first: bool = True, bidirectional: bool = False, impl: str = "ours", bias: bool = True,
             nonlinearity: str = "tanh") -> nn.Module:
    """Our RNN (impl='ours') or torch.nn.RNN/LSTM/GRU (impl='torch'): same arguments, weights and outputs."""
    _check_cell(cell, nonlinearity)
    kwargs = dict(num_layers=num_layers, dropout=dropout, batch_first=batch_first, bidirectional=bidirectional,
                  bias=bias)
    if impl == "ours":
        return RNN(cell, input_size, hidden_size, nonlinearity=nonlinearity, **kwargs)
    if impl == "torch":
        if cell == "rnn":  # nn.LSTM and nn.GRU take no nonlinearity argument
            kwargs["nonlinearity"] = nonlinearity
        return TORCH_MODULES[cell](input_size, hidden_size, **kwargs)
    raise ValueError(f"unknown impl '{impl}'; choose one of: ours, torch")
