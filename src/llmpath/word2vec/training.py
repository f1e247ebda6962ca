"""Training word vectors with the shared fit loop, the same run with gensim, and reading a run's vectors back.

    res = train(cfg)                           # runs/word2vec/<name>: checkpoint, metrics, results.json
    vecs = load_vectors("runs/word2vec/small") # Vectors(words, matrix (V, C), index)
    ref = gensim_reference(cfg)                # gensim.models.Word2Vec at the same settings, same evaluation

The objective (`model.loss_fn`) goes to `llmpath.train.fit` with `PairSGD` as the optimizer and a linear
learning-rate decay to lr * min_lr_ratio over all epochs, as word2vec decays its alpha.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from llmpath.common import log, setup_logging
from llmpath.config import ConfigError, RunConfig, TrainConfig, from_dict, opt, sub
from llmpath.runs import comparable_config, reuse, run_path, start_run
from llmpath.train import fit, load_checkpoint
from llmpath.word2vec.data import CORPORA, Vocab, WindowBatches, corpus_sentences, vocab_from_state
from llmpath.word2vec.evaluate import evaluate_vectors, word_pairs
from llmpath.word2vec.model import PairSGD, Word2Vec, Word2VecConfig, loss_fn

TOPIC = "word2vec"


@dataclass
class Word2VecRun(RunConfig):
    corpus: str = opt("wiki", "comma-separated: " + "; ".join(f"{k} ({v})" for k, v in CORPORA.items()))
    max_sentences: int = opt(0, "use only the first N sentences (0 = all)", min=0)
    min_count: int = opt(5, "drop words seen fewer times", min=1)
    window: int = opt(5, "largest window: each centre word draws its width from 1..window", min=1)
    negative: int = opt(5, "noise words per example (negative sampling)", min=1)
    sample: float = opt(1e-3, "subsampling threshold t of frequent words (0 = keep every word)", min=0)
    pair_negatives: bool = opt(False, "skip-gram: new negatives for every (centre, context) pair, as word2vec.c "
                               "(default: one set per centre word, shared by its pairs; faster)")
    model: Word2VecConfig = sub(Word2VecConfig)
    train: TrainConfig = sub(TrainConfig)


def sentences_of(cfg: Word2VecRun) -> list[list[str]]:
    sents = corpus_sentences(cfg.corpus)
    return sents[: cfg.max_sentences] if cfg.max_sentences else sents


def train(cfg: Word2VecRun, sentences: list[list[str]] | None = None) -> dict:
    """Train (or reuse a finished run): vocabulary, batches, the shared fit, then the three evaluations."""
    setup_logging()
    if (done := reuse(cfg, TOPIC)) is not None:
        return done
    if cfg.model.sparse:  # llmpath.train._grad_norm calls linalg.vector_norm, which has no sparse kernel
        raise ConfigError("--model.sparse=true is not supported by the shared fit loop yet (it cannot take the norm "
                          "of sparse gradients); leave it false")
    if cfg.train.grad_clip or cfg.train.weight_decay:
        raise ConfigError("word2vec takes plain SGD steps: set --train.grad_clip=0 and --train.weight_decay=0")
    key = comparable_config(cfg)
    sents = sentences if sentences is not None else sentences_of(cfg)
    vocab = Vocab.build(sents, cfg.min_count)
    batches = WindowBatches(vocab.encode(sents), vocab, cfg.window, cfg.train.batch_size, cfg.negative, cfg.sample,
                            seed=cfg.seed, pair_negatives=cfg.pair_negatives and cfg.model.arch == "skipgram")
    cfg = replace(cfg, model=replace(cfg.model, vocab_size=len(vocab)))
    run = start_run(cfg, TOPIC, tokenizer=vocab, key=key)
    torch.manual_seed(cfg.seed)
    model = Word2Vec(cfg.model)
    log.info(f"word2vec {cfg.model.arch} ({cfg.model.loss}), {len(vocab):,} words, {batches.words:,} tokens, "
             f"{batches.per_epoch} batches of {cfg.train.batch_size} per epoch -> {run.path}")

    def evaluate(m):  # at eval_interval and the end: the metric that picks ckpt/best.pt
        return {"wordsim353": word_pairs(m.vectors().cpu().numpy(), vocab.index, "wordsim353")["spearman"]}

    opt = PairSGD(model.parameters(), cfg.train.lr, cfg.train.batch_size)
    res = fit(model, loss_fn, batches, cfg.train, run=run, optimizer=opt, evaluate=evaluate,
              best_metric="wordsim353", best_mode="max")
    ev = evaluate_vectors(model.vectors().cpu().numpy(), vocab.index)
    epochs = res.step / batches.per_epoch
    summary = {"arch": cfg.model.arch, "loss": cfg.model.loss, "vocab_size": len(vocab), "tokens": batches.words,
               "steps": res.step, "epochs": round(epochs, 3), "train_loss": res.train_loss,
               "seconds": round(res.seconds, 2), "words_per_s": round(batches.words * epochs / max(res.seconds, 1e-9)),
               **_flat(ev), "figures": []}
    summary = run.finish(summary)
    log.info(f"WordSim-353 {ev['wordsim353']['spearman']:.3f} ({ev['wordsim353']['oov']} pairs OOV), SimLex-999 "
             f"{ev['simlex999']['spearman']:.3f}, analogies {ev['analogies']['accuracy']:.3f} after {res.step} steps "
             f"in {res.seconds:.0f} s")
    return summary


def _flat(ev: dict) -> dict:
    """{'wordsim353': {'spearman': .4, 'oov': 13}} -> {'wordsim353': .4, 'wordsim353_oov': 13, ...}"""
    return {"wordsim353": ev["wordsim353"]["spearman"], "wordsim353_pairs": ev["wordsim353"]["pairs"],
            "wordsim353_oov": ev["wordsim353"]["oov"], "simlex999": ev["simlex999"]["spearman"],
            "simlex999_pairs": ev["simlex999"]["pairs"], "simlex999_oov": ev["simlex999"]["oov"],
            "analogy_acc": ev["analogies"]["accuracy"], "analogy_questions": ev["analogies"]["questions"],
            "analogy_oov": ev["analogies"]["oov"], "analogy_semantic": ev["analogies"]["semantic"],
            "analogy_syntactic": ev["analogies"]["syntactic"]}


# ------------------------------------------------------------------------------ gensim

def gensim_reference(cfg: Word2VecRun, sentences: list[list[str]] | None = None, workers: int = 1) -> dict:
    """gensim.models.Word2Vec (its C code) on the same sentences and settings; the same evaluation.

    words/s counts the corpus words in the vocabulary times the epochs over the training time only (the
    vocabulary scan is timed apart), as for our runs.
    """
    from gensim.models import Word2Vec as GensimWord2Vec

    if cfg.model.loss != "negative":
        raise ConfigError("the gensim reference is run with negative sampling; use --model.loss=negative")
    sents = sentences if sentences is not None else sentences_of(cfg)
    epochs = cfg.train.epochs or 1
    g = GensimWord2Vec(vector_size=cfg.model.n_embd, window=cfg.window, negative=cfg.negative, hs=0,
                       min_count=cfg.min_count, sample=cfg.sample, sg=int(cfg.model.arch == "skipgram"),
                       alpha=cfg.train.lr, min_alpha=cfg.train.lr * cfg.train.min_lr_ratio, cbow_mean=1,
                       workers=workers, seed=cfg.seed)
    g.build_vocab(sents)
    t0 = time.time()
    g.train(sents, total_examples=len(sents), epochs=epochs)
    seconds = time.time() - t0
    words = int(sum(g.wv.get_vecattr(w, "count") for w in g.wv.index_to_key))
    ev = evaluate_vectors(g.wv.vectors, g.wv.key_to_index)
    return {"arch": cfg.model.arch, "vocab_size": len(g.wv), "tokens": words, "epochs": epochs, "workers": workers,
            "seconds": round(seconds, 2), "words_per_s": round(words * epochs / max(seconds, 1e-9)), **_flat(ev)}


# ------------------------------------------------------------------------------ loading

class Vectors(NamedTuple):
    words: list[str]
    matrix: np.ndarray  # (V, C) float32: the input vectors
    index: dict[str, int]


def load_vectors(path: str | Path) -> Vectors:
    """The word vectors of a finished run folder (ckpt/best.pt holds the weights and the vocabulary)."""
    path = Path(path)
    ckpt_path = path / "ckpt" / "best.pt"
    if not ckpt_path.exists():
        raise ConfigError(f"no trained word vectors in {path}; train them first: llmpath word2vec train")
    ckpt = load_checkpoint(ckpt_path)
    if ckpt.get("topic") != TOPIC or not ckpt.get("tokenizer"):
        raise ConfigError(f"{path} holds no word2vec run (it was written by {ckpt.get('topic') or 'something else'})")
    cfg = from_dict(Word2VecRun, ckpt["config"])
    model = Word2Vec(cfg.model)
    model.load_state_dict(ckpt["model"])
    vocab = vocab_from_state(ckpt["tokenizer"])
    return Vectors(vocab.words, model.vectors().numpy().copy(), vocab.index)


def vectors_of(cfg: Word2VecRun) -> Vectors:
    return load_vectors(run_path(cfg, TOPIC))
