"""Greedy and beam-search decoding for the Transformer, with or without the decoder's KV cache.

    out = greedy(model, src, max_len=60)                    # out.tokens (B, L), EOS then PAD
    out = beam_search(model, src, beam=5, length_penalty_alpha=1.0)

Without a cache every step runs the decoder over the whole prefix y_1..y_t again: O(t) positions
per step, O(L^2) in all. With `DecoderCache` each layer keeps the keys and values of the tokens
already decoded (and the memory's projections), so a step feeds only the newest token: one row of
attention per layer. The outputs are the same (tested); only the work differs.

The search itself is stage 3's (llmpath.seq2seq.decode): scores are total log-probabilities, a
finished beam extends with <pad> at no cost, and the final ranking uses the GNMT length penalty.
"""

from __future__ import annotations

import torch
from torch import Tensor

from llmpath.seq2seq.data import BOS, EOS, PAD
from llmpath.seq2seq.decode import Beams, Decoded
from llmpath.transformer.model import DecoderCache, Transformer


def _max_len(model: Transformer, src: Tensor, max_len: int) -> int:
    longest = int((src != PAD).sum(1).max())
    return int(min(max_len, 2 * longest + 10, model.cfg.max_len - 1))


def _next_logp(model: Transformer, ys: Tensor, memory: Tensor, src_mask: Tensor, cache: DecoderCache | None) -> Tensor:
    """log p(next | prefix) (N, V): the whole prefix without a cache, only its last token with one."""
    logits = model.decode(ys, memory, src_mask) if cache is None else model.decode(ys[:, -1:], memory, src_mask, cache)
    return torch.log_softmax(logits[:, -1].float(), -1)


@torch.no_grad()
def greedy(model: Transformer, src: Tensor, max_len: int = 60, use_cache: bool = True) -> Decoded:
    """The most probable next token at every step, until every sentence has emitted <eos>."""
    model.eval()
    B = src.shape[0]
    memory, src_mask = model.encode(src)
    cache = DecoderCache(model.cfg.dec_depth) if use_cache else None
    ys = torch.full((B, 1), BOS, dtype=torch.long, device=src.device)
    done = torch.zeros(B, dtype=torch.bool, device=src.device)
    scores = torch.zeros(B, device=src.device)
    for _ in range(_max_len(model, src, max_len)):
        logp = _next_logp(model, ys, memory, src_mask, cache)
        y = logp.argmax(-1)
        scores += torch.where(done, torch.zeros_like(scores), logp.gather(1, y[:, None]).squeeze(1))
        y = y.masked_fill(done, PAD)
        ys = torch.cat([ys, y[:, None]], 1)
        done |= y == EOS
        if bool(done.all()):
            break
    return Decoded(ys[:, 1:], None, scores)


@torch.no_grad()
def beam_search(model: Transformer, src: Tensor, beam: int = 5, length_penalty_alpha: float = 1.0, max_len: int = 60,
                use_cache: bool = True) -> Decoded:
    """Batched beam search: B sentences x K beams decoded together as B*K rows."""
    if beam <= 1:
        return greedy(model, src, max_len, use_cache)
    model.eval()
    B, K, dev = src.shape[0], beam, src.device
    rows = torch.arange(B, device=dev).repeat_interleave(K)  # (B*K,) sentence of each row
    memory, src_mask = model.encode(src)
    memory, src_mask = memory[rows], src_mask[rows]
    cache = DecoderCache(model.cfg.dec_depth) if use_cache else None
    beams = Beams(B, K, dev)
    ys = torch.full((B * K, 1), BOS, dtype=torch.long, device=dev)
    for _ in range(_max_len(model, src, max_len)):
        parent, y = beams.step(_next_logp(model, ys, memory, src_mask, cache))  # (B*K,) each
        ys = torch.cat([ys[parent], y[:, None]], 1)
        if cache is not None:
            cache.reorder(parent)
        if beams.all_done():
            break
    best, scores = beams.best(length_penalty_alpha)
    return Decoded(ys[best, 1:], None, scores)


def translate_batch(model: Transformer, src: Tensor, beam: int = 1, length_penalty_alpha: float = 1.0,
                    max_len: int = 60) -> Decoded:
    return beam_search(model, src, beam, length_penalty_alpha, max_len)
