"""Preference pairs (llmpath.chat.preferences): splits by source item, rejected answers wrong in the intended way,
one build per seed, and the pair batches the reward model and DPO read."""

import re
from dataclasses import replace
from functools import lru_cache

import pytest
import torch

from llmpath.chat import data as D
from llmpath.chat import preferences as P
from llmpath.chat.template import IM_END, PAD, encode_chat
from llmpath.data import load_classification
from llmpath.data.corpora import DataError
from llmpath.tokenizers import train_gpt_tokenizer


@lru_cache(maxsize=None)
def built(seed: int = 0) -> dict:
    return P.build_pairs(seed, max_per_kind=20, max_eval=5)


def of_kind(kind: str, split: str = "train", seed: int = 0) -> list:
    return [p for p in built(seed)[split] if p.kind == kind]


def label_of(source_id: str) -> str:
    name, i = source_id.split(":")
    data = load_classification(name)
    label = data.label_names[data.labels[int(i)]]
    return {"neg": "negative", "pos": "positive"}.get(label, label)


@pytest.fixture(scope="module")
def tok():
    return train_gpt_tokenizer("hello world 你好 1+1=2", vocab_size=264, pattern="digits")  # bytes, chat tokens


def test_pairs_take_their_source_items_split_and_reject_from_the_same_split():
    pairs = built(0)
    ids = {s: {p.source_id for p in ps} for s, ps in pairs.items()}
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
    for split, ps in pairs.items():
        assert {p.kind: sum(q.kind == p.kind for q in ps) for p in ps} == {k: 20 if split == "train" else 5
                                                                             for k in P.PAIR_KINDS}
        for p in ps:
            assert D.split_of(p.source_id) == split and p.chosen != p.rejected
            if p.kind in ("review", "chitchat"):  # a real text of another item, held out with the chosen one
                assert D.split_of(p.rejected_id) == split and p.rejected_id != p.source_id
                assert p.rejected_id.partition(":")[0] == p.source_id.partition(":")[0], p  # same dataset/language
            else:
                assert p.rejected_id == ""
    templates = {(s, u) for lang, s, u, _ in D.TEMPLATES["write-review"]}
    for p in (p for ps in pairs.values() for p in ps if p.kind == "review"):
        name, i = p.source_id.split(":")
        assert p.chosen == load_classification(name).texts[int(i)] and label_of(p.source_id) == p.label
        rname, j = p.rejected_id.split(":")
        assert p.rejected == load_classification(rname).texts[int(j)] and label_of(p.rejected_id) != p.label
        assert len(p.chosen) <= D.MAX_TEXT_CHARS and len(p.rejected) <= D.MAX_TEXT_CHARS
        fields = {"praise": D.PRAISE.get(p.label, ""), "label_zh": D.LABEL_WORDS[p.label]["zh"],
                  "label_en": D.LABEL_WORDS[p.label]["en"]}
        system = p.prompt[0]["content"] if p.prompt[0]["role"] == "system" else None
        assert any((s and s.format(**fields), u.format(**fields)) == (system, p.prompt[-1]["content"])
                   for s, u in templates), p.prompt  # a write-review prompt asking for the chosen text's sentiment
    replies = {r for lang in ("zh", "en") for rs in P._last_replies(lang).values() for r in rs}  # (id, last reply)
    for p in of_kind("chitchat") + of_kind("chitchat", "test"):
        assert (p.rejected_id, p.rejected) in replies and p.prompt[-1]["role"] == "user"
    assert {p.source_id[:11] for p in of_kind("chitchat")} == {"chitchat-zh", "chitchat-en"}


def test_rejected_answers_are_wrong_in_the_intended_way():
    arith = of_kind("arithmetic") + of_kind("arithmetic", "test")
    for p in arith:
        a, op, b = re.fullmatch(r"arith:(\d+)([+-])(\d+)", p.source_id).groups()
        c = int(a) + int(b) if op == "+" else int(a) - int(b)
        wrong = D.parse_int(p.rejected)
        assert D.parse_int(p.chosen) == c and isinstance(wrong, int) and wrong != c and wrong in P.near_misses(c)
        assert re.sub(r"\d+", str(c), p.rejected, count=1) == p.chosen  # the same answer template
    assert P.near_misses(52) == [53, 51, 62, 42, 152, 25] and P.near_misses(10) == [11, 9, 20, 0, 110]  # no "01"
    assert all(n >= 0 and n != c for c in range(0, 2000, 7) for n in P.near_misses(c))
    idiom = of_kind("idiom-chain") + of_kind("idiom-chain", "val") + of_kind("idiom-chain", "test")
    kinds = set()
    for p in idiom:
        prompt = p.source_id.partition(":")[2]
        assert D.idiom_valid(p.chosen, prompt) and not D.idiom_valid(p.rejected, prompt)
        is_idiom, follows = p.rejected in D._idiom_set(), D.idiom_follows(p.rejected, prompt)
        assert is_idiom != follows and len(p.rejected) == 4  # a real idiom breaking the rule, or a rule-keeping fake
        kinds.add(is_idiom)
    assert kinds == {True, False}
    with pytest.raises(DataError, match="unknown pair kind"):
        P.build_pairs(kinds=("reviews",))


def test_a_seed_fixes_the_pairs_and_never_moves_a_split():
    again = P.build_pairs(0, max_per_kind=20, max_eval=5)
    assert again == built(0)
    other = built(1)
    assert {p.source_id for p in other["train"]} != {p.source_id for p in built(0)["train"]}
    assert all(D.split_of(p.source_id) == s for s, ps in other.items() for p in ps)
    table = P.pair_card_table(built(0)).splitlines()
    assert table[0] == "| 类型 | 训练 | 验证 | 测试 |" and table[2] == "| review | 20 | 5 | 5 |"
    assert table[-1] == "| 合计 | 80 | 20 | 20 |"


def test_pair_batches_keep_each_pairs_two_sides_in_one_row(tok):
    pairs = of_kind("arithmetic") + of_kind("idiom-chain")  # short: every pair fits
    batches = P.PairBatches(tok, pairs, batch_size=4, block_size=512, seed=3)
    assert len(batches.rows) == 40 and batches.per_epoch == 10
    ids, mask, lengths = batches(12)
    assert ids.shape == mask.shape and ids.shape[:2] == (4, 2) and lengths.shape == (4, 2)
    assert ids.dtype == mask.dtype == lengths.dtype == torch.int64 and ids.shape[2] == int(lengths.max())
    pad, end = tok.special_tokens[PAD], tok.special_tokens[IM_END]
    for k, n in enumerate(batches._epochs.indices(12)):  # row k: pair n, [k, 0] its chosen side, [k, 1] its rejected
        p = batches.pairs[n]
        for side, answer in ((0, p.chosen), (1, p.rejected)):
            L, row_ids, row_mask = int(lengths[k, side]), ids[k, side], mask[k, side]
            want_ids, want_mask = encode_chat(tok, p.prompt + [{"role": "assistant", "content": answer}])
            assert row_ids[:L].tolist() == want_ids[:-1] and row_mask[:L].tolist() == want_mask[:-1]  # no "\n"
            assert row_ids[L - 1] == end and (row_ids[L:] == pad).all() and (row_mask[L:] == 0).all()
            assert tok.decode(row_ids[row_mask.bool()].tolist()) == answer + IM_END
    again = P.PairBatches(tok, pairs, batch_size=4, block_size=512, seed=3)(12)
    assert all(torch.equal(x, y) for x, y in zip(again, (ids, mask, lengths)))
    assert not torch.equal(P.PairBatches(tok, pairs, batch_size=4, block_size=512, seed=4)(12)[0], ids)


def test_a_pair_that_does_not_fit_whole_is_dropped_never_cut(tok):
    p = of_kind("arithmetic")[0]
    chosen, rejected = P.encode_pair(tok, p, block_size=10_000)
    n = max(len(chosen[0]), len(rejected[0]))
    assert P.encode_pair(tok, p, block_size=n) is not None and P.encode_pair(tok, p, block_size=n - 1) is None
    long = replace(p, rejected=p.rejected + " (that is my final answer)")  # only its rejected side grows
    assert P.encode_pair(tok, long, block_size=len(chosen[0])) is None
    pairs = of_kind("idiom-chain", "test") + [long] + of_kind("arithmetic", "test")
    (ids, mask, lengths), kept = P.pair_tensors(tok, pairs, block_size=n)
    assert long not in kept and kept == [q for q in pairs if P.encode_pair(tok, q, n)]  # the rest, in order
    assert ids.shape[:2] == mask.shape[:2] == lengths.shape == (len(kept), 2) and int(lengths.max()) <= n
    first = P.encode_pair(tok, kept[-1], n)
    assert ids[-1, 0, :lengths[-1, 0]].tolist() == first[0][0]
    assert ids[-1, 1, :lengths[-1, 1]].tolist() == first[1][0]
    with pytest.raises(DataError, match="larger block_size"):
        P.PairBatches(tok, pairs, batch_size=2, block_size=4)
