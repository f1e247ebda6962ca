"""Hugging Face interop: our ViT <-> `transformers.ViTForImageClassification`, as safetensors on disk.

    model = from_hf(hf_model)            # a ViTForImageClassification object -> our ViT (eval mode)
    model = from_hf("path/to/vit-dir")   # a folder with config.json + model.safetensors
    to_hf(model, "out/dir")              # ViTForImageClassification.from_pretrained("out/dir") reads it

This file is the only place that knows Hugging Face's names. Only the configuration they share maps:
learned positions, a [CLS] token and its head, exact GELU, biases on q/k/v (qkv_bias). transformers 5
names the layers `vit.layers.{i}.attention.q_proj`, ...; the older `vit.encoder.layer.{i}.attention.attention.query`
names are read too.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from torch import Tensor

from llmpath.gpt.hf import read_folder  # the same files as any Hugging Face model folder
from llmpath.vit.model import ViT, ViTConfig

# (ours, Hugging Face) names; {i} is the layer number
_NAMES = [
    ("cls", "vit.embeddings.cls_token"),
    ("pos", "vit.embeddings.position_embeddings"),
    ("patch_embed.proj.weight", "vit.embeddings.patch_embeddings.projection.weight"),
    ("patch_embed.proj.bias", "vit.embeddings.patch_embeddings.projection.bias"),
    ("layers.{i}.norm1.{p}", "vit.layers.{i}.layernorm_before.{p}"),
    ("layers.{i}.self_attn.q.{p}", "vit.layers.{i}.attention.q_proj.{p}"),
    ("layers.{i}.self_attn.k.{p}", "vit.layers.{i}.attention.k_proj.{p}"),
    ("layers.{i}.self_attn.v.{p}", "vit.layers.{i}.attention.v_proj.{p}"),
    ("layers.{i}.self_attn.proj.{p}", "vit.layers.{i}.attention.o_proj.{p}"),
    ("layers.{i}.norm2.{p}", "vit.layers.{i}.layernorm_after.{p}"),
    ("layers.{i}.ff.fc1.{p}", "vit.layers.{i}.mlp.fc1.{p}"),
    ("layers.{i}.ff.fc2.{p}", "vit.layers.{i}.mlp.fc2.{p}"),
    ("norm.{p}", "vit.layernorm.{p}"),
    ("head.{p}", "classifier.{p}"),
]
# transformers 4.x names of the same tensors
_OLD = {
    "vit.layers.{i}.attention.q_proj.{p}": "vit.encoder.layer.{i}.attention.attention.query.{p}",
    "vit.layers.{i}.attention.k_proj.{p}": "vit.encoder.layer.{i}.attention.attention.key.{p}",
    "vit.layers.{i}.attention.v_proj.{p}": "vit.encoder.layer.{i}.attention.attention.value.{p}",
    "vit.layers.{i}.attention.o_proj.{p}": "vit.encoder.layer.{i}.attention.output.dense.{p}",
    "vit.layers.{i}.layernorm_before.{p}": "vit.encoder.layer.{i}.layernorm_before.{p}",
    "vit.layers.{i}.layernorm_after.{p}": "vit.encoder.layer.{i}.layernorm_after.{p}",
    "vit.layers.{i}.mlp.fc1.{p}": "vit.encoder.layer.{i}.intermediate.dense.{p}",
    "vit.layers.{i}.mlp.fc2.{p}": "vit.encoder.layer.{i}.output.dense.{p}",
}


def _pattern(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)") + "$")


_TO_HF = [(_pattern(ours), theirs) for ours, theirs in _NAMES]
_FROM_HF = [(_pattern(theirs), ours) for ours, theirs in _NAMES] + \
           [(_pattern(old), next(o for o, t in _NAMES if t == new)) for new, old in _OLD.items()]


def _rename(name: str, table: list[tuple[re.Pattern, str]]) -> str | None:
    for pat, target in table:
        if m := pat.match(name):
            return target.format(**m.groupdict())
    return None


def _check_supported(cfg: ViTConfig) -> None:
    if cfg.pos != "learned" or cfg.pool != "cls":
        raise ValueError(f"Hugging Face's ViT has learned positions and a [CLS] head; this model has pos='{cfg.pos}', "
                         f"pool='{cfg.pool}'")


def config_dict(cfg: ViTConfig) -> dict[str, Any]:
    """config.json of a ViTForImageClassification with our shapes."""
    _check_supported(cfg)
    return {"model_type": "vit", "architectures": ["ViTForImageClassification"], "image_size": cfg.image_size,
            "patch_size": cfg.patch_size, "num_channels": cfg.channels, "hidden_size": cfg.n_embd,
            "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head, "intermediate_size": cfg.n_ff,
            "hidden_act": "gelu", "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.dropout,
            "layer_norm_eps": cfg.layer_norm_eps, "qkv_bias": True, "initializer_range": 0.02,
            "id2label": {str(i): f"LABEL_{i}" for i in range(cfg.n_classes)},
            "label2id": {f"LABEL_{i}": i for i in range(cfg.n_classes)}}


def config_to_hf(cfg: ViTConfig) -> Any:
    import transformers

    d = config_dict(cfg)
    d.pop("model_type")
    d["id2label"] = {int(k): v for k, v in d["id2label"].items()}
    return transformers.ViTConfig(**d)


def config_from_hf(hf_cfg: Any, sdpa: bool = True) -> ViTConfig:
    """Our ViTConfig from a transformers.ViTConfig or config.json dict; refuses variants our layers do not compute."""
    hf = hf_cfg if isinstance(hf_cfg, dict) else hf_cfg.to_dict()
    if hf.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"this ViT uses activation '{hf['hidden_act']}'; ours is the exact (erf) GELU, 'gelu'")
    if not hf.get("qkv_bias", True):
        raise ValueError("this ViT has no biases on q/k/v (qkv_bias=false); ours has them")
    n_classes = len(hf.get("id2label") or {}) or hf.get("num_labels", 2)
    return ViTConfig(image_size=hf["image_size"], patch_size=hf["patch_size"], channels=hf.get("num_channels", 3),
                     n_classes=n_classes, n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"],
                     n_embd=hf["hidden_size"], n_ff=hf["intermediate_size"],
                     dropout=float(hf.get("hidden_dropout_prob", 0.0)), layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
                     sdpa=sdpa)


def to_hf_state_dict(model: ViT) -> dict[str, Tensor]:
    _check_supported(model.cfg)
    out = {}
    for name, t in model.state_dict().items():
        theirs = _rename(name, _TO_HF)
        if theirs is None:
            raise ValueError(f"no Hugging Face name for '{name}'")
        out[theirs] = t
    return out


def from_hf_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for name, t in sd.items():
        ours = _rename(name, _FROM_HF)
        if ours is None:
            raise ValueError(f"'{name}' has no place in our ViT (a pooler, or a head it does not have?)")
        out[ours] = t
    return out


def from_hf(model_or_dir: Any, sdpa: bool = True) -> ViT:
    """Our ViT (eval mode) with the weights of a ViTForImageClassification object or folder."""
    hf_cfg, sd = read_folder(model_or_dir)
    model = ViT(config_from_hf(hf_cfg, sdpa=sdpa))
    missing, unexpected = model.load_state_dict(from_hf_state_dict(sd), strict=False)
    if missing or unexpected:
        raise ValueError(f"the ViT weights do not match the config: missing {sorted(missing)[:4]}, "
                         f"unexpected {sorted(unexpected)[:4]}")
    return model.eval()


def to_hf(model: ViT, out_dir: str | Path) -> Path:
    """Write config.json + model.safetensors that ViTForImageClassification.from_pretrained(out_dir) loads."""
    from safetensors.torch import save_file

    if not isinstance(model, ViT):
        raise TypeError(f"to_hf takes a ViT, not {type(model).__name__}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config_dict(model.cfg), indent=2) + "\n", encoding="utf-8")
    sd = {k: t.detach().cpu().contiguous().clone() for k, t in to_hf_state_dict(model).items()}
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out
