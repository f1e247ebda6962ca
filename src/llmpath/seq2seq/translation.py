"""What both translation topics share (stage 3's RNN seq2seq and stage 4's Transformer).

The options about data and decoding, the vocabulary pair a run keeps in its checkpoint, teacher-forced
val loss, translating a list of examples, BLEU / chrF on a split, and the `eval` and `translate`
commands. Each topic hands in its own `decode(model, src, src_len, beam, length_penalty, max_len)`
and `logits(model, batch)`; everything else is the same code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F

from llmpath.common import log, setup_logging
from llmpath.config import ConfigError, RunConfig, opt
from llmpath.runs import load_run, run_path
from llmpath.seq2seq.data import DETOKENIZE, PAD, TOKENIZE, Vocab, eval_batches, load_translation
from llmpath.seq2seq.metrics import bleu, chrf, exact_match


@dataclass
class TranslationRun(RunConfig):
    """Options every translation topic shares: the data and how to decode."""

    data: str = opt("hsk-pairs", "hsk-pairs | dates (synthetic) | a .csv/.tsv/.jsonl file of src,tgt pairs")
    direction: Literal["zh-en", "en-zh"] = opt("zh-en", "translation direction")
    beam: int = opt(5, "beam size for the beam-search evaluation and translate (1 = greedy)", min=1)
    length_penalty: float = opt(1.0, "GNMT length-penalty alpha for ranking beams (0 = raw log-prob)", min=0)
    max_len: int = opt(60, "longest output (also capped at 2 * source length + 10)", min=1)


def name_suffix(cfg: TranslationRun) -> str:
    """'-en-zh' and '-<data>' for runs off the default direction and data set."""
    out = f"-{cfg.direction}" if cfg.direction != "zh-en" and cfg.data != "dates" else ""
    return out + (f"-{Path(cfg.data).stem}" if cfg.data != "hsk-pairs" else "")


@dataclass
class TranslationVocab:
    """The source and target vocabularies and languages: what a run needs to read and write sentences."""

    src_vocab: Vocab
    tgt_vocab: Vocab
    src_lang: str
    tgt_lang: str

    @classmethod
    def of(cls, data) -> "TranslationVocab":
        return cls(data.src_vocab, data.tgt_vocab, data.src_lang, data.tgt_lang)

    def state_dict(self) -> dict:
        return {"kind": "translation", "src": self.src_vocab.state_dict(), "tgt": self.tgt_vocab.state_dict(),
                "src_lang": self.src_lang, "tgt_lang": self.tgt_lang}


def vocab_from_state(d: dict) -> TranslationVocab:
    return TranslationVocab(Vocab.from_state_dict(d["src"]), Vocab.from_state_dict(d["tgt"]), d["src_lang"], d["tgt_lang"])


# ------------------------------------------------------------------------------ evaluation

@torch.no_grad()
def token_nll(model, logits: Callable, batches: list[dict], device) -> float:
    """Mean NLL per target token, teacher forced, no smoothing: the val loss that picks best.pt."""
    total, n = 0.0, 0
    for b in batches:
        b = {k: v.to(device) for k, v in b.items()}
        out = logits(model, b)
        total += F.cross_entropy(out.flatten(0, 1), b["tgt_out"].flatten(), ignore_index=PAD, reduction="sum").item()
        n += int((b["tgt_out"] != PAD).sum())
    return total / max(n, 1)


def translate_examples(model, decode: Callable, examples, vocab, device="cpu", beam: int = 1,
                       length_penalty: float = 1.0, max_len: int = 60, batch_size: int = 64) -> tuple[list[str], list]:
    """Detokenized hypotheses (and per-sentence attention maps, None where the model gives none), in order."""
    hyps, attns = [], []
    model.eval()
    for b in eval_batches(examples, vocab.src_vocab, vocab.tgt_vocab, batch_size):
        out = decode(model, b["src"].to(device), b["src_len"].to(device), beam, length_penalty, max_len)
        for i in range(out.tokens.shape[0]):
            toks = vocab.tgt_vocab.decode(out.tokens[i].cpu())
            hyps.append(DETOKENIZE[vocab.tgt_lang](toks))
            attn = getattr(out, "attn", None)
            attns.append(None if attn is None else attn[i, : len(toks) + 1, : int(b["src_len"][i])].cpu())
    return hyps, attns


def scores(hyps: list[str], examples, vocab) -> dict:
    """BLEU and chrF (exact match and BLEU for the dates task), as sacrebleu computes them."""
    refs = [e.tgt_text for e in examples]
    if vocab.tgt_lang == "dates":
        refs = [DETOKENIZE["dates"](e.tgt_tokens) for e in examples]
        return {"exact_match": 100 * exact_match(hyps, refs), "bleu": bleu(hyps, refs, "en")}
    lower = vocab.tgt_lang == "en"  # our English vocabulary is lower-cased: score case-insensitively
    return {"bleu": bleu(hyps, refs, vocab.tgt_lang, lowercase=lower),
            "chrf": chrf(hyps, refs, vocab.tgt_lang, lowercase=lower)}


def evaluate_split(model, decode: Callable, data, cfg: TranslationRun, device="cpu", split: str = "test") -> dict:
    """{"greedy": scores + 8 samples, "beam": ...} on one split of `data`."""
    examples = getattr(data, split)
    out = {}
    for mode in ("greedy", "beam"):
        beam = 1 if mode == "greedy" else cfg.beam
        hyps, _ = translate_examples(model, decode, examples, data, device, beam, cfg.length_penalty, cfg.max_len)
        out[mode] = scores(hyps, examples, data)
        out[mode]["samples"] = [{"src": e.src_text, "ref": e.tgt_text, "hyp": h} for e, h in zip(examples[:8], hyps[:8])]
    return out


# ------------------------------------------------------------------------------ commands

def eval_command(cfg: TranslationRun, topic: str, decode: Callable, load_data: Callable = load_translation) -> dict:
    """Score a trained run on the test split, greedy and beam, with this command's decoding options."""
    setup_logging()
    model, _, saved = load_run(run_path(cfg, topic), topic=topic)
    data = load_data(saved)
    res = evaluate_split(model, decode, data, dataclasses.replace(
        saved, beam=cfg.beam, length_penalty=cfg.length_penalty, max_len=cfg.max_len))
    for mode, r in res.items():
        print(mode, {k: round(v, 2) for k, v in r.items() if k != "samples"})
    return res


def translate_command(cfg: Any, topic: str, decode: Callable, plot: Callable | None = None) -> str:
    """Translate cfg.text with the run the options name; `plot(model, vocab, out, src_toks, out_toks, cfg)` draws."""
    setup_logging()
    model, vocab, _ = load_run(run_path(cfg, topic), topic=topic)
    toks = TOKENIZE[vocab.src_lang](cfg.text)
    if not toks:
        raise ConfigError("nothing to translate: the text is empty")
    src = torch.tensor([vocab.src_vocab.encode(toks)])
    out = decode(model, src, torch.tensor([len(toks)]), cfg.beam, cfg.length_penalty, cfg.max_len)
    out_toks = vocab.tgt_vocab.decode(out.tokens[0])
    text = DETOKENIZE[vocab.tgt_lang](out_toks)
    print(text)
    if cfg.plot and plot is not None:
        path = plot(model, vocab, out, toks, out_toks, cfg)
        if path:
            log.info(f"figure: {path}")
    return text

