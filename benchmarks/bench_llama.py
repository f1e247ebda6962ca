"""Training and generation speed of our Llama-style decoder vs transformers' LlamaForCausalLM / MixtralForCausalLM.

    .venv/bin/python benchmarks/bench_llama.py                # both shapes, 1 thread, ~5 min on a busy 2-core machine
    .venv/bin/python benchmarks/bench_llama.py --quick        # small shape only, 2 rounds
    .venv/bin/python benchmarks/bench_llama.py --threads 2 --rounds 5

Training: one step = forward, loss, backward and an AdamW update, at the same config, weights (`from_hf`), batch
and sequence for every model, one process. Dense: ours (SDPA and hand-written attention) vs LlamaForCausalLM (sdpa
and eager). MoE (4 experts, top-2): ours vs MixtralForCausalLM with its default fused-experts kernel (grouped_mm)
and with its per-expert loop (experts_implementation="eager"); the MoE models compute the load-balancing loss in
the step (ours in train mode, HF with output_router_logits=True). The script asserts that all models of a group
give the same loss before timing. Models are timed in interleaved rounds (bench_gpt.interleaved_times); the median
ms/step is reported, and HF time / our time (> 1: ours is faster).

Generation: greedy, batch 1, a 16-token prompt and 128 new tokens, ours with the KV cache vs Hugging Face
generate() (its own cache), dense and MoE; the script asserts identical tokens.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import transformers
from bench_gpt import interleaved_times, matmul_peak  # the GPT benchmark's timing (benchmarks/ is on sys.path)

from llmpath.generation import generate
from llmpath.llama.hf import config_to_hf, from_hf
from llmpath.llama.model import Llama, LlamaConfig

# (name, n_layer, n_head, n_kv_head, n_embd, block_size, batch)
SHAPES = [("4x128", 4, 4, 2, 128, 64, 16), ("6x384", 6, 6, 2, 384, 128, 8)]
N_EXPERT, TOP_K = 4, 2
PROMPT, NEW = 16, 128


def llama_config(shape: tuple, vocab: int, moe: bool, block: int | None = None, tie: bool = True) -> LlamaConfig:
    _, n_layer, n_head, n_kv, n_embd, block_size = shape[:6]
    cfg = LlamaConfig(vocab_size=vocab, block_size=block or block_size, n_layer=n_layer, n_head=n_head, n_kv_head=n_kv,
                      n_embd=n_embd, tie_embeddings=tie)
    if moe:  # Mixtral's grouped_mm needs 16-byte strides on CPU: the expert width rounded to a multiple of 4
        # aux_loss="pooled": Mixtral's balancing loss pools the counts over layers (ours defaults to per layer)
        cfg = LlamaConfig(**{**vars(cfg), "n_expert": N_EXPERT, "top_k": TOP_K, "aux_loss": "pooled"})
        cfg.n_ff = 4 * round(cfg.ff_width / 4)
    return cfg


def hf_model(cfg: LlamaConfig, attn: str = "sdpa", experts: str | None = None, seed: int = 0):
    """A random LlamaForCausalLM / MixtralForCausalLM of our config (no hub), dropout off."""
    torch.manual_seed(seed)
    kw = {"experts_implementation": experts} if experts else {}
    return transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**config_to_hf(cfg)),
                                                         attn_implementation=attn, **kw)


def models(cfg: LlamaConfig) -> dict:
    """Ours first (the baseline), then the Hugging Face models, all holding the same weights."""
    if cfg.n_expert:
        hf = hf_model(cfg, "sdpa", "grouped_mm")
        hf_loop = hf_model(cfg, "sdpa", "eager")
        hf_loop.load_state_dict(hf.state_dict())
        return {"ours (MoE, SDPA)": from_hf(hf, sdpa=True), "HF MixtralForCausalLM (sdpa, grouped_mm experts)": hf,
                "HF MixtralForCausalLM (sdpa, eager experts)": hf_loop}
    hf = hf_model(cfg, "sdpa")
    hf_eager = hf_model(cfg, "eager")
    hf_eager.load_state_dict(hf.state_dict())
    return {"ours (SDPA attention)": from_hf(hf, sdpa=True), "HF LlamaForCausalLM (sdpa)": hf,
            "ours (hand-written attention)": from_hf(hf, sdpa=False), "HF LlamaForCausalLM (eager)": hf_eager}


def loss_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    """The training loss: HF shifts labels = input ids inside; ours takes them shifted (last position -100), so both
    predict the same B (T-1) tokens from the same T inputs (and the MoE routers see the same tokens)."""
    if isinstance(model, Llama):
        return model(x, y)[1]
    if model.config.model_type == "mixtral":  # + router_aux_loss_coef x balancing loss, as ours in train mode
        return model(input_ids=x, labels=x, output_router_logits=True).loss
    return model(input_ids=x, labels=x).loss


def train_step_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)

    def step() -> None:
        loss_fn(model, x, y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def training(shape: tuple, vocab: int, moe: bool, rounds: int, steps: int) -> None:
    cfg = llama_config(shape, vocab, moe)
    ms = models(cfg)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab, (shape[6], cfg.block_size), generator=g)
    y = torch.cat([x[:, 1:], torch.full_like(x[:, :1], -100)], dim=1)
    for m in ms.values():
        m.train()
    losses = {k: loss_fn(m, x, y).item() for k, m in ms.items()}
    ref = next(iter(losses.values()))
    assert all(abs(v - ref) < 1e-4 for v in losses.values()), f"losses differ: {losses}"
    times = interleaved_times({k: train_step_fn(m, x, y) for k, m in ms.items()}, rounds, steps)
    ours = next(iter(ms.values()))
    tokens = x.numel()
    kind = f"MoE {N_EXPERT} experts top-{TOP_K}, expert width {cfg.ff_width}" if moe else f"dense, ff {cfg.ff_width}"
    print(f"\n## training, {shape[0]} {kind}: n_layer={cfg.n_layer} n_head={cfg.n_head} n_kv_head={cfg.n_kv_head} "
          f"n_embd={cfg.n_embd} block {cfg.block_size} batch {shape[6]}; {ours.num_params():,} parameters"
          f"{f' ({ours.num_params(active=True):,} active)' if moe else ''}; loss {ref:.4f} in every model; "
          f"median of {rounds} rounds x {steps} steps")
    print("| model | ms/step | tokens/s | time / ours |\n|---|---|---|---|")
    base = statistics.median(next(iter(times.values())))
    for k, t in times.items():
        s = statistics.median(t)
        print(f"| {k} | {1e3 * s:.1f} | {tokens / s:,.0f} | {s / base:.2f}x |", flush=True)


@torch.no_grad()
def generation(shape: tuple, vocab: int, moe: bool, rounds: int) -> None:
    # 256 positions: room for 16 + 128; untied and perturbed, so that greedy does not just repeat one id
    cfg = llama_config(shape, vocab, moe, block=256, tie=False)
    hf = hf_model(cfg, "sdpa").eval()
    for p in hf.parameters():
        p.add_(0.05 * torch.randn_like(p))
    ours = from_hf(hf)
    prompt = torch.randint(0, vocab, (1, PROMPT), generator=torch.Generator().manual_seed(1))
    runs = {"ours": lambda: generate(ours, prompt, NEW, greedy=True),
            "HF": lambda: hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=NEW,
                                      do_sample=False, eos_token_id=None, pad_token_id=0)}
    outs = {k: fn() for k, fn in runs.items()}  # warm-up, and the tokens to compare
    identical = torch.equal(outs["ours"], outs["HF"])
    assert identical, "generations differ"
    distinct = len(set(outs["HF"][0, PROMPT:].tolist()))
    times = interleaved_times(runs, rounds, 1)
    tps = {k: NEW / statistics.median(t) for k, t in times.items()}
    print(f"| {shape[0]} {'MoE' if moe else 'dense'} ({ours.num_params() / 1e6:.1f}M) | {tps['ours']:,.0f} tok/s | "
          f"{tps['HF']:,.0f} tok/s | {tps['ours'] / tps['HF']:.2f}x | {'yes' if identical else 'NO'} "
          f"({distinct} distinct ids) |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (the presets train with 1)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per measurement (median reported)")
    ap.add_argument("--steps", type=int, default=0, help="training steps per round (0: 10 on 4x128, 3 on 6x384)")
    ap.add_argument("--vocab", type=int, default=65, help="vocabulary size (65: a char-level Shakespeare vocabulary)")
    ap.add_argument("--quick", action="store_true", help="the 4x128 shape only, 2 rounds")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()  # no notes about the loss type or generation config
    shapes = SHAPES[:1] if args.quick else SHAPES
    rounds = 2 if args.quick else args.rounds
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} thread(s), "
          f"fp32; 1024x1024 matmul {matmul_peak() / 1e9:.0f} GFLOP/s (a gauge of the machine's load)")
    for shape in shapes:
        steps = args.steps or (10 if shape is SHAPES[0] else 3)
        for moe in (False, True):
            training(shape, args.vocab, moe, rounds, steps)
    print(f"\n## generation: greedy, batch 1, prompt {PROMPT} + {NEW} new tokens, median of {rounds} rounds")
    print("| shape | ours, KV cache | HF `generate()` (cache) | HF time / ours | identical tokens |")
    print("|---|---|---|---|---|")
    for shape in shapes:
        for moe in (False, True):
            generation(shape, args.vocab, moe, rounds)
    print(f"(matmul gauge at the end: {matmul_peak() / 1e9:.0f} GFLOP/s)")


if __name__ == "__main__":
    main()
