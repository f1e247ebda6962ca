"""Look inside a trained run: the tokens of a text, each layer's attention maps, the KV cache's size.

    model, tok, cfg = load_run("runs/gpt/small")
    token_pieces(tok, "To be")                      # [{"id": 32, "text": "T"}, {"id": 53, "text": "o"}, ...]
    attention(model, tok, "gpt", "To be, or not")   # {"tokens": [...], "kind": "causal", "maps": L x H x T x T, ...}
    kv_cache(model, tok, "gpt", "To be")            # {"bytes_per_token": ..., "points": [[0, 0], [1, ...], ...]}

The playground's "look inside" page (llmpath.serve.app: /api/tokenize, /api/attention, /api/kv) shows what these
return (which runs offer which view: llmpath.serve.models.RunInfo.inspect); they are plain functions of a model in eval mode (as load_run returns it) and a text, with no HTTP in them.
The attention weights come from the hand-written attention path that every model shares
(llmpath.transformer.attention): the fused kernel computes the same output but never forms the weights.
Bad input (an empty text, a character a char vocabulary lacks, a run without attention) raises ConfigError.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from llmpath.bert.model import BERT
from llmpath.config import ConfigError
from llmpath.data import CharTokenizer
from llmpath.data.corpora import DataError
from llmpath.generation import kv_bytes_per_token
from llmpath.gpt.model import GPT
from llmpath.llama.model import Llama
from llmpath.seq2seq.data import BOS, TOKENIZE
from llmpath.serve.models import encode_text
from llmpath.seq2seq.translation import TranslationVocab
from llmpath.tokenizers import Tokenizer, WordPiece
from llmpath.transformer.model import Transformer

MAX_POINTS = 64  # the KV-cache curve: about this many evenly spaced lengths


# ------------------------------------------------------------------------------------------------ tokens

def _ids(tok, text: str) -> list[int]:
    """The ids a model reads for `text`, as its own tokenizer encodes it; an unusable text is a ConfigError."""
    try:
        if isinstance(tok, TranslationVocab):  # words (or characters) first, then the source side's ids
            return tok.src_vocab.encode(TOKENIZE[tok.src_lang](text))
        return encode_text(tok, text)  # as the playground's completions read a prompt
    except DataError as e:  # a character outside a char vocabulary: the tokenizer's own one-line message
        raise ConfigError(str(e)) from None


def _readable(raw: bytes) -> str:
    """A byte-level BPE token as text: b'\\xe5\\xa5\\xbd' -> '好', b'\\xe5\\xa5' -> '\\\\xe5\\\\xa5'.

    Byte escapes rather than U+FFFD: a Chinese character is 3 UTF-8 bytes and BPE may cut it between tokens;
    with "replace" every such piece would read as the same '�', while the escapes show which bytes each piece
    holds and that two or three pieces together make one character (their "bytes" rebuild it exactly).
    """
    return raw.decode("utf-8", errors="backslashreplace")


def _labels(tok, ids: list[int]) -> list[str]:
    """The text each id stands for, as the tokenizer view and the attention explorer show it."""
    if isinstance(tok, Tokenizer):
        return [_readable(b) for b in tok.decode_tokens_bytes(ids)]
    if isinstance(tok, TranslationVocab):
        return [tok.src_vocab.itos[i] for i in ids]  # "<unk>" for a word the vocabulary lacks
    if isinstance(tok, WordPiece):
        return [tok.vocab[i] for i in ids]  # "##" kept: this piece continues a word
    if isinstance(tok, CharTokenizer):
        return [tok.itos[i] for i in ids]
    return [tok.decode([i]) for i in ids]  # any other vocabulary (stage 2's words)


def token_pieces(tok, text: str) -> list[dict]:
    """[{"id": int, "text": str}] of every token of `text`, ids exactly the tokenizer's own encoding.

    Byte-level BPE pieces also carry "bytes" (a list of ints, as OpenAI's logprobs do): the bytes of all pieces
    joined are the text's UTF-8, even where a piece holds only part of a character.
    """
    if not hasattr(tok, "encode") and not isinstance(tok, TranslationVocab):
        raise ConfigError(f"cannot show the tokens of a {type(tok).__name__}; the tokenizer view reads text tokenizers")
    ids = _ids(tok, text)
    pieces = [{"id": i, "text": t} for i, t in zip(ids, _labels(tok, ids))]
    if isinstance(tok, Tokenizer):
        for p, raw in zip(pieces, tok.decode_tokens_bytes(ids)):
            p["bytes"] = list(raw)
    return pieces


# --------------------------------------------------------------------------------------------- attention

def _bert(model: nn.Module) -> BERT | None:
    """The BERT encoder inside BERTPretraining / BERTClassifier (or the bare one)."""
    bert = model if isinstance(model, BERT) else getattr(model, "bert", None)
    return bert if isinstance(bert, BERT) else None


def _kind(model: nn.Module) -> str | None:
    """Which attention the explorer shows: "causal" (decoders), "bidirectional" (BERT), "encoder" (translation)."""
    if isinstance(model, (GPT, Llama)):
        return "causal"
    if _bert(model) is not None:
        return "bidirectional"
    if isinstance(model, Transformer):
        return "encoder"
    return None


def _context(model: nn.Module) -> int | None:
    """The most tokens the model reads at once (learned or fixed positions); None = no limit."""
    cfg = model.cfg
    if isinstance(model, (GPT, Llama)):
        return cfg.block_size
    if isinstance(model, Transformer):
        return cfg.max_len if cfg.pos != "none" else None
    return cfg.max_len  # BERT


def attention(model: nn.Module, tok, topic: str, text: str, max_tokens: int = 64) -> dict:
    """Every layer's and head's attention weights over the first max_tokens tokens of `text`.

    -> {"tokens": [str] (T), "kind", "n_layer", "n_head", "maps": L x H x T x T floats (row = query token,
    column = key token; each row sums to 1, rounded to 4 decimals), "truncated": bool}. BERT reads
    [CLS] text [SEP] (both counted in max_tokens); a translation Transformer shows its encoder's self-attention
    over the source text.
    """
    kind = _kind(model)
    if kind is None:
        raise ConfigError(f"a {topic} run ({type(model).__name__}) has no self-attention to show; "
                          "the attention view reads gpt, llama, chat, bert and transformer runs")
    need = 3 if kind == "bidirectional" else 1  # BERT: [CLS], one token, [SEP]
    if max_tokens < need:
        raise ConfigError(f"max_tokens={max_tokens} leaves no room for the text; ask for at least {need}")
    if kind == "bidirectional" and not isinstance(tok, WordPiece):
        raise ConfigError(f"a BERT run needs its WordPiece tokenizer (it adds [CLS] and [SEP]), not a "
                          f"{type(tok).__name__}; train the run again with `llmpath bert train`")
    ids = _ids(tok, text)
    if not ids:
        raise ConfigError("the text is empty; type a few words to see where each token looks")
    limit = min(max_tokens, _context(model) or max_tokens)
    bert = _bert(model)
    room = limit - 2 if bert is not None else limit  # BERT's [CLS] and [SEP] take two places
    truncated = len(ids) > room
    ids = ids[:room]
    labels = _labels(tok, ids)
    x = torch.tensor([ids], device=next(model.parameters()).device)  # (1, T)
    maps: list[Tensor] = []
    with torch.no_grad():
        if kind == "causal":
            model.hidden(x, maps=maps)  # the LM head is not needed: the weights are collected on the way
        elif bert is not None:
            x = torch.tensor([[tok.cls_id, *ids, tok.sep_id]], device=x.device)  # as BERT was trained to read
            labels = [tok.vocab[tok.cls_id], *labels, tok.vocab[tok.sep_id]]
            bert(x, maps=maps)
        else:  # one <bos> as the decoder's input: only the encoder's maps are kept
            maps = model.attention_maps(x, torch.tensor([[BOS]], device=x.device))["encoder"]
    w = torch.cat(maps)  # (L, nh, T, T): batch of one
    return {"tokens": labels, "kind": kind, "n_layer": w.shape[0], "n_head": w.shape[1],
            "maps": w.double().round(decimals=4).tolist(), "truncated": truncated}


# -------------------------------------------------------------------------------------------- KV cache

def _lengths(block_size: int, prompt: int, n: int = MAX_POINTS) -> list[int]:
    """0..block_size in about n even steps, with block_size and the prompt's length always among them."""
    step = -(-block_size // n)  # ceil: never more than n + 1 evenly spaced lengths
    return sorted({*range(0, block_size + 1, step), block_size, min(prompt, block_size)})


def kv_cache(model: nn.Module, tok, topic: str, text: str) -> dict:
    """How many bytes llmpath.generation.KVCache fills per token and at each length T = 0..block_size.

    -> {"prompt_tokens", "block_size", "n_layer", "n_kv_head", "head_dim", "bytes_per_value",
    "bytes_per_token", "points": [[T, bytes], ...]}. Every token stores a key and a value vector of head_dim
    numbers for each of the n_kv_head key/value heads of each layer: 2 * n_layer * n_kv_head * head_dim *
    bytes_per_value, and the cache grows linearly with T. (KVCache allocates all block_size slots up front;
    the points count the slots filled after T tokens, the last point is that allocation.)
    """
    if not isinstance(model, (GPT, Llama)):
        raise ConfigError(f"a {topic} run ({type(model).__name__}) generates no text, so it keeps no KV cache; "
                          "the KV-cache view reads gpt, llama and chat runs")
    cfg = model.cfg
    n_kv = getattr(cfg, "n_kv_head", 0) or cfg.n_head  # grouped-query attention keeps fewer heads: KVCache's rule
    head_dim = cfg.n_embd // cfg.n_head
    bytes_per_value = next(model.parameters()).element_size()  # generation allocates the cache in this dtype
    per_token = kv_bytes_per_token(cfg.n_layer, n_kv, head_dim, bytes_per_value)
    prompt = len(_ids(tok, text))
    return {"prompt_tokens": prompt, "block_size": cfg.block_size, "n_layer": cfg.n_layer, "n_kv_head": n_kv,
            "head_dim": head_dim, "bytes_per_value": bytes_per_value, "bytes_per_token": per_token,
            "points": [[t, t * per_token] for t in _lengths(cfg.block_size, prompt)]}

