"""Byte-level BPE training: the naive teaching loop and the fast incremental one, which learn the same merges.

    merges = train_naive("aaabdaaabac", 259)   # [((97, 97), 256), ((97, 98), 257), ((256, 257), 258)]
    merges = train_fast(text, 4096)            # same list on any text, far faster

Text is first cut into chunks by a regex (GPT-2 or GPT-4 pattern), so merges never cross a chunk
boundary; each chunk is a list of byte values 0..255. A merge is ((left id, right id), new id).

Tie-breaking rule (both trainers): the most frequent pair wins; among equally frequent pairs the
smallest (left id, right id) wins. Pairs are counted with overlaps ("aaa" holds (a, a) twice) and a
merge replaces left to right. When a pair's bytes already form a token (two routes to the same
string), the merge reuses that token's id and the vocabulary does not grow, as Hugging Face does.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict

import regex

from llmpath.config import ConfigError

# OpenAI's patterns, as tiktoken writes them (r50k/gpt2 and cl100k/gpt-4).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
GPT4_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
                r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")
# GPT-2's, with every digit its own chunk (as Llama's and Qwen's tokenizers split numbers): "1234" is four tokens,
# so a number's digits line up with their places, which a small model learning arithmetic needs.
DIGITS_PATTERN = GPT2_PATTERN.replace(r"| ?\p{N}++|", r"|\p{N}|")
PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN, "digits": DIGITS_PATTERN}

Merge = tuple[tuple[int, int], int]


def pattern_str(pattern: str) -> str:
    """A pattern name ('gpt2', 'gpt4') or a regex string -> the regex string."""
    return PATTERNS.get(pattern, pattern)


def pretokenize(text: str, pattern: str = "gpt2") -> Counter:
    """Chunk -> count. pretokenize("the cat the") -> Counter({' the': 1, 'the': 1, ' cat': 1})"""
    return Counter(regex.findall(pattern_str(pattern), text))


def n_merges_for(vocab_size: int, n_special: int = 0) -> int:
    n = vocab_size - 256 - n_special
    if n < 0:
        raise ConfigError(f"vocab_size={vocab_size} is smaller than 256 bytes + {n_special} special tokens; "
                         f"choose at least {256 + n_special}")
    return n


# --------------------------------------------------------------------------- teaching version

def get_stats(ids: list[int], counts: dict | None = None) -> dict:
    """Counts of adjacent pairs. get_stats([1, 2, 3, 1, 2]) -> {(1, 2): 2, (2, 3): 1, (3, 1): 1}"""
    counts = {} if counts is None else counts
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def merge(ids: list[int], pair: tuple[int, int], idx: int) -> list[int]:
    """Replace each pair, left to right, by idx. merge([1, 2, 3, 1, 2], (1, 2), 4) -> [4, 3, 4]"""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(idx)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def train_naive(text: str, vocab_size: int, pattern: str = "gpt2", n_special: int = 0) -> list[Merge]:
    """The textbook loop: recount every pair of every chunk, merge the best one, repeat. O(merges x text)."""
    chunks = [list(c.encode("utf-8")) for c in regex.findall(pattern_str(pattern), text)]
    vocab = {i: bytes([i]) for i in range(256)}
    ids_of = {b: i for i, b in vocab.items()}
    merges: list[Merge] = []
    while len(vocab) < 256 + n_merges_for(vocab_size, n_special):
        stats: dict = {}
        for ids in chunks:
            get_stats(ids, stats)
        if not stats:
            break  # every chunk is a single token: nothing left to merge
        pair = min(stats, key=lambda p: (-stats[p], p))  # most frequent; ties -> smallest pair
        new = vocab[pair[0]] + vocab[pair[1]]
        idx = ids_of.setdefault(new, len(vocab))
        vocab[idx] = new
        chunks = [merge(ids, pair, idx) for ids in chunks]
        merges.append((pair, idx))
    return merges


# ------------------------------------------------------------------------------ fast version

def train_fast(text: str, vocab_size: int, pattern: str = "gpt2", n_special: int = 0) -> list[Merge]:
    """Same merges as train_naive. Pairs are counted once over the unique chunks (weighted by how often
    each occurs); after a merge only the chunks holding the merged pair are updated, and a heap with
    lazy invalidation finds the next best pair. Cost ~ O(total length of the chunks each merge touches)."""
    return train_from_counts(pretokenize(text, pattern), n_merges_for(vocab_size, n_special))


def train_from_counts(chunk_counts: dict[str, int], n_merges: int) -> list[Merge]:
    words = [list(c.encode("utf-8")) for c in chunk_counts]
    freqs = list(chunk_counts.values())
    counts: dict[tuple[int, int], int] = defaultdict(int)  # pair -> weighted count
    where: dict[tuple[int, int], set[int]] = defaultdict(set)  # pair -> words that (may) hold it
    for i, w in enumerate(words):
        for pair in zip(w, w[1:]):
            counts[pair] += freqs[i]
            where[pair].add(i)
    texts = ["".join(map(chr, w)) for w in words]  # token ids as characters: C-speed find and replace
    del words
    # Entries are (-count, pair): the smallest is the most frequent pair, ties -> the smallest pair.
    # An entry is stale when its count differs from counts[pair]; a fresh one was pushed on every change.
    heap = [(-c, p) for p, c in counts.items()]
    heapq.heapify(heap)
    vocab = [bytes([i]) for i in range(256)]
    ids_of = {b: i for i, b in enumerate(vocab)}
    merges: list[Merge] = []
    while len(vocab) < 256 + n_merges and heap:
        neg, pair = heapq.heappop(heap)
        if counts.get(pair, 0) != -neg:
            continue  # stale entry
        new = vocab[pair[0]] + vocab[pair[1]]
        idx = ids_of.get(new)
        if idx is None:
            idx = ids_of[new] = len(vocab)
            vocab.append(new)
        merges.append((pair, idx))
        delta: dict[tuple[int, int], int] = defaultdict(int)
        for i in where.pop(pair):
            texts[i] = _merge_in_word(texts[i], pair, idx, freqs[i], delta, where, i)
        for p, d in delta.items():
            if d:
                c = counts[p] = counts[p] + d
                if c > 0:
                    heapq.heappush(heap, (-c, p))
                else:
                    del counts[p]
    return merges


def _merge_in_word(s: str, pair: tuple[int, int], idx: int, f: int, delta: dict, where: dict, wi: int) -> str:
    """merge() on a word spelled as a string (one character chr(id) per token, so str.find and str.replace
    do the scanning in C), adding to delta only the pair counts that change, each weighted by f:
    x a b y -> x X y loses (x, a), (a, b), (b, y) and gains (x, X), (X, y). In back-to-back matches
    (a b a b -> X X) the left neighbour of the second is the X just made, as merge() sees it."""
    a, b = pair
    ab = chr(a) + chr(b)
    p = s.find(ab)
    if p < 0:
        return s  # this word no longer holds the pair (an earlier merge took it)
    last_end = -1
    while p >= 0:
        delta[pair] -= f
        if p > 0:
            x = idx if p == last_end else ord(s[p - 1])
            delta[x, a] -= f
            delta[x, idx] += f
            where[x, idx].add(wi)
        if p + 2 < len(s):
            y = ord(s[p + 2])
            delta[b, y] -= f
            delta[idx, y] += f
            where[idx, y].add(wi)
        last_end = p + 2
        p = s.find(ab, last_end)
    return s.replace(ab, chr(idx))  # non-overlapping, left to right: the same cut as merge()


def ranks_from_merges(merges: list[Merge]) -> dict[bytes, int]:
    """tiktoken's mergeable_ranks of a merge list: byte b has rank b, each new token its id."""
    vocab = {i: bytes([i]) for i in range(256)}
    for (a, b), idx in merges:
        vocab[idx] = vocab[a] + vocab[b]
    return {tok: i for i, tok in vocab.items()}


# ------------------------------------------------------------------------------ encoding a chunk

def bpe_parts(ranks: dict[bytes, int], piece: bytes, max_rank: int | None = None) -> list[bytes]:
    """Merge the adjacent pair whose bytes have the lowest rank (leftmost on ties), again and again, until
    no adjacent pair is a token (of rank < max_rank, when given): b"hello" -> [b'hell', b'o'] if b'hello' is no token."""
    parts = [bytes([b]) for b in piece]
    while True:
        best = None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and (max_rank is None or r < max_rank) and (best is None or r < best[0]):
                best = (r, i)
        if best is None:
            return parts
        i = best[1]
        parts[i:i + 2] = [parts[i] + parts[i + 1]]


def bpe_encode_naive(ranks: dict[bytes, int], piece: bytes) -> list[int]:
    """tiktoken's rule, readable: a piece that is itself a token is taken whole; otherwise bpe_parts."""
    if piece in ranks:
        return [ranks[piece]]
    return [ranks[p] for p in bpe_parts(ranks, piece)]


def bpe_encode(ranks: dict[bytes, int], piece: bytes) -> list[int]:
    """Same result as bpe_encode_naive in O(n log n) for a piece of n bytes (the naive loop is O(n^2)):
    a piece that is a token is taken whole, any other goes to _merge_heap."""
    tok = ranks.get(piece)
    if tok is not None:
        return [tok]
    return _merge_heap(ranks, piece)


def _merge_heap(ranks: dict[bytes, int], piece: bytes) -> list[int]:
    """bpe_parts' merges, in the same order, in O(n log n): the parts are a linked list (by start byte) and a heap holds
    (rank, start) of each adjacent pair, so the smallest entry is the lowest rank, leftmost on ties.
    A merge changes only the pairs on its left and right: their new ranks are pushed and the old entries
    stay in the heap, skipped when popped (stale: that start is gone or its pair has another rank now)."""
    n = len(piece)
    end = list(range(1, n + 1))  # the part starting at byte i is piece[i:end[i]]
    prev = list(range(-1, n - 1))  # start of the part before it; -1 for the first
    rank_at = [ranks.get(piece[i:i + 2]) for i in range(n - 1)] + [None]  # rank of (part at i, next part)
    heap = [(r, i) for i, r in enumerate(rank_at) if r is not None]
    heapq.heapify(heap)
    while heap:
        r, i = heapq.heappop(heap)
        if rank_at[i] != r:
            continue  # stale entry
        j = end[i]  # the right part, absorbed into part i
        k = end[i] = end[j]  # start of the part after the merged one (n: none)
        rank_at[j] = None  # j starts no part any more: its entries are stale
        if k < n:
            prev[k] = i
            r = rank_at[i] = ranks.get(piece[i:end[k]])
            if r is not None:
                heapq.heappush(heap, (r, i))
        else:
            rank_at[i] = None
        h = prev[i]
        if h >= 0:
            r = rank_at[h] = ranks.get(piece[h:k])
            if r is not None:
                heapq.heappush(heap, (r, h))
    ids, i = [], 0
    while i < n:
        ids.append(ranks[piece[i:end[i]]])
        i = end[i]
    return ids
