"""Speed of weight-only quantized GPTs: ours (int8, int4) vs fp32 vs torchao vs torch's quantize_dynamic, one process.

    .venv/bin/python benchmarks/bench_quant.py                # both shapes, 1 thread, ~3 min on a busy 2-core machine
    .venv/bin/python benchmarks/bench_quant.py --quick        # small shape only, 2 rounds
    .venv/bin/python benchmarks/bench_quant.py --threads 2 --rounds 5

Every model is a copy of one random GPT with every linear layer but the tied output head quantized:
ours (llmpath.efficient.quant: int8 per channel and int4 group 32, each forward dequantising the stored
integers and calling F.linear), torchao (Int8WeightOnlyConfig; IntxWeightOnlyConfig
int4 PerGroup(32)) and torch.ao's quantize_dynamic (int8 weights and int8 activations). Two measurements, the
models timed in interleaved rounds (bench_gpt.interleaved_times), the median kept:
  forward: one no-grad forward of a (batch, block_size) batch, the matmul-heavy case;
  generation: greedy, batch 1, a 16-token prompt filling the context with the KV cache (one row per step).
Ratios are fp32 time / model time (> 1: faster than fp32). The script checks that every model's logits
stay close to fp32's before timing (max |logit error| / max |logit|:
< 5% for int8, < 50% for int4) and prints that error.
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
from bench_gpt import interleaved_times  # the GPT benchmark's timing (benchmarks/ is on sys.path)

from llmpath.efficient.quant import model_bytes, quantize
from llmpath.efficient.quant_eval import dynamic_model, stored_bytes, torchao_model
from llmpath.generation import generate
from llmpath.gpt.model import GPT, GPTConfig

# (name, n_layer, n_head, n_embd, block_size, batch): stage 5's small shape and a larger one
SHAPES = [("4x128", 4, 4, 128, 64, 16), ("6x384", 6, 6, 384, 128, 8)]
PROMPT = 16


def models(cfg: GPTConfig) -> dict:
    """fp32 first (the baseline), then the quantized copies; a peer that is missing is left out with a note."""
    torch.manual_seed(0)
    fp = GPT(cfg).eval()  # GPT-2's init; the tokens do not matter here, only the work per token
    ms = {"fp32": fp,
          "ours int8 per channel": quantize(copy.deepcopy(fp), 8),
          "ours int4 group 32": quantize(copy.deepcopy(fp), 4, 32)}
    for name, bits, group in [("torchao int8 weight-only", 8, None), ("torchao int4 group 32", 4, 32)]:
        try:
            ms[name] = torchao_model(fp, bits, group)[0]
        except ImportError:
            print(f"({name}: torchao not installed)")
    ms["torch quantize_dynamic int8"] = dynamic_model(fp)
    return ms


@torch.no_grad()
def bench(shape: tuple, vocab: int, rounds: int) -> None:
    name, n_layer, n_head, n_embd, block, batch = shape
    cfg = GPTConfig(vocab_size=vocab, block_size=block, n_layer=n_layer, n_head=n_head, n_embd=n_embd)
    ms = models(cfg)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, vocab, (batch, block), generator=g)
    prompt = torch.randint(0, vocab, (1, PROMPT), generator=g)
    new = block - PROMPT
    ref = ms["fp32"](x)[0]
    errs = {k: (m(x)[0] - ref).abs().max().item() / ref.abs().max().item() for k, m in ms.items()}
    for k, e in errs.items():  # a broken model would time fast and mean nothing
        assert e < (0.05 if "int8" in k else 0.5), f"{k}: logits off by {e:.1%} of their largest"
    fwd = interleaved_times({k: (lambda m=m: m(x)) for k, m in ms.items()}, rounds, steps=3)
    gen = interleaved_times({k: (lambda m=m: generate(m, prompt, new, greedy=True)) for k, m in ms.items()}, rounds, 1)
    fp_bytes = model_bytes(ms["fp32"])
    print(f"\n## {name}: n_layer={n_layer} n_embd={n_embd} block {block}; forward batch {batch} x {block}; "
          f"generation {PROMPT} + {new} tokens; median of {rounds} rounds")
    print("| model | bytes | smaller | max logit error | forward ms | forward vs fp32 | gen tok/s | gen vs fp32 |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|")
    f0, g0 = statistics.median(fwd["fp32"]), statistics.median(gen["fp32"])
    for k, m in ms.items():
        f, t = statistics.median(fwd[k]), statistics.median(gen[k])
        b = stored_bytes(m)
        print(f"| {k} | {b:,} | {fp_bytes / b:.2f}x | {errs[k]:.1%} | {1e3 * f:.1f} | {f0 / f:.2f}x | "
              f"{new / t:,.0f} | {g0 / t:.2f}x |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (the presets train with 1)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per measurement (median reported)")
    ap.add_argument("--vocab", type=int, default=79, help="vocabulary size (79: our char-level shakespeare)")
    ap.add_argument("--quick", action="store_true", help="the 4x128 shape only, 2 rounds")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    for shape in SHAPES[:1] if args.quick else SHAPES:
        bench(shape, args.vocab, 2 if args.quick else args.rounds)


if __name__ == "__main__":
    main()
