"""Run folders: one layout, one "already finished" rule and one loader for every topic.

    runs/<topic>/<name>/
        config.json     the resolved run config (sizes filled in), written when training starts
        metrics.jsonl   train-loss and evaluation rows (llmpath.train.fit)
        ckpt/last.pt    model, optimizer, RNG states, step; plus the topic, config and tokenizer
        ckpt/best.pt    the same at the best evaluation
        figures/        the run's PNGs
        results.json    what the run measured; its "config" key is the comparable config (below)

A compare, ablation or learning-curve run is a run of its own: each variant trains in its own folder
(`variant(cfg, "no-pos", **{"model.pos": "none"})` -> <name>-no-pos/), and the table that puts them
side by side is the results.json of one more folder (<name>-compare/, <name>-ablate/, <name>-curve/).

    run = start_run(cfg, "rnn", tokenizer=tok)     # seed, threads, device, folder
    fit(model, loss_fn, batches, cfg.train, run=run, evaluate=...)
    run.finish({"val_loss": ...})                  # results.json
    model, tok, cfg = load_run("runs/rnn/small-lstm")

Nothing finished is overwritten unasked: a folder that holds a finished run with the same options is
reused (`reuse`), one with other options or an interrupted run is refused with a one-line error unless
`--fresh` (start over) or `--train.resume` (continue) says what to do. One process writes a run folder
at a time: `start_run` holds a lock on <folder>/.lock (the operating system drops it when the process ends,
so a crash leaves no stale lock); a second writer gets one line naming the folder and the owner's pid.
"""

from __future__ import annotations

import atexit
import copy
import dataclasses
import importlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from llmpath.common import get_device, log, read_json, seed_everything, set_threads, setup_logging, write_json
from llmpath.config import ConfigError, apply_overrides, from_dict, leaves, save_config, to_dict


def run_path(cfg: Any, topic: str) -> Path:
    """<out>/<topic>/<name>: where the run of `cfg` lives (not created)."""
    return Path(cfg.out) / topic / (cfg.name or cfg.preset or "default")


def comparable_config(cfg: Any) -> dict:
    """The config as JSON data without the options declared `opt(..., result=False)` (names, paths,
    device, threads, progress bars, resume): two runs with equal dicts train the same model."""
    d = json.loads(json.dumps(to_dict(cfg)))
    for path, (_, f) in leaves(type(cfg)).items():
        if not f.metadata.get("result", True):
            *parents, last = path.split(".")
            node = d
            for p in parents:
                node = node[p]
            node.pop(last, None)
    return d


def finished(cfg: Any, topic: str) -> dict | None:
    """The results of a finished run of `cfg` (same comparable config, figures still there), else None.

    The one rule every topic uses to reuse earlier work instead of training again (`--fresh` retrains).
    """
    path = run_path(cfg, topic) / "results.json"
    if not path.exists():
        return None
    try:
        res = read_json(path)
    except (OSError, ValueError):
        return None
    if res.get("config") != comparable_config(cfg):
        return None
    if not all(Path(f).exists() for f in res.get("figures", [])):
        return None
    return res


def reuse(cfg: Any, topic: str) -> dict | None:
    """The results of a finished run of `cfg`, to use instead of training again (None with --fresh or --train.resume)."""
    if getattr(cfg, "fresh", False) or getattr(getattr(cfg, "train", None), "resume", False):
        return None
    done = finished(cfg, topic)
    if done is not None:
        log.info(f"{run_path(cfg, topic)} already holds this run, finished; using its results (--fresh trains again)")
    return done


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts: {'train': {'lr': 1}} vs ... -> ['train.lr']"""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def check_folder(cfg: Any, path: Path, key: dict) -> None:
    """Refuse, before any work, a folder that holds other work, unless --fresh or --train.resume asks for it."""
    fresh = getattr(cfg, "fresh", False)
    resume = getattr(getattr(cfg, "train", None), "resume", False)
    last = path / "ckpt" / "last.pt"
    if resume:
        if not last.exists():
            raise ConfigError(f"--train.resume but {path} has no ckpt/last.pt to continue from; "
                              f"train without --train.resume")
        return
    if fresh:
        return
    results = path / "results.json"
    if results.exists():
        try:
            old = read_json(results).get("config", {})
        except (OSError, ValueError, AttributeError):
            old = {}
        differ = _differences(old, key)
        if not differ:
            return  # the same run, reused unless a figure it lists went missing: training it again loses nothing
        raise ConfigError(f"{path} already holds a finished run ({', '.join(differ[:4])} differ); choose another "
                          f"--name, or --fresh to replace it")
    if last.exists():
        raise ConfigError(f"{path} holds an interrupted run; continue it with --train.resume, "
                          f"or --fresh to start over")


_LOCKS: dict[Path, Any] = {}  # run folders this process holds: it may open the same one again


@atexit.register
def _release_all() -> None:
    for path in list(_LOCKS):
        unlock_folder(path)


def lock_folder(path: Path) -> None:
    """Take <path>/.lock for this process, or raise ConfigError naming the process that holds it."""
    import fcntl

    path = path.resolve()
    if path in _LOCKS or int(os.environ.get("RANK", "0")) != 0:  # under torchrun rank 0 writes for all
        return
    f = open(path / ".lock", "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        owner = f.read().strip() or "unknown"
        f.close()
        raise ConfigError(f"{path} is being written by another llmpath process (pid {owner}); wait for it to "
                          f"finish, or choose another --name") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    _LOCKS[path] = f


def unlock_folder(path: Path) -> None:
    f = _LOCKS.pop(Path(path).resolve(), None)
    if f is not None:
        f.close()  # closing the file drops the flock


def variant(cfg: Any, tag: str, **overrides: Any) -> Any:
    """A deep copy of cfg with `overrides` (dotted keys or unique leaf names) in the run folder <name>-<tag>.

    variant(cfg, "1-head", n_head=1) -> the same run with one head, in runs/<topic>/<name>-1-head/
    """
    c = copy.deepcopy(cfg)
    apply_overrides(c, {k.replace("__", "."): v for k, v in overrides.items()})
    base = cfg.name or cfg.preset or "default"
    c.name = f"{base}-{tag}" if tag else base
    return c


@dataclass
class Run:
    """A run folder opened for training. fit(..., run=run) checkpoints into it; finish() writes results.json."""

    topic: str
    path: Path
    cfg: Any
    device: torch.device
    key: dict = field(default_factory=dict)  # the comparable config as asked, before sizes are resolved
    tokenizer: Any = None  # its state_dict() goes into every checkpoint: load_run needs nothing else
    model_class: str = ""  # "llmpath.module:Class" when the run's model is not its topic's (a reward model)

    @property
    def figures(self) -> Path:
        return self.path / "figures"

    def save_config(self) -> None:
        save_config(self.cfg, self.path / "config.json")

    def meta(self) -> dict:
        """What every checkpoint of this run records besides weights and optimizer state."""
        tok = self.tokenizer.state_dict() if self.tokenizer is not None else None
        meta = {"topic": self.topic, "config": to_dict(self.cfg), "tokenizer": tok}
        if self.model_class:  # load_run builds this model from this config class, not the topic's
            config_class = f"{type(self.cfg).__module__}:{type(self.cfg).__qualname__}"
            meta["classes"] = {"model": self.model_class, "config": config_class}
        return meta

    def finish(self, results: dict) -> dict:
        """Write results.json (with the comparable config, so `finished` recognises it) and config.json."""
        results = {**results, "config": self.key}
        if "figures" in results:
            results["figures"] = [str(p) for p in results["figures"]]
        self.save_config()
        write_json(self.path / "results.json", results)
        unlock_folder(self.path)
        return results


def start_run(cfg: Any, topic: str, tokenizer: Any = None, key: dict | None = None, model_class: str = "") -> Run:
    """Logging, device, the folder <out>/<topic>/<name>/figures (checked and locked), seed and threads.

    `key` is the comparable config of the options as asked (default: cfg now); pass it when the
    topic has already filled in sizes, so that the same request is recognised next time. `model_class`
    ("llmpath.chat.reward:RewardModel") names the model when it is not the topic's; the checkpoints record it
    with cfg's class, and load_run builds that model from that config.
    """
    setup_logging()
    device = get_device(cfg.device)
    key = key if key is not None else comparable_config(cfg)
    path = run_path(cfg, topic)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path} is a file, not a run folder; choose another --name or --out")
    check_folder(cfg, path, key)
    path = open_folder(cfg, topic)
    lock_folder(path)
    check_folder(cfg, path, key)  # again, now that no other process can change the folder
    if getattr(cfg, "fresh", False) and not getattr(getattr(cfg, "train", None), "resume", False):
        for old in (path / "results.json", path / "ckpt" / "best.pt", path / "ckpt" / "last.pt"):
            old.unlink(missing_ok=True)  # asked for: nothing of the replaced run can mix with the new one
    seed_everything(cfg.seed)
    set_threads(cfg.threads)
    return Run(topic, path, cfg, device, key, tokenizer, model_class)


def open_folder(cfg: Any, topic: str) -> Path:
    """<out>/<topic>/<name>/figures created, for a run that trains nothing itself (a compare table)."""
    path = run_path(cfg, topic)
    try:
        (path / "figures").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create run folder {path}: {e.strerror or e}; choose another with --out") from None
    return path


# ------------------------------------------------------------------------------ loading

class Loaded(NamedTuple):
    model: torch.nn.Module
    tokenizer: Any
    cfg: Any


def _attr(target: str) -> Any:
    mod, name = target.split(":")
    return getattr(importlib.import_module(mod), name)


def load_run(path: str | Path, device: torch.device | str = "cpu", which: str = "best",
             dropout: float | None = None, hint: str = "", topic: str = "") -> Loaded:
    """(model in eval mode, tokenizer or vocabulary, config) of a run folder, all read from its checkpoint.

    The checkpoint names its topic; the topic registry says which config class, model class and
    tokenizer reader that topic uses. `dropout` replaces the run's own (e.g. 0 to finetune without it);
    `hint` is the command that would train the missing run; `topic`, when given, is the only topic accepted.
    """
    from llmpath.topics import TOPICS
    from llmpath.train import load_checkpoint

    path = Path(path)
    hint = hint or (f"llmpath {path.parent.name} train" if path.parent.name in TOPICS else "llmpath <topic> train")
    if not path.is_dir():
        raise ConfigError(f"no trained model in {path}; train one first: {hint}")
    ckpt_path = path / "ckpt" / f"{which}.pt"
    if not ckpt_path.exists():
        raise ConfigError(f"no trained model in {path} (no ckpt/{which}.pt); train one first: {hint}, "
                          f"or continue an interrupted one with --train.resume")
    ckpt = load_checkpoint(ckpt_path, map_location=device)
    written_by = ckpt.get("topic")
    if "model" not in ckpt or "config" not in ckpt:
        raise ConfigError(f"{ckpt_path} is not an llmpath run checkpoint (no model weights and config in it)")
    if written_by not in TOPICS:
        raise ConfigError(f"{ckpt_path} does not say which topic's model it holds (an older llmpath wrote it?); "
                          f"train it again")
    if not TOPICS[written_by].model:
        raise ConfigError(f"{path} is a `llmpath {written_by}` run, whose models are read by that topic's own "
                          f"commands, not by load_run")
    if topic and written_by != topic:
        raise ConfigError(f"{path} holds a {written_by} model, written by `llmpath {written_by} train`; "
                          f"use it with llmpath {written_by} (this command needs a {topic} run)")
    t = TOPICS[written_by]
    classes = {"config": t.config, "model": t.model, **(ckpt.get("classes") or {})}
    if not all(isinstance(c, str) and c.startswith("llmpath.") and ":" in c for c in classes.values()):
        raise ConfigError(f"{ckpt_path} names a model or config class outside llmpath; it is not an llmpath run")
    cfg = from_dict(_attr(classes["config"]), ckpt["config"])
    if dropout is not None and hasattr(cfg.model, "dropout"):
        cfg.model.dropout = dropout
    model = _attr(classes["model"])(cfg.model)
    model.load_state_dict(ckpt["model"])
    tok = _attr(t.tokenizer)(ckpt["tokenizer"]) if t.tokenizer and ckpt.get("tokenizer") is not None else None
    log.debug(f"loaded {written_by} run {path} ({which}.pt, step {ckpt.get('step')})")
    return Loaded(model.to(device).eval(), tok, cfg)


def sub_config(cfg: Any, cls: type) -> Any:
    """The fields of `cfg` that `cls` (a parent config class) has, as a `cls`: a SampleRun's training part."""
    return cls(**{f.name: copy.deepcopy(getattr(cfg, f.name)) for f in dataclasses.fields(cls)})
