"""Built-in datasets load from their packages; splits are deterministic; user paths work."""

import json

import numpy as np
import pytest
import torch

from llmpath.data import (CharTokenizer, DataError, EpochBatches, RandomWindows, load_classification, load_pairs,
                          load_text, split_indices, split_text)
from llmpath.data.batching import pad_sequences
from llmpath.data.corpora import markdown_play_to_text


def test_shakespeare_is_plain_text():
    text = load_text("shakespeare")
    assert 4_000_000 < len(text) < 6_000_000
    assert text.startswith("THESEUS:\n")
    for mark in ("**", "##", "_Enter", "\\"):
        assert mark not in text
    tiny = load_text("shakespeare-tiny")
    assert 1_000_000 <= len(tiny) < 1_300_000 and text.startswith(tiny[:10000])


def test_markdown_conversion():
    md = "# Play\n\n## ACT I\n\n_Enter A_\n\n**ROMEO**  \nHello, \\[world\\]  \nline _two_\n\n**Nurse**  \nAy.\n"
    assert markdown_play_to_text(md) == "ROMEO:\nHello, [world]\nline two\n\nNURSE:\nAy.\n"


def test_tweets():
    d = load_classification("tweets")
    assert d.label_names == ["negative", "neutral", "positive"]
    assert 30_000 < len(d) < 38_158 and len(set(d.texts)) == len(d)  # duplicates dropped
    assert np.bincount(d.labels).min() > 5000


def test_chinese_reviews():
    d = load_classification("chinese-reviews")
    assert d.label_names == ["neg", "pos"] and len(d) > 15_000
    assert len(set(d.texts)) == len(d)
    assert any("书" in t for t in d.texts[:200])


def test_hsk_pairs():
    pairs = load_pairs("hsk-pairs")
    assert len(pairs) == 4354
    zh, en = pairs[0]
    assert any("\u4e00" <= c <= "\u9fff" for c in zh) and en.isascii()


def test_splits_are_deterministic_and_disjoint():
    a = split_indices(1000, (0.8, 0.1, 0.1), seed=3)
    b = split_indices(1000, (0.8, 0.1, 0.1), seed=3)
    c = split_indices(1000, (0.8, 0.1, 0.1), seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    assert [len(x) for x in a] == [800, 100, 100]
    assert len(np.unique(np.concatenate(a))) == 1000
    tr, va, te = split_text("abcdefghij", (0.8, 0.1, 0.1))
    assert (tr, va, te) == ("abcdefgh", "i", "j")


def test_user_paths(tmp_path):
    (tmp_path / "t.txt").write_text("hello world\n")
    assert load_text(str(tmp_path / "t.txt")) == "hello world\n"
    (tmp_path / "c.csv").write_text("text,label\ngood,pos\nbad,neg\nfine,pos\n")
    d = load_classification(str(tmp_path / "c.csv"))
    assert d.label_names == ["neg", "pos"] and list(d.labels) == [1, 0, 1]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in [{"text": "a", "label": 1}, {"text": "b", "label": 0}]))
    assert len(load_classification(str(tmp_path / "c.jsonl"))) == 2
    (tmp_path / "p.tsv").write_text("src\ttgt\n你好\thello\n")
    assert load_pairs(str(tmp_path / "p.tsv")) == [("你好", "hello")]


@pytest.mark.parametrize("call, message", [
    (lambda: load_text("shakespear"), "unknown dataset 'shakespear'; choose one of: shakespeare, shakespeare-tiny"),
    (lambda: load_text("tweets"), "'tweets' is a classification dataset"),
    (lambda: load_text("/no/such/file.txt"), "does not exist"),
])
def test_bad_names(call, message):
    with pytest.raises(DataError, match=message):
        call()


def test_bad_user_files(tmp_path):
    (tmp_path / "bad.csv").write_text("txt,lab\na,b\n")
    with pytest.raises(DataError, match="needs columns text, label"):
        load_classification(str(tmp_path / "bad.csv"))
    (tmp_path / "one.csv").write_text("text,label\na,x\nb,x\n")
    with pytest.raises(DataError, match="only one label"):
        load_classification(str(tmp_path / "one.csv"))


def test_char_tokenizer(tmp_path):
    tok = CharTokenizer.train("hello 世界")
    ids = tok.encode("世界 hello")
    assert tok.decode(ids) == "世界 hello"
    with pytest.raises(DataError, match="character 'z' is not in this model's character vocabulary"):
        tok.encode("z")
    unk = CharTokenizer.train("ab", unk=True)
    assert unk.encode("abz") == [1, 2, 0]
    tok.save(tmp_path / "tok.json")
    assert CharTokenizer.load(tmp_path / "tok.json").encode("hello") == tok.encode("hello")


def test_batches_are_pure_functions_of_step():
    w = RandomWindows(np.arange(100), block_size=8, batch_size=4, seed=1)
    x, y = w(5)
    assert x.shape == (4, 8) and torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(w(5)[0], x)
    assert not torch.equal(w(6)[0], x)
    eb = EpochBatches(10, 3, collate=lambda idx: idx, seed=0)
    epoch0 = np.concatenate([eb(i) for i in range(3)])
    assert len(set(epoch0)) == 9 and np.array_equal(eb(1), EpochBatches(10, 3, lambda i: i, seed=0)(1))
    assert pad_sequences([[1, 2], [3]], pad_id=0).tolist() == [[1, 2], [3, 0]]
