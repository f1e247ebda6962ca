"""The shared fit loop: exact resume, atomic checkpoints, NaN stop, Ctrl-C, schedules, metrics."""

import json
import math
import os
import signal

import pytest
import torch
from torch import nn

from llmpath.config import TrainConfig
from llmpath.train import (TrainingError, fit, load_checkpoint, load_weights, lr_at, param_groups,
                           read_metrics, save_checkpoint)

X = torch.randn(256, 4, generator=torch.Generator().manual_seed(0))
Y = X @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])


def batches(i):
    idx = torch.randint(0, 256, (16,), generator=torch.Generator().manual_seed(i))
    return X[idx], Y[idx]


def loss_fn(model, batch):
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def evaluate(model):
    return {"val_loss": loss_fn(model, (X, Y)).item()}


def make_model():
    torch.manual_seed(1)  # dropout makes the torch RNG part of the state that must resume exactly
    return nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.2), nn.ReLU(), nn.Linear(16, 1))


def cfg(**kw):
    base = dict(max_steps=40, lr=1e-2, warmup_steps=5, eval_interval=7, log_interval=3, progress=False, grad_accum=2)
    return TrainConfig(**{**base, **kw})


def test_fit_learns_and_writes_metrics(tmp_path):
    model = make_model()
    before = evaluate(model)["val_loss"]
    res = fit(model, loss_fn, batches, cfg(max_steps=80), run_dir=tmp_path, evaluate=evaluate)
    assert res.step == 80
    assert res.best < 0.2 * before
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert any("val_loss" in r for r in rows) and any("train_loss" in r for r in rows)
    assert (tmp_path / "ckpt" / "last.pt").exists() and (tmp_path / "ckpt" / "best.pt").exists()


def test_resume_is_exact(tmp_path):
    one_go = make_model()
    fit(one_go, loss_fn, batches, cfg(), run_dir=tmp_path / "a", evaluate=evaluate)
    half = make_model()
    fit(half, loss_fn, batches, cfg(stop_at=20), run_dir=tmp_path / "b", evaluate=evaluate)
    assert load_checkpoint(tmp_path / "b" / "ckpt" / "last.pt")["step"] == 20
    resumed = make_model()  # fresh weights: everything must come from the checkpoint
    res = fit(resumed, loss_fn, batches, cfg(resume=True), run_dir=tmp_path / "b", evaluate=evaluate)
    assert res.step == 40
    for a, b in zip(one_go.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # the resumed metrics continue the first half's without duplicates
    steps = [r["step"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl") if "train_loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 40


def test_resume_without_rng_restore_would_differ(tmp_path):
    """Guard that the exactness test can fail: a different dropout stream changes the weights."""
    a, b = make_model(), make_model()
    fit(a, loss_fn, batches, cfg(), evaluate=evaluate)
    torch.manual_seed(123)
    fit(b, loss_fn, batches, cfg(), evaluate=evaluate)
    assert not all(torch.allclose(p, q, atol=1e-6) for p, q in zip(a.parameters(), b.parameters()))


def test_checkpoint_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"x": torch.ones(3)}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint({"x": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["x"], torch.ones(3))  # the old file is intact


def test_checkpoint_loads_weights_only(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(Exception):
        load_checkpoint(path)


def test_nan_loss_stops_with_step(tmp_path):
    def nan_after_3(model, batch):
        loss = loss_fn(model, batch)
        return loss * float("nan") if nan_after_3.calls >= 3 else loss

    nan_after_3.calls = 0

    def counting(model, batch):
        nan_after_3.calls += 1
        return nan_after_3(model, batch)

    with pytest.raises(TrainingError, match=r"at step 2\b"):
        fit(make_model(), counting, batches, cfg(grad_accum=2), run_dir=tmp_path)


def test_ctrl_c_saves_the_step_it_lands_in(tmp_path):
    def interrupt_in_step_6(i):
        if i == 11:  # micro-batch 11 = the second half of step 6 with grad_accum=2
            os.kill(os.getpid(), signal.SIGINT)
        return batches(i)

    model = make_model()
    with pytest.raises(KeyboardInterrupt):
        fit(model, loss_fn, interrupt_in_step_6, cfg(grad_accum=2), run_dir=tmp_path)
    ckpt = load_weights(make_model(), tmp_path / "ckpt" / "last.pt")
    assert ckpt["step"] == 6 and all(int(s["step"]) == 6 for s in ckpt["optimizer"]["state"].values())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in ckpt["model"].items())


def test_an_exception_in_the_middle_of_a_step_saves_nothing_of_it(tmp_path):
    """A KeyboardInterrupt that did not come through the handler (a second Ctrl-C) cuts a step short: the
    half-done step must not be written, since its optimizer state and RNG streams are mixed."""
    def interrupt_mid_step(i):
        if i == 11:
            raise KeyboardInterrupt
        return batches(i)

    with pytest.raises(KeyboardInterrupt):
        fit(make_model(), loss_fn, interrupt_mid_step, cfg(grad_accum=2, ckpt_interval=4), run_dir=tmp_path)
    assert load_checkpoint(tmp_path / "ckpt" / "last.pt")["step"] == 4  # the last whole checkpoint, untouched


def test_lr_schedules():
    c = TrainConfig(max_steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, c) == pytest.approx(0.1)
    assert lr_at(9, c) == pytest.approx(1.0)
    assert lr_at(100, c) == pytest.approx(0.1)
    assert lr_at(55, c) == pytest.approx(0.55)  # cosine midpoint
    lin = TrainConfig(max_steps=100, lr=1.0, warmup_steps=0, min_lr_ratio=0.0, schedule="linear")
    assert lr_at(50, lin) == pytest.approx(0.5)
    noam = TrainConfig(lr=1.0, warmup_steps=16, schedule="noam")
    peak = lr_at(15, noam)
    assert peak == pytest.approx(1.0) and lr_at(63, noam) == pytest.approx(0.5)
    assert all(lr_at(s, noam) <= peak + 1e-12 for s in range(200))


def test_no_decay_on_biases_norms_embeddings():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4), nn.LayerNorm(4))
    decay, no_decay = param_groups(model, 0.1)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])]
    assert len(no_decay["params"]) == 4  # embedding, linear bias, norm weight and bias
    decay, _ = param_groups(model, 0.1, decay_embeddings=True)
    assert len(decay["params"]) == 2


def test_metrics_are_json_lines(tmp_path):
    fit(make_model(), loss_fn, batches, cfg(max_steps=6, log_interval=2), run_dir=tmp_path, evaluate=evaluate)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["step"] for r in rows if "train_loss" in r] == [2, 4, 6]
    assert all(math.isfinite(r["lr"]) for r in rows if "lr" in r)


def test_a_param_group_follows_the_schedule_at_its_lr_scale():
    """A group with lr_scale s gets s times the scheduled rate at every step; the others get the rate itself."""
    model = make_model()
    first, last = list(model[0].parameters()), list(model[3].parameters())
    opt = torch.optim.AdamW([{"params": first, "lr_scale": 0.1}, {"params": last}], lr=1.0)
    seen = []

    def recording(m, batch):
        seen.append([g["lr"] for g in opt.param_groups])
        return loss_fn(m, batch)

    c = cfg(max_steps=6, grad_accum=1, eval_interval=0)
    fit(model, recording, batches, c, optimizer=opt)
    for step, (scaled, plain) in enumerate(seen):
        assert plain == pytest.approx(lr_at(step, c)) and scaled == pytest.approx(0.1 * lr_at(step, c))
