"""Saving and loading: tiktoken's ranks file, Hugging Face vocab.json + merges.txt, and a JSON state dict.

    save(tok, "tok/")      # tok/bpe.tiktoken, tok/vocab.json, tok/merges.txt, tok/llmpath_bpe.json
    load("tok/")           # any folder holding one of the two forms (e.g. the real GPT-2 files)
    load("gpt2.tiktoken", pattern="gpt2")
    load("wp/")            # a folder with a BERT vocab.txt: a WordPiece (WordPiece.save writes one)
    from_state_dict(d)     # d["kind"]: "bpe" (or none), "wordpiece", "char"

tiktoken's form is one line per token: base64(token bytes), a space, its rank. Hugging Face's form
spells each byte as a printable character (GPT-2's bytes_to_unicode: 'Ġ' is the space byte) and
lists the merges, one "left right" pair a line, in training order.
"""

from __future__ import annotations

import base64
import json
from functools import lru_cache
from pathlib import Path

from llmpath.data.corpora import DataError
from llmpath.data.tokenizers import CharTokenizer
from llmpath.tokenizers.bpe import Merge, bpe_parts
from llmpath.tokenizers.tokenizer import ENDOFTEXT, Tokenizer
from llmpath.tokenizers.wordpiece import VOCAB_FILE, WordPiece

TIKTOKEN_FILE, META_FILE = "bpe.tiktoken", "llmpath_bpe.json"


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character: printable Latin-1 bytes map to themselves,
    the other 68 to chr(256 + k). bytes_to_unicode()[ord(' ')] -> 'Ġ'"""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = list(bs), 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def to_unicode(token: bytes) -> str:
    m = bytes_to_unicode()
    return "".join(m[b] for b in token)


def from_unicode(s: str) -> bytes:
    inv = {c: b for b, c in bytes_to_unicode().items()}
    try:
        return bytes(inv[c] for c in s)
    except KeyError as e:
        raise DataError(f"{s!r} is not a byte-level token (character {e.args[0]!r} is not one of GPT-2's 256)") from None


# ---------------------------------------------------------------------------------- merges

def recover_merges(ranks: dict[bytes, int]) -> list[Merge]:
    """The merge behind each multi-byte token: BPE on its bytes with only lower ranks leaves two parts."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        parts = bpe_parts(ranks, token, max_rank=rank)
        if len(parts) != 2:
            raise DataError(f"token {token!r} (rank {rank}) is not a merge of two lower-ranked tokens")
        merges.append(((ranks[parts[0]], ranks[parts[1]]), rank))
    return merges


def _merges(tok: Tokenizer) -> list[Merge]:
    return tok.merges if tok.merges is not None else recover_merges(tok.mergeable_ranks)


# -------------------------------------------------------------------------------- tiktoken

def save_tiktoken(ranks: dict[bytes, int], path: str | Path) -> None:
    lines = [base64.b64encode(t).decode("ascii") + f" {r}" for t, r in sorted(ranks.items(), key=lambda kv: kv[1])]
    Path(path).write_text("\n".join(lines) + "\n", encoding="ascii")


def load_tiktoken(path: str | Path) -> dict[bytes, int]:
    ranks = {}
    for n, line in enumerate(Path(path).read_text(encoding="ascii", errors="replace").splitlines(), 1):
        if line.strip():
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except ValueError:
                raise DataError(f"{path}:{n}: expected 'base64-token rank', got {line[:60]!r}") from None
    return ranks


# ---------------------------------------------------------------------------- Hugging Face

def save_hf(tok: Tokenizer, folder: str | Path) -> None:
    """vocab.json + merges.txt that transformers' GPT2Tokenizer (and `tokenizers`) read."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    inv = {i: t for t, i in tok.mergeable_ranks.items()}
    vocab = {to_unicode(t): i for t, i in tok.mergeable_ranks.items()}
    vocab.update(tok.special_tokens)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = [f"{to_unicode(inv[a])} {to_unicode(inv[b])}" for (a, b), _ in _merges(tok)]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(lines) + "\n", encoding="utf-8")


def load_hf(vocab_path: str | Path, merges_path: str | Path, pattern: str = "gpt2") -> Tokenizer:
    """A GPT-2 style vocabulary; entries that are neither a byte nor a merge become special tokens."""
    vocab = json.loads(Path(vocab_path).read_text(encoding="utf-8"))
    pairs = [tuple(line.split(" ")) for line in Path(merges_path).read_text(encoding="utf-8").splitlines()
             if line and not line.startswith("#version")]
    byte_tokens = [to_unicode(bytes([b])) for b in range(256)]
    missing = [t for t in byte_tokens if t not in vocab]
    if missing:
        raise DataError(f"{vocab_path} lacks {len(missing)} of the 256 byte tokens (e.g. {missing[0]!r}); "
                        "it is not a byte-level BPE vocabulary")
    ranks = {from_unicode(t): vocab[t] for t in byte_tokens}
    merges, last = [], -1
    for n, pair in enumerate(pairs, 1):
        if len(pair) != 2 or pair[0] + pair[1] not in vocab:
            raise DataError(f"{merges_path}:{n}: {' '.join(pair)!r} is not a pair whose merge is in vocab.json")
        new = from_unicode(pair[0] + pair[1])
        idx = vocab[pair[0] + pair[1]]
        if new not in ranks:
            if idx < last:
                raise DataError(f"{merges_path}:{n}: merge order and vocab.json ids disagree; tiktoken-style ranks "
                                "need the ids of merged tokens to grow with the merge order")
            ranks[new], last = idx, idx
        merges.append(((vocab[pair[0]], vocab[pair[1]]), idx))
    mergeable = {to_unicode(t) for t in ranks}
    specials = {t: i for t, i in vocab.items() if t not in mergeable}
    return Tokenizer(ranks, pattern, specials, merges)


def from_hf_files(folder: str | Path, pattern: str = "gpt2") -> Tokenizer:
    """The GPT-2 tokenizer of a folder holding vocab.json + merges.txt."""
    folder = Path(folder)
    return load_hf(folder / "vocab.json", folder / "merges.txt", pattern)


# ---------------------------------------------------------------------------- folders, JSON

def save(tok: Tokenizer, folder: str | Path) -> Path:
    """Both forms plus llmpath_bpe.json (pattern and special tokens, which the ranks file lacks)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_tiktoken(tok.mergeable_ranks, folder / TIKTOKEN_FILE)
    save_hf(tok, folder)
    meta = {"pattern": tok.pattern, "special_tokens": tok.special_tokens}
    (folder / META_FILE).write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return folder


def load(path: str | Path, pattern: str | None = None,
         special_tokens: dict[str, int] | None = None) -> Tokenizer | WordPiece:
    """A folder (ours, or one with vocab.json + merges.txt or a .tiktoken file), or a ranks/vocab file.
    A folder or file that is a BERT vocab.txt (and no BPE form) gives a WordPiece (WordPiece.load).

    A tiktoken ranks file alone carries no special tokens: <|endoftext|> gets the next id (GPT-2's rule)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"tokenizer path '{path}' does not exist; train one: llmpath tokenizer train --out {path}")
    bpe_forms = path.is_dir() and (any(path.glob("*.tiktoken")) or (path / "vocab.json").exists())
    if path.name == VOCAB_FILE or (path.is_dir() and (path / VOCAB_FILE).exists() and not bpe_forms):
        return WordPiece.load(path if path.is_dir() else path.parent)
    folder = path if path.is_dir() else path.parent
    meta = json.loads((folder / META_FILE).read_text(encoding="utf-8")) if (folder / META_FILE).exists() else {}
    pattern = pattern or meta.get("pattern", "gpt2")
    specials = special_tokens if special_tokens is not None else meta.get("special_tokens")
    if path.is_dir():
        ticks = sorted(path.glob("*.tiktoken"))
        if ticks:
            path = ticks[0]
        elif (path / "vocab.json").exists() and (path / "merges.txt").exists():
            path = path / "vocab.json"
        else:
            raise DataError(f"'{path}' holds neither a .tiktoken ranks file nor vocab.json + merges.txt")
    if path.name.endswith(".json"):
        tok = load_hf(path, path.with_name("merges.txt"), pattern)
        return Tokenizer(tok.mergeable_ranks, pattern, specials, tok.merges) if specials is not None else tok
    ranks = load_tiktoken(path)
    return Tokenizer(ranks, pattern, specials if specials is not None else {ENDOFTEXT: len(ranks)})


def to_state_dict(tok: Tokenizer) -> dict:
    """JSON-ready: {'kind': 'bpe', 'pattern', 'tokens' ([base64, rank] by rank), 'special_tokens', 'merges'}."""
    inv = sorted(tok.mergeable_ranks.items(), key=lambda kv: kv[1])
    return {"kind": "bpe", "pattern": tok.pattern, "tokens": [[base64.b64encode(t).decode("ascii"), r] for t, r in inv],
            "special_tokens": tok.special_tokens,
            "merges": None if tok.merges is None else [[a, b, i] for (a, b), i in tok.merges]}


def from_state_dict(d: dict) -> Tokenizer | WordPiece | CharTokenizer:
    """Any tokenizer's state_dict() back: d["kind"] is "wordpiece", "char", or "bpe" (also when absent)."""
    if d.get("kind") == "wordpiece":
        return WordPiece.from_state_dict(d)
    if d.get("kind") == "char":
        return CharTokenizer.from_state_dict(d)
    ranks = {base64.b64decode(t): r for t, r in d["tokens"]}
    merges = None if d.get("merges") is None else [((a, b), i) for a, b, i in d["merges"]]
    return Tokenizer(ranks, d["pattern"], d["special_tokens"], merges)
