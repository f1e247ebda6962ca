"""Weight-only quantization (llmpath.efficient.quant): the rounding bound, packing, QuantLinear, quantize(), sizes,
and agreement with torchao's int8 and int4 weight-only quantization."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmpath.efficient.quant import (QMAX, QuantLinear, dequantize_weight, model_bytes, pack_int2, pack_int4, quantize,
                                     quantize_weight, unpack_int2, unpack_int4, weight_error)
from llmpath.gpt.model import GPT, GPTConfig
from llmpath.llama.model import Llama, LlamaConfig

CASES = [(8, None), (4, None), (4, 32), (4, 16), (2, 32)]


def weights(out=24, n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = 0.02 * torch.randn(out, n, generator=g)
    w[3, 5] = 0.3  # an outlier: its row (or group) gets a coarse step
    return w


def tiny_gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=64)).eval()


def tiny_llama():
    torch.manual_seed(0)
    return Llama(LlamaConfig(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, n_ff=96)).eval()


def test_quantize_weight_closed_form():
    q, scale = quantize_weight(torch.tensor([[0.5, -1.0, 0.25, 0.0]]), 8)
    assert q.tolist() == [[64, -127, 32, 0]]  # 0.5 * 127 = 63.5 rounds to even 64
    assert scale.item() == pytest.approx(1 / 127)


@pytest.mark.parametrize("bits,group", CASES)
def test_rounding_error_at_most_half_a_step(bits, group):
    w = weights()
    q, scale = quantize_weight(w, bits, group)
    g = group or w.shape[1]
    assert scale.shape == (w.shape[0], w.shape[1] // g)
    assert q.dtype == torch.int8 and q.abs().max() <= QMAX[bits]
    step = scale.repeat_interleave(g, dim=1)  # (out, in): each weight's own step
    assert ((w - dequantize_weight(q, scale)).abs() <= step / 2 + 1e-7).all()
    # the largest |w| of each group lands exactly on +-qmax
    assert (q.view(w.shape[0], -1, g).abs().amax(-1) == QMAX[bits]).all()
    assert torch.allclose(scale, w.view(w.shape[0], -1, g).abs().amax(-1) / QMAX[bits])


def test_zero_row_is_stored_exactly():
    w = weights()
    w[0] = 0
    q, scale = quantize_weight(w, 4, 16)
    assert (q[0] == 0).all() and torch.isfinite(scale).all()
    assert (dequantize_weight(q, scale)[0] == 0).all()


def test_finer_groups_give_smaller_error():
    w = weights()
    err = {g: (w - dequantize_weight(*quantize_weight(w, 4, g))).abs().mean() for g in (None, 32, 16)}
    assert err[16] < err[32] < err[None]


@pytest.mark.parametrize("pack,unpack,lo,hi", [(pack_int4, unpack_int4, -8, 7), (pack_int2, unpack_int2, -2, 1)])
def test_pack_round_trip(pack, unpack, lo, hi):
    per = 8 // (4 if pack is pack_int4 else 2)
    q = torch.randint(lo, hi + 1, (5, 37), dtype=torch.int8)  # 37: not a multiple of the values per byte
    q[0, :hi - lo + 1] = torch.arange(lo, hi + 1)  # every value, negatives included
    p = pack(q)
    assert p.dtype == torch.uint8 and p.shape == (5, -(-37 // per))
    assert torch.equal(unpack(p, 37), q)


def test_pack_int4_layout():
    assert pack_int4(torch.tensor([-1, 7], dtype=torch.int8)).tolist() == [7 | 15 << 4]  # first value: low nibble
    assert pack_int2(torch.tensor([-2, -1, 0, 1], dtype=torch.int8)).tolist() == [0 | 1 << 2 | 2 << 4 | 3 << 6]


@pytest.mark.parametrize("bits,group", CASES)
def test_quant_linear_is_f_linear_with_the_dequantised_weight(bits, group):
    torch.manual_seed(0)
    lin = nn.Linear(64, 24)
    lin.weight.data = weights()
    ql = QuantLinear.from_linear(lin, bits, group)
    q, scale = quantize_weight(lin.weight, bits, group)
    assert torch.equal(ql.int_weight(), q)
    x = torch.randn(3, 5, 64)
    assert torch.allclose(ql(x), F.linear(x, dequantize_weight(q, scale), lin.bias), atol=1e-6)


@pytest.mark.parametrize("make", [tiny_gpt, tiny_llama])
def test_quantize_keeps_logits_close(make):
    model = make()
    x = torch.randint(0, 50, (2, 16))
    ref = model(x)[0]
    err = {}
    for bits, group in [(8, None), (4, 32), (2, 32)]:
        q = quantize(copy.deepcopy(model), bits, group)
        linears = [n for n, m in q.named_modules() if isinstance(m, nn.Linear)]
        assert linears == ["lm_head"]  # every other linear layer quantized; the tied head kept
        assert q.lm_head.weight is (q.wte.weight if make is tiny_gpt else q.embed.weight)
        for m in q.modules():
            if isinstance(m, QuantLinear):
                assert m.bits == bits and m.scale.shape == (m.out_features, m.in_features // (group or m.in_features))
        err[bits] = (q(x)[0] - ref).abs().max().item()
    assert err[8] < 0.02 * ref.abs().max().item()
    assert err[8] < err[4] < err[2]  # fewer bits, larger error: the bits really are used


def test_quantized_state_dict_loads_into_a_fresh_quantized_model():
    a, b = quantize(tiny_gpt(), 4, 32), quantize(GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2,
                                                                n_embd=64)).eval(), 4, 32)
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 50, (1, 16))
    assert torch.equal(a(x)[0], b(x)[0])


def test_group_that_does_not_divide_is_refused_before_any_change():
    model = tiny_llama()
    with pytest.raises(ValueError, match=r"group 48 does not divide in_features 64 of layers.0.attn.wq; "
                                         r"choose a divisor such as 32 or 64"):
        quantize(model, 4, 48)
    assert not any(isinstance(m, QuantLinear) for m in model.modules())
    with pytest.raises(ValueError, match="bits=3 is not supported"):
        quantize(model, 3)
    quantize(model, 4)  # int4 without a group: per output channel
    assert model.layers[0].attn.wq.scale.shape == (64, 1)


def test_bytes_shrink_as_the_formula_says():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 128, bias=False), nn.ReLU(), nn.Linear(128, 256, bias=False))
    fp = model_bytes(model)
    assert fp == 2 * 256 * 128 * 4
    for bits, group, expect in [(8, None, 3.95), (4, 128, 7.5), (4, 32, 6.4), (2, 32, 10.6)]:
        q = quantize(copy.deepcopy(model), bits, group, skip=())
        n_scales = sum(m.scale.numel() for m in q.modules() if isinstance(m, QuantLinear))
        assert model_bytes(q) == 2 * 256 * 128 * bits // 8 + 4 * n_scales  # packed integers + fp32 scales
        assert fp / model_bytes(q) == pytest.approx(expect, rel=0.02)


def test_weight_error_finds_the_outlier_row():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 24, bias=False))
    model[0].weight.data = weights()  # row 3 holds a weight 15x the others' scale
    res = weight_error(model, quantize(copy.deepcopy(model), 8, skip=()))["0"]
    assert res["outlier_rows"] == 1 and res["outlier_row_share"] == pytest.approx(1 / 24)
    assert res["outlier_error_share"] > 3 * res["outlier_row_share"]  # its coarse step: more than its share of error
    assert 0 < res["mean"] < res["max"] <= 0.3 / 127 / 2 + 1e-7


# ------------------------------------------------------------------------------ torchao, the reference

def _torchao():
    return pytest.importorskip("torchao", reason="torchao not installed: pip install torchao")


def _torchao_quantize(model, bits):
    _torchao()
    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerGroup
    cfg = (Int8WeightOnlyConfig() if bits == 8
           else IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32)))
    quantize_(model, cfg, filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and fqn != "lm_head")
    return model


@pytest.mark.parametrize("bits,group", [(8, None), (4, 32)])
def test_same_integers_as_torchao_within_one_step(bits, group):
    torch.manual_seed(0)
    w = weights()
    lin = nn.Sequential(nn.Linear(64, 24, bias=False))
    lin[0].weight.data = w.clone()
    t = _torchao_quantize(lin, bits)[0].weight
    theirs_q = t.qdata.reshape(w.shape).to(torch.int16)
    q, scale = quantize_weight(w, bits, group)
    # torchao: scale = max|w| / (qmax + 0.5) with one extra negative level; ours: max|w| / qmax
    assert (theirs_q - q).abs().max() <= 1
    assert (theirs_q != q).float().mean() < 0.5
    step = scale.repeat_interleave(group or w.shape[1], dim=1)
    assert ((t.dequantize() - dequantize_weight(q, scale)).abs() <= step + 1e-7).all()


@pytest.mark.parametrize("make", [tiny_gpt, tiny_llama])
@pytest.mark.parametrize("bits,group", [(8, None), (4, 32)])
def test_logits_close_to_torchao(make, bits, group):
    model = make()
    x = torch.randint(0, 50, (2, 16))
    ref = model(x)[0]
    q_ours, q_theirs = quantize(copy.deepcopy(model), bits, group), _torchao_quantize(copy.deepcopy(model), bits)
    theirs_layers = dict(q_theirs.named_modules())
    for name, m in q_ours.named_modules():  # layer by layer: the same weights within one of our steps
        if isinstance(m, QuantLinear):
            step = m.scale.repeat_interleave(group or m.in_features, dim=1)
            assert ((m.weight() - theirs_layers[name].weight.dequantize()).abs() <= step + 1e-7).all(), name
    ours, theirs = q_ours(x)[0], q_theirs(x)[0]
    ours_err, gap = (ours - ref).abs().max().item(), (ours - theirs).abs().max().item()
    assert gap < 2 * max(ours_err, (theirs - ref).abs().max().item())  # as close to theirs as both are to fp32
    assert gap < (0.02 if bits == 8 else 0.2) * ref.abs().max().item()
