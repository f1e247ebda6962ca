"""The Transformer encoder-decoder of "Attention Is All You Need", written out block by block.

    llmpath transformer train --preset=small      # hsk-pairs zh->en, the stage-3 split; docs/tutorials/04_transformer.md

Vaswani et al. 2017 (https://arxiv.org/abs/1706.03762). Source tokens -> embedding * sqrt(n_embd)
+ positional encoding -> n_layer encoder layers (self-attention, feed-forward) -> memory. Target
tokens (shifted right) -> the same embedding recipe -> n_layer decoder layers (masked self-attention,
cross-attention over the memory, feed-forward) -> a linear head tied to the target embedding.
(n_enc_layer / n_dec_layer give the two stacks different depths, as nn.Transformer allows.)

Every sub-layer sits in a residual connection with LayerNorm, after the sum (post-LN, the paper and
torch.nn.Transformer's default) or before the sub-layer (pre-LN, GPT-2 and most later models).
Like torch.nn.Transformer we put a final LayerNorm after each stack (`final_norm`), so `from_torch`
copies an nn.Transformer's weights into ours one tensor at a time and the outputs agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmpath.config import check_heads, opt
from llmpath.seq2seq.data import PAD
from llmpath.transformer.attention import MultiHeadAttention, padding_mask


@dataclass
class TransformerConfig:
    src_vocab: int = opt(100, "source vocabulary size (set from the data)", min=1)
    tgt_vocab: int = opt(100, "target vocabulary size (set from the data)", min=1)
    n_layer: int = opt(2, "layers in each stack, unless n_enc_layer / n_dec_layer say otherwise", min=1)
    n_enc_layer: int = opt(0, "encoder layers (nn.Transformer's num_encoder_layers); 0 = n_layer", min=0)
    n_dec_layer: int = opt(0, "decoder layers (num_decoder_layers); 0 = n_layer", min=0)
    n_head: int = opt(4, "attention heads (must divide n_embd)", min=1)
    n_embd: int = opt(128, "model width d_model", min=1)
    n_ff: int = opt(512, "inner width of the position-wise feed-forward (d_ff)", min=1)
    dropout: float = opt(0.1, "dropout on embeddings, attention weights and residual branches", min=0, below=1)
    bias: bool = opt(True, "biases in the linear layers and LayerNorms")
    norm: Literal["post", "pre"] = opt("post", "LayerNorm after the residual sum (the paper) or before the sub-layer")
    pos: Literal["sinusoidal", "learned", "none"] = opt("sinusoidal", "positional encoding")
    activation: Literal["relu", "gelu"] = opt("relu", "feed-forward activation")
    max_len: int = opt(256, "longest sequence the positional encoding covers", min=1)
    final_norm: bool = opt(True, "LayerNorm after each stack, as torch.nn.Transformer has")
    tie_weights: bool = opt(True, "the output head shares the target embedding matrix")
    sdpa: bool = opt(False, "attention through F.scaled_dot_product_attention (no weights for plots)")
    layer_norm_eps: float = opt(1e-5, "LayerNorm epsilon", above=0)

    def check(self) -> None:
        check_heads(self.n_head, self.n_embd)

    # 0 rather than None for "unset": the command line and saved configs keep plain ints
    @property
    def enc_depth(self) -> int:
        return self.n_enc_layer or self.n_layer

    @property
    def dec_depth(self) -> int:
        return self.n_dec_layer or self.n_layer


# -------------------------------------------------------------------------------- embeddings

def sinusoidal_encoding(max_len: int, n_embd: int) -> Tensor:
    """PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(same): (max_len, n_embd).

    Each pair of columns is a rotation at its own frequency, so PE[p + k] is a fixed linear map of
    PE[p] for every p: relative offsets are easy for attention to read.
    """
    pos = torch.arange(max_len, dtype=torch.float32)[:, None]  # (P, 1)
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, n_embd, 2, dtype=torch.float32) / n_embd)  # (C/2,)
    pe = torch.zeros(max_len, n_embd)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)[:, : n_embd // 2]
    return pe


class Embed(nn.Module):
    """Token embedding * sqrt(n_embd) + positional encoding (sinusoidal, learned or none), then dropout."""

    def __init__(self, vocab: int, cfg: TransformerConfig):
        super().__init__()
        self.tok = nn.Embedding(vocab, cfg.n_embd, padding_idx=PAD)
        self.kind, self.scale, self.max_len = cfg.pos, math.sqrt(cfg.n_embd), cfg.max_len
        if cfg.pos == "learned":
            self.pos = nn.Embedding(cfg.max_len, cfg.n_embd)
        elif cfg.pos == "sinusoidal":
            self.register_buffer("pe", sinusoidal_encoding(cfg.max_len, cfg.n_embd), persistent=False)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, ids: Tensor, start: int = 0) -> Tensor:
        """ids (B, T) at positions start..start+T-1 -> (B, T, C)."""
        T = ids.shape[1]
        if self.kind != "none" and start + T > self.max_len:
            raise ValueError(f"sequence of {start + T} tokens is longer than max_len; raise TransformerConfig.max_len")
        x = self.tok(ids) * self.scale  # the scale puts tokens and positions on a similar footing
        if self.kind == "sinusoidal":
            x = x + self.pe[start:start + T]
        elif self.kind == "learned":
            x = x + self.pos(torch.arange(start, start + T, device=ids.device))
        return self.drop(x)


# -------------------------------------------------------------------------------- blocks

class FeedForward(nn.Module):
    """Position-wise: n_embd -> n_ff -> ReLU (or GELU) -> n_embd, the same MLP at every position."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.n_embd, cfg.n_ff, bias=cfg.bias)
        self.fc2 = nn.Linear(cfg.n_ff, cfg.n_embd, bias=cfg.bias)
        self.act = F.relu if cfg.activation == "relu" else F.gelu
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))


def residual(x: Tensor, sublayer, norm: nn.LayerNorm, drop: nn.Dropout, pre: bool) -> Tensor:
    """post-LN: norm(x + drop(f(x))) (the paper); pre-LN: x + drop(f(norm(x))) (the stream is never normalised)."""
    return x + drop(sublayer(norm(x))) if pre else norm(x + drop(sublayer(x)))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.pre = cfg.norm == "pre"
        self.self_attn = MultiHeadAttention(cfg.n_embd, cfg.n_head, cfg.dropout, cfg.bias, cfg.sdpa)
        self.ff = FeedForward(cfg)
        self.norm1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.norm2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, src_mask: Tensor, maps: list | None = None) -> Tensor:
        def attend(h):
            y, w = self.self_attn(h, mask=src_mask, need_weights=maps is not None)
            if maps is not None:
                maps.append(w)
            return y

        x = residual(x, attend, self.norm1, self.drop, self.pre)
        return residual(x, self.ff, self.norm2, self.drop, self.pre)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.pre = cfg.norm == "pre"
        self.self_attn = MultiHeadAttention(cfg.n_embd, cfg.n_head, cfg.dropout, cfg.bias, cfg.sdpa)
        self.cross_attn = MultiHeadAttention(cfg.n_embd, cfg.n_head, cfg.dropout, cfg.bias, cfg.sdpa)
        self.ff = FeedForward(cfg)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
                                              for _ in range(3))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, memory: Tensor, src_mask: Tensor, tgt_mask: Tensor | None = None,
                cache: dict | None = None, maps: dict | None = None) -> Tensor:
        """tgt_mask: padding keep mask of the targets (B, 1, 1, T); the causal mask is always applied."""
        keep = maps is not None

        def self_attend(h):  # position t sees targets 0..t only: it must not peek at the word it predicts
            y, w = self.self_attn(h, mask=tgt_mask, causal=True, cache=None if cache is None else cache["self"],
                                  need_weights=keep)
            if keep:
                maps["self"].append(w)
            return y

        def cross_attend(h):  # every target position looks at the whole source sentence
            y, w = self.cross_attn(h, kv=memory, mask=src_mask, cache=None if cache is None else cache["cross"],
                                   need_weights=keep)
            if keep:
                maps["cross"].append(w)
            return y

        x = residual(x, self_attend, self.norm1, self.drop, self.pre)
        x = residual(x, cross_attend, self.norm2, self.drop, self.pre)
        return residual(x, self.ff, self.norm3, self.drop, self.pre)


class Stack(nn.Module):
    """n layers and the optional final LayerNorm (torch.nn.TransformerEncoder/Decoder's `norm`)."""

    def __init__(self, layer: type, n: int, cfg: TransformerConfig):
        super().__init__()
        self.layers = nn.ModuleList(layer(cfg) for _ in range(n))
        self.norm = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias) if cfg.final_norm else nn.Identity()


class DecoderCache:
    """Per decoder layer: the self-attention keys/values of the tokens so far and the memory's projections."""

    def __init__(self, n_layer: int):  # the decoder's depth: cfg.dec_depth
        self.layers = [{"self": {}, "cross": {}} for _ in range(n_layer)]
        self.pos = 0  # tokens decoded so far (the next one's position)

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows `index` (beam search: each surviving beam takes its parent's cache)."""
        for layer in self.layers:
            for d in layer.values():
                for k in d:
                    d[k] = d[k].index_select(0, index)


# -------------------------------------------------------------------------------- model

class Transformer(nn.Module):
    """src (B, S), tgt_in (B, T) token ids -> logits (B, T, tgt_vocab)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.src_embed = Embed(cfg.src_vocab, cfg)
        self.tgt_embed = Embed(cfg.tgt_vocab, cfg)
        self.encoder = Stack(EncoderLayer, cfg.enc_depth, cfg)
        self.decoder = Stack(DecoderLayer, cfg.dec_depth, cfg)
        self.head = nn.Linear(cfg.n_embd, cfg.tgt_vocab, bias=False)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)  # as torch.nn.Transformer initialises its matrices
        for emb in (self.src_embed.tok, self.tgt_embed.tok):
            nn.init.normal_(emb.weight, std=cfg.n_embd ** -0.5)  # * sqrt(n_embd) gives unit-variance inputs
            emb.weight.data[PAD] = 0.0
        if cfg.tie_weights:
            self.head.weight = self.tgt_embed.tok.weight  # reading a word and writing it share one table

    def encode(self, src: Tensor, maps: list | None = None) -> tuple[Tensor, Tensor]:
        """-> memory (B, S, C) and the source keep mask (B, 1, 1, S)."""
        src_mask = padding_mask(src, PAD)
        return self._encoder(self.src_embed(src), src_mask, maps), src_mask

    def _encoder(self, x: Tensor, src_mask: Tensor, maps: list | None = None) -> Tensor:
        """Embedded source (B, S, C) -> memory (B, S, C)."""
        for layer in self.encoder.layers:
            x = layer(x, src_mask, maps)
        return self.encoder.norm(x)

    def stacks(self, xs: Tensor, xt: Tensor, src_mask: Tensor, tgt_mask: Tensor | None = None) -> Tensor:
        """Embedded source (B, S, C) and target (B, T, C) -> decoder output (B, T, C), no head.

        Exactly what torch.nn.Transformer computes (it has no embeddings or head): the equivalence
        tests and the benchmark call this with the same inputs as the reference.
        """
        memory = self._encoder(xs, src_mask)
        for layer in self.decoder.layers:
            xt = layer(xt, memory, src_mask, tgt_mask)
        return self.decoder.norm(xt)

    def decode(self, tgt_in: Tensor, memory: Tensor, src_mask: Tensor, cache: DecoderCache | None = None,
               maps: dict | None = None) -> Tensor:
        """Logits (B, T, V) for target positions; with a cache, tgt_in holds only the new tokens."""
        if cache is not None and len(cache.layers) != len(self.decoder.layers):  # not an IndexError mid-stack
            raise ValueError(f"DecoderCache has {len(cache.layers)} layers, the decoder {len(self.decoder.layers)}; "
                             "build DecoderCache(model.cfg.dec_depth)")
        start = cache.pos if cache is not None else 0
        # with a cache, earlier tokens are real (never padding), so only full passes need the padding mask
        tgt_mask = padding_mask(tgt_in, PAD) if cache is None else None
        x = self.tgt_embed(tgt_in, start)
        for i, layer in enumerate(self.decoder.layers):
            x = layer(x, memory, src_mask, tgt_mask, None if cache is None else cache.layers[i], maps)
        if cache is not None:
            cache.pos += tgt_in.shape[1]
        return self.head(self.decoder.norm(x))

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        memory, src_mask = self.encode(src)
        return self.decode(tgt_in, memory, src_mask)

    def attention_maps(self, src: Tensor, tgt_in: Tensor) -> dict[str, list[Tensor]]:
        """Teacher-forced weights, one (B, nh, T_q, T_k) tensor per layer: {"encoder", "self", "cross"}."""
        enc: list = []
        dec: dict = {"self": [], "cross": []}
        memory, src_mask = self.encode(src, enc)
        self.decode(tgt_in, memory, src_mask, maps=dec)
        return {"encoder": enc, **dec}


# -------------------------------------------------------------------------------- objective

def label_smoothed_cross_entropy(logits: Tensor, target: Tensor, eps: float = 0.1, ignore_index: int = PAD) -> Tensor:
    """Mean over non-ignored tokens of (1 - eps) * NLL(target) + eps * mean over classes of -log p.

    The target distribution puts 1 - eps on the reference word and spreads eps over the whole
    vocabulary (Szegedy et al. 2016; section 5.4 of the paper), as F.cross_entropy(label_smoothing=eps).
    """
    logp = F.log_softmax(logits.float(), dim=-1)  # (N, V)
    keep = target != ignore_index
    nll = -logp.gather(-1, target.clamp(min=0)[..., None]).squeeze(-1)  # (N,)
    smooth = -logp.mean(-1)
    loss = (1 - eps) * nll + eps * smooth
    return (loss * keep).sum() / keep.sum().clamp(min=1)


def transformer_loss(model: nn.Module, batch: dict, label_smoothing: float = 0.1) -> Tensor:
    logits = model(batch["src"], batch["tgt_in"])
    return label_smoothed_cross_entropy(logits.flatten(0, 1), batch["tgt_out"].flatten(), label_smoothing)


# -------------------------------------------------------------------------------- torch.nn weights

def mha_from_torch(ours: MultiHeadAttention, ref: nn.MultiheadAttention) -> None:
    """Copy torch's stacked in_proj (q; k; v rows) and out_proj into our four projections."""
    with torch.no_grad():
        for i, lin in enumerate((ours.q, ours.k, ours.v)):
            lin.weight.copy_(ref.in_proj_weight.chunk(3)[i])
            if lin.bias is not None:
                lin.bias.copy_(ref.in_proj_bias.chunk(3)[i])
        ours.proj.weight.copy_(ref.out_proj.weight)
        if ours.proj.bias is not None:
            ours.proj.bias.copy_(ref.out_proj.bias)


def _copy(dst: nn.Module, src: nn.Module) -> None:
    dst.load_state_dict(src.state_dict())


def _check_fits(cfg: TransformerConfig, ref: nn.Transformer) -> None:
    """Raise ValueError, naming every difference, if ref's weights need another TransformerConfig than cfg.

    Without it zip() would drop surplus layers without a word, and pre-LN weights would load into a
    post-LN model: the shapes agree, only the outputs are wrong. nn.Transformer's layers are copies of
    one layer, so the first speaks for all.
    """
    first = (*ref.encoder.layers, *ref.decoder.layers)[0]
    act = getattr(first.activation, "__name__", type(first.activation).__name__).lower()  # F.relu, nn.ReLU() -> relu
    if act not in ("relu", "gelu"):
        raise ValueError(f"nn.Transformer's activation is {act!r}; this model has only 'relu' and 'gelu'")
    E, D, C = len(ref.encoder.layers), len(ref.decoder.layers), first.self_attn.embed_dim
    last_norm = ref.encoder.norm is not None  # nn.Transformer always has one; a custom_encoder may not
    # equal depths with neither stack set apart: the fix is n_layer (both rows then name it, the dict keeps one)
    both = "n_layer" if E == D and not (cfg.n_enc_layer or cfg.n_dec_layer) else None
    rows = [  # (what nn.Transformer has, our field, the value it needs, ours)
        (f"num_encoder_layers={E}", both or "n_enc_layer", E, cfg.enc_depth),
        (f"num_decoder_layers={D}", both or "n_dec_layer", D, cfg.dec_depth),
        (f"norm_first={first.norm_first}", "norm", "pre" if first.norm_first else "post", cfg.norm),
        (f"d_model={C}", "n_embd", C, cfg.n_embd),
        (f"nhead={first.self_attn.num_heads}", "n_head", first.self_attn.num_heads, cfg.n_head),
        (f"dim_feedforward={first.linear1.out_features}", "n_ff", first.linear1.out_features, cfg.n_ff),
        (f"activation={act!r}", "activation", act, cfg.activation),
        (f"bias={first.linear1.bias is not None}", "bias", first.linear1.bias is not None, cfg.bias),
        (f"layer_norm_eps={first.norm1.eps}", "layer_norm_eps", first.norm1.eps, cfg.layer_norm_eps),
        ("a final LayerNorm" if last_norm else "no final LayerNorm", "final_norm", last_norm, cfg.final_norm)]
    bad = [r for r in rows if r[2] != r[3]]
    if bad:
        has = ", ".join(f"{theirs} (this model {ours!r})" for theirs, _, _, ours in bad)
        fix = ", ".join(f"{k}={v!r}" for k, v in {field: need for _, field, need, _ in bad}.items())
        raise ValueError(f"nn.Transformer has {has}; build TransformerConfig({fix}) to load its weights")


def from_torch(model: Transformer, ref: nn.Transformer) -> None:
    """Our encoder/decoder stacks take the weights of a torch.nn.Transformer of the same shape.

    Names map one to one: self_attn -> self_attn, multihead_attn -> cross_attn, linear1/linear2 ->
    ff.fc1/ff.fc2, norm1..3 -> norm1..3, encoder.norm / decoder.norm -> the same. (nn.Transformer has
    no embeddings or output head: those keep ours.) A different shape raises before anything is copied.
    """
    _check_fits(model.cfg, ref)
    for ours, theirs in zip(model.encoder.layers, ref.encoder.layers):
        mha_from_torch(ours.self_attn, theirs.self_attn)
        _copy(ours.ff.fc1, theirs.linear1), _copy(ours.ff.fc2, theirs.linear2)
        _copy(ours.norm1, theirs.norm1), _copy(ours.norm2, theirs.norm2)
    for ours, theirs in zip(model.decoder.layers, ref.decoder.layers):
        mha_from_torch(ours.self_attn, theirs.self_attn)
        mha_from_torch(ours.cross_attn, theirs.multihead_attn)
        _copy(ours.ff.fc1, theirs.linear1), _copy(ours.ff.fc2, theirs.linear2)
        _copy(ours.norm1, theirs.norm1), _copy(ours.norm2, theirs.norm2), _copy(ours.norm3, theirs.norm3)
    _copy(model.encoder.norm, ref.encoder.norm), _copy(model.decoder.norm, ref.decoder.norm)
