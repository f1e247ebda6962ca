"""WordPiece: hand-checked cuts, readable == fast basic tokenizer, naive == fast training, and our ids equal
transformers.BertTokenizer's and tokenizers.BertWordPieceTokenizer's on real and crafted text (cased and uncased)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmpath.config import ConfigError
from llmpath.data import CharTokenizer, load_classification, load_text
from llmpath.data.corpora import DataError
from llmpath.tokenizers import (
    TextTokenizer,
    Tokenizer,
    WordPiece,
    basic_tokenize,
    basic_tokenize_naive,
    from_state_dict,
    load,
)
from llmpath.tokenizers.wordpiece import SPECIALS, alphabet, count_words, train_vocab, train_vocab_naive

transformers = pytest.importorskip("transformers")
hf_tokenizers = pytest.importorskip("tokenizers")

# Accents (composed and combining), ñ Ö ß İ, final sigma, emoji (also newer than Python's Unicode tables),
# control and format characters, NBSP and other spaces, CJK and full-width punctuation, Japanese and Korean,
# CJK Extension E on both sides of U+2B920, private use, a 150-character word, literal special tokens.
CRAFTED = [
    "Héllo Wörld! ÑANDÚ Ökonomie façade naïve café, Ça va? Señor Müller's straße",
    "e\u0301cole, \u0301lone marks\u0308 and COMBINING e\u0301\u0323",
    "emoji 😀🥰🫠👍🏽🇨🇳 ok❤️ #selfdriving @user http://t.co/AbC123",
    "ctrl\x00a\x01b\x7fc\u200bd\ufeffe\ufffdf\x1cg\x85h\x0bi\x0cj",
    "nbsp\u00a0x\u3000y\u2028z\u2003w\tv\r\nu",
    "中文，标点。“引号”！（括号）【书名】《书》、顿号；今天的菜很好吃～",
    "ＦＵＬＬ　ｗｉｄｔｈ １２３！＠＃",
    "ΟΔΟΣ Σίσυφος İstanbul ΑΘΗΝΑ ǅemal",
    "日本語のテキスト 한국어 텍스트 Привет, мир!",
    "\U0002B820\U0002B91F\U0002B920 \U00020000\uF900 a\ue000b \U000F0000",
    "x" * 150 + " " + "y" * 100,
    "the [MASK] of [CLS] and [SEP] [UNK] [PAD]",
    "¿Qué? ¡Hola! «quotes» — dash… ‘single’ $5 ^caret^ `tick` ~tilde~ |pipe| +plus+ <lt>",
    "",
    "   \n\t ",
]


def lines_of(texts, n, skip=0):
    return [t for t in texts if t.strip()][skip:skip + n]


@pytest.fixture(scope="module")
def corpus():
    """(training lines, held-out lines): Shakespeare, English tweets, Chinese reviews."""
    en = load_text("shakespeare-tiny").split("\n")
    tweets = load_classification("tweets").texts
    zh = load_classification("chinese-reviews").texts
    train = lines_of(en, 6000) + lines_of(tweets, 2000) + lines_of(zh, 600)
    held = lines_of(en, 150, 20000) + lines_of(tweets, 150, 5000) + lines_of(zh, 150, 5000)
    return train, held


@pytest.fixture(scope="module")
def vocabs(corpus):
    """Uncased and cased WordPiece of 3000 tokens (~1,900 characters and "##" forms, ~1,100 merged pieces)."""
    return {lc: WordPiece.train(corpus[0], 3000, lowercase=lc) for lc in (True, False)}


@pytest.fixture(scope="module", params=[True, False], ids=["uncased", "cased"])
def trained(request, vocabs, tmp_path_factory):
    """(ours, transformers.BertTokenizer, tokenizers.BertWordPieceTokenizer) on the same saved vocab.txt."""
    lowercase = request.param
    tok = vocabs[lowercase]
    folder = tok.save(tmp_path_factory.mktemp("wp"))
    hf = transformers.BertTokenizer.from_pretrained(folder)
    rust = hf_tokenizers.BertWordPieceTokenizer(str(folder / "vocab.txt"), lowercase=lowercase)
    rust._tokenizer.encode_special_tokens = True  # "[MASK]" in text is text, as in ours
    return tok, hf, rust


def hf_ids(hf, text):
    return hf(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


# ------------------------------------------------------------------------------ hand-checked

def tiny(*tokens, **kw) -> WordPiece:
    return WordPiece([*SPECIALS, *tokens], **kw)


def test_greedy_longest_match_first():
    tok = tiny("un", "##aff", "##able", "##a", "##f", "##b", "##l", "##e", "u", "##n")
    assert tok.tokenize("unaffable") == ["un", "##aff", "##able"]
    assert tok.tokenize("UNAFFABLE") == ["un", "##aff", "##able"]  # uncased
    assert tok.tokenize("unaffablex") == ["[UNK]"]  # no piece for ##x: the whole word is unknown
    assert tok.tokenize("unaffable unx un") == ["un", "##aff", "##able", "[UNK]", "un"]
    assert tok.encode("unaffable") == [tok.token_to_id(t) for t in ("un", "##aff", "##able")]


def test_words_longer_than_100_characters_are_unk():
    tok = tiny("a", "##a")
    assert tok.tokenize("a" * 100) == ["a"] + ["##a"] * 99
    assert tok.tokenize("a" * 101) == ["[UNK]"]


def test_basic_tokenizer_rules():
    assert basic_tokenize("Héllo, wörld!") == ["hello", ",", "world", "!"]
    assert basic_tokenize("Héllo", lowercase=False) == ["Héllo"]
    assert basic_tokenize("Héllo", lowercase=False, strip_accents=True) == ["Hello"]
    assert basic_tokenize("Héllo", lowercase=True, strip_accents=False) == ["héllo"]
    assert basic_tokenize("今天very好吃。") == ["今", "天", "very", "好", "吃", "。"]  # CJK: one token each
    assert basic_tokenize("a$b^c¿d—e") == ["a", "$", "b", "^", "c", "¿", "d", "—", "e"]  # ASCII symbols + P*
    assert basic_tokenize("a\x00b\u200bc\ufffdd e\u00a0f\u3000g") == ["abcd", "e", "f", "g"]
    assert basic_tokenize("ΟΔΟΣ") == ["οδοσ"]  # per character, as tokenizers lowercases (str.lower: 'οδος')
    assert basic_tokenize("ＡＢ！") == ["ａｂ", "！"]  # full-width letters stay, full-width punctuation splits


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",))), st.booleans(), st.sampled_from([None, True, False]))
def test_fast_basic_tokenizer_equals_readable(text, lowercase, strip):
    assert basic_tokenize(text, lowercase, strip) == basic_tokenize_naive(text, lowercase, strip)


def test_fast_basic_tokenizer_equals_readable_on_crafted():
    for text in CRAFTED:
        for lowercase in (True, False):
            assert basic_tokenize(text, lowercase) == basic_tokenize_naive(text, lowercase)


def test_decode_glues_pieces_and_skips_pad():
    tok = tiny("un", "##aff", "##able", "hi", "!")
    ids = [tok.pad_id, *tok.encode("unaffable hi!"), tok.pad_id]
    assert tok.decode(ids) == "unaffable hi!"
    assert tok.decode([tok.cls_id, *tok.encode("hi"), tok.sep_id]) == "[CLS] hi [SEP]"
    with pytest.raises(DataError, match="not in this vocabulary"):
        tok.decode([tok.vocab_size])


def test_vocabulary_must_hold_the_specials_once():
    with pytest.raises(DataError, match=r"\[MASK\]"):
        WordPiece(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a"])
    with pytest.raises(DataError, match="twice"):
        tiny("a", "a")


def test_ids_and_specials():
    tok = tiny("a")
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert tok.special_ids == frozenset(range(5)) and tok.vocab_size == 6
    assert tok.id_to_token(5) == "a" and tok.token_to_id("a") == 5 and tok.token_to_id("zz") is None
    assert tok.encode_batch(["a", "a a b"]) == [[5], [5, 5, tok.unk_id]]


# ---------------------------------------------------------------------------------- training

def test_train_limits_specials_characters_and_determinism(corpus, vocabs):
    lines, tok = corpus[0], vocabs[True]
    assert tok.vocab_size == 3000 and tok.vocab[:5] == list(SPECIALS)
    seen = {c for w in count_words(lines) for c in w}
    assert all(c in tok.vocab for c in seen)
    assert all("##" + c in tok.vocab for c in seen if c.isalpha() and not "\u4e00" <= c <= "\u9fff")
    ids = tok.encode("\n".join(lines))
    assert ids.count(tok.unk_id) == 0  # every character of the training text is in the vocabulary
    assert len(ids) < 0.5 * len("\n".join(lines))
    assert WordPiece.train(iter(lines), 3000).vocab == tok.vocab  # deterministic; a generator works too
    assert WordPiece.train(["hello world"] * 5, vocab_size=40).vocab_size <= 40


def test_small_budget_cuts_the_rarest_characters(corpus):
    tok = WordPiece.train(corpus[0], 300)
    assert tok.vocab_size == 300
    assert "的" in tok.vocab and "e" in tok.vocab and "##e" in tok.vocab  # frequent characters survive


@pytest.mark.parametrize("score", ["frequency", "likelihood"])
def test_fast_trainer_equals_naive(corpus, score):
    counts = count_words(corpus[0][:200] + corpus[0][6000:6060] + corpus[0][-3:])  # ~1,000 words, ~180 characters
    n_alpha = len(alphabet(counts, 10**6))
    for size in (100, len(SPECIALS) + n_alpha + 150):  # the alphabet cut short; 150 merges
        vocab = train_vocab(counts, size, 2, score)
        assert len(vocab) == size and vocab == train_vocab_naive(counts, size, 2, score)


def test_train_errors_are_one_line():
    with pytest.raises(ConfigError, match="vocab_size=3"):
        WordPiece.train(["hello"], 3)
    with pytest.raises(ConfigError, match="frequency, likelihood"):
        WordPiece.train(["hello"], 100, score="bpe")


# ------------------------------------------------------------------------ Hugging Face equality

def test_ids_equal_transformers_and_tokenizers(trained, corpus):
    tok, hf, rust = trained
    for text in corpus[1] + CRAFTED:
        ours = tok.encode(text)
        assert ours == hf_ids(hf, text), text
        assert ours == rust.encode(text, add_special_tokens=False).ids, text
    assert [hf.cls_token_id, hf.sep_token_id, hf.pad_token_id, hf.mask_token_id, hf.unk_token_id] == \
        [tok.cls_id, tok.sep_id, tok.pad_id, tok.mask_id, tok.unk_id]


@pytest.mark.parametrize("lowercase,strip", [(False, True), (True, False)])
def test_strip_accents_setting_reaches_transformers(vocabs, tmp_path, lowercase, strip):
    tok = WordPiece(vocabs[False].vocab, lowercase=lowercase, strip_accents=strip)
    hf = transformers.BertTokenizerFast.from_pretrained(tok.save(tmp_path))
    for text in CRAFTED[:3]:
        assert tok.encode(text) == hf_ids(hf, text), text


# characters from the scripts and symbol blocks our data holds, where Python's and tokenizers' Unicode tables agree
ALPHABET = ("abcXYZ019 .,!?'\"-_#@$%&*()[]{}<>/\\|~^`+=:;\t\n\x00\x07\u200b\ufeff\u00a0\u3000"
            "éèêëÉàäöüÖÜñÑçßøÅæœİıΣσςΟδ́̈̃ķ中文今天好吃的菜很。，、！？：；“”（）《》【】～…—–"
            "ＡＢ１２！ひらカタ한국어ру😀🥰👍🏽❤\ufe0f\u20ac\u00b7\u2022\ue000\U0002B820\U0002B920")


@settings(max_examples=150, deadline=None)
@given(text=st.text(st.sampled_from(ALPHABET), max_size=40))
def test_ids_equal_references_on_random_text(trained, text):
    tok, hf, rust = trained
    ours = tok.encode(text)
    assert ours == hf_ids(hf, text)
    assert ours == rust.encode(text, add_special_tokens=False).ids


def test_decode_equals_hugging_face(trained, corpus):
    tok, hf, rust = trained
    for text in corpus[1][:200] + CRAFTED:
        ids = tok.encode(text)
        assert tok.decode(ids) == hf.decode(ids) == rust.decode(ids, skip_special_tokens=False), text


# -------------------------------------------------------------------------------- files, state

def test_save_load_and_state_dict_round_trip(trained, tmp_path):
    tok = trained[0]
    tok.save(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "BertTokenizer" and config["do_lower_case"] == tok.lowercase
    for back in (WordPiece.load(tmp_path), load(tmp_path), load(tmp_path / "vocab.txt"),
                 WordPiece.from_vocab_file(tmp_path / "vocab.txt", lowercase=tok.lowercase),
                 WordPiece.from_state_dict(json.loads(json.dumps(tok.state_dict()))),
                 from_state_dict(tok.state_dict())):
        assert isinstance(back, WordPiece)
        assert (back.vocab, back.lowercase, back.strip_accents) == (tok.vocab, tok.lowercase, tok.strip_accents)
    d = tok.state_dict()
    assert d["kind"] == "wordpiece" and set(d) == {"kind", "vocab", "lowercase", "strip_accents"}


def test_from_state_dict_dispatches_on_kind(tmp_path):
    wp = tiny("a", "##b")
    char = CharTokenizer.train("abc")
    bpe = Tokenizer.train("hello world " * 20, 270, special_tokens=())
    for tok in (wp, char, bpe):
        back = from_state_dict(json.loads(json.dumps(tok.state_dict())))
        assert type(back) is type(tok) and back.encode("ab") == tok.encode("ab")
        assert isinstance(tok, TextTokenizer)
    d = bpe.state_dict()
    del d["kind"]  # state dicts written before "kind" existed are BPE
    assert isinstance(from_state_dict(d), Tokenizer)
    bpe.save(tmp_path / "bpe")
    assert isinstance(load(tmp_path / "bpe"), Tokenizer)  # a BPE folder still loads as BPE


def test_missing_vocab_file_is_one_line(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        WordPiece.from_vocab_file(tmp_path / "nope.txt")


def test_tokenizer_encode_command_shows_wordpiece_pieces(tmp_path, capsys):
    from llmpath.cli import main

    WordPiece.train(["hello world, unbelievable things", "今天的菜很好吃"] * 3, vocab_size=60).save(tmp_path)
    assert main(["tokenizer", "encode", f"--tok={tmp_path}", "hello 今天 world", "--color=never"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "[hel][##lo][今][天][wo][##rld]" and out[-1].startswith("6 tokens")
