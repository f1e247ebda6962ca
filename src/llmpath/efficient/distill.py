"""Knowledge distillation: a small GPT learns from a large one's whole next-token distribution.

    loss_fn = make_distill_loss(teacher, T=2.0, alpha=0.5, kind="forward")
    fit(student, loss_fn, batches, cfg.train, ...)        # the shared loop, as every topic
    rows = distill_compare(cfg)                          # labels alone vs forward KL vs reverse KL

Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network" (https://arxiv.org/abs/1503.02531).
A label says only which character came next; the teacher's distribution also says which ones were
nearly as likely ("e" after "th" but "a" and "i" too). Softening both distributions with a temperature
T > 1 (p_T = softmax(z / T)) makes those small probabilities visible, and the student is trained on

    L = alpha * T^2 * KL(p_T^teacher || p_T^student) + (1 - alpha) * CE(student, labels)

Why T^2: the gradient of the soft term with respect to a student logit is (p_T^student - p_T^teacher) / T,
and for large T the two softened distributions differ by about (z_s - z_t) / (V T), so the gradient
shrinks as 1/T^2. Multiplying by T^2 keeps the soft loss's pull comparable to the hard loss's whatever T
is, so alpha means the same thing at T = 2 and at T = 10 (tests/test_efficient_distill.py checks this).

Direction: forward KL(teacher || student) = sum p_t log(p_t / p_s) is large wherever the teacher puts
mass that the student misses, so the student spreads out to cover every mode (mode-covering, Hinton's
choice). Reverse KL(student || teacher) = sum p_s log(p_s / p_t) is large wherever the student puts mass
that the teacher does not, so the student may drop modes and concentrate on the teacher's largest one
(mode-seeking, as in MiniLLM, Gu et al. 2023, https://arxiv.org/abs/2306.08543).

The teacher is stage 5's pretrained `small` GPT (<out>/gpt/small); the student has about a quarter of
its parameters (2 layers x 88 wide: 200,904 vs 811,648) and trains on the same data, split, recipe and
steps, so the only difference between the rows of the table is what the student learns from.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmpath.common import count_params, log, markdown_table, read_json, setup_logging, write_json
from llmpath.config import ConfigError, opt
from llmpath.data import RandomWindows, split_text
from llmpath.gpt.data import encode_known, lm_text
from llmpath.gpt.finetune import lm_loss, lm_val_loss
from llmpath.gpt.model import GPT
from llmpath.gpt.pretrain import PRESETS as GPT_PRESETS
from llmpath.gpt.pretrain import GPTRun, sample_text
from llmpath.plotting import save_fig, training_curves
from llmpath.runs import comparable_config, load_run, open_folder, reuse, start_run, variant
from llmpath.train import fit, read_metrics

TOPIC = "efficient"
KINDS = ("labels", "forward", "reverse")


# ---------------------------------------------------------------------------------- loss

def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, T: float = 2.0,
                      alpha: float = 0.5, kind: str = "forward", ignore_index: int = -100) -> Tensor:
    """alpha T^2 KL + (1 - alpha) CE over (B, T, V) logits and (B, T) targets, each a mean over the tokens.

    kind "forward" = KL(teacher || student), "reverse" = KL(student || teacher); positions whose target
    is ignore_index count in neither term. The teacher's logits are a fixed target (no gradient).
    """
    if kind not in ("forward", "reverse"):
        raise ValueError(f"unknown KL direction '{kind}'; choose forward or reverse")
    V = student_logits.shape[-1]
    s, t, y = student_logits.reshape(-1, V), teacher_logits.detach().reshape(-1, V), targets.reshape(-1)
    hard = F.cross_entropy(s, y, ignore_index=ignore_index)
    keep = y != ignore_index
    log_ps, log_pt = F.log_softmax(s[keep] / T, -1), F.log_softmax(t[keep] / T, -1)  # (N, V) softened
    if kind == "forward":
        kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1)  # where the teacher has mass the student must too
    else:
        kl = (log_ps.exp() * (log_ps - log_pt)).sum(-1)  # where the student has mass the teacher must too
    return alpha * T ** 2 * kl.mean() + (1 - alpha) * hard


def make_distill_loss(teacher: nn.Module, T: float = 2.0, alpha: float = 0.5,
                      kind: str = "forward") -> Callable[[nn.Module, tuple[Tensor, Tensor]], Tensor]:
    """A loss_fn(model, (x, y)) for the shared fit: the teacher's logits for x are computed on the fly."""
    teacher.eval()  # no dropout: the target distribution must not be noisy

    def loss_fn(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        with torch.no_grad():  # the teacher only answers; nothing of it is trained or kept for backward
            t_logits, _ = teacher(x)
        s_logits, _ = model(x)
        return distillation_loss(s_logits, t_logits, y, T, alpha, kind)

    return loss_fn


@torch.no_grad()
def agreement(student: GPT, teacher: GPT, ids, block_size: int, batch_size: int = 64) -> dict:
    """Mean KL(teacher || student) at T = 1 and the student's mean next-token entropy, over val windows (nats)."""
    device = next(student.parameters()).device
    n = (len(ids) - 1) // block_size
    x = torch.as_tensor(ids[: n * block_size], dtype=torch.long).view(n, block_size)
    kl = ent = 0.0
    for a in range(0, n, batch_size):
        xb = x[a:a + batch_size].to(device)
        log_ps, log_pt = F.log_softmax(student(xb)[0], -1), F.log_softmax(teacher(xb)[0], -1)
        kl += (log_pt.exp() * (log_pt - log_ps)).sum(-1).mean().item() * len(xb)
        ent += -(log_ps.exp() * log_ps).sum(-1).mean().item() * len(xb)
    return {"kl_to_teacher": kl / n, "entropy": ent / n}


# ----------------------------------------------------------------------------------- run

@dataclass
class DistillRun(GPTRun):
    """Stage 5's run config (the student's shape, data and recipe) plus what the student learns from."""

    teacher: str = opt("", "the teacher's run folder ('' = <out>/gpt/<preset>: stage 5's pretrained GPT)")
    kind: Literal["labels", "forward", "reverse"] = opt(
        "forward", "labels: the student learns from the labels alone; forward / reverse: which KL to the teacher")
    temperature: float = opt(2.0, "T: both distributions are softened as softmax(logits / T)", above=0)
    alpha: float = opt(0.5, "weight of the soft (teacher) loss; the labels' cross-entropy gets 1 - alpha", min=0, max=1)


def _student(n_layer: int, n_head: int, n_embd: int) -> dict:
    return {"model.n_layer": n_layer, "model.n_head": n_head, "model.n_embd": n_embd}


# Stage 5's presets (data, context, recipe, steps, seed) with a student of about a quarter of the teacher's
# parameters: small 2 x 88 = 200,904 vs 4 x 128 = 811,648 (24.8%); tiny 1 x 16 vs 2 x 32.
PRESETS: dict[str, dict] = {
    "tiny": {**GPT_PRESETS["tiny"], **_student(1, 2, 16)},
    "small": {**GPT_PRESETS["small"], **_student(2, 4, 88)},
}


def teacher_path(cfg: DistillRun) -> Path:
    return Path(cfg.teacher) if cfg.teacher else Path(cfg.out) / "gpt" / (cfg.preset or "small")


def load_teacher(cfg: DistillRun) -> tuple[GPT, object]:
    """(teacher in eval mode, its tokenizer), checked to fit the student's data and context."""
    path = teacher_path(cfg)
    hint = f"llmpath gpt train --preset={cfg.preset or 'small'} --out={cfg.out}"
    teacher, tok, tcfg = load_run(path, "cpu", hint=hint, topic="gpt")
    if tcfg.data != cfg.data or tcfg.tokenizer != cfg.tokenizer:
        raise ConfigError(f"the teacher in {path} learned {tcfg.data} ({tcfg.tokenizer} tokens), the student would "
                          f"learn {cfg.data} ({cfg.tokenizer}); give both the same --data and --tokenizer")
    if tcfg.model.block_size < cfg.model.block_size:
        raise ConfigError(f"the teacher in {path} reads {tcfg.model.block_size} tokens at most; give the student "
                          f"--model.block_size={tcfg.model.block_size} or less")
    return teacher, tok


def split_ids(cfg: DistillRun, tok) -> tuple:
    """(train ids, the first eval_tokens + 1 val ids): stage 5's split of cfg.data, in the teacher's tokens."""
    train_text, val_text, _ = split_text(lm_text(cfg.data))
    return encode_known(tok, train_text), encode_known(tok, val_text)[: cfg.eval_tokens + 1]


def distill_run(cfg: DistillRun) -> dict:
    """Train one student (labels alone, or distilled) on stage 5's data and recipe, or reuse the finished run."""
    setup_logging()
    if (done := reuse(cfg, TOPIC)) is not None:
        return done
    key = comparable_config(cfg)
    teacher, tok = load_teacher(cfg)  # before any work: a missing teacher is one line saying how to train it
    cfg = replace(cfg, model=replace(cfg.model, vocab_size=tok.vocab_size))  # the teacher's vocabulary
    train_ids, val_ids = split_ids(cfg, tok)
    block = cfg.model.block_size
    batches = RandomWindows(train_ids, block, cfg.train.batch_size, seed=cfg.seed)
    run = start_run(cfg, TOPIC, tokenizer=tok, key=key)
    student, teacher = GPT(cfg.model), teacher.to(run.device)
    loss_fn = lm_loss if cfg.kind == "labels" else make_distill_loss(teacher, cfg.temperature, cfg.alpha, cfg.kind)
    log.info(f"student {count_params(student):,} parameters ({cfg.kind}), teacher {count_params(teacher):,} "
             f"from {teacher_path(cfg)} -> {run.path}")
    res = fit(student, loss_fn, batches, cfg.train, run=run, unit="tokens",
              evaluate=lambda m: {"val_loss": lm_val_loss(m, val_ids, block)})
    student.eval()
    title = f"学生 GPT（{cfg.kind}）：{cfg.data}"
    curves = save_fig(training_curves(read_metrics(run.path / "metrics.jsonl"), title), run.figures / "curves.png")
    summary = {"kind": cfg.kind, "temperature": cfg.temperature, "alpha": cfg.alpha, "teacher": str(teacher_path(cfg)),
               "params": count_params(student), "teacher_params": count_params(teacher), "steps": res.step,
               "val_loss": res.best, "train_loss": res.train_loss, "seconds": round(res.seconds, 1),
               **agreement(student, teacher, val_ids, block), "sample": sample_text(student, tok, cfg),
               "figures": [curves]}
    summary = run.finish(summary)
    log.info(f"student ({cfg.kind}): val loss {res.best:.4f} after {res.step} steps in {res.seconds:.0f} s")
    return summary


# ------------------------------------------------------------------------------- compare

def distill_configs(cfg: DistillRun) -> dict[str, DistillRun]:
    """The three students at equal shape, data, recipe and steps: <out>/efficient/<name>-distill-<kind>."""
    base = replace(cfg, name=f"{cfg.name or cfg.preset or 'small'}-distill")
    return {kind: variant(base, kind, kind=kind) for kind in KINDS}


def distill_compare(cfg: DistillRun) -> dict:
    """Train (or reuse) the three students; {"teacher": ..., "labels": ..., "forward": ..., "reverse": ...}."""
    setup_logging()
    configs = distill_configs(cfg)
    teacher, tok = load_teacher(cfg)  # one clear line before any student trains
    done = {kind: distill_run(c) for kind, c in configs.items()}
    t = read_json(teacher_path(cfg) / "results.json") if (teacher_path(cfg) / "results.json").exists() else {}
    own = agreement(teacher, teacher, split_ids(cfg, tok)[1], cfg.model.block_size)  # the teacher's own entropy
    done = {"teacher": {"params": t.get("params"), "steps": t.get("steps"), "val_loss": t.get("val_loss"),
                        "seconds": t.get("seconds"), "entropy": own["entropy"], "sample": t.get("sample", "")},
            **done}
    out = open_folder(replace(cfg, name=f"{cfg.name or cfg.preset or 'small'}-distill-compare"), TOPIC)
    write_json(out / "results.json", done)
    return done


LABELS = {"teacher": "教师：第 5 章的 GPT", "labels": "学生：只学标签",
          "forward": "学生：蒸馏，前向 KL(教师‖学生)", "reverse": "学生：蒸馏，反向 KL(学生‖教师)"}


def distill_table(done: dict) -> str:
    """One row per model: parameters, steps, seconds, val loss (CE on labels), KL to the teacher, entropy."""
    def num(v, fmt):
        return "—" if v is None else format(v, fmt)

    rows = [[LABELS[k], num(r.get("params"), ","), num(r.get("steps"), "d"), num(r.get("seconds"), ".0f"),
             num(r.get("val_loss"), ".4f"), num(r.get("kl_to_teacher"), ".4f"), num(r.get("entropy"), ".3f")]
            for k, r in done.items()]
    return markdown_table(["模型", "参数量", "步数", "秒", "验证损失（标签上的 CE，奈特/字符）", "到教师的 KL（T=1）",
                           "学生预测的熵"], rows)
