"""Dataclass configs, presets and `--key=value` command-line overrides.

Every topic describes its run as a dataclass (subclass of `RunConfig`) that nests a model config
and a `TrainConfig`. The command line overrides any field:

    llmpath rnn train --preset=tiny --train.lr=3e-4 --model.cell lstm --cell=gru

A key may be the full dotted path (`train.lr`) or a unique leaf name (`lr`); dashes and
underscores are the same (`--block-size`). Presets are plain dicts of dotted keys, applied before
the other overrides. Unknown keys, presets and bad values raise `ConfigError` with one line that
lists the valid choices.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


class ConfigError(ValueError):
    """A bad option or preset; the message is one line a learner can act on."""


def opt(default: Any, help: str = "", result: bool = True, min: float | None = None, max: float | None = None,
        above: float | None = None, below: float | None = None) -> Any:
    """A dataclass field with a help string and its range: `lr: float = opt(3e-4, "peak learning rate", above=0)`.

    min/max are inclusive bounds, above/below exclusive ones; `check_config` tests them before any work.
    result=False marks an option that changes where or how fast a run goes, never what it learns
    (a name, a device, a progress bar): two runs that differ only in such options are the same run.
    """
    meta = {"help": help, "result": result,
            "bounds": {k: v for k, v in (("min", min), ("max", max), ("above", above), ("below", below)) if v is not None}}
    if isinstance(default, (list, dict, set)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: _copy(default), metadata=meta)
    return field(default=default, metadata=meta)


def _copy(x: Any) -> Any:
    return dataclasses.replace(x) if dataclasses.is_dataclass(x) else type(x)(x)


def sub(cls: type, help: str = "") -> Any:
    """A nested config field: `train: TrainConfig = sub(TrainConfig)`."""
    return field(default_factory=cls, metadata={"help": help})


@dataclass
class TrainConfig:
    """Options of the shared fit loop (llmpath.train.fit)."""

    max_steps: int = opt(1000, "optimizer steps to train for", min=1)
    epochs: int = opt(0, "train for this many passes over the data instead of max_steps (0 = use max_steps)", min=0)
    batch_size: int = opt(32, "samples per micro-batch", min=1)
    grad_accum: int = opt(1, "micro-batches per optimizer step (gradient accumulation)", min=1)
    lr: float = opt(1e-3, "peak learning rate", above=0)
    min_lr_ratio: float = opt(0.1, "final lr as a fraction of the peak (cosine/linear schedules)", min=0, max=1)
    schedule: Literal["cosine", "linear", "constant", "noam"] = opt("cosine", "lr schedule after warmup")
    warmup_steps: int = opt(50, "linear warmup steps", min=0)
    weight_decay: float = opt(0.01, "AdamW decoupled weight decay on matrices", min=0)
    decay_embeddings: bool = opt(False, "also decay embedding tables")
    beta1: float = opt(0.9, "AdamW beta1", min=0, below=1)
    beta2: float = opt(0.99, "AdamW beta2", min=0, below=1)
    grad_clip: float = opt(1.0, "clip the global gradient norm to this (0 = off)", min=0)
    eval_interval: int = opt(200, "evaluate every N steps (and at the end; 0 = only at the end)", min=0)
    log_interval: int = opt(10, "write a train-loss line to metrics.jsonl every N steps", min=1)
    ckpt_interval: int = opt(0, "save ckpt/last.pt every N steps (0 = at evals and the end)", min=0)
    resume: bool = opt(False, "continue from the run folder's ckpt/last.pt", result=False)
    stop_at: int = opt(0, "stop early after this step, keeping the schedule of max_steps (0 = off)", min=0)
    compile: bool = opt(False, "torch.compile the model")
    # no fp16: without a GradScaler its small gradients underflow to zero; bf16 has fp32's range
    amp: Literal["auto", "off", "bf16"] = opt("auto", "mixed precision on GPU (auto: bf16 on CUDA, off on CPU)")
    progress: bool = opt(True, "show a tqdm progress bar", result=False)


@dataclass
class RunConfig:
    """Fields every topic's run has; topics subclass it and add `model`, `train`, `data`, ..."""

    name: str = opt("", "run name: outputs go to <out>/<topic>/<name> (default: the preset)", result=False)
    preset: str = opt("", "preset to start from (see `llmpath list`)", result=False)
    out: str = opt("runs", "root folder for run outputs", result=False)
    device: str = opt("auto", "auto | cpu | cuda | cuda:N | mps", result=False)
    seed: int = opt(0, "random seed for python, numpy and torch", min=0, max=2**32 - 1)
    threads: int = opt(0, "torch CPU threads (0 = leave torch's default)", result=False, min=0)
    fresh: bool = opt(False, "train again where a run folder already holds a run (its results are replaced)",
                      result=False)


# ------------------------------------------------------------------ dict round trip

def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_dict(cfg), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def from_dict(cls: type, d: dict) -> Any:
    """Rebuild a (nested) config dataclass from `to_dict` output; unknown keys are an error."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for k, v in d.items():
        if k not in hints:
            raise ConfigError(f"config has unknown key '{k}' for {cls.__name__}")
        kwargs[k] = from_dict(hints[k], v) if dataclasses.is_dataclass(hints[k]) else _from_json(hints[k], v)
    return cls(**kwargs)


def _from_json(tp: Any, v: Any) -> Any:
    return tuple(v) if typing.get_origin(tp) is tuple and isinstance(v, list) else v


# --------------------------------------------------------------------- leaf fields

def leaves(cls: type, prefix: str = "") -> dict[str, tuple[Any, dataclasses.Field]]:
    """Dotted path -> (type, field) of every non-dataclass field, nested ones included."""
    out = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.update(leaves(tp, prefix + f.name + "."))
        else:
            out[prefix + f.name] = (tp, f)
    return out


def _resolve(key: str, paths: dict) -> str:
    key = key.replace("-", "_")
    if key in paths:
        return key
    matches = [p for p in paths if p.split(".")[-1] == key or p.endswith("." + key)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ConfigError(f"option '--{key}' is ambiguous; use one of: {', '.join('--' + m for m in matches)}")
    close = difflib.get_close_matches(key, list(paths) + [p.split(".")[-1] for p in paths], n=1)
    hint = f"did you mean --{close[0]}? " if close else ""
    raise ConfigError(f"unknown option '--{key}'; {hint}valid options: {', '.join('--' + p for p in paths)}")


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "|".join(map(str, typing.get_args(tp)))
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def parse_value(tp: Any, raw: Any, key: str = "value") -> Any:
    """Coerce a command-line string to a field's type. parse_value(int, '3') -> 3"""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if not isinstance(raw, str):
        return raw
    if origin is Literal:
        for a in args:
            if str(a) == raw:
                return a
        raise ConfigError(f"invalid value '{raw}' for --{key}; choose one of: {', '.join(map(str, args))}")
    if origin in (typing.Union, types.UnionType):
        if raw.lower() in ("none", "null") and type(None) in args:
            return None
        return parse_value(next(a for a in args if a is not type(None)), raw, key)
    if origin in (tuple, list):
        item = args[0] if args else str
        vals = tuple(parse_value(item, p.strip(), key) for p in raw.split(",") if p.strip())
        return vals if origin is tuple else list(vals)
    if tp is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"--{key} expects true or false, got '{raw}'")
    if tp in (int, float):
        try:
            v = float(raw) if tp is float else int(float(raw)) if _is_int_like(raw) else int(raw)
        except ValueError:
            raise ConfigError(f"--{key} expects {'a number' if tp is float else 'an integer'}, got '{raw}'") from None
        return v
    return raw


def _is_int_like(raw: str) -> bool:
    """Accept '1e3' and '1000.0' for ints, not '1.5'."""
    try:
        return float(raw).is_integer()
    except ValueError:
        return False


def set_path(cfg: Any, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    obj = cfg
    for p in parents:
        obj = getattr(obj, p)
    setattr(obj, last, value)


_RULES = (("min", ">=", lambda v, b: v >= b), ("max", "<=", lambda v, b: v <= b),
          ("above", ">", lambda v, b: v > b), ("below", "<", lambda v, b: v < b))


def _fmt(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def check_config(cfg: Any) -> Any:
    """Every option within its declared range, then each nested config's own `check()` (e.g. heads that
    divide the width); the first problem is a ConfigError of one line. Returns cfg."""
    for path, (_, f) in leaves(type(cfg)).items():
        value = cfg
        for p in path.split("."):
            value = getattr(value, p)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"--{path}={value} is not a finite number")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        for name, op, ok in _RULES:
            bound = f.metadata.get("bounds", {}).get(name)
            if bound is not None and not ok(value, bound):
                raise ConfigError(f"--{path}={_fmt(value)} is out of range: it must be {op} {_fmt(bound)}")
    _check_nested(cfg)
    return cfg


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2] (sorted, unique); anything else is a ConfigError saying what to type."""
    try:
        seeds = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        seeds = []
    if not seeds or seeds[0] < 0:
        raise ConfigError(f"--seeds expects non-negative integers separated by commas, e.g. 0,1,2; got '{text}'")
    return seeds


def check_heads(n_head: int, n_embd: int) -> None:
    """Multi-head attention splits the width evenly: each head gets n_embd / n_head dimensions."""
    if n_embd % n_head:
        raise ConfigError(f"--n_head={n_head} does not divide --n_embd={n_embd}; each head gets n_embd / n_head "
                          f"dimensions")


def _check_nested(obj: Any) -> None:
    for f in dataclasses.fields(obj):
        child = getattr(obj, f.name)
        if dataclasses.is_dataclass(child):
            _check_nested(child)
    if hasattr(obj, "check"):
        obj.check()


def apply_overrides(cfg: Any, overrides: dict[str, Any]) -> Any:
    """Set dotted keys (or unique leaf names) on a config, type-checked. Returns cfg."""
    paths = leaves(type(cfg))
    for key, raw in overrides.items():
        path = _resolve(key, paths)
        set_path(cfg, path, parse_value(paths[path][0], raw, path))
    return cfg


# --------------------------------------------------------------------- command line

_BOOL_WORDS = {"1", "0", "true", "false", "yes", "no", "on", "off"}


def split_argv(argv: list[str], is_flag=lambda key: False) -> tuple[dict[str, str], list[str]]:
    """['--a=1', '--b', '2', '--flag', 'x'] -> ({'a': '1', 'b': '2', 'flag': 'true'}, ['x'])

    `--key value` takes the next token as the value unless `is_flag(key)` says the key is a
    boolean and the token is not a boolean word (then it stays positional).
    """
    opts: dict[str, str] = {}
    positional: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok.startswith("--") and len(tok) > 2:
            body = tok[2:]
            if "=" in body:
                k, v = body.split("=", 1)
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--") and (
                    not is_flag(body.replace("-", "_")) or argv[i + 1].lower() in _BOOL_WORDS):
                k, v = body, argv[i + 1]
                i += 1
            elif body.startswith("no-") or body.startswith("no_"):
                k, v = body[3:], "false"
            else:
                k, v = body, "true"
            opts[k.replace("-", "_")] = v
        else:
            positional.append(tok)
        i += 1
    return opts, positional


def build_config(cls: type, argv: list[str], presets: dict[str, dict] | None = None,
                 positional: tuple[str, ...] = (), default_preset: str = "small") -> Any:
    """Config from the command line: defaults <- preset <- overrides <- positional args."""
    presets = presets or {}
    paths = leaves(cls)

    def is_flag(key: str) -> bool:
        try:
            return paths[_resolve(key, paths)][0] is bool
        except ConfigError:
            return False

    opts, pos = split_argv(argv, is_flag)
    preset = opts.pop("preset", default_preset if default_preset in presets else "")
    cfg = cls()
    if preset:
        if preset not in presets:
            raise ConfigError(f"unknown preset '{preset}'; choose one of: {', '.join(presets) or '(none)'}")
        apply_overrides(cfg, presets[preset])
        cfg.preset = preset
    if len(pos) > len(positional):
        extra = pos[len(positional)]
        raise ConfigError(f"unexpected argument '{extra}'" + (f"; options start with --" if not positional else
                          f"; this command takes {', '.join(positional)}"))
    opts.update(dict(zip(positional, pos)))
    apply_overrides(cfg, opts)
    if not getattr(cfg, "name", "x"):
        cfg.name = cfg.preset or "default"
    return check_config(cfg)


def help_text(cls: type, presets: dict[str, dict] | None = None) -> str:
    """One line per option: name, type, default and help."""
    lines = []
    defaults = cls()
    for path, (tp, f) in leaves(cls).items():
        obj = defaults
        for p in path.split("."):
            obj = getattr(obj, p)
        lines.append(f"  --{path}={obj!s:<10} ({_type_name(tp)}) {f.metadata.get('help', '')}")
    if presets:
        lines.append("")
        lines.append("presets: " + ", ".join(presets))
    return "\n".join(lines)


@dataclass(frozen=True)
class Command:
    """A topic sub-command: `fn(cfg)` run with a config built from `config` + presets + argv.

    `presets`: this command's own presets (same names as the topic's, more keys: e.g. finetuning options
    that the pretraining config does not have); None = the topic's PRESETS."""

    fn: Any
    config: type
    help: str
    positional: tuple[str, ...] = ()
    examples: tuple[str, ...] = ()
    presets: dict | None = None
