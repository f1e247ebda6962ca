"""The chat model's base model (llmpath.chat.base): the tiny preset end to end, its tokenizer's chat tokens, the
per-source val losses, reuse of a finished run, and the mixture weights with their one-line errors."""

import json
import math

import pytest

from llmpath.chat import base
from llmpath.chat.base import BaseRun, PRESETS, mixture_table, parse_weights, pretrain_base
from llmpath.chat.data import PRETRAIN_SOURCES
from llmpath.chat.template import IM_END, IM_START, PAD, render
from llmpath.config import ConfigError, build_config
from llmpath.gpt.data import tokenizer_from_state
from llmpath.train import load_checkpoint


def tiny(out, *args) -> BaseRun:
    return build_config(BaseRun, ["--preset=tiny", f"--out={out}", *args], PRESETS)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(config, summary) of the tiny preset trained once in a fresh folder."""
    cfg = tiny(tmp_path_factory.mktemp("runs"))
    return cfg, pretrain_base(cfg)


def test_tiny_preset_trains_end_to_end_and_learns(trained):
    cfg, s = trained
    folder = base.run_path(cfg, "chat")
    assert folder.name == "tiny" and folder.parent.name == "chat"
    assert json.loads((folder / "results.json").read_text(encoding="utf-8"))["val_loss_by_source"] == \
        s["val_loss_by_source"]
    assert s["steps"] == cfg.train.max_steps
    assert s["tokens_seen"] == cfg.train.max_steps * cfg.train.batch_size * cfg.model.block_size
    # an untrained model scores about ln(vocab) per token; 30 steps already do clearly better
    assert s["val_loss"] < math.log(s["vocab_size"]) - 0.3
    assert s["samples"]["zh"].startswith(base.PROMPTS["zh"]) and s["samples"]["en"].startswith(base.PROMPTS["en"])
    assert all(len(x) > len(base.PROMPTS[k]) for k, x in s["samples"].items())  # something was generated
    assert "| hsk |" in mixture_table(s)


def test_tokenizer_has_the_chat_tokens_as_single_ids(trained):
    cfg, s = trained
    ckpt = load_checkpoint(base.run_path(cfg, "chat") / "ckpt" / "best.pt")
    tok = tokenizer_from_state(ckpt["tokenizer"])
    ids = [tok.encode(t, allowed_special="all") for t in (PAD, IM_START, IM_END)]
    assert all(len(i) == 1 for i in ids) and len({i[0] for i in ids}) == 3
    assert all(i[0] < s["vocab_size"] == ckpt["model"]["embed.weight"].shape[0] for i in ids)  # rows to learn
    assert s["special_tokens"] == {PAD: ids[0][0], IM_START: ids[1][0], IM_END: ids[2][0]}
    text = render([{"role": "user", "content": "你好，how are you?"}, {"role": "assistant", "content": "很好。"}])
    enc = tok.encode(text, allowed_special="all")
    assert enc.count(ids[1][0]) == 2 and enc.count(ids[2][0]) == 2 and tok.decode(enc) == text
    # trained on the mixture, not on bytes alone: Chinese and English text take fewer tokens than bytes
    for sample in ("这个酒店的服务很好。", "To be, or not to be, that is the question."):
        assert len(tok.encode(sample)) < 0.8 * len(sample.encode("utf-8"))


def test_every_source_has_its_own_finite_val_loss(trained):
    cfg, s = trained
    losses = s["val_loss_by_source"]
    assert set(losses) == set(PRETRAIN_SOURCES)
    assert all(math.isfinite(v) and 0 < v < math.log(s["vocab_size"]) for v in losses.values())
    assert len({round(v, 4) for v in losses.values()}) == len(losses)  # each measured on its own text
    assert s["train_chars"]["hsk"] > 0 and set(s["weights"]) == set(PRETRAIN_SOURCES)


def test_a_second_call_reuses_the_finished_run(trained, monkeypatch):
    cfg, s = trained

    def no_training(*args, **kwargs):
        raise AssertionError("trained again instead of reusing the finished run")

    monkeypatch.setattr("llmpath.gpt.pretrain.fit", no_training)
    again = pretrain_base(tiny(cfg.out))
    assert again["val_loss_by_source"] == s["val_loss_by_source"] and again["samples"] == s["samples"]
    with pytest.raises(ConfigError, match="already holds a finished run"):  # other weights: another run
        pretrain_base(tiny(cfg.out, "--weights=hsk=0.1"))


def test_the_fit_loop_validates_on_every_source(trained):
    cfg, _ = trained
    train, val = base._joined(cfg)
    per_source = base.base_texts(cfg)
    for name in PRETRAIN_SOURCES:
        assert per_source[1][name][:200] in val  # not only the first source's val text
        assert per_source[1][name][:200] not in train  # val documents are never trained on


def test_weights_parse_and_set_the_epochs_of_each_source():
    assert parse_weights("hsk=4,chatterbot=2") == {"hsk": 4.0, "chatterbot": 2.0}
    assert parse_weights(" wiki = 0.5 , ") == {"wiki": 0.5} and parse_weights("") == {}
    one = base.base_texts(BaseRun(weights=""))[0]
    two = base.base_texts(BaseRun(weights="hsk=2,wiki=0"))[0]
    assert len(two["hsk"]) == 2 * len(one["hsk"]) + 2  # two epochs, one more blank line between them
    assert two["wiki"] == "" and len(two["shakespeare"]) == len(one["shakespeare"])  # one rng: the order moves


@pytest.mark.parametrize("bad", ["hks=4", "hsk", "hsk=x", "hsk=-1", "hsk=1,hsk=2", "hsk=inf",
                                 ",".join(f"{n}=0" for n in PRETRAIN_SOURCES)])
def test_a_bad_weight_string_is_one_line_naming_the_sources(bad):
    with pytest.raises(ConfigError) as e:
        build_config(BaseRun, [f"--weights={bad}"], PRESETS)
    msg = str(e.value)
    assert "\n" not in msg and all(n in msg for n in PRETRAIN_SOURCES), msg


@pytest.mark.parametrize("args, word", [(["--tokenizer=char"], "special tokens"), (["--data=shakespeare"], "mixture")])
def test_options_the_base_model_cannot_take_are_refused(args, word):
    with pytest.raises(ConfigError, match=word):
        build_config(BaseRun, args, PRESETS)
