"""Stage 9 Llama-style decoder against Hugging Face transformers: weights both ways with equal logits, loss and
gradients (MHA, GQA, MQA, RoPE base, tied and untied head), greedy generation, export to and import from model
folders, and Mixtral (router logits, balancing loss, training loss, transformers 4's per-expert names).
The tests that need no transformers are in test_llama_model.py."""

import json

import pytest
import torch
from helpers import perturb

from llmpath.generation import generate
from llmpath.llama.hf import config_from_hf, config_to_hf, from_hf, from_hf_state_dict, to_hf, to_hf_state_dict
from llmpath.llama.model import Llama, LlamaConfig
from llmpath.llama.moe import load_balancing_loss

transformers = pytest.importorskip("transformers")
V = 61
TOL = dict(atol=1e-5, rtol=1e-5)
# Mixtral's default experts kernel (grouped_mm) needs 16-byte row strides on CPU: a width that is a multiple of 4
MOE = dict(n_expert=4, top_k=2, n_ff=48)
VARIANTS = {"mha": {}, "gqa": dict(n_kv_head=2), "mqa": dict(n_kv_head=1), "theta": dict(rope_theta=500000.0),
            "untied gqa": dict(tie_embeddings=False, n_kv_head=2)}


def llama_cfg(**kw) -> LlamaConfig:
    return LlamaConfig(**{**dict(vocab_size=V, block_size=32, n_layer=2, n_head=4, n_embd=32), **kw})


def hf_model(cfg: LlamaConfig, attn: str = "eager", seed: int = 0, **kw):
    """A random LlamaForCausalLM / MixtralForCausalLM of config_to_hf(cfg), every weight perturbed (no hub)."""
    torch.manual_seed(seed)
    hf_cfg = transformers.AutoConfig.for_model(**config_to_hf(cfg))
    model = transformers.AutoModelForCausalLM.from_config(hf_cfg, attn_implementation=attn, **kw)
    return perturb(model, seed).eval()


def ours_model(cfg: LlamaConfig, seed: int = 0) -> Llama:
    torch.manual_seed(seed)
    return perturb(Llama(cfg), seed).eval()


def grads_by_hf_name(model: Llama) -> dict[str, torch.Tensor]:
    """Our gradients under Hugging Face names (the experts fused), through the same mapping as the weights."""
    g = Llama(model.cfg)  # parameters in the same order
    with torch.no_grad():
        for p, q in zip(g.parameters(), model.parameters()):
            p.copy_(q.grad)
    return to_hf_state_dict(g)


# ---------------------------------------------------------------------- dense Llama

@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_equal_huggingface_both_ways(variant):
    cfg = llama_cfg(**VARIANTS[variant])
    x = torch.randint(0, V, (3, 32))
    for attn in ("eager", "sdpa"):
        hf = hf_model(cfg, attn)
        for sdpa in (True, False):
            ours = from_hf(hf, sdpa=sdpa)
            assert ours.cfg == llama_cfg(**VARIANTS[variant], sdpa=sdpa)
            with torch.no_grad():
                torch.testing.assert_close(ours(x)[0], hf(x).logits, **TOL)
        ours = ours_model(cfg, seed=1)  # and ours into theirs
        hf.load_state_dict(to_hf_state_dict(ours), strict=True)
        with torch.no_grad():
            torch.testing.assert_close(hf(x).logits, ours(x)[0], **TOL)


@pytest.mark.parametrize("variant", ["gqa", "mqa", "untied gqa", "moe"])
def test_loss_and_every_gradient_equal_huggingface(variant):
    cfg = llama_cfg(**(MOE if variant == "moe" else VARIANTS[variant]))
    hf = hf_model(cfg, "sdpa")
    ours = from_hf(hf)  # eval mode on both sides: no balancing loss in either (dropout is 0 anyway)
    x = torch.randint(0, V, (2, 24))
    loss_hf = hf(x, labels=x).loss  # HF shifts the labels inside; ours takes the shifted targets
    _, loss = ours(x[:, :-1], x[:, 1:])
    torch.testing.assert_close(loss, loss_hf, **TOL)
    loss.backward()
    loss_hf.backward()
    mine = grads_by_hf_name(ours)
    theirs = dict(hf.named_parameters())  # a tied head once, as model.embed_tokens.weight
    assert set(theirs) <= set(mine) and len(theirs) >= 9 * cfg.n_layer // 2
    for name, p in theirs.items():
        torch.testing.assert_close(mine[name], p.grad, **TOL, msg=name)


@pytest.mark.parametrize("kw", [dict(n_kv_head=2), dict(n_kv_head=1, rope_theta=500000.0), MOE],
                         ids=["gqa", "mqa theta", "moe"])
def test_greedy_generation_equals_huggingface(kw):
    # untied: with a tied head a random model's top logit is mostly the input token itself, and greedy repeats it
    cfg = llama_cfg(**kw, tie_embeddings=False)
    hf = hf_model(cfg, "sdpa", seed=2)
    ours = from_hf(hf)
    g = torch.Generator().manual_seed(0)
    for n_prompt in (1, 5, 12):
        prompt = torch.randint(0, V, (1, n_prompt), generator=g)
        new = 32 - n_prompt
        ref = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new, do_sample=False,
                          eos_token_id=None, pad_token_id=0)
        assert len(set(ref[0, n_prompt:].tolist())) > 3  # not one id repeated: a real test of the logits
        for use_cache in (True, False):
            assert generate(ours, prompt, new, greedy=True, use_cache=use_cache).tolist() == ref.tolist()


# ---------------------------------------------------------------------- folders

@pytest.mark.parametrize("kw", [dict(n_kv_head=2), dict(MOE, tie_embeddings=False, rope_theta=500000.0)],
                         ids=["llama tied", "mixtral untied"])
def test_export_reloads_in_transformers_and_back(tmp_path, kw):
    from safetensors.torch import load_file

    cfg = llama_cfg(**kw)
    ours = ours_model(cfg, seed=3)
    to_hf(ours, tmp_path / "hf")
    names = set(load_file(str(tmp_path / "hf" / "model.safetensors")))
    assert ("lm_head.weight" in names) == (not cfg.tie_embeddings)  # a tied head is written once
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(reloaded).__name__ == ("MixtralForCausalLM" if cfg.n_expert else "LlamaForCausalLM")
    x = torch.randint(0, V, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x).logits, ours(x)[0], **TOL)
    reloaded.save_pretrained(tmp_path / "saved")  # and back, from our folder and from transformers' own
    for back in (from_hf(tmp_path / "hf"), from_hf(tmp_path / "saved"), from_hf(reloaded)):
        assert back.cfg == cfg
        assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), ours.state_dict().values()))


def test_config_round_trips_through_transformers():
    for cfg in (llama_cfg(), llama_cfg(n_kv_head=1, rope_theta=500000.0, tie_embeddings=False, norm_eps=1e-6),
                llama_cfg(n_expert=4, top_k=1, aux_loss_coef=0.02), llama_cfg(**MOE, n_kv_head=2)):
        d = config_to_hf(cfg)
        assert config_from_hf(d) == cfg
        hf_cfg = transformers.AutoConfig.for_model(**d)
        assert hf_cfg.rope_parameters == {"rope_type": "default", "rope_theta": cfg.rope_theta}
        assert config_from_hf(hf_cfg.to_dict()) == cfg
    # Mixtral pools the balancing loss: a folder without our key is read as aux_loss="pooled"
    d = config_to_hf(llama_cfg(**MOE))
    assert d.pop("llmpath_aux_loss") == "layer" and config_from_hf(d).aux_loss == "pooled"
    # transformers 4's config.json: rope_theta at the top level, rope_scaling null
    old = {**config_to_hf(llama_cfg()), "rope_theta": 500000.0, "rope_scaling": None}
    del old["rope_parameters"]
    assert config_from_hf(old).rope_theta == 500000.0


@pytest.mark.parametrize("change, match", [
    (dict(rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}), "rope_type 'linear'"),
    (dict(head_dim=16), "head_dim=16"),
    (dict(attention_bias=True), "biases"),
    (dict(hidden_act="gelu"), "activation 'gelu'"),
    (dict(model_type="gpt2"), "model_type 'gpt2'"),
])
def test_refused_hf_configs(change, match):
    with pytest.raises(ValueError, match=match):
        config_from_hf({**config_to_hf(llama_cfg()), **change})


def test_refused_model_names_the_option(tmp_path):
    for kw, option in ((dict(norm="layer"), "norm='layer'"), (dict(pos="learned"), "pos='learned'"),
                       (dict(bias=True), "bias=True"), (dict(mlp="gelu"), "mlp='gelu'")):
        with pytest.raises(ValueError, match=option):
            to_hf(Llama(llama_cfg(**kw)), tmp_path)


# ---------------------------------------------------------------------- Mixtral

@pytest.mark.parametrize("experts", ["grouped_mm", "eager"])
def test_mixtral_router_logits_balancing_and_training_loss_equal_huggingface(experts):
    cfg = llama_cfg(**MOE, n_kv_head=2, aux_loss_coef=0.05, aux_loss="pooled")  # HF pools the counts over layers
    hf = hf_model(cfg, "sdpa", seed=4, experts_implementation=experts)
    ours = from_hf(hf)
    x = torch.randint(0, V, (2, 32))
    with torch.no_grad():
        out = hf(x, output_router_logits=True)
        logits, _ = ours(x)
    torch.testing.assert_close(logits, out.logits, **TOL)
    assert len(out.router_logits) == len(ours.router_logits) == cfg.n_layer
    for theirs, mine in zip(out.router_logits, ours.router_logits):
        torch.testing.assert_close(mine, theirs, **TOL)
    aux = load_balancing_loss(ours.router_logits, cfg.top_k)
    torch.testing.assert_close(aux, out.aux_loss, **TOL)
    assert aux > cfg.top_k  # perturbed routers are not balanced: the term is not at its floor
    # training mode: HF adds router_aux_loss_coef x aux (it needs output_router_logits), ours aux_loss_coef x aux
    hf.train(), ours.train()
    loss_hf = hf(x, labels=x, output_router_logits=True).loss
    targets = torch.cat([x[:, 1:], torch.full((2, 1), -100)], dim=1)  # the same T inputs the router sees in HF
    _, loss = ours(x, targets)
    torch.testing.assert_close(loss, loss_hf, **TOL)
    with torch.no_grad():  # and ours into theirs
        ours = ours_model(cfg, seed=5)
        hf.eval().load_state_dict(to_hf_state_dict(ours), strict=True)
        torch.testing.assert_close(hf(x).logits, ours(x)[0], **TOL)


def test_transformers4_expert_names_read_back(tmp_path):
    cfg = llama_cfg(**MOE, tie_embeddings=False)
    ours = ours_model(cfg, seed=6)
    old, ff = {}, cfg.ff_width
    for name, t in to_hf_state_dict(ours).items():  # the 5.x fused tensors, split the way transformers 4 stored them
        prefix, _, rest = name.partition(".mlp.")
        if rest == "gate.weight":
            old[f"{prefix}.block_sparse_moe.gate.weight"] = t
        elif rest.startswith("experts."):
            for e in range(cfg.n_expert):
                if rest.endswith("gate_up_proj"):
                    old[f"{prefix}.block_sparse_moe.experts.{e}.w1.weight"] = t[e, :ff]
                    old[f"{prefix}.block_sparse_moe.experts.{e}.w3.weight"] = t[e, ff:]
                else:
                    old[f"{prefix}.block_sparse_moe.experts.{e}.w2.weight"] = t[e]
        else:
            old[name] = t
    back = from_hf_state_dict(cfg, old)
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), ours.state_dict().values()))
    # the same names in a folder with a 4.x config.json: transformers' own conversion reads them to the same logits
    from safetensors.torch import save_file

    d = {**config_to_hf(cfg), "rope_theta": cfg.rope_theta, "rope_scaling": None}
    del d["rope_parameters"]
    (tmp_path / "config.json").write_text(json.dumps(d))
    save_file({k: v.contiguous().clone() for k, v in old.items()}, str(tmp_path / "model.safetensors"))
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    x = torch.randint(0, V, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(theirs(x).logits, ours(x)[0], **TOL)
        assert torch.equal(from_hf(tmp_path)(x)[0], ours(x)[0])
