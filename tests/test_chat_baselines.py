"""The course's own models on the chat test items: the right source texts, stage 1's predictions, runs read or missing."""

import importlib
import json
from functools import lru_cache

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from llmpath.chat import baselines as B
from llmpath.chat.data import build_examples, score
from llmpath.config import ConfigError, build_config
from llmpath.data import load_classification
from llmpath.data.corpora import split_indices
from llmpath.mlp import cli as mlp
from llmpath.runs import comparable_config, load_run
from llmpath.seq2seq.data import load_translation
from llmpath.seq2seq.translation import translate_examples

SENTIMENT = ("sentiment-reviews", "sentiment-tweets")
TRANSLATE = ("translate-zh-en", "translate-en-zh")


@lru_cache(maxsize=None)
def items(task: str, n: int = 24) -> list:
    return build_examples(seed=0, max_per_task=0, max_eval=n, tasks=(task,))["test"]


def user_text(e) -> str:
    return "\n".join(m["content"] for m in e.messages[:-1])


@pytest.mark.parametrize("task", SENTIMENT + TRANSLATE)
def test_source_text_is_the_text_in_the_prompt(task):
    exs = items(task)
    assert len(exs) == 24
    for e in exs:
        assert B.source_text(e) in user_text(e)
    if task in TRANSLATE:  # the source is the other side of the reference's pair, in stages 3/4's test split
        test = {(p.src_text, p.tgt_text) for p in load_translation("hsk-pairs", task[-5:], seed=0).test}
        assert all((B.source_text(e), e.reference) in test for e in exs)


def stage1_expected(exs: list, cfg) -> tuple:
    """(stage 1's own label for each example, found by its row in stage 1's test split, not by its text; the MLP,
    the features)."""
    name = exs[0].source_id.partition(":")[0]
    test_idx = split_indices(len(load_classification(name)), (0.8, 0.1, 0.1), seed=cfg.seed)[2]
    row = {int(i): k for k, i in enumerate(test_idx)}
    with threadpool_limits(1):
        f = mlp.features_for(cfg, name)
        model, _ = mlp.train_numpy_mlp(cfg, f)
        pred = model.predict(f.x_test[[row[int(e.source_id.partition(":")[2])] for e in exs]])
    return [{"neg": "negative", "pos": "positive"}.get(n, n) for n in np.array(f.label_names)[pred]], model, f


@pytest.mark.parametrize("task", SENTIMENT)
def test_stage1_predicts_the_chat_items_as_stage1_does(task, tmp_path):
    exs = items(task)
    cfg = build_config(mlp.MLPRun, ["--preset=tiny"], mlp.PRESETS)
    want, model, f = stage1_expected(exs, cfg)
    got, run = B.stage1_answers(exs, "tiny", str(tmp_path))
    assert got == want and run == ""  # no stage 1 run in tmp_path: trained here
    assert len(set(want)) > 1  # the items test something: not one label for all
    res = B.task_model_scores(exs, out=str(tmp_path), preset="tiny")[task]
    assert [r["model"] for r in res] == [B.STAGE1]
    assert res[0]["score"] == {"n": len(exs), "accuracy": 100 * np.mean([w == e.reference for w, e in zip(want, exs)])}

    # a finished stage 1 run of the same options is read, not trained again: its saved weights decide
    run_dir, name = tmp_path / "saved" / "mlp" / "tiny", exs[0].source_id.partition(":")[0]
    (run_dir / name).mkdir(parents=True)
    state = model.state()
    state[-1][:] = 0
    state[-1][0] = 1e6  # the last bias: every text gets the first label
    np.savez(run_dir / name / "numpy_mlp.npz", *state)
    saved_cfg = build_config(mlp.MLPRun, ["--preset=tiny", f"--out={tmp_path / 'saved'}"], mlp.PRESETS)
    (run_dir / "results.json").write_text(json.dumps({"config": comparable_config(saved_cfg)}))
    got, run = B.stage1_answers(exs, "tiny", str(tmp_path / "saved"))
    assert run == str(run_dir) and set(got) == {{"neg": "negative"}.get(f.label_names[0], f.label_names[0])}


def test_missing_runs_give_no_score_and_the_command_that_trains_them(tmp_path):
    exs = items("translate-zh-en", 4) + items("translate-en-zh", 4)
    res = B.task_model_scores(exs, out=str(tmp_path), preset="tiny")
    assert set(res) == set(TRANSLATE)
    assert all(r["score"] is None and r["run"] == "" for rows in res.values() for r in rows)
    hints = [r["hint"] for r in res["translate-zh-en"] + res["translate-en-zh"]]
    assert hints[0].endswith(f"llmpath seq2seq train --preset=tiny --attention=bahdanau --out={tmp_path}")
    assert hints[1].endswith(f"llmpath transformer train --preset=tiny --out={tmp_path}")
    assert "--direction=en-zh" in hints[2] and "--direction=en-zh" in hints[3]
    rows = B.baseline_rows(res)
    assert len(rows) == 4 and all(len(r) == len(B.BASELINE_HEAD) and r[3] == "—" for r in rows)
    # a preset one stage lacks (transformer has no "base") is a row with the reason, not an exception
    res = B.task_model_scores(items("translate-zh-en", 4), out=str(tmp_path), preset="base")["translate-zh-en"]
    assert res[1]["score"] is None and "unknown preset 'base'" in res[1]["hint"]


@pytest.mark.parametrize("topic", ["seq2seq", "transformer"])
def test_a_trained_run_is_found_and_scored_on_the_chat_items(topic, tmp_path):
    cli = importlib.import_module(f"llmpath.{topic}.cli")
    cls = cli.Seq2SeqRun if topic == "seq2seq" else cli.TransformerRun
    cli.train(build_config(cls, ["--preset=tiny", f"--out={tmp_path}", "--train.max_steps=3", "--no-progress",
                                 "--beam=1", "--max_len=12"], cli.PRESETS))
    exs = items("translate-zh-en", 16)
    res = B.task_model_scores(exs, out=str(tmp_path), preset="tiny")
    row = res["translate-zh-en"][[t[1] for t in B.TRANSLATORS].index(topic)]
    path = tmp_path / topic / ("tiny-bahdanau" if topic == "seq2seq" else "tiny")
    assert row["run"] == str(path) and row["hint"] == "" and set(row["score"]) == {"n", "bleu", "chrf"}
    assert row["score"]["n"] == len(exs)

    # independently: the stage's own test pairs for these items, translated by the stage's own code, same score
    data = load_translation("hsk-pairs", "zh-en", seed=0)
    pairs = [next(p for p in data.test if p.tgt_text == e.reference and p.src_text in user_text(e)) for e in exs]
    model, vocab, cfg = load_run(path)
    hyps, _ = translate_examples(model, cli.decode, pairs, vocab, "cpu", 1, cfg.length_penalty, cfg.max_len)
    assert row["score"] == score("translate-zh-en", hyps, exs)
    assert B.translate_items(exs, path) == hyps
    with pytest.raises(ConfigError, match="en-zh"):  # a zh->en run refuses en->zh items
        B.translate_items(items("translate-en-zh", 4), path)
