"""Bag-of-words / TF-IDF features for text classification, fitted on the train split only.

English (`tweets`): word 1-2-grams. Chinese (`chinese-reviews`): character 1-2-grams (no word
segmenter needed: Chinese characters already carry most of the meaning). The matrices stay
SciPy-sparse (float32); the NumPy MLP and the baseline consume them as they are, the torch MLP
turns one mini-batch at a time into a dense tensor.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from llmpath.data.corpora import LabeledTexts, load_classification, split_indices

_CJK = re.compile(r"[\u4e00-\u9fff]")


def is_chinese(texts: list[str], sample: int = 500) -> bool:
    """True when most of the first texts contain CJK characters."""
    head = texts[:sample]
    return sum(bool(_CJK.search(t)) for t in head) > len(head) / 2


def make_vectorizer(chinese: bool, max_features: int, ngram_max: int = 2, min_df: int = 2) -> TfidfVectorizer:
    if chinese:
        return TfidfVectorizer(analyzer="char", ngram_range=(1, ngram_max), max_features=max_features,
                               min_df=min_df, sublinear_tf=True, dtype=np.float32)
    return TfidfVectorizer(analyzer="word", ngram_range=(1, ngram_max), max_features=max_features,
                           min_df=min_df, sublinear_tf=True, lowercase=True, dtype=np.float32,
                           token_pattern=r"(?u)\b\w+\b|[!?]")


@dataclass
class Features:
    """Sparse TF-IDF rows and labels of the three splits, and the fitted vectorizer."""

    x_train: object
    y_train: np.ndarray
    x_val: object
    y_val: np.ndarray
    x_test: object
    y_test: np.ndarray
    label_names: list[str]
    vectorizer: TfidfVectorizer
    chinese: bool

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]


def split_dataset(data: LabeledTexts, seed: int = 0) -> tuple[LabeledTexts, LabeledTexts, LabeledTexts]:
    tr, va, te = split_indices(len(data), (0.8, 0.1, 0.1), seed)
    return data.subset(tr), data.subset(va), data.subset(te)


def build_features(name: str, max_features: int = 20000, ngram_max: int = 2, seed: int = 0,
                   max_train: int = 0) -> Features:
    """TF-IDF features of a dataset's 80/10/10 split; the vocabulary and idf come from train only."""
    data = load_classification(name)
    train, val, test = split_dataset(data, seed)
    if max_train and len(train) > max_train:
        train = train.subset(np.sort(np.random.default_rng(seed).permutation(len(train))[:max_train]))
    chinese = is_chinese(data.texts)
    vec = make_vectorizer(chinese, max_features, ngram_max)
    x_train = vec.fit_transform(train.texts).tocsr()
    return Features(x_train, train.labels, vec.transform(val.texts).tocsr(), val.labels,
                    vec.transform(test.texts).tocsr(), test.labels, data.label_names, vec, chinese)
