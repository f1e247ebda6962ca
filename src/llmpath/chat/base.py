"""The chat model's base model: stage 9's Llama-style decoder pretrained on the course's Chinese and English text.

    cfg = build_config(BaseRun, ["--preset=small"], PRESETS)   # 4 layers x 128 wide, context 128, vocab 2048
    summary = pretrain_base(cfg)                                # runs/chat/small; a finished run is reused
    summary["val_loss_by_source"]       # {"chinese-reviews": ..., "hsk": ..., ...}: nats per token on each source
    print(mixture_table(summary))       # the mixture: weight, train characters and val loss per source

Before a model can follow instructions it must know the languages. The base model learns them the way stage 5's
GPT learned Shakespeare, by predicting the next token, from a mixture of every source the instruction tasks draw on
(`llmpath.chat.data.mixture`: reviews, the HSK sentences, gensim's Wikipedia sample, Shakespeare, tweets,
chatterbot dialogues), with the val and test items of those tasks removed, so that SFT's test prompts are unseen.
A source's weight is how many epochs of it the train text holds: the default repeats the small HSK and chatterbot
sources (their sentences and dialogues are what the SFT tasks ask about) so that Shakespeare does not drown them.

The tokenizer is our byte-level BPE (stage 2), trained on the train text; it reserves <|endoftext|>, <|im_start|>
and <|im_end|> as single ids, so the base model already has embedding rows for the chat template of sft.py. The
training loop is stage 5's `pretrain` through the shared `fit`; its val loss is on an equal slice of every
source's val text, and at the end each source's val loss is measured on its own (up to eval_tokens tokens each).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from llmpath.chat.data import PRETRAIN_SOURCES, mixture
from llmpath.common import markdown_table
from llmpath.config import ConfigError, opt
from llmpath.generation import generate
from llmpath.gpt.data import encode_known, tokenizer_from_state
from llmpath.gpt.finetune import lm_val_loss
from llmpath.gpt.pretrain import PRESETS as GPT_PRESETS
from llmpath.gpt.pretrain import pretrain
from llmpath.llama.experiments import LlamaRun
from llmpath.llama.model import Llama
from llmpath.runs import run_path
from llmpath.train import load_checkpoint

TOPIC = "chat"
PROMPTS = {"zh": "我觉得", "en": "I think"}  # the samples in the summary continue these
CHARS_PER_TOKEN = 8  # generous: a source's val text is cut to 8 characters per token scored before encoding


def parse_weights(text: str) -> dict[str, float]:
    """'hsk=4, chatterbot=2' -> {'hsk': 4.0, 'chatterbot': 2.0}; a source not named keeps weight 1."""
    sources = ", ".join(PRETRAIN_SOURCES)
    weights: dict[str, float] = {}
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        name, eq, value = (s.strip() for s in item.partition("="))
        if name not in PRETRAIN_SOURCES or name in weights:
            what = "a second weight for" if name in weights else "unknown source"
            raise ConfigError(f"--weights: {what} '{name}'; give each of these at most once: {sources}")
        try:
            w = float(value) if eq else math.nan
        except ValueError:
            w = math.nan
        if not (math.isfinite(w) and w >= 0):
            raise ConfigError(f"--weights: '{item}' is not source=weight with a weight >= 0 (e.g. hsk=4,wiki=0.5); "
                              f"sources: {sources}")
        weights[name] = w
    if all(weights.get(n, 1.0) == 0 for n in PRETRAIN_SOURCES):
        raise ConfigError(f"--weights leaves out every source; give at least one of {sources} a weight above 0")
    return weights


@dataclass
class BaseRun(LlamaRun):
    """A Llama-style decoder pretrained on the mixture; `weights` says how many epochs of each source."""

    data: str = opt("mixture", "fixed: the chat model's pretraining mixture (llmpath.chat.data); see --weights")
    tokenizer: Literal["char", "bpe"] = opt("bpe", "fixed: byte-level BPE (the chat template needs its special tokens)")
    bpe_vocab_size: int = opt(2048, "BPE vocabulary size, the three special tokens included", min=259)
    bpe_pattern: Literal["gpt2", "digits"] = opt("digits", "BPE pre-tokenization: GPT-2's regex, or the same with "
                                                 "every digit its own token (numbers line up with their places)")
    weights: str = opt("hsk=4,chatterbot=2,idioms=4", "epochs of each source as source=weight, comma-separated; a source not "
                       "named keeps 1, 0 leaves it out (sources: " + ", ".join(PRETRAIN_SOURCES) + ")")

    def check(self) -> None:
        if self.data != "mixture":
            raise ConfigError(f"--data={self.data}: the base model trains on the mixture only (--data=mixture); "
                              f"change its make-up with --weights")
        if self.tokenizer != "bpe":
            raise ConfigError("--tokenizer=char has no special tokens for the chat template; use --tokenizer=bpe")
        parse_weights(self.weights)


# `tiny` is stage 9's tiny shape on about 1% of each source (context 128, for chat turns): seconds, for tests.
# `small`, the tour's, is stage 9's small model with twice its context (a chat turn with its template is longer than
# a line of Shakespeare) and a 2048-token vocabulary (Chinese needs more pieces than English), trained briefly on
# the sources the instruction tasks draw on (HSK sentences, dialogues, idioms) with a little of the others.
# `base` is the same model trained longer on more of everything, for a better chat model. Times: benchmarks/README.md.
PRESETS: dict[str, dict] = {
    "tiny": {**{k: v for k, v in GPT_PRESETS["tiny"].items() if k != "data"}, "model.n_kv_head": 1,
             "model.block_size": 128, "bpe_vocab_size": 512, "eval_tokens": 1024, "sample_tokens": 20,
             "weights": "chinese-reviews=0.01,hsk=0.05,wiki=0.01,shakespeare=0.01,tweets=0.01,chatterbot=0.05,"
                        "idioms=0.05"},
    "small": {**GPT_PRESETS["small"], "model.n_kv_head": 2, "model.block_size": 128, "bpe_vocab_size": 2048,
              "train.max_steps": 300, "train.warmup_steps": 30, "train.eval_interval": 100, "eval_tokens": 8192,
              "sample_tokens": 100,
              "weights": "chinese-reviews=0.3,hsk=4,wiki=0.1,shakespeare=0.1,tweets=0.2,chatterbot=2,idioms=4"},
    "base": {**GPT_PRESETS["small"], "model.n_kv_head": 2, "model.block_size": 128, "bpe_vocab_size": 2048,
             "train.max_steps": 1500, "train.warmup_steps": 50, "eval_tokens": 16_384, "sample_tokens": 100,
             "weights": "hsk=4,chatterbot=2,idioms=4"},
}


def base_texts(cfg: BaseRun) -> tuple[dict[str, str], dict[str, str]]:
    """(train text, val text) per source: the mixture with cfg's weights, shuffled by cfg.seed."""
    return mixture(cfg.seed, parse_weights(cfg.weights))


def _joined(cfg: BaseRun) -> tuple[str, str]:
    """pretrain's texts: all train text, and an equal slice of every source's val text (about eval_tokens tokens)."""
    train, val = base_texts(cfg)
    per_source = 2 * cfg.eval_tokens // len(val)  # ~2 characters a token: the slice is cut to eval_tokens anyway
    return "\n\n".join(t for t in train.values() if t), "\n\n".join(v[:per_source] for v in val.values())


@torch.no_grad()
def source_losses(model: torch.nn.Module, tok, val: dict[str, str], block_size: int,
                  max_tokens: int) -> dict[str, float]:
    """Mean next-token loss on the first max_tokens tokens of each source's val text."""
    model.eval()
    out = {}
    for name, text in val.items():
        ids = encode_known(tok, text[:CHARS_PER_TOKEN * max_tokens])[:max_tokens + 1]
        out[name] = lm_val_loss(model, ids, block_size)
    return out


@torch.no_grad()
def samples(model: torch.nn.Module, tok, n_tokens: int, seed: int = 0) -> dict[str, str]:
    """A fixed-seed continuation of each of PROMPTS (temperature 0.8, top-k 50), the prompt included."""
    model.eval()
    out = {}
    for lang, prompt in PROMPTS.items():
        g = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
        ids = generate(model, tok.encode(prompt), n_tokens, temperature=0.8, top_k=50, generator=g)
        out[lang] = tok.decode(ids[0].tolist())
    return out


def pretrain_base(cfg: BaseRun) -> dict:
    """Train the BPE and the base model on the mixture (or reuse the finished run <out>/chat/<name>); its summary.

    Besides stage 5's summary: the weights, characters per source, tokens seen, val loss per source and samples.
    """
    cfg.check()  # before any work: build_config does it too, a config built in code may not have been

    def summarize(model: Llama) -> dict:
        # the tokenizer pretrain trained is in every checkpoint of the run; fit has just written ckpt/last.pt
        ckpt = load_checkpoint(run_path(cfg, TOPIC) / "ckpt" / "last.pt", map_location="cpu")
        tok = tokenizer_from_state(ckpt["tokenizer"])
        train, val = base_texts(cfg)
        t = cfg.train
        return {"weights": {n: parse_weights(cfg.weights).get(n, 1.0) for n in PRETRAIN_SOURCES},
                "train_chars": {n: len(x) for n, x in train.items()},
                "val_chars": {n: len(x) for n, x in val.items()},
                "tokens_seen": ckpt["step"] * t.batch_size * t.grad_accum * model.cfg.block_size,
                "special_tokens": dict(tok.special_tokens),
                "val_loss_by_source": source_losses(model, tok, val, model.cfg.block_size, cfg.eval_tokens),
                "samples": samples(model, tok, cfg.sample_tokens, cfg.seed)}

    return pretrain(cfg, TOPIC, Llama, title="基座模型", summarize=summarize, texts=_joined)


def mixture_table(summary: dict) -> str:
    """The mixture of a finished run as a Markdown table: weight, train characters and val loss per source."""
    rows = [[n, f"{summary['weights'][n]:g}", f"{summary['train_chars'][n]:,}", f"{summary['val_loss_by_source'][n]:.3f}"]
            for n in summary["val_loss_by_source"]]
    rows.append(["合计", "", f"{sum(summary['train_chars'].values()):,}",
                 f"{np.mean(list(summary['val_loss_by_source'].values())):.3f}（平均）"])
    return markdown_table(["来源", "权重（轮数）", "训练字符", "验证损失"], rows, "lrrr")
