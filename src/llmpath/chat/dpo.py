"""DPO: the preferences straight into the policy, no reward model and no sampling.

    cfg = build_config(DPORun, ["--preset=small"], DPO_PRESETS)   # starts from runs/chat/small-sft
    summary = run_dpo(cfg)       # runs/chat/small-dpo: val loss, implicit-reward accuracy and margin, log-probs

RLHF maximises the reward minus β times the KL to the reference: max_π E[r(x, y)] − β KL(π || π_ref). That problem
has a closed-form solution, π*(y|x) = π_ref(y|x) exp(r(x, y)/β) / Z(x), so the reward can be written through the
policy: r(x, y) = β log(π*(y|x)/π_ref(y|x)) + β log Z(x). Put that into Bradley-Terry's P(chosen ≻ rejected) =
σ(r_c − r_r) and the unknown Z(x) cancels, since both answers share the prompt x:

    loss = −log σ(β [(log π(y_c|x) − log π_ref(y_c|x)) − (log π(y_r|x) − log π_ref(y_r|x))])

(Rafailov et al., 2023). β log(π/π_ref) is the policy's *implicit reward*; training is supervised learning on the
pairs through the shared fit, with the frozen SFT model as the reference. At the start π = π_ref, so every implicit
reward is 0 and the loss is exactly ln 2. Watch the chosen answers' log-probability: the loss only asks the gap to
grow, and it often grows by pushing both answers down, the rejected faster (the summary records both).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from llmpath.chat.base import TOPIC
from llmpath.chat.objectives import dpo_loss, sequence_logprobs
from llmpath.chat.preferences import PAIR_KINDS, PairBatches, pair_tensors
from llmpath.chat.reward import ALIGN_PRESETS, AlignRun, load_sft
from llmpath.common import count_params, log, setup_logging
from llmpath.config import opt
from llmpath.data.batching import sequential_batches
from llmpath.plotting import save_fig, training_curves
from llmpath.runs import comparable_config, reuse, start_run
from llmpath.train import fit, read_metrics


@dataclass
class DPORun(AlignRun):
    beta: float = opt(0.1, "β: how far the policy may move from the reference (smaller: further)", min=1e-6)

    def default_name(self) -> str:
        return f"{self.preset or 'custom'}-dpo"


DPO_PRESETS: dict[str, dict] = {
    "tiny": {**ALIGN_PRESETS["tiny"], "train.lr": 1e-4, "train.max_steps": 10, "train.batch_size": 8,
             "train.eval_interval": 5, "max_pairs": 16, "max_eval_pairs": 4},
    "small": {**ALIGN_PRESETS["small"], "train.lr": 1e-4, "train.max_steps": 100, "train.batch_size": 16,
              "train.eval_interval": 50, "max_pairs": 2000, "max_eval_pairs": 100},
    "base": {**ALIGN_PRESETS["base"], "train.lr": 1e-4, "train.max_steps": 600, "train.batch_size": 16,
             "train.eval_interval": 150},
}


def answer_logprobs(model: nn.Module, ids: Tensor, mask: Tensor) -> Tensor:
    """(B, 2) sum of log-probabilities of each answer's tokens, of a PairBatches batch (B, 2, T)."""
    flat, m = ids.flatten(0, 1), mask.flatten(0, 1)  # (2B, T)
    logits, _ = model(flat[:, :-1])
    return sequence_logprobs(logits.float(), flat[:, 1:], m[:, 1:]).view(-1, 2)


def dpo_batch(policy: nn.Module, ref: nn.Module, batch, beta: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(loss, chosen implicit rewards, rejected implicit rewards, policy log-probs (B, 2)) of a batch of pairs."""
    ids, mask, _ = batch
    pol = answer_logprobs(policy, ids, mask)
    with torch.no_grad():
        refl = answer_logprobs(ref, ids, mask)
    loss, chosen, rejected = dpo_loss(pol[:, 0], pol[:, 1], refl[:, 0], refl[:, 1], beta)
    return loss, chosen, rejected, pol


@torch.no_grad()
def dpo_report(policy: nn.Module, ref: nn.Module, tok, pairs: list, beta: float, batch_size: int = 32) -> dict:
    """Loss, implicit-reward accuracy and margin, and mean answer log-probs, overall and per kind of pair."""
    batch, kept = pair_tensors(tok, pairs, policy.cfg.block_size)
    was = policy.training
    policy.eval()
    parts = []
    try:
        for idx in sequential_batches(len(kept), batch_size):
            b = tuple(t[idx] for t in batch)
            ids, mask, _ = b
            pol = answer_logprobs(policy, ids, mask)
            refl = answer_logprobs(ref, ids, mask)
            parts.append(torch.cat([pol, refl], 1))  # (b, 4): policy chosen, rejected; reference chosen, rejected
    finally:
        policy.train(was)
    lp = torch.cat(parts)
    kinds = [p.kind for p in kept]

    def stats(sel: list[int]) -> dict:
        x = lp[sel]
        loss, c, r = dpo_loss(x[:, 0], x[:, 1], x[:, 2], x[:, 3], beta)
        return {"n": len(sel), "loss": loss.item(), "accuracy": float((c > r).float().mean()),
                "margin": float((c - r).mean()), "chosen_logp": float(x[:, 0].mean()),
                "rejected_logp": float(x[:, 1].mean()), "ref_chosen_logp": float(x[:, 2].mean()),
                "ref_rejected_logp": float(x[:, 3].mean())}

    return {**stats(list(range(len(kept)))),
            "kinds": {k: stats([i for i, x in enumerate(kinds) if x == k]) for k in PAIR_KINDS if k in kinds}}


def logp_figure(rows: list[dict], title: str):
    """Val implicit-reward accuracy and margin, and the chosen and rejected answers' log-probs, over the steps."""
    import matplotlib.pyplot as plt

    from llmpath.plotting import use_cjk

    use_cjk()
    ev = [r for r in rows if "val_chosen_logp" in r]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    s = [r["step"] for r in ev]
    a.plot(s, [r["val_chosen_logp"] for r in ev], "o-", label="被选中回答")
    a.plot(s, [r["val_rejected_logp"] for r in ev], "o-", label="被拒绝回答")
    a.set(title="对数概率（验证对，均值）", xlabel="步数")
    a.legend()
    b.plot(s, [r["val_accuracy"] for r in ev], "o-", label="隐式奖励准确率")
    b.plot(s, [r["val_margin"] for r in ev], "o-", label="隐式奖励差距")
    b.set(title="隐式奖励（验证对）", xlabel="步数")
    b.legend()
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def run_dpo(cfg: DPORun) -> dict:
    """DPO from the SFT run on the preference pairs (or the finished run reused); the summary."""
    setup_logging()
    cfg = cfg.resolved()
    if (done := reuse(cfg, TOPIC)) is not None:
        return done
    key = comparable_config(cfg)
    policy, tok, sft_cfg = load_sft(cfg, dropout=0.0)  # dropout would make π ≠ π_ref at the start
    cfg = cfg.shaped_like(policy, sft_cfg)
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    pairs = cfg.pairs()
    batches = PairBatches(tok, pairs["train"], cfg.train.batch_size, policy.cfg.block_size, seed=cfg.seed)
    before = dpo_report(policy, ref, tok, pairs["test"], cfg.beta)
    # model_class: the checkpoints record this run's config class, so load_run rebuilds the policy from them
    run = start_run(cfg, TOPIC, tokenizer=tok, key=key, model_class="llmpath.llama.model:Llama")
    log.info(f"DPO of {cfg.base_path()} ({count_params(policy):,} parameters), β={cfg.beta}: {len(batches.rows):,} "
             f"train pairs -> {run.path}")

    def evaluate(m: nn.Module) -> dict:
        rep = dpo_report(m, ref, tok, pairs["val"], cfg.beta)
        return {f"val_{k}": rep[k] for k in ("loss", "accuracy", "margin", "chosen_logp", "rejected_logp")}

    res = fit(policy, lambda m, b: dpo_batch(m, ref, b, cfg.beta)[0], batches, cfg.train, run=run,
              unit="samples", restore_best=True, evaluate=evaluate)
    test = dpo_report(policy, ref, tok, pairs["test"], cfg.beta)
    rows = read_metrics(run.path / "metrics.jsonl")
    figs = [save_fig(training_curves(rows, "DPO 训练"), run.figures / "curves.png"),
            save_fig(logp_figure(rows, "DPO：隐式奖励与对数概率"), run.figures / "logp.png")]
    summary = {"sft": str(cfg.base_path()), "params": count_params(policy), "steps": res.step, "val_loss": res.best,
               "train_loss": res.train_loss, "seconds": round(res.seconds, 1), "beta": cfg.beta, "before": before,
               "test": test, "figures": figs}
    summary = run.finish(summary)
    log.info(f"DPO: test loss {before['loss']:.4f} -> {test['loss']:.4f}, implicit-reward accuracy "
             f"{100 * test['accuracy']:.1f}%, chosen log-prob {before['chosen_logp']:.2f} -> {test['chosen_logp']:.2f}")
    return summary
