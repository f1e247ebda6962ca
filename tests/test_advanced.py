"""docs/advanced.md: FlashAttention's tiling against both attention paths, RoPE context extension against its closed
form and Hugging Face's rope scaling, and speculative decoding against the target's own greedy output and
distribution."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import one_line_error, perturb

from llmpath.config import ConfigError
from llmpath.generation import generate, speculative_generate
from llmpath.llama.context import METHODS, extend_context, ntk_theta, position_losses
from llmpath.llama.model import Llama, LlamaConfig, rope_tables
from llmpath.transformer.attention import scaled_dot_product_attention, tiled_attention

# --------------------------------------------------------------------- tiled attention

@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("t_q,t_k,block_q,block_k", [(37, 37, 8, 16), (37, 37, 5, 3), (5, 23, 4, 8),
                                                     (1, 19, 16, 4), (20, 20, 64, 64)])
def test_tiled_attention_equals_both_attention_paths(causal, t_q, t_k, block_q, block_k):
    g = torch.Generator().manual_seed(t_q * 100 + t_k)
    q = 3 * torch.randn(2, 3, t_q, 16, generator=g)  # large scores: the running maximum has to do its job
    k = 3 * torch.randn(2, 3, t_k, 16, generator=g)
    v = torch.randn(2, 3, t_k, 12, generator=g)
    out = tiled_attention(q, k, v, causal=causal, block_q=block_q, block_k=block_k)
    ours, _ = scaled_dot_product_attention(q, k, v, causal=causal)
    torch_mask = torch.ones(t_q, t_k, dtype=torch.bool).tril(t_k - t_q) if causal else None
    fused = F.scaled_dot_product_attention(q, k, v, attn_mask=torch_mask)
    assert out.shape == (2, 3, t_q, 12)
    torch.testing.assert_close(out, ours, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, fused, atol=1e-5, rtol=1e-5)
    if causal and t_q > 1:  # the mask matters here: the unmasked result is different
        assert not torch.allclose(out, tiled_attention(q, k, v, causal=False, block_q=block_q, block_k=block_k),
                                  atol=1e-3)


def test_tiled_attention_survives_scores_that_overflow_a_plain_exp():
    q = torch.full((1, 4, 8), 30.0)
    k = torch.full((1, 9, 8), 30.0)  # scores of 30*30*8/sqrt(8) ~ 2546: exp overflows without the running max
    k[0, 3] = 31.0
    v = torch.randn(1, 9, 8)
    out = tiled_attention(q, k, v, block_q=2, block_k=4)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, scaled_dot_product_attention(q, k, v)[0], atol=1e-5, rtol=1e-5)


def test_tiled_attention_gives_zeros_where_a_query_sees_no_key():
    q, k, v = torch.randn(1, 6, 4), torch.randn(1, 3, 4), torch.randn(1, 3, 4)
    out = tiled_attention(q, k, v, causal=True, block_q=2, block_k=2)  # more queries than keys: the first 3 see none
    ref, _ = scaled_dot_product_attention(q, k, v, causal=True)
    assert torch.equal(out[0, :3], torch.zeros(3, 4))
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------------ long context

def small_llama(seed: int = 0, **kw) -> Llama:
    cfg = LlamaConfig(**{**dict(vocab_size=61, block_size=16, n_layer=2, n_head=4, n_kv_head=2, n_embd=32), **kw})
    torch.manual_seed(seed)
    return perturb(Llama(cfg), seed).eval()


@pytest.mark.parametrize("method", METHODS)
def test_extend_context_at_the_trained_length_is_the_original_model(method):
    model = small_llama()
    same = extend_context(model, 16, method)
    x = torch.randint(0, 61, (2, 16))
    torch.testing.assert_close(same(x)[0], model(x)[0], atol=1e-6, rtol=1e-6)
    assert same is not model and same.cfg.block_size == 16


def test_extend_context_none_keeps_the_first_positions_and_reads_past_the_trained_length():
    model = small_llama()
    long = extend_context(model, 64, "none")
    x = torch.randint(0, 61, (2, 64))
    torch.testing.assert_close(long(x)[0][:, :16], model(x[:, :16])[0], atol=1e-5, rtol=1e-5)  # causal: same prefix
    with pytest.raises(ValueError, match="longer than block_size"):
        model(x)
    assert long.cfg.block_size == 64 and model.cfg.block_size == 16  # the original is untouched


def test_interpolated_tables_at_m_are_the_original_tables_at_m_times_trained_over_new():
    model = small_llama()
    long = extend_context(model, 64, "interpolate")
    hs = 8
    for m in range(64):  # closed form: cos/sin of (m * 16 / 64) * theta^(-2i/hs)
        angle = m * 16 / 64 * 10000.0 ** (-torch.arange(0, hs, 2, dtype=torch.float64) / hs)
        angle = torch.cat([angle, angle])
        torch.testing.assert_close(long.cos[m], angle.cos().float(), atol=1e-6, rtol=0)
        torch.testing.assert_close(long.sin[m], angle.sin().float(), atol=1e-6, rtol=0)
    cos16, _ = rope_tables(hs, 16)
    torch.testing.assert_close(long.cos[::4], cos16, atol=1e-6, rtol=0)  # every 4th new position is an old one
    assert not torch.allclose(long.cos[1], cos16[1], atol=1e-3)


def test_ntk_slows_the_slowest_pair_by_exactly_the_scale_and_keeps_the_fastest():
    hs, theta, s = 8, 10000.0, 4.0
    base = ntk_theta(theta, hs, s)
    slowest_old, slowest_new = theta ** (-(hs - 2) / hs), base ** (-(hs - 2) / hs)
    assert slowest_old / slowest_new == pytest.approx(s)
    long = extend_context(small_llama(), 64, "ntk")
    assert long.cfg.rope_theta == pytest.approx(base)
    torch.testing.assert_close(long.cos[:, 0], torch.arange(64, dtype=torch.float64).cos().float(), atol=1e-6, rtol=0)


def test_extend_context_refuses_what_it_cannot_do():
    with pytest.raises(ConfigError, match="choose one of"):
        extend_context(small_llama(), 64, "yarn")
    with pytest.raises(ConfigError, match="pos='learned'"):
        extend_context(small_llama(pos="learned"), 64, "none")


def hf_rope_model(ours: Llama, rope_parameters: dict, max_positions: int):
    """A LlamaForCausalLM holding our weights with the given rope_parameters."""
    transformers = pytest.importorskip("transformers")
    from llmpath.llama.hf import config_to_hf, to_hf_state_dict

    d = {**config_to_hf(ours.cfg), "rope_parameters": rope_parameters, "max_position_embeddings": max_positions}
    hf = transformers.LlamaForCausalLM(transformers.AutoConfig.for_model(**d)).eval()
    hf.load_state_dict(to_hf_state_dict(ours), strict=True)
    return hf


def test_interpolation_equals_huggingface_linear_rope_scaling():
    model = small_llama()
    long = extend_context(model, 64, "interpolate")
    hf = hf_rope_model(model, {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}, 64)
    x = torch.randint(0, 61, (2, 64))
    with torch.no_grad():
        torch.testing.assert_close(long(x)[0], hf(x).logits, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(extend_context(model, 64, "none")(x)[0], hf(x).logits, atol=1e-2)


def test_ntk_equals_huggingface_dynamic_rope_read_at_the_new_length():
    """HF's dynamic NTK: base = theta (f L / L_trained - f + 1)^(d/(d-2)) at length L; f = 1 is our static ntk at L."""
    model = small_llama()
    long = extend_context(model, 64, "ntk")
    hf = hf_rope_model(model, {"rope_type": "dynamic", "factor": 1.0, "rope_theta": 10000.0}, 16)
    x = torch.randint(0, 61, (2, 64))
    with torch.no_grad():
        torch.testing.assert_close(long(x)[0], hf(x).logits, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(extend_context(model, 64, "none")(x)[0], hf(x).logits, atol=1e-2)


def test_position_losses_average_to_the_model_loss():
    model = small_llama()
    ids = torch.randint(0, 61, (16 * 5 + 1,))
    per_pos = position_losses(model, ids, 16, batch_size=2)
    x, y = ids[:-1].view(5, 16), ids[1:].view(5, 16)
    assert per_pos.shape == (16,)
    assert per_pos.mean().item() == pytest.approx(model(x, y)[1].item(), rel=1e-5)


# ---------------------------------------------------------------------- speculative decoding

@pytest.mark.parametrize("gamma", [1, 3, 6])
@pytest.mark.parametrize("prompt_len", [1, 5])
def test_greedy_speculative_decoding_is_the_targets_greedy_output(gamma, prompt_len):
    # untied output heads: random tied ones tend to repeat one token, which would make the comparison weak
    target = small_llama(2, block_size=32, tie_embeddings=False)
    draft = small_llama(1, block_size=32, n_layer=1, n_embd=16, n_head=2, n_kv_head=1, tie_embeddings=False)
    prompt = torch.randint(0, 61, (1, prompt_len), generator=torch.Generator().manual_seed(prompt_len))
    n = 32 - prompt_len
    ids, stats = speculative_generate(target, draft, prompt, n, gamma=gamma, greedy=True)
    assert torch.equal(ids, generate(target, prompt, n, greedy=True))
    assert torch.equal(ids, generate(target, prompt, n, greedy=True, use_cache=False))
    assert stats["new_tokens"] == n and 0 <= stats["accepted"] <= stats["proposed"]
    assert stats["acceptance_rate"] < 1  # a different draft: refusals happened, so that path was checked too
    assert len(set(ids[0, prompt_len:].tolist())) >= 4  # not a run of one token


@pytest.mark.parametrize("greedy", [True, False])
def test_a_draft_equal_to_the_target_is_always_accepted(greedy):
    target = small_llama(0, block_size=32)
    ids, stats = speculative_generate(target, target, [3, 4], 30, gamma=4, greedy=greedy,
                                      generator=torch.Generator().manual_seed(0))
    assert stats["acceptance_rate"] == 1.0 and stats["accepted"] == stats["proposed"] and stats["refused"] == 0
    assert stats["target_forwards"] == 6  # 30 tokens, 5 per forward (4 guesses + the bonus)
    assert ids.shape == (1, 32)


def test_speculative_decoding_refuses_what_does_not_fit():
    target = small_llama(0, block_size=16)
    with pytest.raises(ValueError, match="longer than the context"):
        speculative_generate(target, target, [1, 2, 3], 14)
    with pytest.raises(ValueError, match="gamma"):
        speculative_generate(target, target, [1], 4, gamma=0)


def tv_bound(cells: int, n: int, delta: float = 1e-6) -> float:
    """Total variation that an empirical distribution of n draws exceeds with probability < delta
    (Bretagnolle-Huber-Carol: P(|p_hat - p|_1 >= eps) <= 2^cells exp(-n eps^2 / 2))."""
    return 0.5 * math.sqrt(2 * (cells * math.log(2) + math.log(1 / delta)) / n)


@pytest.mark.slow
def test_sampled_tokens_follow_the_targets_distribution_not_the_drafts():
    """The first two tokens, (x1, x2), over many seeds against p(x1) p(x2 | x1) of the target: both the
    accept-or-resample step and the bonus token are in play (gamma = 1)."""
    V, n = 5, 2000
    shape = dict(vocab_size=V, block_size=8, n_layer=1, n_embd=16, n_head=2, n_kv_head=1, tie_embeddings=False)
    target, draft = small_llama(0, **shape), small_llama(8, **shape)
    prompt = torch.tensor([[1, 3]])
    with torch.no_grad():
        draft.lm_head.weight.mul_(4)  # a confident draft that is often wrong: both kept and refused guesses happen
        p1 = target(prompt)[0][0, -1].softmax(-1)
        q1 = draft(prompt)[0][0, -1].softmax(-1)
        nxt = torch.cat([prompt.repeat(V, 1), torch.arange(V)[:, None]], 1)
        p2 = target(nxt)[0][:, -1].softmax(-1)  # (V, V): p(x2 | x1) for each x1
    joint = (p1[:, None] * p2).flatten()
    counts = torch.zeros(V * V)
    g = torch.Generator().manual_seed(0)
    for _ in range(n):
        ids, _ = speculative_generate(target, draft, prompt, 2, gamma=1, generator=g)
        counts[ids[0, 2] * V + ids[0, 3]] += 1
    bound = tv_bound(V * V, n)
    assert 0.5 * (q1 - p1).abs().sum() > 2 * tv_bound(V, n)  # the draft is far from the target: the test can fail
    assert 0.5 * (counts / n - joint).abs().sum() < bound
    first = counts.view(V, V).sum(1) / n
    assert 0.5 * (first - p1).abs().sum() < tv_bound(V, n)
    assert 0.5 * (first - q1).abs().sum() > tv_bound(V, n)  # and it is not the draft's


# ---------------------------------------------------------------------------- the commands

@pytest.mark.slow
def test_context_and_speculative_commands_on_the_tiny_preset(tmp_path, capsys):
    from llmpath.cli import main

    out = f"--out={tmp_path}"
    assert main(["llama", "context", "--preset=tiny", out, "--tokens=512", "--finetune_steps=2"]) == 0
    table = capsys.readouterr().out
    res = json.loads((tmp_path / "llama" / "tiny-context" / "results.json").read_text())
    assert res["trained"] == 32 and res["lengths"] == [32, 64, 128] and len(res["rows"]) == 2 * 3 * 3
    assert (tmp_path / "llama" / "tiny-context" / "figures" / "context_loss.png").stat().st_size > 10_000
    none_1x = [r for r in res["rows"] if r["method"] == "none" and r["length"] == 32 and not r["finetuned"]]
    assert "位置插值（PI）" in table and "位置 64–127" in table and none_1x[0]["mean"] < math.log(65)
    for r in res["rows"]:
        if r["length"] == 32 and not r["finetuned"]:  # inside the trained context every method is the model itself
            assert r["mean"] == pytest.approx(none_1x[0]["mean"], abs=1e-4)
    assert main(["llama", "speculative", "--preset=tiny", out, "--prompts=2", "--prompt_tokens=4",
                 "--max_new_tokens=12", "--gammas=1,3"]) == 0
    table = capsys.readouterr().out
    res = json.loads((tmp_path / "llama" / "tiny-speculative" / "results.json").read_text())
    assert [(r["greedy"], r["gamma"]) for r in res["rows"]] == [(False, 1), (False, 3), (True, 1), (True, 3)]
    assert all(r["new_tokens"] == 24 for r in res["rows"])
    assert all(r["same_as_greedy"] == 2 for r in res["rows"] if r["greedy"])
    assert res["draft_params"] != res["target_params"] and "2/2" in table


@pytest.mark.parametrize("argv, message", [
    (["context", "--methods=yarn"], "--methods='yarn': choose among none, interpolate, ntk"),
    (["context", "--factors=0,2"], "--factors='0,2': give whole numbers of at least 1"),
    (["speculative", "--gammas=0"], "--gammas='0': give whole numbers of at least 1"),
    (["speculative", "--max_new_tokens=30"], "is more than the context (32)"),
])
def test_bad_inputs_are_one_line_before_any_work(argv, message, tmp_path, capsys):
    from llmpath.cli import main

    assert main(["llama", *argv, "--preset=tiny", f"--out={tmp_path}"]) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "llama").exists()
