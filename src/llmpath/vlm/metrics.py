"""Caption scores: what a generated caption got right, object by object, besides BLEU and chrF.

    caption_scores(["左边是 3，右边是 1"], ["左边是 3，右边是 7"], "zh")
    -> {"exact_match": 0.0, "digit_acc": 0.5, "position_acc": 0.5, "bleu": ..., "chrf": ..., "n": 1}

Digit captions: exact match; digit_acc, the k-th digit the hypothesis names equals the reference's k-th digit
(reading order); position_acc, each reference (position, digit) pair appears in the hypothesis with the right
position word, in any order. Shape captions: exact match and the accuracy of each attribute of the k-th shape
(shape, colour, size, position) and their mean. BLEU and chrF come from sacrebleu as in the translation chapter
(`llmpath.seq2seq.metrics`: Chinese scored character by character). A model's output may be any text: clauses
are found where they parse and the rest counts as wrong; nothing here raises on garbage.
"""

from __future__ import annotations

from collections import Counter

from llmpath.config import ConfigError
from llmpath.seq2seq.metrics import bleu, chrf, exact_match
from llmpath.vlm.data import LANGS, find_digits, find_shapes

ATTRIBUTES = ("shape", "colour", "size", "where")


def _text(h) -> str:
    return h if isinstance(h, str) else ""  # a None or a token list from a broken decoder: an empty caption


def digit_scores(hyps: list[str], refs: list[str], lang: str) -> dict:
    """digit_acc and position_acc over all reference digits (see the module docstring)."""
    right_digit = right_pos = total = 0
    for h, r in zip(hyps, refs):
        ref, hyp = find_digits(r, lang), find_digits(h, lang)
        total += len(ref)
        right_digit += sum(k < len(hyp) and hyp[k][1] == d for k, (_, d) in enumerate(ref))
        right_pos += sum((Counter(ref) & Counter(hyp)).values())  # a pair named twice counts once per reference
    return {"digit_acc": right_digit / max(1, total), "position_acc": right_pos / max(1, total)}


def shape_scores(hyps: list[str], refs: list[str], lang: str) -> dict:
    """Per-attribute accuracy of the k-th shape against the reference's k-th, and their mean."""
    right = dict.fromkeys(ATTRIBUTES, 0)
    total = 0
    for h, r in zip(hyps, refs):
        ref, hyp = find_shapes(r, lang), find_shapes(h, lang)
        total += len(ref)
        for k, obj in enumerate(ref):
            for a in ATTRIBUTES:
                right[a] += k < len(hyp) and hyp[k][a] == obj[a]
    out = {f"{a}_acc": right[a] / max(1, total) for a in ATTRIBUTES}
    out["attribute_acc"] = sum(right.values()) / max(1, len(ATTRIBUTES) * total)
    return out


def caption_scores(hyps: list[str], refs: list[str], lang: str, kind: str | None = None) -> dict:
    """All scores of hypotheses against one reference caption each; kind ("digits" | "shapes") is read from the
    references when not given. Accuracies are in [0, 1], BLEU and chrF in [0, 100]."""
    if lang not in LANGS:
        raise ConfigError(f"unknown caption language '{lang}'; choose one of: {', '.join(LANGS)}")
    if len(hyps) != len(refs) or not refs:
        raise ValueError(f"{len(hyps)} hypotheses for {len(refs)} references; give one caption per reference")
    hyps = [_text(h) for h in hyps]
    if kind is None:
        kind = "digits" if find_digits(refs[0], lang) else "shapes"
    if kind not in ("digits", "shapes"):
        raise ConfigError(f"unknown caption kind '{kind}'; choose digits or shapes")
    if kind == "digits" and not all(find_digits(r, lang) for r in refs) or \
            kind == "shapes" and not all(find_shapes(r, lang) for r in refs):
        raise ValueError(f"some references are not {kind} captions in '{lang}'; pass the scenes' own captions")
    out = {"exact_match": exact_match(hyps, refs)}
    out.update(digit_scores(hyps, refs, lang) if kind == "digits" else shape_scores(hyps, refs, lang))
    out["bleu"] = bleu(hyps, refs, tgt_lang=lang)
    out["chrf"] = chrf(hyps, refs, tgt_lang=lang)
    out["n"] = len(refs)
    return out
