"""Stage 4 speed: our encoder-decoder vs torch.nn.Transformer (same weights), and decoding with vs without the KV cache.

    .venv/bin/python benchmarks/bench_transformer.py            # --threads 1 --rounds 3 --steps 20

Training step = forward through both stacks, a loss on the decoder output, backward, AdamW update.
torch.nn.Transformer has no embeddings or head, so every model gets the same embedded inputs and the
loss is the mean square of the decoder output. Implementations run in interleaved rounds; the median is kept.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from llmpath.seq2seq.data import PAD
from llmpath.transformer.attention import causal_mask, padding_mask
from llmpath.transformer.decode import greedy
from llmpath.transformer.model import Transformer, TransformerConfig, from_torch


def _batch(B, S, T, V, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, V, (B, S), generator=g)
    tgt = torch.randint(4, V, (B, T), generator=g)
    src[: B // 2, S * 3 // 4:] = PAD  # half the sentences padded
    return src, tgt


def _ours_step(model, xs, xt, src, tgt, opt):
    loss = model.stacks(xs, xt, padding_mask(src, PAD), padding_mask(tgt, PAD)).square().mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _torch_step(ref, xs, xt, src, tgt, opt):
    out = ref(xs, xt, tgt_mask=~causal_mask(tgt.shape[1]), src_key_padding_mask=src == PAD,
              tgt_key_padding_mask=tgt == PAD, memory_key_padding_mask=src == PAD, tgt_is_causal=True)
    loss = out.square().mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def bench_training(cfg: TransformerConfig, B: int, S: int, T: int, steps: int, rounds: int) -> list[tuple[str, float]]:
    torch.manual_seed(0)
    ref = nn.Transformer(cfg.n_embd, cfg.n_head, cfg.n_layer, cfg.n_layer, cfg.n_ff, dropout=0.0, batch_first=True)
    ours = Transformer(cfg)
    fast = Transformer(TransformerConfig(**{**cfg.__dict__, "sdpa": True}))
    for m in (ours, fast):
        from_torch(m, ref)
    src, tgt = _batch(B, S, T, cfg.src_vocab)
    xs, xt = ours.src_embed(src).detach(), ours.tgt_embed(tgt).detach()
    runs = {"ours (hand-written attention)": (ours, _ours_step), "ours (SDPA attention)": (fast, _ours_step),
            "torch.nn.Transformer": (ref, _torch_step)}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, (m, _) in runs.items()}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for k, (m, step) in runs.items():
            m.train()
            step(m, xs, xt, src, tgt, opts[k])  # warm-up
            t0 = time.perf_counter()
            for _ in range(steps):
                step(m, xs, xt, src, tgt, opts[k])
            times[k].append((time.perf_counter() - t0) / steps * 1000)
    return [(k, statistics.median(v)) for k, v in times.items()]


def bench_decoding(cfg: TransformerConfig, B: int, S: int, length: int, rounds: int) -> list[tuple[str, float, bool]]:
    torch.manual_seed(0)
    m = Transformer(cfg).eval()
    src, _ = _batch(B, S, 2, cfg.src_vocab)
    with torch.no_grad():
        m.head.weight[2] = -10.0  # no <eos>: every run decodes exactly `length` tokens
    out = {}
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(rounds):
        for use_cache in (True, False):
            t0 = time.perf_counter()
            out[use_cache] = greedy(m, src, length, use_cache=use_cache).tokens
            times[use_cache].append(time.perf_counter() - t0)
    same = torch.equal(out[True], out[False])
    n = out[True].numel()
    return [(f"greedy, {'with' if c else 'without'} KV cache", n / statistics.median(times[c]), same) for c in (True, False)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median kept)")
    ap.add_argument("--steps", type=int, default=20, help="training steps per round")
    ap.add_argument("--length", type=int, default=60, help="tokens to decode")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = TransformerConfig(src_vocab=1800, tgt_vocab=3900, n_layer=2, n_head=4, n_embd=128, n_ff=256, dropout=0.0,
                            max_len=256)
    print(f"torch {torch.__version__}, {args.threads} thread(s); small preset shape (2+2 layers, d=128, 4 heads)")
    print("\ntraining step, batch 64, source 16, target 16 tokens")
    res = bench_training(cfg, 64, 16, 16, args.steps, args.rounds)
    base = res[0][1]
    print("| model | ms/step | time / ours (hand-written) |\n|---|---:|---:|")
    for k, ms in res:
        print(f"| {k} | {ms:.1f} | {ms / base:.2f}x |")
    print(f"\ngreedy decoding of {args.length} tokens, batch 8")
    res2 = bench_decoding(cfg, 8, 16, args.length, args.rounds)
    print("| decoding | tokens/s | identical tokens |\n|---|---:|---|")
    for k, tps, same in res2:
        print(f"| {k} | {tps:,.0f} | {same} |")
    print(f"\nKV cache speed-up: {res2[0][1] / res2[1][1]:.2f}x")


if __name__ == "__main__":
    main()
