"""The losses and estimators of preference learning and RL from feedback, as pure functions of tensors.

    loss = bradley_terry_loss(reward_model(chosen), reward_model(rejected))          # a reward model
    loss, r_c, r_r = dpo_loss(pi_c, pi_r, ref_c, ref_r, beta=0.1)                   # DPO, from sequence_logprobs
    adv, ret = gae(rewards - beta * kl_penalty(logp, ref_logp), values, mask)      # PPO (RLHF): per-token rewards
    loss, stats = clipped_surrogate(logp, old_logp, adv, mask)                      # ... and its policy loss
    adv = group_advantages(rewards)                                                 # GRPO: (n_prompts, G) scores

These are the building blocks; the loops that sample, score and take steps live elsewhere. Shapes: B sequences,
T positions, V the vocabulary; a mask (B, T) is 1 on the response tokens that count (float, bool or int).

- Log-probabilities. token_logprobs picks log p(y_t | y_<t) out of log_softmax(logits) (0 where the target is
  -100); sequence_logprobs sums them over the response: log pi(y|x), the number DPO compares between models.
- Masked statistics. masked_mean averages over the response tokens only. masked_whiten rescales to mean 0,
  variance 1: (x - mean) / sqrt(var + eps), with the unbiased variance (divides by n - 1); PPO whitens its
  advantages so; shift_mean=False keeps the mean (some PPO implementations whiten rewards that way; ours does not).
- entropy: H = -sum_v p(v) log p(v) of each next-token distribution, averaged over the response. RL watches it:
  when it collapses the policy has stopped exploring.
- Bradley-Terry (reward model): P(chosen beats rejected) = sigmoid(r_c - r_r), so the loss is
  -log sigmoid(r_c - r_r - margin), the mean over pairs. Only differences count: a reward's offset is free.
- DPO (Rafailov et al. 2023, https://arxiv.org/abs/2305.18290): the policy's implicit reward
  beta * (log pi(y|x) - log pi_ref(y|x)) put into the Bradley-Terry loss, so no reward model and no sampling:
  -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))). At the start (pi = pi_ref) it is ln 2.
- KL estimators (Schulman 2020, http://joschu.net/blog/kl-approx.html) of KL(pi || pi_ref) from tokens sampled
  from pi, with d = log pi - log pi_ref: k1 = d (unbiased, often negative), k2 = d^2 / 2 (biased, low variance),
  k3 = exp(-d) - 1 + d (unbiased and >= 0). RLHF subtracts beta * k1 from each token's reward; GRPO adds beta * k3
  to its loss.
- GAE (Schulman et al. 2016, https://arxiv.org/abs/1506.02438): delta_t = r_t + gamma V_{t+1} - V_t and
  A_t = delta_t + gamma lam A_{t+1}, from the last token back. lam = 1 gives the reward-to-go minus V (no bias, much
  variance), lam = 0 the one-step TD error delta_t. The returns A + V are the value head's targets.
- PPO (Schulman et al. 2017, https://arxiv.org/abs/1707.06347): with the ratio p = pi / pi_old per token, the loss is
  the mean of max(-A p, -A clip(p, 1 - eps, 1 + eps)): a token whose ratio has already moved eps in the good
  direction stops pulling, so several epochs on one batch cannot go far. value_loss clips the value head alike.
- GRPO (Shao et al. 2024, https://arxiv.org/abs/2402.03300) has no value head: sample G answers per prompt; each
  answer's advantage is (r - group mean) / (group std + eps), shared by all its tokens. Dr. GRPO (Liu et al. 2025,
  https://arxiv.org/abs/2503.20783) only subtracts the mean (scale=False).
- KL controllers (Ziegler et al. 2019, https://arxiv.org/abs/1909.08593): the KL coefficient beta adapts so the
  measured KL stays near a target: beta *= 1 + clip(KL / target - 1, -0.2, 0.2) * n_steps / horizon.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE = -100  # a target that is no target, as in sft.py (cross_entropy's ignore_index)
KL_KINDS = ("k1", "k2", "k3", "abs")


def _check_shapes(**tensors: torch.Tensor) -> None:
    """Raise, naming the arguments, unless all tensors have one shape."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"shapes disagree: {shapes}; pass tensors of one shape, e.g. (B, T)")


def _float32_or_wider(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 -> float32 (their log-probs are too coarse to compare models by); float32/float64 unchanged."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over the positions where mask is nonzero (0 where there are none); whatever lies outside is ignored.

    masked_mean(tensor([1., 2., 99.]), tensor([1, 1, 0])) -> 1.5
    """
    w = mask.to(x.dtype)
    total = torch.where(w != 0, x * w, 0.0)  # where, not x * w: a NaN or inf outside the mask must not leak in
    if dim is None:
        return total.sum() / w.sum().clamp(min=1e-8)
    return total.sum(dim) / w.sum(dim).clamp(min=1e-8)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of x over the mask (divides by n - 1, Bessel's correction; n = number of positions)."""
    n = mask.to(x.dtype).sum()
    if n < 2:
        raise ValueError(f"a variance needs at least 2 positions in the mask, got {int(n)}")
    return masked_mean((x - masked_mean(x, mask)) ** 2, mask) * n / (n - 1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) over all mask positions of the batch, unbiased variance; 0 outside the mask.

    shift_mean=False adds the mean back: the spread is normalised but the sign of a reward is kept.
    masked_whiten(tensor([1., 3., 50.]), tensor([1, 1, 0])) -> tensor([-0.7071, 0.7071, 0.])
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, 0.0)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, T, V) logits, (B, T) targets -> (B, T) log p(target), at least float32; 0 where the target is -100.

    The teaching version: log_softmax over V, then pick each target's entry (-cross_entropy computes the same).
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} disagree: logits (B, T, V) "
                         "need targets (B, T), the next tokens (targets = ids[:, 1:] for logits of ids[:, :-1])")
    logp = F.log_softmax(_float32_or_wider(logits), dim=-1)  # (B, T, V)
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T); -100 picks a dummy id 0
    return torch.where(targets == IGNORE, 0.0, picked)


def sequence_logprobs(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) log pi(response | prompt): the sum of token_logprobs over the mask (mask None: where targets != -100)."""
    lp = token_logprobs(logits, targets)  # (B, T)
    if mask is None:
        mask = targets != IGNORE
    _check_shapes(targets=targets, mask=mask)
    return torch.where(mask.bool(), lp * mask.to(lp.dtype), 0.0).sum(-1)


def entropy(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the mask of each position's entropy -sum_v p log p, in nats: a scalar (log V for a uniform model)."""
    logp = F.log_softmax(_float32_or_wider(logits), dim=-1)  # (B, T, V)
    # 0 log 0 = 0 for tokens ruled out by -inf logits (top-k); filling before the product keeps NaN out of the
    # gradient too, which torch.where(..., 0, p * logp) would not (0 * -inf is NaN, and so is its backward)
    h = -(logp.exp() * logp.masked_fill(logp.isneginf(), 0.0)).sum(-1)  # (B, T)
    return masked_mean(h, mask)


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor,
                       margin: torch.Tensor | float | None = None) -> torch.Tensor:
    """Mean of -log sigmoid(r_chosen - r_rejected - margin) over the pairs (B,); 0 margin when None.

    bradley_terry_loss(tensor([0.]), tensor([0.])) -> ln 2 = 0.6931 (the model cannot yet tell them apart)
    """
    delta = r_chosen - r_rejected
    if margin is not None:
        delta = delta - margin  # a pair marked as clearly better must win by at least the margin
    return -F.logsigmoid(delta).mean()  # logsigmoid, not log(sigmoid()): sigmoid(-1000) underflows to 0, log to -inf


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sequence log-probs (B,) each -> (mean loss, chosen rewards (B,), rejected rewards (B,)).

    The rewards are DPO's implicit ones, beta * (log pi - log pi_ref), detached: for logging (accuracy, margin).
    loss = mean of -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))); ln 2 when the policy is the reference.
    """
    _check_shapes(policy_chosen=policy_chosen, policy_rejected=policy_rejected, ref_chosen=ref_chosen,
                  ref_rejected=ref_rejected)
    chosen = policy_chosen - ref_chosen  # how much more likely the policy makes the chosen answer than the reference
    rejected = policy_rejected - ref_rejected
    loss = -F.logsigmoid(beta * (chosen - rejected)).mean()
    return loss, beta * chosen.detach(), beta * rejected.detach()


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimates of KL(pi || pi_ref) from tokens sampled from pi, same shape as logp.

    k1 = logp - ref_logp; k2 = (logp - ref_logp)^2 / 2; k3 = exp(ref_logp - logp) - (ref_logp - logp) - 1;
    abs = |logp - ref_logp|. Their mean over samples estimates the KL (k1, k3 without bias).
    """
    if kind not in KL_KINDS:
        raise ValueError(f"unknown KL estimator {kind!r}; choose one of: {', '.join(KL_KINDS)}")
    d = logp - ref_logp  # log pi(x) / pi_ref(x)
    if kind == "k1":
        return d
    if kind == "k2":
        return 0.5 * d ** 2
    if kind == "k3":
        return torch.exp(-d) - 1 + d  # (r - 1) - log r with r = pi_ref / pi: E[r] = 1 makes it unbiased, and >= 0
    return d.abs()


@torch.no_grad()
def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) rewards, values, mask -> advantages and returns (= advantages + values), (B, T), 0 outside the mask.

    Computed without gradient (they are targets). The value after a row's last masked token is 0: the episode
    ends there. A position outside the mask is not a step: it is skipped, and its reward and value are ignored,
    so put a sequence's reward on its last response token.
    """
    _check_shapes(rewards=rewards, values=values, mask=mask)
    dtype = torch.promote_types(torch.promote_types(rewards.dtype, values.dtype), torch.float32)
    rewards, values, m = rewards.to(dtype), values.to(dtype), mask.bool()
    advantages = torch.zeros_like(rewards)  # (B, T)
    next_value = rewards.new_zeros(rewards.shape[0])  # (B,) V of the next step; 0 after the last one
    next_adv = rewards.new_zeros(rewards.shape[0])  # (B,)
    for t in reversed(range(rewards.shape[1])):  # backwards in time, all rows at once
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # one-step TD error
        adv = delta + gamma * lam * next_adv
        advantages[:, t] = torch.where(m[:, t], adv, 0.0)
        next_adv = torch.where(m[:, t], adv, next_adv)  # a skipped position hands on what it received
        next_value = torch.where(m[:, t], values[:, t], next_value)
    return advantages, torch.where(m, advantages + values, 0.0)


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                      clip: float = 0.2) -> tuple[torch.Tensor, dict]:
    """PPO's policy loss: mean over the mask of max(-A p, -A clip(p, 1 - clip, 1 + clip)), p = exp(logp - old_logp).

    Inputs (B, T); returns (scalar loss, stats) with stats floats: clipfrac (share of tokens whose clipped term won,
    i.e. that get no gradient), approx_kl (mean of the k3 estimator of KL(pi_old || pi), >= 0) and ratio_mean.
    The mean is over all the batch's tokens; averaging each sequence first (GRPO's paper) weighs short answers more.
    """
    _check_shapes(logp=logp, old_logp=old_logp, advantages=advantages, mask=mask)
    ratio = torch.exp(logp - old_logp)  # (B, T); 1 at the first epoch on a fresh batch
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip, 1 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)  # the pessimistic of the two
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((clipped > unclipped).float(), mask).item(),
                 # the tokens were sampled from pi_old, so k3 with the roles swapped estimates KL(pi_old || pi)
                 "approx_kl": masked_mean(kl_penalty(old_logp, logp, "k3"), mask).item(),
                 "ratio_mean": masked_mean(ratio, mask).item()}
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float = 0.2) -> tuple[torch.Tensor, dict]:
    """PPO2's clipped value loss: 0.5 * mean over the mask of max((v - R)^2, (clip(v, old - clip, old + clip) - R)^2).

    Inputs (B, T); returns (scalar loss, {"vf_clipfrac": share of tokens where the clipped error was the larger}).
    """
    _check_shapes(values=values, old_values=old_values, returns=returns, mask=mask)
    v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)  # the value head may move clip per batch
    err = (values - returns) ** 2
    err_clipped = (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err, err_clipped), mask)
    with torch.no_grad():
        stats = {"vf_clipfrac": masked_mean((err_clipped > err).float(), mask).item()}
    return loss, stats


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4, scale: bool = True) -> torch.Tensor:
    """(n_prompts, G) rewards of G answers per prompt -> (n_prompts, G) advantages, (r - mean) / (std + eps) per row.

    std is the sample standard deviation (unbiased, divides by G - 1), as torch.std and trl's GRPOTrainer compute
    it. scale=False only subtracts the mean (Dr. GRPO). A group of equal rewards gets advantages 0: nothing to learn.
    group_advantages(tensor([[1., 0., 0., 1.]])) -> tensor([[0.8659, -0.8659, -0.8659, 0.8659]])
    """
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards of shape {tuple(rewards.shape)}: group_advantages needs (n_prompts, G) with G >= 2 "
                         "answers per prompt (reshape flat rewards with .view(-1, G))")
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if not scale:
        return centred
    return centred / (rewards.std(dim=1, keepdim=True) + eps)


@dataclass
class AdaptiveKLController:
    """The KL coefficient of Ziegler et al. 2019: grows while the measured KL is above target, shrinks below it.

    ctl = AdaptiveKLController(value=0.2, target=6.0, horizon=10000); ctl.update(kl=12.0, n_steps=256); ctl.value
    -> 0.2 * (1 + 0.2 * 256 / 10000) = 0.201024 (the error KL / target - 1 = 1 is clipped to 0.2)
    """

    value: float
    target: float
    horizon: float

    def __post_init__(self):
        if self.target <= 0 or self.horizon <= 0:
            raise ValueError(f"target ({self.target}) and horizon ({self.horizon}) must be positive")

    def update(self, kl: float, n_steps: int) -> float:
        """value *= 1 + clip(kl / target - 1, -0.2, 0.2) * n_steps / horizon; returns the new value."""
        error = min(max(float(kl) / self.target - 1, -0.2), 0.2)  # clipped: one odd batch cannot swing beta far
        self.value *= 1 + error * n_steps / self.horizon
        return self.value


@dataclass
class FixedKLController:
    """A constant KL coefficient with AdaptiveKLController's interface: update changes nothing."""

    value: float

    def update(self, kl: float, n_steps: int) -> float:
        """Returns the unchanged value."""
        return self.value
