"""Stage 2: our RNN/LSTM/GRU match torch.nn (outputs, states, gradients), the LM, the n-gram, the bar."""

import pytest
import torch
from torch import nn

from llmpath.rnn.model import RNN, make_rnn

CASES = [  # (cell, num_layers, T, bidirectional)
    (cell, layers, T, bi)
    for cell in ("rnn", "lstm", "gru")
    for layers, T, bi in ((1, 1, False), (1, 7, False), (2, 13, False), (3, 5, False), (1, 6, True), (2, 9, True))
]


def _pair(cell, layers, bi, batch_first=True, dropout=0.0, input_size=5, hidden=8):
    torch.manual_seed(0)
    ours = RNN(cell, input_size, hidden, num_layers=layers, dropout=dropout, batch_first=batch_first, bidirectional=bi)
    ref = make_rnn(cell, input_size, hidden, num_layers=layers, dropout=dropout, batch_first=batch_first,
                   bidirectional=bi, impl="torch")
    ours.load_state_dict(ref.state_dict())  # same names and shapes: a strict load works
    return ours, ref


def _states(h):
    return list(h) if isinstance(h, tuple) else [h]


@pytest.mark.parametrize("cell, layers, T, bi", CASES)
def test_matches_torch_nn(cell, layers, T, bi):
    ours, ref = _pair(cell, layers, bi)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    x = torch.randn(3, T, 5)
    D = 2 if bi else 1
    h0 = torch.randn(layers * D, 3, 8)
    h0 = (h0, torch.randn(layers * D, 3, 8)) if cell == "lstm" else h0
    for init in (None, h0):
        out_o, h_o = ours(x, init)
        out_r, h_r = ref(x, init)
        assert out_o.shape == out_r.shape == (3, T, D * 8)
        torch.testing.assert_close(out_o, out_r, atol=1e-5, rtol=1e-5)
        for a, b in zip(_states(h_o), _states(h_r), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # gradients of every parameter (and of the input) under the same loss
    xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    w = torch.randn(3, T, D * 8)
    for model, xx in ((ours, xo), (ref, xr)):
        out, h = model(xx, h0)
        ((out * w).sum() + sum(s.pow(2).sum() for s in _states(h))).backward()
    for (name, p), (_, q) in zip(ours.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-5, msg=name)
    torch.testing.assert_close(xo.grad, xr.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_time_major_and_unbatched(cell):
    ours, ref = _pair(cell, 2, True, batch_first=False)
    x = torch.randn(6, 3, 5)  # (T, B, C)
    torch.testing.assert_close(ours(x)[0], ref(x)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours(x[:, 0])[0], ref(x[:, 0])[0], atol=1e-5, rtol=1e-5)  # (T, C)
    for a, b in zip(_states(ours(x[:, 0])[1]), _states(ref(x[:, 0])[1]), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_torch_weights_load_into_ours_and_back(cell):
    ref = make_rnn(cell, 4, 6, num_layers=2, bidirectional=True, impl="torch")
    ours = make_rnn(cell, 4, 6, num_layers=2, bidirectional=True, impl="ours")
    ours.load_state_dict(ref.state_dict())
    back = make_rnn(cell, 4, 6, num_layers=2, bidirectional=True, impl="torch")
    back.load_state_dict(ours.state_dict())
    x = torch.randn(2, 5, 4)
    torch.testing.assert_close(back(x)[0], ours(x)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:dropout option adds dropout")
def test_dropout_between_layers_only():
    ours, _ = _pair("gru", 2, False, dropout=0.5)
    x = torch.randn(4, 6, 5)
    ours.eval()
    assert torch.equal(ours(x)[0], ours(x)[0])  # no dropout in eval mode
    ours.train()
    torch.manual_seed(1)
    a = ours(x)[0]
    torch.manual_seed(2)
    assert not torch.allclose(a, ours(x)[0])  # dropout between the two layers is active
    one, _ = _pair("gru", 1, False, dropout=0.5)  # torch.nn warns here; the single layer gets no dropout
    one.train()
    assert torch.equal(one(x)[0], one(x)[0])


def test_gates_are_collected_and_bounded():
    ours, _ = _pair("lstm", 1, False)
    gates = []
    ours(torch.randn(2, 7, 5), gates=gates)
    assert len(gates) == 7 and set(gates[0]) == {"input", "forget", "cell", "output"}
    assert all(0 <= g["forget"].min() and g["forget"].max() <= 1 for g in gates)


def test_bad_cell_and_impl():
    with pytest.raises(ValueError, match="unknown cell 'lstn'; choose one of: rnn, lstm, gru"):
        make_rnn("lstn", 3, 4)
    with pytest.raises(ValueError, match="unknown impl 'fast'"):
        make_rnn("lstm", 3, 4, impl="fast")
