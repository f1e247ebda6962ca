"""Stage 9 Llama-style model: RoPE sees only offsets, RMSNorm is torch's, GQA is MHA with shared key/value heads,
GPT-2 mode is our GPT, the KV cache changes nothing (MHA, GQA, MQA, MoE), both attention paths agree, the MoE
block (routing, hand loop, balancing loss, usage, active parameters), config errors, the training loss; the
figures of llmpath.llama.figures and the KV-cache table."""

from dataclasses import replace

import matplotlib.pyplot as plt
import pytest
import torch
import torch.nn.functional as F

from llmpath.config import ConfigError
from llmpath.generation import KVCache, generate, kv_bytes_per_token
from llmpath.gpt.model import GPT, GPTConfig
from llmpath.llama.figures import (attention_maps_figure, expert_usage_figure, head_attention, kv_cache_figure,
                                   kv_cache_table, rope_frequencies_figure)
from llmpath.llama.model import Llama, LlamaConfig, RMSNorm, SwiGLU, apply_rope, rope_tables
from llmpath.llama.moe import MoE, expert_usage, load_balancing_loss

from helpers import perturb

V = 29
CFG = LlamaConfig(vocab_size=V, block_size=24, n_layer=2, n_head=4, n_embd=32)
GPT2_MODE = dict(norm="layer", pos="learned", mlp="gelu", bias=True, n_kv_head=0)
VARIANTS = {"mha": {}, "gqa": dict(n_kv_head=2), "mqa": dict(n_kv_head=1), "moe": dict(n_expert=4, top_k=2)}


def ours(seed: int = 0, **kw) -> Llama:
    torch.manual_seed(seed)
    return perturb(Llama(replace(CFG, **kw)), seed).eval()


def ids(B: int = 2, T: int = 20, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------ RoPE

def _rotated(x: torch.Tensor, pos: int, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return apply_rope(x.view(1, 1, 1, -1), cos[pos:pos + 1], sin[pos:pos + 1]).flatten()


def test_rope_score_depends_only_on_the_offset():
    cos, sin = rope_tables(16, 128)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(16, generator=g), torch.randn(16, generator=g)

    def score(m, n):
        return float(_rotated(q, m, cos, sin) @ _rotated(k, n, cos, sin))

    base = score(3, 7)
    for s in (1, 5, 40, 100):
        assert score(3 + s, 7 + s) == pytest.approx(base, rel=1e-4, abs=1e-4)
    assert abs(score(3, 8) - base) > 1e-2 and abs(score(7, 3) - base) > 1e-2  # another offset, another score
    assert abs(float(q @ k) - base) > 1e-2  # and the rotation did something


def test_rope_keeps_norms_and_is_the_identity_at_position_0():
    cos, sin = rope_tables(16, 32)
    x = torch.randn(2, 3, 32, 16)
    y = apply_rope(x, cos, sin)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5, rtol=1e-5)
    assert torch.equal(y[:, :, 0], x[:, :, 0])
    assert not torch.allclose(y[:, :, 1:], x[:, :, 1:], atol=1e-3)
    # the pairs are (x[i], x[i + hs/2]) (Hugging Face's layout): position 1 turns pair 0 by exactly 1 radian
    e = torch.zeros(16)
    e[0] = 1.0
    r = _rotated(e, 1, cos, sin)
    torch.testing.assert_close(r[[0, 8]], torch.tensor([torch.cos(torch.tensor(1.0)), torch.sin(torch.tensor(1.0))]))


# --------------------------------------------------------------------------- RMSNorm

@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_rmsnorm_equals_torch(dtype, tol):
    ours_, ref = RMSNorm(48, eps=1e-5), torch.nn.RMSNorm(48, eps=1e-5)
    with torch.no_grad():
        ours_.weight.copy_(torch.randn(48))
        ref.weight.copy_(ours_.weight)
    ours_, ref = ours_.to(dtype), ref.to(dtype)
    x = (torch.randn(4, 7, 48) * 3 + 2).to(dtype)  # a mean far from 0: LayerNorm would differ
    out = ours_(x)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref(x).float(), atol=tol, rtol=tol)
    assert not torch.allclose(out.float(), F.layer_norm(x.float(), (48,), ours_.weight.float()), atol=0.1)


# --------------------------------------------------------------------------------- GQA

def test_n_kv_head_equal_to_n_head_is_multi_head_attention():
    a, b = ours(1, n_kv_head=0), Llama(replace(CFG, n_kv_head=4)).eval()
    b.load_state_dict(a.state_dict())
    x = ids()
    torch.testing.assert_close(b(x)[0], a(x)[0], atol=0, rtol=0)


def _repeat_kv_rows(w: torch.Tensor, n_kv: int, rep: int, interleave: bool = True) -> torch.Tensor:
    hs = w.shape[0] // n_kv
    heads = w.view(n_kv, hs, *w.shape[1:])
    heads = heads.repeat_interleave(rep, 0) if interleave else heads.repeat(rep, *[1] * (heads.dim() - 1))
    return heads.reshape(n_kv * rep * hs, *w.shape[1:])


@pytest.mark.parametrize("n_kv", [2, 1])
def test_gqa_equals_mha_with_key_value_heads_copied_per_query_group(n_kv):
    gqa = ours(2, n_kv_head=n_kv, bias=True)
    x = ids()
    for interleave in (True, False):
        sd = gqa.state_dict()
        for name in list(sd):
            if ".attn.wk." in name or ".attn.wv." in name:
                sd[name] = _repeat_kv_rows(sd[name], n_kv, 4 // n_kv, interleave)
        mha = Llama(replace(CFG, n_kv_head=0, bias=True)).eval()
        mha.load_state_dict(sd)
        if interleave or n_kv == 1:  # query heads 2g, 2g+1 share key/value head g (for MQA any copy is the same)
            torch.testing.assert_close(mha(x)[0], gqa(x)[0], atol=1e-5, rtol=1e-5)
        else:  # tiling the heads instead pairs the wrong query heads with each key/value head
            assert not torch.allclose(mha(x)[0], gqa(x)[0], atol=1e-3)


# -------------------------------------------------------------------------- GPT-2 mode

def test_gpt2_mode_equals_our_gpt_logits_loss_and_gradients():
    torch.manual_seed(0)
    gpt = perturb(GPT(GPTConfig(vocab_size=V, block_size=24, n_layer=2, n_head=4, n_embd=32)), 3).eval()
    llama = Llama(replace(CFG, **GPT2_MODE)).eval()
    C = 32
    sd = {"embed.weight": gpt.wte.weight, "wpe.weight": gpt.wpe.weight, "lm_head.weight": gpt.lm_head.weight,
          "norm.weight": gpt.ln_f.weight, "norm.bias": gpt.ln_f.bias}
    pairs = []  # (llama parameter, gpt parameter, rows of it) for the gradient check
    for i, (b, g) in enumerate(zip(llama.layers, gpt.h)):
        for j, name in enumerate(("wq", "wk", "wv")):
            for kind in ("weight", "bias"):
                sd[f"layers.{i}.attn.{name}.{kind}"] = getattr(g.attn.c_attn, kind)[j * C:(j + 1) * C]
                pairs.append((getattr(getattr(b.attn, name), kind), getattr(g.attn.c_attn, kind), slice(j * C, (j + 1) * C)))
        for ours_name, theirs in [("attn.wo", g.attn.c_proj), ("attn_norm", g.ln_1), ("ffn_norm", g.ln_2),
                                  ("ffn.c_fc", g.mlp.c_fc), ("ffn.c_proj", g.mlp.c_proj)]:
            for kind in ("weight", "bias"):
                sd[f"layers.{i}.{ours_name}.{kind}"] = getattr(theirs, kind)
                pairs.append((llama.get_parameter(f"layers.{i}.{ours_name}.{kind}"), getattr(theirs, kind), slice(None)))
    llama.load_state_dict({k: v.detach().clone() for k, v in sd.items()})
    pairs += [(llama.embed.weight, gpt.wte.weight, slice(None)), (llama.wpe.weight, gpt.wpe.weight, slice(None))]
    x, y = ids(seed=1), ids(seed=2)
    lo, loss = llama(x, y)
    lg, loss_g = gpt(x, y)
    torch.testing.assert_close(lo, lg, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, loss_g, atol=1e-5, rtol=1e-5)
    loss.backward()
    loss_g.backward()
    for p_ours, p_gpt, rows in pairs:
        torch.testing.assert_close(p_ours.grad, p_gpt.grad[rows], atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------- KV cache

@pytest.mark.parametrize("variant", VARIANTS)
def test_kv_cache_gives_identical_tokens(variant):
    m = ours(3, **VARIANTS[variant])
    prompt = ids(2, 5, seed=3)
    for n in (15, 40):  # 40: past block_size=24 the cache gives way to recomputing the last 24 tokens
        assert torch.equal(generate(m, prompt, n, greedy=True), generate(m, prompt, n, greedy=True, use_cache=False))
    kw = dict(temperature=1.3, top_k=12, top_p=0.95, repetition_penalty=1.1)
    with_cache = generate(m, prompt, 30, generator=torch.Generator().manual_seed(5), **kw)
    without = generate(m, prompt, 30, generator=torch.Generator().manual_seed(5), use_cache=False, **kw)
    assert torch.equal(with_cache, without)
    assert with_cache.shape == (2, 35) and len(set(with_cache[0, 5:].tolist())) > 3  # not a constant stream


@pytest.mark.parametrize("sdpa", [True, False])
@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_logits_in_chunks_match_one_forward(variant, sdpa):
    m = ours(4, sdpa=sdpa, **VARIANTS[variant])
    x = ids(2, 20, seed=4)
    cache = KVCache(m.cfg, 2)
    parts = [m(x[:, a:b], cache=cache)[0] for a, b in [(0, 7), (7, 8), (8, 15), (15, 20)]]
    torch.testing.assert_close(torch.cat(parts, 1), m(x)[0], atol=1e-5, rtol=1e-5)
    assert cache.pos == 20


def test_gqa_cache_is_n_head_over_n_kv_head_times_smaller():
    mha, gqa, mqa = (KVCache(replace(CFG, n_kv_head=n), 1) for n in (0, 2, 1))
    assert mha.nbytes() == 2 * gqa.nbytes() == 4 * mqa.nbytes()
    assert gqa.k[0].shape == (1, 2, 24, 8)
    assert gqa.nbytes() == kv_bytes_per_token(2, 2, 8, 4) * 24
    assert mha.nbytes() == kv_bytes_per_token(2, 4, 8, 4) * 24


# ----------------------------------------------------------------------- attention paths

@pytest.mark.parametrize("variant", ["gqa", "moe"])
def test_sdpa_and_handwritten_attention_agree_with_gradients(variant):
    fast = ours(5, **VARIANTS[variant])
    slow = Llama(replace(fast.cfg, sdpa=False)).eval()
    slow.load_state_dict(fast.state_dict())
    x, y = ids(seed=5), ids(seed=6)
    (lf, loss_f), (ls, loss_s) = fast(x, y), slow(x, y)
    torch.testing.assert_close(ls, lf, atol=1e-5, rtol=1e-5)
    loss_f.backward()
    loss_s.backward()
    for (name, pf), ps in zip(fast.named_parameters(), slow.parameters()):
        torch.testing.assert_close(ps.grad, pf.grad, atol=1e-5, rtol=1e-4, msg=name)


# ------------------------------------------------------------------------------- MoE

def _moe(E: int = 4, k: int = 2, C: int = 16, ff: int = 24, seed: int = 0) -> MoE:
    torch.manual_seed(seed)
    return perturb(MoE(C, E, k, lambda: SwiGLU(C, ff)), seed)


def test_one_expert_top1_is_the_dense_swiglu():
    moe = _moe(1, 1)
    dense = SwiGLU(16, 24)
    dense.load_state_dict(moe.experts[0].state_dict())
    x = torch.randn(2, 5, 16)
    y, logits = moe(x)
    assert logits.shape == (10, 1)
    torch.testing.assert_close(y, dense(x), atol=1e-6, rtol=1e-6)


def test_routing_weights_are_the_renormalised_top_k_probabilities():
    moe = _moe(5, 2)
    x = torch.randn(30, 16)
    logits, chosen, w = moe.route(x)
    torch.testing.assert_close(w.sum(-1), torch.ones(30))
    probs = logits.softmax(-1)
    assert torch.equal(chosen, probs.topk(2, -1).indices)
    picked = probs.gather(1, chosen)
    torch.testing.assert_close(w, picked / picked.sum(-1, keepdim=True))
    assert (w[:, 0] >= w[:, 1]).all() and (w[:, 1] > 0).all()


@pytest.mark.parametrize("E,k", [(4, 2), (4, 1), (3, 3)])
def test_moe_output_equals_a_hand_loop_over_tokens(E, k):
    moe = _moe(E, k, seed=E + k)
    x = torch.randn(3, 7, 16)
    y, logits = moe(x)
    flat = x.reshape(-1, 16)
    _, chosen, w = moe.route(flat)
    expected = torch.stack([sum(w[n, j] * moe.experts[int(chosen[n, j])](flat[n]) for j in range(k))
                            for n in range(len(flat))])
    torch.testing.assert_close(y.reshape(-1, 16), expected, atol=1e-5, rtol=1e-5)
    assert len(set(chosen.flatten().tolist())) > 1  # the tokens do not all go to the same experts


@pytest.mark.parametrize("k", [1, 2])
def test_load_balancing_loss_is_top_k_when_uniform_and_larger_when_skewed(k):
    moe = _moe(4, k)
    with torch.no_grad():
        moe.router.weight.zero_()  # equal probabilities (topk breaks the ties by index: f is not uniform, P is)
    _, logits = moe(torch.randn(2, 6, 16))
    assert float(load_balancing_loss([logits.detach(), logits.detach()], k)) == pytest.approx(k, abs=1e-6)
    skewed = logits.detach().clone()
    skewed[:, 0] += 2.0  # every token prefers expert 0
    assert float(load_balancing_loss([skewed], k)) > k + 0.1
    # by hand: 2 tokens, 2 experts, top-1, both pick expert 0: f = (1, 0), P_0 = mean(sigmoid(2), sigmoid(1))
    hand = 2 * (torch.sigmoid(torch.tensor(2.0)) + torch.sigmoid(torch.tensor(1.0))) / 2
    torch.testing.assert_close(load_balancing_loss([torch.tensor([[2.0, 0.0], [1.0, 0.0]])], 1), hand)


def test_load_balancing_gradient_reaches_the_router_and_pushes_towards_balance():
    moe = _moe(4, 2, seed=7)
    with torch.no_grad():
        moe.router.weight[0] += 0.5  # a router that likes expert 0
    x = torch.randn(4, 8, 16)
    loss = load_balancing_loss([moe(x)[1]], 2)
    loss.backward()
    assert moe.router.weight.grad is not None and moe.router.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in moe.experts.parameters())  # the aux loss only trains the router
    # f (the top-k counts) has no gradient: the step lowers E * sum f P through P, with f as it was
    f = F.one_hot(moe.route(x.reshape(-1, 16))[1], 4).float().sum(1).mean(0)
    with torch.no_grad():
        moe.router.weight -= 1e-2 * moe.router.weight.grad
        P = moe.route(x.reshape(-1, 16))[0].softmax(-1).mean(0)
    assert float(4 * (f * P).sum()) < loss.item() - 1e-5


def test_expert_usage_rows_sum_to_one():
    logits = [torch.tensor([[3.0, 2.0, 0.0], [0.0, 2.0, 3.0], [3.0, 0.0, 2.0]]), torch.randn(50, 3)]
    u = expert_usage(logits, 2)
    assert u.shape == (2, 3)
    torch.testing.assert_close(u.sum(1), torch.ones(2))
    torch.testing.assert_close(u[0], torch.tensor([2.0, 2.0, 2.0]) / 6)  # picks (0,1), (2,1), (0,2)
    assert expert_usage([torch.tensor([[5.0, 0.0, 0.0]] * 4)], 1).tolist() == [[1.0, 0.0, 0.0]]


def test_active_parameters_count_top_k_experts():
    m = Llama(replace(CFG, n_expert=4, top_k=2))
    C, L, E, k, F_ = 32, 2, 4, 2, m.cfg.ff_width
    assert F_ == round(8 * 32 / 3 / 2)
    per_layer_dense = 2 * C + 4 * C * C + C * E  # two norms, wq wk wv wo (MHA), the router
    total = V * C + L * (per_layer_dense + E * 3 * C * F_) + C  # tied embedding, final norm
    active = V * C + L * (per_layer_dense + k * 3 * C * F_) + C
    assert m.num_params() == total
    assert m.num_params(active=True) == active
    dense = Llama(replace(CFG, n_ff=F_))  # the same model with one dense SwiGLU of the expert's width
    assert active == dense.num_params() + L * ((k - 1) * 3 * C * F_ + C * E)


# ------------------------------------------------------------------------ config errors

@pytest.mark.parametrize("kw,match", [
    (dict(n_head=4, n_kv_head=3), "n_head=4 must be a multiple of n_kv_head=3"),
    (dict(n_head=4, n_embd=12), "head size n_embd/n_head = 3 must be even"),
    (dict(n_expert=2, top_k=3), "top_k=3 is more than n_expert=2"),
])
def test_config_errors_are_helpful(kw, match):
    with pytest.raises(ConfigError, match=match):
        Llama(replace(CFG, **kw))
    if "n_embd" in kw:
        Llama(replace(CFG, pos="learned", **kw))  # an odd head size is fine without RoPE


# ----------------------------------------------------------------------- training loss

def test_pooling_over_layers_hides_what_each_layer_shows():
    """Layer 1 sends everything to experts 0 and 1, layer 2 to 2 and 3: pooled, the counts look uniform."""
    big = torch.tensor([4.0, 4.0, 0.0, 0.0]).repeat(10, 1)
    layers = [big, big.flip(1)]
    per_layer = load_balancing_loss(layers, 2, per_layer=True)
    torch.testing.assert_close(per_layer, torch.stack([load_balancing_loss([r], 2) for r in layers]).mean())
    assert float(load_balancing_loss(layers, 2)) == pytest.approx(2.0, abs=1e-6)  # pooled: at the uniform value
    assert float(per_layer) > 3.5  # each layer on its own: far from it



def test_moe_training_loss_adds_the_balancing_loss_and_eval_does_not():
    m = ours(8, n_expert=4, top_k=2, aux_loss_coef=0.5)
    x, y = ids(seed=8), ids(seed=9)
    m.train()
    logits, loss = m(x, y)
    assert len(m.router_logits) == 2 and m.router_logits[0].shape == (40, 4)
    ce = F.cross_entropy(logits.flatten(0, 1), y.flatten())
    aux = load_balancing_loss(m.router_logits, 2, per_layer=True)  # the default: each layer balanced on its own
    torch.testing.assert_close(loss, ce + 0.5 * aux)
    assert aux.item() > 1.0  # really added (and not negligible at coef 0.5)
    pooled = ours(8, n_expert=4, top_k=2, aux_loss_coef=0.5, aux_loss="pooled")
    pooled.load_state_dict(m.state_dict())
    logits, loss = pooled.train()(x, y)
    torch.testing.assert_close(loss, ce + 0.5 * load_balancing_loss(pooled.router_logits, 2))
    m.eval()
    logits, loss = m(x, y)
    torch.testing.assert_close(loss, F.cross_entropy(logits.flatten(0, 1), y.flatten()))


# ------------------------------------------------------------------------------ figures

def test_head_attention_is_causal_normalised_and_reproduces_the_layer():
    m = ours(9, n_kv_head=2)
    x = ids(1, 12, seed=9)
    seen = {}
    attn = m.layers[1].attn
    h1 = attn.register_forward_pre_hook(lambda mod, args: seen.update(inp=args[0]))
    h2 = attn.register_forward_hook(lambda mod, args, out: seen.update(out=out))
    m(x)
    h1.remove(), h2.remove()
    maps = [head_attention(m, x[0], 1, h) for h in range(4)]
    for w in maps:
        assert w.shape == (12, 12)
        torch.testing.assert_close(w.sum(-1), torch.ones(12))
        assert torch.equal(w.triu(1), torch.zeros(12, 12))
    # the weights mix the values into exactly what the layer outputs (head h reads key/value head h // 2)
    v = attn.wv(seen["inp"]).view(12, 2, 8)
    y = torch.cat([maps[h] @ v[:, h // 2] for h in range(4)], dim=-1)
    torch.testing.assert_close(attn.wo(y), seen["out"][0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(maps[0], maps[1], atol=1e-3)


def test_figures_return_figures_with_their_axes():
    fig = rope_frequencies_figure(head_size=16, max_pos=64)
    assert len(fig.axes) == 3
    plt.close(fig)
    rope, learned = ours(10), ours(10, pos="learned")
    x = ids(1, 6, seed=10)
    fig = attention_maps_figure({"RoPE": head_attention(rope, x, 0, 0), "学习的位置编码": head_attention(learned, x, 0, 0)},
                                list("abcdef"))
    assert len(fig.axes) == 3  # two maps and their shared colour bar
    plt.close(fig)
    history = [(s, [[0.25 + 0.01 * s, 0.25, 0.25, 0.25 - 0.01 * s]] * 2) for s in range(0, 50, 10)]
    fig = expert_usage_figure(history)
    assert len(fig.axes) == 2  # one panel per layer
    plt.close(fig)
    fig = kv_cache_figure()
    assert len(fig.axes) == 1
    plt.close(fig)


def test_kv_cache_table_known_values():
    rows = {r["model"]: r for r in kv_cache_table()}
    assert rows["Llama-2-7B"]["bytes_per_token_bf16"] == 512 * 1024  # 2 x 32 layers x 32 heads x 128 x 2 bytes
    assert rows["Llama-3-8B"]["bytes_per_token_bf16"] == 128 * 1024  # 8 key/value heads: a quarter of it
    assert rows["Llama-2-7B"]["mib_context_bf16"] == 2048  # 2 GiB for one 4096-token sequence
    assert rows["Llama-3-8B"]["bytes_per_token_fp32"] == 256 * 1024
    small = [rows[f"small {a}"]["bytes_per_token_fp32"] for a in ("MHA", "GQA", "MQA")]
    assert small == [2 * 4 * 4 * 32 * 4, 2 * 4 * 2 * 32 * 4, 2 * 4 * 1 * 32 * 4]
