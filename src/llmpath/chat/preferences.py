"""Preference pairs (prompt, chosen answer, rejected answer) for the reward model and DPO, built from the course's data.

    pairs = build_pairs(seed=0, max_per_kind=2000, max_eval=200)  # {"train": [Pair, ...], "val": ..., "test": ...}
    print(pair_card_table(pairs))                                   # pairs per kind and split
    batches = PairBatches(tok, pairs["train"], batch_size=16, block_size=256)
    ids, mask, lengths = batches(0)     # (2B, T), (2B, T), (2B,): rows :B chosen, rows B: the same pairs' rejected
    (ids, mask, lengths), kept = pair_tensors(tok, pairs["test"], block_size=256)   # for evaluation, in order

No package ships preference data, so the pairs are built: an answer that is right by construction beside one that
is wrong in a single known way. Each kind asks the model one judgement:

    review       a write-review prompt ("写一条差评。", "Write a neutral tweet."); chosen: a real text of the asked
                 sentiment (the write-review answer); rejected: a real text of another sentiment, same dataset
    arithmetic   an arithmetic prompt; chosen: its answer; rejected: the same answer with a near miss in place of
                 the result (±1, ±10, ±100 or two digits swapped; never the right number, never negative)
    idiom-chain  chosen: an idiom that may follow the prompt; rejected: half the time a real idiom that breaks the
                 rule (it does not start with the prompt's last character), half the time a string that keeps the
                 rule but is no idiom (that character + the last three characters of another idiom). With one
                 kind of negative alone a model could learn a shortcut, "is it an idiom?" or "does the first
                 character match?"; with both it has to check both.
    chitchat     a chitchat-zh/-en dialogue without its last reply; chosen: the true last reply; rejected: the last
                 reply of another dialogue of the same language and split (fluent, but no answer to this one)

Leakage. A pair takes the split of its chosen answer's source item, `split_of(source_id)`, exactly as the
instruction examples do, and a rejected review or chitchat reply is drawn from that same split (its item is
`rejected_id`), so no held-out text appears in a train pair. Caps per kind and split work as in build_examples;
the seed picks items, templates and rejected answers, never a split.

Encoding. A side is encode_chat(prompt + [the answer]) without the template's newline after the last <|im_end|>:
a sampled answer ends at <|im_end|> too, and the reward model reads the last token. A pair is never cut: when
either side is longer than block_size tokens, the pair is dropped.

All kinds in full (caps None), train / val / test: review 43,166 / 5,398 / 5,383, arithmetic 17,988 / 983 / 1,029
(its own draw of 20,000 problems), idiom-chain 23,665 / 1,293 / 1,361, chitchat 2,101 / 243 / 149 (zh and en).
With the default caps: 2,000 / 200 / 200 per kind, but only 149 chitchat test pairs.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterator

import torch

from llmpath.chat.data import (BUILDERS, MAX_TEXT_CHARS, SPLITS, _chat_id, _idiom_set, dialogues, idioms, interleave,
                               split_of)
from llmpath.chat.template import IM_END, PAD, encode_chat
from llmpath.common import log, markdown_table
from llmpath.data.batching import EpochBatches, pad_sequences
from llmpath.data.corpora import DataError, load_classification

PAIR_KINDS = ("review", "arithmetic", "idiom-chain", "chitchat")
Encoded = tuple[list[int], list[int]]  # (ids, mask) of one side of a pair


@dataclass
class Pair:
    """A prompt and two answers to it, the chosen one better than the rejected one."""

    kind: str  # one of PAIR_KINDS
    source_id: str  # the chosen answer's source item: the pair takes its split, e.g. "tweets:812"
    prompt: list[dict]  # messages ending with the user turn (a system message may come first)
    chosen: str
    rejected: str
    lang: str = ""  # language of the instruction (zh/en), as Example.lang
    label: str = ""  # review pairs: the asked sentiment ("positive", "negative", "neutral"); else ""
    rejected_id: str = ""  # the rejected answer's source item (review, chitchat); "" for a made-up answer


# --------------------------------------------------------------------------------- rejected answers

@lru_cache(maxsize=2)
def _texts(name: str) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """(split, label) -> [(source id, text), ...]: the texts write-review answers with, of chinese-reviews or tweets."""
    data = load_classification(name)
    labels = [{"neg": "negative", "pos": "positive"}.get(n, n) for n in data.label_names]
    out = defaultdict(list)
    for i, (text, label) in enumerate(zip(data.texts, data.labels)):
        text = text.strip()
        if text and len(text) <= MAX_TEXT_CHARS:
            out[(split_of(f"{name}:{i}"), labels[label])].append((f"{name}:{i}", text))
    return dict(out)


@lru_cache(maxsize=2)
def _last_replies(lang: str) -> dict[str, list[tuple[str, str]]]:
    """split -> [(source id, last assistant reply), ...] of the chitchat dialogues of one language."""
    out = defaultdict(list)
    for turns in dialogues(lang):
        turns = turns[:len(turns) // 2 * 2]  # as the chitchat examples: end on the assistant
        sid = _chat_id(lang, turns)
        out[split_of(sid)].append((sid, turns[-1]))
    return dict(out)


def near_misses(c: int) -> list[int]:
    """Wrong results near c: ±1, ±10, ±100, two digits swapped; none negative. near_misses(52) -> [53, 51, 62, ...]"""
    s = str(c)
    swaps = [int(s[:j] + s[k] + s[j + 1:k] + s[j] + s[k + 1:]) for j in range(len(s)) for k in range(j + 1, len(s))
             if s[j] != s[k] and not (j == 0 and s[k] == "0")]  # no leading zero: 10 -> "01" is not a swap
    out: list[int] = []
    for n in (c + 1, c - 1, c + 10, c - 10, c + 100, c - 100, *swaps):
        if n >= 0 and n != c and n not in out:
            out.append(n)
    return out


def _not_an_idiom(first: str, rng: random.Random) -> str:
    """`first` + the last three characters of a random idiom, redrawn until the result is no idiom."""
    while True:
        w = first + rng.choice(idioms())[-3:]
        if w not in _idiom_set():
            return w


# --------------------------------------------------------------------------------------- builders

def _review_pairs(rng: random.Random) -> Iterator[Pair]:
    for ex in BUILDERS["write-review"](rng):
        pool, split = _texts(ex.source_id.partition(":")[0]), split_of(ex.source_id)
        chosen = ex.messages[-1]["content"]
        others = [label for s, label in sorted(pool) if s == split and label != ex.reference]
        while True:  # a text may be in the data twice under different labels: never reject the chosen text
            rid, text = rng.choice(pool[(split, rng.choice(others))])
            if text != chosen:
                break
        yield Pair("review", ex.source_id, ex.messages[:-1], chosen, text, ex.lang, ex.reference, rid)


def _arithmetic_pairs(rng: random.Random) -> Iterator[Pair]:
    for ex in BUILDERS["arithmetic"](rng):
        chosen = ex.messages[-1]["content"]  # every template's answer starts with the result
        wrong = rng.choice(near_misses(ex.reference))
        yield Pair("arithmetic", ex.source_id, ex.messages[:-1], chosen, re.sub(r"\d+", str(wrong), chosen, count=1),
                   ex.lang)


def _idiom_pairs(rng: random.Random) -> Iterator[Pair]:
    for ex in BUILDERS["idiom-chain"](rng):
        last = ex.source_id.partition(":")[2][-1]
        if rng.random() < 0.5:  # a real idiom that breaks the rule
            rejected = rng.choice(idioms())
            while rejected[0] == last:
                rejected = rng.choice(idioms())
        else:  # the rule kept, but no idiom
            rejected = _not_an_idiom(last, rng)
        yield Pair("idiom-chain", ex.source_id, ex.messages[:-1], ex.messages[-1]["content"], rejected, ex.lang)


def _chitchat_pairs(rng: random.Random) -> Iterator[Pair]:
    for ex in interleave([BUILDERS["chitchat-zh"](rng), BUILDERS["chitchat-en"](rng)], rng):
        pool = _last_replies(ex.task[-2:])[split_of(ex.source_id)]
        chosen = ex.messages[-1]["content"]
        while True:  # another question (paraphrased answers to this one share its id) with another reply
            rid, text = rng.choice(pool)
            if rid != ex.source_id and text != chosen:
                break
        yield Pair("chitchat", ex.source_id, ex.messages[:-1], chosen, text, ex.lang, rejected_id=rid)


PAIR_BUILDERS: dict[str, Callable[[random.Random], Iterator[Pair]]] = {
    "review": _review_pairs,
    "arithmetic": _arithmetic_pairs,
    "idiom-chain": _idiom_pairs,
    "chitchat": _chitchat_pairs,
}


def build_pairs(seed: int = 0, max_per_kind: int | None = 2000, max_eval: int | None = 200,
                kinds: tuple[str, ...] = PAIR_KINDS) -> dict[str, list[Pair]]:
    """Pairs per split: at most `max_per_kind` train and `max_eval` val and test pairs per kind (None: all)."""
    if unknown := [k for k in kinds if k not in PAIR_KINDS]:
        raise DataError(f"unknown pair kind '{unknown[0]}'; choose from: {', '.join(PAIR_KINDS)}")
    built = _built(seed, max_per_kind, max_eval, tuple(kinds))  # the reward model, DPO and PPO ask for the same set
    return {s: list(built[s]) for s in SPLITS}


@lru_cache(maxsize=8)
def _built(seed: int, max_per_kind: int | None, max_eval: int | None,
           kinds: tuple[str, ...]) -> dict[str, tuple[Pair, ...]]:
    caps = {"train": max_per_kind, "val": max_eval, "test": max_eval}
    out: dict[str, list[Pair]] = {s: [] for s in SPLITS}
    for kind in kinds:
        got: dict[str, list[Pair]] = {s: [] for s in SPLITS}
        for pair in PAIR_BUILDERS[kind](random.Random(f"{seed}:pairs:{kind}")):
            s = split_of(pair.source_id)
            if caps[s] is None or len(got[s]) < caps[s]:
                got[s].append(pair)
            if all(caps[k] is not None and len(got[k]) >= caps[k] for k in SPLITS):
                break
        for s in SPLITS:
            out[s] += got[s]
    return {s: tuple(out[s]) for s in SPLITS}


def pair_card_table(pairs: dict[str, list[Pair]]) -> str:
    """Pairs per kind and split as a Markdown table with Chinese headers, and a row of totals."""
    rows = [[kind, *(sum(p.kind == kind for p in pairs.get(s, [])) for s in SPLITS)] for kind in PAIR_KINDS]
    rows.append(["合计", *(len(pairs.get(s, [])) for s in SPLITS)])
    return markdown_table(["类型", "训练", "验证", "测试"], rows, "lrrr")


# --------------------------------------------------------------------------------------- batches

def encode_pair(tok, pair: Pair, block_size: int) -> tuple[Encoded, Encoded] | None:
    """(ids, mask) of prompt + chosen and of prompt + rejected, each ending at <|im_end|>; None if one is longer than
    block_size (the reward model reads a whole sequence; DPO reads all but its last token)."""
    sides = []
    for answer in (pair.chosen, pair.rejected):
        ids, mask = encode_chat(tok, pair.prompt + [{"role": "assistant", "content": answer}])
        end = len(ids) - ids[::-1].index(tok.special_tokens[IM_END])  # drop the template's newline after it
        if end > block_size:  # never cut: the reward model reads the whole answer and its <|im_end|>
            return None
        sides.append((ids[:end], mask[:end]))
    return sides[0], sides[1]


def _collate(rows: list[tuple[Encoded, Encoded]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Encoded pairs -> ids, mask (B, 2, T) and lengths (B, 2): [:, 0] the chosen side, [:, 1] the rejected one.

    A pair stays in one row, so data-parallel training (which splits a batch by rows) never separates its sides."""
    sides = [side for pair in rows for side in pair]  # chosen 0, rejected 0, chosen 1, ...
    ids = pad_sequences([s[0] for s in sides], pad_id)
    mask = pad_sequences([s[1] for s in sides], 0)
    lengths = torch.tensor([len(s[0]) for s in sides], dtype=torch.long)
    return ids.view(len(rows), 2, -1), mask.view(len(rows), 2, -1), lengths.view(len(rows), 2)


def _encode_all(tok, pairs: list[Pair], block_size: int) -> tuple[list[tuple[Encoded, Encoded]], list[Pair]]:
    """(encoded pairs, the pairs kept) in order, the pairs that do not fit dropped and counted in the log."""
    rows, kept = [], []
    for p in pairs:
        if (enc := encode_pair(tok, p, block_size)) is not None:
            rows.append(enc)
            kept.append(p)
    if len(kept) < len(pairs):
        log.info(f"dropped {len(pairs) - len(kept)} of {len(pairs)} preference pairs longer than "
                 f"block_size = {block_size} tokens")
    if pairs and not kept:
        raise DataError(f"no preference pair fits block_size={block_size}; use a model with a larger block_size")
    return rows, kept


class PairBatches:
    """Shuffled pair batches, epoch by epoch; batch i is a pure function of (seed, i).

    PairBatches(tok, pairs, batch_size=4, block_size=64)(0) -> ids, mask (4, 2, T) int64, lengths (4, 2)
    """

    def __init__(self, tok, pairs: list[Pair], batch_size: int, block_size: int, seed: int = 0):
        self.rows, self.pairs = _encode_all(tok, list(pairs), block_size)
        self.pad_id = tok.special_tokens[PAD]
        self._epochs = EpochBatches(len(self.rows), batch_size, self.collate, seed)
        self.per_epoch = self._epochs.per_epoch  # lets --train.epochs set max_steps

    def collate(self, indices) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _collate([self.rows[k] for k in indices], self.pad_id)

    def __call__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self._epochs(i)


def pair_tensors(tok, pairs: list[Pair], block_size: int) -> tuple[tuple[torch.Tensor, ...], list[Pair]]:
    """((ids, mask, lengths) of all pairs that fit, as one batch (N, 2, T), in order; those N pairs)."""
    rows, kept = _encode_all(tok, list(pairs), block_size)
    if not rows:
        raise DataError("no preference pairs to encode; give at least one pair")
    return _collate(rows, tok.special_tokens[PAD]), kept
