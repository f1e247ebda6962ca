"""Corpus BLEU and chrF with sacrebleu (https://github.com/mjpost/sacrebleu), on detokenized strings.

sacrebleu tokenizes itself so that scores are comparable across papers: "13a" (the WMT default) for
English, "zh" (every Chinese character a token) for Chinese targets. Scores are 0-100.
"""

from __future__ import annotations

from typing import Sequence


def _tok(tgt_lang: str) -> str:
    return "zh" if tgt_lang == "zh" else "13a"


def bleu(hyps: Sequence[str], refs: Sequence[str], tgt_lang: str = "en", lowercase: bool = False) -> float:
    """Corpus BLEU (0-100) of hypotheses against one reference each. bleu(['a b c d'], ['a b c d']) -> 100.0

    `lowercase=True` scores case-insensitively (our English vocabulary is lower-cased).
    """
    import sacrebleu

    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    return float(sacrebleu.corpus_bleu(list(hyps), [list(refs)], tokenize=_tok(tgt_lang), lowercase=lowercase).score)


def chrf(hyps: Sequence[str], refs: Sequence[str], tgt_lang: str = "en", lowercase: bool = False) -> float:
    """Corpus chrF (character n-gram F-score, 0-100); independent of word tokenization."""
    import sacrebleu

    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    return float(sacrebleu.metrics.CHRF(lowercase=lowercase).corpus_score(list(hyps), [list(refs)]).score)


def exact_match(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """Fraction of hypotheses equal to their reference (after stripping)."""
    return sum(h.strip() == r.strip() for h, r in zip(hyps, refs)) / max(1, len(refs))
