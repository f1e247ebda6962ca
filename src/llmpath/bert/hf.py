"""Hugging Face interop: our BERT <-> `transformers` BERT weights, as safetensors on disk.

    model = from_hf(hf_model)            # BertForPreTraining -> BERTPretraining, BertForSequenceClassification
                                         # -> BERTClassifier, BertModel -> BERT
    model = from_hf("path/to/bert-dir")  # a folder with config.json + model.safetensors
    to_hf(model, "out/dir")              # BertForPreTraining (or ...SequenceClassification).from_pretrained reads it

This file is the only place that knows Hugging Face's names. Ours follow the rest of llmpath (n_embd,
self_attn.q, norm1, ff.fc1, ...); theirs follow the original TensorFlow code (hidden_size,
attention.self.query, attention.output.LayerNorm, intermediate.dense, ...). The layers are the same, one
tensor each, so the mapping is a rename: `_NAMES` below. Writing and reading a folder needs only
safetensors; `config_to_hf` (a transformers.BertConfig) needs transformers.

Hugging Face ties `cls.predictions.decoder.weight` to the word embeddings and `cls.predictions.decoder.bias`
to `cls.predictions.bias`; its state_dict lists both names of each pair. Ours ties `mlm.decoder.weight`
to `bert.tok.weight` the same way.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from llmpath.bert.model import BERT, BERTClassifier, BERTConfig, BERTPretraining
from llmpath.gpt.hf import read_folder  # the same files as any Hugging Face model folder

# (ours, Hugging Face) module paths; ".weight" / ".bias" follow, {i} is the layer number
_NAMES = [
    ("bert.tok", "bert.embeddings.word_embeddings"),
    ("bert.seg", "bert.embeddings.token_type_embeddings"),
    ("bert.pos", "bert.embeddings.position_embeddings"),
    ("bert.norm", "bert.embeddings.LayerNorm"),
    ("bert.layers.{i}.self_attn.q", "bert.encoder.layer.{i}.attention.self.query"),
    ("bert.layers.{i}.self_attn.k", "bert.encoder.layer.{i}.attention.self.key"),
    ("bert.layers.{i}.self_attn.v", "bert.encoder.layer.{i}.attention.self.value"),
    ("bert.layers.{i}.self_attn.proj", "bert.encoder.layer.{i}.attention.output.dense"),
    ("bert.layers.{i}.norm1", "bert.encoder.layer.{i}.attention.output.LayerNorm"),
    ("bert.layers.{i}.ff.fc1", "bert.encoder.layer.{i}.intermediate.dense"),
    ("bert.layers.{i}.ff.fc2", "bert.encoder.layer.{i}.output.dense"),
    ("bert.layers.{i}.norm2", "bert.encoder.layer.{i}.output.LayerNorm"),
    ("bert.pool", "bert.pooler.dense"),
    ("mlm.dense", "cls.predictions.transform.dense"),
    ("mlm.norm", "cls.predictions.transform.LayerNorm"),
    ("mlm.decoder", "cls.predictions.decoder"),
    ("nsp", "cls.seq_relationship"),
    ("head", "classifier"),
]
_TO_HF = dict(_NAMES)
_FROM_HF = {theirs: ours for ours, theirs in _NAMES}
_HF_BIAS = "cls.predictions.bias"  # the MLM output bias: ours is mlm.decoder.bias
# second names of tied tensors: written by state_dict(), left out of files (transformers re-ties them on load)
_HF_TIED = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")
# buffers older checkpoints carry; they hold no learned values
_HF_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
_LAYER = re.compile(r"\.(\d+)\.")


def _rename(name: str, table: dict[str, str]) -> str | None:
    """'bert.layers.3.norm1.weight' -> 'bert.encoder.layer.3.attention.output.LayerNorm.weight' (None if unknown)."""
    module, param = name.rsplit(".", 1)
    m = _LAYER.search(module)
    key = _LAYER.sub(".{i}.", module, count=1) if m else module
    if key not in table:
        return None
    return table[key].replace("{i}", m.group(1)) + "." + param if m else table[key] + "." + param


# -------------------------------------------------------------------------------- configs

def _config_dict(cfg: BERTConfig, n_classes: int = 0, classifier_dropout: float | None = None) -> dict[str, Any]:
    """config.json of a BERT with our shapes: what transformers.BertConfig reads as the same architecture."""
    d = {"model_type": "bert",
         "architectures": ["BertForSequenceClassification" if n_classes else "BertForPreTraining"],
         "vocab_size": cfg.vocab_size, "hidden_size": cfg.n_embd, "num_hidden_layers": cfg.n_layer,
         "num_attention_heads": cfg.n_head, "intermediate_size": cfg.n_ff, "hidden_act": "gelu",
         "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.dropout,
         "max_position_embeddings": cfg.max_len, "type_vocab_size": cfg.type_vocab_size,
         "initializer_range": 0.02, "layer_norm_eps": cfg.layer_norm_eps, "pad_token_id": cfg.pad_id,
         "position_embedding_type": "absolute", "tie_word_embeddings": True}
    if n_classes:
        d["id2label"] = {str(i): f"LABEL_{i}" for i in range(n_classes)}
        d["label2id"] = {f"LABEL_{i}": i for i in range(n_classes)}
        d["classifier_dropout"] = classifier_dropout
    return d


def config_to_hf(cfg: BERTConfig, n_classes: int = 0, classifier_dropout: float | None = None) -> Any:
    """A transformers.BertConfig of the same architecture (n_classes > 0: for BertForSequenceClassification)."""
    import transformers

    d = _config_dict(cfg, n_classes, classifier_dropout)
    d.pop("model_type")
    if n_classes:
        d["id2label"] = {int(k): v for k, v in d["id2label"].items()}
    return transformers.BertConfig(**d)


def config_from_hf(hf_cfg: Any, dropout: float | None = None, sdpa: bool = True) -> BERTConfig:
    """Our BERTConfig from a transformers.BertConfig or a config.json dict; refuses variants our layers do not compute.

    dropout: None keeps the config's hidden_dropout_prob.
    """
    hf = hf_cfg if isinstance(hf_cfg, dict) else hf_cfg.to_dict()
    if hf.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"this BERT uses activation '{hf['hidden_act']}'; ours is the exact (erf) GELU, 'gelu'")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"this BERT uses position_embedding_type='{hf['position_embedding_type']}'; "
                         "ours has learned absolute positions only")
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise ValueError("this BERT is configured as a decoder (is_decoder / add_cross_attention); ours is an encoder")
    if hf.get("tie_word_embeddings") is False:
        raise ValueError("this BERT does not tie its MLM decoder to the word embeddings; ours always does")
    return BERTConfig(vocab_size=hf["vocab_size"], max_len=hf["max_position_embeddings"],
                      type_vocab_size=hf.get("type_vocab_size", 2), n_layer=hf["num_hidden_layers"],
                      n_head=hf["num_attention_heads"], n_embd=hf["hidden_size"], n_ff=hf["intermediate_size"],
                      dropout=float(hf.get("hidden_dropout_prob", 0.1) if dropout is None else dropout),
                      layer_norm_eps=hf.get("layer_norm_eps", 1e-12), sdpa=sdpa,
                      pad_id=hf.get("pad_token_id") or 0)


# -------------------------------------------------------------------------------- weights

def to_hf_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Our state dict (BERTPretraining, BERTClassifier or BERT) under Hugging Face's names, tied names included,
    so that `hf_model.load_state_dict(to_hf_state_dict(model))` fills every tensor."""
    bare = isinstance(model, BERT)  # BertModel's names have no "bert." prefix
    out = {}
    for name, t in model.state_dict().items():
        theirs = _rename("bert." + name if bare else name, _TO_HF)
        if theirs is None:
            raise ValueError(f"no Hugging Face name for '{name}'")
        if theirs == "cls.predictions.decoder.bias":
            out[_HF_BIAS] = t
        out[theirs.removeprefix("bert.") if bare else theirs] = t
    return out


def from_hf_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """A Hugging Face BERT state dict -> our names (with "bert." for BertForPreTraining / ...SequenceClassification,
    without for BertModel). Tied second names map onto ours; a tensor we have no place for raises ValueError."""
    bare = not any(k.startswith("bert.") for k in sd)
    out = {}
    for name, t in sd.items():
        full = "bert." + name if bare else name
        if full.endswith(_HF_BUFFERS):
            continue
        ours = "mlm.decoder.bias" if full == _HF_BIAS else _rename(full, _FROM_HF)
        if ours is None:
            raise ValueError(f"'{name}' has no place in our BERT (a head or layer type it does not have?)")
        out[ours.removeprefix("bert.") if bare else ours] = t
    return out


def _new_model(sd: dict[str, Tensor], cfg: BERTConfig, classifier_dropout: float | None) -> nn.Module:
    """The model whose parameters the (our-named) state dict holds."""
    if "head.weight" in sd:
        return BERTClassifier(BERT(cfg), sd["head.weight"].shape[0],
                              dropout=cfg.dropout if classifier_dropout is None else classifier_dropout)
    if "mlm.dense.weight" in sd and "nsp.weight" in sd:
        return BERTPretraining(cfg)
    if "pool.weight" in sd:
        return BERT(cfg)
    raise ValueError("these weights are neither BertForPreTraining, BertForSequenceClassification nor BertModel "
                     "(with pooler); those are the ones our BERT models mirror")


def _load(model: nn.Module, sd: dict[str, Tensor]) -> nn.Module:
    """Copy every tensor; a missing one (other than the tied decoder weight) or a surplus one raises."""
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if k != "mlm.decoder.weight"]  # the same Parameter as bert.tok.weight
    if missing or unexpected:
        raise ValueError(f"the BERT weights do not match the config: missing {sorted(missing)[:4]}, "
                         f"unexpected {sorted(unexpected)[:4]}")
    return model


def from_hf(model_or_dir: Any, dropout: float | None = None, sdpa: bool = True) -> nn.Module:
    """Our model with the weights of a transformers BERT object, or of a folder (config.json + safetensors).

    BertForPreTraining -> BERTPretraining, BertForSequenceClassification -> BERTClassifier, BertModel -> BERT;
    in eval mode. dropout: None keeps the config's.
    """
    hf_cfg, sd = read_folder(model_or_dir)
    cfg = config_from_hf(hf_cfg, dropout=dropout, sdpa=sdpa)
    ours = from_hf_state_dict(sd)
    clf_drop = hf_cfg.get("classifier_dropout") if dropout is None else dropout
    return _load(_new_model(ours, cfg, clf_drop), ours).eval()


def to_hf(model: nn.Module, out_dir: str | Path) -> Path:
    """Write config.json + model.safetensors that BertForPreTraining.from_pretrained(out_dir) loads
    (BertForSequenceClassification for a BERTClassifier, BertModel for a bare BERT)."""
    from safetensors.torch import save_file

    if not isinstance(model, (BERTPretraining, BERTClassifier, BERT)):
        raise TypeError(f"to_hf takes a BERTPretraining, BERTClassifier or BERT, not {type(model).__name__}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clf = isinstance(model, BERTClassifier)
    cfg = _config_dict(model.cfg, model.head.out_features if clf else 0, model.drop.p if clf else None)
    if isinstance(model, BERT):
        cfg["architectures"] = ["BertModel"]
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    # one copy of each tied tensor, contiguous and unshared (as safetensors wants); transformers re-ties on load
    sd = {k: t.detach().cpu().contiguous().clone() for k, t in to_hf_state_dict(model).items() if k not in _HF_TIED}
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out
