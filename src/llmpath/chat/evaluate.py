"""Measuring a chat model on every task: its answers to held-out prompts, scored, and how it ends its turns.

    test = build_examples(seed=0)["test"]
    report = evaluate(model, tok, test, per_task=50)                      # greedy answers to 50 prompts per task
    report["tasks"]["arithmetic"]          # {"n": 50, "exact": 62.0, "response_loss": 0.41}
    report["ended"], report["role_tokens"]  # % of answers that end with <|im_end|>; % that start a new turn
    evaluate(base, tok, test, shots=train)  # a base model, shown three solved examples of the task first

Every model answers the same prompts: the test conversation without its last assistant turn, in the chat template
with an assistant turn opened, decoded greedily until it writes <|im_end|> (or <|im_start|> / <|endoftext|>, which
would begin another turn or document), max_new_tokens, or the end of the context. Only conversations that fit the
context whole are asked (`answerable`): a question cut short, or no room for its answer, would test the context. Scoring is llmpath.chat.data.score; besides it each task
gets its response loss (nats per answer token, teacher-forced on the test answers, so chitchat has a number too).

A base model was never shown the template, so asking it zero-shot measures little. Few-shot prompting is the fair
baseline: `shots` gives solved examples of the same task (train items, so none is a test item), laid before the
question as earlier user/assistant turns of the same conversation; as many as fit the context with room for the
answer are used (up to n_shots). In-context learning is the one way a base model can pick up a task's format.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Iterable

import torch
from torch import nn

from llmpath.chat.data import TASKS, Example, score
from llmpath.chat.sft import response_loss
from llmpath.chat.template import IM_END, IM_START, PAD, encode_chat
from llmpath.generation import generate

SCORED = {"translate-zh-en": "bleu", "translate-en-zh": "bleu", "sentiment-reviews": "accuracy",
          "sentiment-tweets": "accuracy", "idiom-chain": "valid", "arithmetic": "exact"}  # task -> main number
METRIC_NAMES = {"bleu": "BLEU", "accuracy": "准确率 %", "valid": "有效率 %", "exact": "完全正确 %"}


def question(example: Example) -> list[dict]:
    """The messages the model sees: the example without its last (assistant) turn."""
    return example.messages[:-1]


def shots_for(example: Example, pool: list[Example], n_shots: int, rng: random.Random) -> list[dict]:
    """n_shots solved single-turn examples of the example's task from pool, as user/assistant turns."""
    same = [p for p in pool if p.task == example.task and len(p.messages) <= 3 and p.source_id != example.source_id]
    turns: list[dict] = []
    for p in rng.sample(same, min(n_shots, len(same))):
        turns += [m for m in p.messages if m["role"] != "system"]
    return turns


def prompt_ids(tok, example: Example, block_size: int, room: int, shot_turns: list[dict] = ()) -> list[int]:
    """The example's question with an assistant turn opened, after as many whole shots as leave `room` tokens."""
    q = question(example)
    system, rest = (q[:1], q[1:]) if q and q[0]["role"] == "system" else ([], q)
    shot_turns = list(shot_turns)
    while True:
        ids, _ = encode_chat(tok, system + shot_turns + rest, add_generation_prompt=True)
        if len(ids) + room <= block_size or not shot_turns:
            return ids
        shot_turns = shot_turns[2:]  # drop the oldest solved example


def fits(tok, example: Example, block_size: int) -> bool:
    """Does the whole conversation fit the context, so that the model can read the question and write the reference
    answer with its <|im_end|>? (The same rule SFT trains by: at most block_size + 1 tokens.)"""
    return len(encode_chat(tok, example.messages)[0]) <= block_size + 1


def first_per_task(examples: Iterable[Example], n: int) -> list[Example]:
    """The first n examples of every task, in order."""
    count: dict[str, int] = defaultdict(int)
    out = []
    for ex in examples:
        if count[ex.task] < n:
            out.append(ex)
            count[ex.task] += 1
    return out


def answerable(tok, examples: list[Example], block_size: int, per_task: int) -> list[Example]:
    """The first per_task examples of each task that fit the context: every model of one tokenizer and context
    (base, SFT, ablation) is tested on these same items, and so are the earlier stages' models."""
    return first_per_task((ex for ex in examples if fits(tok, ex, block_size)), per_task)


@torch.no_grad()
def answer(model: nn.Module, tok, ids: list[int], max_new_tokens: int) -> tuple[str, str]:
    """(the greedy answer's text, why it stopped: "end" at <|im_end|>, "role" at <|im_start|> or <|endoftext|>,
    "length" at max_new_tokens)."""
    sp = tok.special_tokens
    stops = [sp[IM_END], sp[IM_START], sp[PAD]]
    room = model.cfg.block_size - len(ids)  # an answerable question leaves room for the reference answer
    if room < 1:
        raise ValueError(f"a prompt of {len(ids)} tokens leaves no room in a context of {model.cfg.block_size}; "
                         "test on answerable(...) examples")
    out = generate(model, ids, min(max_new_tokens, room), greedy=True, stop_tokens=stops)[0, len(ids):].tolist()
    stop = next((k for k, t in enumerate(out) if t in stops), None)
    if stop is None:
        return tok.decode(out), "length"
    why = "end" if out[stop] == sp[IM_END] else "role"
    return tok.decode(out[:stop]), why


def evaluate(model: nn.Module, tok, examples: list[Example], per_task: int = 50, max_new_tokens: int = 48,
             shots: list[Example] | None = None, n_shots: int = 3, seed: int = 0, transcripts: int = 3) -> dict:
    """Scores per task on the first per_task answerable examples of each task, and how the answers end (see the
    docstring).

    Returns {"tasks": {task: score dict + response_loss}, "ended": %, "role_tokens": %, "length": %, "n": answers,
    "transcripts": {task: [{"prompt": messages, "answer": text, "reference": ...}, ...]}}.
    """
    block = model.cfg.block_size
    by_task: dict[str, list[Example]] = defaultdict(list)
    for ex in answerable(tok, examples, block, per_task):
        by_task[ex.task].append(ex)
    rng = random.Random(seed)
    tasks, stops, shown = {}, [], {}
    for task in (t for t in TASKS if t in by_task):
        items = by_task[task]
        result = {"response_loss": response_loss(model, items, tok)}
        if task in SCORED:
            answers = []
            for ex in items:
                turns = shots_for(ex, shots, n_shots, rng) if shots else []
                text, why = answer(model, tok, prompt_ids(tok, ex, block, max_new_tokens, turns), max_new_tokens)
                answers.append(text)
                stops.append(why)
            result.update(score(task, answers, items))
            shown[task] = [{"prompt": question(ex), "answer": a, "reference": _plain(ex.reference)}
                           for ex, a in zip(items[:transcripts], answers)]
        tasks[task] = result
    n = max(len(stops), 1)
    return {"tasks": tasks, "n": len(stops), "ended": 100 * stops.count("end") / n,
            "role_tokens": 100 * stops.count("role") / n, "length": 100 * stops.count("length") / n,
            "transcripts": shown}


def _plain(reference: object) -> object:
    """A reference as JSON can hold it: an idiom's tuple of valid answers is cut to its first three."""
    return list(reference[:3]) if isinstance(reference, tuple) else reference


def main_number(task: str, scores: dict | None) -> float | None:
    """The number a results table shows for a task: its SCORED metric, or the response loss for chitchat."""
    if not scores:
        return None
    return scores.get(SCORED.get(task, "response_loss"))
