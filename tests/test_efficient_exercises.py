"""The answers of docs/tutorials/10_efficiency.md's exercises, computed by the library."""

import math

import pytest
import torch
from torch import nn

from llmpath.efficient.distill import distillation_loss
from llmpath.efficient.lora import apply_lora, trainable_params
from llmpath.efficient.quant import QuantLinear, dequantize_weight, model_bytes, quantize, quantize_weight
from llmpath.gpt.model import MODEL_PRESETS, GPT, GPTConfig


def small_gpt() -> GPT:
    return GPT(GPTConfig(vocab_size=79, **MODEL_PRESETS["small"]))


def test_exercise_10_1_lora_parameter_counts():
    attention = apply_lora(small_gpt(), r=4)
    assert trainable_params(attention) == (12_288, 811_648 + 12_288)
    assert round(100 * 12_288 / (811_648 + 12_288), 2) == 1.49
    every = apply_lora(small_gpt(), r=2, targets=("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))
    trainable, total = trainable_params(every)
    assert trainable == 16_384 and round(100 * trainable / total, 2) == 1.98


def test_exercise_10_2_quantize_one_row_by_hand():
    w = torch.tensor([[0.5, -1.0, 0.25, 0.0]])
    expected = {8: ([64, -127, 32, 0], 1 / 127), 4: ([3, -7, 2, 0], 1 / 7), 2: ([0, -1, 0, 0], 1.0)}
    for bits, (q_want, s_want) in expected.items():
        q, s = quantize_weight(w, bits)
        assert q.tolist() == [q_want] and s.item() == pytest.approx(s_want)
        err = (dequantize_weight(q, s) - w).abs()[0]
        assert err[1] == 0  # the largest weight lands on -qmax exactly
        assert err.argmax() == 0 and err[0] == pytest.approx(s_want / 2, rel=1e-4)  # 0.5 sits halfway
    q, s = quantize_weight(w, 4)
    assert dequantize_weight(q, s)[0].tolist() == pytest.approx([3 / 7, -1.0, 2 / 7, 0.0])


def test_exercise_10_3_bytes_of_an_int4_layer():
    layer = QuantLinear.from_linear(nn.Linear(128, 512, bias=False), bits=4, group=32)
    assert model_bytes(layer) == 32_768 + 2_048 * 4 == 40_960
    assert model_bytes(nn.Linear(128, 512, bias=False)) == 262_144
    gpt = small_gpt()
    kept = gpt.wte.weight.numel() + gpt.wpe.weight.numel()  # the tied embedding / head and the position table
    assert kept == 79 * 128 + 64 * 128
    assert model_bytes(gpt) == 3_246_592 and model_bytes(quantize(gpt, bits=4, group=32)) == 592_384  # 5.48x


def test_exercise_10_4_forward_and_reverse_kl():
    p = torch.tensor([0.7, 0.2, 0.1])
    y = torch.zeros(1, 1, dtype=torch.long)

    def kl(q, kind):
        return distillation_loss(q.log().view(1, 1, 3), p.log().view(1, 1, 3), y, T=1.0, alpha=1.0, kind=kind).item()

    uniform = torch.full((3,), 1 / 3)
    assert kl(uniform, "forward") == pytest.approx(0.7 * math.log(2.1) + 0.2 * math.log(0.6) + 0.1 * math.log(0.3))
    assert kl(uniform, "forward") == pytest.approx(0.297, abs=5e-4)
    assert kl(uniform, "reverse") == pytest.approx(0.324, abs=5e-4)
    spread, drop = torch.tensor([0.5, 0.25, 0.25]), torch.tensor([0.8, 0.19, 0.01])
    assert kl(spread, "forward") == pytest.approx(0.099, abs=5e-4) and kl(drop, "forward") == pytest.approx(0.147, abs=5e-4)
    assert kl(spread, "reverse") == pytest.approx(0.117, abs=5e-4) and kl(drop, "reverse") == pytest.approx(0.074, abs=5e-4)
    assert kl(spread, "forward") < kl(drop, "forward") and kl(drop, "reverse") < kl(spread, "reverse")
