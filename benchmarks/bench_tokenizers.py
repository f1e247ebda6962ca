"""BPE training time (ours vs the naive loop vs Hugging Face `tokenizers`) and encode MB/s (ours vs tiktoken);
WordPiece training time and encode MB/s (ours vs tokenizers' and transformers' BERT tokenizers).

    .venv/bin/python benchmarks/bench_tokenizers.py              # ~6 min on 2 cores
    .venv/bin/python benchmarks/bench_tokenizers.py --quick      # smaller naive runs, ~2 min
    .venv/bin/python benchmarks/bench_tokenizers.py --wordpiece  # only WordPiece, ~1 min

Training text: the first 1,000,000 characters of `shakespeare` (1.0 MB) and of the Chinese text
(chinese-reviews + hsk, ~2.9 MB of UTF-8). The naive loop recounts every pair each merge, so it is
timed at equal merges in two ways, never extrapolated: the first --naive-merges merges on the full
1 MB, and the whole 4k vocabulary on the first --naive-chars characters. Encoding is single-threaded
on held-out text the tokenizer never saw; ours is timed with a cold and a warm chunk cache. Long pieces
(one pre-tokenized chunk of ~12k bytes: Chinese without punctuation, a number, spaces, "abab...", random
bytes) are timed apart, because a merge loop that rescans the piece per merge is quadratic in its length.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

import regex

from llmpath.data import load_text
from llmpath.tokenizers import Tokenizer, bpe_encode, train_fast, train_naive
from llmpath.tokenizers.bpe import pretokenize, train_from_counts
from llmpath.tokenizers.compare import chinese_text, compare_with_hf, train_hf


def timed(fn, repeats: int = 1):
    """(median seconds, last result)."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def training(text: str, label: str, vocab: int, naive_merges: int, naive_chars: int, repeats: int) -> None:
    mb = len(text.encode("utf-8")) / 1e6
    print(f"\n## training, {label}: {len(text):,} chars ({mb:.2f} MB), vocab {vocab} (no special tokens)")
    t_ours, merges = timed(lambda: train_fast(text, vocab), repeats)
    t_pre, counts = timed(lambda: pretokenize(text), repeats)
    t_hf, _ = timed(lambda: train_hf(text, vocab, special_tokens=()), repeats)
    print(f"| trainer | merges | seconds | vs ours |\n|---|---|---|---|")
    print(f"| ours (incremental + heap) | {len(merges)} | {t_ours:.2f} (regex pre-tokenization {t_pre:.2f}) | 1.00x |")
    print(f"| HF tokenizers (Rust, {os.cpu_count()} threads) | {vocab - 256} | {t_hf:.2f} | {t_hf / t_ours:.2f}x |")
    # naive at equal merges, 1: the first naive_merges merges on the whole text
    t_n1, m1 = timed(lambda: train_naive(text, 256 + naive_merges))
    t_o1, o1 = timed(lambda: train_fast(text, 256 + naive_merges), repeats)
    assert m1 == o1, "naive and fast trainers disagree"
    print(f"| naive, same text, first {naive_merges} merges | {naive_merges} | {t_n1:.2f} vs ours {t_o1:.3f} | "
          f"**naive / ours = {t_n1 / t_o1:.0f}x** |")
    # naive at equal merges, 2: the whole vocabulary on a smaller text
    small = text[:naive_chars]
    t_n2, m2 = timed(lambda: train_naive(small, vocab))
    t_o2, o2 = timed(lambda: train_fast(small, vocab), repeats)
    assert m2 == o2, "naive and fast trainers disagree"
    print(f"| naive, first {naive_chars:,} chars, all {len(m2)} merges | {len(m2)} | {t_n2:.2f} vs ours {t_o2:.3f} | "
          f"**naive / ours = {t_n2 / t_o2:.0f}x** |")
    # where our time goes: merging alone, from the chunk counts
    t_m, _ = timed(lambda: train_from_counts(counts, vocab - 256), repeats)
    print(f"(ours without pre-tokenization: {t_m:.2f} s for {vocab - 256} merges, {1e3 * t_m / (vocab - 256):.2f} ms/merge)")


def encoding(tok: Tokenizer, held: str, label: str, repeats: int) -> None:
    mb = len(held.encode("utf-8")) / 1e6
    enc = tok.to_tiktoken()
    t_cold, ids = timed(lambda: Tokenizer(tok.mergeable_ranks, tok.pattern, tok.special_tokens).encode(held), repeats)
    t_warm, _ = timed(lambda: tok.encode(held), repeats + 1)
    t_tik, ref = timed(lambda: enc.encode(held), repeats)
    t_ord, _ = timed(lambda: enc.encode_ordinary(held), repeats)
    assert ids == ref, "ours and tiktoken disagree"
    print(f"\n## encode, {label}: {mb:.2f} MB held out, {len(ids):,} tokens (identical ids)")
    print("| encoder | MB/s | tiktoken faster by |\n|---|---|---|")
    print(f"| ours, cold cache | {mb / t_cold:.1f} | {t_cold / t_tik:.1f}x |")
    print(f"| ours, warm cache | {mb / t_warm:.1f} | {t_warm / t_tik:.1f}x |")
    print(f"| tiktoken encode (1 thread) | {mb / t_tik:.1f} | 1.0x |")
    print(f"| tiktoken encode_ordinary | {mb / t_ord:.1f} | - |")
    t_re, _ = timed(lambda: regex.findall(tok.pat_str, held), repeats)
    print(f"(the `regex` pre-tokenization alone: {mb / t_re:.1f} MB/s)")


def long_pieces(tok_en: Tokenizer, tok_zh: Tokenizer, zh_held: str, repeats: int) -> None:
    """Each text is one chunk for the GPT-2 regex. The Chinese vocabulary holds digit and space merges ('00', '200',
    '    '), the English one 'ab': merges happen all along each piece."""
    rng = random.Random(0)
    han = "".join(regex.findall(r"\p{Han}+", zh_held))[:4000]  # 12,000 bytes of UTF-8
    cases = [("Chinese, no punctuation", tok_zh, han),
             ("a 5,000-digit number", tok_zh, "".join(rng.choice("0123456789") for _ in range(5000))),
             ("12,000 spaces", tok_zh, " " * 12_000),
             ('"ab" x 6,000', tok_en, "ab" * 6000)]
    print("\n## encode, one long piece (cold cache; ids asserted equal to tiktoken's)")
    print("| piece | bytes | ours ms | tiktoken ms | ours / tiktoken |\n|---|---|---|---|---|")
    for label, tok, text in cases:
        enc = tok.to_tiktoken()
        t_ours, ids = timed(lambda: Tokenizer(tok.mergeable_ranks, tok.pattern).encode_ordinary(text), repeats)
        t_tik, ref = timed(lambda: enc.encode_ordinary(text), repeats)
        assert ids == ref, f"ours and tiktoken disagree on {label}"
        print(f"| {label} | {len(text.encode('utf-8')):,} | {1e3 * t_ours:.1f} | {1e3 * t_tik:.2f} | "
              f"{t_ours / t_tik:.0f}x |")
    # random bytes are no text: both sides merge them as one piece, without the regex
    piece = bytes(rng.randrange(256) for _ in range(12_000))
    enc = tok_zh.to_tiktoken()
    t_ours, ids = timed(lambda: bpe_encode(tok_zh.mergeable_ranks, piece), repeats)
    t_tik, ref = timed(lambda: enc._encode_single_piece(piece), repeats)
    assert ids == ref, "ours and tiktoken disagree on random bytes"
    print(f"| random bytes (bpe_encode vs _encode_single_piece) | {len(piece):,} | {1e3 * t_ours:.1f} | "
          f"{1e3 * t_tik:.2f} | {t_ours / t_tik:.0f}x |")


def compression(en: str, en_held: str, zh: str, zh_held: str, sizes: list[int]) -> None:
    print("\n## compression on held-out text, ours vs HF tokenizers trained on the same text")
    print("| text | vocab | ours tokens/char | HF tokens/char | shared tokens | overlap (Jaccard) |\n|---|---|---|---|---|---|")
    for label, text, held in [("shakespeare", en, en_held), ("中文", zh, zh_held)]:
        for v in sizes:
            r = compare_with_hf(text, held, v)
            print(f"| {label} | {v} | {r['ours_tpc']:.3f} | {r['hf_tpc']:.3f} | {r['shared']:,} / {r['ours_n']:,} | "
                  f"{r['overlap']:.1%} |")


# ------------------------------------------------------------------------------ WordPiece

def wordpiece_text(chars: int) -> tuple[list[str], list[str]]:
    """(training lines, held-out lines): the first `chars` characters of shakespeare, of the tweets and of the
    Chinese text (~5 MB of UTF-8 at 1M each), and the next chars // 2 of each."""
    from llmpath.data import load_classification

    sources = [load_text("shakespeare"), "\n".join(load_classification("tweets").texts), chinese_text()]
    train = [line for s in sources for line in s[:chars].split("\n")]
    held = [line for s in sources for line in s[chars:chars + chars // 2].split("\n") if line.strip()]
    return train, held


def wordpiece(chars: int, vocab: int, repeats: int, legacy_lines: int) -> None:
    """Training time (ours, both scores, vs HF tokenizers' WordPieceTrainer) and encoding speed against
    tokenizers.BertWordPieceTokenizer (Rust), transformers.BertTokenizer (Rust since transformers 5) and
    transformers' pure-Python BertTokenizerLegacy, on held-out lines; all ids asserted equal."""
    import tokenizers
    import transformers
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    from llmpath.tokenizers import WordPiece
    from llmpath.tokenizers.wordpiece import SPECIALS, count_words, train_vocab

    train, held = wordpiece_text(chars)
    mb, held_mb = (sum(len(t.encode("utf-8")) + 1 for t in x) / 1e6 for x in (train, held))
    print(f"\n## WordPiece training: {mb:.2f} MB ({len(train):,} lines: shakespeare, tweets, Chinese), vocab {vocab}")
    t_count, counts = timed(lambda: count_words(train), repeats)
    t_ours, tok = timed(lambda: WordPiece.train(train, vocab), repeats)
    t_lik, lik = timed(lambda: train_vocab(counts, vocab, score="likelihood"), repeats)

    def hf_train():
        t = tokenizers.BertWordPieceTokenizer(lowercase=True)
        t.train_from_iterator(train, vocab_size=vocab, min_frequency=2, special_tokens=list(SPECIALS),
                              limit_alphabet=vocab, show_progress=False)
        return t

    t_hf, hf_trained = timed(hf_train, repeats)
    threads = 1 if os.environ.get("TOKENIZERS_PARALLELISM", "").lower() in ("false", "0") else os.cpu_count()
    held_text = "\n".join(held)
    tpc = lambda ids: len(ids) / len(held_text)  # noqa: E731 - tokens per character of the held-out text
    hf_vocab = set(hf_trained.get_vocab())
    print("| trainer | seconds | held-out tokens/char | shared tokens with ours |\n|---|---|---|---|")
    print(f"| ours, frequency (default) | {t_ours:.2f} (word counting {t_count:.2f}) | "
          f"{tpc(tok.encode(held_text)):.3f} | - |")
    print(f"| ours, likelihood score (from the counts) | {t_lik:.2f} | {tpc(WordPiece(lik).encode(held_text)):.3f} | "
          f"{len(set(lik) & set(tok.vocab)):,} / {len(lik):,} |")
    print(f"| HF tokenizers WordPieceTrainer (Rust, {threads} thread(s)) | {t_hf:.2f} | "
          f"{tpc(hf_trained.encode(held_text, add_special_tokens=False).ids):.3f} | "
          f"{len(hf_vocab & set(tok.vocab)):,} / {len(hf_vocab):,} |")

    import tempfile
    with tempfile.TemporaryDirectory() as d:
        tok.save(d)
        rust = tokenizers.BertWordPieceTokenizer(f"{d}/vocab.txt", lowercase=True)
        hf = transformers.BertTokenizer.from_pretrained(d)
        legacy = BertTokenizerLegacy(f"{d}/vocab.txt", do_lower_case=True)
    rust._tokenizer.encode_special_tokens = True  # "[MASK]" in text is text, as in ours
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # encode_batch on one thread, like ours
    t_cold, ids = timed(lambda: WordPiece(tok.vocab).encode_batch(held), repeats)
    t_warm, _ = timed(lambda: tok.encode_batch(held), repeats + 1)
    t_rust, ref = timed(lambda: [e.ids for e in rust.encode_batch(held, add_special_tokens=False)], repeats)
    t_tf, ref_tf = timed(lambda: hf(held, add_special_tokens=False, split_special_tokens=True)["input_ids"], repeats)
    assert ids == ref == ref_tf, "ours and Hugging Face disagree"
    few = held[:legacy_lines]
    few_mb = sum(len(t.encode("utf-8")) + 1 for t in few) / 1e6
    t_leg, ref_leg = timed(lambda: [legacy.encode(t, add_special_tokens=False) for t in few])
    t_few, ours_few = timed(lambda: WordPiece(tok.vocab).encode_batch(few))
    same = sum(a == b for a, b in zip(ours_few, ref_leg))
    print(f"\n## WordPiece encode: {held_mb:.2f} MB held out, {len(held):,} lines, {sum(map(len, ids)):,} tokens "
          "(identical ids)")
    print("| encoder | MB/s | time / ours (cold) |\n|---|---|---|")
    print(f"| ours, cold cache | {held_mb / t_cold:.1f} | 1.00x |")
    print(f"| ours, warm cache | {held_mb / t_warm:.1f} | {t_warm / t_cold:.2f}x |")
    print(f"| tokenizers.BertWordPieceTokenizer.encode_batch (Rust, 1 thread) | {held_mb / t_rust:.1f} | "
          f"{t_rust / t_cold:.2f}x |")
    print(f"| transformers.BertTokenizer (Rust backend, 1 thread) | {held_mb / t_tf:.1f} | {t_tf / t_cold:.2f}x |")
    print(f"| transformers BertTokenizerLegacy (pure Python), first {len(few):,} lines ({few_mb:.2f} MB) | "
          f"{few_mb / t_leg:.2f} | {t_leg / t_few:.1f}x (ours cold on the same lines) |")
    print(f"(the legacy tokenizer gives our ids on {same:,} of {len(few):,} lines; it NFC-normalizes and drops "
          "unassigned code points, which the Rust one and ours do not)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chars", type=int, default=1_000_000, help="training characters (1M = ~1 MB of Shakespeare)")
    ap.add_argument("--vocab", type=int, default=4096, help="vocabulary size to train")
    ap.add_argument("--naive-merges", type=int, default=100, help="naive on the full text: this many merges")
    ap.add_argument("--naive-chars", type=int, default=50_000, help="naive at the full vocabulary: this many chars")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of the fast paths (median)")
    ap.add_argument("--quick", action="store_true", help="naive runs 20 merges / 30k chars; 1 repeat")
    ap.add_argument("--wordpiece", action="store_true", help="only the WordPiece section")
    ap.add_argument("--wp-chars", type=int, default=1_000_000,
                    help="WordPiece training characters from each of shakespeare, tweets, Chinese (1M each: ~5 MB)")
    ap.add_argument("--wp-vocab", type=int, default=8000, help="WordPiece vocabulary size")
    ap.add_argument("--legacy-lines", type=int, default=3000,
                    help="held-out lines for the slow pure-Python BertTokenizer")
    args = ap.parse_args()
    if args.quick:
        args.naive_merges, args.naive_chars, args.repeats = 20, 30_000, 1
    if args.wordpiece:
        wordpiece(args.wp_chars, args.wp_vocab, args.repeats, args.legacy_lines)
        return
    full = load_text("shakespeare")
    en, en_held = full[:args.chars], full[args.chars:args.chars + 2_000_000]
    zh_all = chinese_text()
    zh, zh_held = zh_all[:args.chars], zh_all[args.chars:args.chars + 300_000]
    print(f"byte-level BPE benchmark; GPT-2 regex; {os.cpu_count()} CPU cores")
    training(en, "shakespeare", args.vocab, args.naive_merges, args.naive_chars, args.repeats)
    training(zh, "Chinese", args.vocab, args.naive_merges // 2, args.naive_chars // 4, args.repeats)
    tok_en, tok_zh = Tokenizer.train(en, args.vocab), Tokenizer.train(zh, args.vocab)
    encoding(tok_en, en_held, "shakespeare", args.repeats)
    encoding(tok_zh, zh_held, "Chinese", args.repeats)
    long_pieces(tok_en, tok_zh, zh_held, args.repeats)
    compression(en, en_held[:500_000], zh, zh_held, [1024, 4096, 16384])
    wordpiece(args.wp_chars, args.wp_vocab, args.repeats, args.legacy_lines)


if __name__ == "__main__":
    main()
