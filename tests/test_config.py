"""Config overrides, presets and their one-line errors."""

import json
from dataclasses import dataclass
from typing import Literal, Optional

import pytest

from llmpath.config import (ConfigError, RunConfig, TrainConfig, build_config, from_dict, help_text, opt,
                            save_config, split_argv, sub, to_dict)


@dataclass
class ModelCfg:
    n_layer: int = opt(2, "layers")
    cell: Literal["rnn", "lstm", "gru"] = opt("lstm", "cell type")
    dropout: float = opt(0.0, "dropout")
    sizes: tuple[int, ...] = opt((8, 8), "hidden sizes")
    note: Optional[str] = opt(None, "free text")


@dataclass
class Run(RunConfig):
    data: str = opt("shakespeare", "dataset")
    model: ModelCfg = sub(ModelCfg)
    train: TrainConfig = sub(TrainConfig)


PRESETS = {"tiny": {"model.n_layer": 1, "train.max_steps": 5}, "small": {"train.max_steps": 500}}


def test_defaults_preset_and_overrides():
    c = build_config(Run, [], PRESETS)
    assert c.preset == "small" and c.name == "small" and c.train.max_steps == 500
    c = build_config(Run, ["--preset=tiny", "--train.lr=3e-4", "--cell", "gru", "--n-layer=3", "--no-progress",
                           "--sizes=16,32", "--note=none", "--max_steps=1e3"], PRESETS)
    assert (c.model.n_layer, c.model.cell, c.train.lr, c.train.progress) == (3, "gru", 3e-4, False)
    assert c.model.sizes == (16, 32) and c.model.note is None and c.train.max_steps == 1000
    assert c.preset == "tiny" and c.name == "tiny"


def test_preset_applies_before_overrides_regardless_of_order():
    c = build_config(Run, ["--n_layer=4", "--preset=tiny"], PRESETS)
    assert c.model.n_layer == 4


@pytest.mark.parametrize("argv, message", [
    (["--lrr=1"], r"unknown option '--lrr'; did you mean --lr\?"),
    (["--preset=smal"], r"unknown preset 'smal'; choose one of: tiny, small"),
    (["--train.lr=abc"], r"--train.lr expects a number, got 'abc'"),
    (["--n_layer=1.5"], r"--model.n_layer expects an integer"),
    (["--cell=gruu"], r"invalid value 'gruu' for --model.cell; choose one of: rnn, lstm, gru"),
    (["--progress=maybe"], r"expects true or false"),
    (["stray"], r"unexpected argument 'stray'"),
])
def test_errors_are_one_line(argv, message):
    with pytest.raises(ConfigError, match=message) as e:
        build_config(Run, argv, PRESETS)
    assert "\n" not in str(e.value)


def test_ambiguous_leaf_name():
    @dataclass
    class Two(RunConfig):
        a: ModelCfg = sub(ModelCfg)
        b: ModelCfg = sub(ModelCfg)

    with pytest.raises(ConfigError, match="ambiguous; use one of: --a.dropout, --b.dropout"):
        build_config(Two, ["--dropout=0.1"], {})


def test_positional_fills_field():
    @dataclass
    class Sample(RunConfig):
        prompt: str = opt("", "prompt")

    assert build_config(Sample, ["ROMEO:"], {}, positional=("prompt",)).prompt == "ROMEO:"


def test_split_argv():
    assert split_argv(["--a=1", "--b", "2", "--flag", "x", "--no-c"]) == ({"a": "1", "b": "2", "flag": "x", "c": "false"}, [])
    is_flag = lambda k: k == "flag"  # noqa: E731
    assert split_argv(["--flag", "x", "--flag2", "y"], is_flag) == ({"flag": "true", "flag2": "y"}, ["x"])
    assert split_argv(["--flag", "off"], is_flag) == ({"flag": "off"}, [])


def test_bool_flag_before_positional():
    @dataclass
    class Sample(RunConfig):
        prompt: str = opt("", "prompt")
        stream: bool = opt(False, "stream")

    c = build_config(Sample, ["--stream", "ROMEO:"], {}, positional=("prompt",))
    assert c.stream is True and c.prompt == "ROMEO:"


def test_config_json_round_trip(tmp_path):
    c = build_config(Run, ["--preset=tiny", "--sizes=4,5"], PRESETS)
    save_config(c, tmp_path / "config.json")
    d = json.loads((tmp_path / "config.json").read_text())
    assert d["model"]["n_layer"] == 1
    assert from_dict(Run, d) == c
    assert json.loads(json.dumps(to_dict(from_dict(Run, d)))) == d


def test_help_lists_every_option():
    text = help_text(Run, PRESETS)
    assert "--train.lr=" in text and "--model.cell=lstm" in text and "presets: tiny, small" in text
