"""`llmpath word2vec ...`: train word vectors, compare with gensim, nearest neighbours, figures, tour.

    llmpath word2vec train                                  # preset small: CBOW on the Wikipedia sample
    llmpath word2vec train --model.arch=skipgram --train.lr=0.025 --name=small-sg
    llmpath word2vec compare                                # ours vs gensim, CBOW and skip-gram, 3 seeds, one table
    llmpath word2vec neighbors --words=king,three,paris     # nearest words by cosine
    llmpath word2vec train --corpus=chinese-words --name=small-zh   # Chinese reviews cut by jieba
    llmpath word2vec figures                                # PCA of word groups; static vs contextual (BERT)
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from llmpath.common import log, map_processes, markdown_table, setup_logging, write_json
from llmpath.config import Command, ConfigError, build_config, opt
from llmpath.plotting import save_fig
from llmpath.runs import open_folder, run_path, sub_config, variant
from llmpath.tour import StageResult
from llmpath.word2vec.data import WindowBatch
from llmpath.word2vec.evaluate import nearest
from llmpath.word2vec.figures import (CHINESE_GROUPS, CONTEXT_PAIRS, ENGLISH_GROUPS, contextual_figure, contextual_rows,
                                      pca_figure)
from llmpath.word2vec.model import Word2Vec, Word2VecConfig, loss_fn
from llmpath.word2vec.training import TOPIC, Word2VecRun, gensim_reference, load_vectors, train, vectors_of

_SGD = {"train.schedule": "linear", "train.min_lr_ratio": 1e-4, "train.warmup_steps": 0, "train.weight_decay": 0.0,
        "train.grad_clip": 0.0, "train.eval_interval": 0, "threads": 1}
PRESETS: dict[str, dict] = {
    "tiny": {**_SGD, "corpus": "shakespeare", "max_sentences": 3000, "min_count": 3, "window": 3, "model.n_embd": 16,
             "train.epochs": 1, "train.batch_size": 256, "train.lr": 0.05, "train.log_interval": 5,
             "train.progress": False},
    # word2vec's CBOW settings, but a window of 10 and alpha 0.1 (5 epochs of a 400k-word corpus is little training)
    "small": {**_SGD, "corpus": "wiki", "min_count": 5, "window": 10, "negative": 5, "sample": 1e-3, "model.n_embd": 50,
              "train.epochs": 5, "train.batch_size": 512, "train.lr": 0.1, "train.log_interval": 50},
}


def train_cmd(cfg: Word2VecRun) -> dict:
    """Train word vectors (or reuse a finished run) and print the three evaluations."""
    res = train(cfg)
    print(markdown_table(["WordSim-353", "SimLex-999", "类比准确率", "词表", "词/秒"],
                         [[f"{res['wordsim353']:.3f}", f"{res['simlex999']:.3f}", f"{res['analogy_acc']:.3f}",
                           f"{res['vocab_size']:,}", f"{res['words_per_s']:,}"]]))
    return res


# ---------------------------------------------------------------------------- compare

@dataclass
class CompareRun(Word2VecRun):
    seeds: int = opt(3, "seeds per model (mean and standard deviation over them)", min=1)
    archs: str = opt("cbow,skipgram", "which architectures: cbow, skipgram or both")
    sg_lr: float = opt(0.025, "learning rate of the skip-gram runs (word2vec's default for skip-gram)", above=0)
    workers: int = opt(1, "runs side by side, one process (one core) each", result=False, min=1)


def _run_one(item: tuple[str, Word2VecRun]) -> dict:
    """One cell of the comparison: ("ours" | "gensim", config) -> results (module level: runs in a worker process)."""
    kind, cfg = item
    torch.set_num_threads(1)
    return train(cfg) if kind == "ours" else gensim_reference(cfg, workers=1)


def compare(cfg: CompareRun) -> dict:
    """Ours vs gensim.models.Word2Vec at equal settings over several seeds: one table, in <name>-compare/."""
    setup_logging()
    archs = [a.strip() for a in cfg.archs.split(",") if a.strip()]
    if not archs or any(a not in ("cbow", "skipgram") for a in archs):
        raise ConfigError(f"--archs={cfg.archs}: choose cbow, skipgram or cbow,skipgram")
    items = []
    for arch in archs:
        for s in range(cfg.seeds):
            lr = cfg.sg_lr if arch == "skipgram" else cfg.train.lr
            one = variant(cfg, f"{arch}-seed{s}", **{"model.arch": arch, "seed": s, "train.lr": lr})
            base = sub_config(one, Word2VecRun)  # the run folder records the training options only
            items += [("ours", base), ("gensim", base)]
    results = map_processes(_run_one, items, cfg.workers)
    rows: dict[str, list[dict]] = {}
    for (kind, c), r in zip(items, results):
        rows.setdefault(f"{kind}-{c.model.arch}", []).append(r)
    out = open_folder(replace(cfg, name=f"{cfg.name or cfg.preset or 'small'}-compare"), TOPIC)
    summary = {"rows": rows, "means": {k: _stats(v) for k, v in rows.items()}}
    write_json(out / "results.json", summary)
    print(compare_table(summary))
    return summary


def _stats(runs: list[dict]) -> dict:
    out = {}
    for key in ("wordsim353", "simlex999", "analogy_acc", "words_per_s"):
        vals = [r[key] for r in runs]
        out[key] = statistics.mean(vals)
        out[key + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
    for key in ("wordsim353_oov", "simlex999_oov", "analogy_oov", "wordsim353_pairs", "simlex999_pairs",
                "analogy_questions", "vocab_size"):
        out[key] = runs[0][key]
    out["seeds"] = len(runs)
    return out


NAMES = {"ours-cbow": "我们的 CBOW", "gensim-cbow": "gensim CBOW（sg=0）", "ours-skipgram": "我们的 skip-gram",
         "gensim-skipgram": "gensim skip-gram（sg=1）"}


def compare_table(summary: dict) -> str:
    """Rows = models; WordSim-353, SimLex-999 (Spearman), analogy accuracy as mean ± std over seeds; words/s."""
    m = summary["means"]
    rows = []
    for key, name in NAMES.items():
        if key not in m:
            continue
        s = m[key]
        peer = m.get("gensim-" + key.split("-")[1], s)
        rows.append([name, f"{s['wordsim353']:.3f} ± {s['wordsim353_std']:.3f}", f"{s['simlex999']:.3f} ± {s['simlex999_std']:.3f}",
                     f"{s['analogy_acc']:.3f} ± {s['analogy_acc_std']:.3f}", f"{s['words_per_s']:,.0f}",
                     f"{peer['words_per_s'] / s['words_per_s']:.2f}×"])
    any_row = next(iter(m.values()))
    table = markdown_table(["模型", "WordSim-353", "SimLex-999", "类比（3CosAdd）", "词/秒", "gensim 速度 / 此行"], rows)
    return table + (f"\n\n均值 ± 标准差，{any_row['seeds']} 个种子；词表 {any_row['vocab_size']:,} 词。"
                    f"WordSim-353 用 {any_row['wordsim353_pairs']} 对（{any_row['wordsim353_oov']} 对含词表外的词），"
                    f"SimLex-999 用 {any_row['simlex999_pairs']} 对（{any_row['simlex999_oov']} 对词表外），"
                    f"类比 {any_row['analogy_questions']:,} 题（{any_row['analogy_oov']:,} 题词表外）。")


# ---------------------------------------------------------------------------- neighbours

@dataclass
class NeighborsRun(Word2VecRun):
    words: str = opt("king,three,france,music", "comma-separated words to look up")
    run: str = opt("", "run folder (default: <out>/word2vec/<name or preset>)")
    k: int = opt(8, "neighbours per word", min=1)


def neighbors(cfg: NeighborsRun) -> dict:
    """The k nearest words (cosine) of each word in --words."""
    setup_logging()
    vecs = load_vectors(cfg.run) if cfg.run else vectors_of(cfg)
    words = [w.strip() for w in cfg.words.split(",") if w.strip()]
    if not words:
        raise ConfigError("--words is empty; give comma-separated words, e.g. --words=king,three")
    out = {w: nearest(vecs.matrix, vecs.words, vecs.index, w, cfg.k) for w in words}
    for w, near in out.items():
        print(f"{w}: " + "  ".join(f"{n} {s:.2f}" for n, s in near))
    return out


# ---------------------------------------------------------------------------- figures

@dataclass
class FiguresRun(Word2VecRun):
    run: str = opt("", "English run folder (default: <out>/word2vec/<name or preset>)")
    zh_run: str = opt("", "Chinese run folder (default: <out>/word2vec/<name>-zh, drawn when it exists)")
    bert_run: str = opt("", "BERT run for the contextual vectors (default: <out>/bert/small, used when it exists)")


def figures(cfg: FiguresRun) -> list[Path]:
    """PCA of English word groups; of Chinese sentiment words when a Chinese run exists; static vs contextual."""
    setup_logging()
    src = Path(cfg.run) if cfg.run else run_path(cfg, TOPIC)
    vecs = load_vectors(src)
    out = [save_fig(pca_figure(*vecs, ENGLISH_GROUPS, "词向量的二维投影（维基百科样本）"), src / "figures" / "pca_en.png")]
    zh = Path(cfg.zh_run) if cfg.zh_run else src.parent / f"{src.name}-zh"
    if (zh / "ckpt" / "best.pt").exists():
        zv = load_vectors(zh)
        out.append(save_fig(pca_figure(*zv, CHINESE_GROUPS, "中文评论的词向量（jieba 分词）"), src / "figures" / "pca_zh.png"))
    else:
        log.info(f"no Chinese run in {zh}: train one with `llmpath word2vec train --corpus=chinese-words --name={zh.name}`")
    bert = Path(cfg.bert_run) if cfg.bert_run else Path(cfg.out) / "bert" / "small"
    if (bert / "ckpt" / "best.pt").exists():
        from llmpath.bert.pretrain import BERTRun, load_pretrained  # stage 6: contextual vectors come from it

        model, tok, _ = load_pretrained(bert, BERTRun())
        rows = contextual_rows(model, tok, vecs.index, CONTEXT_PAIRS)
        write_json(src / "contextual.json", rows)
        out.append(save_fig(contextual_figure(rows), src / "figures" / "static_vs_contextual.png"))
        for r in rows:
            print(f"{r['word']}: BERT cosine with the same sense {r['same_sense_cos']:.3f}, with the other sense "
                  f"{r['other_sense_cos']:.3f} (word2vec: 1.000 for both)")
    else:
        log.info(f"no BERT run in {bert}: skipping static vs contextual (train one with `llmpath bert train`)")
    for p in out:
        log.info(f"wrote {p}")
    return out


# -------------------------------------------------------------------------------- tour

def tour(preset: str = "small", out: str = "runs", fresh: bool = False) -> StageResult:
    """Stage 8 of `llmpath tour`: our CBOW and gensim's over 3 seeds at equal settings; the bars; the figures."""
    cfg = build_config(CompareRun, [f"--preset={preset}", f"--out={out}", f"--fresh={fresh}", "--archs=cbow"], PRESETS)
    cfg.workers = min(2, os.cpu_count() or 1)  # one process (one core) per run
    res = compare(cfg)
    ours, ref = res["means"]["ours-cbow"], res["means"]["gensim-cbow"]
    passed = ours["wordsim353"] >= 0.30 and ours["wordsim353"] >= ref["wordsim353"] - 0.05
    shown = figures(build_config(FiguresRun, [f"--preset={preset}", f"--out={out}", f"--name={preset}-cbow-seed0"],
                                 PRESETS))
    return StageResult("WordSim-353 Spearman (our CBOW, mean of 3 seeds)", ours["wordsim353"],
                       ">= 0.30 and no more than 0.05 below gensim's CBOW mean at equal settings", passed,
                       compare_table(res), [str(p) for p in shown])


def smoke() -> str:
    """Doctor check: the fused and the readable CBOW agree (window mean, loss), and the loss starts at (K+1) log 2."""
    torch.manual_seed(0)
    cfg = Word2VecConfig(vocab_size=20, n_embd=8)
    fast, slow = Word2Vec(cfg), Word2Vec(replace(cfg, bag=False))
    slow.load_state_dict(fast.state_dict())
    ctx = torch.randint(0, 20, (4, 6))
    b = WindowBatch(torch.randint(0, 20, (4,)), ctx, torch.rand(4, 6) > 0.3, torch.randint(0, 20, (4, 5)))
    if not torch.allclose(fast.hidden(b), slow.hidden(b), atol=1e-6):
        raise RuntimeError("fused and readable CBOW window means disagree")
    if not torch.allclose(loss_fn(fast, b), loss_fn(slow, b), atol=1e-6):
        raise RuntimeError("the fused CBOW loss and the readable one disagree")
    if abs(loss_fn(fast, b).item() - 6 * np.log(2)) > 1e-4:  # output vectors start at 0: every score is 0
        raise RuntimeError("negative-sampling loss at initialisation is not (1 + K) log 2")
    return "tiny word2vec ok (fused == readable CBOW; initial loss (1+K) log 2)"


COMMANDS = {
    "train": Command(train_cmd, Word2VecRun, "train word vectors (CBOW or skip-gram, negative sampling or softmax)",
                     examples=("llmpath word2vec train", "llmpath word2vec train --model.arch=skipgram --train.lr=0.025",
                               "llmpath word2vec train --corpus=chinese-words --name=small-zh")),
    "compare": Command(compare, CompareRun, "ours vs gensim at equal settings, several seeds, one table",
                       examples=("llmpath word2vec compare", "llmpath word2vec compare --archs=cbow --workers=2")),
    "neighbors": Command(neighbors, NeighborsRun, "nearest words by cosine similarity",
                         examples=("llmpath word2vec neighbors --words=king,three",)),
    "figures": Command(figures, FiguresRun, "PCA of word groups; one static vector vs BERT's contextual vectors",
                       examples=("llmpath word2vec figures",)),
}
