"""Sampling answers from a chat model, scoring them, and keeping a hand-written training loop safe.

    ro = sample(policy, tok, prompts, group_size=8, max_new_tokens=16)   # a Rollout: ids, mask, texts, ...
    logp = response_logprobs(policy, ro.ids, ro.mask)                     # (N, T-1) log π(sampled token)
    kl = per_token_kl(policy, ref, ro)                                    # mean log π − log π_ref per answer token
    loop = LoopCheckpoint(run, {"policy": policy, "critic": critic}, optimizer)   # save / resume a PPO or GRPO run

In supervised learning the data is fixed; in reinforcement learning the model makes its own: each iteration the
policy writes answers to prompts (a rollout), something scores them, and the update makes well-scored answers more
likely. A rollout row is prompt + answer, right-padded; `mask` marks the positions whose target is a token the
policy chose (the answer and the stop token that ended it), so every log-probability, KL term and advantage is
counted there and nowhere else. Identical prompts are sampled together in one batch (the same length, so no padding
inside the prompt and no attention mask needed).

PPO and GRPO own their loops (the loop is the lesson), so they do not get the shared fit's safety net for free.
`LoopCheckpoint` gives them the same one: atomic checkpoints that never hold NaN, written at the end of an
iteration, with the weights, optimizer, RNG states and the loop's own state (the KL coefficient), so --train.resume
continues as if never stopped; Ctrl-C finishes the iteration, saves and stops. The checkpoint's "model" is the policy,
so `load_run` (and `llmpath chat chat --run=...`) reads a PPO or GRPO run like any chat model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from llmpath.chat.objectives import token_logprobs
from llmpath.chat.template import IM_END, IM_START, PAD, encode_chat
from llmpath.generation import generate
from llmpath.train import (CheckpointError, TrainingError, load_checkpoint, rng_state, save_checkpoint,
                           set_rng_state, truncate_metrics)


@dataclass
class Rollout:
    """Answers sampled for a list of prompts, one row per answer."""

    ids: Tensor  # (N, T) prompt + answer, right-padded with <|endoftext|>
    mask: Tensor  # (N, T-1) float: 1 where the target ids[:, 1:] is a token the policy chose
    lengths: Tensor  # (N,) real length of each row
    texts: list[str]  # the answers' text, stop token left out
    ended: Tensor  # (N,) bool: the answer closed its turn with <|im_end|>
    prompt_index: Tensor  # (N,) which prompt each row answers; a prompt's group_size rows are adjacent

    @property
    def answer_lengths(self) -> Tensor:
        return self.mask.sum(1)  # (N,) tokens chosen per answer, stop token included


def chat_prompt(tok, messages: list[dict]) -> list[int]:
    """The ids of a conversation with an assistant turn opened: what the policy continues."""
    return encode_chat(tok, messages, add_generation_prompt=True)[0]


def stop_ids(tok) -> list[int]:
    """<|im_end|> ends an answer; <|im_start|> and <|endoftext|> end it too (a role token: a fault, as in stage 11)."""
    sp = tok.special_tokens
    return [sp[IM_END], sp[IM_START], sp[PAD]]


@torch.no_grad()
def sample(policy: nn.Module, tok, prompts: list[list[int]], group_size: int = 1, max_new_tokens: int = 48,
           temperature: float = 1.0, top_k: int | None = None, generator: torch.Generator | None = None) -> Rollout:
    """group_size answers per prompt, sampled (temperature > 0) or greedy (0); rows in prompt order."""
    block = policy.cfg.block_size
    stops = stop_ids(tok)
    rows: dict[int, list[tuple[list[int], str, bool]]] = {}
    distinct: dict[tuple[int, ...], list[int]] = {}
    for i, p in enumerate(prompts):
        distinct.setdefault(tuple(p), []).append(i)
    for p, which in distinct.items():  # one generate call per distinct prompt
        room = min(max_new_tokens, block - len(p))
        if room < 1:
            raise ValueError(f"a prompt of {len(p)} tokens leaves no room in a context of {block}")
        n = len(which) * group_size
        out = generate(policy, torch.tensor([list(p)] * n), room, temperature=temperature, top_k=top_k,
                       greedy=temperature <= 0, stop_tokens=stops, generator=generator)[:, len(p):].tolist()
        for k, i in enumerate(which):
            rows[i] = []
            for row in out[k * group_size:(k + 1) * group_size]:
                stop = next((j for j, t in enumerate(row) if t in stops), None)
                answer = row if stop is None else row[:stop + 1]  # the stop token is an action too
                text = tok.decode(answer if stop is None else answer[:-1])
                rows[i].append((answer, text, stop is not None and row[stop] == stops[0]))
    flat = [(i, *r) for i in range(len(prompts)) for r in rows[i]]
    T = max(len(prompts[i]) + len(a) for i, a, _, _ in flat)
    ids = torch.full((len(flat), T), tok.special_tokens[PAD], dtype=torch.long)
    mask = torch.zeros(len(flat), T - 1)
    for n, (i, answer, _, _) in enumerate(flat):
        p = prompts[i]
        ids[n, :len(p) + len(answer)] = torch.tensor(p + answer)
        mask[n, len(p) - 1:len(p) + len(answer) - 1] = 1  # targets ids[len(p):...]: the answer's tokens
    lengths = torch.tensor([len(prompts[i]) + len(a) for i, a, _, _ in flat])
    return Rollout(ids, mask, lengths, [t for _, _, t, _ in flat], torch.tensor([e for *_, e in flat]),
                   torch.tensor([i for i, *_ in flat]))


def response_logprobs(model: nn.Module, ids: Tensor, mask: Tensor) -> Tensor:
    """(N, T-1) log-probabilities the model gives the tokens of ids[:, 1:], 0 outside the mask."""
    logits, _ = model(ids[:, :-1])
    return token_logprobs(logits.float(), ids[:, 1:]) * mask


@torch.no_grad()
def per_token_kl(policy: nn.Module, ref: nn.Module, ro: Rollout) -> float:
    """Mean over the answers' tokens of log π − log π_ref: the KL(π || π_ref) per token, estimated on π's samples."""
    diff = response_logprobs(policy, ro.ids, ro.mask) - response_logprobs(ref, ro.ids, ro.mask)
    return float(diff.sum() / ro.mask.sum().clamp(min=1))


def update(optimizer: torch.optim.Optimizer, loss: Tensor, grad_clip: float) -> None:
    """One optimizer step on `loss`, the gradients of all the optimizer's parameters clipped to norm grad_clip
    (0: not clipped)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    torch.nn.utils.clip_grad_norm_(params, grad_clip or float("inf"))
    optimizer.step()


# -------------------------------------------------------------------------------- the loop's safety net

class LoopCheckpoint:
    """Checkpoints of a hand-written loop in a run folder (llmpath.runs.Run): ckpt/last.pt, and metrics.jsonl."""

    def __init__(self, run, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer):
        if "policy" not in modules:
            raise ValueError("modules must hold the 'policy': its weights are the run's model")
        self.run, self.modules, self.optimizer = run, modules, optimizer
        self.path = Path(run.path) / "ckpt" / "last.pt"
        self.metrics = Path(run.path) / "metrics.jsonl"

    def save(self, step: int, state: dict, name: str = "last") -> None:
        """Everything needed to go on after `step` iterations; refused (TrainingError) if a weight is not finite."""
        for key, m in self.modules.items():
            if any(not torch.isfinite(p).all() for p in m.parameters()):
                raise TrainingError(f"the {key}'s weights became NaN or inf at iteration {step}; lower --train.lr; "
                                    f"the last good checkpoint is {self.path}")
        save_checkpoint({"model": self.modules["policy"].state_dict(),
                         "modules": {k: m.state_dict() for k, m in self.modules.items() if k != "policy"},
                         "optimizer": self.optimizer.state_dict(), "step": step, "rng": rng_state(), "state": state,
                         **self.run.meta()}, self.path.with_name(f"{name}.pt"))

    def start(self, resume: bool) -> tuple[int, dict]:
        """(iterations done, loop state) from last.pt when resuming, else (0, {}) with metrics.jsonl emptied."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not resume:
            self.metrics.write_text("")
            return 0, {}
        if not self.path.exists():
            raise CheckpointError(f"--train.resume but there is no {self.path}; start without --train.resume")
        ckpt = load_checkpoint(self.path)
        try:
            self.modules["policy"].load_state_dict(ckpt["model"])
            for k, m in self.modules.items():
                if k != "policy":
                    m.load_state_dict(ckpt["modules"][k])
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError):
            raise CheckpointError(f"{self.path} holds other models than these options build; resume with the options "
                                  f"it was trained with (its config.json)") from None
        set_rng_state(ckpt["rng"])
        if self.metrics.exists():
            truncate_metrics(self.metrics, ckpt["step"])
        return ckpt["step"], ckpt.get("state") or {}

    def record(self, row: dict) -> None:
        with open(self.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

