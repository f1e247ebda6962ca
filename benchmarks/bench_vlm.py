"""Training-step speed of our captioner vs transformers.LlavaForConditionalGeneration with identical weights.

    .venv/bin/python benchmarks/bench_vlm.py              # CLIP-captioner shape: ViT 4 x 64 on 56x56, patch 14; decoder 2 x 64
    .venv/bin/python benchmarks/bench_vlm.py --quick      # 2 rounds x 3 steps
    .venv/bin/python benchmarks/bench_vlm.py --patch 7    # 64 image tokens instead of 16

One step = forward, the caption loss, backward and an AdamW update on the same batch, for our VLM (the model
`llmpath vlm caption` trains, ViT and decoder both trained here) and for Hugging Face's Llava holding the same
weights (its input is [image placeholder] * N + caption, labels -100 on the image positions and the padding).
Rounds are interleaved so that load from other processes hits both alike; the median ms/step is reported. Before
timing, the script asserts that both give the same loss on the batch.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import transformers

from llmpath.llama.model import LlamaConfig
from llmpath.vit.model import ViTConfig
from llmpath.vlm.hf import config_to_hf, load_into_hf
from llmpath.vlm.model import VLM, VLMConfig, caption_loss

from bench_gpt import interleaved_times, matmul_peak  # benchmarks/ is the script's folder, so its siblings import

OURS, HF = "ours (VLM: ViT -> projector -> Llama-style decoder, SDPA)", "HF LlavaForConditionalGeneration (sdpa)"


def models(cfg: VLMConfig) -> dict:
    torch.manual_seed(0)
    ours = VLM(cfg)
    hf = transformers.LlavaForConditionalGeneration(config_to_hf(cfg))
    return {OURS: ours, HF: load_into_hf(hf, ours)}


def step_fns(ms: dict, x: torch.Tensor, ids: torch.Tensor, image_id: int, n_image: int) -> tuple[dict, dict]:
    """({name: one training step}, {name: its loss now}) on the same batch."""
    hf_ids = torch.cat([torch.full((len(ids), n_image), image_id), ids], 1)
    labels = hf_ids.masked_fill(hf_ids == 0, -100)
    labels[:, :n_image + 1] = -100  # Llava shifts inside: [bos] after the image is not predicted, as in ours
    losses = {OURS: lambda: caption_loss(ms[OURS], (x, ids)),
              HF: lambda: ms[HF](input_ids=hf_ids, pixel_values=x, labels=labels).loss}
    fns = {}
    for name, model in ms.items():
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def step(loss=losses[name], opt=opt) -> None:
            loss().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        fns[name] = step
    return fns, losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (the presets train with 1)")
    ap.add_argument("--rounds", type=int, default=20, help="interleaved rounds (median reported)")
    ap.add_argument("--steps", type=int, default=3, help="training steps per model per round")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--patch", type=int, default=14)
    ap.add_argument("--caption", type=int, default=12, help="caption tokens per row, [bos] and [eos] included")
    ap.add_argument("--quick", action="store_true", help="2 rounds x 3 steps")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    rounds, steps = (2, 3) if args.quick else (args.rounds, args.steps)
    V = 48  # a caption vocabulary's size; the last id is Llava's image placeholder, never in a caption
    cfg = VLMConfig(vit=ViTConfig(image_size=56, patch_size=args.patch, channels=3, n_layer=4, n_head=4, n_embd=64,
                                  n_ff=128),
                    decoder=LlamaConfig(vocab_size=V, block_size=96, n_layer=2, n_head=4, n_embd=64))
    peak = matmul_peak()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} thread(s), "
          f"fp32; 1024x1024 matmul {peak / 1e9:.0f} GFLOP/s at the start")
    ms = models(cfg)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 3, 56, 56, generator=g)
    ids = torch.randint(1, V - 1, (args.batch, args.caption), generator=g)
    ids[::2, -3:] = 0  # half the rows padded
    fns, losses = step_fns(ms, x, ids, V - 1, cfg.n_image_tokens)
    with torch.no_grad():
        now = {k: float(f()) for k, f in losses.items()}
    assert abs(now[OURS] - now[HF]) < 1e-4, f"losses differ: {now}"
    times = interleaved_times(fns, rounds, steps)
    n_params = sum(p.numel() for p in ms[OURS].parameters())
    print(f"\n## training step: 56x56 images, patch {args.patch} ({cfg.n_image_tokens} image tokens), ViT 4 x 64, "
          f"decoder 2 x 64, {args.caption} caption tokens, batch {args.batch}; {n_params:,} parameters; "
          f"both losses {now[OURS]:.4f}; median of {rounds} rounds x {steps} steps")
    print("| model | ms/step | images/s | time / ours |\n|---|---|---|---|")
    base = statistics.median(times[OURS])
    for k, t in times.items():
        s = statistics.median(t)
        print(f"| {k} | {1e3 * s:.2f} | {args.batch / s:,.0f} | {s / base:.2f}x |", flush=True)
    print(f"(1024x1024 matmul re-measured at the end: {matmul_peak() / 1e9:.0f} GFLOP/s)")


if __name__ == "__main__":
    main()
