"""Pretraining-step speed of our BERT vs transformers.BertForPreTraining with identical weights, one process.

    .venv/bin/python benchmarks/bench_bert.py                 # 4 x 256, seq 128, batch 16, 1 thread, ~3 min on 2 cores
    .venv/bin/python benchmarks/bench_bert.py --quick         # 2 rounds x 1 step, ~1 min
    .venv/bin/python benchmarks/bench_bert.py --threads 2 --rounds 5

One step = forward, MLM + NSP loss, backward and an AdamW update, on the same batch (15% of the tokens
masked, sentence pairs with segment ids and NSP labels, dropout on as in pretraining) for every model:

- ours (SDPA, masked-only logits): `pretrain_loss`, which runs the MLM head's (C x V) decoder on the masked
  positions only;
- ours (hand-written attention): the same with the readable attention (softmax(QK^T/sqrt(d)) V by hand);
- ours (SDPA, full logits): logits at every position, then cross-entropy with ignore_index=-100, which is what
  BertForPreTraining computes: the like-for-like comparison with Hugging Face;
- HF BertForPreTraining with attn_implementation "sdpa" and "eager".

The models are timed in interleaved rounds (A B C D E, A B C D E, ...) so that load from other processes hits
them alike; the median ms/step over the rounds is reported. Before timing, the script asserts that every model
gives the same loss (dropout off) on the batch.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F
import transformers

from llmpath.bert.hf import config_to_hf, from_hf
from llmpath.bert.model import IGNORE, BERTConfig
from llmpath.bert.objectives import PretrainBatch, pretrain_loss

from bench_gpt import interleaved_times, matmul_peak  # benchmarks/ is the script's folder, so its siblings import

OURS = "ours (SDPA, masked-only logits)"


def make_batch(batch: int, seq: int, vocab: int, mask_prob: float, seed: int = 0) -> PretrainBatch:
    """Full-length pairs ([CLS] at 0, segment B in the second half), mask_prob of the other positions labelled."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, seq), generator=g)  # 0-4: [PAD] and the other special tokens
    ids[:, 0] = 2
    segments = (torch.arange(seq) >= seq // 2).long().expand(batch, seq).clone()
    chosen = torch.rand(batch, seq, generator=g) < mask_prob
    chosen[:, 0] = False
    labels = torch.where(chosen, torch.randint(5, vocab, (batch, seq), generator=g), torch.full_like(ids, IGNORE))
    return PretrainBatch(ids, segments, labels, torch.randint(0, 2, (batch,), generator=g))


def hf_bert(cfg: BERTConfig, attn: str, seed: int = 0) -> transformers.BertForPreTraining:
    """A random BertForPreTraining of our config's shape (no hub); `attn` is "sdpa" or "eager"."""
    torch.manual_seed(seed)
    hf_cfg = config_to_hf(cfg)
    hf_cfg._attn_implementation = attn
    return transformers.BertForPreTraining(hf_cfg)


def models(cfg: BERTConfig) -> dict:
    """Every variant, all holding the weights of one random BertForPreTraining."""
    hf_sdpa = hf_bert(cfg, "sdpa")
    hf_eager = hf_bert(cfg, "eager")
    hf_eager.load_state_dict(hf_sdpa.state_dict())
    return {OURS: from_hf(hf_sdpa, sdpa=True), "ours (hand-written attention)": from_hf(hf_sdpa, sdpa=False),
            "ours (SDPA, full logits)": from_hf(hf_sdpa, sdpa=True),
            "HF BertForPreTraining (sdpa)": hf_sdpa, "HF BertForPreTraining (eager)": hf_eager}


def loss_fn(name: str, model: torch.nn.Module, b: PretrainBatch):
    """The loss each variant computes in a step (a closure over the batch)."""
    if name.startswith("HF"):  # the usual call: labels at every position, -100 where nothing is predicted
        kw = dict(input_ids=b.ids, token_type_ids=b.segments, attention_mask=torch.ones_like(b.ids),
                  labels=b.mlm_labels, next_sentence_label=b.nsp_labels)
        return lambda: model(**kw).loss
    if "full logits" in name:
        def full():
            mlm, nsp = model(b.ids, b.segments)  # (B, T, V): every position through the decoder
            return F.cross_entropy(mlm.flatten(0, 1), b.mlm_labels.flatten()) + F.cross_entropy(nsp, b.nsp_labels)
        return full
    return lambda: pretrain_loss(model, b)


def train_step_fn(loss, model: torch.nn.Module):
    """A closure doing one training step with AdamW (the same optimizer settings for every model)."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)

    def step() -> None:
        loss().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def check_equal_losses(ms: dict, b: PretrainBatch) -> float:
    """Every variant's loss on the batch, dropout off (eval mode): they must agree before timing means anything."""
    with torch.no_grad():
        losses = {k: float(loss_fn(k, m.eval(), b)()) for k, m in ms.items()}
    ref = losses[OURS]
    assert all(abs(v - ref) < 1e-4 * max(1.0, abs(ref)) for v in losses.values()), f"losses differ: {losses}"
    return ref


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (the presets train with 1)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median reported)")
    ap.add_argument("--steps", type=int, default=3, help="training steps per model per round")
    ap.add_argument("--batch", type=int, default=16, help="pairs per batch")
    ap.add_argument("--seq", type=int, default=128, help="tokens per pair (max_len)")
    ap.add_argument("--vocab", type=int, default=8000, help="vocabulary size (8000: the small preset's WordPiece)")
    ap.add_argument("--mask-prob", type=float, default=0.15, help="share of positions with an MLM label")
    ap.add_argument("--dropout", type=float, default=0.1, help="dropout during the timed steps (BERT: 0.1)")
    ap.add_argument("--quick", action="store_true", help="2 rounds x 1 step")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    rounds, steps = (2, 1) if args.quick else (args.rounds, args.steps)
    cfg = BERTConfig(vocab_size=args.vocab, max_len=args.seq, n_layer=4, n_head=4, n_embd=256, n_ff=1024,
                     dropout=args.dropout)
    peak = matmul_peak()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} thread(s), "
          f"fp32; 1024x1024 matmul {peak / 1e9:.0f} GFLOP/s at the start")
    ms = models(cfg)
    b = make_batch(args.batch, args.seq, args.vocab, args.mask_prob)
    loss = check_equal_losses(ms, b)
    n_masked = int((b.mlm_labels != IGNORE).sum())
    fns = {k: train_step_fn(loss_fn(k, m, b), m) for k, m in ms.items()}
    times = interleaved_times(fns, rounds, steps)
    n_params = sum(p.numel() for p in ms[OURS].parameters())
    tokens = args.batch * args.seq
    print(f"\n## pretraining step: n_layer=4 n_head=4 n_embd=256 n_ff=1024, vocab {args.vocab}, seq {args.seq}, "
          f"batch {args.batch} ({n_masked} masked tokens = {n_masked / tokens:.1%}), dropout {args.dropout}; "
          f"{n_params:,} parameters; all losses {loss:.4f} with dropout off; median of {rounds} rounds x {steps} steps")
    print("| model | ms/step | tokens/s | time / ours |\n|---|---|---|---|")
    base = statistics.median(times[OURS])
    for k, t in times.items():
        s = statistics.median(t)
        print(f"| {k} | {1e3 * s:.1f} | {tokens / s:,.0f} | {s / base:.2f}x |", flush=True)
    print(f"(1024x1024 matmul re-measured at the end: {matmul_peak() / 1e9:.0f} GFLOP/s)")


if __name__ == "__main__":
    main()
