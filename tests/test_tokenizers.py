"""Byte-level BPE: naive == fast training, our encode == tiktoken's with our ranks, round trips, file forms, CLI."""

from __future__ import annotations

import json
import random

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from llmpath.cli import main
from llmpath.data import load_text
from llmpath.tokenizers import (
    CHAT_TOKENS,
    ENDOFTEXT,
    SpecialTokenError,
    Tokenizer,
    bpe_encode,
    bpe_encode_naive,
    from_hf_files,
    from_state_dict,
    get_stats,
    load,
    merge,
    save,
    train_fast,
    train_gpt_tokenizer,
    train_naive,
)
from llmpath.tokenizers.bpe import GPT2_PATTERN
from llmpath.tokenizers.compare import chinese_text, same_as_tiktoken
from llmpath.tokenizers.files import bytes_to_unicode, recover_merges

tiktoken = pytest.importorskip("tiktoken")

MIXED = "Hello world! 你好，世界。🙂🚀 naïve café ‘quotes’ \t\n\n  12345 x\u200by  \r\n"


@pytest.fixture(scope="module")
def english():
    return load_text("shakespeare")


@pytest.fixture(scope="module")
def chinese():
    return chinese_text()


@pytest.fixture(scope="module")
def tok_en(english):
    return Tokenizer.train(english[:200_000], 1024)


@pytest.fixture(scope="module")
def enc_en(tok_en):
    return tok_en.to_tiktoken()


@pytest.fixture(scope="module")
def tok_long(chinese):
    """A vocabulary with merges inside long runs of Chinese, digits, spaces and "ab" (whose runs are all ties)."""
    rng = random.Random(0)
    digits = " ".join(str(rng.randrange(10 ** rng.randint(1, 30))) for _ in range(3000))
    runs = "x".join(" " * rng.randint(1, 40) + "ab" * rng.randint(1, 40) for _ in range(1000))
    return Tokenizer.train(chinese[:30_000] + digits + runs, 1500)


def first_tokens(tok: Tokenizer, vocab_size: int) -> Tokenizer:
    """tok cut to a smaller vocab_size: its first tokens and the same specials, as Tokenizer.train would give."""
    n = vocab_size - len(tok.special_tokens)
    ranks = {t: r for t, r in tok.mergeable_ranks.items() if r < n}
    return Tokenizer(ranks, tok.pattern, {s: n + k for k, s in enumerate(tok.special_tokens)})


@pytest.fixture(scope="module")
def trained(english, chinese):
    """(lang, pattern) -> the largest vocabulary the tiktoken tests use; smaller ones are first_tokens of it."""
    cache = {}

    def get(lang: str, pattern: str) -> Tokenizer:
        if (lang, pattern) not in cache:
            text = english[:300_000] if lang == "en" else chinese[:100_000]
            cache[lang, pattern] = Tokenizer.train(text, 4096 if lang == "en" else 8000, pattern)
        return cache[lang, pattern]

    return get


def test_helpers_docstring_examples():
    assert get_stats([1, 2, 3, 1, 2]) == {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    assert merge([1, 2, 3, 1, 2], (1, 2), 4) == [4, 3, 4]
    assert get_stats([7, 7, 7]) == {(7, 7): 2}  # overlapping pairs both count
    assert merge([7, 7, 7], (7, 7), 9) == [9, 7]  # left to right
    assert train_naive("aaabdaaabac", 259) == [((97, 97), 256), ((97, 98), 257), ((256, 257), 258)]


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
@pytest.mark.parametrize("lang", ["en", "zh"])
def test_naive_and_fast_training_learn_the_same_merges(pattern, lang, english, chinese):
    text = english[:12_000] if lang == "en" else chinese[:6_000]
    naive = train_naive(text, 256 + 120, pattern)
    assert len(naive) == 120
    assert train_fast(text, 256 + 120, pattern) == naive


def test_fast_training_stops_when_nothing_is_left_to_merge():
    assert train_fast("ab ab", 1000) == train_naive("ab ab", 1000) == [((97, 98), 256), ((32, 256), 257)]


def test_tie_break_is_the_smallest_pair():
    # chunks ab , cd , ab , cd: "ab" and "cd" both occur twice; (97, 98) < (99, 100) wins, then (99, 100)
    assert [p for p, _ in train_fast("ab,cd,ab,cd", 258)] == [(97, 98), (99, 100)]
    assert [p for p, _ in train_naive("ab,cd,ab,cd", 258)] == [(97, 98), (99, 100)]


def test_fast_and_naive_chunk_encoders_agree(tok_en, chinese):
    for chunk in tok_en._pat.findall(MIXED + chinese[:3000] + " disposition remembrance"):
        b = chunk.encode()
        assert bpe_encode(tok_en.mergeable_ranks, b) == bpe_encode_naive(tok_en.mergeable_ranks, b)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fast_and_naive_chunk_encoders_agree_on_runs_of_tokens(tok_long, data):
    """Pieces glued from a few bytes and the vocabulary's merged tokens: many merges, many equal-rank pairs
    ("000" holds the pair (0, 0) twice: the left one merges first)."""
    merged = [t for t, r in tok_long.mergeable_ranks.items() if r >= 256]
    parts = st.one_of(st.sampled_from([b"a", b"b", b" ", b"0", b"1", "你".encode(), "好".encode()]),
                      st.sampled_from(merged))
    piece = b"".join(data.draw(st.lists(parts, max_size=60)))
    ids = bpe_encode(tok_long.mergeable_ranks, piece)
    assert ids == bpe_encode_naive(tok_long.mergeable_ranks, piece)
    assert tok_long.decode_bytes(ids) == piece


def long_pieces(chinese: str) -> dict[str, str]:
    """Texts that are one chunk for the GPT-2 regex, each thousands of bytes long."""
    rng = random.Random(1)
    return {"chinese": "".join(regex.findall(r"\p{Han}+", chinese[-100_000:]))[:4000],  # 12,000 bytes
            "number": "".join(rng.choice("0123456789") for _ in range(5000)),
            "spaces": " " * 12_000,
            "ab": "ab" * 6000,
            "ab-shifted": "a" + "ab" * 5999 + "b"}  # aabab...abb


@pytest.mark.parametrize("case", ["chinese", "number", "spaces", "ab", "ab-shifted"])
def test_long_pieces_equal_tiktoken(tok_long, chinese, case):
    text = long_pieces(chinese)[case]
    assert len(tok_long._pat.findall(text)) == 1  # one piece: the merge loop sees all of it at once
    ids = tok_long.encode_ordinary(text)
    assert ids == tok_long.to_tiktoken().encode_ordinary(text)
    assert len(ids) < len(text.encode("utf-8")) / 2  # merges happened all along the piece


@pytest.mark.parametrize("case", ["uniform", "tokens"])
def test_long_random_bytes_equal_tiktoken(tok_long, case):
    """Any bytes, merged as one piece without the regex (tiktoken's _encode_single_piece does the same)."""
    rng = random.Random(2)
    tokens = list(tok_long.mergeable_ranks)
    if case == "uniform":
        piece = bytes(rng.randrange(256) for _ in range(12_000))
    else:
        piece = b"".join(rng.choice(tokens) for _ in range(4000))
    ids = bpe_encode(tok_long.mergeable_ranks, piece)
    assert ids == tok_long.to_tiktoken()._encode_single_piece(piece)
    assert tok_long.decode_bytes(ids) == piece


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_a_smaller_vocabulary_is_the_first_tokens_of_a_larger_one(pattern, english, chinese):
    """Training is greedy, so first_tokens (used by the tiktoken tests below) gives what training at that size gives."""
    text = english[:20_000] + chinese[:5_000]
    small, large = Tokenizer.train(text, 300, pattern), Tokenizer.train(text, 700, pattern)
    cut = first_tokens(large, 300)
    assert cut.mergeable_ranks == small.mergeable_ranks and cut.special_tokens == small.special_tokens
    assert len(large.mergeable_ranks) > len(small.mergeable_ranks)


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
@pytest.mark.parametrize("vocab_size", [300, 1000, 4096])
def test_encode_equals_tiktoken_on_shakespeare(pattern, vocab_size, english, trained):
    tok = first_tokens(trained("en", pattern), vocab_size)  # trained on english[:300_000]
    held = english[300_000:1_300_000]  # 1M characters never seen in training
    same, n = same_as_tiktoken(tok, held)
    assert same, f"first differing token at index {n}"
    assert n > 200_000


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
@pytest.mark.parametrize("vocab_size", [300, 2000, 8000])
def test_encode_equals_tiktoken_on_chinese(pattern, vocab_size, chinese, trained):
    tok = first_tokens(trained("zh", pattern), vocab_size)  # trained on chinese[:100_000]
    held = chinese[100_000:250_000] + MIXED  # 150k characters never seen in training
    same, n = same_as_tiktoken(tok, held)
    assert same, f"first differing token at index {n}"
    assert tok.decode(tok.encode(held)) == held


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_round_trip_and_tiktoken_on_any_string(tok_en, enc_en, text):
    ids = tok_en.encode(text, disallowed_special=())
    assert tok_en.decode(ids) == text
    assert ids == enc_en.encode(text, disallowed_special=())


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=30), st.sampled_from([ENDOFTEXT, *CHAT_TOKENS])), max_size=8))
def test_special_tokens_inside_any_text(tok_en, enc_en, parts):
    text = "".join(parts)
    ids = tok_en.encode(text, allowed_special="all")
    assert ids == enc_en.encode(text, allowed_special="all")
    assert tok_en.decode(ids) == text


def test_special_token_policy_matches_tiktoken(tok_en, enc_en):
    text = f"hi{ENDOFTEXT}<|im_start|>user\nyo<|im_end|>"
    with pytest.raises(SpecialTokenError, match="special token"):
        tok_en.encode(text)
    with pytest.raises(ValueError):
        enc_en.encode(text)
    for kw in [dict(allowed_special="all"), dict(disallowed_special=()), dict(allowed_special={ENDOFTEXT}, disallowed_special=()),
               dict(allowed_special={"<|im_start|>", "<|im_end|>"}, disallowed_special=())]:
        assert tok_en.encode(text, **kw) == enc_en.encode(text, **kw), kw
    ids = tok_en.encode(text, allowed_special="all")
    assert tok_en.eot_token == tok_en.special_tokens[ENDOFTEXT] == 1021
    assert ids.count(1021) == 1 and tok_en.special_tokens["<|im_start|>"] in ids
    assert len(tok_en.encode(ENDOFTEXT, disallowed_special=())) > 1
    with pytest.raises(SpecialTokenError, match="not a special token"):
        tok_en.encode("x", allowed_special={"<|nope|>"})


def test_vocab_size_counts_specials_and_lone_surrogates_are_replaced(tok_en):
    assert tok_en.vocab_size == 1024 and len(tok_en.mergeable_ranks) == 1021
    assert tok_en.decode(tok_en.encode("a\ud800b")) == "a\ufffdb"
    assert tok_en.encode_batch(["ab", "cd"]) == [tok_en.encode("ab"), tok_en.encode("cd")]


def test_with_special_tokens_adds_ids_after_the_last(tok_en):
    t = Tokenizer(tok_en.mergeable_ranks, "gpt2", {ENDOFTEXT: 1021}).with_special_tokens(CHAT_TOKENS)
    assert t.special_tokens == {ENDOFTEXT: 1021, "<|im_start|>": 1022, "<|im_end|>": 1023}


def test_bytes_to_unicode_is_gpt2s():
    m = bytes_to_unicode()
    assert len(set(m.values())) == 256 and m[ord(" ")] == "Ġ" and m[ord("\n")] == "Ċ" and m[ord("A")] == "A"


def test_save_load_both_forms_and_state_dict(tok_en, tmp_path, english):
    save(tok_en, tmp_path)
    text = english[-20_000:] + MIXED + ENDOFTEXT
    want = tok_en.encode(text, allowed_special="all")
    for path in [tmp_path, tmp_path / "bpe.tiktoken", tmp_path / "vocab.json"]:
        assert load(path).encode(text, allowed_special="all") == want, path
    (tmp_path / "bpe.tiktoken").unlink()
    assert from_hf_files(tmp_path).encode(text, allowed_special="all") == want  # specials read from vocab.json
    d = json.loads(json.dumps(tok_en.state_dict()))
    assert from_state_dict(d).encode(text, allowed_special="all") == want
    assert recover_merges(tok_en.mergeable_ranks) == tok_en.merges


def test_hf_files_read_by_hugging_face_give_our_ids(tok_en, tmp_path, english):
    transformers = pytest.importorskip("transformers")
    tok_en.save_hf(tmp_path)
    text = english[-30_000:]
    hf = transformers.GPT2Tokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    assert hf.encode(text) == tok_en.encode_ordinary(text)


def test_loads_a_vocabulary_trained_by_hugging_face(tmp_path, english):
    """HF's byte ids are permuted (as in GPT-2's files): ranks are not byte values, and encoding still agrees."""
    pytest.importorskip("tokenizers")
    from llmpath.tokenizers.compare import train_hf

    hf = train_hf(english[:100_000], 600)
    hf.model.save(str(tmp_path))
    ours = from_hf_files(tmp_path)
    assert ours.mergeable_ranks[b"A"] != ord("A") and ours.special_tokens[ENDOFTEXT] == 0
    text = english[100_000:150_000]
    assert ours.encode_ordinary(text) == hf.encode(text).ids
    assert same_as_tiktoken(ours, text)[0]


def test_bad_files_say_what_is_wrong(tmp_path):
    (tmp_path / "x.tiktoken").write_text("not base64 at all\n")
    with pytest.raises(ValueError, match="base64-token rank"):
        load(tmp_path / "x.tiktoken")
    with pytest.raises(ValueError, match="does not exist"):
        load(tmp_path / "nope")
    (tmp_path / "x.tiktoken").unlink()
    with pytest.raises(ValueError, match="neither"):
        load(tmp_path)


def test_gpt_facing_helpers(english):
    tok = train_gpt_tokenizer(english[:50_000], 300)
    assert tok.vocab_size == 300 and tok.encode("\n", allowed_special="all") == [10]
    assert from_state_dict(tok.state_dict()).encode(english[:2000]) == tok.encode(english[:2000])


def test_cli_train_and_encode(tmp_path, capsys):
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--preset=tiny", "--vocab-size", "400", "--out", str(out)]) == 0
    summary = json.loads((out / "results.json").read_text())
    assert summary["same_as_tiktoken"] and summary["round_trip"] and summary["vocab_size"] == 400
    capsys.readouterr()
    assert main(["tokenizer", "encode", "--tok", str(out), "--color=never", "To be 你<|endoftext|>"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("[T") and "[ be]" in lines[0] and "[<|endoftext|>]" in lines[0] and "<e4>" in lines[0]
    assert main(["tokenizer", "train", "--vocab-size=100", f"--out={out}"]) == 2
    assert "leaves no merges" in capsys.readouterr().err


def test_smoke():
    from llmpath.tokenizers.cli import smoke

    assert "round trip ok" in smoke()


# ------------------------------------------------------------------ chapter 5a: the diagram, the exercises

def test_the_merge_diagram_steps_are_the_trainers_merges():
    from llmpath.tokenizers.bpe import train_from_counts
    from llmpath.tokenizers.diagrams import WORDS, merge_steps

    steps = merge_steps(WORDS, 6)
    assert [(s["pair"], s["id"]) for s in steps] == train_from_counts(WORDS, 6)
    assert [s["token"] for s in steps] == [b"ay", b"lay", b"play", b"ed", b"st", b"stay"]  # as the chapter says
    assert steps[0]["stats"][(97, 121)] == 10 and steps[1]["stats"][(108, 256)] == steps[1]["stats"][(112, 108)] == 7


def test_exercise_5a_1_any_tie_rule_still_encodes_like_tiktoken(english):
    from llmpath.tokenizers.bpe import ranks_from_merges

    text, held = english[:20_000], english[20_000:60_000]
    chunks = [list(c.encode("utf-8")) for c in regex.findall(GPT2_PATTERN, text)]
    vocab = {i: bytes([i]) for i in range(256)}
    ids_of = {b: i for i, b in vocab.items()}
    merges = []
    while len(vocab) < 600:  # train_naive with the opposite tie rule: the largest pair wins
        stats: dict = {}
        for ids in chunks:
            get_stats(ids, stats)
        pair = max(stats, key=lambda p: (stats[p], p))
        idx = ids_of.setdefault(vocab[pair[0]] + vocab[pair[1]], len(vocab))
        vocab[idx] = vocab[pair[0]] + vocab[pair[1]]
        chunks = [merge(ids, pair, idx) for ids in chunks]
        merges.append((pair, idx))
    assert merges != train_naive(text, 600)  # another vocabulary ...
    same, n = same_as_tiktoken(Tokenizer(ranks_from_merges(merges)), held)
    assert same and n > 10_000  # ... encoded exactly like tiktoken with the same ranks


def test_exercise_5a_2_the_whole_piece_shortcut(english):
    from llmpath.tokenizers.bpe import bpe_parts

    ranks = {bytes([i]): i for i in range(256)} | {b"bc": 256, b"ab": 257, b"cd": 258, b"abcd": 259}
    assert bpe_parts(ranks, b"abcd") == [b"a", b"bc", b"d"]  # bc merges first; then abc and bcd are no tokens
    enc = tiktoken.Encoding("exercise", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={})
    assert bpe_encode(ranks, b"abcd") == enc.encode_ordinary("abcd") == [259]
    # a vocabulary our trainer learned never needs the shortcut: each token is what its own bytes merge into
    r = Tokenizer.train(english[:50_000], 1000).mergeable_ranks
    assert all(bpe_parts(r, t) == [t] for t in r)


def test_exercise_5a_3_gpt4_pattern_cuts_digits_and_keeps_newlines_with_punctuation():
    from llmpath.tokenizers import pretokenize

    text = "I'LL pay 12345 ducats.\n\nEXIT"
    assert list(pretokenize(text, "gpt2")) == ["I", "'", "LL", " pay", " 12345", " ducats", ".", "\n", "EXIT"]
    assert list(pretokenize(text, "gpt4")) == ["I", "'LL", " pay", " ", "123", "45", " ducats", ".\n\n", "EXIT"]


@pytest.mark.slow
def test_exercise_5a_3_gpt4_pattern_on_shakespeare_tokens_per_char():
    from llmpath.tokenizers.cli import train_texts

    text, held = train_texts("shakespeare", 1_000_000)  # the tour's small preset: 1M to train, 111,111 held out
    tpc = {p: len(Tokenizer.train(text, 4096, p).encode(held, allowed_special="all")) / len(held)
           for p in ("gpt2", "gpt4")}
    assert round(tpc["gpt2"], 4) == 0.3367 and round(tpc["gpt4"], 4) == 0.3103, tpc


def test_exercise_5a_4_merge_in_word_is_merge_plus_the_count_changes():
    from collections import defaultdict

    from llmpath.tokenizers.bpe import _merge_in_word

    rng = random.Random(0)
    cases = [([97, 97, 97], (97, 97)), ([97, 98, 97, 98], (97, 98)), ([1, 2, 3, 1, 2], (1, 2))]
    cases += [([rng.choice([97, 98, 99]) for _ in range(rng.randint(1, 12))], (rng.choice([97, 98]), rng.choice([97, 98])))
              for _ in range(500)]
    for ids, pair in cases:
        delta, where = defaultdict(int), defaultdict(set)
        out = _merge_in_word("".join(map(chr, ids)), pair, 300, 2, delta, where, 0)  # the word occurs twice
        merged = merge(ids, pair, 300)
        assert [ord(c) for c in out] == merged
        before, after = get_stats(ids), get_stats(merged)
        for p in set(before) | set(after) | set(delta):
            assert delta.get(p, 0) == 2 * (after.get(p, 0) - before.get(p, 0)), (ids, pair, p)
