"""BERT pretraining data: sentence splitting, offline sources, NSP pairs, MLM masking, batches."""

import importlib.util
import re

import numpy as np
import pytest
import torch

from llmpath.bert import data as D
from llmpath.bert.data import Example, PretrainBatches, eval_batches, layout, make_pairs, mask_tokens
from llmpath.config import ConfigError
from llmpath.data import EpochBatches, load_classification, split_indices


class WordTok:
    """Stand-in for WordPiece: one id per whitespace-separated word, five specials first."""

    pad_id, unk_id, cls_id, sep_id, mask_id = 0, 1, 2, 3, 4
    special_ids = {0, 1, 2, 3, 4}

    def __init__(self, words):
        self.itos = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(words))]
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.vocab_size = len(self.itos)

    def encode(self, text):
        return [self.stoi.get(w, self.unk_id) for w in text.split()]


def synthetic_corpus(n_docs=300, seed=0, fixed_len=None):
    """Documents whose tokens name their place: "d3s5t1" = document 3, sentence 5, token 1."""
    rng = np.random.default_rng(seed)
    docs = []
    for d in range(n_docs):
        n_sent = 1 if rng.random() < 0.3 else int(rng.integers(2, 15))
        docs.append([" ".join(f"d{d}s{s}t{t}" for t in range(fixed_len or int(rng.integers(1, 9))))
                     for s in range(n_sent)])
    return docs, WordTok(w for doc in docs for s in doc for w in s.split())


def where(tok, ids):
    """(doc, sentence, token) of every id."""
    return [tuple(int(x) for x in re.findall(r"\d+", tok.itos[i])) for i in ids]


def contiguous_in_doc(tok, ids):
    """Are ids one unbroken run of a single document's tokens?"""
    places = where(tok, ids)
    if len({p[0] for p in places}) != 1:
        return False
    return all((s2, t2) in {(s1, t1 + 1), (s1 + 1, 0)} for (_, s1, t1), (_, s2, t2) in zip(places, places[1:]))


# ------------------------------------------------------------------------------ sentences

def test_split_english():
    text = "It rained. Dr. Li stayed in, e.g. reading! Was it \"fun?\" Yes.\n\nNew paragraph\nwraps here"
    assert D.split_english(text) == ["It rained.", "Dr. Li stayed in, e.g. reading!", 'Was it "fun?"', "Yes.",
                                     "New paragraph wraps here"]
    assert D.split_english("J. R. R. Tolkien wrote it in 1937. It sold.") == ["J. R. R. Tolkien wrote it in 1937.", "It sold."]
    assert D.split_english("  \n ") == []


def test_split_chinese():
    text = "质量不错。就是太贵了！！还买吗?好的.价格1.5元\n“真的吗？”他问。"
    assert D.split_chinese(text) == ["质量不错。", "就是太贵了！！", "还买吗?", "好的.", "价格1.5元", "“真的吗？”", "他问。"]
    assert D.split_chinese("。\n\n") == ["。"]


def test_wiki_to_text_strips_markup():
    markup = """{{Infobox|name={{nested|x}}}}
'''Foo''' is a [[bar (thing)|bar]] in [[Baz]].<ref name="a">Cited.</ref> See [http://example.com the site].{{cn}}
[[File:Foo.jpg|thumb|A [[caption]] here]]
{| class="wikitable"
| cell || cell
|}
== History ==
* A listed item with words<!-- hidden -->
It costs&nbsp;5 <small>dollars</small>.<ref>x</ref>
== See also ==
* [[Other]]
[[Category:Things]]
[[de:Foo]]"""
    assert D.wiki_to_text(markup) == ["Foo is a bar in Baz. See the site.", "A listed item with words", "It costs 5 dollars."]


needs_gensim = pytest.mark.skipif(importlib.util.find_spec("gensim") is None, reason="gensim not installed")


@needs_gensim
def test_wiki_documents():
    docs = D.wiki_documents()
    sents = [s for d in docs for s in d]
    assert 80 <= len(docs) <= 140 and 12_000 <= len(sents) <= 30_000
    assert 1_500_000 <= sum(map(len, sents)) <= 4_000_000
    text = "\n".join(sents)
    for mark in ("{{", "}}", "[[", "]]", "'''", "<ref", "==", "http"):
        assert mark not in text, mark
    assert all(len(s.split()) >= 3 for s in sents)


def test_shakespeare_documents_are_speeches():
    docs = D.shakespeare_documents("shakespeare-tiny")
    assert len(docs) > 1000
    assert docs[0][0].startswith("Now, fair Hippolyta")  # THESEUS's first speech, without the speaker line
    assert not any(re.fullmatch(r"[A-Z][A-Z ]+:", line) for d in docs[:200] for line in d)


# ------------------------------------------------------------------------------ sources

@pytest.mark.parametrize("task", ["tweets", "chinese-reviews"])
def test_train_sources_hold_only_training_texts(task):
    data = load_classification(task)
    train, val, test = split_indices(len(data), seed=0)
    assert np.array_equal(D.train_texts(task), train)
    docs = D.SOURCES[f"{task}-train"]()

    def norm(t):
        return re.sub(r"\s+", "", t)

    train_texts = {norm(data.texts[i]) for i in train}
    heldout = {norm(data.texts[i]) for i in np.concatenate([val, test])} - train_texts
    seen = {norm("".join(d)) for d in docs}
    assert seen <= train_texts and not (seen & heldout)
    assert len(docs) >= 0.99 * len(train)


def test_pretraining_documents_unknown_source():
    with pytest.raises(ConfigError, match="wiki, shakespeare, shakespeare-tiny, tweets-train, chinese-reviews-train"):
        D.pretraining_documents(["tweets"])


def test_pretraining_documents_concatenates_and_shuffles(monkeypatch):
    monkeypatch.setitem(D.SOURCES, "shakespeare", lambda: [["a b c"], [], ["d e"]])
    monkeypatch.setitem(D.SOURCES, "wiki", lambda: [["f g h", "i j"]])
    docs = D.pretraining_documents(["shakespeare", "wiki"], seed=1)
    assert sorted(docs) == [["a b c"], ["d e"], ["f g h", "i j"]]
    assert docs == D.pretraining_documents(["shakespeare", "wiki"], seed=1)


# -------------------------------------------------------------------------------- pairs

def test_pairs_fit_and_lay_out():
    docs, tok = synthetic_corpus()
    for nsp in (True, False):
        for ex in make_pairs(docs, tok, 24, nsp=nsp):
            ids, seg = layout(ex, tok)
            assert len(ids) <= 24 and len(ex.a) > 0 and (len(ex.b) > 0) == nsp
            assert ids[0] == tok.cls_id and ids[len(ex.a) + 1] == tok.sep_id and ids[-1] == tok.sep_id
            assert seg == [0] * (len(ex.a) + 2) + [1] * (len(ex.b) + 1 if ex.b else 0)


def test_nsp_pairs_half_random_consecutive_or_other_document():
    docs, tok = synthetic_corpus(fixed_len=3)
    examples = make_pairs(docs, tok, 33, seed=0, short_seq_prob=0.0)  # chunks of 30 = 10 whole sentences: no cuts
    share = np.mean([ex.is_random for ex in examples])
    assert len(examples) > 400 and 0.45 <= share <= 0.55
    for ex in examples:
        assert contiguous_in_doc(tok, ex.a) and contiguous_in_doc(tok, ex.b)
        a_doc, b_doc = where(tok, ex.a[-1:])[0][0], where(tok, ex.b[:1])[0][0]
        if ex.is_random:
            assert a_doc != b_doc
        else:  # IsNext: B starts with the sentence right after A's last one
            assert contiguous_in_doc(tok, ex.a + ex.b) and where(tok, ex.b[:1])[0][2] == 0


def test_nsp_share_with_short_sequences_and_cuts():
    docs, tok = synthetic_corpus(seed=1)
    examples = make_pairs(docs, tok, 16, seed=3)
    assert 0.45 <= np.mean([ex.is_random for ex in examples]) <= 0.55


def test_make_pairs_deterministic_per_seed():
    docs, tok = synthetic_corpus(n_docs=80)
    assert make_pairs(docs, tok, 32, seed=5) == make_pairs(docs, tok, 32, seed=5)
    assert make_pairs(docs, tok, 32, seed=5) != make_pairs(docs, tok, 32, seed=6)


def test_mlm_only_chunks_are_contiguous_whole_documents():
    docs, tok = synthetic_corpus()
    examples = make_pairs(docs, tok, 12, nsp=False)
    assert all(not ex.b and not ex.is_random and len(ex.a) <= 10 for ex in examples)
    flat = [t for ex in examples for t in ex.a]
    assert flat == [i for d in docs for s in d for i in tok.encode(s)]  # every token once, in order
    assert all(contiguous_in_doc(tok, ex.a) for ex in examples)


def test_truncate_pair_matches_bert_loop():
    def reference(la, lb, m):  # google-research/bert truncate_seq_pair, counting only lengths
        while la + lb > m:
            if la > lb:
                la -= 1
            else:
                lb -= 1
        return la, lb

    rng = np.random.default_rng(0)
    for la in range(0, 30, 3):
        for lb in range(1, 30, 4):
            for m in (5, 12, 25):
                a, b = D._truncate_pair(list(range(la)), list(range(100, 100 + lb)), m, rng)
                assert (len(a), len(b)) == reference(la, lb, m)
                assert not a or a == list(range(a[0], a[0] + len(a)))  # a contiguous slice


def test_make_pairs_rejects_tiny_max_len():
    docs, tok = synthetic_corpus(n_docs=5)
    with pytest.raises(ConfigError, match="max_len"):
        make_pairs(docs, tok, 4)


# ------------------------------------------------------------------------------ masking

def test_mask_tokens_rates_and_labels():
    tok = WordTok(f"w{i}" for i in range(995))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, tok.vocab_size, (512, 128), generator=g)
    ids[:, 0], ids[:, 60] = tok.cls_id, tok.sep_id
    ids[::2, 100:] = tok.pad_id  # half the rows are padded
    masked, labels = mask_tokens(ids, g, tok)
    ordinary = ids >= 5
    chosen = labels != -100
    assert not (chosen & ~ordinary).any() and torch.equal(masked[~ordinary], ids[~ordinary])
    assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(masked[~chosen], ids[~chosen])
    assert abs(chosen.sum().item() / ordinary.sum().item() - 0.15) < 0.005
    to_mask = (masked[chosen] == tok.mask_id).float().mean().item()
    kept = (masked[chosen] == ids[chosen]).float().mean().item()
    assert abs(to_mask - 0.8) < 0.02 and abs(kept - 0.1) < 0.015 and abs(1 - to_mask - kept - 0.1) < 0.015
    assert (masked[chosen] >= 5).logical_or(masked[chosen] == tok.mask_id).all()  # random ids are never specials


def test_mask_tokens_picks_one_per_short_row():
    tok = WordTok(["a", "b"])
    ids = torch.tensor([[2, 5, 3, 0], [2, 5, 6, 3]])
    _, labels = mask_tokens(ids, 0, tok)
    assert ((labels != -100).sum(1) == 1).all() and (labels[:, [0, 3]] == -100).all()


# ------------------------------------------------------------------------------ batches

def _examples():
    docs, tok = synthetic_corpus(n_docs=120, seed=2)
    return make_pairs(docs, tok, 32, seed=0) + make_pairs(docs[:10], tok, 32, nsp=False), tok


def test_batches_pad_segments_and_labels():
    examples, tok = _examples()
    batches = PretrainBatches(examples, 16, tok, seed=0)
    assert batches.per_epoch == len(examples) // 16
    for step in range(batches.per_epoch):
        idx = batches.indices(step)
        b = batches(step)
        for row, i in enumerate(idx):
            ids, seg = layout(examples[i], tok)
            n = len(ids)
            original = torch.where(b.mlm_labels[row] != -100, b.mlm_labels[row], b.ids[row])
            assert original[:n].tolist() == ids and b.segments[row, :n].tolist() == seg
            assert (b.ids[row, n:] == tok.pad_id).all() and (b.segments[row, n:] == 0).all()
            assert (b.mlm_labels[row, n:] == -100).all()
            assert b.nsp_labels[row] == (int(examples[i].is_random) if examples[i].b else -100)


def test_batches_deterministic_in_step():
    examples, tok = _examples()
    for masking in ("dynamic", "static"):
        one = PretrainBatches(examples, 8, tok, seed=3, masking=masking)
        two = PretrainBatches(examples, 8, tok, seed=3, masking=masking)
        for step in (0, 5, 3 * one.per_epoch + 1, 5):  # out of order, as after a resume
            assert all(torch.equal(x, y) for x, y in zip(one(step), two(step)))
    reference = EpochBatches(len(examples), 8, collate=lambda idx: idx, seed=3)
    assert all(np.array_equal(one.indices(i), reference.indices(i)) for i in range(3 * one.per_epoch))


@pytest.mark.parametrize("masking", ["dynamic", "static"])
def test_masks_new_each_epoch_only_when_dynamic(masking):
    examples, tok = _examples()
    batches = PretrainBatches(examples, len(examples), tok, seed=0, masking=masking)  # one batch = one epoch

    def labels_by_example(step):
        return batches(step).mlm_labels[np.argsort(batches.indices(step))]

    same = torch.equal(labels_by_example(0), labels_by_example(1))
    assert same == (masking == "static")


def test_eval_batches_fixed_and_in_order():
    examples, tok = _examples()
    first, again = eval_batches(examples, 10, tok, seed=1), eval_batches(examples, 10, tok, seed=1)
    assert sum(len(b.ids) for b in first) == len(examples)
    assert all(torch.equal(x, y) for b1, b2 in zip(first, again) for x, y in zip(b1, b2))
    assert first[0].nsp_labels.tolist() == [int(ex.is_random) for ex in examples[:10]]


def test_unknown_masking_is_a_config_error():
    examples, tok = _examples()
    with pytest.raises(ConfigError, match="dynamic, static"):
        PretrainBatches(examples, 8, tok, masking="sometimes")


def test_unigram_loss_closed_form():
    train = [Example([5, 5, 6], [7], True), Example([5], [], False)]
    labels = torch.tensor([[-100, 5, 7], [6, -100, -100]])
    held = [D.PretrainBatch(labels, labels, labels, torch.tensor([0, 0]))]
    counts = np.array([1, 1, 1, 1, 1, 4, 2, 2], dtype=float)  # add-one on 3x"5", 1x"6", 1x"7"
    p = counts / counts.sum()
    expected = -(np.log(p[5]) + np.log(p[7]) + np.log(p[6])) / 3
    assert D.unigram_mlm_loss(train, held, vocab_size=8) == pytest.approx(expected)
