"""Stage 10's figures (llmpath.efficient.figures): each one draws, the LoRA counts are r (d + k), and the KL fits
really are mode-covering (forward) and mode-seeking (reverse)."""

import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.figure import Figure

from llmpath.efficient.figures import (bimodal, example_row, figures, fit_gaussian, kl_direction_figure, lora_counts,
                                       lora_figure, outlier_row, quant_error_figure, quant_errors, quant_grid_figure,
                                       temperature_figure)
from llmpath.gpt.model import GPT, GPTConfig


def tiny_gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=32)).eval()


def drawn(fig):
    assert isinstance(fig, Figure) and fig.axes
    plt.close(fig)


def test_lora_counts_are_r_times_d_plus_k():
    assert lora_counts(128, 128, (2, 4, 8, 16)) == {r: r * 256 for r in (2, 4, 8, 16)}
    assert lora_counts(64, 32, (3,)) == {3: 3 * (64 + 32)}  # d = out, k = in: B (d x r), A (r x k)


def test_diagrams_draw():
    drawn(lora_figure())
    drawn(quant_grid_figure())
    drawn(temperature_figure())
    drawn(kl_direction_figure())


def test_model_figures_draw_on_a_tiny_gpt():
    model = tiny_gpt()
    drawn(quant_grid_figure(model.h[0].attn.c_attn.weight, name="h.0.attn.c_attn"))
    drawn(quant_error_figure(model))
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3]]))[0][0, -1]
    drawn(temperature_figure(logits, [chr(97 + i) for i in range(20)], top=5))


def test_quant_errors_grow_as_bits_shrink_and_leave_the_model_alone():
    model = tiny_gpt()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    errors = quant_errors(model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # quantized copies only
    int8, int4, int2 = errors.values()
    assert set(int8) == set(int4) == set(int2) and len(int8) == 4  # c_attn, c_proj, c_fc, mlp.c_proj
    assert all(int8[n] < int4[n] < int2[n] for n in int8)


def test_outlier_row_finds_the_planted_outlier():
    w = 0.02 * torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    w[11, 7] = 0.5
    assert outlier_row(w) == 11
    assert example_row().abs().argmax() == 40


def test_forward_kl_covers_both_modes_and_reverse_kl_seeks_one():
    x = torch.linspace(-7, 7, 701, dtype=torch.float64)
    modes = (-2.0, 2.5)
    log_p = bimodal(x, modes=modes, std=0.6)
    fm, fs = fit_gaussian(x, log_p, "forward")
    rm, rs = fit_gaussian(x, log_p, "reverse")
    # forward KL over Gaussians is minimised by matching p's mean and variance (the reference)
    p = log_p.exp() / log_p.exp().sum()
    mean = (p * x).sum().item()
    std = (p * (x - mean) ** 2).sum().sqrt().item()
    assert fm == pytest.approx(mean, abs=0.1) and fs == pytest.approx(std, abs=0.05)
    assert modes[0] < fm < modes[1] and fs > 3 * rs  # spread over both modes
    assert min(abs(rm - m) for m in modes) < 0.1 and rs == pytest.approx(0.6, abs=0.05)  # sits on one mode
    with pytest.raises(ValueError, match="forward or reverse"):
        fit_gaussian(x, log_p, "backward")


def test_figures_saves_the_diagrams_without_a_run(tmp_path):
    paths = figures(tmp_path, gpt_run=tmp_path / "no-such-run")
    assert [p.name for p in paths] == ["lora.png", "quant_grid.png", "temperature.png", "kl_direction.png"]
    assert all(p.stat().st_size > 0 for p in paths)
