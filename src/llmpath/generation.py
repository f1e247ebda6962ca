"""Generation for every decoder: sampling, greedy, beam search, streaming, stop tokens, and the KV cache.

    ids = generate(model, prompt_ids, max_new_tokens=200, temperature=0.8, top_k=50)
    for tok in stream(model, prompt_ids, max_new_tokens=200): print(tok)
    for s in stream_scored(model, prompt_ids, top=5): print(s.token, s.logprob, s.top)   # with probabilities
    best = beam_search(model, prompt_ids, num_beams=4, max_new_tokens=30)

A language model gives p(x_t | x_<t); generating is a loop that turns the last position's logits
into one token and appends it. `use_cache=True` keeps every layer's keys and values (KVCache), so each
step feeds only the one new token: O(T) attention work per step instead of recomputing the O(T^2)
prefix. The tokens are identical either way (tests/test_gpt.py, tests/test_llama.py). The logits
processing follows Hugging Face's order and definitions (repetition penalty, temperature, top-k,
top-p), and a test compares ours with their LogitsProcessor classes.

A decoder works with this module when it has `cfg.block_size`, `cfg.n_layer`, `cfg.n_head`,
`cfg.n_embd` (and `cfg.n_kv_head` for grouped-query attention) and a forward
`model(idx, cache=cache, last_only=True) -> (logits, loss)` whose attention calls `cached_kv`.
GPT (stage 5) and the Llama-style decoder (stage 9) both do.

`prefix=` (B or 1, P, n_embd) hands the model P vectors to read before the prompt (a captioner's image
patches, stage 13); the model's forward must take `prefix=` (the Llama-style decoder does). With a cache
they are fed once, at the first step, and stay in it; without one they are fed again at every step.
block_size counts them: P + the tokens must fit.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn


class KVCache:
    """Pre-allocated keys and values of every layer: (B, n_kv_head, max_len, head_size) each, `pos` slots filled.

    With grouped-query attention (n_kv_head < n_head) only the n_kv_head shared key/value heads are kept:
    the cache is n_head / n_kv_head times smaller than multi-head attention's.
    """

    def __init__(self, cfg, batch_size: int, max_len: int | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.max_len = max_len or cfg.block_size
        n_kv = getattr(cfg, "n_kv_head", 0) or cfg.n_head
        shape = (batch_size, n_kv, self.max_len, cfg.n_embd // cfg.n_head)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.pos = 0

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write the new (B, nh, T, hs) keys/values after the cached ones; return all of them so far."""
        end = self.pos + k.shape[2]
        self.k[layer][:, :, self.pos:end] = k
        self.v[layer][:, :, self.pos:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def reorder(self, index: Tensor) -> None:
        """Keep the batch rows `index` (beam search: each surviving beam takes its parent's cache)."""
        self.k = [k.index_select(0, index) for k in self.k]
        self.v = [v.index_select(0, index) for v in self.v]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)


def kv_bytes_per_token(n_layer: int, n_kv_head: int, head_size: int, bytes_per_value: int = 2) -> int:
    """Cache bytes one token costs: a key and a value vector of every key/value head of every layer."""
    return 2 * n_layer * n_kv_head * head_size * bytes_per_value


def cached_kv(q: Tensor, k: Tensor, v: Tensor, cache: KVCache | None = None, layer: int = 0,
              ) -> tuple[Tensor, Tensor, Tensor | None, bool]:
    """Keys, values and mask for causal attention of q (B, nh, T, hs) over k, v (B, n_kv, T, hs).

    With a cache the new k, v are stored after the cached ones and all of them come back; the new
    queries sit at positions pos..pos+T-1, so they see every cached key and, among the new ones, only
    those not after them. With n_kv < nh (grouped-query attention) each key/value head is repeated for
    its nh / n_kv query heads. Returns (k, v, mask, causal) for `scaled_dot_product_attention`.
    """
    T = q.shape[2]
    mask, causal = None, True
    if cache is not None:
        past = cache.pos
        k, v = cache.update(layer, k, v)  # (B, n_kv, past+T, hs)
        if past > 0:
            causal = False
            if T > 1:
                mask = torch.ones(T, past + T, dtype=torch.bool, device=q.device).tril(past)
    if k.shape[1] != q.shape[1]:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)  # (B, nh, S, hs)
    return k, v, mask, causal

def crop_prompt(idx: Tensor, block_size: int) -> Tensor:
    """Keep the last block_size tokens of a (B, T) prompt, with a warning when that drops any."""
    if idx.shape[1] > block_size:
        warnings.warn(f"prompt of {idx.shape[1]} tokens is longer than the context ({block_size}); "
                      f"keeping its last {block_size} tokens", stacklevel=3)
        idx = idx[:, -block_size:]
    return idx


def _room(model: nn.Module, prefix: Tensor | None) -> int:
    """Tokens that fit in the context after the prefix vectors."""
    P = 0 if prefix is None else prefix.shape[1]
    if P >= model.cfg.block_size:
        raise ValueError(f"a prefix of {P} vectors leaves no room for tokens in block_size={model.cfg.block_size}; "
                         "use a model with a longer context")
    return model.cfg.block_size - P


def _as_batch(idx: Tensor | Sequence[int], model: nn.Module) -> Tensor:
    device = next(model.parameters()).device
    idx = torch.as_tensor(idx, dtype=torch.long, device=device)
    if idx.dim() == 1:
        idx = idx[None]
    if idx.shape[1] == 0:
        raise ValueError("the prompt is empty; give at least one token (e.g. a newline, or the end-of-text token)")
    return idx


def process_logits(logits: Tensor, context: Tensor | None = None, temperature: float = 1.0, top_k: int | None = None,
                   top_p: float | None = None, repetition_penalty: float = 1.0) -> Tensor:
    """(B, V) logits -> filtered/scaled logits; removed tokens get -inf. Hugging Face's order and rules."""
    if repetition_penalty != 1.0 and context is not None:
        # CTRL (Keskar et al. 2019): make every token already in the context less likely.
        seen = logits.gather(1, context)
        seen = torch.where(seen < 0, seen * repetition_penalty, seen / repetition_penalty)
        logits = logits.scatter(1, context, seen)
    if temperature != 1.0:
        logits = logits / temperature  # < 1 sharpens the distribution, > 1 flattens it
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        # Nucleus (Holtzman et al. 2020): the smallest set of tokens whose probability reaches top_p.
        sorted_logits, order = torch.sort(logits, descending=False)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum <= 1 - top_p
        drop[:, -1] = False  # always keep the most likely token
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits


def _next_logits(model: nn.Module, seqs: Tensor, cache: KVCache | None, prefix: Tensor | None = None) -> Tensor:
    """Logits (B, V) for the token after [prefix] seqs; with a cache, only what it has not seen is fed."""
    P = 0 if prefix is None else prefix.shape[1]
    with_prefix = {} if prefix is None else {"prefix": prefix.expand(len(seqs), -1, -1)}
    if cache is not None and P + seqs.shape[1] <= cache.max_len:
        if cache.pos == 0:  # first step: the prefix (if any) and the whole prompt
            logits, _ = model(seqs, cache=cache, last_only=True, **with_prefix)
        else:  # the cache holds the prefix and cache.pos - P tokens
            logits, _ = model(seqs[:, cache.pos - P:], cache=cache, last_only=True)
    else:  # past the context (or no cache): recompute on the prefix and the last tokens that fit, as without a cache
        logits, _ = model(seqs[:, -(model.cfg.block_size - P):], last_only=True, **with_prefix)
    return logits[:, -1].float()


def _new_cache(model: nn.Module, batch: int) -> KVCache:
    p = next(model.parameters())
    return KVCache(model.cfg, batch, device=p.device, dtype=p.dtype)


@torch.no_grad()
def _steps(model: nn.Module, idx: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, repetition_penalty: float = 1.0, greedy: bool = False,
           stop_tokens: Sequence[int] = (), use_cache: bool = True, generator: torch.Generator | None = None,
           prefix: Tensor | None = None) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Yield (next tokens (B,), finished (B,), the model's logits (B, V)) per step; stops when every row has hit a
    stop token. The logits are the model's own, before temperature and filtering (stream_scored reads them)."""
    if temperature <= 0:
        greedy, temperature = True, 1.0  # temperature 0 is the limit of sharpening: argmax
    seqs = idx  # already cropped to the context by the caller
    cache = _new_cache(model, seqs.shape[0]) if use_cache else None
    stops = torch.tensor(list(stop_tokens), dtype=torch.long, device=seqs.device)
    finished = torch.zeros(seqs.shape[0], dtype=torch.bool, device=seqs.device)
    was_training = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            raw = _next_logits(model, seqs, cache, prefix)
            logits = process_logits(raw, seqs, temperature, top_k, top_p, repetition_penalty)
            if greedy:
                nxt = logits.argmax(-1)
            else:
                nxt = torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
            if len(stops):
                nxt = torch.where(finished, stops[0], nxt)  # rows already done keep emitting the stop token
                finished = finished | torch.isin(nxt, stops)
            seqs = torch.cat([seqs, nxt[:, None]], dim=1)
            yield nxt, finished, raw
            if finished.all():
                break
    finally:
        model.train(was_training)


def generate(model: nn.Module, idx: Tensor | Sequence[int], max_new_tokens: int = 100,
             prefix: Tensor | None = None, **kw) -> Tensor:
    """(B, T) prompt -> (B, T + n) ids, n <= max_new_tokens (fewer when every row hit a stop token).

    Options: temperature, top_k, top_p, repetition_penalty, greedy, stop_tokens, use_cache, generator;
    prefix (B or 1, P, n_embd): vectors the model reads before the prompt (not part of the returned ids).
    Rows that stop early are padded with the first stop token.
    """
    idx = crop_prompt(_as_batch(idx, model), _room(model, prefix))
    new = [t[:, None] for t, _, _ in _steps(model, idx, max_new_tokens, prefix=prefix, **kw)]
    return torch.cat([idx, *new], dim=1)


def stream(model: nn.Module, idx: Tensor | Sequence[int], max_new_tokens: int = 100,
           prefix: Tensor | None = None, **kw) -> Iterator[int]:
    """Yield the generated token ids of one prompt one at a time (for printing as they come)."""
    idx = crop_prompt(_as_batch(idx, model), _room(model, prefix))
    if idx.shape[0] != 1 or (prefix is not None and prefix.shape[0] != 1):
        raise ValueError("stream() takes one prompt (and one prefix); use generate() for a batch")
    for nxt, finished, _ in _steps(model, idx, max_new_tokens, prefix=prefix, **kw):
        yield int(nxt[0])
        if finished[0]:
            return


class Scored(NamedTuple):
    """One generated token with the model's log-probabilities (its softmax, before temperature and filtering)."""

    token: int
    logprob: float  # log p(token | everything before it)
    top: list[tuple[int, float]]  # the most likely tokens at this step and their log-probabilities, best first


def stream_scored(model: nn.Module, idx: Tensor | Sequence[int], max_new_tokens: int = 100, top: int = 5,
                  prefix: Tensor | None = None, **kw) -> Iterator[Scored]:
    """stream() that also says how likely the model found each token and which others it considered.

    The tokens are exactly stream()'s for the same options and generator; the probabilities are the model's own
    distribution (what temperature and top-p then reshape), as OpenAI's logprobs report them.
    """
    idx = crop_prompt(_as_batch(idx, model), _room(model, prefix))
    if idx.shape[0] != 1 or (prefix is not None and prefix.shape[0] != 1):
        raise ValueError("stream_scored() takes one prompt (and one prefix); use generate() for a batch")
    for nxt, finished, raw in _steps(model, idx, max_new_tokens, prefix=prefix, **kw):
        logp = raw[0].log_softmax(-1)
        best = logp.topk(min(top, logp.numel())) if top > 0 else None
        alternatives = [] if best is None else list(zip(best.indices.tolist(), best.values.tolist()))
        yield Scored(int(nxt[0]), float(logp[nxt[0]]), alternatives)
        if finished[0]:
            return


@torch.no_grad()
def beam_search(model: nn.Module, idx: Tensor | Sequence[int], num_beams: int = 4, max_new_tokens: int = 50,
                length_penalty: float = 1.0, stop_tokens: Sequence[int] = (), use_cache: bool = True,
                prefix: Tensor | None = None) -> Tensor:
    """The most likely continuation found by keeping num_beams partial sequences; returns (1, T + n) ids.

    A finished hypothesis (one that emitted a stop token) scores sum(log p) / n_generated**length_penalty;
    with no stop token every beam has the same length and the highest total log-probability wins.
    prefix (1, P, n_embd): vectors read before the prompt, shared by every beam.
    """
    seqs = crop_prompt(_as_batch(idx, model), _room(model, prefix))
    if seqs.shape[0] != 1 or (prefix is not None and prefix.shape[0] != 1):
        raise ValueError("beam_search() takes one prompt (and one prefix)")
    prompt_len, K = seqs.shape[1], num_beams
    cache = _new_cache(model, 1) if use_cache else None
    scores = torch.zeros(1, device=seqs.device)  # running sum of log-probabilities per beam
    done: list[tuple[float, Tensor]] = []
    stops = set(stop_tokens)
    was_training = model.training
    model.eval()
    try:
        for step in range(max_new_tokens):
            logp = _next_logits(model, seqs, cache, prefix).log_softmax(-1) + scores[:, None]  # (beams, V)
            V = logp.shape[1]
            top, flat = logp.flatten().topk(min(2 * K, logp.numel()))  # 2K: up to K may stop at once
            keep = []  # (parent beam, token, score) of the K best continuations that do not stop
            for rank, (s, f) in enumerate(zip(top.tolist(), flat.tolist())):
                parent, tok = divmod(f, V)
                if tok not in stops:
                    if len(keep) < K:
                        keep.append((parent, tok, s))
                elif rank < K:  # a stop among the K best ends a hypothesis (as in Hugging Face)
                    done.append((s / (step + 1) ** length_penalty, torch.cat([seqs[parent], seqs.new_tensor([tok])])))
            if not keep:
                break
            index = torch.tensor([k[0] for k in keep], device=seqs.device)
            seqs = torch.cat([seqs[index], torch.tensor([k[1] for k in keep], device=seqs.device)[:, None]], dim=1)
            scores = torch.tensor([k[2] for k in keep], device=seqs.device)
            if cache is not None:
                cache.reorder(index)  # each surviving beam continues from its parent's keys/values
            # Done when K hypotheses finished and no running beam can still beat the worst of them.
            best_running = scores.max().item() / (step + 1) ** length_penalty
            if len(done) >= K and sorted((d[0] for d in done), reverse=True)[K - 1] >= best_running:
                break
    finally:
        model.train(was_training)
    n = seqs.shape[1] - prompt_len
    done += [(s / max(n, 1) ** length_penalty, seq) for s, seq in zip(scores.tolist(), seqs)]
    return max(done, key=lambda d: d[0])[1][None]


@torch.no_grad()
def speculative_generate(target: nn.Module, draft: nn.Module, idx: Tensor | Sequence[int], max_new_tokens: int = 100,
                         gamma: int = 4, temperature: float = 1.0, greedy: bool = False,
                         generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
    """Speculative decoding: a small draft model proposes gamma tokens, the target checks them in one forward.

        ids, stats = speculative_generate(big, small, prompt_ids, max_new_tokens=48, gamma=4)

    Leviathan et al. 2023 (https://arxiv.org/abs/2211.17192), Chen et al. 2023 (https://arxiv.org/abs/2302.01318).
    Each draft token x ~ q is kept with probability min(1, p(x) / q(x)); the first one refused is replaced by a
    sample of max(0, p - q) normalised, and when all gamma are kept the target's distribution after them gives
    one more token for free. The tokens then follow the target's distribution p exactly, whatever the draft;
    the draft only changes how many target forwards they cost. greedy (or temperature 0) is the same rule with
    p and q one-hot at their argmax: the output is the target's greedy output, token for token.
    (1, T) prompt -> ((1, T + max_new_tokens) ids, stats): proposed (draft tokens), accepted (kept), refused (rounds
    that ended in a refusal), acceptance_rate = accepted / proposed, target_forwards, draft_forwards, new_tokens,
    tokens_per_target_forward. The two models must share a tokenizer; each keeps a KV cache that is rolled back
    past a refused token. The prompt and the new tokens must fit in both contexts.
    """
    seqs = _as_batch(idx, target)
    if seqs.shape[0] != 1:
        raise ValueError("speculative_generate() takes one prompt")
    if gamma < 1:
        raise ValueError(f"gamma={gamma}: the draft must propose at least one token per round")
    room = min(target.cfg.block_size, draft.cfg.block_size)
    if seqs.shape[1] + max_new_tokens > room:
        raise ValueError(f"a prompt of {seqs.shape[1]} tokens + {max_new_tokens} new ones is longer than the context "
                         f"({room}); shorten the prompt or ask for fewer tokens")
    if temperature <= 0:
        greedy, temperature = True, 1.0

    def dist(logits: Tensor) -> Tensor:  # (..., V) logits -> the distribution tokens are drawn from
        if greedy:
            return torch.zeros_like(logits, dtype=torch.float).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
        return (logits.float() / temperature).softmax(-1)

    def draw(probs: Tensor) -> Tensor:  # (V,) -> (1, 1) token id
        return torch.multinomial(probs, 1, generator=generator)[None]

    caches = [KVCache(m.cfg, 1, device=seqs.device, dtype=next(m.parameters()).dtype) for m in (target, draft)]
    t_cache, d_cache = caches
    end = seqs.shape[1] + max_new_tokens
    stats = dict(proposed=0, accepted=0, refused=0, target_forwards=0, draft_forwards=0)
    modes = (target.training, draft.training)
    target.eval()
    draft.eval()
    try:
        while seqs.shape[1] < end:
            n, g = seqs.shape[1], min(gamma, end - seqs.shape[1])
            qs = []
            for _ in range(g):  # the draft guesses g tokens, one cheap forward each
                logits, _ = draft(seqs[:, d_cache.pos:], cache=d_cache, last_only=True)
                qs.append(dist(logits[0, -1]))
                seqs = torch.cat([seqs, draw(qs[-1])], dim=1)
            # one target forward over the tokens it has not seen: rows n-1 .. n+g-1 are p for each guess and one more
            logits, _ = target(seqs[:, t_cache.pos:], cache=t_cache)
            p = dist(logits[0, -(g + 1):])  # (g + 1, V)
            k = 0  # guesses kept, left to right, until the first refusal
            while k < g:
                x = seqs[0, n + k]
                u = torch.rand((), generator=generator, device=p.device)
                if u >= p[k, x] / qs[k][x]:  # keep with probability min(1, p(x) / q(x)); q(x) > 0: x was drawn from q
                    break
                k += 1
            if k < g:  # refused: draw from the part of p that q under-covers, so that the total is p
                residual = (p[k] - qs[k]).clamp_min(0)
                nxt = draw(residual / residual.sum() if residual.sum() > 0 else p[k])
            else:  # all kept: the target already scored the next position
                nxt = draw(p[g])
            seqs = torch.cat([seqs[:, :n + k], nxt], dim=1)
            for c in caches:  # forget the keys and values of refused guesses; the next forward overwrites them
                c.pos = min(c.pos, n + k)
            stats["proposed"] += g
            stats["accepted"] += k
            stats["refused"] += int(k < g)
            stats["target_forwards"] += 1
            stats["draft_forwards"] += g
    finally:
        target.train(modes[0])
        draft.train(modes[1])
    seqs = seqs[:, :end]  # a bonus token past max_new_tokens is dropped
    stats.update(acceptance_rate=stats["accepted"] / max(stats["proposed"], 1), new_tokens=max_new_tokens,
                 tokens_per_target_forward=max_new_tokens / max(stats["target_forwards"], 1))
    return seqs, stats
