"""The byte-level BPE tokenizer: tiktoken's ranks, regex and special-token rules, in Python.

    tok = Tokenizer.train(text, vocab_size=4096)                 # or pattern="gpt4"
    tok.encode("hello world")                                    # ids
    tok.encode("<|endoftext|>", allowed_special="all")           # [id of <|endoftext|>]
    tok.decode(tok.encode(s)) == s                               # for any str without lone surrogates

A tokenizer is `mergeable_ranks` (token bytes -> id, also the merge priority), a regex pattern and special tokens
(str -> id, after the ranks). With the same three, tiktoken.Encoding gives the same ids.
"""

from __future__ import annotations

from functools import lru_cache
from typing import AbstractSet, Collection, Iterable, Literal

import regex

from llmpath.data.corpora import DataError
from llmpath.tokenizers.bpe import Merge, PATTERNS, bpe_encode, pattern_str, ranks_from_merges, train_fast

ENDOFTEXT = "<|endoftext|>"
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")  # ChatML turns: <|im_start|>user\n...<|im_end|>
SPECIAL_TOKENS = (ENDOFTEXT, *CHAT_TOKENS)


class SpecialTokenError(DataError):
    """Text holds a special token that the call did not allow (tiktoken raises ValueError too)."""


class Tokenizer:
    """Tokenizer(ranks, pattern="gpt2", special_tokens={"<|endoftext|>": 256}).encode("hi") -> [104, 105]"""

    cache_size = 200_000  # chunk -> ids entries kept; cleared when full

    def __init__(self, mergeable_ranks: dict[bytes, int], pattern: str = "gpt2",
                 special_tokens: dict[str, int] | None = None, merges: list[Merge] | None = None):
        ids = set(mergeable_ranks.values())
        if len(ids) != len(mergeable_ranks):
            raise DataError("two tokens of this vocabulary share a rank; each token needs its own id")
        special_tokens = dict(special_tokens or {})
        clash = [s for s, i in special_tokens.items() if i in ids]
        if clash:
            raise DataError(f"special token {clash[0]!r} has id {special_tokens[clash[0]]}, which a BPE token uses; "
                            f"give special tokens ids >= {max(ids) + 1}")
        self.mergeable_ranks = mergeable_ranks
        self.pattern = pattern  # a name from PATTERNS or a regex string
        self.pat_str = pattern_str(pattern)
        self.special_tokens = special_tokens
        self.merges = merges  # the training order, when known (Hugging Face merges.txt keeps it)
        self._pat = regex.compile(self.pat_str)
        self._decoder = {i: t for t, i in mergeable_ranks.items()}
        self._decoder.update({i: s.encode("utf-8") for s, i in special_tokens.items()})
        self._cache: dict[str, list[int]] = {}

    # ----------------------------------------------------------------------------- training

    @classmethod
    def train(cls, text: str, vocab_size: int, pattern: str = "gpt2",
              special_tokens: Iterable[str] = SPECIAL_TOKENS) -> "Tokenizer":
        """Learn vocab_size - 256 - len(special_tokens) merges (fast trainer); specials take the last ids."""
        special_tokens = list(special_tokens)
        merges = train_fast(text, vocab_size, pattern, n_special=len(special_tokens))
        ranks = ranks_from_merges(merges)
        return cls(ranks, pattern, {s: len(ranks) + k for k, s in enumerate(special_tokens)}, merges)

    def with_special_tokens(self, names: Iterable[str]) -> "Tokenizer":
        """A copy with more special tokens (e.g. CHAT_TOKENS for a GPT-2 vocabulary), at the next free ids."""
        specials, nxt = dict(self.special_tokens), self.vocab_size
        for s in names:
            if s not in specials:
                specials[s], nxt = nxt, nxt + 1
        return Tokenizer(self.mergeable_ranks, self.pattern, specials, self.merges)

    # ---------------------------------------------------------------------------- properties

    @property
    def vocab_size(self) -> int:
        """Number of embedding rows a model needs: largest id + 1."""
        return max([*self.mergeable_ranks.values(), *self.special_tokens.values()]) + 1

    @property
    def eot_token(self) -> int | None:
        return self.special_tokens.get(ENDOFTEXT)

    def n_merges(self) -> int:
        return len(self.mergeable_ranks) - 256  # tokens beyond the 256 bytes

    # ------------------------------------------------------------------------------- encode

    def encode_ordinary(self, text: str) -> list[int]:
        """Ids of text with special tokens treated as plain text (tiktoken's encode_ordinary)."""
        ids: list[int] = []
        cache, ranks = self._cache, self.mergeable_ranks
        if len(cache) > self.cache_size:
            cache.clear()
        for chunk in self._pat.findall(text):
            t = cache.get(chunk)
            if t is None:
                t = cache[chunk] = bpe_encode(ranks, chunk.encode("utf-8"))
            ids += t
        return ids

    def encode(self, text: str, *, allowed_special: Literal["all"] | AbstractSet[str] = frozenset(),
               disallowed_special: Literal["all"] | Collection[str] = "all") -> list[int]:
        """tiktoken's policy: a special token in text is an error unless allowed (then one id) or listed
        as not disallowed (then plain text). encode("<|endoftext|>", allowed_special="all") -> [eot]"""
        if allowed_special == "all":
            allowed_special = self.special_tokens.keys()
        allowed = set(allowed_special)
        unknown = allowed - self.special_tokens.keys()
        if unknown:
            raise SpecialTokenError(f"allowed_special names {sorted(unknown)[0]!r}, which is not a special token "
                                    f"of this tokenizer; it has: {', '.join(self.special_tokens) or '(none)'}")
        if disallowed_special == "all":
            disallowed_special = self.special_tokens.keys() - allowed
        if disallowed_special:
            m = _alternation(frozenset(disallowed_special)).search(text)
            if m:
                raise SpecialTokenError(
                    f"text contains the special token {m.group()!r}; pass allowed_special={{{m.group()!r}}} "
                    f"(or 'all') to encode it as one token, or disallowed_special=() to encode it as plain text")
        text = _valid_utf8(text)
        if not allowed:
            return self.encode_ordinary(text)
        ids: list[int] = []
        start = 0
        for m in _alternation(frozenset(allowed)).finditer(text):
            ids += self.encode_ordinary(text[start:m.start()])
            ids.append(self.special_tokens[m.group()])
            start = m.end()
        return ids + self.encode_ordinary(text[start:])

    def encode_batch(self, texts: list[str], **kwargs) -> list[list[int]]:
        """encode for each text, sharing the chunk cache."""
        return [self.encode(t, **kwargs) for t in texts]

    # ------------------------------------------------------------------------------- decode

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        try:
            return b"".join(self._decoder[int(i)] for i in ids)
        except KeyError as e:
            raise DataError(f"token id {e.args[0]} is not in this vocabulary (0..{self.vocab_size - 1})") from None

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """Text of ids; bytes that are not valid UTF-8 (a cut multi-byte character) become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def decode_tokens_bytes(self, ids: Iterable[int]) -> list[bytes]:
        """The bytes of each token: decode_tokens_bytes(encode("hi there")) -> [b'hi', b' there']"""
        return [self.decode_bytes([i]) for i in ids]

    # ------------------------------------------------------------------------------ interop

    def to_tiktoken(self, name: str = "llmpath"):
        """The same tokenizer as a tiktoken.Encoding (needs `pip install tiktoken`)."""
        import tiktoken

        return tiktoken.Encoding(name=name, pat_str=self.pat_str, mergeable_ranks=self.mergeable_ranks,
                                 special_tokens=self.special_tokens)

    def state_dict(self) -> dict:
        from llmpath.tokenizers.files import to_state_dict

        return to_state_dict(self)

    def save(self, folder) -> None:
        from llmpath.tokenizers.files import save

        save(self, folder)

    def save_hf(self, folder) -> None:
        from llmpath.tokenizers.files import save_hf

        save_hf(self, folder)

    def __repr__(self) -> str:
        name = self.pattern if self.pattern in PATTERNS else "custom"
        return f"Tokenizer(vocab_size={self.vocab_size}, merges={self.n_merges()}, pattern={name}, special={list(self.special_tokens)})"


@lru_cache(maxsize=64)
def _alternation(tokens: frozenset) -> regex.Pattern:
    """One regex for a set of literal tokens, longest first (so '<|a|>' never hides '<|a|>x')."""
    return regex.compile("|".join(regex.escape(t) for t in sorted(tokens, key=lambda t: (-len(t), t))))


def _valid_utf8(text: str) -> str:
    """Lone surrogates cannot be UTF-8: replace them with U+FFFD, as tiktoken does."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def train(text: str, vocab_size: int, pattern: str = "gpt2", special_tokens: Iterable[str] = SPECIAL_TOKENS) -> Tokenizer:
    """Tokenizer.train as a function."""
    return Tokenizer.train(text, vocab_size, pattern, special_tokens)
