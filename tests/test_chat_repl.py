"""The terminal chat loop: streamed replies equal greedy generate up to <|im_end|>, whole characters only, no role
tokens, history cropped to the context (system message kept, one notice), /reset and /system, and a loop that
ends cleanly on /exit, end of input and Ctrl-C."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from llmpath.chat.repl import ChatSession, decode_pieces, run_repl
from llmpath.chat.sft import SFTBatches, sft_loss
from llmpath.chat.template import IM_END, IM_START, PAD, encode_chat
from llmpath.config import ConfigError, TrainConfig
from llmpath.generation import generate
from llmpath.gpt.model import GPT, GPTConfig
from llmpath.tokenizers import train_gpt_tokenizer

TEXT = ("What is 12 + 30? The answer is 42. 请翻译成英文：你好，世界。Hello, world.\n"
        "今天天气很好。The weather is nice today. 谢谢你！Thank you!\n") * 6
CONVS = [[{"role": "user", "content": "12+30"}, {"role": "assistant", "content": "42"}],
         [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "你好，世界。"}]]
BLOCK = 64


@pytest.fixture(scope="module")
def tok():
    return train_gpt_tokenizer(TEXT, 300)  # few merges: many Chinese characters stay split over byte tokens


@pytest.fixture(scope="module")
def model(tok):
    """A tiny GPT taught the two conversations with the SFT objective and the shared fit."""
    from llmpath.train import fit

    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=BLOCK, n_layer=2, n_head=2, n_embd=32))
    fit(m, sft_loss, SFTBatches(tok, CONVS, batch_size=2, block_size=BLOCK),
        TrainConfig(max_steps=60, lr=1e-2, warmup_steps=0, eval_interval=0, progress=False))
    return m.eval()


class Scripted(nn.Module):
    """A fake decoder that writes `script` token by token (whatever the prompt), for exact edge cases."""

    def __init__(self, script: list[int], vocab_size: int, block_size: int = 256):
        super().__init__()
        self.script, self.vocab_size, self.start = script, vocab_size, 0
        self.cfg = SimpleNamespace(block_size=block_size, n_layer=1, n_head=1, n_embd=1)
        self.dummy = nn.Parameter(torch.zeros(1))  # generation reads the device from the parameters
        self.prompts: list[int] = []  # prompt length of every call to generate

    def forward(self, idx, cache=None, last_only=False):
        if cache.pos == 0:
            self.start = idx.shape[1]
            self.prompts.append(self.start)
        cache.pos += idx.shape[1]
        step = cache.pos - self.start
        logits = torch.zeros(idx.shape[0], 1, self.vocab_size)
        logits[:, :, self.script[min(step, len(self.script) - 1)]] = 10.0
        return logits, None


def transcript(session, lines):
    """Run the loop on scripted lines (then end of input); everything it printed, as one string."""
    feed, out = iter(lines), []

    def input_fn(prompt):
        line = next(feed, None)
        if line is None:
            raise EOFError
        out.append(prompt + line + "\n")  # as a terminal shows it
        return line

    run_repl(session, input_fn, lambda *a, end="\n", flush=False: out.append(" ".join(map(str, a)) + end))
    return "".join(out)


def split_chars(tok, text):
    """The characters of text that the tokenizer splits over more than one token."""
    ids = tok.encode(text)
    return [t for t in ids if "\ufffd" in tok.decode([t])]


# -------------------------------------------------------------------------------------------------- decoding

def test_decode_pieces_are_whole_characters(tok):
    text = "你好，世界。Hello"
    ids = tok.encode(text)
    assert split_chars(tok, text)  # the test means something: some token holds part of a character
    pieces = list(decode_pieces(tok, ids))
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)
    for n in range(len(ids)):  # every prefix, most ending inside a character: its whole characters only
        pieces = list(decode_pieces(tok, ids[:n]))
        assert "".join(pieces) == tok.decode_bytes(ids[:n]).decode("utf-8", errors="ignore")
        assert not any("\ufffd" in p for p in pieces)


def test_stream_matches_greedy_generate_up_to_end_of_turn(tok, model):
    end = tok.special_tokens[IM_END]
    session = ChatSession(model, tok, max_new_tokens=20, temperature=0)
    for msgs in CONVS:
        session.reset()
        prompt, _ = encode_chat(tok, msgs[:1], add_generation_prompt=True)
        out = generate(model, prompt, max_new_tokens=20, greedy=True, stop_tokens=[end])[0, len(prompt):].tolist()
        assert end in out  # the model learned to stop, so the stream must stop there too
        want = tok.decode(out[:out.index(end)])
        assert want == msgs[1]["content"]
        pieces = list(session.reply(msgs[0]["content"]))
        assert "".join(pieces) == want
        assert not any("\ufffd" in p or IM_END in p for p in pieces)
        assert session.messages == msgs  # the finished reply joined the history
    assert split_chars(tok, CONVS[1][1]["content"])  # the Chinese answer crossed token boundaries


def test_pieces_are_valid_text_and_role_tokens_never_printed(tok):
    text = "你好，世界"
    ids = tok.encode(text)
    start, end, pad = (tok.special_tokens[s] for s in (IM_START, IM_END, PAD))
    for stop in (end, start, pad):  # each special token ends the answer, unprinted
        session = ChatSession(Scripted(ids + [stop] + tok.encode("user\nno"), tok.vocab_size), tok, temperature=0)
        pieces = list(session.reply("hi"))
        assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)
        assert session.messages[-1] == {"role": "assistant", "content": text}
    # cut by max_new_tokens in the middle of a character: the half character is dropped, not printed broken
    half = len(tok.encode("你好，世")) + 1
    assert len(tok.decode_bytes(ids[:half]).decode("utf-8", errors="ignore")) < len(tok.decode(ids[:half]))
    session = ChatSession(Scripted(ids, tok.vocab_size), tok, temperature=0, max_new_tokens=half)
    assert "".join(session.reply("hi")) == "你好，世"


# ------------------------------------------------------------------------------------------------- history

def test_history_cropped_to_context_keeps_system_and_notices_once(tok):
    answer = tok.encode("好的") + [tok.special_tokens[IM_END]]
    fake = Scripted(answer, tok.vocab_size, block_size=160)
    system = "你是一名翻译。"
    session = ChatSession(fake, tok, system=system, max_new_tokens=32, temperature=0)  # prompts of <= 128 tokens
    lines = [f"turn {k}: 今天天气很好。" for k in range(6)]
    out = transcript(session, lines)
    assert out.count("context") == 1  # the notice, once, though later turns are cropped too
    assert out.index("context") > out.index("turn 1")  # not before the history was too long
    assert max(fake.prompts) <= 160 - 32 and len(fake.prompts) == 6
    assert session.conversation()[0] == {"role": "system", "content": system}
    assert session.messages[0]["role"] == "user"  # whole turns dropped
    assert session.messages[-2:] == [{"role": "user", "content": lines[-1]}, {"role": "assistant", "content": "好的"}]
    assert lines[0] not in [m["content"] for m in session.messages]
    ids, _ = encode_chat(tok, session.conversation())
    assert fake.prompts[-1] == len(encode_chat(tok, session.conversation()[:-1], add_generation_prompt=True)[0])
    assert len(ids) <= 160
    # a message that cannot fit even alone: one error line, the loop goes on and the message is forgotten
    n = len(session.messages)
    out = transcript(session, ["很" * 60, "/exit"])
    assert "error:" in out and "shorten" in out and len(session.messages) == n
    with pytest.raises(ConfigError, match="shorten"):
        session.reply("很" * 60)


def test_reset_and_system_commands(tok):
    fake = Scripted(tok.encode("ok") + [tok.special_tokens[IM_END]], tok.vocab_size)
    session = ChatSession(fake, tok, system="be brief")
    list(session.reply("hi"))
    assert len(session.messages) == 2
    assert "cleared" in session.command("/reset")
    assert session.messages == [] and session.system == "be brief"
    list(session.reply("hi"))
    session.command("/system 你是一名翻译。")
    assert session.messages == [] and session.system == "你是一名翻译。"
    list(session.reply("hi"))
    msgs = [{"role": "system", "content": "你是一名翻译。"}, {"role": "user", "content": "hi"}]
    assert fake.prompts[-1] == len(encode_chat(tok, msgs, add_generation_prompt=True)[0])  # the new system is read
    session.command("/system")
    assert session.system == "" and session.conversation() == []
    hint = session.command("/sytem x")
    assert "\n" not in hint and "/sytem" in hint and "/reset" in hint and session.system == ""


# ---------------------------------------------------------------------------------------------------- loop

def test_loop_streams_and_ends_cleanly(tok, model):
    session = ChatSession(model, tok, max_new_tokens=20, temperature=0)
    out = transcript(session, ["12+30", "", "/nope", "/reset", "Hello"])  # then end of input
    assert "42\n" in out and "你好，世界。\n" in out and "unknown command /nope" in out
    assert IM_END not in out and IM_START not in out
    assert [m["role"] for m in session.messages] == ["user", "assistant"]
    out = transcript(session, ["/exit", "12+30"])  # /exit stops before the next line is read
    assert "42" not in out and len(session.messages) == 2

    def ctrl_c(prompt):
        raise KeyboardInterrupt

    run_repl(session, ctrl_c, lambda *a, **k: None)  # Ctrl-C at the prompt: returns, no traceback

    def ctrl_c_mid_answer(*a, end="\n", flush=False):
        if end == "":  # the first streamed piece
            raise KeyboardInterrupt

    session.reset()
    feed = iter(["Hello"])
    run_repl(session, lambda p: next(feed), ctrl_c_mid_answer)
    assert [m["role"] for m in session.messages] == ["user", "assistant"]  # the partial answer kept
    assert "你好，世界。".startswith(session.messages[1]["content"])
