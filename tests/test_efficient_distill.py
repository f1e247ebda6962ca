"""Distillation (llmpath.efficient.distill): the loss against sums written out by hand, the T^2 factor,
the loss in the shared fit loop, and a tiny end-to-end run of the three students."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import perturb

from llmpath.config import ConfigError, TrainConfig, build_config
from llmpath.efficient.distill import (PRESETS, DistillRun, distill_compare, distill_table, distillation_loss,
                                       make_distill_loss)
from llmpath.gpt.finetune import lm_loss
from llmpath.gpt.model import GPT, GPTConfig
from llmpath.gpt.pretrain import PRESETS as GPT_PRESETS
from llmpath.gpt.pretrain import GPTRun, pretrain
from llmpath.train import fit


def _batch(B=2, T=3, V=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, T, V, generator=g, dtype=torch.float64) * 2
    t = torch.randn(B, T, V, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, V, (B, T), generator=g)
    return s, t, y


def _softmax(z: list[float]) -> list[float]:
    e = [math.exp(v - max(z)) for v in z]
    return [v / sum(e) for v in e]


def _by_hand(s, t, y, T, alpha, kind):
    """alpha T^2 mean KL + (1 - alpha) mean CE with explicit sums of p log(p / q), token by token."""
    kl_sum = ce_sum = n = 0
    for b in range(s.shape[0]):
        for i in range(s.shape[1]):
            if y[b, i] == -100:
                continue
            ps, pt = _softmax([v / T for v in s[b, i].tolist()]), _softmax([v / T for v in t[b, i].tolist()])
            p, q = (pt, ps) if kind == "forward" else (ps, pt)
            kl_sum += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
            ce_sum += -math.log(_softmax(s[b, i].tolist())[int(y[b, i])])
            n += 1
    return alpha * T * T * kl_sum / n + (1 - alpha) * ce_sum / n


@pytest.mark.parametrize("kind", ["forward", "reverse"])
@pytest.mark.parametrize("T,alpha", [(1.0, 0.5), (2.5, 0.3), (4.0, 1.0)])
def test_loss_equals_the_sums_written_out(kind, T, alpha):
    s, t, y = _batch()
    y[1, 2] = -100  # an ignored position counts in neither term
    got = distillation_loss(s, t, y, T=T, alpha=alpha, kind=kind).item()
    assert got == pytest.approx(_by_hand(s, t, y, T, alpha, kind), rel=1e-10)


def test_forward_and_reverse_differ_and_are_zero_on_the_teacher():
    s, t, y = _batch()
    fwd = distillation_loss(s, t, y, alpha=1.0, kind="forward")
    rev = distillation_loss(s, t, y, alpha=1.0, kind="reverse")
    assert abs(fwd - rev) > 1e-3  # KL is not symmetric: a swapped direction would not pass the test above either
    assert distillation_loss(t, t, y, alpha=1.0).abs() < 1e-12
    s.requires_grad_(True), t.requires_grad_(True)
    distillation_loss(s, t, y, alpha=1.0, kind="reverse").backward()
    assert s.grad is not None and t.grad is None  # the teacher is a fixed target: no gradient reaches it
    with pytest.raises(ValueError, match="forward or reverse"):
        distillation_loss(s, t, y, kind="backward")


def test_alpha_zero_is_plain_cross_entropy_exactly():
    s, t, y = _batch()
    ce = F.cross_entropy(s.flatten(0, 1), y.flatten())
    assert torch.equal(distillation_loss(s, t, y, T=3.0, alpha=0.0), ce)
    # through a GPT too: the loss_fn with alpha=0 is stage 5's lm_loss, bit for bit
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)
    student, teacher = GPT(cfg), GPT(cfg)
    x = torch.randint(0, 11, (3, 8))
    batch = (x, torch.roll(x, -1, 1))
    assert torch.equal(make_distill_loss(teacher, T=2.0, alpha=0.0)(student, batch), lm_loss(student, batch))


def _soft_grad_norm(T: float, kind: str, scale: float = 1.0) -> float:
    s, t, y = _batch(B=4, T=8, V=10, seed=1)
    s.requires_grad_(True)
    (distillation_loss(s, t, y, T=T, alpha=1.0, kind=kind) * scale).backward()
    return s.grad.norm().item()


@pytest.mark.parametrize("kind", ["forward", "reverse"])
def test_t_squared_keeps_the_soft_gradient_size_independent_of_t(kind):
    # the soft gradient shrinks as 1/T^2 for large T; the T^2 factor undoes that (Hinton et al., section 2)
    ratio = _soft_grad_norm(40.0, kind) / _soft_grad_norm(20.0, kind)
    assert ratio == pytest.approx(1.0, abs=0.05)
    without = _soft_grad_norm(40.0, kind, 1 / 40 ** 2) / _soft_grad_norm(20.0, kind, 1 / 20 ** 2)
    assert without == pytest.approx(0.25, abs=0.02)  # what the check sees when the factor is missing


def test_loss_fn_in_the_shared_fit_trains_the_student_only():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=13, block_size=8, n_layer=1, n_head=2, n_embd=16)
    teacher = perturb(GPT(GPTConfig(**{**cfg.__dict__, "n_embd": 32, "dropout": 0.2})), seed=1).train()
    student = GPT(cfg)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    probe = torch.randint(0, 13, (16, 8), generator=g)

    def kl() -> float:
        with torch.no_grad():
            return distillation_loss(student(probe)[0], teacher(probe)[0], probe, T=1.0, alpha=1.0).item()

    loss_fn = make_distill_loss(teacher, T=1.0, alpha=1.0)
    assert not teacher.training  # eval mode: no dropout noise in the targets
    start = kl()
    batches = lambda i: (lambda x: (x, torch.roll(x, -1, 1)))(torch.randint(0, 13, (8, 8)))  # noqa: E731
    fit(student, loss_fn, batches, TrainConfig(max_steps=60, lr=1e-2, warmup_steps=0, progress=False))
    assert kl() < 0.5 * start  # the student moved towards the teacher's distribution
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    assert all(p.grad is None for p in teacher.parameters())  # the teacher was never part of a backward
    assert not teacher.training


def test_distill_compare_tiny_end_to_end(tmp_path):
    gpt_cfg = build_config(GPTRun, ["--preset=tiny", f"--out={tmp_path}"], GPT_PRESETS)
    cfg = build_config(DistillRun, ["--preset=tiny", f"--out={tmp_path}"], PRESETS)
    with pytest.raises(ConfigError, match="llmpath gpt train --preset=tiny"):
        distill_compare(cfg)  # no teacher yet: one line naming the command, before any folder is made
    assert not (tmp_path / "efficient").exists()
    teacher = pretrain(gpt_cfg, "gpt", GPT)
    done = distill_compare(cfg)
    assert list(done) == ["teacher", "labels", "forward", "reverse"]
    assert done["teacher"]["val_loss"] == teacher["val_loss"]
    for kind in ("labels", "forward", "reverse"):
        r = done[kind]
        assert r["kind"] == kind and r["steps"] == 30 and math.isfinite(r["val_loss"])
        assert 0.1 < r["params"] / teacher["params"] < 0.4
        assert (tmp_path / "efficient" / f"tiny-distill-{kind}" / "results.json").exists()
    assert done["labels"]["val_loss"] != done["forward"]["val_loss"] != done["reverse"]["val_loss"]
    assert "学生：蒸馏，前向 KL" in distill_table(done)
    metrics = tmp_path / "efficient" / "tiny-distill-forward" / "metrics.jsonl"
    stamp = metrics.stat().st_mtime_ns
    again = distill_compare(cfg)  # finished runs are reused, not trained again
    assert again["forward"]["val_loss"] == done["forward"]["val_loss"]
    assert metrics.stat().st_mtime_ns == stamp


# speed.py is measurements, not assertions; what can be checked cheaply is that a failure becomes a row
def test_speed_failure_is_a_row_and_threads_are_restored():
    from llmpath.efficient.speed import first_call, thread_rows, thread_table

    seconds, why = first_call(lambda: 1 / 0)
    assert why == "ZeroDivisionError: division by zero" and seconds >= 0
    before = torch.get_num_threads()
    rows = thread_rows((1,), rounds=1, calls=1, vit=False)
    assert torch.get_num_threads() == before
    assert len(rows) == 1 and rows[0]["threads"] == 1 and rows[0]["speedup"] == 1.0 and rows[0]["ms"] > 0
    assert "1.00x" in thread_table(rows)
