"""GRPO with verifiable rewards: answers that can be checked exactly teach the model without a reward model.

    cfg = build_config(GRPORun, ["--preset=small"], GRPO_PRESETS)   # starts from runs/chat/small-sft
    summary = run_grpo(cfg)        # runs/chat/small-grpo: held-out exact match vs the SFT model, reward/KL curves

For arithmetic, the idiom chain and the sentiment labels a program can say whether an answer is right (the sum; an
idiom from the list that starts with the right character; the text's label), so no learned reward model stands
between the model and the truth, and there is nothing to hack. This module owns its loop (the loop is the lesson).
One iteration:

1. For each of P prompts, sample a group of G answers from the policy.
2. Reward each: 1 if correct, plus a small format reward when the answer closes its turn with <|im_end|>.
3. Advantage of an answer = (its reward − the group's mean) / (the group's std): better than its siblings counts
   as good. No critic is needed (Group Relative Policy Optimization, Shao et al., 2024, the DeepSeekMath paper);
   a group whose answers all score the same teaches nothing (advantage 0).
4. Update: PPO's clipped surrogate with that advantage on every token of the answer, plus β times a per-token KL
   estimate to the frozen reference (k3 = e^(ref−logp) − (ref−logp) − 1, unbiased and never negative).

The scores are the stage-11 test set's: greedy answers, exact match for arithmetic, valid idioms for the chain,
accuracy for sentiment, the same prompts and scoring as the SFT model's column in the chapter-11 table. GRPO can
only sharpen what the policy already does sometimes: where no answer in a group is ever right, every advantage is 0
(the "groups with a signal" curve shows how often that happens).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from llmpath.chat.base import TOPIC
from llmpath.chat.data import idiom_valid, parse_int, parse_label
from llmpath.chat.evaluate import SCORED, evaluate
from llmpath.chat.finetune import eval_examples, test_items
from llmpath.chat.objectives import (clipped_surrogate, entropy, group_advantages, kl_penalty, masked_mean,
                                     token_logprobs)
from llmpath.chat.reward import ALIGN_PRESETS, AlignRun, load_sft
from llmpath.chat.rollout import LoopCheckpoint, chat_prompt, per_token_kl, response_logprobs, sample, update
from llmpath.common import count_params, log, read_json, setup_logging
from llmpath.config import ConfigError, opt
from llmpath.plotting import save_fig, use_cjk
from llmpath.runs import comparable_config, reuse, start_run
from llmpath.train import StopFlag, make_optimizer, read_metrics

VERIFIABLE = ("arithmetic", "idiom-chain", "sentiment-reviews", "sentiment-tweets")


@dataclass
class GRPORun(AlignRun):
    tasks: str = opt(",".join(VERIFIABLE), "tasks whose answers are checked exactly (" + ", ".join(VERIFIABLE) + ")")
    group_size: int = opt(8, "answers sampled per prompt (G)", min=2)
    ppo_epochs: int = opt(1, "passes over each rollout (1: the ratio is 1 and clipping never acts)", min=1)
    clip: float = opt(0.2, "ε of the clipped surrogate", min=0)
    kl_coef: float = opt(0.04, "β: weight of the per-token KL (k3) to the reference", min=0)
    format_reward: float = opt(0.1, "reward for closing the turn with <|im_end|>", min=0)
    temperature: float = opt(1.0, "sampling temperature of the rollouts", min=0.01)

    def check(self) -> None:
        super().check()
        if other := [t for t in self.task_list() if t not in VERIFIABLE]:
            raise ConfigError(f"--tasks: '{other[0]}' has no exact check; GRPO here takes {', '.join(VERIFIABLE)}")

    def default_name(self) -> str:
        return f"{self.preset or 'custom'}-grpo"


GRPO_PRESETS: dict[str, dict] = {
    "tiny": {**ALIGN_PRESETS["tiny"], "train.lr": 1e-4, "train.max_steps": 3, "train.batch_size": 2,
             "train.eval_interval": 3, "train.warmup_steps": 0, "group_size": 4, "max_new_tokens": 8},
    "small": {**ALIGN_PRESETS["small"], "train.lr": 3e-5, "train.max_steps": 20, "train.batch_size": 8,
              "train.eval_interval": 20, "train.warmup_steps": 0, "max_new_tokens": 16},
    "base": {**ALIGN_PRESETS["base"], "train.lr": 3e-5, "train.max_steps": 100, "train.batch_size": 8,
             "train.eval_interval": 50, "train.warmup_steps": 0, "max_new_tokens": 16},
}


def verify(task: str, answer: str, example) -> bool:
    """Is the answer right? Arithmetic: its first integer is the result; idiom chain: a valid next idiom; sentiment:
    its first label word is the text's label."""
    if task == "arithmetic":
        return parse_int(answer) == example.reference
    if task == "idiom-chain":
        return idiom_valid(answer, example.source_id.partition(":")[2])
    return parse_label(answer) == example.reference


def grpo_iteration(policy: nn.Module, ref: nn.Module, tok, examples: list, optimizer: torch.optim.Optimizer,
                   cfg: GRPORun) -> dict:
    """One group rollout and its update (the module docstring's steps 1-4); the iteration's statistics."""
    G = cfg.group_size
    ro = sample(policy, tok, [chat_prompt(tok, ex.messages[:-1]) for ex in examples], G, cfg.max_new_tokens,
                cfg.temperature)
    correct = torch.tensor([verify(examples[i].task, t, examples[i]) for i, t in zip(ro.prompt_index.tolist(),
                                                                                      ro.texts)], dtype=torch.float)
    rewards = correct + cfg.format_reward * ro.ended.float()  # (P*G,)
    adv = group_advantages(rewards.view(-1, G)).flatten()  # (P*G,) relative to the group
    mask = ro.mask
    with torch.no_grad():
        old_logp = response_logprobs(policy, ro.ids, mask)
        ref_logp = response_logprobs(ref, ro.ids, mask)
    stats = []
    for _ in range(cfg.ppo_epochs):
        logits, _ = policy(ro.ids[:, :-1])
        logp = token_logprobs(logits.float(), ro.ids[:, 1:]) * mask
        pg, pg_stats = clipped_surrogate(logp, old_logp, adv[:, None].expand_as(mask), mask, cfg.clip)
        kl = masked_mean(kl_penalty(logp, ref_logp, "k3"), mask)
        loss = pg + cfg.kl_coef * kl
        update(optimizer, loss, cfg.train.grad_clip)
        stats.append({"policy_loss": pg.item(), "kl_k3": kl.item(),
                      "entropy": entropy(logits.detach().float(), mask).item(), **pg_stats})
    out = {k: float(np.mean([s[k] for s in stats])) for k in stats[0]}
    groups = rewards.view(-1, G)
    return {**out, "reward": float(rewards.mean()), "correct": 100 * float(correct.mean()),
            "kl": float(((old_logp - ref_logp) * mask).sum() / mask.sum().clamp(min=1)),
            "learning_groups": 100 * float((groups.std(1) > 0).float().mean()),  # groups whose rewards differ
            "length": float(ro.answer_lengths.mean()), "ended": 100 * float(ro.ended.float().mean())}


def task_scores(model: nn.Module, tok, items: list, cfg: GRPORun) -> dict:
    """Greedy answers to the held-out items: {task: its main score (exact % / valid %)} and the full report."""
    rep = evaluate(model, tok, items, per_task=cfg.eval_items, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
    return {"scores": {t: rep["tasks"][t][SCORED[t]] for t in rep["tasks"] if t in SCORED}, "report": rep}


def sft_scores(cfg: GRPORun) -> dict | None:
    """The SFT run's own scores of cfg's tasks, from its results.json, when it answered the very items GRPO tests on
    the same way (same seed, test caps, items per task and answer length); else None. Greedy answers of the same
    weights: computing them again would give the same numbers."""
    path = cfg.base_path() / "results.json"
    if not path.exists():
        return None
    done = read_json(path)
    same = ("seed", "max_eval", "eval_items", "max_new_tokens")
    if any(done.get("config", {}).get(k) != getattr(cfg, k) for k in same):
        return None
    tasks = done.get("tasks", {})
    if not all(t in tasks and SCORED[t] in tasks[t] for t in cfg.task_list()):
        return None
    return {t: tasks[t][SCORED[t]] for t in cfg.task_list()}


def curves_figure(rows: list[dict], title: str):
    """Reward, % correct, KL per token and the share of groups that teach something, over the iterations."""
    import matplotlib.pyplot as plt

    use_cjk()
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.2))
    for ax, (key, name) in zip(axes, [("reward", "平均奖励"), ("correct", "答对比例 %"), ("kl", "每词元 KL"),
                                      ("learning_groups", "奖励不全相同的组 %")]):
        ax.plot([r["step"] for r in rows], [r[key] for r in rows])
        ax.set(title=name, xlabel="迭代")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def run_grpo(cfg: GRPORun) -> dict:
    """GRPO from the SFT run on the verifiable tasks (or the finished run reused); the summary."""
    setup_logging()
    cfg = cfg.resolved()
    if (done := reuse(cfg, TOPIC)) is not None:
        return done
    key = comparable_config(cfg)
    policy, tok, sft_cfg = load_sft(cfg, dropout=0.0)
    cfg = cfg.shaped_like(policy, sft_cfg)
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    ex = eval_examples(cfg)
    block = policy.cfg.block_size
    train = [e for e in ex["train"] if len(chat_prompt(tok, e.messages[:-1])) + cfg.max_new_tokens <= block]
    items = test_items(cfg, tok, block, ex)
    before = sft_scores(cfg) or task_scores(policy, tok, items, cfg)["scores"]
    # model_class: the checkpoints record this run's config class, so load_run rebuilds the policy from them
    run = start_run(cfg, TOPIC, tokenizer=tok, key=key, model_class="llmpath.llama.model:Llama")
    optimizer = make_optimizer(policy, replace(cfg.train, weight_decay=0.0))
    loop = LoopCheckpoint(run, {"policy": policy}, optimizer)
    step, state = loop.start(cfg.train.resume)
    log.info(f"GRPO of {cfg.base_path()} ({count_params(policy):,} parameters) on {', '.join(cfg.task_list())}: "
             f"{cfg.train.max_steps} iterations of {cfg.train.batch_size} prompts x {cfg.group_size} answers -> "
             f"{run.path}")
    evals = state.get("evals", [{"step": 0, **before}])
    last = None  # the newest evaluation's full report
    t0 = time.time()
    policy.train()
    end = min(cfg.train.max_steps, cfg.train.stop_at) if cfg.train.stop_at > 0 else cfg.train.max_steps
    with StopFlag() as stop:
        while step < end:
            draw = np.random.default_rng([cfg.seed, step])  # the prompts of an iteration depend on (seed, step) only
            picked = [train[k] for k in draw.choice(len(train), cfg.train.batch_size, replace=False)]
            row = {"step": step + 1, **grpo_iteration(policy, ref, tok, picked, optimizer, cfg)}
            step += 1
            loop.record(row)
            if step % max(cfg.train.eval_interval, 1) == 0 or step == cfg.train.max_steps:
                last = task_scores(policy, tok, items, cfg)
                ev = {"step": step, **last["scores"]}
                evals.append(ev)
                loop.record({**ev, "eval": True})
                log.info(f"iteration {step}: " + ", ".join(f"{t} {v:.1f}" for t, v in ev.items() if t != "step"))
            loop.save(step, {"evals": evals})
            if stop.signum:
                log.info(f"interrupted at iteration {step}; saved; continue with --train.resume")
                raise KeyboardInterrupt
    if step < cfg.train.max_steps:  # --train.stop_at: an interrupted run, finished later with --train.resume
        log.info(f"stopped at iteration {step} of {cfg.train.max_steps}; continue with --train.resume")
        return {"steps": step, "stopped": True}
    # the final policy is the run's model: what load_run and `llmpath chat chat --run=` read
    loop.save(step, {"evals": evals}, name="best")
    after = last if last is not None else task_scores(policy, tok, items, cfg)  # (a resumed run that had ended)
    rows = [r for r in read_metrics(loop.metrics) if not r.get("eval")]
    fig = save_fig(curves_figure(rows, "GRPO：可验证奖励"), run.figures / "curves.png")
    summary = {"sft": str(cfg.base_path()), "params": count_params(policy), "steps": step,
               "seconds": round(time.time() - t0, 1), "before": before, "after": after["scores"],
               "kl": per_token_kl(policy, ref, sample(policy, tok, [chat_prompt(tok, e.messages[:-1]) for e in items],
                                                      1, cfg.max_new_tokens, cfg.temperature,
                                                      generator=torch.Generator().manual_seed(cfg.seed))),
               "transcripts": after["report"]["transcripts"], "evals": evals, "figures": [fig]}
    summary = run.finish(summary)
    log.info("GRPO: " + ", ".join(f"{t} {before[t]:.1f} -> {after['scores'][t]:.1f}"
                                  for t in after["scores"]) + f"; KL {summary['kl']:.3f} nats/token")
    return summary
