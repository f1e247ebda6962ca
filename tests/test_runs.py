"""The run layer: one folder layout, one "finished" rule, variants, load_run, and what fit adds for it."""

import json
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from llmpath.common import write_json
from llmpath.config import ConfigError, RunConfig, TrainConfig, build_config, opt, sub
from llmpath.data import EpochBatches
from llmpath.runs import comparable_config, finished, load_run, run_path, start_run, variant
from llmpath.train import TrainingError, fit, load_checkpoint


@dataclass
class Inner:
    width: int = opt(4, "a model size")


@dataclass
class ToyRun(RunConfig):
    model: Inner = sub(Inner)
    workers: int = opt(1, "processes", result=False)
    train: TrainConfig = sub(TrainConfig)


def toy(tmp_path, *args) -> ToyRun:
    return build_config(ToyRun, [f"--out={tmp_path}", "--name=toy", *args])


def test_comparable_config_drops_exactly_the_options_that_do_not_change_results(tmp_path):
    a = comparable_config(toy(tmp_path))
    b = comparable_config(toy(tmp_path / "elsewhere", "--device=cpu", "--threads=2", "--workers=3", "--no-progress",
                              "--train.resume", "--preset="))
    assert a == b
    assert {"name", "out", "preset", "device", "threads", "workers"}.isdisjoint(a)
    assert {"progress", "resume"}.isdisjoint(a["train"]) and a["model"] == {"width": 4} and "seed" in a
    assert comparable_config(toy(tmp_path, "--width=5")) != a and comparable_config(toy(tmp_path, "--seed=1")) != a
    assert json.loads(json.dumps(a)) == a  # what results.json stores compares equal after the round trip


def test_finished_needs_results_with_the_same_config_and_its_figures(tmp_path):
    cfg = toy(tmp_path)
    assert finished(cfg, "toy") is None
    run = start_run(cfg, "toy")
    fig = run.figures / "a.png"
    fig.write_bytes(b"png")
    res = run.finish({"acc": 0.5, "figures": [fig]})
    assert finished(cfg, "toy") == res == json.loads((run.path / "results.json").read_text())
    assert json.loads((run.path / "config.json").read_text())["model"]["width"] == 4
    assert finished(toy(tmp_path, "--threads=1", "--no-progress"), "toy") == res  # speed options: the same run
    assert finished(toy(tmp_path, "--train.lr=0.5"), "toy") is None  # another run in the same folder
    fig.unlink()
    assert finished(cfg, "toy") is None  # a figure it listed is gone: draw again
    (run.path / "results.json").write_text("{half")
    assert finished(cfg, "toy") is None


def test_variant_is_a_deep_copy_in_its_own_folder(tmp_path):
    cfg = toy(tmp_path)
    v = variant(cfg, "wide", width=8, train__lr=0.1)
    assert (v.name, v.model.width, v.train.lr) == ("toy-wide", 8, 0.1)
    assert (cfg.name, cfg.model.width, cfg.train.lr) == ("toy", 4, TrainConfig().lr)
    assert run_path(v, "toy") == tmp_path / "toy" / "toy-wide"
    assert variant(cfg, "").name == "toy"
    with pytest.raises(ConfigError, match="unknown option '--depth'"):
        variant(cfg, "x", depth=2)


def test_load_run_rebuilds_a_trained_rnn_from_its_checkpoint_alone(tmp_path):
    from llmpath.cli import main

    assert main(["rnn", "train", "--preset=tiny", "--cell=lstm", f"--out={tmp_path}", "--max-steps=3"]) == 0
    run = tmp_path / "rnn" / "tiny-lstm"
    model, tok, cfg = load_run(run)
    ckpt = load_checkpoint(run / "ckpt" / "best.pt")
    assert not model.training and cfg.model.n_hidden > 0 and tok.vocab_size == cfg.model.vocab_size
    assert all(torch.equal(v, ckpt["model"][k]) for k, v in model.state_dict().items())
    assert tok.decode(tok.encode("ROMEO:")) == "ROMEO:"


def test_load_run_says_what_is_wrong_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"no trained model in .*; train one first: llmpath gpt train$"):
        load_run(tmp_path / "gpt" / "nothing")
    (tmp_path / "rnn" / "empty").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no ckpt/best.pt.*llmpath rnn train.*--train.resume"):
        load_run(tmp_path / "rnn" / "empty")
    model = nn.Linear(2, 2)
    fit(model, lambda m, b: m(b).sum(), lambda i: torch.ones(1, 2), TrainConfig(max_steps=1, progress=False),
        run_dir=tmp_path / "plain", evaluate=lambda m: {"val_loss": 1.0}, config={"width": 2})
    with pytest.raises(ConfigError, match="does not say which topic"):
        load_run(tmp_path / "plain")
    fit(model, lambda m, b: m(b).sum(), lambda i: torch.ones(1, 2), TrainConfig(max_steps=1, progress=False),
        run_dir=tmp_path / "bare", evaluate=lambda m: {"val_loss": 1.0})
    with pytest.raises(ConfigError, match="is not an llmpath run checkpoint"):
        load_run(tmp_path / "bare")


def _linear_data():
    torch.manual_seed(0)
    x = torch.randn(64, 3)
    return x, x @ torch.tensor([[1.0], [-2.0], [0.5]])


def test_restore_best_leaves_the_best_weights_in_the_model(tmp_path):
    x, y = _linear_data()
    model = nn.Linear(3, 1)
    evals = iter([0.1, 5.0, 9.0, 9.0])  # the first evaluation is the best; later ones are worse

    def evaluate(m):
        return {"val_loss": next(evals)}

    cfg = TrainConfig(max_steps=8, eval_interval=2, lr=0.05, warmup_steps=0, progress=False)
    fit(model, lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(), lambda i: (x, y), cfg, run_dir=tmp_path,
        evaluate=evaluate, restore_best=True)
    best = load_checkpoint(tmp_path / "ckpt" / "best.pt")
    last = load_checkpoint(tmp_path / "ckpt" / "last.pt")
    assert best["step"] == 2 and last["step"] == 8
    assert all(torch.equal(v, best["model"][k]) for k, v in model.state_dict().items())
    assert not torch.equal(best["model"]["weight"], last["model"]["weight"])


def test_epochs_set_the_steps_from_the_data_size(tmp_path):
    x, y = _linear_data()
    batches = EpochBatches(64, 10, lambda idx: (x[idx], y[idx]))  # 6 full batches a pass
    loss = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()  # noqa: E731
    res = fit(nn.Linear(3, 1), loss, batches, TrainConfig(epochs=3, grad_accum=2, progress=False))
    assert res.step == 3 * 6 // 2
    with pytest.raises(TrainingError, match="--train.epochs needs batches that know the data size"):
        fit(nn.Linear(3, 1), loss, lambda i: (x, y), TrainConfig(epochs=1, progress=False))


def test_fp16_autocast_without_loss_scaling_is_not_offered():
    with pytest.raises(ConfigError, match="invalid value 'fp16' for --amp; choose one of: auto, off, bf16"):
        build_config(TrainConfig, ["--amp=fp16"])


def test_checkpoints_of_a_run_record_its_topic_config_and_tokenizer(tmp_path):
    from llmpath.data import CharTokenizer

    cfg = toy(tmp_path)
    tok = CharTokenizer.train("abc")
    run = start_run(cfg, "toy", tokenizer=tok)
    cfg.model.width = 7  # a size resolved after the run opened: the checkpoint and config.json hold it
    fit(nn.Linear(2, 2), lambda m, b: m(b).sum(), lambda i: torch.ones(1, 2), TrainConfig(max_steps=1, progress=False),
        run=run)
    ckpt = load_checkpoint(run.path / "ckpt" / "last.pt")
    assert ckpt["topic"] == "toy" and ckpt["config"]["model"]["width"] == 7 and ckpt["tokenizer"] == tok.state_dict()
    assert json.loads((run.path / "config.json").read_text())["model"]["width"] == 7
    write_json(run.path / "results.json", {"config": run.key})
    assert run.key["model"]["width"] == 4 and finished(toy(tmp_path), "toy") is not None  # recognised as asked


def test_a_finished_run_whose_figure_went_missing_trains_again_but_other_options_are_refused(tmp_path):
    cfg = toy(tmp_path)
    run = start_run(cfg, "toy")
    fig = run.figures / "a.png"
    fig.write_bytes(b"png")
    run.finish({"figures": [fig]})
    fig.unlink()
    assert finished(cfg, "toy") is None
    start_run(toy(tmp_path), "toy")  # the same options: drawing the run again loses nothing
    with pytest.raises(ConfigError, match=r"already holds a finished run \(model.width differ\)"):
        start_run(toy(tmp_path, "--width=9"), "toy")
