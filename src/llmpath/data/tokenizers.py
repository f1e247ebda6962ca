"""Character-level tokenizer: one id per Unicode character seen in training text."""

from __future__ import annotations

import json
from pathlib import Path

from llmpath.data.corpora import DataError

UNK = "<unk>"


class CharTokenizer:
    """CharTokenizer.train('abca').encode('cab') -> [2, 0, 1]

    Characters not seen in training raise a clear error, or map to `<unk>` (id 0) when the
    tokenizer was trained with unk=True.
    """

    def __init__(self, chars: list[str], unk: bool = False):
        self.unk = unk
        self.itos: list[str] = ([UNK] if unk else []) + list(chars)
        self.stoi: dict[str, int] = {c: i for i, c in enumerate(self.itos)}

    @classmethod
    def train(cls, text: str, unk: bool = False) -> "CharTokenizer":
        return cls(sorted(set(text)), unk=unk)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        if self.unk:
            return [self.stoi.get(c, 0) for c in text]
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise DataError(f"character {e.args[0]!r} is not in this model's character vocabulary "
                            f"({self.vocab_size} chars); remove it from the prompt") from None

    def decode(self, ids) -> str:
        return "".join(self.itos[int(i)] for i in ids)

    def state_dict(self) -> dict:
        return {"kind": "char", "itos": self.itos[1:] if self.unk else self.itos, "unk": self.unk}

    @classmethod
    def from_state_dict(cls, d: dict) -> "CharTokenizer":
        return cls(d["itos"], unk=d["unk"])

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.state_dict(), ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "CharTokenizer":
        return cls.from_state_dict(json.loads(Path(path).read_text(encoding="utf-8")))
