"""Exercises of docs/tutorials/09_modern_llm.md: every number an answer gives, recomputed with the library."""

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from llmpath.config import build_config
from llmpath.generation import kv_bytes_per_token
from llmpath.llama import cli
from llmpath.llama.experiments import GPT2_BLOCK, LlamaRun, model_for, variant_run
from llmpath.llama.model import Llama, LlamaConfig, RMSNorm, rope_frequencies
from llmpath.llama.moe import load_balancing_loss

VOCAB = 79  # the characters of stage 5's Shakespeare


def small() -> LlamaRun:
    return build_config(LlamaRun, ["--preset=small"], cli.PRESETS)


def params(cfg: LlamaConfig, active: bool = False) -> int:
    return Llama(replace(cfg, vocab_size=VOCAB)).num_params(active=active)


def test_exercise_9_1_rmsnorm_and_layernorm_of_1_2_3_4():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    rms = RMSNorm(4)(x)
    torch.testing.assert_close(rms, x / math.sqrt(7.5), atol=1e-5, rtol=1e-5)  # RMS of (1, 2, 3, 4) = sqrt(30 / 4)
    assert [round(v, 3) for v in rms.tolist()] == [0.365, 0.730, 1.095, 1.461]
    ln = F.layer_norm(x, (4,))  # mean 2.5, variance 1.25
    assert [round(v, 3) for v in ln.tolist()] == [-1.342, -0.447, 0.447, 1.342]
    torch.testing.assert_close(RMSNorm(4)(x - x.mean()), ln, atol=1e-5, rtol=1e-5)  # centred first: the same
    torch.testing.assert_close(RMSNorm(4)(3 * x), rms, atol=1e-5, rtol=1e-5)  # scaling does not matter
    assert not torch.allclose(RMSNorm(4)(x + 1), rms, atol=1e-2)  # shifting does


def test_exercise_9_2_rope_pairs_of_the_small_preset():
    cfg = small().model
    hs = cfg.n_embd // cfg.n_head
    assert hs == 32 and cfg.block_size == 64
    freq = rope_frequencies(hs, cfg.rope_theta)  # (16,) radians per position
    wavelength = 2 * math.pi / freq
    assert [round(w, 1) for w in wavelength[:6].tolist()] == [6.3, 11.2, 19.9, 35.3, 62.8, 111.7]
    assert wavelength[-1] == pytest.approx(2 * math.pi * 10000 ** (30 / 32))
    largest_offset = cfg.block_size - 1
    assert int((largest_offset * freq >= 2 * math.pi).sum()) == 5  # pairs 0..4 turn at least once
    assert float(largest_offset * freq[-1]) == pytest.approx(0.0112, abs=1e-4)  # the slowest: 0.64 degrees
    assert math.degrees(float(largest_offset * freq[-1])) == pytest.approx(0.64, abs=0.01)


def test_exercise_9_3_the_swiglu_widths_of_the_experiment():
    base = small()
    gpt2 = params(model_for(base.model, GPT2_BLOCK))
    assert gpt2 == 811_648
    C, L = 128, 4
    assert 2 * C * 4 * C == 131_072 and 3 * C * 341 == 130_944  # GELU MLP vs SwiGLU at 8C/3 (no biases)
    assert variant_run(base, "swiglu").model.n_ff == 341
    llama = variant_run(base, "llama").model
    assert llama.n_ff == 393 and params(llama) == 811_520
    # what the Llama-style model gives back at the width of 341: biases, the position table, GQA's k and v rows
    biases = L * (3 * C + C + 4 * C + C + 2 * C) + C  # c_attn, c_proj, c_fc, c_proj, two LayerNorms; ln_f
    saved = biases + 64 * C + L * 2 * C * (C // 2) + L * (2 * C * 4 * C - 3 * C * 341)
    assert (biases, saved) == (5_760, 80_000)
    assert params(replace(llama, n_ff=341)) == gpt2 - saved
    assert saved // (3 * C * L) == 52 and 341 + 52 == 393  # one unit of width costs 3 C L = 1,536 parameters
    moe = variant_run(base, "moe").model
    assert (moe.n_expert, moe.top_k, moe.n_ff) == (4, 2, 196)
    assert params(moe, active=True) == 812_032 and params(moe) == 1_414_144
    assert params(moe, active=True) - params(llama) == L * (2 * 3 * C * 196 - 3 * C * 393 + C * 4) == 512


def test_exercise_9_4_kv_cache_of_llama2_70b():
    per_token = kv_bytes_per_token(80, 8, 128, 2)  # 80 layers, 8 key/value heads of 128, bf16
    assert per_token == 320 * 1024
    assert per_token * 4096 == 1.25 * 2**30
    mha = kv_bytes_per_token(80, 64, 128, 2)  # had it kept one key/value head per query head
    assert mha == 2.5 * 2**20 and mha * 4096 == 10 * 2**30
    assert kv_bytes_per_token(32, 32, 128, 2) == 512 * 1024 > per_token  # Llama-2-7B (MHA) needs more per token


def test_exercise_9_5_mixtral_total_and_active_parameters():
    mixtral = LlamaConfig(vocab_size=32000, block_size=32768, n_layer=32, n_head=32, n_kv_head=8, n_embd=4096,
                          n_ff=14336, rope_theta=1e6, tie_embeddings=False, n_expert=8, top_k=2)
    with torch.device("meta"):  # shapes only: no memory for 47 billion numbers
        m = Llama(mixtral)
        llama2 = Llama(LlamaConfig(vocab_size=32000, block_size=4096, n_layer=32, n_head=32, n_embd=4096,
                                   n_ff=11008, tie_embeddings=False))
    assert m.num_params() == 46_702_792_704  # "46.7B"
    assert m.num_params(active=True) == 12_879_925_248  # "12.9B"
    assert round(m.num_params() / m.num_params(active=True), 2) == 3.63  # not 8 / 2: attention is shared
    assert llama2.num_params() == 6_738_415_616  # Llama-2-7B, the same way


def test_exercise_9_6_the_balancing_loss_uniform_collapsed_and_below_top_k():
    N = 1000
    uniform = torch.zeros(N, 4)
    collapsed = torch.tensor([[20.0, 0.0, 0.0, 0.0]]).repeat(N, 1)  # every token sends ~all probability to expert 0
    for k, at_uniform, at_collapse in ((1, 1.0, 4.0), (2, 2.0, 4.0)):
        assert float(load_balancing_loss([uniform], k)) == pytest.approx(at_uniform, abs=1e-6)
        assert float(load_balancing_loss([collapsed], k)) == pytest.approx(at_collapse, abs=1e-6)
    # two experts, top-1: 900 tokens lean slightly to expert 0 (0.51), 100 go firmly to expert 1
    lean = torch.tensor([[math.log(0.51 / 0.49), 0.0]]).repeat(900, 1)
    firm = torch.tensor([[-20.0, 20.0]]).repeat(100, 1)
    below = float(load_balancing_loss([torch.cat([lean, firm])], 1))
    assert below == pytest.approx(2 * (0.9 * 0.459 + 0.1 * 0.541), abs=1e-4) and round(below, 3) == 0.934 < 1
