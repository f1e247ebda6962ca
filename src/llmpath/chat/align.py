"""The alignment chain and its table: SFT vs PPO vs DPO vs GRPO, task by task, with both judges.

    results = align(cfg, workers=2)     # the reward model and DPO side by side, then PPO and GRPO, then the columns
    print(align_table(results))         # one row per task and judge, one column per model

Every column answers the same held-out prompts: the chapter-11 test items of the checkable tasks (greedy, scored as
there) and 写一条好评 prompts (sampled at temperature 1), where the reward model gives the score the RL optimised and
the stage-1 sentiment classifier an independent verdict; beside them the per-token KL to the SFT model on the same
samples, so methods that moved further from where they started are seen to have done so.
"""

from __future__ import annotations

import copy
from pathlib import Path

from llmpath.chat.base import TOPIC
from llmpath.chat.data import TASKS
from llmpath.chat.dpo import DPO_PRESETS, DPORun, run_dpo
from llmpath.chat.evaluate import METRIC_NAMES, SCORED, evaluate
from llmpath.chat.finetune import eval_examples, test_items
from llmpath.chat.grpo import GRPO_PRESETS, GRPORun, run_grpo
from llmpath.chat.ppo import PPO_PRESETS, PPORun, review_prompts, review_report, run_ppo
from llmpath.chat.reward import RM_PRESETS, AlignRun, RewardRun, load_reward_model, load_sft, run_rm
from llmpath.common import map_after, markdown_table, setup_logging
from llmpath.config import build_config
from llmpath.runs import load_run

RUNNERS = {"rm": (RewardRun, RM_PRESETS, run_rm), "dpo": (DPORun, DPO_PRESETS, run_dpo),
           "ppo": (PPORun, PPO_PRESETS, run_ppo), "grpo": (GRPORun, GRPO_PRESETS, run_grpo)}
COLUMNS = {"sft": "SFT", "ppo": "PPO", "dpo": "DPO", "grpo": "GRPO"}


def _job(job: tuple) -> dict:
    """A training run of the chain from its command-line options, or one column of the table (module level: it runs
    in a worker process)."""
    if job[0] == "train":
        _, kind, args = job
        cls, presets, fn = RUNNERS[kind]
        return fn(build_config(cls, args, presets))
    return _column(*job[1:])


def _column(kind: str, path: str, cfg: AlignRun) -> dict:
    """One column: a policy's greedy scores on the checkable tasks and its 写一条好评 answers judged twice."""
    setup_logging()
    sft, tok, _ = load_sft(cfg)
    policy = sft if kind == "sft" else load_run(path, topic=TOPIC)[0]
    rm, _ = load_reward_model(Path(cfg.out) / TOPIC / f"{cfg.preset or 'small'}-rm")
    items = [e for e in test_items(cfg, tok, policy.cfg.block_size, eval_examples(cfg)) if e.task in SCORED]
    rep = evaluate(policy, tok, items, per_task=cfg.eval_items, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
    review = review_report(policy, copy.deepcopy(sft), rm, tok, review_prompts(cfg, tok, "test"), cfg.eval_samples,
                           cfg.max_new_tokens, 1.0, cfg.seed, cfg.judge_preset, cfg.out)
    return {"tasks": {t: r for t, r in rep["tasks"].items()}, "review": review}


def align(args: list[str], workers: int = 1) -> dict:
    """Train the reward model, DPO, GRPO and (after the reward model) PPO, each reused when finished; then score
    every column (each after its model and the reward model). A free worker takes the next job that is ready."""
    cfg = build_config(PPORun, args, PPO_PRESETS)
    out = Path(cfg.out) / TOPIC / (cfg.preset or "small")
    jobs = {k: ("train", k, args) for k in ("dpo", "rm", "grpo", "ppo")}  # the longest first
    jobs |= {f"column-{k}": ("column", k, f"{out}-{k}", cfg) for k in COLUMNS}
    after = {"ppo": ("rm",), **{f"column-{k}": ("rm",) + ((k,) if k != "sft" else ()) for k in COLUMNS}}
    done = map_after(_job, jobs, after, workers)
    return {**{k: done[k] for k in RUNNERS}, "columns": {k: done[f"column-{k}"] for k in COLUMNS}}


def _f(x, digits: int = 1) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def align_table(results: dict) -> str:
    """Rows: 写一条好评 by the reward model and by the stage-1 judge, KL to SFT, then each checkable task's score."""
    cols = results["columns"]
    rows = [["写一条好评：奖励模型得分", *(_f(cols[k]["review"]["reward"], 3) for k in COLUMNS)],
            ["写一条好评：独立评委（阶段 1 分类器）判为正面 %", *(_f(cols[k]["review"]["judge_positive"]) for k in COLUMNS)],
            ["与 SFT 的每词元 KL（nats）", *(_f(cols[k]["review"]["kl"], 3) for k in COLUMNS)],
            ["回答长度（词元）", *(_f(cols[k]["review"]["length"]) for k in COLUMNS)]]
    for task in (t for t in TASKS if t in SCORED):
        metric = SCORED[task]
        if all(task in cols[k]["tasks"] for k in COLUMNS):
            rows.append([f"{TASKS[task][0]}：{METRIC_NAMES[metric]}",
                         *(_f(cols[k]["tasks"][task].get(metric)) for k in COLUMNS)])
    return markdown_table(["", *COLUMNS.values()], rows, "l" + "r" * len(COLUMNS))



# The bars of the chain per preset: reward model held-out pairwise accuracy; DPO held-out loss and implicit-reward
# accuracy; PPO's gains in held-out reward and in the independent judge's positive rate (points) and its KL per token
# at most; GRPO's least gain in arithmetic exact and idiom validity (points). tiny checks only that the chain runs.
BARS = {"small": {"rm_accuracy": 0.8, "dpo_loss": 0.65, "dpo_accuracy": 0.7, "ppo_reward_gain": 1e-9,
                  "ppo_judge_gain": 1e-9, "ppo_kl": 0.5, "grpo_gain": 5.0},
        "tiny": {"rm_accuracy": 0.0, "dpo_loss": 10.0, "dpo_accuracy": 0.0, "ppo_reward_gain": -10.0,
                 "ppo_judge_gain": -100.0, "ppo_kl": 10.0, "grpo_gain": -100.0}}


def align_checks(done: dict, preset: str = "small") -> dict[str, bool]:
    """Each bar of the chain, passed or not, named with the measured number."""
    bars = BARS.get(preset, BARS["small"])
    rm, dpo, ppo, grpo = done["rm"]["test"], done["dpo"]["test"], done["ppo"], done["grpo"]
    b, a = ppo["before"], ppo["after"]
    checks = {
        f"reward model held-out pairwise accuracy {rm['accuracy']:.3f} >= {bars['rm_accuracy']}":
            rm["accuracy"] >= bars["rm_accuracy"],
        f"DPO held-out loss {dpo['loss']:.3f} <= {bars['dpo_loss']}": dpo["loss"] <= bars["dpo_loss"],
        f"DPO implicit-reward accuracy {dpo['accuracy']:.3f} >= {bars['dpo_accuracy']}":
            dpo["accuracy"] >= bars["dpo_accuracy"],
        f"PPO held-out reward up ({b['reward']:.3f} -> {a['reward']:.3f})":
            a["reward"] - b["reward"] >= bars["ppo_reward_gain"],
        f"PPO independent judge's positive rate up ({b['judge_positive']:.0f}% -> {a['judge_positive']:.0f}%)":
            a["judge_positive"] - b["judge_positive"] >= bars["ppo_judge_gain"],
        f"PPO KL per token {a['kl']:.3f} <= {bars['ppo_kl']}": a["kl"] <= bars["ppo_kl"],
    }
    for task in ("arithmetic", "idiom-chain"):
        if task in grpo["after"]:
            gain = grpo["after"][task] - grpo["before"][task]
            checks[f"GRPO {task} {grpo['before'][task]:.1f} -> {grpo['after'][task]:.1f} "
                   f"(>= {bars['grpo_gain']:+.0f})"] = gain >= bars["grpo_gain"]
    return checks
