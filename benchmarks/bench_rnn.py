"""Tokens/s of our hand-written RNN/LSTM/GRU vs torch.nn (and vs ours under torch.compile), one process.

    .venv/bin/python benchmarks/bench_rnn.py                # all three cells, training step (fwd + bwd)
    .venv/bin/python benchmarks/bench_rnn.py --cells=lstm --compile --seq=64

A "token" is one time step of one sequence; each measurement is a full training step (forward,
backward) of the recurrent layer alone on (B, T, C) inputs with the same weights in both.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from llmpath.rnn.model import make_rnn


def bench(model: torch.nn.Module, x: torch.Tensor, repeats: int, warmup: int = 2) -> float:
    """Median tokens/s of forward + backward over `repeats` runs."""
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        out, _ = model(x)
        out.square().mean().backward()
        if x.is_cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return x.shape[0] * x.shape[1] / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", default="rnn,lstm,gru", help="comma-separated cells to time")
    ap.add_argument("--batch", type=int, default=32, help="sequences per batch (B)")
    ap.add_argument("--seq", type=int, default=128, help="time steps per sequence (T)")
    ap.add_argument("--input", type=int, default=64, help="input size (C)")
    ap.add_argument("--hidden", type=int, default=256, help="hidden size (H)")
    ap.add_argument("--layers", type=int, default=1, help="stacked layers")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median reported)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of our module (slow to compile on CPU)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1, as in the rnn presets; 0 = torch's default)")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    print(f"torch {torch.__version__}, device {dev}, threads {torch.get_num_threads()}; B={args.batch} T={args.seq} "
          f"C={args.input} H={args.hidden} layers={args.layers}; forward+backward, median of {args.repeats}")
    print(f"{'cell':<5} {'ours tok/s':>11} {'torch.nn tok/s':>15} {'torch.nn/ours':>14}"
          + (f" {'compiled tok/s':>15} {'compiled/ours':>14} {'compile s':>10}" if args.compile else ""))
    for cell in args.cells.split(","):
        torch.manual_seed(0)
        ref = make_rnn(cell, args.input, args.hidden, num_layers=args.layers, impl="torch").to(dev)
        ours = make_rnn(cell, args.input, args.hidden, num_layers=args.layers, impl="ours").to(dev)
        ours.load_state_dict(ref.state_dict())
        x = torch.randn(args.batch, args.seq, args.input, device=dev)
        t_ours, t_ref = bench(ours, x, args.repeats), bench(ref, x, args.repeats)
        line = f"{cell:<5} {t_ours:>11,.0f} {t_ref:>15,.0f} {t_ref / t_ours:>13.1f}x"
        if args.compile:
            compiled = torch.compile(ours)
            t0 = time.perf_counter()
            out, _ = compiled(x)
            out.square().mean().backward()  # the first call compiles forward and backward
            t_compile = time.perf_counter() - t0
            t_c = bench(compiled, x, args.repeats)
            line += f" {t_c:>15,.0f} {t_c / t_ours:>13.1f}x {t_compile:>10.0f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
