"""WordPiece (BERT's tokenizer) from scratch: BERT's basic tokenization, greedy longest-match-first, training.

    tok = WordPiece.train(lines, vocab_size=8000)           # uncased; lowercase=False for a cased vocabulary
    tok.tokenize("unaffable 今天")                           # ['un', '##aff', '##able', '今', '天'] (vocab permitting)
    tok.encode("To be, or not to be")                        # ids, no [CLS]/[SEP]: add tok.cls_id / tok.sep_id
    tok.save("wp/"); WordPiece.load("wp/")                   # vocab.txt + tokenizer_config.json
    transformers.BertTokenizer.from_pretrained("wp/")        # the same ids (and tokenizers.BertWordPieceTokenizer)

Encoding has two steps. The basic tokenizer cleans the text (control characters dropped, every whitespace a
space), puts spaces around each CJK character, optionally strips accents (NFD, drop the combining marks) and
lower-cases, then splits on whitespace and isolates each punctuation character. Each word is then cut greedily:
the longest vocabulary token that starts the word, then the longest "##" token that continues it, and so on; a
word that cannot be covered, or is longer than 100 characters, becomes the single token [UNK].

Unicode rules follow Hugging Face `tokenizers` (which transformers' BertTokenizer runs), so ids match theirs:
unassigned code points are kept (BERT's Python code drops them: a new emoji would vanish instead of being
[UNK]), lower-casing is per character (no word-final 'ς'), there is no NFC step (transformers' old Python
BertTokenizer has one), and their CJK ranges start Extension E at U+2B920, not U+2B820. Character classes come
from Python's `unicodedata` (Unicode 14 on Python 3.11); `tokenizers` uses older category tables and newer
case/NFD tables, so of the 1.1M code points 119 are treated differently when cased and 559 when uncased, all of
them recent additions to Unicode (punctuation such as U+2E43, combining marks, Latin letters).

Training (WordPiece.train) counts the words, starts from the characters seen (each also as a "##" piece, except
CJK characters and punctuation, which are always words of their own) and merges adjacent pieces within words:
un + ##aff -> unaff. By default the pair to merge is the most frequent one, as Hugging Face's WordPieceTrainer
does (it runs BPE with "##" pieces). score="likelihood" uses the score of Google's description (Schuster &
Nakajima 2012), count(ab) / (count(a) * count(b)): the merge that most raises the words' likelihood under a
unigram model. On our corpora that score spends the vocabulary on strings rarer than their parts (tweet URL
codes such as "njdyqwfv" early, "th" near the end): held-out text then takes 0.74 tokens per character against
0.50 by frequency (vocab 8000, 5 MB of English and Chinese; benchmarks/bench_tokenizers.py --wordpiece), so
frequency is the default.
"""

from __future__ import annotations

import heapq
import json
import re
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable

from llmpath.config import ConfigError
from llmpath.data.corpora import DataError
from llmpath.tokenizers.bpe import _merge_in_word, merge

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIALS = (PAD, UNK, CLS, SEP, MASK)  # ids 0..4 of a trained vocabulary, BERT's vocab.txt order
SCORES = ("frequency", "likelihood")  # how training picks the next pair to merge (see the module docstring)
PREFIX = "##"  # marks a piece that continues a word
MAX_WORD_CHARS = 100  # longer words are [UNK], as in BERT
VOCAB_FILE, CONFIG_FILE = "vocab.txt", "tokenizer_config.json"

# CJK Unified Ideographs (+ extensions, compatibility ideographs): each is its own word. Extension E starts at
# U+2B920 here as in `tokenizers` (Google's BERT: U+2B820), so that our ids equal theirs.
CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
              (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


# ------------------------------------------------------------------------- character classes

def is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in CJK_RANGES)


def is_punctuation(ch: str) -> bool:
    """ASCII symbols count too: is_punctuation('$') -> True (category Sc), is_punctuation('，') -> True"""
    cp = ord(ch)
    return 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126 \
        or unicodedata.category(ch).startswith("P")


def is_whitespace(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch) == "Zs"


def is_control(ch: str) -> bool:
    """Format and control characters (Cc, Cf, Co, Cs), NUL and U+FFFD; tab, newline and CR are whitespace."""
    if ch in "\t\n\r":
        return False
    return ch in "\x00\ufffd" or unicodedata.category(ch) in ("Cc", "Cf", "Co", "Cs")


# ----------------------------------------------------------------- basic tokenizer: readable

def basic_tokenize_naive(text: str, lowercase: bool = True, strip_accents: bool | None = None) -> list[str]:
    """BERT's BasicTokenizer, one step and one character at a time.
    basic_tokenize_naive("Héllo, 世界!") -> ['hello', ',', '世', '界', '!']"""
    strip = lowercase if strip_accents is None else strip_accents
    out = []
    for ch in text:  # 1. clean: drop control characters, any whitespace -> ' '; 2. space out CJK characters
        if is_control(ch):
            continue
        out.append(" " if is_whitespace(ch) else f" {ch} " if is_cjk(ch) else ch)
    text = "".join(out)
    if strip:  # 3. é = e + U+0301 after NFD; the combining mark (category Mn) goes
        text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
    if lowercase:  # 4. per character, as `tokenizers` does: str.lower() would turn a word-final 'Σ' into 'ς'
        text = "".join(c.lower() for c in text)
    words = []
    for word in text.split():  # 5. split on whitespace, then make each punctuation character a word
        start = 0
        for i, ch in enumerate(word):
            if is_punctuation(ch):
                words += [word[start:i], ch] if i > start else [ch]
                start = i + 1
        if start < len(word):
            words.append(word[start:])
    return words


# --------------------------------------------------------------------- basic tokenizer: fast

class _Table(dict):
    """A str.translate table filled on first sight of each character: code point -> rule(character)."""

    def __init__(self, rule):
        super().__init__()
        self.rule = rule

    def __missing__(self, cp: int):
        r = self[cp] = self.rule(chr(cp))
        return r


# Whitespace is left to str.split(), which splits exactly where is_whitespace is true.
_CLEAN = _Table(lambda c: "" if is_control(c) else f" {c} " if is_cjk(c) else c)
_MARKS = _Table(lambda c: "" if unicodedata.category(c) == "Mn" else c)
_PUNCT = _Table(lambda c: f" {c} " if is_punctuation(c) else c)
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean_chunks(text: str) -> list[str]:
    """Steps 1-2 and the whitespace split: clean_chunks("a\\x00b  中文!") -> ['ab', '中', '文', '!']"""
    if not text.isascii() or _ASCII_CONTROL.search(text):  # most English text needs no cleaning
        text = text.translate(_CLEAN)
    return text.split()


def chunk_words(chunk: str, lowercase: bool = True, strip: bool = True) -> list[str]:
    """Steps 3-5 on one chunk without whitespace: chunk_words("Héllo,") -> ['hello', ',']"""
    if strip and not chunk.isascii():
        chunk = unicodedata.normalize("NFD", chunk).translate(_MARKS)
    if lowercase:
        chunk = chunk.replace("Σ", "σ").lower()  # the only context-dependent rule of str.lower (final sigma)
    if chunk.isalnum():
        return [chunk]  # letters and digits only: no punctuation to split off (the common case)
    return chunk.translate(_PUNCT).split()


def basic_tokenize(text: str, lowercase: bool = True, strip_accents: bool | None = None) -> list[str]:
    """Same words as basic_tokenize_naive: whole-text C-speed passes (str.translate, split), then each chunk."""
    strip = lowercase if strip_accents is None else strip_accents
    return [w for c in clean_chunks(text) for w in chunk_words(c, lowercase, strip)]


# --------------------------------------------------------------------------- the tokenizer

class WordPiece:
    """WordPiece(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##aff", "##able"]).tokenize("unaffable")
    -> ['un', '##aff', '##able']"""

    cache_size = 200_000  # chunk -> ids (and word -> ids) entries kept; cleared when full

    def __init__(self, vocab: list[str], lowercase: bool = True, strip_accents: bool | None = None):
        missing = [s for s in SPECIALS if s not in vocab]
        if missing:
            raise DataError(f"this WordPiece vocabulary lacks the special token(s) {', '.join(missing)}; "
                            f"a BERT vocabulary holds all of {', '.join(SPECIALS)}")
        ids = {t: i for i, t in enumerate(vocab)}
        if len(ids) != len(vocab):
            dup = next(t for t, n in Counter(vocab).items() if n > 1)
            raise DataError(f"token {dup!r} appears twice in this WordPiece vocabulary; each token needs one id")
        self.vocab = list(vocab)
        self.lowercase = lowercase
        self.strip_accents = strip_accents  # None: follow lowercase, like Hugging Face
        self._strip = lowercase if strip_accents is None else strip_accents
        self._ids = ids
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (ids[s] for s in SPECIALS)
        self.special_ids = frozenset(ids[s] for s in SPECIALS)
        # The longest first piece and "##" piece: the greedy search never tries a longer substring.
        self._max_first = max(map(len, vocab))
        self._max_next = max((len(t) - len(PREFIX) for t in vocab if t.startswith(PREFIX)), default=0)
        self._cache: dict[str, list[int]] = {}  # chunk (text between spaces, as written) -> ids
        self._word_cache: dict[str, list[int]] = {}  # word (after the basic tokenizer) -> ids

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def id_to_token(self, i: int) -> str:
        return self.vocab[i]

    def token_to_id(self, token: str) -> int | None:
        return self._ids.get(token)

    # ---------------------------------------------------------------------------- encoding

    def words(self, text: str) -> list[str]:
        """The basic tokenizer's words, before WordPiece."""
        return basic_tokenize(text, self.lowercase, self.strip_accents)

    def encode_word(self, word: str) -> list[int]:
        """Greedy longest-match-first: "unaffable" -> ids of un, ##aff, ##able; [unk_id] if no cover exists."""
        n, vocab = len(word), self._ids
        if n > MAX_WORD_CHARS:
            return [self.unk_id]
        ids, start = [], 0
        while start < n:
            prefix, longest = (PREFIX, self._max_next) if start else ("", self._max_first)
            for end in range(min(n, start + longest), start, -1):
                i = vocab.get(prefix + word[start:end])
                if i is not None:
                    ids.append(i)
                    start = end
                    break
            else:
                return [self.unk_id]  # no piece starts here: the whole word is unknown, as in BERT
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of text, no [CLS]/[SEP]. A literal "[MASK]" in text is plain text ([, mask, ])."""
        cache, words, strip = self._cache, self._word_cache, self._strip
        if len(cache) > self.cache_size or len(words) > self.cache_size:
            cache.clear()
            words.clear()
        ids: list[int] = []
        for c in clean_chunks(text):  # most chunks recur: their ids come from the cache
            t = cache.get(c)
            if t is None:
                t = []
                for w in chunk_words(c, self.lowercase, strip):  # words are cached too: "lord," and "lord."
                    tw = words.get(w)
                    if tw is None:
                        tw = words[w] = self.encode_word(w)
                    t += tw
                cache[c] = t
            ids += t
        return ids

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def tokenize(self, text: str) -> list[str]:
        return [self.vocab[i] for i in self.encode(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ids as Hugging Face decodes it, without [PAD]: a "##" piece is glued to the token before, any
        other token follows a space, except . ? ! , (their cleanup). decode(encode("Hi, bob!")) -> 'hi, bob!'"""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise DataError(f"token id {bad[0]} is not in this vocabulary (0..{self.vocab_size - 1})")
        parts = []
        for t in (self.vocab[i] for i in ids if i != self.pad_id):
            if not parts:
                parts.append(t)  # a first "##" piece keeps its prefix, as in HF
            elif t.startswith(PREFIX):
                parts.append(t[len(PREFIX):])
            else:
                parts.append(t if t[:1] in (".", "?", "!", ",") else " " + t)
        return "".join(parts)

    # ------------------------------------------------------------------------------- files

    def state_dict(self) -> dict:
        return {"kind": "wordpiece", "vocab": list(self.vocab), "lowercase": self.lowercase,
                "strip_accents": self.strip_accents}

    @classmethod
    def from_state_dict(cls, d: dict) -> "WordPiece":
        return cls(d["vocab"], d.get("lowercase", True), d.get("strip_accents"))

    def save(self, folder: str | Path) -> Path:
        """vocab.txt (one token a line, the line number is the id) + tokenizer_config.json, as BertTokenizer
        saves them."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / VOCAB_FILE).write_text("\n".join(self.vocab) + "\n", encoding="utf-8")
        config = {"tokenizer_class": "BertTokenizer", "do_lower_case": self.lowercase,
                  "strip_accents": self.strip_accents, "tokenize_chinese_chars": True, "do_basic_tokenize": True,
                  "unk_token": UNK, "sep_token": SEP, "pad_token": PAD, "cls_token": CLS, "mask_token": MASK}
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
        return folder

    @classmethod
    def from_vocab_file(cls, path: str | Path, lowercase: bool = True,
                        strip_accents: bool | None = None) -> "WordPiece":
        """A vocab.txt of any BERT (e.g. bert-base-chinese's); say whether that model is uncased."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"vocabulary file '{path}' does not exist; "
                            "train one with WordPiece.train(...).save(folder)")
        lines = path.read_text(encoding="utf-8").split("\n")  # not splitlines(): it also cuts at U+2028, \x1c, ...
        if lines and lines[-1] == "":
            lines.pop()
        return cls([t.rstrip("\r") for t in lines], lowercase, strip_accents)

    @classmethod
    def load(cls, folder: str | Path) -> "WordPiece":
        """A folder written by save() or a Hugging Face BERT tokenizer folder (vocab.txt [+ tokenizer_config.json])."""
        folder = Path(folder)
        config = {}
        if (folder / CONFIG_FILE).exists():
            config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        return cls.from_vocab_file(folder / VOCAB_FILE, config.get("do_lower_case", True), config.get("strip_accents"))

    def __repr__(self) -> str:
        return (f"WordPiece(vocab_size={self.vocab_size}, lowercase={self.lowercase}, "
                f"strip_accents={self.strip_accents})")

    # ---------------------------------------------------------------------------- training

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, lowercase: bool = True, min_frequency: int = 2,
              strip_accents: bool | None = None, score: str = "frequency") -> "WordPiece":
        """Specials, the characters seen, then merged pieces: at most vocab_size tokens (see train_vocab)."""
        _check(vocab_size, score)  # before reading any text
        counts = count_words(texts, lowercase, strip_accents)
        return cls(train_vocab(counts, vocab_size, min_frequency, score), lowercase, strip_accents)


# -------------------------------------------------------------------------------- training

def count_words(texts: Iterable[str], lowercase: bool = True, strip_accents: bool | None = None) -> Counter:
    """Word -> count after the basic tokenizer.
    count_words(["the cat, the"]) -> Counter({'the': 2, 'cat': 1, ',': 1})"""
    strip = lowercase if strip_accents is None else strip_accents
    chunks = Counter(clean_chunks("\n".join([texts] if isinstance(texts, str) else texts)))
    counts: Counter = Counter()
    for c, n in chunks.items():  # each distinct chunk once
        for w in chunk_words(c, lowercase, strip):
            counts[w] += n
    return counts


def alphabet(word_counts: dict[str, int], budget: int) -> list[str]:
    """Every character seen, plus its "##" form unless it always stands alone (CJK, punctuation); if more than
    budget, the most frequent ones. alphabet({"ab": 3, "!": 1}, 9) -> ['!', 'a', 'b', '##a', '##b']"""
    freq: Counter = Counter()
    for w, f in word_counts.items():
        freq[w[0]] += f
        for c in w[1:]:
            freq[PREFIX + c] += f
    for c in [c for c in freq if not c.startswith(PREFIX)]:
        freq[c] += 0  # a character seen only inside words still gets its bare form
        if not (is_cjk(c) or is_punctuation(c)):
            freq[PREFIX + c] += 0  # and one seen only first its "##" form: unseen words may need it
    for c in [c for c in freq if c.startswith(PREFIX)]:
        freq[c[len(PREFIX):]] += 0
    keep = sorted(freq, key=lambda t: (-freq[t], t))[:budget]  # the rarest go first (they become [UNK])
    return sorted(t for t in keep if not t.startswith(PREFIX)) + sorted(t for t in keep if t.startswith(PREFIX))


def _check(vocab_size: int, score: str) -> None:
    if score not in SCORES:
        raise ConfigError(f"unknown WordPiece score '{score}'; choose one of: {', '.join(SCORES)}")
    if vocab_size < len(SPECIALS):
        raise ConfigError(f"vocab_size={vocab_size} cannot hold the {len(SPECIALS)} special tokens "
                          f"{', '.join(SPECIALS)}; choose a larger vocab_size")


def train_vocab(word_counts: dict[str, int], vocab_size: int, min_frequency: int = 2,
                score: str = "frequency") -> list[str]:
    """The vocabulary: SPECIALS, alphabet(), then the merged pieces in merge order (see _merges)."""
    _check(vocab_size, score)
    vocab = [*SPECIALS, *alphabet(word_counts, vocab_size - len(SPECIALS))]
    return _merges(word_counts, vocab, vocab_size, min_frequency, score == "likelihood")


def _spell(word_counts: dict[str, int], ids: dict[str, int]) -> list[tuple[list[int], int]]:
    """(piece ids, count) of each word of 2 to MAX_WORD_CHARS characters, all of whose pieces are in ids:
    "cat" -> ids of c, ##a, ##t. Words with a character that the alphabet budget cut are left out, and so are
    longer words: encoding makes them [UNK] whatever the vocabulary."""
    out = []
    for w, f in word_counts.items():
        if not 1 < len(w) <= MAX_WORD_CHARS:
            continue
        pieces = [w[0], *(PREFIX + c for c in w[1:])]
        if all(p in ids for p in pieces):
            out.append(([ids[p] for p in pieces], f))
    return out


def train_vocab_naive(word_counts: dict[str, int], vocab_size: int, min_frequency: int = 2,
                      score: str = "frequency") -> list[str]:
    """train_vocab by the textbook loop: recount every pair of every word, merge the best, repeat. Same result."""
    _check(vocab_size, score)
    vocab = [*SPECIALS, *alphabet(word_counts, vocab_size - len(SPECIALS))]
    ids = {t: i for i, t in enumerate(vocab)}
    words = _spell(word_counts, ids)
    while len(vocab) < vocab_size:
        pairs: Counter = Counter()
        pieces: Counter = Counter()
        for w, f in words:
            for i in w:
                pieces[i] += f
            for p in zip(w, w[1:]):
                pairs[p] += f
        candidates = [p for p, c in pairs.items() if c >= min_frequency]
        if not candidates:
            break
        if score == "likelihood":
            best = min(candidates, key=lambda p: (-pairs[p] / (pieces[p[0]] * pieces[p[1]]), p))
        else:
            best = min(candidates, key=lambda p: (-pairs[p], p))  # most frequent; ties -> smallest pair
        new = vocab[best[0]] + vocab[best[1]][len(PREFIX):]
        if new not in ids:
            ids[new] = len(vocab)
            vocab.append(new)
        words = [(merge(w, best, ids[new]), f) for w, f in words]
    return vocab


def _merges(word_counts: dict[str, int], vocab: list[str], vocab_size: int, min_frequency: int,
            likelihood: bool) -> list[str]:
    """Add merged pieces to vocab until it holds vocab_size tokens or no pair occurs min_frequency times.

    Words are spelled as strings with one character chr(id) per piece, so bpe._merge_in_word can update
    them and the pair counts incrementally (only words holding the merged pair are touched). A heap holds
    (-score, pair) entries. A pair whose score rises gets a new entry at once: a new or more frequent pair,
    and with the likelihood score every pair of the merge's two parts (their counts fell). So every live pair
    always has an entry at least as high as its score, and the first popped entry that equals its pair's
    current score is the best pair (ties: the smallest (left id, right id)). Entries that are too high
    (the score fell) are pushed again at the current score when popped."""
    ids = {t: i for i, t in enumerate(vocab)}
    words = _spell(word_counts, ids)
    texts = ["".join(map(chr, w)) for w, _ in words]
    freqs = [f for _, f in words]
    del words
    piece_count: dict[int, int] = defaultdict(int)
    counts: dict[tuple[int, int], int] = defaultdict(int)  # pair -> count, over the words weighted by frequency
    where: dict[tuple[int, int], set[int]] = defaultdict(set)  # pair -> words that (may) hold it
    pairs_of: dict[int, set[tuple[int, int]]] = defaultdict(set)  # piece -> live pairs it is part of
    for i, (s, f) in enumerate(zip(texts, freqs)):
        for c in s:
            piece_count[ord(c)] += f
        for a, b in zip(s, s[1:]):
            p = (ord(a), ord(b))
            counts[p] += f
            where[p].add(i)
    if likelihood:
        for p in counts:
            pairs_of[p[0]].add(p)
            pairs_of[p[1]].add(p)

    def entry(p):  # heap entries (-score, pair): the smallest is the best pair, ties -> the smallest pair
        if likelihood:
            return (-counts[p] / (piece_count[p[0]] * piece_count[p[1]]), p)
        return (-counts[p], p)

    heap = [entry(p) for p, c in counts.items() if c >= min_frequency]
    heapq.heapify(heap)
    while len(vocab) < vocab_size and heap:
        neg, pair = heapq.heappop(heap)
        if counts.get(pair, 0) < min_frequency:
            continue  # gone, or too rare now
        e = entry(pair)
        if e[0] != neg:
            if e[0] > neg:  # the entry was too high: the pair's score fell; queue it at its true score
                heapq.heappush(heap, e)
            continue
        a, b = pair
        new = vocab[a] + vocab[b][len(PREFIX):]  # un + ##aff -> unaff; ##aff + ##able -> ##affable
        idx = ids.get(new)
        if idx is None:
            idx = ids[new] = len(vocab)
            vocab.append(new)
        delta: dict[tuple[int, int], int] = defaultdict(int)
        merged = 0
        for i in where.pop(pair):
            s = texts[i]
            texts[i] = _merge_in_word(s, pair, idx, freqs[i], delta, where, i)
            merged += freqs[i] * (len(s) - len(texts[i]))
        piece_count[a] -= merged
        piece_count[b] -= merged
        piece_count[idx] += merged
        for p, d in delta.items():  # pairs that fell are pushed again when popped, pairs that rose now
            if not d:
                continue
            c = counts[p] = counts[p] + d
            if c <= 0:
                del counts[p]
                if likelihood:
                    pairs_of[p[0]].discard(p)
                    pairs_of[p[1]].discard(p)
            elif d > 0:
                if likelihood:
                    pairs_of[p[0]].add(p)
                    pairs_of[p[1]].add(p)
                if c >= min_frequency:
                    heapq.heappush(heap, entry(p))
        if likelihood:  # a and b lost count, so the score of each of their pairs rose
            for p in pairs_of[a] | pairs_of[b]:
                if counts[p] >= min_frequency:
                    heapq.heappush(heap, entry(p))
    return vocab
