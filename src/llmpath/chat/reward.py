"""A reward model: the SFT model with a scalar head, trained on preference pairs (Bradley-Terry).

    cfg = build_config(RewardRun, ["--preset=small"], ALIGN_PRESETS)   # starts from runs/chat/small-sft
    summary = run_rm(cfg)                          # runs/chat/small-rm: pairwise accuracy per kind, reward histograms
    rm, tok, _ = load_run("runs/chat/small-rm")    # a RewardModel: rm(ids, lengths) -> (B,) rewards

People find it easier to say which of two answers is better than to write the best one, so preference data comes
as pairs (prompt, chosen, rejected). Bradley and Terry (1952) model such choices with one score per item:

    P(chosen beats rejected) = σ(r(x, y_chosen) − r(x, y_rejected))

and the reward model r learns the scores by maximum likelihood, loss = −log σ(r_c − r_r) (objectives.py), optionally
with a margin the chosen answer must win by. Only differences matter: adding a constant to every reward changes
nothing, so rewards are compared within a prompt, never read as absolute grades.

The model is the SFT model's body (its final-norm states) and a linear head without bias, read at each sequence's
last token, the <|im_end|> that closes the answer: causal attention has shown it the prompt and the whole answer.
The head starts at zero, so at the first step every reward is 0 and the loss is exactly ln 2. This is the layout of
Hugging Face's LlamaForSequenceClassification with one label (its `score` head at the last non-pad token), and the
tests hold our rewards equal to it.

The summary reports held-out pairwise accuracy per kind of pair (preferences.py) and the reward distributions of
chosen and rejected answers by kind: a wide gap where the judgement is easy (a negative review when a positive one
was asked), a narrow one where it needs knowledge the model lacks (the right sum among near misses).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from llmpath.chat.base import TOPIC
from llmpath.chat.finetune import SFT_PRESETS, SFTRun
from llmpath.chat.objectives import bradley_terry_loss
from llmpath.chat.preferences import PAIR_KINDS, PairBatches, build_pairs, pair_card_table, pair_tensors
from llmpath.chat.template import CHAT_TOKENS
from llmpath.common import count_params, log, setup_logging
from llmpath.config import ConfigError, opt
from llmpath.data.batching import sequential_batches
from llmpath.llama.model import Llama, LlamaConfig
from llmpath.plotting import save_fig, training_curves, use_cjk
from llmpath.runs import comparable_config, load_run, reuse, start_run
from llmpath.train import fit, read_metrics


@dataclass
class AlignRun(SFTRun):
    """Options shared by the runs that start from an SFT run: the reward model, DPO, PPO and GRPO."""

    kinds: str = opt("", "preference pair kinds (empty: all: " + ", ".join(PAIR_KINDS) + ")")
    max_pairs: int = opt(2000, "train pairs per kind at most", min=1)
    max_eval_pairs: int = opt(200, "val and test pairs per kind at most", min=1)

    def check(self) -> None:
        super().check()
        if unknown := [k for k in self.kind_list() if k not in PAIR_KINDS]:
            raise ConfigError(f"--kinds: unknown kind '{unknown[0]}'; choose from: {', '.join(PAIR_KINDS)}")

    def kind_list(self) -> tuple[str, ...]:
        return tuple(k.strip() for k in self.kinds.split(",") if k.strip()) or PAIR_KINDS

    def base_path(self) -> Path:
        """The SFT run this starts from: --init_from, or <out>/chat/<preset>-sft."""
        return Path(self.init_from or Path(self.out) / TOPIC / f"{self.preset or 'small'}-sft")

    def pairs(self) -> dict[str, list]:
        return build_pairs(self.seed, self.max_pairs, self.max_eval_pairs, kinds=self.kind_list())


def load_sft(cfg: AlignRun, dropout: float | None = None):
    """(model, tokenizer, config) of the SFT run cfg starts from."""
    hint = f"llmpath chat sft --preset={cfg.preset or 'small'}"
    model, tok, sft_cfg = load_run(cfg.base_path(), hint=hint, topic=TOPIC, dropout=dropout)
    if not isinstance(model, Llama) or any(s not in getattr(tok, "special_tokens", {}) for s in CHAT_TOKENS):
        raise ConfigError(f"{cfg.base_path()} is not a chat SFT run; give one with --init_from, or train it: {hint}")
    return model, tok, sft_cfg


# ---------------------------------------------------------------------------------------------- model

class RewardModel(nn.Module):
    """(B, T) token ids and (B,) lengths -> (B,) rewards, read at each sequence's last token."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.body = Llama(cfg)  # its lm_head is not used
        self.head = nn.Linear(cfg.n_embd, 1, bias=False)
        nn.init.zeros_(self.head.weight)  # every reward 0 at the start: the loss starts at ln 2

    @classmethod
    def from_model(cls, model: Llama) -> "RewardModel":
        """A reward model whose body is a copy of `model` (the SFT model) and whose head is zero."""
        rm = cls(replace(model.cfg))
        rm.body.load_state_dict(model.state_dict())
        return rm

    def forward(self, ids: Tensor, lengths: Tensor) -> Tensor:
        return self.values(ids)[torch.arange(ids.shape[0], device=ids.device), lengths - 1]  # each row's last token

    def values(self, ids: Tensor) -> Tensor:
        """(B, T) the head at every position: PPO's critic (a copy of the reward model) reads a value per prefix."""
        return self.head(self.body.hidden(ids)).squeeze(-1)


def pair_rewards(rm: RewardModel, batch: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """(rewards of the chosen answers, of the rejected ones), (B,) each, of a PairBatches batch."""
    ids, _, lengths = batch  # (B, 2, T), (B, 2, T), (B, 2): [:, 0] chosen, [:, 1] rejected
    r = rm(ids.flatten(0, 1), lengths.flatten()).view(-1, 2)  # (B, 2)
    return r[:, 0], r[:, 1]


def rm_loss(rm: RewardModel, batch, margin: float = 0.0) -> Tensor:
    """The objective for the shared fit: Bradley-Terry on a batch of pairs."""
    chosen, rejected = pair_rewards(rm, batch)
    return bradley_terry_loss(chosen, rejected, margin or None)


@torch.no_grad()
def pair_scores(rm: RewardModel, tok, pairs: list, batch_size: int = 32) -> tuple[list, np.ndarray, np.ndarray]:
    """(the pairs that fit the context, their chosen rewards, their rejected rewards)."""
    batch, kept = pair_tensors(tok, pairs, rm.cfg.block_size)
    was = rm.training
    rm.eval()
    chosen, rejected = [], []
    try:
        for idx in sequential_batches(len(kept), batch_size):
            c, r = pair_rewards(rm, tuple(t[idx] for t in batch))
            chosen.append(c)
            rejected.append(r)
    finally:
        rm.train(was)
    return kept, torch.cat(chosen).numpy(), torch.cat(rejected).numpy()


def pair_report(rm: RewardModel, tok, pairs: list) -> dict:
    """Bradley-Terry loss and pairwise accuracy (chosen scored higher), overall and per kind, with reward stats."""
    kept, c, r = pair_scores(rm, tok, pairs)
    kinds = np.array([p.kind for p in kept])

    def stats(sel) -> dict:
        d = c[sel] - r[sel]
        loss = bradley_terry_loss(torch.from_numpy(c[sel]), torch.from_numpy(r[sel])).item()
        return {"n": int(sel.sum()), "accuracy": float((d > 0).mean()), "loss": loss, "margin": float(d.mean()),
                "chosen_mean": float(c[sel].mean()), "rejected_mean": float(r[sel].mean())}

    return {**stats(np.ones(len(kept), bool)),
            "kinds": {k: stats(kinds == k) for k in PAIR_KINDS if (kinds == k).any()},
            "rewards": {k: {"chosen": c[kinds == k].tolist(), "rejected": r[kinds == k].tolist()}
                        for k in PAIR_KINDS if (kinds == k).any()}}


KIND_NAMES = {"review": "写评论（情感）", "arithmetic": "算术", "idiom-chain": "成语接龙", "chitchat": "闲聊"}


def reward_histograms(report: dict, title: str = "奖励模型：测试对的奖励分布"):
    """One panel per kind: the rewards of chosen and rejected answers."""
    import matplotlib.pyplot as plt

    use_cjk()
    kinds = list(report["rewards"])
    fig, axes = plt.subplots(1, len(kinds), figsize=(3.2 * len(kinds), 2.8), squeeze=False)
    axes = axes[0]
    for ax, k in zip(axes, kinds):
        rw = report["rewards"][k]
        bins = np.histogram_bin_edges(rw["chosen"] + rw["rejected"], bins=20)
        ax.hist(rw["chosen"], bins=bins, alpha=0.6, label="被选中")
        ax.hist(rw["rejected"], bins=bins, alpha=0.6, label="被拒绝")
        ax.set_title(f"{KIND_NAMES.get(k, k)}（准确率 {100 * report['kinds'][k]['accuracy']:.0f}%）")
        ax.set_xlabel("奖励")
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------------- run

@dataclass
class RewardRun(AlignRun):
    margin: float = opt(0.0, "the chosen answer must win by this much (0: plain Bradley-Terry)", min=0)

    def default_name(self) -> str:
        return f"{self.preset or 'custom'}-rm"


_ALIGN = {"train.warmup_steps": 10, "train.schedule": "cosine", "train.min_lr_ratio": 0.1}
ALIGN_PRESETS: dict[str, dict] = {name: {**SFT_PRESETS[name], **_ALIGN} for name in SFT_PRESETS}
ALIGN_PRESETS["small"]["max_eval_pairs"] = 100  # every run of the small chain is judged on the same pairs
RM_PRESETS: dict[str, dict] = {
    "tiny": {**ALIGN_PRESETS["tiny"], "train.lr": 1e-3, "train.max_steps": 10, "train.batch_size": 8,
             "train.eval_interval": 5, "max_pairs": 16, "max_eval_pairs": 4},
    "small": {**ALIGN_PRESETS["small"], "train.lr": 1e-3, "train.max_steps": 100, "train.batch_size": 16,
              "train.eval_interval": 50, "max_pairs": 2000, "max_eval_pairs": 100},
    **({"base": {**ALIGN_PRESETS["base"], "train.lr": 5e-4, "train.max_steps": 600, "train.batch_size": 16,
                 "train.eval_interval": 150}} if "base" in ALIGN_PRESETS else {}),
}


def run_rm(cfg: RewardRun) -> dict:
    """Train the reward model on the preference pairs (or reuse the finished run); the run's summary."""
    setup_logging()
    cfg = cfg.resolved()
    if (done := reuse(cfg, TOPIC)) is not None:
        return done
    key = comparable_config(cfg)
    model, tok, sft_cfg = load_sft(cfg, dropout=cfg.model.dropout)
    cfg = cfg.shaped_like(model, sft_cfg)
    rm = RewardModel.from_model(model)
    pairs = cfg.pairs()
    block = rm.cfg.block_size
    batches = PairBatches(tok, pairs["train"], cfg.train.batch_size, block, seed=cfg.seed)
    val = pairs["val"]
    run = start_run(cfg, TOPIC, tokenizer=tok, key=key, model_class="llmpath.chat.reward:RewardModel")
    log.info(f"reward model from {cfg.base_path()} ({count_params(rm):,} parameters): {len(batches.rows):,} train "
             f"pairs -> {run.path}")

    def evaluate(m: RewardModel) -> dict:
        rep = pair_report(m, tok, val)
        return {"val_loss": rep["loss"], "val_accuracy": rep["accuracy"]}

    res = fit(rm, lambda m, b: rm_loss(m, b, cfg.margin), batches, cfg.train, run=run, unit="samples",
              restore_best=True, evaluate=evaluate)
    test = pair_report(rm, tok, pairs["test"])
    curves = save_fig(training_curves(read_metrics(run.path / "metrics.jsonl"), "奖励模型训练"),
                      run.figures / "curves.png")
    hist = save_fig(reward_histograms(test), run.figures / "rewards.png")
    summary = {"sft": str(cfg.base_path()), "params": count_params(rm), "steps": res.step, "val_loss": res.best,
               "train_loss": res.train_loss, "seconds": round(res.seconds, 1), "pairs": pair_card_table(pairs),
               "test": {k: v for k, v in test.items() if k != "rewards"}, "figures": [curves, hist]}
    summary = run.finish(summary)
    log.info(f"reward model: held-out pairwise accuracy {100 * test['accuracy']:.1f}% "
             + ", ".join(f"{k} {100 * v['accuracy']:.0f}%" for k, v in test["kinds"].items())
             + f"; {res.step} steps in {res.seconds:.0f} s")
    return summary


def load_reward_model(path: str | Path, dropout: float | None = None) -> tuple[RewardModel, object]:
    """(reward model in eval mode, tokenizer) of a reward run; `dropout` replaces the run's own."""
    model, tok, _ = load_run(path, topic=TOPIC, hint="llmpath chat rm", dropout=dropout)
    if not isinstance(model, RewardModel):
        raise ConfigError(f"{path} holds a chat model, not a reward model; train one with `llmpath chat rm`")
    return model, tok
