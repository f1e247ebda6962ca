"""`llmpath tokenizer ...`: train a byte-level BPE, show how it cuts text, tour.

    llmpath tokenizer train --data shakespeare --vocab-size 4096 --out tok/
    llmpath tokenizer train --data chinese-reviews --pattern gpt4 --out tok-zh/
    llmpath tokenizer encode --tok tok/ "To be, or not to be"
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from llmpath.common import log, markdown_table, setup_logging, write_json
from llmpath.config import Command, ConfigError, build_config, opt
from llmpath.data import split_text
from llmpath.tokenizers.compare import chinese_text, compare_with_hf, corpus_text, same_as_tiktoken
from llmpath.tokenizers.files import load, save
from llmpath.tokenizers.tokenizer import SPECIAL_TOKENS, Tokenizer
from llmpath.tokenizers.wordpiece import WordPiece
from llmpath.tour import StageResult

TOPIC = "tokenizer"


@dataclass
class TokTrain:
    preset: str = opt("", "preset to start from (tiny, small, base)")
    data: str = opt("shakespeare", "training text: a dataset name (llmpath list) or a .txt path")
    vocab_size: int = opt(4096, "tokens in all: 256 bytes + merges + special tokens")
    pattern: Literal["gpt2", "gpt4"] = opt("gpt2", "pre-tokenization regex: GPT-2's or GPT-4's (cl100k)")
    max_chars: int = opt(0, "train on the first N characters (0 = all); the next 10% (up to 1M) are held out", min=0)
    special: str = opt(",".join(SPECIAL_TOKENS), "comma-separated special tokens (ids after the merges)")
    out: str = opt("", "folder to write the tokenizer to (default: runs/tokenizer/<preset>)")


@dataclass
class TokEncode(TokTrain):
    """The training options too (so presets apply and --out names the folder), plus encoding ones."""

    text: str = opt("", "text to encode (or give it as the argument)")
    tok: str = opt("", "tokenizer folder or file (default: --out, else runs/tokenizer/<preset>)")
    allowed_special: Literal["all", "none"] = opt("all", "all: <|endoftext|> etc. in the text become one token")
    color: Literal["auto", "always", "never"] = opt("auto", "colour the pieces (auto: when printing to a terminal)")
    ids: bool = opt(True, "also print the token ids")


PRESETS: dict[str, dict] = {
    "tiny": {"data": "shakespeare-tiny", "vocab_size": 512, "max_chars": 100_000},
    "small": {"vocab_size": 4096, "max_chars": 1_000_000},  # ~1 MB: about a second to train
    "base": {"vocab_size": 16384, "max_chars": 0},           # the whole 4.8M characters
}


def _default_dir(preset: str) -> Path:
    return Path("runs") / TOPIC / (preset or "default")


def train_texts(data: str, max_chars: int) -> tuple[str, str]:
    """(training text, held-out text): the first max_chars, then the next 10% (at most 1M characters)."""
    text = corpus_text(data)
    if max_chars <= 0 or max_chars >= len(text):
        train, held, _ = split_text(text, (0.9, 0.1, 0.0))
        return train, held[:1_000_000]
    return text[:max_chars], text[max_chars:max_chars + min(1_000_000, max(max_chars // 9, 1))]


def train(cfg: TokTrain) -> dict:
    """Train, save both file forms, and report time, compression and the tiktoken check."""
    setup_logging()
    specials = [s for s in cfg.special.split(",") if s]
    if cfg.vocab_size < 256 + len(specials) + 1:
        raise ConfigError(f"--vocab-size={cfg.vocab_size} leaves no merges; choose at least {257 + len(specials)}")
    text, held = train_texts(cfg.data, cfg.max_chars)
    t0 = time.perf_counter()
    tok = Tokenizer.train(text, cfg.vocab_size, cfg.pattern, specials)
    seconds = time.perf_counter() - t0
    out = Path(cfg.out) if cfg.out else _default_dir(cfg.preset)
    save(tok, out)
    same, n = same_as_tiktoken(tok, held, allowed_special="all") if held else (True, 0)
    summary = {"data": cfg.data, "train_chars": len(text), "vocab_size": tok.vocab_size, "merges": tok.n_merges(),
               "pattern": cfg.pattern, "train_seconds": round(seconds, 3), "held_out_chars": len(held),
               "tokens_per_char": round(n / max(len(held), 1), 4), "same_as_tiktoken": same,
               "round_trip": tok.decode(tok.encode(held, allowed_special="all")) == held,
               "longest_tokens": [t.decode("utf-8", "replace") for t in sorted(tok.mergeable_ranks, key=len)[-5:]]}
    write_json(out / "results.json", summary)
    log.info(f"trained {tok.n_merges()} merges on {len(text):,} characters in {seconds:.2f} s -> {out}\n"
             f"held-out: {summary['tokens_per_char']} tokens/char, identical to tiktoken: {same}, "
             f"round trip: {summary['round_trip']}")
    return summary


# ------------------------------------------------------------------------------------ encode

_COLOURS = [41, 42, 43, 44, 45, 46]  # ANSI background colours, cycled


def piece_text(b: bytes) -> str:
    """A token's bytes as text; a piece of a multi-byte character shows as hex: b'\\xe4\\xbd' -> '<e4 bd>'"""
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return "<" + " ".join(f"{x:02x}" for x in b) + ">"


def show_pieces(tok: Tokenizer | WordPiece, ids: list[int], color: bool) -> str:
    if isinstance(tok, WordPiece):  # its tokens are strings: "##" marks a piece inside a word
        pieces = [tok.id_to_token(i) for i in ids]
    else:
        pieces = [piece_text(b) for b in tok.decode_tokens_bytes(ids)]
    if color:
        return "".join(f"\x1b[30;{_COLOURS[k % len(_COLOURS)]}m{p}\x1b[0m" for k, p in enumerate(pieces))
    return "".join(f"[{p}]" for p in pieces)


def encode(cfg: TokEncode) -> int:
    tok = load(cfg.tok or cfg.out or _default_dir(cfg.preset))
    if isinstance(tok, WordPiece):  # no special tokens inside text: [CLS] etc. are added by the model's code
        ids = tok.encode(cfg.text)
    else:
        ids = tok.encode(cfg.text, allowed_special="all" if cfg.allowed_special == "all" else frozenset())
    color = cfg.color == "always" or (cfg.color == "auto" and sys.stdout.isatty())
    print(show_pieces(tok, ids, color))
    if cfg.ids:
        print(ids)
    print(f"{len(ids)} tokens, {len(cfg.text)} characters, {len(cfg.text.encode('utf-8'))} bytes")
    return 0


# -------------------------------------------------------------------------------- tour, doctor

def compression_table(rows: list[dict]) -> str:
    cells = [[r["text"], r["vocab_size"], f"{r['ours_tpc']:.3f}", f"{r['hf_tpc']:.3f}", f"{r['overlap']:.1%}",
              f"{r['ours_s']:.2f}", f"{r['hf_s']:.2f}"] if "hf_tpc" in r else
             [r["text"], r["vocab_size"], f"{r['ours_tpc']:.3f}", "-", "-", f"{r['ours_s']:.2f}", "-"] for r in rows]
    table = markdown_table(["文本", "词表大小", "我们：每字符词元数", "HF：每字符词元数", "词表重合度（Jaccard）", "我们：训练秒",
                            "HF：训练秒"], cells)
    if not all("hf_tpc" in r for r in rows):
        table += "\n\n（-：没有安装 Hugging Face `tokenizers`；`make test` 或 `pip install -e '.[dev]'` 会装上）"
    return table


def tour(preset: str = "small", out: str = "runs", fresh: bool = False) -> StageResult:
    """Train the preset's vocabulary on Shakespeare and on Chinese; tiktoken check, round trip, compression."""
    cfg = build_config(TokTrain, [f"--preset={preset}", f"--out={Path(out) / TOPIC / preset}"], PRESETS)
    res = train(cfg)
    en_tok = load(cfg.out)
    zh = chinese_text()
    n = cfg.max_chars or len(zh) * 9 // 10
    t0 = time.perf_counter()
    zh_tok = Tokenizer.train(zh[:n], cfg.vocab_size, cfg.pattern)
    zh_seconds = time.perf_counter() - t0
    zh_held = zh[n:n + 200_000]
    zh_same, _ = same_as_tiktoken(zh_tok, zh_held)
    zh_round = zh_tok.decode(zh_tok.encode(zh_held)) == zh_held
    text, held = train_texts(cfg.data, cfg.max_chars)
    rows = [{"text": f"{cfg.data} (English)", **compare_with_hf(text, held, cfg.vocab_size, cfg.pattern, en_tok),
             "ours_s": res["train_seconds"]},
            {"text": "chinese-reviews + hsk (中文)", **compare_with_hf(zh[:n], zh_held, cfg.vocab_size, cfg.pattern, zh_tok),
             "ours_s": zh_seconds}]
    passed = bool(res["same_as_tiktoken"] and res["round_trip"] and zh_same and zh_round)
    table = (compression_table(rows) + f"\n\nidentical to tiktoken on held-out text: English {res['same_as_tiktoken']}, "
             f"Chinese {zh_same}; round trip: English {res['round_trip']}, Chinese {zh_round}. "
             f"Longest English tokens: {', '.join(repr(t) for t in res['longest_tokens'])}")
    return StageResult("tokens per character (English held-out)", float(res["tokens_per_char"]),
                       "our encode == tiktoken with our ranks, token for token; decode(encode(x)) == x", passed, table)


def smoke() -> str:
    """Doctor check: a tiny vocabulary encodes and decodes, the same as the naive merge rule."""
    from llmpath.tokenizers.bpe import bpe_encode_naive

    text = "low lower lowest 你好你好 newer wider 🙂"
    tok = Tokenizer.train(text * 3, 300)
    ids = tok.encode(text)
    if tok.decode(ids) != text:
        raise RuntimeError("byte-level BPE round trip failed")
    if ids != [i for c in tok._pat.findall(text) for i in bpe_encode_naive(tok.mergeable_ranks, c.encode())]:
        raise RuntimeError("fast and naive BPE encodings disagree")
    return f"tiny BPE ({tok.n_merges()} merges): {len(text)} chars -> {len(ids)} tokens, round trip ok"


COMMANDS = {
    "train": Command(train, TokTrain, "train a byte-level BPE vocabulary and save it (tiktoken + HF files)",
                     examples=("llmpath tokenizer train --data shakespeare --vocab-size 4096 --out tok/",
                               "llmpath tokenizer train --data chinese-reviews --pattern gpt4 --out tok-zh/")),
    "encode": Command(encode, TokEncode, "show how a tokenizer cuts a text into pieces (bracketed or coloured)",
                      positional=("text",),
                      examples=('llmpath tokenizer encode --tok tok/ "To be, or not to be"',
                                'llmpath tokenizer encode --tok tok-zh/ "我爱自然语言处理"')),
}
