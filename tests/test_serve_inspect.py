"""The playground's look-inside functions (llmpath.serve.inspect): attention maps equal Hugging Face's eager attentions
(GPT-2, Llama with GQA, BERT), the KV-cache sizes equal what a real KVCache fills, and the tokenizer view gives the
tokenizer's own ids for every kind of tokenizer a run can hold. Tiny random models, no hub."""

import pytest
import torch
from helpers import perturb
from torch import nn

from llmpath.bert.model import BERTConfig, BERTPretraining
from llmpath.config import ConfigError
from llmpath.data import CharTokenizer
from llmpath.generation import KVCache
from llmpath.gpt.model import GPT, GPTConfig
from llmpath.llama.model import Llama, LlamaConfig
from llmpath.seq2seq.data import Vocab, tokenize_en, tokenize_zh
from llmpath.seq2seq.translation import TranslationVocab
from llmpath.serve.inspect import attention, kv_cache, token_pieces
from llmpath.tokenizers import WordPiece, train_gpt_tokenizer
from llmpath.tokenizers.wordpiece import SPECIALS
from llmpath.transformer.model import Transformer, TransformerConfig

TEXT = "to be, or not to be: that is the question. whether 'tis nobler in the mind to suffer"
CHARS = CharTokenizer.train(TEXT)
ZH = "今天的菜很好吃，我想喝水。"


def tiny_gpt(seed=0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=CHARS.vocab_size, n_layer=2, n_head=2, n_embd=16, block_size=32)
    return perturb(GPT(GPTConfig(**{**cfg, **kw})), seed).eval()


def tiny_llama(seed=0, **kw) -> Llama:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=CHARS.vocab_size, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, block_size=32)
    return perturb(Llama(LlamaConfig(**{**cfg, **kw})), seed).eval()


def wordpiece() -> WordPiece:
    return WordPiece([*SPECIALS, "to", "be", "or", "not", ",", ".", "the", "qu", "##est", "##ion", "今", "天"])


def tiny_bert(tok: WordPiece, seed=0) -> BERTPretraining:
    torch.manual_seed(seed)
    cfg = BERTConfig(vocab_size=tok.vocab_size, max_len=16, n_layer=2, n_head=4, n_embd=32, n_ff=64, dropout=0.0)
    return perturb(BERTPretraining(cfg), seed).eval()


def translation_vocab(src_lang="zh") -> TranslationVocab:
    src = Vocab.build([tokenize_zh(ZH)] if src_lang == "zh" else [tokenize_en(TEXT)])
    return TranslationVocab(src, Vocab.build([["hello", "world"]]), src_lang, "en" if src_lang == "zh" else "zh")


def as_tensor(r: dict) -> torch.Tensor:
    return torch.tensor(r["maps"], dtype=torch.float64)  # (L, H, T, T)


def check_rows(w: torch.Tensor, causal: bool) -> None:
    T = w.shape[-1]
    torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1], dtype=w.dtype), atol=T * 5e-5 + 1e-6, rtol=0)
    above = w.triu(1)  # what a query gives the keys after it
    if causal:
        assert (above == 0).all()
    else:
        assert above.sum() > 0.1 * w.shape[0] * w.shape[1]


# ---------------------------------------------------------------------------------- GPT's maps

def test_gpt_maps_equal_huggingface_eager_attentions():
    transformers = pytest.importorskip("transformers")
    from llmpath.gpt.hf import from_hf

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=CHARS.vocab_size, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    hf = perturb(transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")).eval()
    ours = from_hf(hf)  # sdpa=True: maps must switch to the hand-written path by themselves
    x = torch.tensor([CHARS.encode(TEXT[:20])])
    maps = []
    with torch.no_grad():
        ref = hf(x, output_attentions=True).attentions
        ours(x, maps=maps)
    assert len(maps) == 2
    for m, r in zip(maps, ref):
        torch.testing.assert_close(m, r, atol=1e-5, rtol=1e-5)
    r = attention(ours, CHARS, "gpt", TEXT[:20])
    assert r["kind"] == "causal" and (r["n_layer"], r["n_head"]) == (2, 4) and not r["truncated"]
    assert r["tokens"] == list(TEXT[:20])
    torch.testing.assert_close(as_tensor(r), torch.cat(ref).double(), atol=1e-4, rtol=0)
    check_rows(as_tensor(r), causal=True)


@pytest.mark.parametrize("sdpa", [True, False])
def test_gpt_logits_with_maps_equal_logits_without(sdpa):
    model = tiny_gpt(sdpa=sdpa)
    x = torch.tensor([CHARS.encode(TEXT[:30])] * 2)
    maps = []
    with torch.no_grad():
        plain, _ = model(x)
        seen, _ = model(x, maps=maps)
    torch.testing.assert_close(seen, plain, atol=1e-5, rtol=1e-5)
    assert [m.shape for m in maps] == [(2, 2, 30, 30)] * 2 and model.cfg.sdpa == sdpa


def test_gpt_maps_with_a_cache_cover_every_key_so_far():
    model = tiny_gpt()
    x = torch.tensor([CHARS.encode(TEXT[:12])])
    cache = KVCache(model.cfg, 1)
    full, step = [], []
    with torch.no_grad():
        model(x, maps=full)
        model(x[:, :8], cache=cache)
        model(x[:, 8:], cache=cache, maps=step)
    torch.testing.assert_close(step[0], full[0][:, :, 8:], atol=1e-5, rtol=1e-5)  # (1, nh, 4, 12): the last rows


# ----------------------------------------------------------------------- attention(): each model

def test_llama_gqa_attention_equals_huggingface():
    transformers = pytest.importorskip("transformers")
    from llmpath.llama.hf import config_to_hf, from_hf

    cfg = tiny_llama().cfg
    torch.manual_seed(0)
    hf_cfg = transformers.AutoConfig.for_model(**config_to_hf(cfg))
    hf = perturb(transformers.AutoModelForCausalLM.from_config(hf_cfg, attn_implementation="eager")).eval()
    ours = from_hf(hf)
    text = TEXT[:25]
    with torch.no_grad():
        ref = torch.cat(hf(torch.tensor([CHARS.encode(text)]), output_attentions=True).attentions)  # (L, nh, T, T)
    r = attention(ours, CHARS, "llama", text)
    assert r["kind"] == "causal" and (r["n_layer"], r["n_head"]) == (2, 4)  # query heads, not the 2 kv heads
    torch.testing.assert_close(as_tensor(r), ref.double(), atol=1e-4, rtol=0)
    check_rows(as_tensor(r), causal=True)


def test_bert_attention_equals_huggingface_and_reads_cls_sep():
    transformers = pytest.importorskip("transformers")
    from llmpath.bert.hf import config_to_hf, to_hf_state_dict

    tok = wordpiece()
    model = tiny_bert(tok)
    hf = transformers.BertForPreTraining(config_to_hf(model.cfg))
    hf.config._attn_implementation = "eager"
    hf.load_state_dict(to_hf_state_dict(model))
    text = "To be, or not to be. The question 今天"
    ids = [tok.cls_id, *tok.encode(text), tok.sep_id]
    with torch.no_grad():
        ref = torch.cat(hf.eval()(input_ids=torch.tensor([ids]), output_attentions=True).attentions)
    r = attention(model, tok, "bert", text)
    assert r["kind"] == "bidirectional" and r["tokens"][0] == "[CLS]" and r["tokens"][-1] == "[SEP]"
    assert r["tokens"][1:-1] == tok.tokenize(text) and len(r["tokens"]) == len(ids)
    torch.testing.assert_close(as_tensor(r), ref.double(), atol=1e-4, rtol=0)
    check_rows(as_tensor(r), causal=False)


def test_transformer_attention_is_the_encoders_over_the_source():
    vocab = translation_vocab("zh")
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(src_vocab=len(vocab.src_vocab), tgt_vocab=len(vocab.tgt_vocab),
                                          n_layer=2, n_enc_layer=3, n_head=4, n_embd=32, n_ff=64,
                                          dropout=0.0)).eval()
    r = attention(model, vocab, "transformer", "今天 很好吃")
    assert r["kind"] == "encoder" and r["tokens"] == list("今天很好吃") and (r["n_layer"], r["n_head"]) == (3, 4)
    maps = []
    with torch.no_grad():
        model.encode(torch.tensor([vocab.src_vocab.encode(list("今天很好吃"))]), maps)
    torch.testing.assert_close(as_tensor(r), torch.cat(maps).double(), atol=1e-4, rtol=0)
    check_rows(as_tensor(r), causal=False)


def test_long_text_is_cut_to_max_tokens_and_the_context():
    model = tiny_gpt()  # block_size 32
    r = attention(model, CHARS, "gpt", TEXT, max_tokens=10)
    assert r["truncated"] and r["tokens"] == list(TEXT[:10]) and as_tensor(r).shape == (2, 2, 10, 10)
    full = attention(model, CHARS, "gpt", TEXT[:20])
    torch.testing.assert_close(as_tensor(r), as_tensor(full)[:, :, :10, :10])  # causal: the first rows do not change
    assert len(attention(model, CHARS, "gpt", TEXT, max_tokens=500)["tokens"]) == 32
    assert not attention(model, CHARS, "gpt", TEXT[:10], max_tokens=10)["truncated"]
    tok = wordpiece()
    r = attention(tiny_bert(tok), tok, "bert", "to be or not to be " * 3, max_tokens=6)
    assert r["tokens"] == ["[CLS]", "to", "be", "or", "not", "[SEP]"] and r["truncated"]


def test_refusals_are_config_errors():
    with pytest.raises(ConfigError, match="no self-attention"):
        attention(nn.Linear(2, 2), CHARS, "mlp", "to be")
    with pytest.raises(ConfigError, match="empty"):
        attention(tiny_gpt(), CHARS, "gpt", "")
    with pytest.raises(ConfigError, match="not in this model's character vocabulary"):
        attention(tiny_gpt(), CHARS, "gpt", "to be 你")
    with pytest.raises(ConfigError, match="no KV cache"):
        kv_cache(tiny_bert(wordpiece()), wordpiece(), "bert", "to be")


# --------------------------------------------------------------------------------------- KV cache

def filled_bytes(cache: KVCache) -> int:
    """Bytes of the slots a real KVCache has written (it allocates max_len slots up front)."""
    return sum(t[:, :, :cache.pos].numel() * t.element_size() for t in cache.k + cache.v)


@pytest.mark.parametrize("build", [tiny_gpt, tiny_llama, lambda: tiny_gpt().to(torch.bfloat16)],
                         ids=["gpt", "llama-gqa", "gpt-bf16"])
def test_kv_bytes_equal_a_real_cache(build):
    model = build()
    text = TEXT[:7]
    r = kv_cache(model, CHARS, "gpt", text)
    points = dict(r["points"])
    Ts = [T for T, _ in r["points"]]
    assert Ts[0] == 0 and Ts[-1] == model.cfg.block_size == r["block_size"] and 7 in Ts and r["prompt_tokens"] == 7
    assert Ts == sorted(set(Ts)) and len(Ts) <= 67
    dtype = next(model.parameters()).dtype
    ids = torch.tensor([CHARS.encode(TEXT[:32])])
    for T in (1, 7, 20, 32):
        cache = KVCache(model.cfg, 1, dtype=dtype)  # as generation builds it
        with torch.no_grad():
            model(ids[:, :T], cache=cache)
        assert cache.pos == T and filled_bytes(cache) == T * r["bytes_per_token"]
        if T in points:
            assert points[T] == filled_bytes(cache)
    assert r["bytes_per_value"] == torch.empty(0, dtype=dtype).element_size()
    assert r["n_kv_head"] == (2 if isinstance(model, Llama) else model.cfg.n_head)


def test_kv_points_are_evenly_spaced_for_a_long_context():
    model = tiny_gpt(block_size=1024)
    r = kv_cache(model, CHARS, "gpt", TEXT[:37])
    Ts = [T for T, _ in r["points"]]
    assert 37 in Ts and Ts[-1] == 1024 and 60 <= len(Ts) <= 67
    assert all(b == T * r["bytes_per_token"] for T, b in r["points"])


# ---------------------------------------------------------------------------------- tokenizer view

def test_char_pieces():
    pieces = token_pieces(CHARS, TEXT)
    assert [p["id"] for p in pieces] == CHARS.encode(TEXT) and "".join(p["text"] for p in pieces) == TEXT


def test_bpe_pieces_with_chinese_rebuild_the_text():
    tok = train_gpt_tokenizer(TEXT + " " + ZH * 3, 280)  # few merges: some characters stay split over bytes
    text = "To be, 今天的菜很好吃! 你好 🙂 <|im_start|>"
    pieces = token_pieces(tok, text)
    assert [p["id"] for p in pieces] == tok.encode(text, disallowed_special=())
    assert bytes(b for p in pieces for b in p["bytes"]).decode("utf-8") == text
    assert any("\\x" in p["text"] for p in pieces)  # a piece of a character shows its bytes
    assert any("\u4e00" <= c <= "\u9fff" for p in pieces for c in p["text"])  # and whole characters read as text
    assert all(p["text"] == bytes(p["bytes"]).decode() for p in pieces if "\\x" not in p["text"])


def test_wordpiece_pieces():
    tok = wordpiece()
    text = "To be or not, the question 今天"
    pieces = token_pieces(tok, text)
    assert [p["id"] for p in pieces] == tok.encode(text)
    assert [p["text"] for p in pieces] == ["to", "be", "or", "not", ",", "the", "qu", "##est", "##ion", "今", "天"]
    assert "".join(p["text"].removeprefix("##") for p in pieces) == text.lower().replace(" ", "")


def test_translation_vocabulary_pieces():
    zh = translation_vocab("zh")
    pieces = token_pieces(zh, "今天 很好吃。")
    assert [p["id"] for p in pieces] == zh.src_vocab.encode(tokenize_zh("今天 很好吃。"))
    assert "".join(p["text"] for p in pieces) == "今天很好吃。"
    assert token_pieces(zh, "猫")[0] == {"id": 3, "text": "<unk>"}  # a character the vocabulary lacks
    en = translation_vocab("en")
    pieces = token_pieces(en, "To be, or not")
    assert [p["id"] for p in pieces] == en.src_vocab.encode(tokenize_en("To be, or not"))
    assert [p["text"] for p in pieces] == ["to", "be", ",", "or", "not"]
