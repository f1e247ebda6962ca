"""Pretraining a BERT: WordPiece vocabulary, sentence pairs, masked batches, the shared fit loop.

    llmpath bert train                            # preset small: Wikipedia, Shakespeare, tweets, reviews
    llmpath bert train --nsp=false --name=small-mlm-only      # MLM only (RoBERTa's finding, on our data)
    llmpath bert fill "今天的菜很[MASK]吃"            # top-k fills of every [MASK] with probabilities

One run = one folder (runs/bert/<name>): the tokenizer's vocabulary goes into every checkpoint, so
`load_run` rebuilds model and tokenizer from `ckpt/best.pt` alone. Held-out documents (never seen in
training) give the masked-token loss and accuracy, NSP accuracy, and the unigram baseline: the
cross-entropy of guessing each masked token from token frequencies alone, without looking at its context.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch

from llmpath.bert.data import (PretrainBatches, eval_batches, make_pairs, pretraining_documents, unigram_log_probs,
                               unigram_mlm_loss)
from llmpath.bert.model import BERTConfig, BERTPretraining
from llmpath.bert.objectives import mlm_nsp_metrics, pretrain_loss
from llmpath.common import count_params, log, setup_logging
from llmpath.config import ConfigError, RunConfig, TrainConfig, opt, sub
from llmpath.plotting import save_fig, training_curves
from llmpath.runs import Loaded, comparable_config, load_run, reuse, start_run, sub_config
from llmpath.tokenizers import WordPiece
from llmpath.train import dist_info, fit, init_distributed, read_metrics

TOPIC = "bert"
SOURCES = "wiki,shakespeare,tweets-train,chinese-reviews-train"


@dataclass
class BERTRun(RunConfig):
    sources: str = opt(SOURCES, "pretraining documents, comma-separated: wiki (English Wikipedia sample), "
                       "shakespeare (speeches, line by line), tweets-train / chinese-reviews-train (the training "
                       "texts of the classification data, no labels; Chinese reviews sentence by sentence)")
    vocab_size: int = opt(8000, "WordPiece vocabulary size to train", min=64)
    lowercase: bool = opt(True, "lower-case and strip accents before WordPiece (an uncased BERT)")
    nsp: bool = opt(True, "next-sentence prediction beside MLM (false: MLM only, contiguous text, as RoBERTa)")
    masking: Literal["dynamic", "static"] = opt("dynamic", "dynamic: a new mask every step; static: one mask per example")
    mlm_prob: float = opt(0.15, "share of tokens chosen for MLM (80% [MASK], 10% random, 10% unchanged)",
                          above=0, below=1)
    heldout: float = opt(0.03, "share of documents held out for evaluation", above=0, below=1)
    eval_examples: int = opt(1024, "held-out pairs scored at every evaluation", min=1)
    unigram_bias: bool = opt(True, "start the MLM output bias at the log token frequencies (the unigram model), "
                             "so training starts from the baseline instead of spending its first steps learning it")
    model: BERTConfig = sub(BERTConfig)
    train: TrainConfig = sub(TrainConfig)


def split_documents(docs: list, share: float, seed: int) -> tuple[list, list]:
    """(train, held-out) documents: a seeded shuffle, at least one document on each side."""
    if len(docs) < 2:
        raise ConfigError(f"pretraining needs at least 2 documents, got {len(docs)}; add sources with --sources")
    order = np.random.default_rng(seed).permutation(len(docs))
    k = min(max(1, round(share * len(docs))), len(docs) - 1)
    return [docs[i] for i in order[k:]], [docs[i] for i in order[:k]]


def pretrain(cfg: BERTRun) -> dict:
    """Train a WordPiece vocabulary and a BERT (MLM + NSP, or MLM only) with the shared fit loop."""
    setup_logging()
    cfg = sub_config(cfg, BERTRun)  # a finetuning config's pretraining part: checkpoints hold a BERTRun
    if (done := reuse(cfg, TOPIC)) is not None:
        return done
    key = comparable_config(cfg)  # as asked: the vocabulary size the trainer reaches is filled in below
    docs = pretraining_documents([s.strip() for s in cfg.sources.split(",") if s.strip()], seed=cfg.seed)
    train_docs, held_docs = split_documents(docs, cfg.heldout, cfg.seed)
    tok = WordPiece.train((s for d in train_docs for s in d), cfg.vocab_size, lowercase=cfg.lowercase)
    cfg = replace(cfg, model=replace(cfg.model, vocab_size=tok.vocab_size, pad_id=tok.pad_id))
    max_len = cfg.model.max_len
    train_ex = make_pairs(train_docs, tok, max_len, seed=cfg.seed, nsp=cfg.nsp)
    held_ex = make_pairs(held_docs, tok, max_len, seed=cfg.seed + 1, nsp=cfg.nsp)[: cfg.eval_examples]
    batches = PretrainBatches(train_ex, cfg.train.batch_size, tok, seed=cfg.seed, masking=cfg.masking,
                              mlm_prob=cfg.mlm_prob)
    held = eval_batches(held_ex, 64, tok, seed=cfg.seed, mlm_prob=cfg.mlm_prob)
    unigram = unigram_mlm_loss(train_ex, held, tok.vocab_size)
    run = start_run(cfg, TOPIC, tokenizer=tok, key=key)
    device = init_distributed(run.device)  # under torchrun: one process per core, each a share of every batch
    rank, world = dist_info()
    torch.manual_seed(cfg.seed)
    model = BERTPretraining(cfg.model)
    if cfg.unigram_bias:
        with torch.no_grad():
            model.mlm.decoder.bias.copy_(unigram_log_probs(train_ex, tok.vocab_size))
    if rank == 0:
        log.info(f"BERT {count_params(model):,} parameters, WordPiece vocab {tok.vocab_size}, {len(docs):,} documents "
                 f"({len(held_docs)} held out), {len(train_ex):,} training pairs, {world} process(es) -> {run.path}")

    def evaluate(m):
        r = mlm_nsp_metrics(m, held)
        return {"val_loss": r["mlm_loss"], **{k: v for k, v in r.items() if k != "mlm_loss" and v == v}}  # NaN: no NSP

    res = fit(model, pretrain_loss, batches, cfg.train, run=run, device=device, unit="tokens", evaluate=evaluate)
    if rank != 0:
        return {}
    final = mlm_nsp_metrics(model, held)  # restore_best is off: the last weights are the ones saved as last.pt
    rows = read_metrics(run.path / "metrics.jsonl")
    curves = save_fig(training_curves(rows, f"BERT 预训练（{cfg.preset or '自定义'}）：MLM{' + NSP' if cfg.nsp else ''}"),
                      run.figures / "curves.png")
    tokens = sum(int((b.ids != tok.pad_id).sum()) for b in (batches(i) for i in range(min(res.step, 20))))
    per_step = tokens / max(min(res.step, 20), 1) * cfg.train.grad_accum
    summary = {"sources": cfg.sources, "nsp": cfg.nsp, "masking": cfg.masking, "params": count_params(model),
               "vocab_size": tok.vocab_size, "documents": len(docs), "heldout_documents": len(held_docs),
               "train_pairs": len(train_ex), "heldout_pairs": len(held_ex), "steps": res.step,
               "mlm_loss": final["mlm_loss"], "mlm_acc": final["mlm_acc"],
               "nsp_acc": final["nsp_acc"] if cfg.nsp else None, "nsp_majority": final["nsp_majority"] if cfg.nsp else None,
               "unigram_loss": unigram, "seconds": round(res.seconds, 1), "world_size": world,
               "tokens_per_s": round(res.step * per_step / max(res.seconds, 1e-9)), "figures": [curves]}
    summary = run.finish(summary)
    log.info(f"held-out MLM loss {final['mlm_loss']:.3f} (unigram {unigram:.3f}), masked-token accuracy "
             f"{final['mlm_acc']:.3f}" + (f", NSP accuracy {final['nsp_acc']:.3f}" if cfg.nsp else "")
             + f" after {res.step} steps in {res.seconds:.0f} s")
    return summary


def load_pretrained(path, cfg: BERTRun, device: torch.device | str = "cpu", dropout: float | None = None) -> Loaded:
    """(model, tokenizer, config) of a pretraining run folder; a missing one says which command trains it."""
    return load_run(path, device, dropout=dropout, topic=TOPIC,
                    hint=f"llmpath bert train --preset={cfg.preset or 'small'}")


# -------------------------------------------------------------------------------- fill

MASK = "[MASK]"


def encode_with_masks(tok: WordPiece, text: str) -> list[int]:
    """[CLS] text [SEP] where every literal "[MASK]" in text becomes the mask token (one token each)."""
    parts = text.split(MASK)
    if len(parts) < 2:
        raise ConfigError(f"the text has no {MASK}; write one where a token should be filled in, "
                          f"e.g. \"今天的菜很{MASK}吃\"")
    ids = [tok.cls_id]
    for i, part in enumerate(parts):
        ids += tok.encode(part)
        if i < len(parts) - 1:
            ids.append(tok.mask_id)
    return ids + [tok.sep_id]


@torch.no_grad()
def fill_masks(model: BERTPretraining, tok: WordPiece, text: str, k: int = 5) -> list[list[tuple[str, float]]]:
    """For each [MASK] in text, the k most likely tokens and their probabilities (the whole sentence is read at once).
    Special tokens ([PAD], [UNK], [CLS], [SEP], [MASK]) are never proposed: the softmax runs over the others."""
    ids = encode_with_masks(tok, text)
    if len(ids) > model.cfg.max_len:
        raise ConfigError(f"the text is {len(ids)} tokens, longer than the model's {model.cfg.max_len}; shorten it")
    x = torch.tensor([ids], device=next(model.parameters()).device)
    logits, _ = model(x)  # (1, T, V): no labels, so logits at every position
    logits[..., sorted(tok.special_ids)] = float("-inf")
    out = []
    for pos in (x[0] == tok.mask_id).nonzero().flatten().tolist():
        p = torch.softmax(logits[0, pos], -1)
        top = torch.topk(p, k)
        out.append([(tok.id_to_token(int(i)), float(v)) for v, i in zip(top.values, top.indices)])
    return out
