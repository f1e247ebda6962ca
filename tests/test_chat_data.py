"""Chat instruction data: splits held out by source item, no leakage into pretraining, templates, references, scores."""

import re
from functools import lru_cache

import pytest

from llmpath.chat import data as D
from llmpath.data import load_classification
from llmpath.data.corpora import DataError
from llmpath.seq2seq.data import load_translation

HAN = re.compile(r"[\u4e00-\u9fff]")


@lru_cache(maxsize=None)
def built(seed: int = 0) -> dict:
    return D.build_examples(seed=seed, max_per_task=60, max_eval=20)


def of_task(task: str, split: str = "train", seed: int = 0) -> list:
    return [e for e in built(seed)[split] if e.task == task]


def answer(e) -> str:
    return e.messages[-1]["content"]


def test_splits_are_disjoint_by_source_and_do_not_depend_on_the_seed():
    ids = {s: set() for s in D.SPLITS}
    for seed in (0, 1):
        for s, exs in built(seed).items():
            assert all(D.split_of(e.source_id) == s for e in exs)
            ids[s] |= {e.source_id for e in exs}
    assert {e.task for e in built(0)["test"]} == set(D.TASKS)
    assert not ids["train"] & ids["test"] and not ids["train"] & ids["val"] and not ids["val"] & ids["test"]
    # the seed changes which items are drawn, not where they go
    assert {e.source_id for e in built(0)["train"]} != {e.source_id for e in built(1)["train"]}


def test_hsk_sentences_never_straddle_splits_and_test_is_inside_the_stage_3_4_test():
    items = D._hsk()
    for side in (1, 2):  # a Chinese or an English sentence of a test pair is in no train pair
        train = {it[side] for it in items if it[3] == "train"}
        assert not train & {it[side] for it in items if it[3] == "test"}
    stage_test = {(e.src_text, e.tgt_text) for e in load_translation("hsk-pairs", "zh-en", seed=0).test}
    assert {(zh, en) for _, zh, en, s in items if s == "test"} <= stage_test


def test_classification_items_keep_the_stage_1_5_split():
    from llmpath.data import split_indices

    _, _, test = split_indices(len(load_classification("tweets")), seed=0)
    assert {int(e.source_id.split(":")[1]) for e in of_task("sentiment-tweets", "test")} <= set(test.tolist())
    with pytest.raises(DataError, match="unknown source id"):
        D.split_of("tweets:99999999")


def test_chitchat_paraphrases_of_one_question_stay_in_one_split():
    exs = D.build_examples(max_per_task=None, max_eval=None, tasks=("chitchat-en",))
    splits: dict[str, set] = {}
    for s, es in exs.items():
        for e in es:
            first_user = next(m["content"] for m in e.messages if m["role"] == "user")
            splits.setdefault(D.normalise(first_user), set()).add(s)
    assert len(splits) < sum(map(len, exs.values()))  # there are repeated questions...
    assert all(len(v) == 1 for v in splits.values())  # ...and each sits in one split
    held_out = sum(v != {"train"} for v in splits.values()) / len(splits)
    assert 0.14 < held_out < 0.26  # chitchat is small: 80/10/10 by question, not 90/5/5


def test_pretraining_mixture_leaves_out_held_out_items():
    docs = D.pretrain_documents(("chinese-reviews", "hsk", "chatterbot"))
    texts = load_classification("chinese-reviews").texts
    held = D.build_examples(max_per_task=0, max_eval=None,
                            tasks=("sentiment-reviews", "translate-zh-en", "chitchat-zh"))
    reviews = set(docs["chinese-reviews"])
    hsk = set(docs["hsk"])
    for e in held["val"] + held["test"]:
        if e.task == "sentiment-reviews":
            assert texts[int(e.source_id.split(":")[1])] not in reviews
        elif e.task == "translate-zh-en":
            assert e.reference not in hsk and e.source_id[4:] not in hsk
    held_openers = {e.source_id.split(":", 1)[1] for e in held["val"] + held["test"] if e.task == "chitchat-zh"}
    assert held_openers and not held_openers & {D.normalise(d.split("\n")[0]) for d in docs["chatterbot"]}
    joined = D.pretrain_sources(("chinese-reviews", "hsk"))
    long_refs = [texts[int(e.source_id.split(":")[1])] for e in held["test"] if e.task == "sentiment-reviews"]
    assert all(t not in joined["chinese-reviews"] for t in [t for t in long_refs if len(t) > 30][:30])
    long_en = [e.reference for e in held["test"] if e.task == "translate-zh-en" and len(e.reference) > 25]
    assert long_en and all(t not in joined["hsk"] for t in long_en)
    # and the train items are there (the checks above are not vacuous)
    assert any(t in reviews for t in texts[:50]) and len(hsk) > 5000


def test_mixture_weights_repeat_train_text_and_keep_val_fixed():
    one_tr, one_va = D.mixture(seed=0, sources=("hsk",))
    two_tr, two_va = D.mixture(seed=1, weights={"hsk": 2.5}, sources=("hsk",))
    assert one_va == two_va and len(one_va["hsk"]) > 0
    assert len(two_tr["hsk"]) == pytest.approx(2.5 * len(one_tr["hsk"]), rel=0.05)
    with pytest.raises(DataError, match="unknown source"):
        D.mixture(weights={"wikipedia": 1.0}, sources=("hsk",))


def test_every_example_is_a_well_formed_conversation_ending_with_the_answer():
    for s, exs in built(0).items():
        for e in exs:
            roles = [m["role"] for m in e.messages]
            body = roles[1:] if roles[0] == "system" else roles
            assert body == ["user", "assistant"] * (len(body) // 2) and len(body) >= 2, roles
            assert all(m["content"].strip() and not re.search(r"\{[a-z_]+\}", m["content"]) for m in e.messages)
            if e.task.startswith("translate") or e.task.startswith("chitchat"):
                assert answer(e) == e.reference
    assert any(len(e.messages) > 3 for e in D.build_examples(max_per_task=None, tasks=("chitchat-zh",))["train"])


def test_templates_use_both_languages_and_say_which():
    for task, templates in D.TEMPLATES.items():
        assert {t[0] for t in templates} == {"zh", "en"} and any(t[1] for t in templates), task
        for lang, system, user, _ in templates:  # the language label matches the instruction's words
            words = re.sub(r"\{\w+\}", "", (system or "") + user)
            assert bool(HAN.search(words)) == (lang == "zh"), (task, user)
    for task in D.TASKS:
        exs = of_task(task)
        assert {e.lang for e in exs} == {"zh", "en"} and any(e.messages[0]["role"] == "system" for e in exs), task
    for e in of_task("sentiment-reviews") + of_task("sentiment-tweets"):
        assert answer(e) == D.LABEL_WORDS[e.reference][e.lang]


def test_idiom_references_are_the_valid_answers():
    exs = of_task("idiom-chain") + of_task("idiom-chain", "test")
    idioms = set(D.idioms())
    for e in exs:
        prompt = e.source_id.split(":")[1]
        assert prompt in idioms and e.reference and answer(e) in e.reference
        assert all(a in idioms and a[0] == prompt[-1] and a != prompt for a in e.reference)
        assert set(e.reference) == {w for w in idioms if w[0] == prompt[-1]} - {prompt}
    dead_ends = [w for w in idioms if w not in D.chain_answers()][:50]
    assert dead_ends and all({v for v in idioms if v[0] == w[-1]} <= {w} for w in dead_ends)


def test_arithmetic_answers_are_right():
    exs = of_task("arithmetic") + of_task("arithmetic", "test")
    ops = set()
    for e in exs:
        a, op, b = re.fullmatch(r"arith:(\d+)([+-])(\d+)", e.source_id).groups()
        ops.add(op)
        assert e.reference == (int(a) + int(b) if op == "+" else int(a) - int(b)) >= 0
        assert D.parse_int(answer(e)) == e.reference and {len(a), len(b)} <= {2, 3}
        assert op == "-" or int(a) <= int(b)  # a+b and b+a are one source item, so one split
    assert ops == {"+", "-"}


ASKED = {"positive": ("正面", "好评", "positive"), "neutral": ("neutral",), "negative": ("负面", "差评", "negative")}


def test_write_review_answers_are_real_texts_of_the_asked_sentiment_split_like_the_sentiment_tasks():
    from llmpath.chat.evaluate import SCORED
    from llmpath.data import split_indices

    assert list(D.TASKS)[-1] == "write-review" and len(D.TASKS) == 9 and "write-review" not in SCORED
    seen = set()
    for split in D.SPLITS:
        for e in of_task("write-review", split):
            name, i = e.source_id.split(":")
            data = load_classification(name)
            label = {"neg": "negative", "pos": "positive"}.get(data.label_names[data.labels[int(i)]],
                                                               data.label_names[data.labels[int(i)]])
            assert answer(e) == data.texts[int(i)] and len(answer(e)) <= D.MAX_TEXT_CHARS
            assert e.reference == label and e.lang == {"chinese-reviews": "zh", "tweets": "en"}[name]
            user = next(m["content"] for m in e.messages if m["role"] == "user")
            asked = [l for l, words in ASKED.items() if any(w in user for w in words)]
            assert asked == [label], (user, label)  # the prompt names exactly the answer's sentiment
            stage = split_indices(len(data), seed=0)[D.SPLITS.index(split)]
            assert D.split_of(e.source_id) == split and int(i) in set(stage.tolist())
            seen.add((name, label))
    assert seen == {("chinese-reviews", "positive"), ("chinese-reviews", "negative"), ("tweets", "positive"),
                    ("tweets", "neutral"), ("tweets", "negative")}
    full = D.build_examples(max_per_task=None, max_eval=None, tasks=("sentiment-reviews", "write-review"))
    for split, exs in full.items():  # the same items as the sentiment task (in full: one example per item)
        reviews = {e.source_id for e in exs if e.task == "sentiment-reviews"}
        assert reviews == {e.source_id for e in exs if e.task == "write-review" and e.lang == "zh"}, split
    assert D.score("write-review", ["好评"], of_task("write-review", "test")[:1]) == {"n": 1}


def test_scores_perfect_and_wrong_generations():
    for task in ("translate-zh-en", "translate-en-zh", "sentiment-reviews", "sentiment-tweets", "idiom-chain",
                 "arithmetic"):
        exs = of_task(task, "test")
        perfect = D.score(task, [answer(e) for e in exs], exs)
        assert perfect["n"] == len(exs) and all(v == pytest.approx(100) for k, v in perfect.items() if k != "n"), task
    tr = of_task("translate-en-zh", "test")
    assert D.score("translate-en-zh", ["xyz"] * len(tr), tr)["bleu"] == 0
    # Chinese targets are scored per character: one wrong character does not zero a sentence's BLEU
    assert D.score("translate-en-zh", ["他" + e.reference[1:] for e in tr], tr)["bleu"] > 50
    se = of_task("sentiment-tweets", "test")
    wrong = ["neutral" if e.reference != "neutral" else "正面" for e in se]
    assert D.score("sentiment-tweets", wrong, se)["accuracy"] == 0
    idi = of_task("idiom-chain", "test")
    prompts = [e.source_id.split(":")[1] for e in idi]
    assert D.score("idiom-chain", prompts, idi)["valid"] == 0  # the prompt itself, or an idiom with the wrong start
    rule = D.score("idiom-chain", [p[-1] + "不是成语" for p in prompts], idi)
    assert rule["valid"] == 0 and rule["follows"] == pytest.approx(100)  # the rule kept, no idiom
    assert D.score("idiom-chain", ["好" + p for p in prompts], idi)["follows"] == pytest.approx(
        100 * sum(p[-1] == "好" for p in prompts) / len(prompts))
    loop = next(w for w in D.chain_answers() if w[0] == w[-1])  # e.g. 为所欲为: starts right, but repeats the prompt
    assert not D.idiom_valid(loop, loop) and D.idiom_valid(D.chain_answers()[loop][0] + "。", loop)
    ar = of_task("arithmetic", "test")
    off = D.score("arithmetic", [f"The answer is {e.reference + 1}." for e in ar], ar)
    assert off["exact"] == 0 and off["number"] == pytest.approx(100)
    assert D.score("arithmetic", ["不知道"] * len(ar), ar)["number"] == 0
    assert D.score("chitchat-en", ["hi"], of_task("chitchat-en", "test")[:1]) == {"n": 1}
    assert D.parse_label("情感：正面。") == "positive" and D.parse_label("NEGATIVE, not positive") == "negative"
    assert D.parse_label("不知道") is None and D.parse_int("等于-12。") == -12
    with pytest.raises(ValueError, match="one per example"):
        D.score("arithmetic", [], ar)


def test_data_card_counts_add_up():
    exs = built(0)
    rows = D.data_card(exs)
    assert len(rows) == len(D.TASKS) + 1
    assert all(r[2] + r[3] + r[4] == r[5] for r in rows)
    assert rows[-1][2:] == [sum(r[k] for r in rows[:-1]) for k in range(2, 6)]
    assert rows[-1][2:5] == [len(exs[s]) for s in D.SPLITS]
    assert D.data_card_table(exs).startswith("| 任务 | 来源 | 训练 | 验证 | 测试 | 合计 |")
