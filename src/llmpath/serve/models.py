"""The playground's models: which runs of a runs folder can talk, each loaded once, and text generated for the API.

    store = ModelStore("runs")
    store.runs()                          # every run folder: what it can do (generate, inspect), its curves
    model = store.get("chat/small-sft")   # loaded through load_run the first time, reused afterwards
    ids = model.chat_prompt([{"role": "user", "content": "你好"}])
    for piece in model.complete(ids, Sampling(max_tokens=50, temperature=0.7, stop=["\\n\\n"], top_logprobs=5)):
        print(piece.text, piece.logprob)

A run is "<topic>/<name>", the folder runs/<topic>/<name>/. The decoders (the GPT stage's GPT and the Llama-style
decoder of stages 9 and 11) generate; an instruction-tuned run (stage 11's SFT and the aligned runs from it) is a
chat model, talked to in the chat template; the others continue text. Generation is the one generation
module's `stream_scored`: the tokens and each one's probability under the model.
"""

from __future__ import annotations

import codecs
import math
import secrets
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch

from llmpath.common import read_json
from llmpath.config import ConfigError
from llmpath.generation import stream_scored
from llmpath.runs import Loaded, load_run
from llmpath.topics import TOPICS

DECODERS = ("llmpath.gpt.model:GPT", "llmpath.llama.model:Llama")  # model classes the generation module drives
TEXT_TOPICS = ("rnn", "seq2seq", "transformer", "gpt", "bert", "llama", "chat")  # runs whose tokenizer reads text
ATTENTION_CLASSES = DECODERS + ("llmpath.bert.model:BERTPretraining", "llmpath.transformer.model:Transformer")
CHAT_MARKERS = ("<|im_start|>", "<|im_end|>")


class UnknownModel(ConfigError):
    """The asked run is not in the runs folder (the API answers 404)."""


# ---------------------------------------------------------------------------------------------------- run folders

@dataclass
class RunInfo:
    """What the playground knows of one run folder without building its model."""

    id: str  # "<topic>/<name>"
    path: Path
    topic: str
    finished: bool  # results.json written
    checkpoint: str = ""  # "best" or "last": the one load_run reads; "" when the folder has none
    model_class: str = ""
    kind: str | None = None  # "chat" | "text" for runs that generate, else None
    block_size: int = 0
    created: int = 0  # the checkpoint's modification time (OpenAI's "created")
    results: dict = field(default_factory=dict)

    @property
    def generates(self) -> bool:
        return self.kind is not None

    @property
    def inspect(self) -> list[str]:
        """What the look-inside page can show: the tokenizer, attention maps, the KV cache."""
        if not self.checkpoint or self.topic not in TEXT_TOPICS:
            return []
        can = ["tokens"]
        if self.model_class in ATTENTION_CLASSES:
            can.append("attention")
        if self.model_class in DECODERS:
            can.append("kv")
        return can

    def public(self) -> dict:
        metrics = (self.path / "metrics.jsonl").exists()
        return {"id": self.id, "topic": self.topic, "name": self.path.name, "finished": self.finished,
                "generates": self.generates, "kind": self.kind, "inspect": self.inspect, "metrics": metrics,
                "results": self.results}


def _scalars(results: dict, limit: int = 8) -> dict:
    """A few numbers of results.json for the runs list (the whole file is at /files/<topic>/<name>/results.json)."""
    out = {}
    for k, v in results.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[k] = round(v, 4) if isinstance(v, float) else v
            if len(out) == limit:
                break
    return out


def _read_meta(ckpt: Path) -> dict:
    """The checkpoint's topic, classes, config and tokenizer, without reading its tensors (memory-mapped)."""
    try:
        return torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # damaged or foreign: listed as a run that cannot be loaded, never an error page
        return {}


def _chats(meta: dict) -> bool:
    """A chat model: instruction-tuned (`llmpath chat sft` and the alignment runs from it write SFT options into
    the config; a base model's tokenizer reserves the chat tokens too, but it has only ever continued text)."""
    specials = meta.get("tokenizer", {}).get("special_tokens") if isinstance(meta.get("tokenizer"), dict) else None
    tuned = "mask_everything" in meta.get("config", {})
    return tuned and isinstance(specials, dict) and all(m in specials for m in CHAT_MARKERS)


def describe(path: Path, topic: str) -> RunInfo:
    results = {}
    if (path / "results.json").exists():
        try:
            results = read_json(path / "results.json")
        except (OSError, ValueError):
            results = {}
    info = RunInfo(f"{topic}/{path.name}", path, topic, finished=bool(results), results=_scalars(results))
    which = next((w for w in ("best", "last") if (path / "ckpt" / f"{w}.pt").exists()), "")
    t = TOPICS.get(topic)
    if not which or t is None or not t.model:
        return info
    ckpt = path / "ckpt" / f"{which}.pt"
    meta = _read_meta(ckpt)
    if meta.get("topic") != topic or "config" not in meta:
        return info
    info.checkpoint = which
    info.created = int(ckpt.stat().st_mtime)
    info.model_class = (meta.get("classes") or {}).get("model") or t.model
    if info.model_class in DECODERS and topic in TEXT_TOPICS:  # not the captioner's caption-only language model
        info.kind = "chat" if _chats(meta) else "text"
        info.block_size = int(meta["config"].get("model", {}).get("block_size", 0))
    return info


# ---------------------------------------------------------------------------------------------------- generation

def encode_text(tok, text: str) -> list[int]:
    """Ids of plain text, as a completion prompt and the look-inside views read it: a special token's text
    ("<|im_start|>") stays text, never the token; a char vocabulary refuses a character it lacks (DataError)."""
    if hasattr(tok, "special_tokens"):  # byte-level BPE
        return tok.encode(text, disallowed_special=())
    return list(tok.encode(text))


@dataclass
class Sampling:
    """OpenAI's sampling options, checked; temperature 0 is greedy decoding."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: Sequence[str] = ()
    seed: int | None = None
    top_logprobs: int = 0  # alternatives reported per token (0: only the chosen token's log-probability)


class Piece(NamedTuple):
    """One generated token: the text it completes, its log-probability and the alternatives the model weighed."""

    text: str  # new text; "" while a character's UTF-8 bytes are still incomplete, cut at a stop sequence
    token: int
    token_text: str  # the token on its own (a lone byte of a character shows as U+FFFD)
    token_bytes: bytes
    logprob: float
    top: list[tuple[str, bytes, float]]  # (token text, bytes, log-probability), most likely first


class StopText:
    """Cuts generated text at the first stop sequence, holding back pieces that may be the start of one.

    feed(piece) -> the pieces safe to send now; a piece that completes a stop sequence is cut before it and
    `stopped` turns True. flush() returns what was held back when generation ends another way.
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.held: list[Piece] = []
        self.stopped = False

    def feed(self, piece: Piece) -> list[Piece]:
        if not self.stops:
            return [piece]
        self.held.append(piece)
        text = "".join(p.text for p in self.held)
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:  # send the text before the stop sequence, nothing after it
            self.stopped = True
            return self._take(min(hits), cut=True)
        # the longest end of the text that could still grow into a stop sequence stays held
        hold = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        return self._take(len(text) - hold, cut=False)

    def _take(self, n_chars: int, cut: bool) -> list[Piece]:
        """The held pieces covering the first n_chars (the last one shortened when `cut`); the rest stay held."""
        out, used = [], 0
        while self.held and (used + len(self.held[0].text) <= n_chars or (cut and used < n_chars)):
            p = self.held.pop(0)
            if used + len(p.text) > n_chars:
                p = p._replace(text=p.text[:n_chars - used])
            out.append(p)
            used += len(p.text)
        if cut:
            self.held = []
        return out

    def flush(self) -> list[Piece]:
        out, self.held = self.held, []
        return out


@dataclass
class ServedModel:
    """A loaded run: its model, tokenizer and config, and what the API needs to talk to it."""

    info: RunInfo
    loaded: Loaded

    @property
    def model(self):
        return self.loaded.model

    @property
    def tok(self):
        return self.loaded.tokenizer

    @property
    def block_size(self) -> int:
        return self.model.cfg.block_size

    def stop_tokens(self) -> list[int]:
        """Tokens that end a reply: <|im_end|> (and the markers of a new turn or document) for chat models,
        <|endoftext|> for a BPE text model; a character vocabulary has none."""
        specials = getattr(self.tok, "special_tokens", {}) or {}
        names = ("<|im_end|>", "<|im_start|>", "<|endoftext|>") if self.info.kind == "chat" else ("<|endoftext|>",)
        return [specials[n] for n in names if n in specials]

    def text_prompt(self, text: str) -> list[int]:
        """Ids of a completion prompt; a special token's text is taken as plain text, never as the token."""
        if not text:
            raise ConfigError("the prompt is empty; give some text to continue")
        return encode_text(self.tok, text)

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        """Ids of the conversation in the chat template, with the assistant's turn opened."""
        from llmpath.chat.template import encode_chat

        if self.info.kind != "chat":
            raise ConfigError(f"{self.info.id} is not a chat model (its tokenizer has no chat template tokens); "
                              "use /v1/completions, or a run trained by `llmpath chat sft`")
        if not isinstance(messages, list) or not messages:
            raise ConfigError("messages must be a non-empty list of {'role': ..., 'content': ...}")
        ids, _ = encode_chat(self.tok, messages, add_generation_prompt=True)
        return ids

    def token_text(self, t: int) -> tuple[str, bytes]:
        if hasattr(self.tok, "decode_bytes"):
            raw = self.tok.decode_bytes([t])
            return raw.decode("utf-8", errors="replace"), raw
        text = self.tok.decode([t])
        return text, text.encode("utf-8")

    def complete(self, prompt: list[int], s: Sampling) -> Completion:
        """Generate after `prompt` (ids that fit the context with s.max_tokens); see Completion."""
        generator = torch.Generator(device=next(self.model.parameters()).device)
        generator.manual_seed(s.seed if s.seed is not None else secrets.randbits(63))
        stop_tokens = self.stop_tokens()
        steps = stream_scored(self.model, prompt, max_new_tokens=s.max_tokens, top=s.top_logprobs,
                              temperature=s.temperature, top_p=s.top_p if s.top_p < 1 else None,
                              stop_tokens=stop_tokens, generator=generator)
        return Completion(self, steps, set(stop_tokens), StopText(s.stop))


class Completion:
    """The pieces of one generation, as an iterator; once it ends, `finish_reason` is "stop" or "length"."""

    def __init__(self, served: ServedModel, steps: Iterator, stops: set[int], cutter: StopText):
        self.served, self.steps, self.stops, self.cutter = served, steps, stops, cutter
        self.finish_reason: str | None = None
        self.completion_tokens = 0

    def __iter__(self) -> Iterator[Piece]:
        served, cutter = self.served, self.cutter
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        reason = "length"
        for step in self.steps:
            self.completion_tokens += 1
            if step.token in self.stops:
                reason = "stop"
                break
            token_text, raw = served.token_text(step.token)
            text = decoder.decode(raw) if hasattr(served.tok, "decode_bytes") else token_text
            top = [(*served.token_text(t), lp) for t, lp in step.top]
            yield from cutter.feed(Piece(text, step.token, token_text, raw, step.logprob, top))
            if cutter.stopped:
                reason = "stop"
                break
        close = getattr(self.steps, "close", None)
        if close is not None:
            close()  # a stop sequence ends generation before the model would have
        yield from cutter.flush()
        self.finish_reason = reason


# ---------------------------------------------------------------------------------------------------- the store

class ModelStore:
    """The runs of one folder, each model loaded once (the first request that needs it waits for it)."""

    def __init__(self, runs_dir: str | Path, device: str = "cpu"):
        self.root = Path(runs_dir)
        self.device = device
        self._models: dict[str, ServedModel] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._infos: dict[tuple[str, float], RunInfo] = {}  # (folder, checkpoint mtime) -> what it holds

    def runs(self) -> list[RunInfo]:
        """Every run folder runs/<topic>/<name>/ that holds a checkpoint, metrics or results, by topic order."""
        order = {name: k for k, name in enumerate(TOPICS)}
        found = []
        if not self.root.is_dir():
            return []
        for topic_dir in sorted(self.root.iterdir(), key=lambda p: (order.get(p.name, len(order)), p.name)):
            if not topic_dir.is_dir() or topic_dir.name.startswith("."):
                continue
            for path in sorted(p for p in topic_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
                if any((path / f).exists() for f in ("results.json", "metrics.jsonl", "ckpt")):
                    found.append(self._describe(path, topic_dir.name))
        return found

    def _describe(self, path: Path, topic: str) -> RunInfo:
        stamps = [f.stat().st_mtime for f in (path / "results.json", path / "ckpt" / "best.pt",
                                               path / "ckpt" / "last.pt") if f.exists()]
        key = (str(path), max(stamps, default=0.0))
        if key not in self._infos:
            self._infos[key] = describe(path, topic)
        return self._infos[key]

    def info(self, run_id: str) -> RunInfo:
        topic, _, name = str(run_id).partition("/")
        path = self.root / topic / name
        if not topic or not name or "/" in name or name.startswith(".") or not path.is_dir():
            known = ", ".join(r.id for r in self.runs() if r.generates) or "none yet: train one (make tour)"
            raise UnknownModel(f"no run '{run_id}' in {self.root}; models that generate: {known}")
        return self._describe(path, topic)

    def models(self) -> list[RunInfo]:
        """The runs that generate text (GET /v1/models)."""
        return [r for r in self.runs() if r.generates]

    def get(self, run_id: str) -> ServedModel:
        """The loaded model of a run (loaded at the first call, through load_run)."""
        info = self.info(run_id)
        if not info.checkpoint:
            raise ConfigError(f"{info.id} holds no model that the playground can load (no checkpoint, or a topic "
                              f"whose models its own commands read)")
        with self._guard:
            lock = self._locks.setdefault(info.id, threading.Lock())
        with lock:  # two first requests for one run load it once
            served = self._models.get(info.id)
            if served is None or served.info is not info:  # retrained since: load the new checkpoint
                loaded = load_run(info.path, device=self.device, which=info.checkpoint)
                served = self._models[info.id] = ServedModel(info, loaded)
        return served
