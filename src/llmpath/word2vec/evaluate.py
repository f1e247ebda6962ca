"""Intrinsic evaluation of word vectors on the sets that gensim ships in its test data.

    word_pairs(vectors, vocab.index, "wordsim353")   # {"spearman": 0.41, "pairs": 340, "oov": 13}
    analogies(vectors, vocab.index)                  # {"accuracy": 0.12, "questions": 4218, "oov": 15326, ...}

- WordSim-353 (Finkelstein et al., 2002) and SimLex-999 (Hill et al., 2015): word pairs with human scores;
  the score is Spearman's rank correlation between the humans and the cosine of the two vectors, over the
  pairs whose words both are in the vocabulary (the others are counted as out of vocabulary).
- Google's analogy questions (Mikolov et al., 2013, `questions-words.txt`): a is to b as c is to ?, answered
  by 3CosAdd: the word (other than a, b, c) whose unit vector has the largest cosine with b - a + c of unit
  vectors. Accuracy over the questions whose four words are all in the vocabulary.

Words are compared case-insensitively, as gensim's `evaluate_word_pairs` / `evaluate_word_analogies` do; a
test checks that both give the same numbers on the same vectors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llmpath.data.corpora import DataError, _package_dir

SETS = {"wordsim353": "wordsim353.tsv", "simlex999": "simlex999.txt", "analogies": "questions-words.txt"}


def eval_set_path(name: str) -> Path:
    """The file of an evaluation set inside the installed gensim package (nothing is downloaded)."""
    if name not in SETS:
        raise DataError(f"unknown evaluation set '{name}'; choose from: {', '.join(SETS)}")
    path = _package_dir("gensim") / "test" / "test_data" / SETS[name]
    if not path.exists():
        raise DataError(f"{path} is missing; reinstall gensim (`pip install --force-reinstall gensim`)")
    return path


def read_pairs(name: str) -> list[tuple[str, str, float]]:
    """(word, word, human score) rows of a similarity set. read_pairs("wordsim353")[0] -> ('love', 'sex', 6.77)"""
    rows = []
    for line in eval_set_path(name).read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if line.startswith("#") or len(parts) != 3:
            continue
        rows.append((parts[0].lower(), parts[1].lower(), float(parts[2])))
    return rows


def unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (zero rows stay zero)."""
    v = np.asarray(vectors, dtype=np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def _lower_index(index: dict[str, int]) -> dict[str, int]:
    """word.lower() -> id; of words that differ only in case the more frequent (lower id) wins, as in gensim."""
    out: dict[str, int] = {}
    for w, i in sorted(index.items(), key=lambda kv: kv[1]):
        out.setdefault(w.lower(), i)
    return out


def word_pairs(vectors: np.ndarray, index: dict[str, int], name: str = "wordsim353") -> dict:
    """Spearman (and Pearson) correlation of cosine similarity with the human scores, in-vocabulary pairs only."""
    from scipy.stats import pearsonr, spearmanr

    idx = _lower_index(index)
    u = unit(vectors)
    model, gold, oov = [], [], 0
    for a, b, score in read_pairs(name):
        if a not in idx or b not in idx:
            oov += 1
            continue
        model.append(float(u[idx[a]] @ u[idx[b]]))
        gold.append(score)
    if len(gold) < 3:
        return {"spearman": float("nan"), "pearson": float("nan"), "pairs": len(gold), "oov": oov}
    return {"spearman": float(spearmanr(gold, model)[0]), "pearson": float(pearsonr(gold, model)[0]),
            "pairs": len(gold), "oov": oov}


def read_analogies() -> list[tuple[str, list[tuple[str, str, str, str]]]]:
    """(section, [(a, b, c, d), ...]) of questions-words.txt, lower-cased."""
    sections: list[tuple[str, list]] = []
    for line in eval_set_path("analogies").read_text(encoding="utf-8").splitlines():
        if line.startswith(": "):
            sections.append((line[2:].strip(), []))
        elif len(words := line.lower().split()) == 4 and sections:
            sections[-1][1].append(tuple(words))
    return sections


def analogies(vectors: np.ndarray, index: dict[str, int], batch: int = 512) -> dict:
    """3CosAdd accuracy over the in-vocabulary questions, overall and for the semantic / syntactic halves."""
    idx = _lower_index(index)
    u = unit(vectors)
    qs, kinds, oov = [], [], 0
    for section, rows in read_analogies():
        for q in rows:
            if all(w in idx for w in q):
                qs.append([idx[w] for w in q])
                kinds.append(not section.startswith("gram"))  # Mikolov's split: gram* sections are syntactic
            else:
                oov += 1
    if not qs:
        return {"accuracy": float("nan"), "questions": 0, "oov": oov, "semantic": float("nan"), "syntactic": float("nan")}
    q = np.array(qs)  # (N, 4): a, b, c, expected
    correct = np.zeros(len(q), dtype=bool)
    for s in range(0, len(q), batch):
        a, b, c, d = q[s:s + batch].T
        target = u[b] - u[a] + u[c]  # (n, C): the query; its length does not change the argmax
        sims = target @ u.T  # (n, V)
        rows = np.arange(len(a))
        sims[rows, a] = sims[rows, b] = sims[rows, c] = -np.inf  # the question's own words are never the answer
        correct[s:s + batch] = sims.argmax(1) == d
    sem = np.array(kinds)
    return {"accuracy": float(correct.mean()), "questions": len(q), "oov": oov,
            "semantic": float(correct[sem].mean()) if sem.any() else float("nan"),
            "syntactic": float(correct[~sem].mean()) if (~sem).any() else float("nan")}


def evaluate_vectors(vectors: np.ndarray, index: dict[str, int]) -> dict:
    """All three sets in one dict: wordsim353, simlex999 (Spearman, pairs, oov) and analogies."""
    return {"wordsim353": word_pairs(vectors, index, "wordsim353"), "simlex999": word_pairs(vectors, index, "simlex999"),
            "analogies": analogies(vectors, index)}


def nearest(vectors: np.ndarray, words: list[str], index: dict[str, int], word: str, k: int = 8) -> list[tuple[str, float]]:
    """The k words with the largest cosine similarity to `word` (itself excluded)."""
    if word not in index:
        raise DataError(f"'{word}' is not in the vocabulary ({len(words):,} words); try another word or a lower --min_count")
    u = unit(vectors)
    sims = u @ u[index[word]]
    sims[index[word]] = -np.inf
    top = np.argsort(-sims)[:k]
    return [(words[i], float(sims[i])) for i in top]
