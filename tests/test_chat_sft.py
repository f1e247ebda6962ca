"""Instruction tuning end to end (llmpath.chat.finetune, evaluate, cli): the tiny preset's base model and SFT runs,
how answers are prompted, stopped and scored, the comparison table, and the CLI's commands and one-line errors."""

import json
import random

import pytest
import torch

from helpers import one_line_error
from llmpath.chat import cli as chat_cli
from llmpath.chat.base import PRESETS, BaseRun, pretrain_base
from llmpath.chat.data import TASKS, Example, build_examples
from llmpath.chat.evaluate import SCORED, answer, answerable, evaluate, prompt_ids, shots_for
from llmpath.chat.finetune import SFT_PRESETS, SFTRun, compare, compare_jobs, compare_table, run_sft
from llmpath.chat.template import IM_END, IM_START, encode_chat
from llmpath.cli import main
from llmpath.config import ConfigError, build_config, from_dict, to_dict
from llmpath.runs import load_run
from llmpath.tokenizers import PATTERNS, train_gpt_tokenizer


def sft_cfg(out, *args) -> SFTRun:
    return build_config(SFTRun, ["--preset=tiny", f"--out={out}", *args], SFT_PRESETS)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """(out folder, base summary, SFT summary) of the tiny preset, trained once."""
    out = tmp_path_factory.mktemp("runs")
    base = pretrain_base(build_config(BaseRun, ["--preset=tiny", f"--out={out}"], PRESETS))
    return out, base, run_sft(sft_cfg(out))


def test_sft_run_sits_beside_its_base_and_load_run_reads_it(chain):
    out, _, s = chain
    assert s["base"] == str(out / "chat" / "tiny")
    model, tok, cfg = load_run(out / "chat" / "tiny-sft", topic="chat")
    base_model, base_tok, _ = load_run(out / "chat" / "tiny", topic="chat")
    assert model.cfg == base_model.cfg and tok.special_tokens == base_tok.special_tokens
    assert cfg.mask_everything is False and cfg.max_per_task == SFT_PRESETS["tiny"]["max_per_task"]
    assert any((p1 != p0).any() for p1, p0 in zip(model.parameters(), base_model.parameters()))  # it trained


def test_sft_lowers_the_response_loss_and_reports_every_task(chain):
    out, _, s = chain
    assert s["response_loss"] < s["before"]["response_loss"]
    assert set(s["tasks"]) == set(TASKS)
    model, run_tok, _ = load_run(out / "chat" / "tiny-sft", topic="chat")
    p = SFT_PRESETS["tiny"]
    asked = answerable(run_tok, build_examples(0, p["max_per_task"], p["max_eval"])["test"], model.cfg.block_size,
                       p["eval_items"])
    for task, metric in SCORED.items():
        n = sum(e.task == task for e in asked)
        assert 0 <= s["tasks"][task][metric] <= 100 and s["tasks"][task]["n"] == n >= 1
    assert s["n"] == sum(e.task in SCORED for e in asked)
    assert s["ended"] + s["role_tokens"] + s["length"] == pytest.approx(100)
    assert {t: len(x) for t, x in s["transcripts"].items()} == {t: 3 for t in SCORED}


def test_mask_everything_trains_in_its_own_folder_and_a_finished_run_is_reused(chain, monkeypatch):
    out, _, s = chain
    again = run_sft(sft_cfg(out))  # the same request: read back, nothing trained
    assert again["response_loss"] == s["response_loss"]
    monkeypatch.setattr("llmpath.chat.finetune.fit", lambda *a, **k: pytest.fail("trained again"))
    run_sft(sft_cfg(out))
    monkeypatch.undo()
    ablation = run_sft(sft_cfg(out, "--mask_everything=true"))
    assert (out / "chat" / "tiny-sft-nomask" / "results.json").exists()
    assert ablation["response_loss"] != s["response_loss"]


def test_compare_trains_plain_sft_runs_that_load_run_can_read(tmp_path):
    cfg = build_config(chat_cli.CompareChat, ["--preset=tiny", f"--out={tmp_path}", "--workers=2"], SFT_PRESETS)
    for kind, job in compare_jobs(cfg).values():
        assert type(job) is SFTRun and from_dict(SFTRun, to_dict(job)) == job, kind


def test_compare_table_has_a_row_per_task_and_the_ending_rows(chain):
    out, _, _ = chain
    done = compare(sft_cfg(out), workers=1)
    assert set(done) == {"sft", "nomask", "base", "baselines"} and done["base"]["n_shots"] == 3
    assert done["baselines"]["sentiment-tweets"][0]["score"]["n"] == SFT_PRESETS["tiny"]["eval_items"]
    table = compare_table(done)
    lines = table.splitlines()
    assert len(lines) == 2 + len(TASKS) + 2 + 3  # two tasks have a second row
    assert "基座（3 例提示）" in lines[0] and "SFT（不掩码）" in lines[0]
    arith = next(line for line in lines if line.startswith("| 算术"))
    assert f"{done['sft']['tasks']['arithmetic']['exact']:.1f}" in arith


@pytest.fixture(scope="module")
def tok():
    return train_gpt_tokenizer("1+1=2 你好 hello world 负面 正面 " * 30, vocab_size=300, pattern="digits")


@pytest.mark.parametrize("stop, why", [(IM_END, "end"), (IM_START, "role"), (None, "length")])
def test_answers_stop_at_the_end_of_turn_and_name_why(tok, monkeypatch, stop, why):
    two = tok.encode("42")
    new = two + [tok.special_tokens[stop]] * 2 if stop else two * 2  # generate pads a stopped row with stop tokens
    seen = {}

    def scripted(model, ids, n, **kw):
        seen.update(n=n, stops=kw["stop_tokens"], greedy=kw["greedy"])
        return torch.tensor([list(ids) + new[:n]])

    monkeypatch.setattr("llmpath.chat.evaluate.generate", scripted)
    model = torch.nn.Linear(1, 1)
    model.cfg = type("C", (), {"block_size": 64})()
    text, got = answer(model, tok, tok.encode("hi"), max_new_tokens=4)
    assert got == why and text == ("42" if stop else "4242")
    assert seen["greedy"] and seen["n"] == 4 and tok.special_tokens[IM_END] == seen["stops"][0]


def test_shots_come_from_the_same_task_and_are_dropped_until_the_answer_fits(tok):
    ex = build_examples(0, max_per_task=20, max_eval=2, tasks=("arithmetic", "idiom-chain"))
    test = ex["test"][0]
    turns = shots_for(test, ex["train"], 3, random.Random(0))
    assert len(turns) == 6 and [t["role"] for t in turns] == ["user", "assistant"] * 3
    pool = {m["content"] for e in ex["train"] if e.task == test.task for m in e.messages}
    assert all(t["content"] in pool for t in turns)
    alone = prompt_ids(tok, test, block_size=10_000, room=0)
    full = prompt_ids(tok, test, block_size=10_000, room=0, shot_turns=turns)
    assert full[-len(alone) + 1:] == alone[-len(alone) + 1:] and len(full) > len(alone)
    cut = prompt_ids(tok, test, block_size=len(full) - 1, room=0, shot_turns=turns)
    assert len(alone) <= len(cut) < len(full)  # whole shots dropped, the question kept
    assert cut[-len(alone) + 1:] == alone[-len(alone) + 1:]


def test_the_digits_pattern_gives_every_digit_its_own_token():
    tok = train_gpt_tokenizer("123 + 456 = 579\n" * 200, vocab_size=300, pattern="digits")
    ids = tok.encode("1234+5678")
    assert len(ids) == 9 and tok.decode(ids) == "1234+5678"
    assert len(train_gpt_tokenizer("123 + 456 = 579\n" * 200, vocab_size=300).encode("123")) == 1  # gpt2 merges
    assert "digits" in PATTERNS and tok.state_dict()["pattern"] == "digits"


# ------------------------------------------------------------------------------------------------ CLI

def test_sft_without_a_base_run_is_one_line_naming_the_command(tmp_path, capsys):
    assert main(["chat", "sft", "--preset=tiny", f"--out={tmp_path}"]) != 0
    err = one_line_error(capsys)
    assert "llmpath chat pretrain --preset=tiny" in err


def test_chat_without_a_run_is_one_line(tmp_path, capsys):
    assert main(["chat", "chat", "--preset=tiny", f"--out={tmp_path}", "--say=hi"]) != 0
    assert "llmpath chat sft" in one_line_error(capsys)


def test_chat_say_prints_the_trained_models_answer(chain, capsys):
    out, _, _ = chain
    assert main(["chat", "chat", "--preset=tiny", f"--out={out}", "--say=1+1=", "--temperature=0",
                 "--max_new_tokens=5"]) == 0
    printed = capsys.readouterr().out.strip()
    model, tok, _ = load_run(out / "chat" / "tiny-sft", topic="chat")
    ids, _ = encode_chat(tok, [{"role": "user", "content": "1+1="}], add_generation_prompt=True)
    want, _ = answer(model, tok, ids, 5)
    assert printed == want.strip()


def test_data_card_command_counts_every_task(capsys):
    assert main(["chat", "data", "--preset=tiny"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name, _ in TASKS.values())


def test_tour_stage_tiny_passes_and_reports_the_table(chain):
    out, _, _ = chain
    r = chat_cli.tour("tiny", str(out))
    assert r.passed and "| 算术" in r.table and r.value == pytest.approx(
        json.loads((out / "chat" / "tiny-sft" / "results.json").read_text())["response_loss"])


def test_only_conversations_that_fit_the_context_are_asked(tok):
    ex = build_examples(0, max_per_task=5, max_eval=30, tasks=("sentiment-reviews", "arithmetic"))["test"]
    lengths = {id(e): len(encode_chat(tok, e.messages)[0]) for e in ex}
    block = sorted(lengths.values())[len(lengths) // 2]  # about half of them fit
    picked = answerable(tok, ex, block, per_task=3)
    assert picked and all(lengths[id(e)] <= block + 1 for e in picked)
    for task in ("sentiment-reviews", "arithmetic"):  # the first fitting ones, in order
        want = [e for e in ex if e.task == task and lengths[id(e)] <= block + 1][:3]
        assert [e for e in picked if e.task == task] == want
    model = torch.nn.Linear(1, 1)
    model.cfg = type("C", (), {"block_size": 8})()
    with pytest.raises(ValueError, match="no room"):
        answer(model, tok, list(range(8)), max_new_tokens=4)
