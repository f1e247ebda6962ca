"""Device selection, seeding, threads, logging, JSON files and Markdown tables: shared by every topic."""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from llmpath.config import ConfigError

log = logging.getLogger("llmpath")


def get_device(name: str = "auto") -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an asked-for device that is absent is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device={name} but this torch sees no CUDA GPU (torch {torch.__version__}); use --device=cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("--device=mps but MPS is not available here; use --device=cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device '{name}'; choose one of: auto, cpu, cuda, cuda:N, mps") from None


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_threads(n: int) -> None:
    if n > 0:
        torch.set_num_threads(n)


def map_processes(fn: Callable[[Any], Any], items: list, workers: int = 1) -> list:
    """[fn(x) for x in items], with workers > 1 in that many spawned processes (fn must be a module-level
    function). For single-threaded training runs: two on two cores take about the time of one."""
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(min(workers, len(items)), mp_context=mp.get_context("spawn")) as ex:
        return list(ex.map(fn, items))


def map_after(fn: Callable[[Any], Any], items: dict[str, Any], after: dict[str, tuple[str, ...]],
              workers: int = 1) -> dict[str, Any]:
    """{name: fn(item)} where each item starts once the items named in after[name] have finished, in the order
    given (put long ones first); workers > 1: that many spawned processes, a worker taking the next ready item as
    soon as it is free. map_after(train, {"rm": a, "ppo": b}, {"ppo": ("rm",)}, workers=2)"""
    if unknown := [d for deps in after.values() for d in deps if d not in items]:
        raise ValueError(f"'{unknown[0]}' is waited for but is not an item")
    done: dict[str, Any] = {}
    pending = list(items)

    def ready() -> list[str]:
        return [n for n in pending if all(d in done for d in after.get(n, ()))]

    if workers <= 1:
        while pending:
            if not (now := ready()):
                raise ValueError(f"items wait on each other: {', '.join(pending)}")
            done[now[0]] = fn(items[now[0]])
            pending.remove(now[0])
        return {n: done[n] for n in items}
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
        running: dict = {}
        while pending or running:
            for n in ready():
                running[ex.submit(fn, items[n])] = n
                pending.remove(n)
            if not running:
                raise ValueError(f"items wait on each other: {', '.join(pending)}")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in finished:
                done[running.pop(f)] = f.result()
    return {n: done[n] for n in items}


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the moment (a notebook, a test's capture), never a closed one."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(level: int = logging.INFO) -> None:
    if not log.handlers:
        h = _CurrentStderr()
        h.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(h)
    log.setLevel(level)
    log.propagate = False


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def count_params(model: torch.nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def to_device(batch: Any, device: torch.device) -> Any:
    """Move tensors in a (nested) tuple/list/dict batch to a device."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a NamedTuple takes its fields positionally
        return type(batch)(*(to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def markdown_table(head: list[str], rows: list[list], align: str = "") -> str:
    """A Markdown pipe table; `align` has one letter per column, l or r (default: first left, rest right).

    markdown_table(["model", "acc"], [["mlp", "0.91"]]) -> '| model | acc |\n|---|---:|\n| mlp | 0.91 |'
    """
    align = align or "l" + "r" * (len(head) - 1)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def paired_bootstrap(correct_a, correct_b, n: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Accuracy of A minus accuracy of B on the same test items, with a paired-bootstrap interval.

    Resamples the test items (the same resample for both models) n times; the interval is the middle
    `level` of the resampled differences. paired_bootstrap([1, 1, 0], [1, 0, 0]) -> {"diff": 0.333..., "lo": ..., "hi": ...}
    """
    a, b = np.asarray(correct_a, dtype=np.float64), np.asarray(correct_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"need two equal-length 1-D arrays of per-item correctness, got {a.shape} and {b.shape}")
    d = a - b
    idx = np.random.default_rng(seed).integers(0, len(d), size=(n, len(d)))
    diffs = d[idx].mean(1)
    lo, hi = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    return {"diff": float(d.mean()), "lo": float(lo), "hi": float(hi), "n": n, "level": level}


def interleaved_times(fns: dict[str, Callable[[], Any]], rounds: int, steps: int, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds per call of each function, in rounds (A B C, A B C, ...) after `warmup` calls each, so that load
    from other processes hits them alike; one list of per-round means per name (callers take the median).
    The benchmarks and `llmpath efficient speed` time with it."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()  # allocator, optimizer state, a compiled function's first shapes
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            times[k].append((time.perf_counter() - t0) / steps)
    return times
