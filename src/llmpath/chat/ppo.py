"""RLHF with PPO: the SFT model learns to write what the reward model scores high, held near where it started.

    cfg = build_config(PPORun, ["--preset=small"], PPO_PRESETS)   # policy: runs/chat/small-sft, reward: small-rm
    summary = run_ppo(cfg)          # runs/chat/small-ppo: reward, KL, entropy and length curves; before/after

This module owns its loop (not the shared fit) because the loop is the lesson. One iteration:

1. Rollout. The policy π (the SFT model) samples an answer to each prompt (写一条好评 and its variants).
2. Score. The reward model scores each whole answer: one number, at the last token. A per-token penalty keeps π
   near the frozen reference π_ref (the SFT model): r_t = −β (log π(a_t) − log π_ref(a_t)), and the last token
   also gets the reward model's score (minus a penalty when the answer never closed its turn). β is fixed, or
   adaptive: it grows when the measured KL is above the target and shrinks below (Ziegler et al., 2019).
3. Advantages. The critic (a copy of the reward model, a value per prefix) gives V(s_t); generalised advantage
   estimation (GAE, λ) turns rewards and values into advantages A_t and returns R_t; advantages are whitened.
4. Update, a few epochs over minibatches of this rollout: the clipped surrogate −min(ρA, clip(ρ, 1−ε, 1+ε)A)
   with ρ = π/π_old keeps each update small, and the critic regresses R_t with its own clipped loss.

Two judges read the outcome. The reward model is the one the policy optimises, so its score can rise for the wrong
reasons (reward hacking: a repeated word it happens to like); the stage-1 sentiment classifier never took part, so
when the reward goes up and that judge's positive rate does not, the policy has learned the reward model's flaws,
not positive reviews. Both are measured on answers sampled at temperature 1 to held-out prompts, with the per-token
KL to the reference on the same samples.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from llmpath.chat.base import TOPIC
from llmpath.chat.baselines import stage1_labels
from llmpath.chat.objectives import (AdaptiveKLController, FixedKLController, clipped_surrogate, entropy, gae,
                                     masked_whiten, token_logprobs, value_loss)
from llmpath.chat.reward import ALIGN_PRESETS, AlignRun, RewardModel, load_reward_model, load_sft
from llmpath.chat.rollout import LoopCheckpoint, chat_prompt, per_token_kl, response_logprobs, sample, update
from llmpath.common import count_params, log, setup_logging
from llmpath.config import ConfigError, opt
from llmpath.plotting import save_fig, use_cjk
from llmpath.runs import comparable_config, reuse, start_run
from llmpath.train import StopFlag, make_optimizer, read_metrics


@dataclass
class PPORun(AlignRun):
    reward_run: str = opt("", "the reward model's run folder (default <out>/chat/<preset>-rm)")
    ppo_epochs: int = opt(2, "passes over each rollout", min=1)
    minibatch: int = opt(8, "answers per update", min=1)
    clip: float = opt(0.2, "ε of the clipped surrogate: the ratio π/π_old counts within 1±ε", min=0)
    vf_clip: float = opt(0.2, "the critic's values move at most this much from the rollout's per update", min=0)
    vf_coef: float = opt(0.1, "weight of the critic's loss beside the policy's", min=0)
    kl_coef: float = opt(0.1, "β: the per-token KL penalty's coefficient (its start when adaptive)", min=0)
    kl_target: float = opt(0.0, "adapt β toward this KL per token (0: β stays fixed)", min=0)
    kl_horizon: int = opt(1000, "answers over which an adaptive β may change by about 20%", min=1)
    gamma: float = opt(1.0, "discount per token", min=0, max=1)
    lam: float = opt(0.95, "GAE's λ: 0 = one-step TD, 1 = Monte-Carlo returns", min=0, max=1)
    temperature: float = opt(1.0, "sampling temperature of the rollouts and the evaluations", min=0.01)
    end_penalty: float = opt(1.0, "subtracted from the score of an answer that never closed its turn", min=0)
    eval_samples: int = opt(32, "answers to held-out prompts per evaluation", min=1)
    judge_preset: str = opt("small", "preset of the stage-1 sentiment classifier that judges independently")

    def default_name(self) -> str:
        return f"{self.preset or 'custom'}-ppo"

    def reward_path(self) -> Path:
        return Path(self.reward_run or Path(self.out) / TOPIC / f"{self.preset or 'small'}-rm")


PPO_PRESETS: dict[str, dict] = {
    "tiny": {**ALIGN_PRESETS["tiny"], "train.lr": 1e-4, "train.max_steps": 3, "train.batch_size": 4,
             "train.eval_interval": 3, "train.warmup_steps": 0, "minibatch": 4, "max_new_tokens": 8,
             "eval_samples": 4, "max_pairs": 16, "max_eval_pairs": 4, "judge_preset": "tiny"},
    "small": {**ALIGN_PRESETS["small"], "train.lr": 3e-5, "train.max_steps": 20, "train.batch_size": 16,
              "train.eval_interval": 10, "train.warmup_steps": 0, "max_new_tokens": 48},
    "base": {**ALIGN_PRESETS["base"], "train.lr": 3e-5, "train.max_steps": 60, "train.batch_size": 16,
             "train.eval_interval": 20, "train.warmup_steps": 0, "max_new_tokens": 48},
}


def review_prompts(cfg: AlignRun, tok, split: str, label: str = "positive") -> list[list[int]]:
    """The ids of the Chinese 写一条好评-style prompts of a split (one per review pair of that sentiment)."""
    pairs = [p for p in cfg.pairs()[split] if p.kind == "review" and p.label == label and p.lang == "zh"]
    if not pairs:
        raise ConfigError(f"no {label} Chinese review prompt in the {split} pairs; keep 'review' in --kinds")
    return [chat_prompt(tok, p.prompt) for p in pairs]


@torch.no_grad()
def review_report(policy: nn.Module, ref: nn.Module, rm: RewardModel, tok, prompts: list[list[int]], n: int,
                  max_new_tokens: int, temperature: float = 1.0, seed: int = 0, judge_preset: str = "small",
                  out: str = "runs", show: int = 4) -> dict:
    """Answers to n held-out prompts (sampled, a fixed generator): mean reward (the reward model's score alone, without
    the training's end penalty), the stage-1 judge's positive rate, KL per token to the reference, answer length, %
    closed with <|im_end|>, and the first `show` answers."""
    g = torch.Generator().manual_seed(seed)
    ro = sample(policy, tok, prompts[:n] if len(prompts) >= n else (prompts * n)[:n], 1, max_new_tokens,
                temperature, generator=g)
    rewards = rm(ro.ids, ro.lengths)
    labels, _ = stage1_labels(ro.texts, "chinese-reviews", judge_preset, out)
    return {"reward": float(rewards.mean()), "judge_positive": 100 * float(np.mean([x == "positive" for x in labels])),
            "kl": per_token_kl(policy, ref, ro), "length": float(ro.answer_lengths.mean()),
            "ended": 100 * float(ro.ended.float().mean()), "samples": ro.texts[:show]}


def ppo_iteration(policy: nn.Module, critic: RewardModel, ref: nn.Module, rm: RewardModel, tok,
                  prompts: list[list[int]], optimizer: torch.optim.Optimizer, kl_coef: float, cfg: PPORun) -> dict:
    """One rollout and its updates (the module docstring's steps 1-4); the iteration's statistics."""
    # 1. rollout
    ro = sample(policy, tok, prompts, 1, cfg.max_new_tokens, cfg.temperature)
    mask = ro.mask  # (N, T-1)
    last = ro.lengths - 2  # (N,) the position whose target is the answer's last token
    with torch.no_grad():
        # 2. score: the reward model at the end, the KL penalty at every token
        old_logp = response_logprobs(policy, ro.ids, mask)
        ref_logp = response_logprobs(ref, ro.ids, mask)
        score = rm(ro.ids, ro.lengths) - cfg.end_penalty * (~ro.ended).float()  # (N,)
        kl = (old_logp - ref_logp) * mask  # (N, T-1) log π − log π_ref per chosen token
        rewards = -kl_coef * kl
        rewards[torch.arange(len(last)), last] += score
        # 3. advantages
        old_values = critic.values(ro.ids)[:, :-1] * mask  # (N, T-1) V(prefix up to t)
        adv, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
        adv = masked_whiten(adv, mask)
    # 4. update
    stats: list[dict] = []
    n = len(ro.texts)
    for _ in range(cfg.ppo_epochs):
        for idx in torch.randperm(n).split(cfg.minibatch):
            logits, _ = policy(ro.ids[idx, :-1])
            logp = token_logprobs(logits.float(), ro.ids[idx, 1:]) * mask[idx]
            pg, pg_stats = clipped_surrogate(logp, old_logp[idx], adv[idx], mask[idx], cfg.clip)
            values = critic.values(ro.ids[idx])[:, :-1]
            vl, vl_stats = value_loss(values, old_values[idx], returns[idx], mask[idx], cfg.vf_clip)
            loss = pg + cfg.vf_coef * vl
            update(optimizer, loss, cfg.train.grad_clip)
            stats.append({"policy_loss": pg.item(), "value_loss": vl.item(),
                          "entropy": entropy(logits.detach().float(), mask[idx]).item(),
                          **{k: float(v) for k, v in {**pg_stats, **vl_stats}.items()}})
    out = {k: float(np.mean([s[k] for s in stats])) for k in stats[0]}
    tokens = mask.sum().clamp(min=1)
    return {**out, "score": float(score.mean()), "kl": float(kl.sum() / tokens), "kl_coef": kl_coef,
            "length": float(ro.answer_lengths.mean()), "ended": 100 * float(ro.ended.float().mean())}


def curves_figure(rows: list[dict], evals: list[dict], title: str):
    """Reward, KL per token, entropy and answer length over the iterations (training rollouts; held-out dots)."""
    import matplotlib.pyplot as plt

    use_cjk()
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.2))
    for ax, (key, name) in zip(axes, [("score", "奖励模型得分"), ("kl", "每词元 KL"), ("entropy", "熵（nats）"),
                                      ("length", "回答长度（词元）")]):
        ax.plot([r["step"] for r in rows], [r[key] for r in rows], label="训练采样")
        ev_key = {"score": "reward"}.get(key, key)
        if evals and ev_key in evals[0]:
            ax.plot([e["step"] for e in evals], [e[ev_key] for e in evals], "o-", label="留出提示")
        ax.set(title=name, xlabel="迭代")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def run_ppo(cfg: PPORun) -> dict:
    """PPO from the SFT run against the reward run (or the finished run reused); the summary."""
    setup_logging()
    cfg = cfg.resolved()
    if (done := reuse(cfg, TOPIC)) is not None:
        return done
    key = comparable_config(cfg)
    policy, tok, sft_cfg = load_sft(cfg, dropout=0.0)
    rm, rm_tok = load_reward_model(cfg.reward_path(), dropout=0.0)  # the critic, its copy, must not be noisy
    if rm_tok.state_dict() != tok.state_dict():
        raise ConfigError(f"{cfg.reward_path()} was trained from another SFT run (another tokenizer); train the "
                          f"reward model from {cfg.base_path()}: llmpath chat rm --init_from={cfg.base_path()}")
    cfg = cfg.shaped_like(policy, sft_cfg)
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    rm.eval().requires_grad_(False)
    critic = copy.deepcopy(rm).requires_grad_(True).train()  # values start from the reward model's judgement
    policy.train()
    train_prompts, test_prompts = review_prompts(cfg, tok, "train"), review_prompts(cfg, tok, "test")
    # model_class: the checkpoints record this run's config class, so load_run rebuilds the policy from them
    run = start_run(cfg, TOPIC, tokenizer=tok, key=key, model_class="llmpath.llama.model:Llama")
    params = nn.ModuleDict({"policy": policy, "critic": critic})
    optimizer = make_optimizer(params, replace(cfg.train, weight_decay=0.0))
    loop = LoopCheckpoint(run, {"policy": policy, "critic": critic}, optimizer)
    step, state = loop.start(cfg.train.resume)
    kl_ctl = (AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.kl_target > 0
              else FixedKLController(cfg.kl_coef))
    kl_ctl.value = state.get("kl_coef", kl_ctl.value)
    evals = state.get("evals", [])
    report = lambda: review_report(policy, ref, rm, tok, test_prompts, cfg.eval_samples, cfg.max_new_tokens,  # noqa: E731
                                   cfg.temperature, cfg.seed, cfg.judge_preset, cfg.out)
    if not evals:
        evals.append({"step": 0, **report()})
    log.info(f"PPO of {cfg.base_path()} ({count_params(policy):,} parameters) against {cfg.reward_path()}: "
             f"{cfg.train.max_steps} iterations of {cfg.train.batch_size} answers -> {run.path}")
    t0 = time.time()
    end = min(cfg.train.max_steps, cfg.train.stop_at) if cfg.train.stop_at > 0 else cfg.train.max_steps
    with StopFlag() as stop:
        while step < end:
            draw = np.random.default_rng([cfg.seed, step])  # the prompts of an iteration depend on (seed, step) only
            picked = [train_prompts[k] for k in draw.choice(len(train_prompts), cfg.train.batch_size)]
            row = {"step": step + 1, **ppo_iteration(policy, critic, ref, rm, tok, picked, optimizer,
                                                     kl_ctl.value, cfg)}
            kl_ctl.update(row["kl"], len(picked))
            step += 1
            loop.record(row)
            if step % max(cfg.train.eval_interval, 1) == 0 or step == cfg.train.max_steps:
                ev = {"step": step, **report()}
                evals.append(ev)
                loop.record({k: v for k, v in ev.items() if k != "samples"} | {"eval": True})
                log.info(f"iteration {step}: reward {ev['reward']:.3f}, judge {ev['judge_positive']:.0f}% positive, "
                         f"KL {ev['kl']:.3f} nats/token, length {ev['length']:.1f}")
            loop.save(step, {"kl_coef": kl_ctl.value, "evals": evals})
            if stop.signum:
                log.info(f"interrupted at iteration {step}; saved; continue with --train.resume")
                raise KeyboardInterrupt
    if step < cfg.train.max_steps:  # --train.stop_at: an interrupted run, finished later with --train.resume
        log.info(f"stopped at iteration {step} of {cfg.train.max_steps}; continue with --train.resume")
        return {"steps": step, "stopped": True}
    # the final policy is the run's model: what load_run and `llmpath chat chat --run=` read
    loop.save(step, {"kl_coef": kl_ctl.value, "evals": evals}, name="best")
    before, after = evals[0], evals[-1]
    rows = [r for r in read_metrics(loop.metrics) if not r.get("eval")]
    fig = save_fig(curves_figure(rows, evals, "PPO：写一条好评"), run.figures / "curves.png")
    summary = {"sft": str(cfg.base_path()), "reward_run": str(cfg.reward_path()), "params": count_params(policy),
               "steps": step, "seconds": round(time.time() - t0, 1), "before": before, "after": after,
               "evals": evals, "figures": [fig]}
    summary = run.finish(summary)
    log.info(f"PPO: reward {before['reward']:.3f} -> {after['reward']:.3f}, judge positive "
             f"{before['judge_positive']:.0f}% -> {after['judge_positive']:.0f}%, KL {after['kl']:.3f} nats/token")
    return summary
