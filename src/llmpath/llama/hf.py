"""Hugging Face interop: our Llama <-> `transformers.LlamaForCausalLM` / `MixtralForCausalLM`, as safetensors on disk.

    model = from_hf(hf_model)              # a LlamaForCausalLM / MixtralForCausalLM object in memory
    model = from_hf("path/to/llama-dir")   # a folder with config.json + model.safetensors
    to_hf(model, "out/dir")                # LlamaForCausalLM (dense) or MixtralForCausalLM (n_expert > 0) reads it

Only Llama's own settings map: norm="rms", pos="rope", mlp="swiglu", bias=False (the GPT-2 end of the
ablation has no Hugging Face counterpart here; config_to_hf refuses it). The names map one to one
(wq -> self_attn.q_proj, w1/w3/w2 -> mlp.gate_proj/up_proj/down_proj, ...), with no transposes: both
sides are nn.Linear. RoPE needs no conversion either, because model.py rotates the pairs (x[i], x[i + hs/2])
as Hugging Face's `rotate_half` does. The one reshaping is Mixtral's experts: transformers 5 stores each
layer's experts fused, `mlp.experts.gate_up_proj` (E, 2 ff, C) with every expert's gate rows before its up
rows, and `mlp.experts.down_proj` (E, C, ff); the router is `mlp.gate.weight`. transformers 4's per-expert
names (`block_sparse_moe.experts.{e}.w1/w2/w3.weight`, `block_sparse_moe.gate.weight`) are read too.
A tied head is written once, as model.embed_tokens.weight (as save_pretrained does).

Mixtral's training loss adds its balancing loss with the counts pooled over all layers: our
aux_loss="pooled". Our default, aux_loss="layer" (each layer balanced on its own), has no Hugging Face
setting; it is written as `"llmpath_aux_loss": "layer"` in config.json (transformers keeps unknown keys and
ignores them) so that from_hf restores it. The weights and logits do not depend on it; a Mixtral folder
without the key is read as "pooled", which is what transformers trains it with.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from llmpath.gpt.hf import read_folder  # the same files as any Hugging Face model folder
from llmpath.llama.model import Llama, LlamaConfig

# (ours, Hugging Face) names; {i} is the layer number, {e} the expert number
_NAMES = [
    ("embed.weight", "model.embed_tokens.weight"),
    ("layers.{i}.attn_norm.weight", "model.layers.{i}.input_layernorm.weight"),
    ("layers.{i}.attn.wq.weight", "model.layers.{i}.self_attn.q_proj.weight"),
    ("layers.{i}.attn.wk.weight", "model.layers.{i}.self_attn.k_proj.weight"),
    ("layers.{i}.attn.wv.weight", "model.layers.{i}.self_attn.v_proj.weight"),
    ("layers.{i}.attn.wo.weight", "model.layers.{i}.self_attn.o_proj.weight"),
    ("layers.{i}.ffn_norm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
    ("layers.{i}.ffn.w1.weight", "model.layers.{i}.mlp.gate_proj.weight"),
    ("layers.{i}.ffn.w3.weight", "model.layers.{i}.mlp.up_proj.weight"),
    ("layers.{i}.ffn.w2.weight", "model.layers.{i}.mlp.down_proj.weight"),
    ("layers.{i}.ffn.router.weight", "model.layers.{i}.mlp.gate.weight"),
    ("norm.weight", "model.norm.weight"),
    ("lm_head.weight", "lm_head.weight"),
]
# transformers 4.x Mixtral: one Linear per expert (the same w1/w2/w3 as ours), under block_sparse_moe
_OLD = [
    ("layers.{i}.ffn.router.weight", "model.layers.{i}.block_sparse_moe.gate.weight"),
    ("layers.{i}.ffn.experts.{e}.{w}.weight", "model.layers.{i}.block_sparse_moe.experts.{e}.{w}.weight"),
]
_FUSED = re.compile(r"^model\.layers\.(?P<i>\d+)\.mlp\.experts\.(?P<kind>gate_up_proj|down_proj)$")
_EXPERT = re.compile(r"^layers\.\d+\.ffn\.experts\.")
_IGNORED = ("rotary_emb.inv_freq",)  # a buffer old checkpoints carry: computed from rope_theta, not learned


def _pattern(template: str) -> re.Pattern:
    p = re.escape(template)
    for key, rx in (("i", r"\d+"), ("e", r"\d+"), ("w", "w[123]")):
        p = p.replace(rf"\{{{key}\}}", f"(?P<{key}>{rx})")
    return re.compile("^" + p + "$")


_TO_HF = [(_pattern(ours), theirs) for ours, theirs in _NAMES]
_FROM_HF = [(_pattern(theirs), ours) for ours, theirs in _NAMES + _OLD]


def _rename(name: str, table: list[tuple[re.Pattern, str]]) -> str | None:
    for pat, target in table:
        if m := pat.match(name):
            return target.format(**m.groupdict())
    return None


def _check_supported(cfg: LlamaConfig) -> None:
    llama = {"norm": "rms", "pos": "rope", "mlp": "swiglu", "bias": False}
    wrong = [f"{k}={getattr(cfg, k)!r}" for k, want in llama.items() if getattr(cfg, k) != want]
    if wrong:
        raise ValueError(f"Hugging Face's Llama has norm='rms', pos='rope', mlp='swiglu', bias=False; this model has "
                         f"{', '.join(wrong)}")


def config_to_hf(cfg: LlamaConfig, bos_token_id: int | None = None, eos_token_id: int | None = None) -> dict[str, Any]:
    """A config.json that transformers reads back as the same architecture: Llama, or Mixtral with n_expert > 0."""
    _check_supported(cfg)
    d: dict[str, Any] = {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd, "intermediate_size": cfg.ff_width, "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.n_embd // cfg.n_head,
        "hidden_act": "silu", "max_position_embeddings": cfg.block_size, "rms_norm_eps": cfg.norm_eps,
        # transformers 5 keeps rope_theta inside rope_parameters (it moves a top-level 4.x rope_theta there)
        "rope_parameters": {"rope_type": "default", "rope_theta": float(cfg.rope_theta)},
        "tie_word_embeddings": cfg.tie_embeddings, "attention_dropout": 0.0, "initializer_range": 0.02,
        "use_cache": True, "bos_token_id": bos_token_id, "eos_token_id": eos_token_id, "pad_token_id": None,
    }
    if not cfg.n_expert:
        return {**d, "attention_bias": False, "mlp_bias": False}  # MixtralConfig has neither key
    extra = {} if cfg.aux_loss == "pooled" else {"llmpath_aux_loss": cfg.aux_loss}  # Mixtral pools; see the top
    return {**d, "model_type": "mixtral", "architectures": ["MixtralForCausalLM"], "num_local_experts": cfg.n_expert,
            "num_experts_per_tok": cfg.top_k, "router_aux_loss_coef": cfg.aux_loss_coef, "router_jitter_noise": 0.0,
            "sliding_window": None, "output_router_logits": False, **extra}


def _rope_theta(d: dict[str, Any]) -> float:
    rope = d.get("rope_parameters") or d.get("rope_scaling") or {}  # 5.x, else 4.x (scaling only; theta top-level)
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default" or rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(f"this config scales RoPE (rope_type '{kind}', {rope}); ours is plain RoPE ('default')")
    default = 1e6 if d.get("model_type") == "mixtral" else 1e4  # transformers' default_theta of each
    return float(rope.get("rope_theta", d.get("rope_theta", default)))


def config_from_hf(d: dict[str, Any], dropout: float = 0.0, sdpa: bool = True) -> LlamaConfig:
    """Our LlamaConfig from a Llama / Mixtral config.json dict; refuses variants our blocks do not compute."""
    kind = d.get("model_type", "llama")
    if kind not in ("llama", "mixtral"):
        raise ValueError(f"model_type '{kind}' is not 'llama' or 'mixtral'; only those two map to our Llama")
    C, heads = d["hidden_size"], d["num_attention_heads"]
    if d.get("head_dim") not in (None, C // heads) or C % heads:
        raise ValueError(f"head_dim={d.get('head_dim')} is not hidden_size/num_attention_heads = {C}/{heads}; "
                         "ours splits the width evenly")
    if d.get("attention_bias") or d.get("mlp_bias"):
        raise ValueError("this config has biases (attention_bias / mlp_bias); our Llama-style layers have none")
    if d.get("hidden_act", "silu") != "silu":
        raise ValueError(f"this config uses activation '{d['hidden_act']}'; ours is SwiGLU with 'silu'")
    window = d.get("sliding_window")
    if window is not None and window < d["max_position_embeddings"]:
        raise ValueError(f"sliding_window={window} limits attention; ours attends over the whole context")
    theta = _rope_theta(d)
    kv = d.get("num_key_value_heads") or heads
    moe = {}
    if kind == "mixtral":  # router_jitter_noise (training-time noise on the router input) has no counterpart
        moe = dict(n_expert=d.get("num_local_experts", 8), top_k=d.get("num_experts_per_tok", 2),
                   aux_loss_coef=float(d.get("router_aux_loss_coef", 0.001)),
                   aux_loss=d.get("llmpath_aux_loss", "pooled"))  # written by config_to_hf; transformers pools
    n_ff = d["intermediate_size"]
    if n_ff == LlamaConfig(n_embd=C, n_expert=moe.get("n_expert", 0), top_k=moe.get("top_k", 2)).ff_width:
        n_ff = 0  # the default width: keep the config as config_to_hf saw it
    return LlamaConfig(vocab_size=d["vocab_size"], block_size=d["max_position_embeddings"],
                       n_layer=d["num_hidden_layers"], n_head=heads, n_kv_head=0 if kv == heads else kv, n_embd=C,
                       n_ff=n_ff, rope_theta=theta, norm_eps=float(d.get("rms_norm_eps", 1e-6)),
                       tie_embeddings=bool(d.get("tie_word_embeddings", False)), dropout=dropout, sdpa=sdpa, **moe)


def to_hf_state_dict(model: Llama) -> dict[str, Tensor]:
    """Our weights under transformers 5 names (experts fused); lm_head.weight included even when tied,
    as `hf_model.state_dict()` has it, so that `hf_model.load_state_dict(..., strict=True)` takes it."""
    _check_supported(model.cfg)
    out = {}
    for name, t in model.state_dict().items():
        if _EXPERT.match(name):
            continue  # fused below
        theirs = _rename(name, _TO_HF)
        if theirs is None:
            raise ValueError(f"no Hugging Face name for '{name}'")
        out[theirs] = t
    for i, block in enumerate(model.layers):
        if model.cfg.n_expert:
            experts = block.ffn.experts
            out[f"model.layers.{i}.mlp.experts.gate_up_proj"] = torch.stack(
                [torch.cat([e.w1.weight, e.w3.weight]) for e in experts]).detach()  # (E, 2 ff, C): gate, then up
            out[f"model.layers.{i}.mlp.experts.down_proj"] = torch.stack([e.w2.weight for e in experts]).detach()
    return out


def from_hf_state_dict(cfg: LlamaConfig, sd: dict[str, Tensor]) -> Llama:
    """Our Llama (train mode, as built) holding a Llama / Mixtral state dict by transformers 5 or 4 names."""
    model = Llama(cfg)
    ours: dict[str, Tensor] = {}
    for name, t in sd.items():
        if name.endswith(_IGNORED):
            continue
        if m := _FUSED.match(name):
            i, ff = m["i"], cfg.ff_width
            for e in range(t.shape[0]):
                if m["kind"] == "gate_up_proj":
                    ours[f"layers.{i}.ffn.experts.{e}.w1.weight"] = t[e, :ff]
                    ours[f"layers.{i}.ffn.experts.{e}.w3.weight"] = t[e, ff:]
                else:
                    ours[f"layers.{i}.ffn.experts.{e}.w2.weight"] = t[e]
            continue
        mine = _rename(name, _FROM_HF)
        if mine is None:
            raise ValueError(f"'{name}' has no place in our Llama (a bias, or a module it does not have?)")
        ours[mine] = t
    if cfg.tie_embeddings:
        ours.pop("lm_head.weight", None)  # tied to embed.weight, as transformers re-ties it on load
    missing, unexpected = model.load_state_dict(ours, strict=False)
    missing = [k for k in missing if not (cfg.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"the Llama weights do not match the config: missing {sorted(missing)[:4]}, "
                         f"unexpected {sorted(unexpected)[:4]}")
    return model


def from_hf(model_or_dir: Any, dropout: float = 0.0, sdpa: bool = True) -> Llama:
    """Our Llama (eval mode) with the weights of a LlamaForCausalLM / MixtralForCausalLM object or folder."""
    hf_cfg, sd = read_folder(model_or_dir)
    return from_hf_state_dict(config_from_hf(hf_cfg, dropout=dropout, sdpa=sdpa), sd).eval()


def to_hf(model: Llama, out_dir: str | Path, bos_token_id: int | None = None, eos_token_id: int | None = None) -> Path:
    """Write config.json + model.safetensors that Llama/MixtralForCausalLM.from_pretrained(out_dir) loads."""
    from safetensors.torch import save_file

    if not isinstance(model, Llama):
        raise TypeError(f"to_hf takes a Llama, not {type(model).__name__}")
    sd = to_hf_state_dict(model)
    if model.cfg.tie_embeddings:
        del sd["lm_head.weight"]  # written once, as model.embed_tokens.weight
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = {**config_to_hf(model.cfg, bos_token_id, eos_token_id), "dtype": str(model.embed.weight.dtype)[6:]}
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    save_file({k: t.detach().cpu().contiguous().clone() for k, t in sd.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    return out
