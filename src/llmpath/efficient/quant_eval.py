"""How much quantization costs a trained model: size, validation loss and generation speed, ours vs peers.

    res = quant_table("runs/gpt/small")          # stage 5's GPT (`llmpath efficient quantize` adds the Llama)
    print(markdown_table(res["head"], res["rows"]))

Each row quantizes a fresh copy of the run's best checkpoint: fp32, int8 per channel, int4 with groups of
32 / 64 / 128 input columns, 2-bit with groups of 32 (where it breaks), then the peers on the same layers
(every linear layer but the tied output head): torchao's int8 weight-only and int4 group-32 weight-only
configs, and PyTorch's older `quantize_dynamic`, which quantizes the activations too (int8 x int8 matmuls,
one per-tensor weight scale). The val loss is the run's own (pretrain.py: the same 90/5/5 split, the first
eval_tokens + 1 val tokens, `lm_val_loss` over consecutive windows), so the fp32 row repeats the run's
best val loss. Generation: one sampled continuation per model (temperature 0.8, top-k 50, fixed seed) that
fills the context with the KV cache, timed in interleaved rounds (median); one torch thread.
A layer whose width a group does not divide (the Llama's SwiGLU w2 reads 393 values) is quantized per
output channel instead, and the row says so.

Bars the table checks (not timed, not asserted): int8 adds at most 0.005 to the val loss, int4 group 32 at most 0.02.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import statistics
import warnings
from pathlib import Path

import torch
from torch import nn

from llmpath.common import interleaved_times, markdown_table, set_threads
from llmpath.data import split_text
from llmpath.efficient.quant import QuantLinear, model_bytes, quantize, weight_error
from llmpath.generation import generate
from llmpath.gpt.data import encode_known, lm_text
from llmpath.gpt.finetune import lm_val_loss
from llmpath.runs import load_run

# (row name, bits, group); bits None = the fp32 model itself
SETTINGS = [("fp32", None, None), ("int8 per channel", 8, None), ("int4 group 32", 4, 32),
            ("int4 group 64", 4, 64), ("int4 group 128", 4, 128), ("2-bit group 32", 2, 32)]
BARS = {"int8 per channel": 0.005, "int4 group 32": 0.02}  # the largest val-loss increase we accept
SKIP = ("lm_head",)
HEAD = ["做法", "位数", "组长", "模型字节数", "缩小", "验证损失", "相对 fp32", "生成词元/秒", "速度相对 fp32", "备注"]
# the rows' names in the tables (the keys above stay the code's names)
LABELS = {"fp32": "fp32（原模型）", "int8 per channel": "int8，按通道", "int4 group 32": "int4，组长 32",
          "int4 group 64": "int4，组长 64", "int4 group 128": "int4，组长 128", "2-bit group 32": "2 位，组长 32",
          "torchao int8 weight-only": "torchao int8（仅权重）", "torchao int4 group 32": "torchao int4，组长 32",
          "torch quantize_dynamic int8": "torch quantize_dynamic int8"}


def _linears(model: nn.Module, group: int | None) -> tuple[list[str], list[str]]:
    """Names of the linear layers to quantize: (those the group divides, those it does not)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.rpartition(".")[2] not in SKIP]
    mods = dict(model.named_modules())
    bad = [n for n in names if group and mods[n].in_features % group]
    return [n for n in names if n not in bad], bad


def ours(model: nn.Module, bits: int, group: int | None) -> tuple[nn.Module, str]:
    """Our quantize() on a copy; layers the group does not divide get the same bits per output channel."""
    q = copy.deepcopy(model)
    _, bad = _linears(q, group)
    leaves = tuple(sorted({n.rpartition(".")[2] for n in bad}))
    quantize(q, bits, group, skip=SKIP + leaves)
    quantize(q, bits, None, skip=SKIP)  # only the nn.Linear layers still left: those of `bad`
    return q, _fallback_note(bad)


def _fallback_note(bad: list[str]) -> str:
    """'w2: per channel' for the layers (by their last name) that the group did not divide."""
    return f"{', '.join(sorted({n.rpartition('.')[2] for n in bad}))}：按通道" if bad else ""


@contextlib.contextmanager
def _quiet():
    """Silence torchao's import notes (optional .so kernels it cannot load on this machine) and deprecation warnings."""
    loggers = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def torchao_model(model: nn.Module, bits: int, group: int | None = None) -> tuple[nn.Module, str]:
    """torchao's weight-only quantization of the same layers: int8 per channel, or int4 with groups (per channel
    where the group does not divide). Raises ImportError when torchao is not installed."""
    with _quiet():
        from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, quantize_
        from torchao.quantization.granularity import PerAxis, PerGroup
    q = copy.deepcopy(model)
    good, bad = _linears(q, group)
    with _quiet():
        if bits == 8:
            quantize_(q, Int8WeightOnlyConfig(), filter_fn=lambda m, fqn: fqn in good)
        else:
            quantize_(q, IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group)),
                      filter_fn=lambda m, fqn: fqn in good)
            if bad:
                quantize_(q, IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerAxis(0)),
                          filter_fn=lambda m, fqn: fqn in bad)
    notes = [_fallback_note(bad)] if bad else []
    if bits == 4:  # what the subclass keeps: this one holds each int4 value in a whole int8 byte, plus zero points
        notes.append(f"存成 {type(q.get_submodule(good[0]).weight).__name__}")
    return q, "; ".join(notes)


def dynamic_model(model: nn.Module) -> nn.Module:
    """PyTorch's quantize_dynamic: int8 weights (one scale per tensor) and int8 activations quantized per call."""
    names = set(_linears(model, None)[0])
    with _quiet():
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), names, dtype=torch.qint8)


def stored_bytes(model: nn.Module) -> int:
    """model_bytes plus the int8 weights torch.ao's quantized layers keep outside parameters and buffers."""
    total = model_bytes(model)
    for m in model.modules():
        if hasattr(m, "_packed_params") and callable(getattr(m, "weight", None)):
            w, b = m.weight(), m.bias()
            total += w.numel() * w.element_size() + (b.numel() * b.element_size() if b is not None else 0)
    return total


def val_ids_of(cfg, tok):
    """The run's own validation tokens, as pretrain() computed them."""
    _, val_text, _ = split_text(lm_text(cfg.data))
    return encode_known(tok, val_text)[: cfg.eval_tokens + 1]


def tokens_per_s(models: dict[str, nn.Module], new_tokens: int, rounds: int, seed: int = 0) -> dict[str, float]:
    """Generation speed of each model (the KV cache on, one sampled continuation of a 1-token prompt),
    timed in interleaved rounds (A B C, A B C, ...) after one warm-up each; the median per model."""
    def run(m):
        return generate(m, [0], new_tokens, temperature=0.8, top_k=50, generator=torch.Generator().manual_seed(seed))
    times = interleaved_times({k: (lambda m=m: run(m)) for k, m in models.items()}, rounds, 1, warmup=1)
    return {k: new_tokens / statistics.median(t) for k, t in times.items()}


@torch.no_grad()
def quant_table(run: str | Path = "runs/gpt/small", rounds: int = 5, new_tokens: int = 0, seed: int = 0,
                peers: bool = True, settings: list[tuple] = SETTINGS) -> dict:
    """The table for one run folder: {"head", "rows", "markdown", "bars", "weight_error", "settings", ...}.

    new_tokens=0 fills the context (block_size - 1 new tokens), all of them with the KV cache.
    """
    model, tok, cfg = load_run(run)
    set_threads(cfg.threads)  # the run's own thread count (1 for the presets), as it was trained and timed
    block = cfg.model.block_size
    new_tokens = new_tokens or block - 1
    val_ids = val_ids_of(cfg, tok)
    variants: dict[str, tuple] = {}  # name -> (model or None, bits, group, note)
    for name, bits, group in settings:
        m, note = (model, "") if bits is None else ours(model, bits, group)
        variants[name] = (m, bits, group, note)
    if peers:
        for name, bits, group in [("torchao int8 weight-only", 8, None), ("torchao int4 group 32", 4, 32)]:
            try:
                m, note = torchao_model(model, bits, group)
                variants[name] = (m, bits, group, note)
            except ImportError:
                variants[name] = (None, bits, group, "未安装（pip install torchao）")
            except Exception as e:  # a torchao version whose API moved: say so in the row, keep the table
                variants[name] = (None, bits, group, f"失败：{type(e).__name__}: {str(e)[:80]}")
        try:
            variants["torch quantize_dynamic int8"] = (dynamic_model(model), 8, "按张量",
                                                       "激活也量化成 int8，权重按整个张量")
        except Exception as e:
            variants["torch quantize_dynamic int8"] = (None, 8, None, f"失败：{type(e).__name__}: {str(e)[:80]}")
    live = {k: v[0] for k, v in variants.items() if v[0] is not None}
    loss = {k: lm_val_loss(m, val_ids, block) for k, m in live.items()}
    speed = tokens_per_s(live, new_tokens, rounds, seed)
    size = {k: stored_bytes(m) for k, m in live.items()}
    base_loss, base_speed, base_size = loss["fp32"], speed["fp32"], size["fp32"]
    rows, bars = [], {}
    for k, (m, bits, group, note) in variants.items():
        if m is None:
            rows.append([LABELS[k], bits, group or "-", "-", "-", "-", "-", "-", "-", note])
            continue
        d = loss[k] - base_loss
        if k in BARS:
            bars[k] = {"delta": d, "bar": BARS[k], "ok": d <= BARS[k]}
            note = (note + "; " if note else "") + f"达标线 +{BARS[k]}：{'达到' if d <= BARS[k] else '未达到'}"
        rows.append([LABELS[k], bits or 32, group or ("-" if bits is None else "按通道"), f"{size[k]:,}",
                     f"{base_size / size[k]:.2f}x", f"{loss[k]:.4f}", f"{d:+.4f}", f"{speed[k]:,.0f}",
                     f"{speed[k] / base_speed:.2f}x", note])
    errors = {k: _error_summary(weight_error(model, m)) for k, (m, bits, _, _) in variants.items()
              if m is not None and any(isinstance(x, QuantLinear) for x in m.modules())}
    n_params = sum(p.numel() for p in model.parameters())
    return {"run": str(run), "model": f"{type(model).__name__} {cfg.model.n_layer}x{cfg.model.n_embd} "
                                      f"({n_params:,} parameters)",
            "settings": {"new_tokens": new_tokens, "rounds": rounds, "seed": seed, "threads": torch.get_num_threads(),
                         "val_tokens": len(val_ids) - 1, "block_size": block, "skip": list(SKIP)},
            "fp32_val_loss": base_loss, "head": HEAD, "rows": rows, "markdown": markdown_table(HEAD, rows),
            "bars": bars, "weight_error": errors}


def _error_summary(per_layer: dict[str, dict]) -> dict:
    """Over all quantized layers: the largest |w - w'|, the mean of the layers' means, and the outlier rows
    (of every layer together) with their share of all rows and of all the summed error."""
    v = list(per_layer.values())
    total = [x["sum"] for x in v]
    return {"max": max(x["max"] for x in v), "mean": statistics.mean(x["mean"] for x in v),
            "outlier_rows": sum(x["outlier_rows"] for x in v), "rows": sum(x["rows"] for x in v),
            "outlier_row_share": sum(x["outlier_rows"] for x in v) / sum(x["rows"] for x in v),
            "outlier_error_share": sum(t * x["outlier_error_share"] for t, x in zip(total, v)) / sum(total)}
