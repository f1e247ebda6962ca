"""Language-model pretraining on a text corpus, for every decoder: GPT (stage 5) and Llama (stage 9).

    summary = pretrain(cfg, "gpt", GPT)        # cfg: an LMRun subclass whose .model builds the decoder

GPTRun and PRESETS are stage 5's run config and recipes; stage 9 trains its decoders with the same ones.

The corpus is split 90/5/5 into train/val/test text, tokenized (characters or byte-level BPE), and
the model sees random windows of block_size + 1 tokens through the shared `fit`; the validation loss
is the mean next-token loss over fixed consecutive windows of the val text, so runs compare exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Literal

import torch
from torch import nn

from llmpath.common import count_params, log, setup_logging
from llmpath.config import ConfigError, RunConfig, TrainConfig, opt, sub
from llmpath.data import RandomWindows, split_text
from llmpath.generation import generate
from llmpath.gpt.data import encode_known, lm_text, make_tokenizer
from llmpath.gpt.finetune import lm_loss, lm_val_loss
from llmpath.gpt.model import MODEL_PRESETS, GPT, GPTConfig
from llmpath.plotting import save_fig, training_curves
from llmpath.runs import comparable_config, reuse, start_run
from llmpath.train import dist_info, fit, init_distributed, read_metrics

CHAR_TOKENIZER = "llmpath_tokenizer.json"  # not tokenizer.json: that name is Hugging Face's fast-tokenizer file


@dataclass
class LMRun(RunConfig):
    """What every pretraining run shares; a subclass adds `model` (its decoder's config) and `train`."""

    data: str = opt("shakespeare", "text corpus: a built-in name, a .txt path, or a pairs set (its English side)")
    tokenizer: Literal["char", "bpe"] = opt("char", "char: one token per character; bpe: byte-level BPE")
    bpe_vocab_size: int = opt(1024, "bpe: vocabulary size to train", min=257)
    init_from: str = opt("", "start from a run folder (runs/gpt/small) or a GPT-2 folder/hub name; '' = scratch")
    eval_tokens: int = opt(65_536, "score the first N val tokens at every evaluation", min=1)
    sample_tokens: int = opt(300, "length of the sample written at the end of training", min=0)


@dataclass
class GPTRun(LMRun):
    model: GPTConfig = sub(GPTConfig)
    train: TrainConfig = sub(TrainConfig)


def _model(name: str) -> dict:
    return {f"model.{k}": v for k, v in MODEL_PRESETS[name].items() if k != "vocab_size"}


# `small` is nanoGPT's CPU shape (4 layers, 4 heads, 128 wide, context 64) with a faster recipe than
# nanoGPT's (batch 12, lr 1e-3, 2000 steps): a 5x larger peak lr with beta2 0.95, a short warmup and
# batch 16 reach a lower val loss with about 2/3 of the tokens (docs/tutorials/05_gpt.md, appendix A).
# One thread, as in the other topics; the tutorial's numbers were measured with one.
PRESETS: dict[str, dict] = {
    "tiny": {**_model("tiny"), "threads": 1, "data": "shakespeare-tiny", "eval_tokens": 2048, "sample_tokens": 50,
             "train.max_steps": 30, "train.batch_size": 8, "train.lr": 3e-3, "train.warmup_steps": 5,
             "train.eval_interval": 0, "train.progress": False},
    "small": {**_model("small"), "threads": 1, "train.max_steps": 1000, "train.batch_size": 16, "train.lr": 5e-3,
              "train.warmup_steps": 30, "train.min_lr_ratio": 0.1, "train.beta2": 0.95, "train.weight_decay": 0.1,
              "train.eval_interval": 250},
    "gpt2": {**_model("gpt2"), "tokenizer": "bpe", "bpe_vocab_size": 50257, "train.batch_size": 16,
             "train.grad_accum": 32, "train.lr": 6e-4, "train.max_steps": 5000, "train.warmup_steps": 200,
             "train.weight_decay": 0.1, "train.beta2": 0.95, "train.eval_interval": 250, "eval_tokens": 1_000_000},
}


def pretrain(cfg: LMRun, topic: str, build: Callable[..., nn.Module], load_init: Callable | None = None,
             title: str = "GPT", evaluate_extra: Callable[[nn.Module, object], dict] | None = None,
             summarize: Callable[[nn.Module], dict] | None = None,
             texts: Callable[[LMRun], tuple[str, str]] | None = None) -> dict:
    """Train build(cfg.model) (or continue load_init(cfg.init_from)) on cfg.data; the run's summary.

    evaluate_extra(model, val_batch) adds numbers to every evaluation (an MoE's expert usage);
    summarize(model) adds entries to the summary that results.json keeps (an MoE's active parameters);
    texts(cfg) -> (train text, val text) replaces cfg.data and its 90/5/5 split (the chat model's mixture);
    the tokenizer then learns from the train text only.
    """
    setup_logging()
    if (done := reuse(cfg, topic)) is not None:
        return done
    init_model = None
    key = comparable_config(cfg)  # as asked: the vocabulary (or a loaded model's shape) is filled in below
    if texts is None:  # the tokenizer learns from the whole corpus, as it always has here
        text = lm_text(cfg.data)
        train_text, val_text, _ = split_text(text)
    else:
        train_text, val_text = texts(cfg)
        text = train_text
    if cfg.init_from:
        if load_init is None:
            raise ConfigError(f"--init_from is not supported for {topic}; train from scratch (--init_from='')")
        init_model, tok = load_init(cfg.init_from, "cpu", dropout=cfg.model.dropout)
        cfg = replace(cfg, model=replace(init_model.cfg))  # the architecture is the loaded one
    else:
        tok = make_tokenizer(cfg.tokenizer, text, cfg.bpe_vocab_size, getattr(cfg, "bpe_pattern", "gpt2"))
        cfg = replace(cfg, model=replace(cfg.model, vocab_size=tok.vocab_size))
    train_ids, val_ids = encode_known(tok, train_text), encode_known(tok, val_text)[: cfg.eval_tokens + 1]
    batches = RandomWindows(train_ids, cfg.model.block_size, cfg.train.batch_size, seed=cfg.seed)  # checks the length
    run = start_run(cfg, topic, tokenizer=tok, key=key)
    device = init_distributed(run.device)
    rank, world = dist_info()
    model = init_model.to(device) if init_model is not None else build(cfg.model)
    if rank == 0:
        log.info(f"{title} {count_params(model):,} parameters, vocab {tok.vocab_size}, {len(train_ids):,} train / "
                 f"{len(val_ids):,} val tokens, {world} process(es) on {device} -> {run.path}")
    block = cfg.model.block_size
    n_probe = min(16, (len(val_ids) - 1) // block)  # up to 16 fixed val windows for evaluate_extra
    probe = torch.as_tensor(val_ids[:block * n_probe], dtype=torch.long).view(n_probe, block)

    def evaluate(m):
        out = {"val_loss": lm_val_loss(m, val_ids, block)}
        if evaluate_extra is not None:
            out.update(evaluate_extra(m, probe.to(next(m.parameters()).device)))
        return out

    before = {}
    if cfg.init_from and rank == 0:  # finetuning: keep the starting point for the before/after table
        model.eval()
        before = {"val_loss": evaluate(model)["val_loss"], "sample": sample_text(model, tok, cfg)}
    res = fit(model, lm_loss, batches, cfg.train, run=run, device=device, unit="tokens", evaluate=evaluate)
    if rank != 0:
        return {}
    curves = save_fig(training_curves(read_metrics(run.path / "metrics.jsonl"), f"{title}（{cfg.preset or '自定义'}）：{cfg.data}"),
                      run.figures / "curves.png")
    summary = {"data": cfg.data, "tokenizer": cfg.tokenizer, "init_from": cfg.init_from, "params": count_params(model),
               "steps": res.step, "val_loss": res.best, "train_loss": res.train_loss, "seconds": round(res.seconds, 1),
               "tokens_per_s": round(res.step * cfg.train.batch_size * cfg.train.grad_accum * block / max(res.seconds, 1e-9)),
               "world_size": world, "vocab_size": tok.vocab_size, "sample": sample_text(model, tok, cfg),
               "figures": [curves]}
    if before:
        summary["before"] = before
    if summarize is not None:
        summary.update(summarize(model))
    summary = run.finish(summary)
    (run.path / "sample.txt").write_text(summary["sample"], encoding="utf-8")
    log.info(f"val loss {res.best:.4f} after {res.step} steps in {res.seconds:.0f} s\n--- sample ---\n{summary['sample']}")
    return summary


def sample_text(model: nn.Module, tok, cfg: LMRun) -> str:
    """A fixed-seed sample from a newline prompt, or the first character of the text when it has no newline
    (temperature 0.8, top-k 50)."""
    try:
        prompt = tok.encode("\n")
    except ValueError:  # a character vocabulary without "\n"
        prompt = [0]
    g = torch.Generator(device=next(model.parameters()).device).manual_seed(cfg.seed)
    ids = generate(model, prompt, cfg.sample_tokens, temperature=0.8, top_k=50, generator=g)
    return tok.decode(ids[0, len(prompt):].tolist())
