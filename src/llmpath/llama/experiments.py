"""From GPT-2's block to Llama's, one change at a time, and a mixture of experts: runs and tables.

    configs = ablation_configs(cfg, seeds=[0, 1])   # every variant x seed, equal parameters and steps
    rows = [train_lm(c) for c in configs]

Every run is stage 5's recipe on stage 5's data (char-level Shakespeare, the same split, steps, batch,
learning rate and init), so the only difference between two rows is the architecture. A SwiGLU
feed-forward's width is chosen so that the model has the GPT-2 block's parameter count; an MoE's experts
are each 1/top_k of the dense width, so that a token meets the dense model's number of weights.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace

import torch

from llmpath.config import TrainConfig, sub
from llmpath.gpt.model import GPT, GPTConfig
from llmpath.gpt.pretrain import GPTRun, LMRun, pretrain
from llmpath.llama.model import Llama, LlamaConfig
from llmpath.llama.moe import expert_usage
from llmpath.runs import run_path, variant
from llmpath.train import read_metrics

TOPIC = "llama"


@dataclass
class LlamaRun(LMRun):
    model: LlamaConfig = sub(LlamaConfig)
    train: TrainConfig = sub(TrainConfig)


GPT2_BLOCK = dict(norm="layer", pos="learned", mlp="gelu", bias=True, n_kv_head=0)

# (name, Chinese label, model overrides): each change alone on GPT-2's block, then all of them together
VARIANTS: list[tuple[str, str, dict]] = [
    ("gpt2", "GPT-2 的块（LayerNorm、学习的位置、GELU、MHA、有偏置）", GPT2_BLOCK),
    ("rmsnorm", "+ RMSNorm", {**GPT2_BLOCK, "norm": "rms"}),
    ("rope", "+ RoPE", {**GPT2_BLOCK, "pos": "rope"}),
    ("swiglu", "+ SwiGLU", {**GPT2_BLOCK, "mlp": "swiglu"}),
    ("gqa", "+ GQA（4 个查询头共享 2 组 K、V）", {**GPT2_BLOCK, "n_kv_head": -2}),
    ("llama", "Llama 式（以上全部，无偏置）", dict(norm="rms", pos="rope", mlp="swiglu", bias=False, n_kv_head=-2)),
]
MOE = ("moe", "Llama 式 + MoE（4 个专家，top-2）", {"n_expert": 4, "top_k": 2})
# the same MoE with Hugging Face's balancing loss, whose counts are pooled over the layers
MOE_POOLED = ("moe-pooled", "Llama 式 + MoE，均衡损失跨层汇总（Hugging Face 的做法）", {**MOE[2], "aux_loss": "pooled"})


def _params(cfg: LlamaConfig) -> int:
    return Llama(replace(cfg, vocab_size=cfg.vocab_size or 65)).num_params(active=True)


def matched_ff(cfg: LlamaConfig, target: int) -> int:
    """The SwiGLU width (per expert with MoE) whose model has `target` (active) parameters, to the nearest unit."""
    a, b = _params(replace(cfg, n_ff=64)), _params(replace(cfg, n_ff=128))
    per_unit = (b - a) / 64  # parameters are linear in the width: 3 n_embd per unit per block (x top_k)
    return max(1, round(64 + (target - a) / per_unit))


def model_for(base: LlamaConfig, overrides: dict) -> LlamaConfig:
    """base with a variant's switches; n_kv_head=-k means n_head/k; SwiGLU widths matched to GPT-2's block."""
    o = dict(overrides)
    if o.get("n_kv_head", 0) < 0:
        o["n_kv_head"] = base.n_head // -o["n_kv_head"]
    cfg = replace(base, **o)
    if cfg.mlp == "swiglu" and not base.n_ff:
        target = _params(replace(base, **GPT2_BLOCK))
        if cfg.n_expert:  # equal active parameters: the dense Llama's width split over top_k experts
            dense = model_for(base, VARIANTS[-1][2])
            target = _params(dense)
        cfg = replace(cfg, n_ff=matched_ff(cfg, target))
    return cfg


def variant_run(cfg: LlamaRun, name: str, seed: int | None = None) -> LlamaRun:
    """The run of one variant (a name of VARIANTS or "moe"), in runs/llama/<preset>-<name>[-seed<k>]."""
    table = {n: o for n, _, o in VARIANTS}
    moe = {"moe": MOE[2], "moe-pooled": MOE_POOLED[2]}
    overrides = {**table["llama"], **moe[name]} if name in moe else table[name]
    seed = cfg.seed if seed is None else seed
    c = variant(cfg, name if seed == cfg.seed else f"{name}-seed{seed}")  # the compare runs are the ablation's first seed
    c.model = model_for(cfg.model, overrides)
    c.seed = seed
    if name in moe:  # expert usage is read at every evaluation: more of them for the usage-over-training figure
        c.train = replace(c.train, eval_interval=min(c.train.eval_interval or 100, 100))
    return c


def gpt_run(cfg: LlamaRun) -> GPTRun:
    """Stage 5's GPT with cfg's shape, data, recipe and seed: runs/gpt/<name> is that chapter's own run
    (the same folder and config as `llmpath gpt train --preset=small`, so a finished one is reused)."""
    m = cfg.model
    fields = {f: getattr(cfg, f) for f in GPTRun.__dataclass_fields__ if f not in ("model", "train")}
    model = GPTConfig(block_size=m.block_size, n_layer=m.n_layer, n_head=m.n_head, n_embd=m.n_embd,
                      dropout=m.dropout, sdpa=m.sdpa)
    return GPTRun(**fields, model=model, train=replace(cfg.train))


def llama_from_gpt(gpt: GPT) -> Llama:
    """Our Llama in GPT-2 mode holding a GPT's weights: the same function (tests/test_llama_model.py)."""
    c = gpt.cfg
    cfg = LlamaConfig(vocab_size=c.vocab_size, block_size=c.block_size, n_layer=c.n_layer, n_head=c.n_head,
                      n_embd=c.n_embd, dropout=c.dropout, sdpa=c.sdpa, norm_eps=c.layer_norm_eps, **GPT2_BLOCK)
    model = Llama(cfg)
    sd = {"embed.weight": gpt.wte.weight, "wpe.weight": gpt.wpe.weight, "lm_head.weight": gpt.wte.weight,
          "norm.weight": gpt.ln_f.weight, "norm.bias": gpt.ln_f.bias}
    for i, b in enumerate(gpt.h):
        p = f"layers.{i}."
        for ours, theirs in (("attn_norm", b.ln_1), ("ffn_norm", b.ln_2), ("attn.wo", b.attn.c_proj),
                             ("ffn.c_fc", b.mlp.c_fc), ("ffn.c_proj", b.mlp.c_proj)):
            sd[p + ours + ".weight"], sd[p + ours + ".bias"] = theirs.weight, theirs.bias
        for name, w, bias in zip(("wq", "wk", "wv"), b.attn.c_attn.weight.chunk(3), b.attn.c_attn.bias.chunk(3)):
            sd[p + f"attn.{name}.weight"], sd[p + f"attn.{name}.bias"] = w, bias
    model.load_state_dict(sd)
    return model.train(gpt.training)


def train_any(cfg: LlamaRun | GPTRun) -> dict:
    """Train (or reuse) a run of either decoder; the summary carries total and active parameter counts."""
    if isinstance(cfg, GPTRun):
        summary = pretrain(cfg, "gpt", GPT, title="GPT")
        return {**summary, "total_params": summary["params"], "active_params": summary["params"], "usage": None}
    return train_lm(cfg)


def moe_usage(model: Llama, probe: torch.Tensor) -> dict:
    """Every evaluation of an MoE run: each layer's share of assignments per expert on fixed val windows."""
    if not model.cfg.n_expert:
        return {}
    model(probe)
    usage = expert_usage(model.router_logits, model.cfg.top_k)  # (n_layer, E)
    out = {f"usage_{i}_{e}": float(u) for i, row in enumerate(usage) for e, u in enumerate(row)}
    out["usage_max"] = float(usage.max())
    return out


def train_lm(cfg: LlamaRun) -> dict:
    """Train one variant (or reuse it when finished) and return its summary with the parameter counts."""
    def counts(model: Llama) -> dict:
        return {"active_params": model.num_params(active=True), "total_params": model.num_params(),
                "usage": final_usage(cfg)}

    return pretrain(cfg, TOPIC, Llama, title="Llama", evaluate_extra=moe_usage, summarize=counts)


def final_usage(cfg: LlamaRun) -> list[list[float]] | None:
    """(n_layer, E) expert shares at the last evaluation of an MoE run, from its metrics."""
    rows = [r for r in read_metrics(run_path(cfg, TOPIC) / "metrics.jsonl") if "usage_max" in r]
    if not rows:
        return None
    last = rows[-1]
    return [[last[f"usage_{i}_{e}"] for e in range(cfg.model.n_expert)] for i in range(cfg.model.n_layer)]


def usage_history(cfg: LlamaRun) -> list[tuple[int, list[list[float]]]]:
    """[(step, (n_layer, E) shares)] of every evaluation of an MoE run: the usage-over-training figure's data."""
    out = []
    for r in read_metrics(run_path(cfg, TOPIC) / "metrics.jsonl"):
        if "usage_max" in r:
            out.append((r["step"], [[r[f"usage_{i}_{e}"] for e in range(cfg.model.n_expert)]
                                    for i in range(cfg.model.n_layer)]))
    return out


def mean_spread(values: list[float]) -> str:
    """'mean ± half-range' over seeds (the value alone for one seed)."""
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {(max(values) - min(values)) / 2:.4f}"

