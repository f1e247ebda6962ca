"""The course's task-specific models on the chat model's test items: the other half of the per-task table.

    test = build_examples(seed=0)["test"]
    scores = task_model_scores(test, out="runs", preset="small")
    scores["sentiment-tweets"]  # [{"model": "第 1 章 MLP（TF-IDF）", "run": "", "hint": "", "score": {"n": 200, ...}}]
    scores["translate-zh-en"]   # [{"model": "第 3 章 Bahdanau GRU", ...}, {"model": "第 4 章 Transformer", ...}]
    print(markdown_table(BASELINE_HEAD, baseline_rows(scores)))

Which models, on which items. data.py keeps the splits of the stages that trained a model on the same source
(reviews and tweets: stage 1's 80/10/10; hsk-pairs: stages 3/4's 90/5/5), so every chat test item is a test item of
those stages too, and the numbers here are theirs on items none of the models has seen:

    sentiment-reviews, -tweets  stage 1's NumPy MLP on TF-IDF features. A finished `llmpath mlp train` run of the
                                preset (<out>/mlp/<preset>/<dataset>/numpy_mlp.npz) is loaded; without one the MLP
                                is trained here with stage 1's own functions and preset, on its train split
                                (small: about 15 s a dataset on 2 cores; cached for the process). Stage 1 keeps no vectorizer: the TF-IDF
                                vocabulary is fitted again on the train split, which gives the same one.
    translate-zh-en, -en-zh     stage 3's Bahdanau GRU (<out>/seq2seq/<preset>-bahdanau[-en-zh]) and stage 4's
                                Transformer (<out>/transformer/<preset>[-en-zh]), read with load_run and decoded
                                with the stage's own decode function (greedy unless beam > 1). `llmpath tour`
                                trains only zh->en; the en->zh rows stay empty until `--direction=en-zh` is trained.

A model reads an item's source text as its stage does, recovered from the item's source id (`source_text`), never
from the chat prompt. Its answers are scored by data.score, the function the chat model's answers go through, so
the two sides of the table are computed alike. One difference stays: stages 3/4 write lower-cased English (their
vocabulary is), which costs them a little case-sensitive BLEU here; their own tables score without case.

A missing run is a row with score None and, in "hint", the command that trains it: the table shows "—".
"""

from __future__ import annotations

import importlib
from collections import defaultdict
from functools import lru_cache
from pathlib import Path

import numpy as np

from llmpath.chat.data import TASKS, Example, _hsk, score
from llmpath.chat.evaluate import METRIC_NAMES, SCORED, main_number
from llmpath.config import ConfigError, build_config
from llmpath.data.corpora import DataError, load_classification
from llmpath.runs import finished, load_run, run_path

STAGE1 = "第 1 章 MLP（TF-IDF）"
TRANSLATORS = (  # (label, topic, the run's config class, options that name its run besides preset and direction)
    ("第 3 章 Bahdanau GRU", "seq2seq", "Seq2SeqRun", ("--attention=bahdanau",)),
    ("第 4 章 Transformer", "transformer", "TransformerRun", ()),
)
BASELINE_HEAD = ["任务", "模型", "指标", "得分", "chrF", "运行"]


# ---------------------------------------------------------------------- source texts

@lru_cache(maxsize=1)
def _hsk_sources() -> dict[tuple[str, str, str], tuple[str, ...]]:
    """(direction, source id, target sentence) -> the source sentences of that pair (one, bar a few train items)."""
    out = defaultdict(list)
    for sid, zh, en, _ in _hsk():
        out["zh-en", sid, en].append(zh)
        out["en-zh", sid, zh].append(en)
    return {k: tuple(dict.fromkeys(v)) for k, v in out.items()}


def source_text(example: Example) -> str:
    """The text a course model reads for a sentiment or translation example, found from its source id.

    A review or tweet id is an index into load_classification; an hsk id names a group of pairs that share a
    sentence, so the reference (the target side) picks the pair. source_text(tweets example "tweets:812") -> the tweet
    """
    source, _, key = example.source_id.partition(":")
    if source in ("chinese-reviews", "tweets"):
        return load_classification(source).texts[int(key)]
    if source == "hsk" and example.task.startswith("translate-"):
        found = _hsk_sources().get((example.task[-5:], example.source_id, example.reference), ())
        if len(found) > 1:  # two sources, one translation, one group: no test item is such a pair (tested); the
            # example's own messages then tell which one it was built from
            found = tuple(s for s in found if any(s in m["content"] for m in example.messages)) or found
        if found:
            return found[0]
    raise DataError(f"no source text for '{example.source_id}' ({example.task}); only sentiment and translation "
                    f"examples from build_examples have one")


# --------------------------------------------------------------------------- stage 1

@lru_cache(maxsize=8)
def _stage1(name: str, preset: str, out: str) -> tuple:
    """(TF-IDF vectorizer, NumPy MLP, label names, run folder or "") of stage 1 on one dataset."""
    from threadpoolctl import threadpool_limits  # comes with scikit-learn

    from llmpath.mlp import cli as mlp
    from llmpath.mlp.numpy_mlp import MLP

    cfg = build_config(mlp.MLPRun, [f"--preset={preset}", f"--out={out}"], mlp.PRESETS)
    with threadpool_limits(cfg.threads if cfg.threads > 0 else None):  # as stage 1 caps NumPy's BLAS
        f = mlp.features_for(cfg, name)
        saved = run_path(cfg, mlp.TOPIC) / name / "numpy_mlp.npz"
        if saved.exists() and finished(cfg, mlp.TOPIC) is not None:  # a finished run of these very options
            m = MLP((f.n_features, cfg.hidden, len(f.label_names)), cfg.activation, dropout=cfg.dropout)
            with np.load(saved) as z:
                m.load_state([z[f"arr_{i}"] for i in range(len(z.files))])
            return f.vectorizer, m, f.label_names, str(saved.parent.parent)
        m, _ = mlp.train_numpy_mlp(cfg, f)  # its own seeds: the same weights a run of the preset saves
    return f.vectorizer, m, f.label_names, ""


def stage1_answers(examples: list[Example], preset: str = "small", out: str = "runs") -> tuple[list[str], str]:
    """(stage 1's label per example, "positive"/"negative"/"neutral"; the run folder it was read from, or "" when
    trained here). All examples come from one dataset."""
    names = {e.source_id.partition(":")[0] for e in examples}
    if len(names) != 1 or not names <= {"chinese-reviews", "tweets"}:
        raise DataError(f"stage 1 labels reviews or tweets, one dataset at a time; got {', '.join(sorted(names))}")
    return stage1_labels([source_text(e) for e in examples], names.pop(), preset, out)


def stage1_labels(texts: list[str], dataset: str, preset: str = "small", out: str = "runs") -> tuple[list[str], str]:
    """(stage 1's label of each text, "positive"/"negative"/"neutral"; the run folder it was read from, or "" when
    trained here). `dataset` is the one its classifier learned: chinese-reviews or tweets. The alignment stage uses
    it as a judge its reinforcement learning never saw."""
    vec, model, label_names, run = _stage1(dataset, preset, str(out))
    pred = model.predict(vec.transform(list(texts)))
    words = [{"neg": "negative", "pos": "positive"}.get(n, n) for n in label_names]
    return [words[k] for k in pred], run


# ----------------------------------------------------------------------- stages 3, 4

def translation_run(topic: str, direction: str, preset: str = "small", out: str = "runs") -> tuple[Path, str]:
    """(the run folder stage 3 or 4 trains for these options, the command that trains it)."""
    _, _, cls, extra = next(t for t in TRANSLATORS if t[1] == topic)
    cli = importlib.import_module(f"llmpath.{topic}.cli")
    args = [f"--preset={preset}", *extra] + ([f"--direction={direction}"] if direction != "zh-en" else [])
    cfg = build_config(getattr(cli, cls), args + [f"--out={out}"], cli.PRESETS)
    cfg.name = cli.run_name(cfg)
    hint = f"llmpath {topic} train " + " ".join(args + ([f"--out={out}"] if str(out) != "runs" else []))
    return run_path(cfg, topic), hint


def translate_items(examples: list[Example], path: str | Path, beam: int = 1) -> list[str]:
    """The translations a stage 3/4 run gives the examples' source sentences, in order (greedy at beam 1).

    Raises ConfigError when the folder holds no run, or one trained on another direction, data or split.
    """
    from llmpath.seq2seq.data import TOKENIZE
    from llmpath.seq2seq.data import Example as Pair
    from llmpath.seq2seq.translation import translate_examples

    model, vocab, cfg = load_run(path)
    topic = type(cfg).__module__.split(".")[1]
    if topic not in {t[1] for t in TRANSLATORS}:
        raise ConfigError(f"{path} holds a {topic} run, not a stage 3/4 translation run")
    direction = {e.task[-5:] for e in examples}
    if cfg.data != "hsk-pairs" or cfg.seed != 0 or {cfg.direction} != direction:  # data.py holds out seed 0's test
        raise ConfigError(f"{path} translates {cfg.data} {cfg.direction} (seed {cfg.seed}); these items need "
                          f"hsk-pairs {'/'.join(sorted(direction))} with seed 0, whose test split they belong to")
    pairs = [Pair(s, e.reference, TOKENIZE[vocab.src_lang](s), []) for e in examples for s in [source_text(e)]]
    decode = importlib.import_module(f"llmpath.{topic}.cli").decode
    hyps, _ = translate_examples(model, decode, pairs, vocab, next(model.parameters()).device, beam,
                                 cfg.length_penalty, cfg.max_len)
    return hyps


# ------------------------------------------------------------------------------ table

def task_model_scores(test_examples: list[Example], out: str = "runs", preset: str = "small",
                      beam: int = 1) -> dict[str, list[dict]]:
    """Per task a course model covers: [{"model", "run", "hint", "score"}, ...], one dict per model.

    "score" is data.score's dict on the task's examples ({"n", "accuracy"} or {"n", "bleu", "chrf"}), or None
    when the model's run is missing; "run" is the folder the model was read from ("" when stage 1 trained here);
    "hint" says why a score is missing and the command that trains the run.
    """
    by_task: dict[str, list[Example]] = defaultdict(list)
    for e in test_examples:
        by_task[e.task].append(e)
    out_rows: dict[str, list[dict]] = {}
    for task in (t for t in TASKS if by_task.get(t)):
        items = by_task[task]
        if task.startswith("sentiment-"):
            try:
                answers, run = stage1_answers(items, preset, out)
                row = {"model": STAGE1, "run": run, "hint": "", "score": score(task, answers, items)}
            except ConfigError as e:  # a preset stage 1 does not have
                row = {"model": STAGE1, "run": "", "hint": f"llmpath mlp: {e}", "score": None}
            out_rows[task] = [row]
        elif task.startswith("translate-"):
            out_rows[task] = [_translation_row(label, topic, task, items, out, preset, beam)
                              for label, topic, _, _ in TRANSLATORS]
    return out_rows


def _translation_row(label: str, topic: str, task: str, items: list[Example], out: str, preset: str,
                     beam: int) -> dict:
    try:
        path, hint = translation_run(topic, task[-5:], preset, out)
    except ConfigError as e:  # a preset this stage does not have
        return {"model": label, "run": "", "hint": f"llmpath {topic}: {e}", "score": None}
    if not (path / "ckpt" / "best.pt").exists():
        return {"model": label, "run": "", "hint": f"no trained run in {path}; train it: {hint}", "score": None}
    try:
        hyps = translate_items(items, path, beam)
    except ConfigError as e:  # a run of other data, direction or split in the folder
        return {"model": label, "run": str(path), "hint": str(e), "score": None}
    return {"model": label, "run": str(path), "hint": "", "score": score(task, hyps, items)}


def baseline_rows(scores: dict[str, list[dict]]) -> list[list[str]]:
    """Rows of BASELINE_HEAD: task, model, metric, its value ("—" without a run), chrF, run folder or hint."""
    rows = []
    for task, models in scores.items():
        metric = METRIC_NAMES[SCORED[task]]
        for r in models:
            value = main_number(task, r["score"])
            chrf = (r["score"] or {}).get("chrf")
            rows.append([TASKS[task][0], r["model"], metric, "—" if value is None else f"{value:.2f}",
                         "" if chrf is None else f"{chrf:.1f}",
                         r["hint"] if r["score"] is None else r["run"] or "（未找到运行，按预设在此训练）"])
    return rows
