"""The one fit loop every topic uses (unless its lesson is the loop itself).

    fit(model, loss_fn, batches, cfg, run=run, evaluate=evaluate, restore_best=True)

- `loss_fn(model, batch) -> scalar loss`: the objective lives beside its model.
- `batches(i) -> batch`: micro-batch i is a pure function of i (see llmpath.data.batching), so a
  resumed run sees exactly the batches the uninterrupted run would have seen.
- `evaluate(model) -> {"val_loss": ..., ...}`: run under eval() and no_grad at every eval_interval.

`run` (llmpath.runs.start_run) gives the folder, the device and what each checkpoint records besides
the weights (topic, resolved config, tokenizer), so that `load_run(folder)` can rebuild the model.
`epochs` (with a `batches` that knows its `per_epoch`) sets max_steps from the data size.

It does AdamW (no decay on biases, norms and, unless asked, embeddings), warmup + cosine/linear/
noam schedules, gradient clipping and accumulation, metrics.jsonl, atomic checkpoints `last.pt`
and `best.pt` with model, optimizer, schedule step, RNG states and config, and exact resume.

Nothing is lost: Ctrl-C is remembered and acted on at the end of the step (a checkpoint of a whole
step, never a half-updated one; a second Ctrl-C stops at once without saving); a NaN/inf loss or
gradient norm stops before the optimizer step, and no checkpoint with a non-finite weight is ever
written, so `last.pt` stays the last good state and the message names it.

Under torchrun (`init_distributed()` was called, world size W > 1) the same loop is data-parallel:
the model is wrapped in DistributedDataParallel, every rank builds the same micro-batch `batches(i)`
and keeps its own 1/W of the rows, so W processes at --batch_size=B train exactly like one process
at B; only rank 0 evaluates, logs, writes metrics and saves checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from llmpath.common import log, to_device
from llmpath.config import TrainConfig, to_dict


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the message says where and what to try."""


class CheckpointError(TrainingError):
    """A checkpoint that cannot be read, or that belongs to another run; the message names the file."""


@dataclass
class FitResult:
    step: int
    train_loss: float
    best: float | None
    evals: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    run_dir: Path | None = None

    @property
    def last_eval(self) -> dict:
        return self.evals[-1] if self.evals else {}


# ------------------------------------------------------------------------ schedule

def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based): warmup, then the chosen decay."""
    warm = max(cfg.warmup_steps, 0)
    if cfg.schedule == "noam":
        # Vaswani et al.: rises linearly for `warm` steps, then decays as 1/sqrt(step); peak = lr.
        s, w = step + 1, max(warm, 1)
        return cfg.lr * min(s ** -0.5, s * w ** -1.5) * w ** 0.5
    if step < warm:
        return cfg.lr * (step + 1) / warm
    if cfg.schedule == "constant":
        return cfg.lr
    progress = min(1.0, (step - warm) / max(1, cfg.max_steps - warm))
    floor = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "linear":
        return cfg.lr - (cfg.lr - floor) * progress
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------- optimizer

def param_groups(model: nn.Module, weight_decay: float, decay_embeddings: bool = False) -> list[dict]:
    """Decay matrices; never biases or norm gains (1-D); embeddings only if asked."""
    embed_ids = set()
    if not decay_embeddings:
        for m in model.modules():
            if isinstance(m, nn.Embedding):
                embed_ids.add(id(m.weight))
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue  # tied weights appear once
        seen.add(id(p))
        (decay if p.dim() >= 2 and id(p) not in embed_ids else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay, cfg.decay_embeddings),
                             lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


# --------------------------------------------------------------------- checkpoints

def rng_state() -> dict:
    np_state = np.random.get_state(legacy=False)
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937", "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(obj: dict, path: str | Path) -> None:
    """torch.save to a temp file, then rename: a crash never leaves a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """Load a checkpoint with weights_only=True (no arbitrary code runs); a damaged file is one clear error."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}; train first (`llmpath <topic> train`)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, random bytes, a pickle with code in it: never a traceback
        reason = str(e).strip().splitlines()[0][:80] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is damaged or not an llmpath checkpoint ({reason}); "
                              f"delete it and train again") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path} is not an llmpath checkpoint (it holds a {type(ckpt).__name__})")
    return ckpt


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under torch.compile / DDP wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def load_weights(model: nn.Module, path: str | Path, map_location: Any = "cpu") -> dict:
    """Load a checkpoint's model weights into `model`; returns the whole checkpoint dict."""
    ckpt = load_checkpoint(path, map_location)
    unwrap(model).load_state_dict(ckpt["model"])
    return ckpt


# --------------------------------------------------------------------- distributed

def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) when torch.distributed is not initialized."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: torch.device) -> torch.device:
    """Join the process group torchrun describes in the environment (gloo on CPU, nccl on CUDA).

    Returns the device this rank trains on (cuda:LOCAL_RANK on GPUs). Without torchrun's WORLD_SIZE > 1
    it does nothing and returns `device`.
    """
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def _shard(batch: Any, rank: int, world: int) -> Any:
    """This rank's contiguous 1/world of the rows of every tensor in a (nested) batch."""
    if isinstance(batch, torch.Tensor):
        n = batch.shape[0]
        if n % world:
            raise TrainingError(f"batch of {n} rows does not split over {world} processes; "
                                f"make --train.batch_size a multiple of {world}")
        return batch[rank * n // world:(rank + 1) * n // world]
    if isinstance(batch, dict):
        return {k: _shard(v, rank, world) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a NamedTuple takes its fields positionally
        return type(batch)(*(_shard(v, rank, world) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_shard(v, rank, world) for v in batch)
    return batch


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


# ------------------------------------------------------------------------ fit loop

def _autocast(device: torch.device, amp: str):
    if device.type != "cuda" or amp == "off":
        return contextlib.nullcontext()  # fp32 on CPU: bf16 matmuls are far slower there
    return torch.autocast("cuda", dtype=torch.bfloat16)  # bf16 keeps fp32's range: no loss scaling needed


def _count(batch: Any, unit: str) -> int:
    first = batch
    while isinstance(first, (list, tuple)):
        first = first[0]
    if isinstance(first, dict):
        first = next(iter(first.values()))
    if not isinstance(first, torch.Tensor):
        return 0
    return first.numel() if unit == "tokens" else first.shape[0]


def evaluate_model(model: nn.Module, evaluate: Callable[[nn.Module], dict]) -> dict:
    """Run `evaluate` in eval mode without gradients, leaving the RNG streams untouched."""
    was_training = model.training
    model.eval()
    state = rng_state()
    try:
        with torch.no_grad():
            return {k: float(v) for k, v in evaluate(model).items()}
    finally:
        set_rng_state(state)
        model.train(was_training)


def fit(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    batches: Callable[[int], Any],
    cfg: TrainConfig,
    *,
    run: Any = None,
    run_dir: str | Path | None = None,
    evaluate: Callable[[nn.Module], dict] | None = None,
    device: torch.device | str | None = None,
    unit: str = "samples",
    config: Any = None,
    best_metric: str = "val_loss",
    best_mode: str = "min",
    restore_best: bool = False,
    optimizer: torch.optim.Optimizer | None = None,
) -> FitResult:
    """Train `model` for cfg.max_steps optimizer steps (or cfg.epochs passes); see the module docstring.

    restore_best=True leaves the model holding the weights of ckpt/best.pt when training ends.
    """
    rank, world = dist_info()
    lead = rank == 0  # the one process that evaluates, logs and saves
    meta: dict = {}
    if run is not None:  # a llmpath.runs.Run: its folder, device and checkpoint record
        run_dir, device, meta = run.path, device or run.device, run.meta()
    elif config is not None:
        meta = {"config": to_dict(config) if not isinstance(config, dict) else config}
    device = torch.device(device or "cpu")
    model.to(device)
    cfg = _resolve_epochs(cfg, batches)
    opt = optimizer or make_optimizer(model, cfg)
    folder = Path(run_dir) if run_dir is not None else None
    ckpt_dir = folder / "ckpt" if folder else None
    metrics_path = folder / "metrics.jsonl" if folder else None
    step, best = 0, None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)

    if cfg.resume and ckpt_dir is None:
        raise TrainingError("--train.resume needs a run folder to resume from")
    if cfg.resume:
        ckpt = _resume_checkpoint(ckpt_dir / "last.pt", meta, device)
        try:
            unwrap(model).load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError):
            raise CheckpointError(f"{ckpt_dir / 'last.pt'} holds a model of another shape than these options build; "
                                  f"resume with the options it was trained with (its config.json)") from None
        step, best = ckpt["step"], ckpt.get("best")
        set_rng_state(ckpt["rng"])
        log.info(f"resumed from {ckpt_dir / 'last.pt'} at step {step}")
        if metrics_path is not None and metrics_path.exists() and lead:
            truncate_metrics(metrics_path, step)
    elif metrics_path is not None and lead:
        metrics_path.write_text("")
    if run is not None and lead:
        run.save_config()  # the resolved config, once the resume (if any) has been checked
    saved = step if cfg.resume else None  # step of the last good last.pt, named when training must stop

    def checkpoint(name: str, sync: bool = True) -> None:
        nonlocal saved
        if ckpt_dir is None:
            return
        if lead:
            bad = _non_finite(model)
            if bad:  # never replace a good checkpoint with a broken one
                raise TrainingError(f"{bad} weights became NaN or inf at step {step}; lower --train.lr (now {cfg.lr:g})"
                                    f" or keep --train.grad_clip on; {_last_good(ckpt_dir, saved)}")
            save_checkpoint({"model": unwrap(model).state_dict(), "optimizer": opt.state_dict(),
                             "scheduler": {"step": step, "schedule": cfg.schedule}, "step": step, "best": best,
                             "rng": rng_state(), **meta}, ckpt_dir / f"{name}.pt")
        if name == "last":
            saved = step  # on every rank: they decide together whether a stop needs one more checkpoint
        if sync:
            _barrier(world)  # no rank reads a checkpoint before rank 0 has written it

    def record(row: dict) -> None:
        if metrics_path is not None and lead:
            with open(metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    train_model = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    train_model = torch.compile(train_model) if cfg.compile else train_model
    end = min(cfg.max_steps, cfg.stop_at) if cfg.stop_at > 0 else cfg.max_steps
    evals: list[dict] = []
    loss_ema, units, t_start, t_last = None, 0, time.time(), time.time()
    bar = _progress(cfg, end, step) if lead else None
    model.train()
    stop = StopFlag()
    try:
        stop.__enter__()
        while step < end:
            lr = lr_at(step, cfg)
            for g in opt.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)  # a group may follow the schedule at a fraction of it
            total = 0.0
            for micro in range(cfg.grad_accum):
                batch = batches(step * cfg.grad_accum + micro)
                units += _count(batch, unit)  # all ranks together: rank 0 logs the global speed
                batch = to_device(_shard(batch, rank, world) if world > 1 else batch, device)
                # DDP all-reduces gradients on the last micro-batch of a step only
                sync = contextlib.nullcontext() if world == 1 or micro == cfg.grad_accum - 1 else train_model.no_sync()
                with sync:
                    with _autocast(device, cfg.amp):
                        loss = loss_fn(train_model, batch)
                    if world == 1 and not torch.isfinite(loss):
                        _nan_stop("loss", loss.item(), step, cfg, _last_good(ckpt_dir, saved))
                    (loss / cfg.grad_accum).backward()
                total += loss.item() / cfg.grad_accum
            stopping = stop.signum != 0
            if world > 1:  # the mean loss over ranks, and whether any rank was interrupted: all act alike
                import torch.distributed as dist

                t = torch.tensor([total, float(stopping)], device=device)
                dist.all_reduce(t)
                total, stopping = t[0].item() / world, t[1].item() > 0
                if not math.isfinite(total):  # every rank sees it, so all stop together
                    _nan_stop("loss", total, step, cfg, _last_good(ckpt_dir, saved))
            grad_norm = _grad_norm(model, cfg.grad_clip)
            if not math.isfinite(grad_norm):  # the same on every rank (DDP averaged the gradients)
                _nan_stop("gradient norm", grad_norm, step, cfg, _last_good(ckpt_dir, saved))
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            loss_ema = total if loss_ema is None else 0.9 * loss_ema + 0.1 * total
            now = time.time()
            speed = units / max(now - t_last, 1e-9)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_ema:.4f}", lr=f"{lr:.2e}", **{f"{unit[:3]}/s": f"{speed:,.0f}"})
            if step % max(cfg.log_interval, 1) == 0 or step == end:
                record({"step": step, "train_loss": total, "lr": lr, "grad_norm": grad_norm,
                        f"{unit}_per_s": speed, "time": now - t_start})
                units, t_last = 0, now
            is_eval = evaluate is not None and (step == end or (cfg.eval_interval > 0 and step % cfg.eval_interval == 0))
            if is_eval and lead:
                ev = {"step": step, **evaluate_model(model, evaluate)}
                evals.append(ev)
                record(ev)
                if bar is not None:
                    bar.write("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in ev.items()))
                val = ev.get(best_metric)
                if val is not None and (best is None or (val < best if best_mode == "min" else val > best)):
                    best = val
                    checkpoint("best", sync=False)  # only rank 0 evaluates, so only it may wait here
            if is_eval or step == end or (cfg.ckpt_interval > 0 and step % cfg.ckpt_interval == 0):
                checkpoint("last")
            if stopping if world > 1 else stop.signum:  # Ctrl-C: a whole step is done; keep it and stop
                if saved != step:
                    checkpoint("last", sync=world > 1)
                log.info(f"\ninterrupted at step {step}; checkpoint saved"
                         + (f" to {ckpt_dir / 'last.pt'}; continue with --train.resume" if ckpt_dir else ""))
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        if saved != step:  # a second Ctrl-C (or one outside the main thread): the step was cut short
            log.info(f"\nstopped in the middle of step {step + 1}; nothing of it was saved; "
                     + _last_good(ckpt_dir, saved))
        raise
    finally:
        stop.__exit__()
    if bar is not None:
        bar.close()
    if evaluate is not None and best is None and ckpt_dir is not None and lead:
        checkpoint("best", sync=False)  # the metric was absent: keep the final weights as "best"
    _barrier(world)
    seconds = time.time() - t_start
    if restore_best and ckpt_dir is not None and (ckpt_dir / "best.pt").exists():
        unwrap(model).load_state_dict(load_checkpoint(ckpt_dir / "best.pt", map_location=device)["model"])
    return FitResult(step=step, train_loss=float(loss_ema if loss_ema is not None else float("nan")), best=best,
                     evals=evals, seconds=seconds, run_dir=folder)


def _resolve_epochs(cfg: TrainConfig, batches: Any) -> TrainConfig:
    """cfg with max_steps = epochs x optimizer steps per pass when --train.epochs is set."""
    if cfg.epochs <= 0:
        return cfg
    per_epoch = getattr(batches, "per_epoch", None)
    if per_epoch is None:
        raise TrainingError("--train.epochs needs batches that know the data size (EpochBatches); "
                            "give --train.max_steps instead")
    return replace(cfg, max_steps=max(1, cfg.epochs * per_epoch // cfg.grad_accum))


def _nan_stop(what: str, value: float, step: int, cfg: TrainConfig, last_good: str) -> None:
    raise TrainingError(f"{what} became {value} at step {step + 1}; lower --train.lr (now {cfg.lr:g}) or keep "
                        f"--train.grad_clip on; nothing of this step was saved; {last_good}")


def _last_good(ckpt_dir: Path | None, step: int | None) -> str:
    """Where a stopped run can be continued from, in words."""
    if ckpt_dir is None or step is None:
        return "no checkpoint was written yet"
    return f"the last good checkpoint is {ckpt_dir / 'last.pt'} (step {step})"


def _grad_norm(model: nn.Module, clip: float) -> float:
    """The global gradient norm, after clipping it to `clip` when clip > 0."""
    params = [p for p in model.parameters() if p.grad is not None]
    if clip > 0:
        return float(torch.nn.utils.clip_grad_norm_(params, clip))
    return float(torch.nn.utils.get_total_norm([p.grad for p in params])) if params else 0.0


def _non_finite(model: nn.Module) -> int:
    """How many weights are NaN or inf (0 for a healthy model)."""
    return sum(int((~torch.isfinite(p)).sum()) for p in unwrap(model).state_dict().values() if p.is_floating_point())


def _resume_checkpoint(path: Path, meta: dict, device: Any) -> dict:
    """last.pt of the run being resumed, checked to belong to it."""
    if not path.exists():
        raise CheckpointError(f"--train.resume but there is no {path}; train without --train.resume "
                              f"(or name the interrupted run with --name)")
    ckpt = load_checkpoint(path, map_location=device)
    if not {"model", "optimizer", "step", "rng"} <= set(ckpt):
        raise CheckpointError(f"{path} is not a training checkpoint of llmpath (no optimizer state to resume)")
    if meta.get("topic") and ckpt.get("topic") not in (None, meta["topic"]):
        raise CheckpointError(f"{path} was written by topic {ckpt['topic']}, not {meta['topic']}; "
                              f"resume it with llmpath {ckpt['topic']} train --train.resume")
    return ckpt


class StopFlag:
    """While training: the first Ctrl-C (SIGINT) is remembered, to stop at the end of the step; a second
    one raises KeyboardInterrupt at once. Only the main thread can install signal handlers."""

    def __init__(self) -> None:
        self.signum, self._old = 0, None

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None


def _progress(cfg: TrainConfig, total: int, initial: int):
    if not cfg.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True, leave=False)


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines written after the checkpoint we resume from."""
    rows = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(r + "\n" for r in rows), encoding="utf-8")


def read_metrics(path: str | Path) -> list[dict]:
    """Rows of a metrics.jsonl file."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
