"""Greedy and beam-search decoding, batched over sentences (and beams).

    out = greedy(model, src, src_len, max_len=50)            # out.tokens (B,L), out.attn (B,L,S)
    out = beam_search(model, src, src_len, beam=5, length_penalty=1.0)

Beam search keeps the K best partial translations of every sentence by total log-probability
log p(y_1..y_t | x). A finished hypothesis (it emitted <eos>) keeps its score and only extends with
<pad> at no cost, so it competes with the live ones. At the end the K candidates are ranked by
score / lp(len) with the GNMT length penalty lp(n) = ((5 + n) / 6) ** alpha (Wu et al. 2016,
https://arxiv.org/abs/1609.08144); alpha = 0 ranks by raw log-probability, which favours short
outputs. With beam = 1 the search is exactly greedy decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from llmpath.seq2seq.data import BOS, EOS, PAD


@dataclass
class Decoded:
    tokens: Tensor  # (B, L) ids, EOS included, PAD after it
    attn: Tensor | None  # (B, L, S) attention weights of each output step (None without attention)
    scores: Tensor  # (B,) total log-probability of the chosen output


def _max_len(src_len: Tensor, max_len: int) -> int:
    return int(min(max_len, int(src_len.max()) * 2 + 10))


def _index_state(state, idx: Tensor):
    if isinstance(state, tuple):
        return tuple(s[:, idx] for s in state)
    return state[:, idx]


@torch.no_grad()
def greedy(model, src: Tensor, src_len: Tensor, max_len: int = 60) -> Decoded:
    """Pick the most probable next token at every step; stop when every sentence has emitted <eos>."""
    B = src.shape[0]
    mem, state, feed = model.encode(src, src_len)
    y = torch.full((B,), BOS, dtype=torch.long, device=src.device)
    done = torch.zeros(B, dtype=torch.bool, device=src.device)
    scores = torch.zeros(B, device=src.device)
    toks, attns = [], []
    for _ in range(_max_len(src_len, max_len)):
        logits, state, feed, w = model.step(y, state, feed, mem)
        logp = torch.log_softmax(logits.float(), -1)
        y = logp.argmax(-1)
        scores += torch.where(done, torch.zeros_like(scores), logp.gather(1, y[:, None]).squeeze(1))
        y = y.masked_fill(done, PAD)
        toks.append(y)
        if w is not None:
            attns.append(w.masked_fill(done[:, None], 0.0))
        done |= y == EOS
        if bool(done.all()):
            break
    return Decoded(torch.stack(toks, 1), torch.stack(attns, 1) if attns else None, scores)


def length_penalty(n: Tensor, alpha: float) -> Tensor:
    """GNMT: ((5 + n) / 6) ** alpha."""
    return ((5.0 + n.float()) / 6.0) ** alpha


class Beams:
    """The search of batched beam search, whatever the model: B sentences x K beams as B*K rows.

    Scores are total log-probabilities; a finished hypothesis only continues with PAD, at no cost;
    the final pick ranks by score / GNMT length penalty. The caller runs its model on the rows and
    reorders its own state (RNN state, KV cache, tokens so far) by the parents `step` returns.
    """

    def __init__(self, B: int, K: int, device: torch.device | str):
        self.B, self.K = B, K
        self.scores = torch.full((B, K), float("-inf"), device=device)
        self.scores[:, 0] = 0.0  # all beams start identical: keep one so the first step is not K copies
        self.done = torch.zeros(B * K, dtype=torch.bool, device=device)
        self.lengths = torch.zeros(B * K, dtype=torch.long, device=device)
        self.offset = torch.arange(B, device=device) * K  # first row of each sentence

    def step(self, logp: Tensor) -> tuple[Tensor, Tensor]:
        """logp (B*K, V) of the next token -> (parent row, new token), each (B*K,)."""
        B, K, V = self.B, self.K, logp.shape[-1]
        finished = torch.full_like(logp, float("-inf"))
        finished[:, PAD] = 0.0
        logp = torch.where(self.done[:, None], finished, logp)
        total = (self.scores.view(B * K, 1) + logp).view(B, K * V)
        self.scores, flat = total.topk(K, dim=-1)  # (B, K)
        parent = (flat // V + self.offset[:, None]).view(-1)  # row of each new beam's parent
        y = (flat % V).view(-1)
        was_done = self.done[parent]
        self.lengths = self.lengths[parent] + (~was_done).long()
        self.done = was_done | (y == EOS)
        return parent, y

    def all_done(self) -> bool:
        return bool(self.done.all())

    def best(self, alpha: float) -> tuple[Tensor, Tensor]:
        """Row of each sentence's best hypothesis (B,) and its total log-probability (B,)."""
        ranked = self.scores.view(-1) / length_penalty(self.lengths, alpha)
        rows = ranked.view(self.B, self.K).argmax(-1) + self.offset
        return rows, self.scores.view(-1)[rows]


@torch.no_grad()
def beam_search(model, src: Tensor, src_len: Tensor, beam: int = 5, length_penalty_alpha: float = 1.0,
                max_len: int = 60) -> Decoded:
    """Batched beam search: B sentences x K beams decoded together as B*K rows."""
    if beam <= 1:
        return greedy(model, src, src_len, max_len)
    B, K, dev = src.shape[0], beam, src.device
    mem, state, feed = model.encode(src, src_len)
    rows = torch.arange(B, device=dev).repeat_interleave(K)  # (B*K,) sentence of each row
    mem, state, feed = mem.index_select(rows), _index_state(state, rows), feed[rows]
    beams = Beams(B, K, dev)
    y = torch.full((B * K,), BOS, dtype=torch.long, device=dev)
    toks = torch.zeros(B * K, 0, dtype=torch.long, device=dev)
    attns: Tensor | None = None
    for _ in range(_max_len(src_len, max_len)):
        logits, state, feed, w = model.step(y, state, feed, mem)
        if w is not None:
            w = w.masked_fill(beams.done[:, None], 0.0)  # a finished hypothesis attends to nothing
        parent, y = beams.step(torch.log_softmax(logits.float(), -1))  # (B*K,) each
        state, feed = _index_state(state, parent), feed[parent]
        toks = torch.cat([toks[parent], y[:, None]], 1)
        if w is not None:
            w = w[parent][:, None]  # (B*K, 1, S)
            attns = w if attns is None else torch.cat([attns[parent], w], 1)
        if beams.all_done():
            break
    best, scores = beams.best(length_penalty_alpha)
    return Decoded(toks[best], None if attns is None else attns[best], scores)


def translate_batch(model, src: Tensor, src_len: Tensor, beam: int = 1, length_penalty_alpha: float = 1.0,
                    max_len: int = 60) -> Decoded:
    model.eval()
    if beam <= 1:
        return greedy(model, src, src_len, max_len)
    return beam_search(model, src, src_len, beam, length_penalty_alpha, max_len)
