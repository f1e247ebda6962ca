"""torch.compile vs eager on a CPU, and one torch thread vs two: stage 5's small GPT (and stage 7's small ViT).

    .venv/bin/python benchmarks/bench_compile.py                 # both tables, 3 rounds; a cold compile ~2-4 min
    .venv/bin/python benchmarks/bench_compile.py --only threads  # the thread table only, ~1 min
    .venv/bin/python benchmarks/bench_compile.py --warm-cache    # reuse inductor's on-disk kernels (fast compile)

Compile: the same model eager and under torch.compile in one process: a training step (forward, loss, backward,
AdamW; batch 16 x 64 tokens) and greedy generation of 128 tokens with the KV cache. The first call's seconds
include tracing and inductor writing and building C++ kernels; by default inductor gets an empty cache folder,
so that number is a cold compile. Steady-state times are medians of interleaved rounds (eager, compiled,
eager, compiled, ...). Threads: the same training step at each thread count, interleaved, in one process.
The code is llmpath.efficient.speed; a variant that fails is a row with its one-line reason.
"""

from __future__ import annotations

import argparse
import os
import tempfile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["compile", "threads"], default=None, help="one table only")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per measurement (median reported)")
    ap.add_argument("--calls", type=int, default=10, help="training steps per round")
    ap.add_argument("--threads", default="1,2", help="thread counts of the thread table (the first is the baseline)")
    ap.add_argument("--compile-threads", type=int, default=1, help="torch threads for the compile table")
    ap.add_argument("--new-tokens", type=int, default=128, help="tokens to generate in the compile table")
    ap.add_argument("--no-vit", action="store_true", help="leave the ViT out of the thread table")
    ap.add_argument("--warm-cache", action="store_true", help="keep inductor's usual on-disk cache (a warm compile)")
    args = ap.parse_args()
    if not args.warm_cache:  # before torch is imported: inductor reads it when it first compiles
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-cold-")
    import torch

    from llmpath.efficient.speed import compile_rows, compile_table, thread_rows, thread_table

    print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores, fp32, inductor cache "
          f"{'warm (usual folder)' if args.warm_cache else 'cold (empty folder)'}")
    if args.only in (None, "compile"):
        rows = compile_rows(rounds=args.rounds, calls=args.calls, new_tokens=args.new_tokens,
                            threads=args.compile_threads)
        print(f"\n## torch.compile vs eager, {args.compile_threads} thread(s), median of {args.rounds} rounds\n")
        print(compile_table(rows), flush=True)
    if args.only in (None, "threads"):
        threads = tuple(int(t) for t in args.threads.split(","))
        rows = thread_rows(threads, rounds=args.rounds, calls=args.calls, vit=not args.no_vit)
        print(f"\n## torch threads, median of {args.rounds} rounds x {args.calls} steps\n")
        print(thread_table(rows), flush=True)


if __name__ == "__main__":
    main()
