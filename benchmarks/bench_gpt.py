"""Training and generation speed of our GPT vs transformers.GPT2LMHeadModel with identical weights, one process.

    .venv/bin/python benchmarks/bench_gpt.py                  # both shapes, 1 thread, ~5 min on a busy 2-core machine
    .venv/bin/python benchmarks/bench_gpt.py --quick          # small shape only, 2 rounds, ~30 s
    .venv/bin/python benchmarks/bench_gpt.py --threads 2 --rounds 5 --compile

Training: one step = forward, loss, backward and an AdamW update, at the same config, batch and sequence
length for every model. The models are timed in interleaved rounds (A B C D, A B C D, ...) so that load
from other processes hits them alike; the median ms/step over the rounds is reported. MFU = achieved
FLOP/s / the measured fp32 peak of a 1024 x 1024 matmul on the same threads, with 6N + 12 L T C training
FLOPs per token (GPT.flops_per_token, the PaLM / nanoGPT estimate).

Generation: greedy, batch 1, a 16-token prompt and 256 new tokens, ours with the KV cache, ours
recomputing the whole prefix each step, and Hugging Face generate() (its own cache); the script asserts
that all three return identical tokens.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import transformers

from llmpath.common import interleaved_times  # noqa: F401  (bench_llama, bench_vit, ... import it from here)
from llmpath.gpt.finetune import lm_loss
from llmpath.generation import generate
from llmpath.gpt.hf import from_hf

# (name, n_layer, n_head, n_embd, block_size, batch): nanoGPT's CPU shape and a larger one
SHAPES = [("4x128", 4, 4, 128, 64, 12), ("6x384", 6, 6, 384, 128, 8)]
PROMPT, NEW = 16, 256


def matmul_peak(n: int = 1024, repeats: int = 20) -> float:
    """Best fp32 FLOP/s of an n x n matmul on the current threads (the best run: other load only slows it)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / min(times)


def hf_gpt2(vocab: int, n_layer: int, n_head: int, n_embd: int, n_positions: int, attn: str, seed: int = 0):
    """A random GPT2LMHeadModel (no hub), dropout off; `attn` is "sdpa" or "eager"."""
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                                  n_head=n_head, bos_token_id=0, eos_token_id=0, pad_token_id=0,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    cfg._attn_implementation = attn
    return transformers.GPT2LMHeadModel(cfg)


def models(vocab: int, n_layer: int, n_head: int, n_embd: int, n_positions: int) -> dict:
    """Ours (SDPA, hand-written) and HF (sdpa, eager), all holding the same weights."""
    hf_sdpa = hf_gpt2(vocab, n_layer, n_head, n_embd, n_positions, "sdpa")
    hf_eager = hf_gpt2(vocab, n_layer, n_head, n_embd, n_positions, "eager")
    hf_eager.load_state_dict(hf_sdpa.state_dict())
    return {"ours (SDPA attention)": from_hf(hf_sdpa, sdpa=True), "HF GPT2LMHeadModel (sdpa)": hf_sdpa,
            "ours (hand-written attention)": from_hf(hf_sdpa, sdpa=False), "HF GPT2LMHeadModel (eager)": hf_eager}


def train_step_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    """A closure doing one training step with AdamW (the same optimizer settings for every model)."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    hf = isinstance(model, transformers.PreTrainedModel)

    def step() -> None:
        # HF: the usual call, labels = input ids (it shifts them inside); ours: the loss the fit loop uses
        loss = model(input_ids=x, labels=x).loss if hf else lm_loss(model, (x, y))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def training(shape: tuple, vocab: int, rounds: int, steps: int, peak: float, compile_: bool) -> None:
    name, n_layer, n_head, n_embd, block, batch = shape
    ms = models(vocab, n_layer, n_head, n_embd, block)
    ours = next(iter(ms.values()))
    n = ours.num_params(embeddings=False)
    fpt = ours.flops_per_token(block)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, block + 1), generator=g)
    x, y = ids[:, :-1], ids[:, 1:]  # (B, T) each
    steps_fns = {k: train_step_fn(m, x, y) for k, m in ms.items()}
    if compile_:
        c = from_hf(ms["HF GPT2LMHeadModel (sdpa)"], sdpa=True)
        c.train()
        compiled = torch.compile(c)
        fn = train_step_fn(compiled, x, y)
        t0 = time.perf_counter()
        fn()  # the first call compiles forward and backward
        print(f"(torch.compile of ours: {time.perf_counter() - t0:.0f} s to compile)", flush=True)
        steps_fns["ours (SDPA), torch.compile"] = fn
    times = interleaved_times(steps_fns, rounds, steps)
    tokens = batch * block
    print(f"\n## training, {name}: n_layer={n_layer} n_head={n_head} n_embd={n_embd} block {block} batch {batch}; "
          f"{ours.num_params():,} parameters ({n:,} without position embeddings); {fpt / 1e6:.2f} MFLOP/token; "
          f"median of {rounds} rounds x {steps} steps")
    print("| model | ms/step | tokens/s | MFU | time / ours |\n|---|---|---|---|---|")
    base = statistics.median(times["ours (SDPA attention)"])
    for k, t in times.items():
        s = statistics.median(t)
        print(f"| {k} | {1e3 * s:.1f} | {tokens / s:,.0f} | {tokens * fpt / s / peak:.0%} | {s / base:.2f}x |", flush=True)


@torch.no_grad()
def generation(shape: tuple, vocab: int, rounds: int) -> None:
    name, n_layer, n_head, n_embd = shape[:4]
    hf = hf_gpt2(vocab, n_layer, n_head, n_embd, 512, "sdpa").eval()  # 512 positions: room for 16 + 256
    for p in hf.parameters():  # random weights far from uniform, so greedy does not just repeat one id
        p.add_(0.05 * torch.randn_like(p))
    ours = from_hf(hf)
    prompt = torch.randint(0, vocab, (1, PROMPT), generator=torch.Generator().manual_seed(1))
    runs = {"ours, KV cache": lambda: generate(ours, prompt, NEW, greedy=True),
            "ours, no cache": lambda: generate(ours, prompt, NEW, greedy=True, use_cache=False),
            # an explicit attention mask: without one HF masks every prompt token equal to pad_token_id
            "HF generate()": lambda: hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=NEW,
                                                 do_sample=False, eos_token_id=None, pad_token_id=0)}
    outs = {k: fn() for k, fn in runs.items()}  # warm-up, and the tokens to compare
    ref = outs["HF generate()"]
    identical = all(torch.equal(o, ref) for o in outs.values())
    assert identical, "generations differ"
    times = {k: [] for k in runs}
    for _ in range(rounds):
        for k, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    tps = {k: NEW / statistics.median(t) for k, t in times.items()}
    print(f"| {name} ({ours.num_params() / 1e6:.1f}M) | {tps['ours, KV cache']:,.0f} tok/s | "
          f"{tps['ours, no cache']:,.0f} tok/s | {tps['HF generate()']:,.0f} tok/s | "
          f"{tps['ours, KV cache'] / tps['ours, no cache']:.1f}x | {tps['ours, KV cache'] / tps['HF generate()']:.1f}x | "
          f"{'yes' if identical else 'NO'} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (the presets train with 1)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per measurement (median reported)")
    ap.add_argument("--steps", type=int, default=0, help="training steps per round (0: 10 on 4x128, 3 on 6x384)")
    ap.add_argument("--vocab", type=int, default=79, help="vocabulary size (79: our char-level shakespeare)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of ours (slow to compile on CPU)")
    ap.add_argument("--quick", action="store_true", help="the 4x128 shape only, 2 rounds")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()  # no notes about the loss type or generation config
    shapes = SHAPES[:1] if args.quick else SHAPES
    rounds = 2 if args.quick else args.rounds
    peak = matmul_peak()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} thread(s), "
          f"fp32; measured 1024x1024 matmul peak {peak / 1e9:.0f} GFLOP/s (the MFU denominator)")
    for shape in shapes:
        steps = args.steps or (10 if shape is SHAPES[0] else 3)
        training(shape, args.vocab, rounds, steps, peak, args.compile and shape is SHAPES[0])
    print(f"\n## generation: greedy, batch 1, prompt {PROMPT} + {NEW} new tokens, median of {rounds} rounds")
    print("| shape | ours, KV cache | ours, no cache | HF `generate()` (cache) | cache speed-up | ours / HF | "
          "identical tokens |\n|---|---|---|---|---|---|---|")
    for shape in shapes:
        generation(shape, args.vocab, rounds)
    print(f"(matmul peak re-measured at the end: {matmul_peak() / 1e9:.0f} GFLOP/s)")


if __name__ == "__main__":
    main()
