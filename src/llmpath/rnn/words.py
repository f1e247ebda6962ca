"""Word-level tokenizer with a vocabulary cap: the rarest words become `<unk>`.

    tok = WordTokenizer.train("to be or not to be", vocab_cap=3)
    tok.tokens("to be, or")   -> ['to', 'be', ',', 'or']
    tok.decode(tok.encode("to be, or"))   -> 'to be <unk> <unk>'   (',' and 'or' are past the cap)

Words are runs of letters/digits/apostrophes; each punctuation mark and each newline is its own
token (newlines carry the play's layout: speaker lines, speeches).
"""

from __future__ import annotations

import re
from collections import Counter

UNK = "<unk>"
_TOKEN = re.compile(r"[A-Za-z0-9']+|\n|[^\sA-Za-z0-9']")


class WordTokenizer:
    def __init__(self, words: list[str]):
        self.itos = [UNK] + [w for w in words if w != UNK]
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    @staticmethod
    def tokens(text: str) -> list[str]:
        return _TOKEN.findall(text)

    @classmethod
    def train(cls, text: str, vocab_cap: int = 10_000) -> "WordTokenizer":
        """Keep the vocab_cap - 1 most frequent tokens (ties by first appearance) plus <unk>."""
        counts = Counter(cls.tokens(text))
        return cls([w for w, _ in counts.most_common(max(vocab_cap - 1, 1))])

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        return [self.stoi.get(w, 0) for w in self.tokens(text)]

    def decode(self, ids) -> str:
        out = ""
        for i in ids:
            w = self.itos[int(i)]
            glue = out == "" or out.endswith("\n") or w == "\n" or (len(w) == 1 and not w.isalnum() and w != "'")
            out += w if glue else " " + w
        return out

    def state_dict(self) -> dict:
        return {"kind": "word", "itos": self.itos[1:]}

    @classmethod
    def from_state_dict(cls, d: dict) -> "WordTokenizer":
        return cls(d["itos"])
