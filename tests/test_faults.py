"""Nothing lost: Ctrl-C at any moment, NaN, two writers, re-runs, bad checkpoints, bad options and bad files.

Each case is in docs/reliability.md with its exit code, message and what survives.
"""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from llmpath.cli import _message, main
from llmpath.config import ConfigError, TrainConfig, leaves
from llmpath.runs import load_run, lock_folder, unlock_folder
from llmpath.train import TrainingError, fit, load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
TINY_GPT = ["gpt", "train", "--preset=tiny", "--train.max_steps=6"]


def _gpt(tmp_path, *args) -> int:
    return main([*TINY_GPT, f"--out={tmp_path}", *args])


def _one_line_error(capsys) -> str:
    """The one `error:` line on stderr (progress lines of a run that started may stand before it)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------ 1. Ctrl-C lands at a step boundary

def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))


def _batches(i: int):
    g = torch.Generator().manual_seed(i)
    x = torch.randn(8, 4, generator=g)
    return x, x.sum(1, keepdim=True)


def _loss(m, b):
    return ((m(b[0]) - b[1]) ** 2).mean()


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"max_steps": 40, "lr": 1e-2, "warmup_steps": 3, "eval_interval": 0, "progress": False,
                          "log_interval": 1, **kw})


def test_ctrl_c_in_the_middle_of_a_step_saves_that_whole_step_and_resumes_bitwise(tmp_path):
    """SIGINT arriving inside the forward pass of step 13 (after dropout drew its random numbers): the checkpoint
    holds 13 whole steps, every AdamW state at step 13, and the resumed run equals the uninterrupted one."""
    ref = _model()
    fit(ref, _loss, _batches, _cfg(), run_dir=tmp_path / "ref")
    calls = {"n": 0}

    def interrupted_loss(m, b):
        calls["n"] += 1
        out = _loss(m, b)
        if calls["n"] == 13:
            os.kill(os.getpid(), signal.SIGINT)  # the handler only takes note
        return out

    with pytest.raises(KeyboardInterrupt):
        fit(_model(), interrupted_loss, _batches, _cfg(), run_dir=tmp_path / "b")
    ckpt = load_checkpoint(tmp_path / "b" / "ckpt" / "last.pt")
    assert ckpt["step"] == 13
    assert {int(s["step"]) for s in ckpt["optimizer"]["state"].values()} == {13}
    resumed = _model()
    fit(resumed, _loss, _batches, _cfg(resume=True), run_dir=tmp_path / "b")
    for k, v in ref.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    rows = [json.loads(r) for r in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 41))  # no step twice, none missing


_SCRIPT = textwrap.dedent("""
    import sys, torch
    from torch import nn
    from llmpath.config import TrainConfig
    from llmpath.train import fit
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, 1))
    def batches(i):
        if i == 0:
            print("started", flush=True)
        g = torch.Generator().manual_seed(i)
        x = torch.randn(16, 8, generator=g)
        return x, x.sum(1, keepdim=True)
    cfg = TrainConfig(max_steps=400, lr=1e-3, warmup_steps=10, eval_interval=0, progress=False,
                      ckpt_interval=150, resume=sys.argv[2] == "resume")
    fit(model, lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(), batches, cfg, run_dir=sys.argv[1])
    torch.save(model.state_dict(), sys.argv[1] + "/final.pt")
""")


def _run_script(folder: Path, mode: str, interrupt_after: float | None = None) -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-c", _SCRIPT, str(folder), mode], stdout=subprocess.PIPE, env=env, text=True)
    if interrupt_after is not None:
        assert p.stdout.readline().strip() == "started"
        time.sleep(interrupt_after)
        p.send_signal(signal.SIGINT)
    return p.wait(timeout=120)


@pytest.mark.slow
def test_sigint_at_random_moments_then_resume_equals_the_uninterrupted_run(tmp_path):
    _run_script(tmp_path / "ref", "fresh")
    want = torch.load(tmp_path / "ref" / "final.pt")
    rng = random.Random(0)
    for trial in range(3):
        folder = tmp_path / f"t{trial}"
        code = _run_script(folder, "fresh", interrupt_after=rng.uniform(0.02, 0.4))
        if code == 0:  # the signal came after the last step: nothing to resume
            continue
        ckpt = load_checkpoint(folder / "ckpt" / "last.pt")
        assert {int(s["step"]) for s in ckpt["optimizer"]["state"].values()} == {ckpt["step"]}
        assert _run_script(folder, "resume") == 0
        got = torch.load(folder / "final.pt")
        assert all(torch.equal(got[k], want[k]) for k in want), f"trial {trial}, interrupted at step {ckpt['step']}"


# ------------------------------------------------------------------ 2. NaN never replaces a good checkpoint

def test_a_diverging_run_keeps_its_last_good_checkpoint(tmp_path, capsys):
    assert _gpt(tmp_path, "--train.lr=1e6", "--train.ckpt_interval=1", "--train.grad_clip=0",
                "--train.warmup_steps=0") == 2
    line = _one_line_error(capsys)
    assert "became" in line and "lower --train.lr" in line
    last = tmp_path / "gpt" / "tiny" / "ckpt" / "last.pt"
    if last.exists():  # it diverged after some steps: the checkpoint it names is whole and finite
        ckpt = load_checkpoint(last)
        assert f"the last good checkpoint is {last} (step {ckpt['step']})" in line
        assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    else:
        assert "no checkpoint was written yet" in line


def test_a_non_finite_weight_is_never_written(tmp_path):
    model = nn.Linear(2, 1)

    def poison(m, b):
        out = m(b).sum()
        if poison.calls == 3:
            with torch.no_grad():
                m.weight[0, 0] = float("nan")  # a weight breaks after the (finite) loss of step 4 was computed
        poison.calls += 1
        return out

    poison.calls = 0
    with pytest.raises(TrainingError, match=r"1 weights became NaN or inf at step 4.*last good checkpoint is .*last.pt \(step 3\)"):
        fit(model, poison, lambda i: torch.ones(1, 2), _cfg(ckpt_interval=1), run_dir=tmp_path)
    assert load_checkpoint(tmp_path / "ckpt" / "last.pt")["step"] == 3


# ------------------------------------------------------------------ 3. one writer per run folder

def test_a_second_writer_is_refused_with_the_owner_pid(tmp_path, capsys):
    folder = tmp_path / "gpt" / "tiny"
    folder.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from llmpath.runs import lock_folder
        lock_folder(Path({str(folder)!r}))
        print("locked", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert _gpt(tmp_path) == 2
        line = _one_line_error(capsys)
        assert f"{folder.resolve()} is being written by another llmpath process (pid {holder.pid})" in line
        assert not (folder / "metrics.jsonl").exists() and not (folder / "config.json").exists()
    finally:
        holder.kill()
        holder.wait()
    assert (folder / ".lock").exists()  # the dead holder's file stays, but its lock went with it
    assert _gpt(tmp_path) == 0


def test_the_same_process_may_reopen_its_own_folder(tmp_path):
    lock_folder(tmp_path)
    lock_folder(tmp_path)
    unlock_folder(tmp_path)


# ------------------------------------------------------------------ 4. nothing finished is overwritten unasked

def test_reruns_reuse_refuse_or_replace_as_asked(tmp_path, capsys):
    run = tmp_path / "gpt" / "tiny"
    assert _gpt(tmp_path) == 0
    best = (run / "ckpt" / "best.pt").read_bytes()
    metrics = (run / "metrics.jsonl").read_text()
    assert _gpt(tmp_path) == 0  # the same options: reused, nothing rewritten
    assert (run / "ckpt" / "best.pt").read_bytes() == best and (run / "metrics.jsonl").read_text() == metrics
    capsys.readouterr()
    assert _gpt(tmp_path, "--train.lr=1e-3") == 2  # other options: refused, nothing rewritten
    assert "already holds a finished run (train.lr differ)" in _one_line_error(capsys)
    assert (run / "ckpt" / "best.pt").read_bytes() == best and (run / "metrics.jsonl").read_text() == metrics
    assert _gpt(tmp_path, "--train.lr=1e-3", "--fresh") == 0  # asked for: replaced
    assert json.loads((run / "results.json").read_text())["config"]["train"]["lr"] == 1e-3


def test_resume_without_a_checkpoint_is_an_error_and_touches_nothing(tmp_path, capsys):
    assert _gpt(tmp_path, "--train.resume") == 2
    assert "has no ckpt/last.pt to continue from" in _one_line_error(capsys)
    assert not (tmp_path / "gpt" / "tiny").exists()


def test_an_interrupted_run_is_continued_or_restarted_only_when_asked(tmp_path, capsys):
    assert _gpt(tmp_path, "--train.stop_at=3") == 0
    (tmp_path / "gpt" / "tiny" / "results.json").unlink()  # as if killed at step 3: last.pt, no results
    capsys.readouterr()
    assert _gpt(tmp_path) == 2
    assert "holds an interrupted run; continue it with --train.resume" in _one_line_error(capsys)
    config = (tmp_path / "gpt" / "tiny" / "config.json").read_text()
    assert _gpt(tmp_path, "--train.resume", "--model.n_embd=64") == 2  # a failed resume rewrites nothing
    assert "holds a model of another shape" in _one_line_error(capsys)
    assert (tmp_path / "gpt" / "tiny" / "config.json").read_text() == config
    assert _gpt(tmp_path, "--train.resume") == 0
    assert json.loads((tmp_path / "gpt" / "tiny" / "results.json").read_text())["steps"] == 6


# ------------------------------------------------------------------ 5. options are range-checked before any work

@pytest.mark.parametrize("args, message", [
    (["--train.grad_accum=0"], "--train.grad_accum=0 is out of range: it must be >= 1"),
    (["--train.batch_size=0"], "--train.batch_size=0 is out of range: it must be >= 1"),
    (["--model.block_size=0"], "--model.block_size=0 is out of range: it must be >= 1"),
    (["--train.max_steps=0"], "--train.max_steps=0 is out of range: it must be >= 1"),
    (["--model.n_embd=-8"], "--model.n_embd=-8 is out of range: it must be >= 1"),
    (["--model.n_embd=0"], "--model.n_embd=0 is out of range: it must be >= 1"),
    (["--model.n_head=3"], "--n_head=3 does not divide --n_embd=32"),
    (["--train.lr=-1"], "--train.lr=-1 is out of range: it must be > 0"),
    (["--train.lr=nan"], "--train.lr=nan is not a finite number"),
    (["--model.n_layer=0"], "--model.n_layer=0 is out of range: it must be >= 1"),
    (["--train.beta2=1"], "--train.beta2=1 is out of range: it must be < 1"),
    (["--data=/tmp"], "'/tmp' is a folder; give a file"),
])
def test_bad_options_get_one_line_and_exit_2_before_any_work(tmp_path, capsys, args, message):
    assert _gpt(tmp_path, *args) == 2
    assert message in _one_line_error(capsys)
    assert not (tmp_path / "gpt").exists()


def test_bad_sampling_options_too(tmp_path, capsys):
    assert main(["gpt", "sample", "--repetition_penalty=0", f"--out={tmp_path}"]) == 2
    assert "--repetition_penalty=0 is out of range: it must be > 0" in _one_line_error(capsys)


TRAIN_CONFIGS = {}
for _topic in ("mlp", "rnn", "seq2seq", "transformer", "gpt", "bert", "vit", "word2vec"):
    import importlib

    _mod = importlib.import_module(f"llmpath.{_topic}.cli")
    TRAIN_CONFIGS[_topic] = (_mod, list(leaves(_mod.COMMANDS["train"].config)))

VALUES = st.one_of(st.sampled_from(["0", "-1", "1", "1e9", "nan", "inf", "-inf", "true", "x", "", "0.5", "1e-9",
                                    "3,4", "none", "-0", "2.5", "00", " 1"]), st.text(max_size=8))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(topic=st.sampled_from(sorted(TRAIN_CONFIGS)), pick=st.integers(0, 10_000), value=VALUES)
def test_any_option_value_parses_or_exits_2_with_one_line(topic, pick, value, monkeypatch, capsys):
    """Property: `llmpath <topic> train --key=value` either gets a valid config or one line and exit 2."""
    mod, keys = TRAIN_CONFIGS[topic]
    key = keys[pick % len(keys)]
    seen = []
    monkeypatch.setitem(mod.COMMANDS, "train", mod.COMMANDS["train"].__class__(
        seen.append, mod.COMMANDS["train"].config, "parse only"))
    capsys.readouterr()
    code = main([topic, "train", "--preset=tiny", f"--{key}={value}"])
    err = capsys.readouterr().err
    if code == 0:
        assert seen and not err
    else:
        assert code == 2 and not seen, (key, value, err)
        assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err


# ------------------------------------------------------------------ 6. bad checkpoints and bad data

def test_damaged_and_foreign_checkpoints_are_one_line(tmp_path, capsys):
    assert _gpt(tmp_path) == 0
    run = tmp_path / "gpt" / "tiny"
    assert main(["rnn", "sample", f"--run={run}"]) == 2
    assert "holds a gpt model, written by `llmpath gpt train`" in _one_line_error(capsys)
    best = run / "ckpt" / "best.pt"
    best.write_bytes(best.read_bytes()[:1000])  # truncated
    assert main(["gpt", "sample", f"--run={run}"]) == 2
    assert f"checkpoint {best} is damaged or not an llmpath checkpoint" in _one_line_error(capsys)
    best.write_bytes(os.urandom(5000))
    assert main(["gpt", "sample", f"--run={run}"]) == 2
    assert "is damaged" in _one_line_error(capsys)
    with pytest.raises(ConfigError, match="does not exist|no trained model"):
        load_run(tmp_path / "nope")


def test_a_missing_run_folder_is_one_line(tmp_path, capsys):
    assert main(["gpt", "sample", f"--run={tmp_path / 'nope'}"]) == 2
    assert f"no folder at {tmp_path / 'nope'}" in _one_line_error(capsys)
    assert main(["gpt", "sample", "--run=runs/surely-not-here"]) == 2  # a typo is not a hub name: no download
    assert "no folder at runs/surely-not-here" in _one_line_error(capsys)


def test_binary_and_non_utf8_files(tmp_path, capsys, caplog):
    binary = tmp_path / "model.txt"
    binary.write_bytes(bytes(range(256)) * 40)
    assert _gpt(tmp_path, f"--data={binary}") == 2
    assert "is not UTF-8 text" in _one_line_error(capsys)
    gbk = tmp_path / "gbk.txt"
    gbk.write_bytes("中文文本，另一种编码。".encode("gbk") * 500)
    assert _gpt(tmp_path, f"--data={gbk}") == 2
    assert "convert it to UTF-8 first" in _one_line_error(capsys)
    mostly = tmp_path / "mostly.txt"
    mostly.write_bytes(("To be, or not to be.\n" * 300).encode() + b"\xff\xfe bad bytes\n")
    assert _gpt(tmp_path, f"--data={mostly}", "--name=mostly") == 0
    assert "warning: 2 bytes of" in capsys.readouterr().err + caplog.text


def test_a_text_too_short_for_one_block_and_a_text_without_newlines(tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("abc abc abc")
    assert _gpt(tmp_path, f"--data={short}") == 2
    assert "too few for one window of block_size=32" in _one_line_error(capsys)
    assert not (tmp_path / "gpt" / "tiny").exists()
    flat = tmp_path / "flat.txt"
    flat.write_text("the quick brown fox jumps over the lazy dog " * 400)  # no "\n" anywhere
    assert _gpt(tmp_path, f"--data={flat}", "--name=flat") == 0
    assert json.loads((tmp_path / "gpt" / "flat" / "results.json").read_text())["sample"]


def test_os_errors_are_printed_whole():
    e = OSError(28, "No space left on device", "runs/x/ckpt/last.pt.tmp")
    assert _message(e) == "[Errno 28] No space left on device: 'runs/x/ckpt/last.pt.tmp'"
    assert _message(ConfigError("one line")) == "one line"


def test_an_unexpected_error_is_one_line_unless_debug(tmp_path, monkeypatch, capsys):
    mod = __import__("llmpath.gpt.cli", fromlist=["COMMANDS"])

    def boom(cfg):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setitem(mod.COMMANDS, "train", mod.COMMANDS["train"].__class__(boom, mod.COMMANDS["train"].config, "x"))
    assert main(["gpt", "train", f"--out={tmp_path}"]) == 1
    assert "ZeroDivisionError: division by zero (unexpected" in _one_line_error(capsys)
    with pytest.raises(ZeroDivisionError):
        main(["gpt", "train", f"--out={tmp_path}", "--debug"])


def test_out_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main([*TINY_GPT, f"--out={tmp_path / 'afile'}"]) == 2
    assert "cannot create run folder" in _one_line_error(capsys)
