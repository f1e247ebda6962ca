"""The losses and estimators of preference learning and RL (llmpath.chat.objectives): each against a closed form,
a plain-Python loop or torch's own distributions, on tiny tensors."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Categorical, kl_divergence

from llmpath.chat.objectives import (
    AdaptiveKLController,
    FixedKLController,
    bradley_terry_loss,
    clipped_surrogate,
    dpo_loss,
    entropy,
    gae,
    group_advantages,
    kl_penalty,
    masked_mean,
    masked_whiten,
    sequence_logprobs,
    token_logprobs,
    value_loss,
)

LN2 = torch.tensor(math.log(2), dtype=torch.float32)
MASK = torch.tensor([[1, 1, 1, 1, 1, 1, 1],  # rows of varying length: full, right-padded, after a prompt, with a gap
                     [1, 1, 1, 0, 0, 0, 0],
                     [0, 0, 1, 1, 1, 1, 0],
                     [1, 0, 1, 1, 0, 1, 0]])


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """torch.testing.assert_close's check with its default tolerances, minus its first call's second of imports."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, (actual, expected)
    rtol, atol = {torch.float32: (1.3e-6, 1e-5), torch.float64: (1e-7, 1e-7)}[actual.dtype]
    assert torch.allclose(actual, expected, rtol=rtol, atol=atol), (actual, expected)


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


# ---------------------------------------------------------------- masked statistics

def test_masked_mean_ignores_what_lies_outside_the_mask():
    x = torch.tensor([[1.0, 2.0, float("nan")], [4.0, float("inf"), 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    assert masked_mean(x, mask).item() == pytest.approx((1 + 2 + 4 + 6) / 4)
    assert torch.equal(masked_mean(x, mask.bool(), dim=1), torch.tensor([1.5, 5.0]))
    assert masked_mean(x, torch.zeros(2, 3)).item() == 0.0  # no position: 0, not NaN


def test_masked_whiten_gives_mean_0_and_variance_1_over_the_mask():
    torch.manual_seed(0)
    x = 5 * torch.randn(4, 7, dtype=torch.float64) + 3
    m = MASK.bool()
    w = masked_whiten(x, MASK)
    assert w[m].mean().item() == pytest.approx(0, abs=1e-12)
    assert w[m].var().item() == pytest.approx(1, rel=1e-6)  # torch.var is unbiased: the convention we use
    assert (w[~m] == 0).all()
    kept = masked_whiten(x, MASK, shift_mean=False)
    assert kept[m].mean().item() == pytest.approx(x[m].mean().item(), rel=1e-9)
    assert kept[m].var().item() == pytest.approx(1, rel=1e-6)


def test_masked_whiten_does_not_look_outside_the_mask():
    torch.manual_seed(1)
    x = torch.randn(4, 7)
    y = torch.where(MASK.bool(), x, torch.full_like(x, 1e6))
    y[0, 0] = x[0, 0]
    y[1, 5] = float("nan")
    assert torch.equal(masked_whiten(x, MASK), masked_whiten(y, MASK))
    one = torch.zeros(4, 7)
    one[2, 3] = 1
    with pytest.raises(ValueError, match="at least 2 positions"):
        masked_whiten(x, one)


# ---------------------------------------------------------------- log-probabilities and entropy

def test_token_and_sequence_logprobs_match_torch():
    torch.manual_seed(2)
    logits = 3 * torch.randn(2, 5, 7)
    targets = torch.randint(0, 7, (2, 5))
    targets[0, :2] = -100  # a prompt
    targets[1, 4] = -100  # padding
    lp = token_logprobs(logits, targets)  # (B, T)
    ce = -F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")
    cat = Categorical(logits=logits).log_prob(targets.clamp(min=0)) * (targets != -100)
    assert_close(lp, ce)
    assert_close(lp, cat)
    assert (lp[0, :2] == 0).all() and lp[1, 4] == 0
    mask = (targets != -100).float()
    mask[1, 0] = 0  # a mask can count fewer tokens than the targets
    assert_close(sequence_logprobs(logits, targets, mask), (cat * mask).sum(1))
    assert_close(sequence_logprobs(logits, targets), cat.sum(1))  # mask None: targets != -100
    assert token_logprobs(logits.bfloat16(), targets).dtype == torch.float32
    with pytest.raises(ValueError, match=r"need targets \(B, T\)"):
        token_logprobs(logits, targets[:, 1:])


def test_entropy_matches_categorical_and_survives_minus_inf_logits():
    torch.manual_seed(3)
    logits = torch.randn(2, 4, 6)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]])
    h = Categorical(logits=logits).entropy()  # (B, T)
    assert entropy(logits, mask).item() == pytest.approx(h[mask.bool()].mean().item(), rel=1e-6)
    assert entropy(torch.zeros(1, 3, 6), torch.ones(1, 3)).item() == pytest.approx(math.log(6), rel=1e-6)
    top2 = torch.full((1, 1, 6), float("-inf"))
    top2[..., :2] = 0.0  # two tokens left (top-k): 1 bit
    top2.requires_grad_()
    h = entropy(top2, torch.ones(1, 1))
    h.backward()
    assert h.item() == pytest.approx(math.log(2), rel=1e-6)
    assert torch.isfinite(top2.grad).all()


# ---------------------------------------------------------------- reward model and DPO

RC, RR, MARGIN = [1.0, -0.5, 2.0, 0.3], [0.0, 0.5, -1.0, 0.3], [0.0, 0.2, 1.0, -0.5]


def test_bradley_terry_loss_is_the_closed_form_and_trls_formula():
    closed = sum(-math.log(1 / (1 + math.exp(-(c - r - m)))) for c, r, m in zip(RC, RR, MARGIN)) / len(RC)
    rewards_chosen, rewards_rejected, margin = torch.tensor(RC), torch.tensor(RR), torch.tensor(MARGIN)
    loss = bradley_terry_loss(rewards_chosen, rewards_rejected, margin)
    assert loss.item() == pytest.approx(closed, rel=1e-6)
    # trl's RewardTrainer.compute_loss, written out: with a margin column, then without
    assert torch.equal(loss, -nn.functional.logsigmoid(rewards_chosen - rewards_rejected - margin).mean())
    assert torch.equal(bradley_terry_loss(rewards_chosen, rewards_rejected),
                       -nn.functional.logsigmoid(rewards_chosen - rewards_rejected).mean())
    no_margin = sum(-math.log(sigmoid(c - r)) for c, r in zip(RC, RR)) / len(RC)
    assert bradley_terry_loss(rewards_chosen, rewards_rejected).item() == pytest.approx(no_margin, rel=1e-6)


def test_bradley_terry_gradient_is_minus_sigmoid_of_minus_delta_over_b():
    rc, rr = torch.tensor(RC, requires_grad=True), torch.tensor(RR, requires_grad=True)
    bradley_terry_loss(rc, rr, torch.tensor(MARGIN)).backward()
    expected = torch.tensor([-sigmoid(-(c - r - m)) / len(RC) for c, r, m in zip(RC, RR, MARGIN)])
    assert_close(rc.grad, expected)
    assert_close(rr.grad, -expected)


def test_bradley_terry_is_stable_for_huge_reward_gaps():
    rc = torch.tensor([1000.0, -1000.0], requires_grad=True)
    loss = bradley_terry_loss(rc, torch.zeros(2))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(rc.grad).all()
    assert loss.item() == pytest.approx(1000 / 2)  # the won pair costs 0, the lost one 1000
    assert_close(rc.grad, torch.tensor([0.0, -0.5]))


def test_dpo_loss_is_exactly_ln2_when_the_policy_is_the_reference():
    torch.manual_seed(4)
    chosen, rejected = -20 * torch.rand(4), -20 * torch.rand(4)
    loss, r_c, r_r = dpo_loss(chosen, rejected, chosen.clone(), rejected.clone())
    # exact for small batches; mean() over ~100 copies of ln 2 can be 1 ulp off in float32
    assert torch.equal(loss, LN2)
    assert torch.equal(r_c, torch.zeros(4)) and torch.equal(r_r, torch.zeros(4))


def test_dpo_loss_is_the_closed_form_and_its_rewards_are_beta_log_ratios():
    pc, pr, rc, rr, beta = [-5.0, -12.3, -7.0], [-6.1, -9.0, -7.5], [-5.5, -11.0, -6.0], [-5.9, -10.0, -8.0], 0.5
    closed = sum(-math.log(sigmoid(beta * ((a - c) - (b - d)))) for a, b, c, d in zip(pc, pr, rc, rr)) / 3
    policy_c = torch.tensor(pc, dtype=torch.float64, requires_grad=True)
    policy_r = torch.tensor(pr, dtype=torch.float64, requires_grad=True)
    ref_c, ref_r = torch.tensor(rc, dtype=torch.float64), torch.tensor(rr, dtype=torch.float64)
    loss, r_c, r_r = dpo_loss(policy_c, policy_r, ref_c, ref_r, beta=beta)
    assert loss.item() == pytest.approx(closed, rel=1e-12)
    assert_close(r_c, beta * (policy_c - ref_c).detach())
    assert_close(r_r, torch.tensor([beta * (b - d) for b, d in zip(pr, rr)], dtype=torch.float64))
    assert not r_c.requires_grad and not r_r.requires_grad
    loss.backward()
    assert (policy_c.grad < 0).all() and (policy_r.grad > 0).all()  # raise chosen, lower rejected
    with torch.no_grad():
        higher, _, _ = dpo_loss(policy_c + 0.1, policy_r, ref_c, ref_r, beta=beta)
    assert higher < loss


def test_dpo_loss_is_stable_far_from_the_reference():
    policy_c = torch.tensor([-1e4, 0.0], requires_grad=True)  # beta * log-ratio gap of -1000 and +1000
    loss, _, _ = dpo_loss(policy_c, torch.zeros(2), torch.tensor([0.0, -1e4]), torch.zeros(2), beta=0.1)
    loss.backward()
    assert loss.item() == pytest.approx(1000 / 2) and torch.isfinite(policy_c.grad).all()


# ---------------------------------------------------------------- KL estimators

def test_k1_and_k3_average_to_the_exact_kl_over_a_categorical():
    torch.manual_seed(5)
    pi, ref = Categorical(logits=torch.randn(8, dtype=torch.float64)), Categorical(logits=torch.randn(8,
                                                                                           dtype=torch.float64))
    exact = kl_divergence(pi, ref).item()
    tokens = torch.arange(8)  # every token, weighted by how often pi samples it
    logp, ref_logp, p = pi.log_prob(tokens), ref.log_prob(tokens), pi.probs
    for kind in ("k1", "k3"):
        assert (p * kl_penalty(logp, ref_logp, kind)).sum().item() == pytest.approx(exact, abs=1e-6)
    assert (kl_penalty(logp, ref_logp, "k1") < 0).any()  # k1 per sample can be negative ...
    assert (kl_penalty(logp, ref_logp, "k3") >= 0).all()  # ... k3 never is
    assert_close(kl_penalty(logp, ref_logp, "abs"), (logp - ref_logp).abs())


def test_k3_is_nonnegative_and_zero_only_where_the_models_agree():
    torch.manual_seed(6)
    logp, ref_logp = -5 * torch.rand(1000), -5 * torch.rand(1000)
    assert (kl_penalty(logp, ref_logp, "k3") >= 0).all()
    assert torch.equal(kl_penalty(logp, logp, "k3"), torch.zeros(1000))


def test_k2_matches_the_kl_to_second_order_for_close_distributions():
    torch.manual_seed(7)
    logits, noise = torch.randn(10, dtype=torch.float64), torch.randn(10, dtype=torch.float64)
    tokens = torch.arange(10)
    rel = []
    for s in (0.3, 0.03):
        pi, ref = Categorical(logits=logits), Categorical(logits=logits + s * noise)
        e_k2 = (pi.probs * kl_penalty(pi.log_prob(tokens), ref.log_prob(tokens), "k2")).sum().item()
        rel.append(abs(e_k2 - kl_divergence(pi, ref).item()) / kl_divergence(pi, ref).item())
    assert rel[1] < 0.02 and rel[1] < rel[0] / 5  # the gap is third order: it shrinks ~10x when s does


def test_kl_penalty_refuses_an_unknown_kind():
    with pytest.raises(ValueError, match="choose one of: k1, k2, k3, abs"):
        kl_penalty(torch.zeros(2), torch.zeros(2), "k4")


# ---------------------------------------------------------------- GAE

def gae_by_definition(rewards, values, mask, gamma, lam):
    """Per row: the steps are the masked positions; A_t = sum_l (gamma lam)^l delta_{t+l}, V after the last = 0."""
    adv, ret = [], []
    for r, v, m in zip(rewards, values, mask):
        steps = [t for t in range(len(m)) if m[t]]
        nxt = [v[steps[i + 1]] if i + 1 < len(steps) else 0.0 for i in range(len(steps))]
        deltas = [r[t] + gamma * nxt[i] - v[t] for i, t in enumerate(steps)]
        a_row, r_row = [0.0] * len(m), [0.0] * len(m)
        for i, t in enumerate(steps):
            a_row[t] = sum((gamma * lam) ** k * deltas[i + k] for k in range(len(steps) - i))
            r_row[t] = a_row[t] + v[t]
        adv.append(a_row)
        ret.append(r_row)
    return torch.tensor(adv, dtype=torch.float64), torch.tensor(ret, dtype=torch.float64)


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (0.99, 0.0)])
def test_gae_matches_the_definition_row_by_row(gamma, lam):
    torch.manual_seed(8)
    rewards, values = torch.randn(4, 7, dtype=torch.float64), torch.randn(4, 7, dtype=torch.float64)
    rewards[~MASK.bool()], values[~MASK.bool()] = 100.0, -100.0  # outside the mask: ignored
    adv, ret = gae(rewards, values, MASK, gamma=gamma, lam=lam)
    ref_adv, ref_ret = gae_by_definition(rewards.tolist(), values.tolist(), MASK.tolist(), gamma, lam)
    assert_close(adv, ref_adv)
    assert_close(ret, ref_ret)


def test_gae_lambda_1_returns_the_reward_to_go_and_lambda_0_the_td_error():
    torch.manual_seed(9)
    rewards, values, mask, gamma = torch.randn(2, 5), torch.randn(2, 5), torch.tensor([[1] * 5, [1, 1, 1, 0, 0]]), 0.9
    _, ret = gae(rewards, values, mask, gamma=gamma, lam=1.0)
    for b, n in enumerate((5, 3)):
        to_go = [sum(gamma ** (k - t) * rewards[b, k].item() for k in range(t, n)) for t in range(n)]
        assert_close(ret[b, :n], torch.tensor(to_go))
    adv, _ = gae(rewards, values, mask, gamma=gamma, lam=0.0)
    next_v = torch.cat([values[:, 1:], torch.zeros(2, 1)], 1) * torch.cat([mask[:, 1:], torch.zeros(2, 1)], 1)
    assert_close(adv, (rewards + gamma * next_v - values) * mask)


def test_gae_carries_no_gradient():
    values = torch.randn(2, 3, requires_grad=True)
    adv, ret = gae(torch.randn(2, 3), values, torch.ones(2, 3))
    assert not adv.requires_grad and not ret.requires_grad


# ---------------------------------------------------------------- PPO

def test_clipped_surrogate_per_token_cases():
    #                  clipped  pessimist clipped  pessimist inside  masked
    ratio = torch.tensor([[1.5, 0.5, 0.5, 1.5, 1.1, 9.0]], dtype=torch.float64)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, 2.0, 5.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    old_logp = -torch.rand(1, 6, dtype=torch.float64)
    logp = (old_logp + ratio.log()).requires_grad_()
    loss, stats = clipped_surrogate(logp, old_logp, adv, mask, clip=0.2)
    per_token = [-1.0 * 1.2, -1.0 * 0.5, 1.0 * 0.8, 1.0 * 1.5, -2.0 * 1.1]
    assert loss.item() == pytest.approx(sum(per_token) / 5, rel=1e-12)
    loss.backward()
    # d(-A r)/dlogp = -A r where unclipped; 0 where the clipped term won (and outside the mask)
    expected = torch.tensor([[0.0, -0.5, 0.0, 1.5, -2.2, 0.0]], dtype=torch.float64) / 5
    assert_close(logp.grad, expected)
    assert stats["clipfrac"] == pytest.approx(2 / 5)
    assert stats["ratio_mean"] == pytest.approx((1.5 + 0.5 + 0.5 + 1.5 + 1.1) / 5)
    k3 = [(r - 1) - math.log(r) for r in (1.5, 0.5, 0.5, 1.5, 1.1)]  # KL(pi_old || pi), tokens from pi_old
    assert stats["approx_kl"] == pytest.approx(sum(k3) / 5)


def test_clipped_surrogate_at_the_first_epoch_is_minus_the_mean_advantage():
    torch.manual_seed(10)
    logp, adv = -torch.rand(3, 4), torch.randn(3, 4)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 1, 1, 0]])
    loss, stats = clipped_surrogate(logp, logp.clone(), adv, mask)
    assert loss.item() == pytest.approx(-adv[mask.bool()].mean().item(), rel=1e-6)
    assert stats == {"clipfrac": 0.0, "approx_kl": 0.0, "ratio_mean": 1.0}


def test_value_loss_clips_around_the_old_values():
    values = torch.tensor([[0.5, 0.5, 0.1, -0.5, 3.0]], requires_grad=True)
    old, returns = torch.zeros(1, 5), torch.tensor([[1.0, 0.0, 0.3, -1.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    loss, stats = value_loss(values, old, returns, mask, clip=0.2)
    # token 0: (0.5-1)^2 = .25 < (0.2-1)^2 = .64, clipped wins; 1: .25 > .04; 2: inside, .04 both; 3: like 0
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.25 + 0.04 + 0.64) / 4, rel=1e-6)
    assert stats == {"vf_clipfrac": 0.5}
    loss.backward()
    assert_close(values.grad, torch.tensor([[0.0, 0.5 / 4, -0.2 / 4, 0.0, 0.0]]))


# ---------------------------------------------------------------- GRPO

def test_group_advantages_have_mean_0_and_sample_std_1_per_group():
    torch.manual_seed(11)
    rewards = torch.randn(5, 8, dtype=torch.float64)
    a = group_advantages(rewards, eps=0.0)
    assert_close(a.mean(1), torch.zeros(5, dtype=torch.float64))
    assert_close(a.std(1), torch.ones(5, dtype=torch.float64))  # unbiased, like trl's GRPOTrainer
    assert not torch.allclose(a.std(1, unbiased=False), torch.ones(5, dtype=torch.float64))
    s = rewards.std(1)
    assert_close(group_advantages(rewards).std(1), s / (s + 1e-4))  # with the default eps
    assert_close(group_advantages(rewards, scale=False), rewards - rewards.mean(1, keepdim=True))


def test_group_advantages_of_equal_rewards_are_zero_and_binary_ones_known():
    a = group_advantages(torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 1.0]]))
    assert torch.equal(a[0], torch.zeros(4))
    expected = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    assert_close(a[1], torch.tensor([expected, -expected, -expected, expected]))
    with pytest.raises(ValueError, match="G >= 2"):
        group_advantages(torch.ones(3, 1))
    with pytest.raises(ValueError, match=r"view\(-1, G\)"):
        group_advantages(torch.ones(8))


# ---------------------------------------------------------------- KL controllers

def test_adaptive_kl_controller_follows_the_formula():
    ctl = AdaptiveKLController(value=0.1, target=6.0, horizon=1000)
    assert ctl.update(kl=12.0, n_steps=100) == pytest.approx(0.1 * (1 + 0.2 * 0.1))  # error 1 clipped to 0.2
    before = ctl.value
    assert ctl.update(kl=6.6, n_steps=100) == pytest.approx(before * (1 + 0.1 * 0.1))  # error 0.1: up
    assert ctl.value > before
    before = ctl.value
    assert ctl.update(kl=3.0, n_steps=100) == pytest.approx(before * (1 - 0.2 * 0.1))  # error -0.5 clipped: down
    assert ctl.value < before
    before = ctl.value
    assert ctl.update(kl=torch.tensor(6.0), n_steps=100) == before  # on target: unchanged
    fixed = FixedKLController(value=0.05)
    assert fixed.update(kl=100.0, n_steps=100) == 0.05 == fixed.value
    with pytest.raises(ValueError, match="must be positive"):
        AdaptiveKLController(value=0.1, target=0.0, horizon=1000)
