"""Training-step speed of our ViT vs transformers.ViTForImageClassification with identical weights, one process.

    .venv/bin/python benchmarks/bench_vit.py                  # the small preset's ViT (4 x 64, 28x28, patch 7), batch 64
    .venv/bin/python benchmarks/bench_vit.py --quick          # 2 rounds x 5 steps
    .venv/bin/python benchmarks/bench_vit.py --width 192 --layers 6 --patch 4 --threads 2

One step = forward, cross-entropy, backward and an AdamW update on the same batch of images, for:

- ours (patches by reshape + linear, SDPA attention): what `llmpath vit train` runs;
- ours with attention written out, and with patches cut by a strided Conv2d (as Hugging Face does);
- HF ViTForImageClassification with attn_implementation "sdpa" and "eager".

Rounds are interleaved (A B C D, A B C D, ...) so that load from other processes hits all alike; the median ms/step
is reported. Before timing, the script asserts that every model gives the same loss on the batch.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch
import torch.nn.functional as F
import transformers

from llmpath.vit.hf import config_to_hf, from_hf
from llmpath.vit.model import ViTConfig

from bench_gpt import interleaved_times, matmul_peak  # benchmarks/ is the script's folder, so its siblings import

OURS = "ours (unfold patches, SDPA)"


def models(cfg: ViTConfig) -> dict:
    """Every variant, all holding the weights of one random ViTForImageClassification."""
    torch.manual_seed(0)
    hf = {}
    for attn in ("sdpa", "eager"):
        c = config_to_hf(cfg)
        c._attn_implementation = attn
        hf[attn] = transformers.ViTForImageClassification(c)
    hf["eager"].load_state_dict(hf["sdpa"].state_dict())
    def ours(patchify: str, sdpa: bool):
        m = from_hf(hf["sdpa"], sdpa=sdpa)
        m.cfg.patchify = m.patch_embed.mode = patchify
        return m

    return {OURS: ours("unfold", True), "ours (unfold patches, hand-written attention)": ours("unfold", False),
            "ours (Conv2d patches, SDPA)": ours("conv", True), "ours (Conv2d patches, hand-written attention)": ours("conv", False),
            "HF ViTForImageClassification (sdpa)": hf["sdpa"], "HF ViTForImageClassification (eager)": hf["eager"]}


def loss_fn(name: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    if name.startswith("HF"):
        return lambda: model(pixel_values=x, labels=y).loss
    return lambda: F.cross_entropy(model(x), y)


def train_step_fn(loss, model: torch.nn.Module):
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)

    def step() -> None:
        loss().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def patch_embedding_times(cfg: ViTConfig, x: torch.Tensor, reps: int) -> dict[str, float]:
    """Median seconds of the patch embedding alone (forward + backward), Conv2d vs reshape + linear, alternating."""
    from llmpath.vit.model import ViT

    torch.manual_seed(0)
    m = ViT(cfg)
    times: dict[str, list[float]] = {"conv": [], "unfold": []}
    for _ in range(reps):
        for mode in times:
            m.patch_embed.mode = mode
            t0 = time.perf_counter()
            m.patch_embed(x).sum().backward()
            times[mode].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (the presets train with 1)")
    ap.add_argument("--rounds", type=int, default=30, help="interleaved rounds (median reported)")
    ap.add_argument("--steps", type=int, default=5, help="training steps per model per round")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--image", type=int, default=28)
    ap.add_argument("--patch", type=int, default=7)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="2 rounds x 5 steps")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    rounds, steps = (2, 5) if args.quick else (args.rounds, args.steps)
    cfg = ViTConfig(image_size=args.image, patch_size=args.patch, channels=1, n_classes=10, n_layer=args.layers,
                    n_head=args.heads, n_embd=args.width, n_ff=2 * args.width)
    peak = matmul_peak()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} thread(s), "
          f"fp32; 1024x1024 matmul {peak / 1e9:.0f} GFLOP/s at the start")
    ms = models(cfg)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(args.batch, 1, args.image, args.image, generator=g), torch.randint(0, 10, (args.batch,), generator=g)
    with torch.no_grad():
        losses = {k: float(loss_fn(k, m.eval(), x, y)()) for k, m in ms.items()}
    ref = losses[OURS]
    assert all(abs(v - ref) < 1e-4 for v in losses.values()), f"losses differ: {losses}"
    fns = {k: train_step_fn(loss_fn(k, m, x, y), m) for k, m in ms.items()}
    times = interleaved_times(fns, rounds, steps)
    n_params = sum(p.numel() for p in ms[OURS].parameters())
    print(f"\n## training step: image {args.image}, patch {args.patch} ({cfg.n_patches} patches + [CLS]), "
          f"n_layer={args.layers} n_head={args.heads} n_embd={args.width} n_ff={2 * args.width}, batch {args.batch}; "
          f"{n_params:,} parameters; all losses {ref:.4f}; median of {rounds} rounds x {steps} steps")
    print("| model | ms/step | images/s | time / ours |\n|---|---|---|---|")
    base = statistics.median(times[OURS])
    for k, t in times.items():
        s = statistics.median(t)
        print(f"| {k} | {1e3 * s:.2f} | {args.batch / s:,.0f} | {s / base:.2f}x |", flush=True)
    pe = patch_embedding_times(cfg, x, 300)
    print(f"\npatch embedding alone (forward + backward, batch {args.batch}, median of 300 alternating reps): "
          f"Conv2d {1e3 * pe['conv']:.2f} ms, reshape + linear {1e3 * pe['unfold']:.2f} ms "
          f"({pe['conv'] / pe['unfold']:.1f}x)")
    print(f"(1024x1024 matmul re-measured at the end: {matmul_peak() / 1e9:.0f} GFLOP/s)")


if __name__ == "__main__":
    main()
