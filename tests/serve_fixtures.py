"""Shared by the playground's tests: tiny trained runs (built once per test session) and a live server on loopback.

    root = tiny_runs(tmp_path_factory)        # runs/{gpt/tiny, bert/tiny, transformer/tiny, chat/tiny, chat/tiny-sft}
    with running_server(root) as url: ...     # uvicorn on 127.0.0.1, a free port, in a thread
"""

from __future__ import annotations

from pathlib import Path

TINY_RUNS = (("gpt", "train"), ("bert", "train"), ("transformer", "train"), ("chat", "pretrain"), ("chat", "sft"))
REPORT = "<!doctype html><html><body><h1>llmpath tour report</h1></body></html>"


def make_tiny_runs(root: Path) -> list[str]:
    """Train the tiny preset of a char GPT, a BERT, a Transformer and a chat model (base + SFT) into root, the
    way a learner does (the CLI), plus a stand-in tour report. Returns the run ids."""
    from llmpath.cli import main

    for topic, command in TINY_RUNS:
        rc = main([topic, command, "--preset=tiny", f"--out={root}", "--train.progress=false"])
        assert rc == 0, f"llmpath {topic} {command} --preset=tiny failed"
    (root / "tour").mkdir(exist_ok=True)
    (root / "tour" / "report.html").write_text(REPORT)
    return ["gpt/tiny", "bert/tiny", "transformer/tiny", "chat/tiny", "chat/tiny-sft"]


def tiny_runs(tmp_path_factory) -> Path:
    """One runs folder for the whole session, also across pytest-xdist workers (the first one builds it)."""
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent  # the same folder for every xdist worker of this session
    root = shared / "serve-runs"
    with FileLock(str(shared / "serve-runs.lock")):
        if not (root / ".built").exists():
            root.mkdir(exist_ok=True)
            make_tiny_runs(root)
            (root / ".built").touch()
    return root


def running_server(runs_dir: Path, **limits):
    """The playground app under uvicorn on 127.0.0.1, a free port, in a thread; yields its base URL."""
    from llmpath.serve.app import Limits, background_server

    return background_server(runs_dir, limits=Limits(**limits))
