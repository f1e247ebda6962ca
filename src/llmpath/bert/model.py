"""BERT: a bidirectional Transformer encoder pretrained with masked-language modelling and next-sentence prediction.

    llmpath bert train --preset=small        # WordPiece + MLM + NSP on CPU, see docs/tutorials/06_bert.md
    llmpath bert fill "今天的菜很[MASK]吃"

Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding"
(https://arxiv.org/abs/1810.04805). Token + segment + learned position embeddings, summed, LayerNorm ->
n_layer post-LN encoder blocks (x = LN(x + attn(x)), x = LN(x + ffn(x)), exact GELU) -> hidden states.
No causal mask: every token sees the whole sentence pair, only padding is hidden. The pooler (tanh of a
linear layer on the [CLS] state) feeds the NSP and classification heads; the MLM head decodes with the
word-embedding matrix itself. The layers and their order are BertForPreTraining's, so hf.py copies its
weights one tensor at a time (the equality tests are in tests/test_bert_model.py).

The attention is the Transformer stage's (llmpath.transformer.attention): the encoder of
"Attention Is All You Need" is exactly what BERT stacks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmpath.config import check_heads, opt
from llmpath.transformer.attention import MultiHeadAttention, padding_mask

IGNORE = -100  # label of a position (MLM) or a pair (NSP) that has nothing to predict: F.cross_entropy's default


@dataclass
class BERTConfig:
    vocab_size: int = opt(0, "WordPiece vocabulary size (set from the tokenizer when 0)", min=0)
    max_len: int = opt(128, "longest input in tokens, [CLS] and [SEP]s included (learned positions)", min=2)
    type_vocab_size: int = opt(2, "segment ids: 0 for sentence A, 1 for sentence B", min=1)
    n_layer: int = opt(4, "encoder blocks", min=1)
    n_head: int = opt(4, "attention heads per block (must divide n_embd)", min=1)
    n_embd: int = opt(256, "width of the hidden states (BERT-base: 768)", min=1)
    n_ff: int = opt(1024, "inner width of the feed-forward (BERT: 4 n_embd)", min=1)
    dropout: float = opt(0.1, "dropout on embeddings, attention weights and residual branches", min=0, below=1)
    layer_norm_eps: float = opt(1e-12, "LayerNorm epsilon (BERT: 1e-12)", above=0)
    sdpa: bool = opt(True, "attention through F.scaled_dot_product_attention (fast path); false = hand-written")
    pad_id: int = opt(0, "id of [PAD]: positions holding it are masked out of attention (set from the tokenizer)",
                      min=0)

    def check(self) -> None:
        check_heads(self.n_head, self.n_embd)


def init_weights(m: nn.Module) -> None:
    """BERT's init (and Hugging Face's): N(0, 0.02) matrices and embeddings, zero biases, LayerNorm = identity."""
    if isinstance(m, (nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, mean=0.0, std=0.02)
    if isinstance(m, nn.Linear) and m.bias is not None:
        nn.init.zeros_(m.bias)
    if isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# -------------------------------------------------------------------------------- blocks

class FeedForward(nn.Module):
    """Position-wise: n_embd -> n_ff -> GELU (the exact erf form, as BERT) -> n_embd.

    Not the Transformer stage's FeedForward: that one has dropout between the two layers
    (as torch.nn.Transformer), BERT has none there.
    """

    def __init__(self, cfg: BERTConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.n_embd, cfg.n_ff)
        self.fc2 = nn.Linear(cfg.n_ff, cfg.n_embd)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Layer(nn.Module):
    """Post-LN encoder block: each sub-layer's output is added to its input, then the sum is normalised."""

    def __init__(self, cfg: BERTConfig):
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.n_embd, cfg.n_head, cfg.dropout, bias=True, sdpa=cfg.sdpa)
        self.norm1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.ff = FeedForward(cfg)
        self.norm2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, mask: Tensor | None, maps: list | None = None) -> Tensor:
        y, w = self.self_attn(x, mask=mask, need_weights=maps is not None)  # weights: hand-written path
        if maps is not None:
            maps.append(w)  # (B, nh, T, T)
        x = self.norm1(x + self.drop(y))
        return self.norm2(x + self.drop(self.ff(x)))


# -------------------------------------------------------------------------------- models

class BERT(nn.Module):
    """(B, T) token ids -> hidden states (B, T, n_embd) and the pooled [CLS] state (B, n_embd)."""

    def __init__(self, cfg: BERTConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("BERTConfig.vocab_size must be set (from the tokenizer: vocab_size=tok.vocab_size)")
        cfg.check()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.seg = nn.Embedding(cfg.type_vocab_size, cfg.n_embd)
        self.pos = nn.Embedding(cfg.max_len, cfg.n_embd)
        self.norm = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.n_layer))
        self.pool = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.apply(init_weights)

    def forward(self, ids: Tensor, segments: Tensor | None = None, attention_mask: Tensor | None = None,
                maps: list | None = None) -> tuple[Tensor, Tensor]:
        """ids, segments (B, T); attention_mask (B, T): 1 = real token, 0 = padding (default: ids != pad_id).

        maps: a list to which each layer appends its attention weights (B, nh, T, T), for figures.
        """
        B, T = ids.shape
        if T > self.cfg.max_len:
            raise ValueError(f"input of {T} tokens is longer than max_len={self.cfg.max_len}; cut it to max_len")
        keep = ids != self.cfg.pad_id if attention_mask is None else attention_mask.bool()  # (B, T)
        # with no padding at all the mask hides nothing: leaving it out lets the fused kernel skip it
        mask = None if bool(keep.all()) else padding_mask(keep)  # (B, 1, 1, T)
        if segments is None:
            segments = torch.zeros_like(ids)  # one sentence: everything is segment A
        pos = torch.arange(T, device=ids.device)
        x = self.drop(self.norm(self.tok(ids) + self.seg(segments) + self.pos(pos)))  # (B, T, C)
        for layer in self.layers:
            x = layer(x, mask, maps)
        # [CLS] has attended to every token: its final state, through one tanh layer, stands for the whole input
        return x, torch.tanh(self.pool(x[:, 0]))


class MLMHead(nn.Module):
    """Hidden state -> dense -> GELU -> LayerNorm -> vocabulary logits (the decoder is tied to the word embeddings)."""

    def __init__(self, cfg: BERTConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.norm = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.decoder = nn.Linear(cfg.n_embd, cfg.vocab_size)  # weight replaced by the tied one; the bias is its own

    def forward(self, h: Tensor) -> Tensor:
        return self.decoder(self.norm(F.gelu(self.dense(h))))


class BERTPretraining(nn.Module):
    """BERT with its two pretraining heads: masked-token logits and IsNext/NotNext logits."""

    def __init__(self, cfg: BERTConfig):
        super().__init__()
        self.cfg = cfg
        self.bert = BERT(cfg)
        self.mlm = MLMHead(cfg)
        self.nsp = nn.Linear(cfg.n_embd, 2)  # 0 = B follows A (IsNext), 1 = B is a random sentence
        self.mlm.apply(init_weights)
        self.nsp.apply(init_weights)
        # tied: the matrix that turns a token into a vector also scores vectors against every token
        self.mlm.decoder.weight = self.bert.tok.weight

    def forward(self, ids: Tensor, segments: Tensor | None = None, attention_mask: Tensor | None = None,
                mlm_labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """-> (MLM logits, NSP logits (B, 2)). MLM logits are (N, V) at the N positions where mlm_labels != -100,
        in row-major order, when labels are given; (B, T, V) at every position otherwise."""
        h, pooled = self.bert(ids, segments, attention_mask)
        if mlm_labels is not None:
            # only ~15% of positions are predicted: the (C x V) decoder, the largest matmul, runs on those alone
            h = h[mlm_labels != IGNORE]  # (N, C)
        return self.mlm(h), self.nsp(pooled)


class BERTClassifier(nn.Module):
    """Sequence classification (BertForSequenceClassification's head): dropout + linear on the pooled [CLS] state."""

    def __init__(self, bert: BERT, n_classes: int, dropout: float = 0.1):
        super().__init__()
        if n_classes < 1:
            raise ValueError(f"n_classes={n_classes}; a classifier needs at least one class")
        self.cfg = bert.cfg
        self.bert = bert
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(bert.cfg.n_embd, n_classes)
        self.head.apply(init_weights)

    def forward(self, ids: Tensor, segments: Tensor | None = None, attention_mask: Tensor | None = None) -> Tensor:
        """-> logits (B, n_classes)."""
        _, pooled = self.bert(ids, segments, attention_mask)
        return self.head(self.drop(pooled))
