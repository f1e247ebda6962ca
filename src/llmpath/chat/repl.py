"""The terminal chat loop: a multi-turn conversation with a trained chat model, its answer printed as it comes.

    model, tok, _ = load_run("runs/chat/small-sft")
    run_repl(ChatSession(model, tok, system="你是一个乐于助人的助手。"))
    # > 你好          (then /reset, /system <text>, /exit; Ctrl-D or Ctrl-C also end it)

Each turn renders the whole history with the chat template (template.py), opens an assistant turn and samples
until the model writes <|im_end|>. The model sees at most block_size tokens, so when the history outgrows them
(less room for the answer) the oldest turns are dropped, the system message kept, and the session says so once.
Tokens are bytes, not characters: a Chinese character is 3 UTF-8 bytes that a small BPE may split over two or
three tokens, so the stream holds bytes back until they decode to whole characters.
"""

from __future__ import annotations

import codecs
from typing import Callable, Iterable, Iterator

import torch

from llmpath.chat.template import IM_END, IM_START, PAD, encode_chat
from llmpath.config import ConfigError
from llmpath.generation import stream

COMMANDS = "/reset (forget the conversation), /system <text> (new system message, then reset), /exit"


def decode_pieces(tok, ids: Iterable[int]) -> Iterator[str]:
    """Text of ids as it becomes whole characters: [你's 1st byte, 2nd, 3rd, 好] -> '你', '好'.

    A byte sequence still waiting for its last bytes is held back; bytes that can never be valid UTF-8 become
    U+FFFD at once (as tok.decode does); an unfinished character at the very end is dropped, never printed.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for t in ids:
        text = decoder.decode(tok.decode_bytes([t]))
        if text:
            yield text


class ChatSession:
    """One conversation with a chat model: the history, sampling settings, commands, and streamed replies.

    ChatSession(model, tok).reply("你好") -> an iterator of text pieces; the whole reply then joins the history.
    temperature=0 is greedy decoding.
    """

    def __init__(self, model, tok, system: str = "", max_new_tokens: int = 200, temperature: float = 0.7,
                 top_k: int | None = 50, seed: int = 0):
        missing = [s for s in (IM_START, IM_END) if s not in getattr(tok, "special_tokens", {})]
        if missing:
            raise ConfigError(f"the tokenizer has no {missing[0]} token, so this model was not trained to chat; "
                              "load a run trained by `llmpath chat sft`")
        if max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens={max_new_tokens}; give at least 1")
        self.model, self.tok = model, tok
        self.max_new_tokens, self.temperature, self.top_k = max_new_tokens, temperature, top_k
        self.system = system
        self.messages: list[dict] = []  # user and assistant turns; the system message is kept apart
        # <|im_end|> first: it ends a turn. The other specials would start a new turn or document: stop there too,
        # so no role token is ever printed.
        self.stop_tokens = [tok.special_tokens[s] for s in (IM_END, IM_START, PAD) if s in tok.special_tokens]
        device = next(model.parameters()).device
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.notice: str | None = None  # set when the history was cropped; the loop prints and clears it
        self._cropped_before = False

    # ---------------------------------------------------------------------------------------------- history

    def reset(self) -> None:
        """Forget the conversation; the system message stays."""
        self.messages = []
        self._cropped_before = False  # a new conversation gets its own notice

    def set_system(self, text: str) -> None:
        """A new system message changes who the assistant is: the old conversation no longer applies."""
        self.system = text
        self.reset()

    def conversation(self) -> list[dict]:
        """The messages the model sees: the system message (when set), then the turns."""
        return self._system() + self.messages

    def _system(self) -> list[dict]:
        return [{"role": "system", "content": self.system}] if self.system else []

    def _prompt(self) -> list[int]:
        """The prompt ids of the conversation, dropping the oldest turns until it leaves room for an answer."""
        block = self.model.cfg.block_size
        budget = block - min(self.max_new_tokens, block // 2)  # a long max_new_tokens may still slide past block
        alone, _ = encode_chat(self.tok, self._system() + self.messages[-1:], add_generation_prompt=True)
        if len(alone) > budget:  # checked first, so a message that cannot fit costs no history
            self.messages.pop()  # forget it: the user will send a shorter one
            what = "system message and your message" if self.system else "your message"
            raise ConfigError(f"the {what} take {len(alone)} tokens, but this model reads at most {budget} "
                              f"(a context of {block}, less room for the answer); shorten it")
        ids, _ = encode_chat(self.tok, self.conversation(), add_generation_prompt=True)
        dropped = 0
        while len(ids) > budget:  # ends at the latest when only the new message is left (it fits, see above)
            self.messages.pop(0)
            dropped += 1
            while self.messages[0]["role"] == "assistant":  # a turn starts with the user
                self.messages.pop(0)
                dropped += 1
            ids, _ = encode_chat(self.tok, self.conversation(), add_generation_prompt=True)
        if dropped and not self._cropped_before:
            self._cropped_before = True
            self.notice = (f"(the conversation outgrew the model's context of {block} tokens: the oldest turns are "
                           "dropped from now on; the system message stays)")
        return ids

    # ------------------------------------------------------------------------------------------------ reply

    def reply(self, user_text: str) -> Iterator[str]:
        """Add the user's message and return the assistant's answer as an iterator of text pieces.

        The prompt is built now (so a cropping notice is ready before the first piece); the answer joins the
        history when the iterator ends, or with what was written so far when it is closed early.
        """
        self.messages.append({"role": "user", "content": user_text})
        prompt = self._prompt()
        return self._answer(prompt)

    def _answer(self, prompt: list[int]) -> Iterator[str]:
        ids = stream(self.model, prompt, max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                     top_k=self.top_k, stop_tokens=self.stop_tokens, generator=self.generator)
        stops = set(self.stop_tokens)
        pieces: list[str] = []
        try:
            for piece in decode_pieces(self.tok, (t for t in ids if t not in stops)):
                pieces.append(piece)
                yield piece
        finally:  # also on an early close (Ctrl-C mid-answer): the history keeps what the user saw
            self.messages.append({"role": "assistant", "content": "".join(pieces)})

    def take_notice(self) -> str | None:
        """The pending notice (once), or None."""
        notice, self.notice = self.notice, None
        return notice

    # --------------------------------------------------------------------------------------------- commands

    def command(self, line: str) -> str:
        """Carry out /reset or /system <text> and say what was done; anything else gets the list of commands."""
        name, _, arg = line.strip().partition(" ")
        if name == "/reset":
            self.reset()
            return "(conversation cleared)"
        if name == "/system":
            self.set_system(arg.strip())
            return f"(system message set to {self.system!r}; conversation cleared)" if self.system else \
                "(system message removed; conversation cleared)"
        return f"unknown command {name}; commands: {COMMANDS}"


def run_repl(session: ChatSession, input_fn: Callable[[str], str] = input, print_fn: Callable = print) -> None:
    """Read a line, print the streamed answer, repeat; /exit, end of input (Ctrl-D) or Ctrl-C end it cleanly."""
    print_fn(f"chat with the model; commands: {COMMANDS}. Ctrl-D also ends it.")
    while True:
        try:
            line = input_fn("> ")
        except (EOFError, KeyboardInterrupt):
            print_fn()  # leave the terminal on a fresh line
            return
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            if text.split()[0] in ("/exit", "/quit"):
                return
            print_fn(session.command(text))
            continue
        try:
            pieces = session.reply(line)
        except ConfigError as e:  # a message too long for the context: say so, keep chatting
            print_fn(f"error: {e}")
            continue
        notice = session.take_notice()
        if notice:
            print_fn(notice)
        try:
            for piece in pieces:
                print_fn(piece, end="", flush=True)
        except KeyboardInterrupt:
            pieces.close()  # the partial answer joins the history
            print_fn()
            return
        print_fn()
