"""Stage 10 through its CLI: the tables at the tiny preset from a tiny stage-5 GPT, the doctor's check,
one-line errors before any work. The techniques themselves: test_efficient_lora.py, test_efficient_quant.py,
test_efficient_distill.py, test_efficient_figures.py."""

import json

import pytest

from llmpath.cli import main
from llmpath.efficient import cli
from helpers import one_line_error


def efficient(*args) -> int:
    return main(["efficient", *args])


@pytest.fixture(scope="module")
def tiny_gpt(tmp_path_factory):
    """Stage 5's tiny GPT, the starting point of every command."""
    out = tmp_path_factory.mktemp("runs")
    assert main(["gpt", "train", "--preset=tiny", f"--out={out}"]) == 0
    return out


def test_doctor_check():
    assert cli.smoke().startswith("tiny GPT ok")


def test_every_command_refuses_a_missing_pretrained_run_in_one_line(tmp_path, capsys):
    for command in ("lora", "distill", "quantize"):
        assert efficient(command, "--preset=tiny", f"--out={tmp_path}") == 2
        err = one_line_error(capsys)
        assert "llmpath gpt train --preset=tiny" in err, (command, err)
    assert not (tmp_path / "efficient").exists() or not any((tmp_path / "efficient").iterdir())


def test_bad_options_are_one_line_errors(tiny_gpt, capsys):
    assert efficient("lora", "--preset=tiny", f"--out={tiny_gpt}", "--ranks=0") == 2
    assert "--ranks" in one_line_error(capsys)
    assert efficient("lora", "--preset=tiny", f"--out={tiny_gpt}", "--lora.targets=nothing.here", "--ranks=2",
                     "--llama=none", "--name=bad") == 2
    assert "nothing.here" in one_line_error(capsys)
    assert efficient("distill", "--preset=tiny", f"--out={tiny_gpt}", "--temperature=0") == 2
    assert "--temperature" in one_line_error(capsys)


def test_lora_table_at_tiny(tiny_gpt, capsys):
    assert efficient("lora", "--preset=tiny", f"--out={tiny_gpt}", "--ranks=2", "--llama=none") == 0
    table = capsys.readouterr().out
    assert "LoRA r=2" in table and "全量微调" in table
    done = json.loads((tiny_gpt / "efficient" / "tiny-lora-compare" / "results.json").read_text())
    full, lora = done["gpt-full"], done["gpt-r2"]
    assert full["trainable_share"] == 1.0 and 0 < lora["trainable_share"] < 0.2
    assert lora["file_bytes"] < full["file_bytes"] / 5  # the adapter alone is what ships
    assert lora["val_loss"] < lora["before"]["val_loss"]


def test_quantize_table_at_tiny(tiny_gpt, capsys):
    assert efficient("quantize", "--preset=tiny", f"--out={tiny_gpt}", "--rounds=1", "--peers=false") == 0
    out = capsys.readouterr().out
    assert "int8" in out and "int4" in out
    done = json.loads((tiny_gpt / "efficient" / "tiny-quantize" / "results.json").read_text())["gpt"]
    assert done["bars"]["int8 per channel"]["delta"] < done["bars"]["int4 group 32"]["delta"] + 1e-3


def test_distill_table_at_tiny(tiny_gpt, capsys):
    assert efficient("distill", "--preset=tiny", f"--out={tiny_gpt}") == 0
    assert "学生" in capsys.readouterr().out
    done = json.loads((tiny_gpt / "efficient" / "tiny-distill-compare" / "results.json").read_text())
    assert set(done) == {"teacher", "labels", "forward", "reverse"}
    assert done["forward"]["params"] < done["teacher"]["params"] / 2


def test_interleaved_times_alternates_the_functions_after_their_warmup():
    from llmpath.common import interleaved_times

    calls = []
    times = interleaved_times({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=2, steps=2,
                              warmup=1)
    assert calls == ["a", "b", "a", "a", "b", "b", "a", "a", "b", "b"]
    assert set(times) == {"a", "b"} and all(len(t) == 2 and min(t) >= 0 for t in times.values())
