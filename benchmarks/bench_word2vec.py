"""Training speed of our word2vec vs gensim.models.Word2Vec (C code) at equal settings, one process.

    .venv/bin/python benchmarks/bench_word2vec.py                  # small-preset settings, 1 epoch per run, 3 rounds
    .venv/bin/python benchmarks/bench_word2vec.py --quick          # 1 round, CBOW only
    .venv/bin/python benchmarks/bench_word2vec.py --epochs 2 --rounds 5

Every variant trains one epoch (or --epochs) of the Wikipedia sample from fresh vectors with the `small` preset's
settings (dimension 50, window 10, 5 negatives, min count 5, subsampling 1e-3, linear lr decay):

- ours: CBOW and skip-gram through the shared `fit` loop with `PairSGD`, one torch thread; the readable CBOW
  (gather, mask, average) beside the fused `F.embedding_bag` one;
- gensim: sg=0 and sg=1 with workers=1 (the same core count as ours) and workers=2.

words/s = corpus words in the vocabulary x epochs / training seconds (vocabulary and batch set-up excluded for
both). The variants run in interleaved rounds (A B C ..., A B C ...) so that load from other processes hits
them alike; the median of the rounds is reported, and the ratio gensim / ours within the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from llmpath.config import build_config
from llmpath.train import fit
from llmpath.word2vec.cli import PRESETS
from llmpath.word2vec.data import Vocab, WindowBatches
from llmpath.word2vec.model import PairSGD, Word2Vec, loss_fn
from llmpath.word2vec.training import Word2VecRun, sentences_of


def ours(cfg: Word2VecRun, sents, vocab, enc, arch: str, bag: bool = True) -> float:
    """Seconds of `fit` for the given epochs, batches built inside (as in training)."""
    lr = cfg.train.lr if arch == "cbow" else 0.025
    batches = WindowBatches(enc, vocab, cfg.window, cfg.train.batch_size, cfg.negative, cfg.sample, seed=0)
    mcfg = cfg.model.__class__(vocab_size=len(vocab), n_embd=cfg.model.n_embd, arch=arch, bag=bag)
    torch.manual_seed(0)
    model = Word2Vec(mcfg)
    train = cfg.train.__class__(**{**cfg.train.__dict__, "lr": lr, "progress": False, "log_interval": 10**9})
    res = fit(model, loss_fn, batches, train, optimizer=PairSGD(model.parameters(), lr, cfg.train.batch_size))
    return res.seconds


def gensim_seconds(cfg: Word2VecRun, sents, arch: str, workers: int) -> float:
    from gensim.models import Word2Vec as G

    lr = cfg.train.lr if arch == "cbow" else 0.025
    g = G(vector_size=cfg.model.n_embd, window=cfg.window, negative=cfg.negative, min_count=cfg.min_count,
          sample=cfg.sample, sg=int(arch == "skipgram"), alpha=lr, min_alpha=lr * cfg.train.min_lr_ratio,
          workers=workers, seed=0)
    g.build_vocab(sents)
    t0 = time.time()
    g.train(sents, total_examples=len(sents), epochs=cfg.train.epochs)
    return time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=1, help="epochs per timed run")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    ap.add_argument("--quick", action="store_true", help="1 round, CBOW only")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = build_config(Word2VecRun, ["--preset=small", f"--train.epochs={args.epochs}"], PRESETS)
    sents = sentences_of(cfg)
    vocab = Vocab.build(sents, cfg.min_count)
    enc = vocab.encode(sents)
    words = int(vocab.counts.sum()) * args.epochs
    variants = {
        "ours CBOW (fused embedding_bag)": lambda: ours(cfg, sents, vocab, enc, "cbow"),
        "ours CBOW (readable gather + mask)": lambda: ours(cfg, sents, vocab, enc, "cbow", bag=False),
        "gensim CBOW sg=0, workers=1": lambda: gensim_seconds(cfg, sents, "cbow", 1),
        "gensim CBOW sg=0, workers=2": lambda: gensim_seconds(cfg, sents, "cbow", 2),
        "ours skip-gram": lambda: ours(cfg, sents, vocab, enc, "skipgram"),
        "gensim skip-gram sg=1, workers=1": lambda: gensim_seconds(cfg, sents, "skipgram", 1),
        "gensim skip-gram sg=1, workers=2": lambda: gensim_seconds(cfg, sents, "skipgram", 2),
    }
    if args.quick:
        variants = {k: v for k, v in variants.items() if "CBOW" in k}
    rounds = 1 if args.quick else args.rounds
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(rounds):
        for name, fn in variants.items():
            times[name].append(fn())
            print(f"round {r + 1}: {name}: {times[name][-1]:.2f} s", flush=True)
    print(f"\n{words:,} words ({args.epochs} epoch(s) of {int(vocab.counts.sum()):,}), vocabulary {len(vocab):,}, "
          f"torch {torch.__version__}, 1 torch thread, {os.cpu_count()} CPU cores, median of {rounds} round(s)\n")
    print("| variant | seconds | words/s | speed / gensim workers=1 |")
    print("|---|---:|---:|---:|")
    for name, ts in times.items():
        s = statistics.median(ts)
        kind = "CBOW" if "CBOW" in name else "skip-gram"
        peer = statistics.median(next(v for k, v in times.items() if kind in k and "workers=1" in k))
        print(f"| {name} | {s:.2f} | {words / s:,.0f} | {peer / s:.2f}x |")


if __name__ == "__main__":
    main()
