"""Encoder-decoder translation with and without attention (Bahdanau 2015, Luong 2015), in one file.

    model = Seq2Seq(Seq2SeqConfig(src_vocab=1775, tgt_vocab=3935, attention="bahdanau"))
    logits, attn = model(batch["src"], batch["src_len"], batch["tgt_in"])   # (B,T,V), (B,T,S)

Encoder: embeddings -> bidirectional GRU/LSTM (our stage-2 cells by default, `impl="torch"` for the
torch.nn fast path). The backward direction reads each sentence from its own last real token, so
padding never leaks into the encoding (we run two one-directional RNNs and reverse each row within
its length instead of packing). Its outputs (B,S,2H) are projected to the decoder size H: the
"memory" M the attention reads.

Decoders (one step at a time, so training and decoding share the code):
- "none":     Cho et al. 2014 / Sutskever et al. 2014: one fixed context vector c (the encoder's final
              states) fed at every step. The whole sentence must fit through c: the bottleneck.
- "bahdanau": Bahdanau et al. 2015 (https://arxiv.org/abs/1409.0473): the previous decoder state
              s_{t-1} queries M with the additive score v^T tanh(W_q s + W_k m_j); the context c_t
              feeds the RNN: s_t = RNN([e(y_{t-1}); c_t], s_{t-1}); logits from [s_t; c_t; e(y_{t-1})].
- "dot" | "general" | "concat": Luong et al. 2015 (https://arxiv.org/abs/1508.04025): the RNN first
              (s_t = RNN([e(y_{t-1}); h~_{t-1}], s_{t-1}), input feeding), then s_t queries with
              s^T m_j, s^T W_a h_j (the encoder output itself) or v^T tanh(W [s; m_j]);
              h~_t = tanh(W_c [c_t; s_t]); logits = W_o h~_t. Dot and general scores are divided by
              sqrt(H) (`scale`, as in Vaswani et al. 2017, not in Luong's paper): unscaled they grew to a
              standard deviation of ~20 within 150 steps, the softmax saturated (attention entropy ~0)
              and its gradient vanished.

Attention modules are tiny and separate: `score(query (B,H), keys (B,S,H)) -> (B,S)`; padded source
positions are set to -inf before the softmax, so they get exactly zero weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmpath.config import opt
from llmpath.seq2seq.data import PAD

ATTENTIONS = ("none", "bahdanau", "dot", "general", "concat")
LUONG = ("dot", "general", "concat")


def make_rnn(cell: str, input_size: int, hidden_size: int, impl: str = "ours") -> nn.Module:
    """One-layer, one-direction batch-first RNN: stage 2's hand-written cells or torch.nn."""
    from llmpath.rnn.model import make_rnn as _make

    return _make(cell, input_size, hidden_size, num_layers=1, batch_first=True, impl=impl)


@dataclass
class Seq2SeqConfig:
    src_vocab: int = opt(100, "source vocabulary size (set from the data)", min=1)
    tgt_vocab: int = opt(100, "target vocabulary size (set from the data)", min=1)
    attention: Literal["none", "bahdanau", "dot", "general", "concat"] = opt("bahdanau", "decoder attention")
    cell: Literal["gru", "lstm"] = opt("gru", "recurrent cell of encoder and decoder")
    emb: int = opt(128, "embedding size", min=1)
    hidden: int = opt(256, "hidden size per direction (encoder) and of the decoder", min=1)
    attn_dim: int = opt(128, "hidden size of the additive scores (bahdanau, concat)", min=1)
    dropout: float = opt(0.2, "dropout on embeddings and decoder outputs", min=0, below=1)
    impl: Literal["ours", "torch"] = opt("ours", "ours = stage 2's hand-written cells, torch = torch.nn fast path")
    # Vaswani et al. 2017's 1/sqrt(d) on dot products; see the module docstring
    scale: bool = opt(True, "divide Luong dot/general scores by sqrt(hidden) so the softmax does not saturate")


# -------------------------------------------------------------------------------- attention

class Attention(nn.Module):
    """Base: softmax over masked scores, then the weighted sum of the values (the memory)."""

    reads_encoder = False  # precompute() reads the memory M (B,S,H); True: the raw encoder outputs (B,S,2H)

    def precompute(self, keys: Tensor) -> Tensor:
        """Work that depends only on the memory (done once per sentence, not per step)."""
        return keys

    def score(self, query: Tensor, keys: Tensor, pre: Tensor) -> Tensor:  # (B,H), (B,S,H) -> (B,S)
        raise NotImplementedError

    def forward(self, query: Tensor, keys: Tensor, mask: Tensor, pre: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """query (B,H), keys (B,S,H), mask (B,S) True at real tokens -> context (B,H), weights (B,S)."""
        scores = self.score(query, keys, self.precompute(keys) if pre is None else pre)
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)  # padding: exactly 0
        return torch.bmm(weights.unsqueeze(1), keys).squeeze(1), weights


class AdditiveAttention(Attention):
    """Bahdanau: score(q, m_j) = v^T tanh(W_q q + W_k m_j)."""

    def __init__(self, q_dim: int, k_dim: int, attn_dim: int):
        super().__init__()
        self.W_q = nn.Linear(q_dim, attn_dim, bias=False)
        self.W_k = nn.Linear(k_dim, attn_dim, bias=True)
        self.v = nn.Linear(attn_dim, 1, bias=False)

    def precompute(self, keys: Tensor) -> Tensor:
        return self.W_k(keys)  # (B,S,A)

    def score(self, query, keys, pre):
        return self.v(torch.tanh(pre + self.W_q(query).unsqueeze(1))).squeeze(-1)


class DotAttention(Attention):
    """Luong dot: score(q, m_j) = q^T m_j (no parameters), optionally divided by sqrt(H)."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def score(self, query, keys, pre):
        return torch.bmm(keys, query.unsqueeze(-1)).squeeze(-1) * self.scale


class GeneralAttention(Attention):
    """Luong general: score(q, h_j) = q^T W_a h_j, with W_a reading the encoder outputs h_j (B,S,2H) as in the paper.

    (Reading the memory m_j = W_m h_j instead, the score q^T W_a W_m h_j multiplies two trained matrices: on the
    small preset its scores had twice the spread after 150 steps (std 9.5 vs 5.0) and a near one-hot softmax.)
    """

    reads_encoder = True

    def __init__(self, q_dim: int, k_dim: int, scale: float = 1.0):
        super().__init__()
        self.W = nn.Linear(k_dim, q_dim, bias=False)
        self.scale = scale

    def precompute(self, keys: Tensor) -> Tensor:
        return self.W(keys)

    def score(self, query, keys, pre):
        return torch.bmm(pre, query.unsqueeze(-1)).squeeze(-1) * self.scale


class ConcatAttention(AdditiveAttention):
    """Luong concat: score(q, m_j) = v^T tanh(W [q; m_j]); W split into W_q and W_k it is the additive form,
    the difference to Bahdanau is where it sits (queried by s_t after the RNN step, not s_{t-1})."""


def make_attention(kind: str, q_dim: int, k_dim: int, attn_dim: int, scale: float = 1.0) -> Attention | None:
    if kind == "none":
        return None
    if kind in ("bahdanau",):
        return AdditiveAttention(q_dim, k_dim, attn_dim)
    if kind == "concat":
        return ConcatAttention(q_dim, k_dim, attn_dim)
    if kind == "dot":
        return DotAttention(scale)
    if kind == "general":
        return GeneralAttention(q_dim, k_dim, scale)
    raise ValueError(f"unknown attention '{kind}'; choose one of: {', '.join(ATTENTIONS)}")


# -------------------------------------------------------------------------------- encoder

def reverse_padded(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse each row of x (B,S,...) within its length; padding stays at the end.

    reverse_padded([[1,2,3,0]], [3]) -> [[3,2,1,0]]
    """
    B, S = x.shape[:2]
    t = torch.arange(S, device=x.device).unsqueeze(0)  # (1,S)
    L = lengths.to(x.device).unsqueeze(1)
    idx = torch.where(t < L, L - 1 - t, t)  # (B,S)
    idx = idx.view(B, S, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, idx)


class Encoder(nn.Module):
    """Bidirectional RNN over embeddings; padding-safe. Returns outputs (B,S,2H) and final (B,2H)."""

    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__()
        self.cell = cfg.cell
        self.embed = nn.Embedding(cfg.src_vocab, cfg.emb, padding_idx=PAD)
        self.fwd = make_rnn(cfg.cell, cfg.emb, cfg.hidden, cfg.impl)
        self.bwd = make_rnn(cfg.cell, cfg.emb, cfg.hidden, cfg.impl)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, src: Tensor, src_len: Tensor) -> tuple[Tensor, Tensor]:
        x = self.drop(self.embed(src))
        out_f, _ = self.fwd(x)  # forward direction: padding comes after the real tokens, harmless
        out_b, _ = self.bwd(reverse_padded(x, src_len))
        out_b = reverse_padded(out_b, src_len)  # back to source order: out_b[:, j] has read x_j..x_{len-1}
        last = (src_len - 1).clamp(min=0).to(src.device)
        h_f = out_f[torch.arange(src.shape[0], device=src.device), last]  # state after the last real token
        h_b = out_b[:, 0]  # the backward direction ends at position 0
        mask = (torch.arange(src.shape[1], device=src.device)[None] < src_len.to(src.device)[:, None])
        out = torch.cat([out_f, out_b], dim=-1) * mask.unsqueeze(-1)  # zero the padded positions
        return out, torch.cat([h_f, h_b], dim=-1)


# -------------------------------------------------------------------------------- model

@dataclass
class Memory:
    """What the decoder reads at every step (expanded/reordered together for beam search)."""

    keys: Tensor  # (B,S,H) projected encoder outputs
    pre: Tensor | None  # attention.precompute(keys)
    mask: Tensor  # (B,S) True at real tokens
    context: Tensor  # (B,H) fixed context for the no-attention decoder

    def index_select(self, idx: Tensor) -> "Memory":
        return Memory(self.keys[idx], None if self.pre is None else self.pre[idx], self.mask[idx], self.context[idx])


class Seq2Seq(nn.Module):
    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__()
        if cfg.attention not in ATTENTIONS:
            raise ValueError(f"unknown attention '{cfg.attention}'; choose one of: {', '.join(ATTENTIONS)}")
        self.cfg = cfg
        H, E = cfg.hidden, cfg.emb
        self.encoder = Encoder(cfg)
        self.bridge = nn.Linear(2 * H, H)  # encoder summary -> decoder initial state (and fixed context)
        self.to_keys = nn.Linear(2 * H, H, bias=False)  # encoder outputs -> memory M (B,S,H)
        self.embed = nn.Embedding(cfg.tgt_vocab, E, padding_idx=PAD)
        k_dim = 2 * H if cfg.attention == "general" else H  # general's W_a maps the encoder outputs itself
        self.attention = make_attention(cfg.attention, H, k_dim, cfg.attn_dim, H ** -0.5 if cfg.scale else 1.0)
        self.luong = cfg.attention in LUONG
        # the decoder RNN reads e(y_{t-1}) and one H-sized extra vector: c (none), c_t (bahdanau), h~_{t-1} (luong)
        self.rnn = make_rnn(cfg.cell, E + H, H, cfg.impl)
        if self.luong:
            self.combine = nn.Linear(2 * H, H, bias=False)  # h~_t = tanh(W_c [c_t; s_t])
            self.out = nn.Linear(H, cfg.tgt_vocab)
        else:
            self.pre_out = nn.Linear(2 * H + E, H)  # [s_t; c_t; e(y_{t-1})] -> H -> vocab
            self.out = nn.Linear(H, cfg.tgt_vocab)
        self.drop = nn.Dropout(cfg.dropout)

    # ---------------------------------------------------------------- encoding
    def encode(self, src: Tensor, src_len: Tensor) -> tuple[Memory, object, Tensor]:
        """-> memory, initial decoder state, initial feed vector."""
        enc, final = self.encoder(src, src_len)
        mask = torch.arange(src.shape[1], device=src.device)[None] < src_len.to(src.device)[:, None]
        keys = self.to_keys(enc)
        h0 = torch.tanh(self.bridge(final))  # (B,H)
        pre = None
        if self.attention is not None:
            pre = self.attention.precompute(enc if self.attention.reads_encoder else keys)
        mem = Memory(keys, pre, mask, h0)
        state = h0.unsqueeze(0).contiguous()
        if self.cfg.cell == "lstm":
            state = (state, torch.zeros_like(state))
        feed = h0.new_zeros(h0.shape)  # Luong's h~_0
        return mem, state, feed

    # ---------------------------------------------------------------- one decoder step
    def step(self, y_prev: Tensor, state, feed: Tensor, mem: Memory) -> tuple[Tensor, object, Tensor, Tensor | None]:
        """y_prev (B,) -> logits (B,V), new state, new feed, attention weights (B,S) or None."""
        e = self.drop(self.embed(y_prev))  # (B,E)
        weights = None
        if self.luong:
            out, state = self.rnn(torch.cat([e, feed], -1).unsqueeze(1), state)
            s = out[:, 0]
            ctx, weights = self.attention(s, mem.keys, mem.mask, mem.pre)
            feed = torch.tanh(self.combine(torch.cat([ctx, s], -1)))
            logits = self.out(self.drop(feed))
            return logits, state, feed, weights
        if self.attention is None:
            ctx = mem.context  # the same vector at every step: the bottleneck
        else:
            s_prev = (state[0] if isinstance(state, tuple) else state)[-1]
            ctx, weights = self.attention(s_prev, mem.keys, mem.mask, mem.pre)
        out, state = self.rnn(torch.cat([e, ctx], -1).unsqueeze(1), state)
        s = out[:, 0]
        hid = torch.tanh(self.pre_out(torch.cat([s, ctx, e], -1)))
        return self.out(self.drop(hid)), state, feed, weights

    # ---------------------------------------------------------------- training forward
    def forward(self, src: Tensor, src_len: Tensor, tgt_in: Tensor, teacher_forcing: float = 1.0
                ) -> tuple[Tensor, Tensor | None]:
        """Logits (B,T,V) for every target position and attention weights (B,T,S) (None without attention).

        With probability 1 - teacher_forcing a step is fed the model's own previous argmax instead of the
        reference token (one coin per step for the whole batch).
        """
        mem, state, feed = self.encode(src, src_len)
        T = tgt_in.shape[1]
        logits, attns = [], []
        y = tgt_in[:, 0]
        for t in range(T):
            lg, state, feed, w = self.step(y, state, feed, mem)
            logits.append(lg)
            if w is not None:
                attns.append(w)
            if t + 1 < T:
                use_gold = teacher_forcing >= 1.0 or float(torch.rand(())) < teacher_forcing
                y = tgt_in[:, t + 1] if use_gold else lg.argmax(-1).masked_fill(tgt_in[:, t + 1] == PAD, PAD)
        return torch.stack(logits, 1), (torch.stack(attns, 1) if attns else None)


def seq2seq_loss(model: nn.Module, batch: dict, teacher_forcing: float = 1.0, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy over real target tokens (PAD positions masked out)."""
    logits, _ = model(batch["src"], batch["src_len"], batch["tgt_in"], teacher_forcing)
    return F.cross_entropy(logits.flatten(0, 1), batch["tgt_out"].flatten(), ignore_index=PAD,
                           label_smoothing=label_smoothing)
