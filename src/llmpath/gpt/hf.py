"""Hugging Face interop: our GPT <-> `transformers.GPT2LMHeadModel` weights, as safetensors on disk.

    model = from_hf(hf_model)              # a GPT2LMHeadModel / GPT2Model object in memory
    model = from_hf("path/to/gpt2-dir")    # a folder with config.json + model.safetensors
    model = from_pretrained("gpt2")        # the hub (where reachable), then the same folder loader
    to_hf(model, "out/dir")                # GPT2LMHeadModel.from_pretrained("out/dir") reads it

Our modules carry GPT-2's names (wte, wpe, h.N.ln_1, attn.c_attn, mlp.c_fc, ...), so the mapping is
only: drop/add the "transformer." prefix, and transpose the four projection matrices, because GPT-2
stores them as `Conv1D` with shape (in, out) where nn.Linear holds (out, in). Reading a folder needs
only safetensors, not transformers.

GPT-2 always has biases. A bias=False model is exported with zero biases and `"llmpath_bias": false`
in config.json (transformers keeps unknown keys as plain attributes and ignores them), so that
from_hf builds bias=False again: same parameters, same logits.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from llmpath.gpt.model import GPT, GPTConfig

# GPT-2 Conv1D weights, stored transposed relative to nn.Linear.
_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Buffers old checkpoints carry (the causal mask); they hold no learned values.
_IGNORED = (".attn.bias", ".attn.masked_bias")
_GELU_TANH = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def config_from_hf(hf: dict[str, Any], dropout: float = 0.0, sdpa: bool = True) -> GPTConfig:
    """Our GPTConfig from a GPT-2 config.json dict; refuses variants our blocks do not compute."""
    act = hf.get("activation_function", "gelu_new")
    if act not in _GELU_TANH:
        raise ValueError(f"GPT-2 config uses activation '{act}'; ours is the tanh GELU ({', '.join(_GELU_TANH)})")
    n_embd = hf["n_embd"]
    if hf.get("n_inner") not in (None, 4 * n_embd):
        raise ValueError(f"n_inner={hf['n_inner']} is not 4*n_embd={4 * n_embd}; our MLP is 4x wide")
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("scale_attn_weights") is False or hf.get("add_cross_attention"):
        raise ValueError("this GPT-2 config changes the attention (layer-wise scaling, no scaling or cross-attention)")
    return GPTConfig(vocab_size=hf["vocab_size"], block_size=hf["n_positions"], n_layer=hf["n_layer"],
                     n_head=hf["n_head"], n_embd=n_embd, dropout=dropout, sdpa=sdpa,
                     bias=hf.get("llmpath_bias", True),  # written by config_to_hf for a bias=False model
                     layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5))


def config_to_hf(cfg: GPTConfig, bos_token_id: int | None = None, eos_token_id: int | None = None) -> dict[str, Any]:
    """A config.json that `transformers.GPT2Config` reads back as the same architecture."""
    eos = cfg.vocab_size - 1 if eos_token_id is None else eos_token_id
    # only where we differ from GPT-2: a stock config (and everything transformers reads) is unchanged
    extra = {} if cfg.bias else {"llmpath_bias": False}
    return {
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
        "vocab_size": cfg.vocab_size, "n_positions": cfg.block_size, "n_ctx": cfg.block_size,
        "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": None,
        "activation_function": "gelu_new", "layer_norm_epsilon": cfg.layer_norm_eps,
        "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
        "initializer_range": 0.02, "scale_attn_weights": True, "tie_word_embeddings": True,
        "bos_token_id": eos if bos_token_id is None else bos_token_id, "eos_token_id": eos, **extra,
    }


def _ours_from_hf_state(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """HF GPT-2 state dict (with or without the 'transformer.' prefix) -> our state dict."""
    out = {}
    for name, t in sd.items():
        if name.startswith("transformer."):
            name = name[len("transformer."):]
        if name.endswith(_IGNORED) or name == "lm_head.weight":
            continue  # lm_head is tied to wte in both models
        out[name] = t.t() if name.endswith(_TRANSPOSED) else t
    return out


def _hf_state_from_ours(model: GPT) -> dict[str, Tensor]:
    """Our weights under HF names, Conv1D matrices transposed, contiguous (as safetensors wants)."""
    out = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied: HF re-ties it to transformer.wte.weight on load
        out["transformer." + name] = (t.t() if name.endswith(_TRANSPOSED) else t).detach().contiguous().clone()
    if not model.cfg.bias:  # GPT-2 always has biases: ours are zero (config.json says so for the way back)
        for name, m in model.named_modules():
            if isinstance(m, (nn.Linear, nn.LayerNorm)) and m is not model.lm_head:
                out.setdefault(f"transformer.{name}.bias", torch.zeros(m.weight.shape[0]))
    return out


def _without_zero_biases(ours: dict[str, Tensor], cfg: GPTConfig) -> tuple[dict[str, Tensor], GPTConfig]:
    """Drop the zero biases a bias=False export carries; keep them all (bias=True) if any has been trained since."""
    biases = [name for name in ours if name.endswith(".bias")]
    if any(ours[name].any() for name in biases):
        warnings.warn("config.json says llmpath_bias=false, but some biases are not zero (trained after export?); "
                      "loading with bias=True so that no learned value is dropped", stacklevel=3)
        return ours, replace(cfg, bias=True)
    return {name: t for name, t in ours.items() if name not in biases}, cfg


def _load_state(model: GPT, ours: dict[str, Tensor]) -> GPT:
    expected = {k for k in model.state_dict() if k != "lm_head.weight"}
    missing, unexpected = expected - set(ours), set(ours) - expected
    if missing or unexpected:
        raise ValueError(f"GPT-2 weights do not match the config: missing {sorted(missing)[:4]}, "
                         f"unexpected {sorted(unexpected)[:4]}")
    with torch.no_grad():
        for name, p in model.state_dict().items():
            if name != "lm_head.weight":
                p.copy_(ours[name])
    return model


def from_hf(model_or_dir: Any, dropout: float = 0.0, sdpa: bool = True) -> GPT:
    """Our GPT with the weights of a transformers GPT-2 model object, or of a local model folder."""
    hf_cfg, sd = read_folder(model_or_dir)
    cfg, ours = config_from_hf(hf_cfg, dropout=dropout, sdpa=sdpa), _ours_from_hf_state(sd)
    if not cfg.bias:
        ours, cfg = _without_zero_biases(ours, cfg)
    return _load_state(GPT(cfg), ours).eval()


def read_folder(model_or_dir: Any) -> tuple[dict, dict[str, Tensor]]:
    """(config dict, state dict by Hugging Face names) of a transformers model object or of a local model folder
    (config.json + model.safetensors or pytorch_model.bin): what every topic's `from_hf` starts from."""
    if isinstance(model_or_dir, nn.Module):
        return model_or_dir.config.to_dict(), model_or_dir.state_dict()
    path = Path(model_or_dir)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no config.json in '{path}'; give a folder saved by to_hf() or save_pretrained()")
    return json.loads((path / "config.json").read_text(encoding="utf-8")), read_weights(path)


def read_weights(path: Path) -> dict[str, Tensor]:
    """The state dict of a Hugging Face model folder (model.safetensors, else pytorch_model.bin), by HF names."""
    if (path / "model.safetensors").exists():
        from safetensors.torch import load_file

        return load_file(str(path / "model.safetensors"))
    if (path / "pytorch_model.bin").exists():
        return torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"no model.safetensors (or pytorch_model.bin) in '{path}'")


def local_folder(name_or_dir: str) -> Path:
    """A local model folder: the path itself, or the hub repo `name_or_dir` downloaded (where reachable)."""
    path = Path(name_or_dir)
    if path.exists():
        return path
    local = name_or_dir.startswith((".", "/", "~")) or name_or_dir.count("/") > 1 or "\\" in name_or_dir
    if local or path.parts[0] == "runs" or (path.parent != Path(".") and path.parent.is_dir()):  # a typo, not a hub repo
        raise FileNotFoundError(f"no folder at {name_or_dir}; give a run folder (runs/gpt/<name>) or a GPT-2 folder")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FileNotFoundError(f"'{name_or_dir}' is not a folder and huggingface_hub is not installed "
                                "to fetch it; `pip install huggingface_hub`, or give a local folder") from None
    try:  # the user asked for a hub model by name: the one download llmpath makes, and only when asked
        return Path(snapshot_download(name_or_dir, allow_patterns=["config.json", "model.safetensors", "vocab.json",
                                                                   "merges.txt"]))
    except Exception as e:
        reason = str(e).strip().splitlines()[0][:100] if str(e).strip() else type(e).__name__
        raise FileNotFoundError(f"'{name_or_dir}' is no folder here and could not be fetched from the Hugging Face "
                                f"hub ({reason}); give a run folder or a GPT-2 folder") from None


def from_pretrained(name_or_dir: str, dropout: float = 0.0, sdpa: bool = True) -> GPT:
    """`from_pretrained("gpt2")`: a local folder if one exists, else fetched from the Hugging Face hub."""
    return from_hf(local_folder(name_or_dir), dropout=dropout, sdpa=sdpa)


def to_hf(model: GPT, out_dir: str | Path, bos_token_id: int | None = None, eos_token_id: int | None = None) -> Path:
    """Write config.json + model.safetensors that `GPT2LMHeadModel.from_pretrained(out_dir)` loads."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = config_to_hf(model.cfg, bos_token_id, eos_token_id)
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    save_file({k: v.cpu() for k, v in _hf_state_from_ours(model).items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    return out
