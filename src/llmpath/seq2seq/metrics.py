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


def bleu_bootstrap(hyps: Sequence[str], base: Sequence[str], refs: Sequence[str], tgt_lang: str = "en",
                   lowercase: bool = False, n: int = 1000, seed: int = 0) -> dict:
    """Paired bootstrap (Koehn 2004) of the corpus-BLEU gain of `hyps` over `base` on the same references.

    Resamples the sentences n times with replacement and recomputes both corpus scores from per-sentence
    n-gram counts. -> {"gain": on all sentences, "lo", "hi": the 2.5% and 97.5% quantiles, "p_le_0"}.
    """
    import numpy as np
    from sacrebleu.metrics import BLEU

    metric = BLEU(tokenize=_tok(tgt_lang), lowercase=lowercase, effective_order=True)  # counts only: no warning

    def stats(hs):  # (N, 10): 4 matches, 4 totals, hypothesis length, reference length
        rows = [metric.sentence_score(h, [r]) for h, r in zip(hs, refs)]
        return np.array([[*s.counts, *s.totals, s.sys_len, s.ref_len] for s in rows], dtype=np.int64)

    def corpus(st):
        # "exp" smoothing, as corpus_bleu: an order with no match does not zero the whole score
        return BLEU.compute_bleu(st[:4].tolist(), st[4:8].tolist(), int(st[8]), int(st[9]), smooth_method="exp").score

    a, b = stats(hyps), stats(base)
    rng = np.random.default_rng(seed)
    gains = []
    for _ in range(n):
        idx = rng.integers(0, len(refs), len(refs))
        gains.append(corpus(a[idx].sum(0)) - corpus(b[idx].sum(0)))
    gains = np.array(gains)
    return {"gain": corpus(a.sum(0)) - corpus(b.sum(0)), "lo": float(np.quantile(gains, 0.025)),
            "hi": float(np.quantile(gains, 0.975)), "p_le_0": float((gains <= 0).mean())}
