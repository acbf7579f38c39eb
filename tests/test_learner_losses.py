"""Every loss and estimator of the learners against a hand computation on a tiny batch."""
from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import t as student_t

from tokenalign.buffers.batches import Transitions
from tokenalign.learners.advantages import gae, reverse_discounted_sum
from tokenalign.learners.confidence import cost_surrogate, kappa, upper_bound
from tokenalign.learners.episodes import Episodes
from tokenalign.learners.kl import (
    KLConfig,
    KLController,
    action_log_ratio,
    decision_kl,
    kl_per_response,
    reference_log_probs,
)
from tokenalign.learners.lagrange import CostWindow, LagrangeConfig, LagrangeMultiplier
from tokenalign.learners.ppo import clipped_surrogate_loss, clipped_value_loss
from tokenalign.learners.ppo_lagrangian import lagrangian_advantages
from tokenalign.learners.rloo_lagrangian import rloo_loss
from tokenalign.learners.sac import actor_loss, critic_loss, soft_q_target

ln = math.log


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# --- SAC relative to π_ref ---------------------------------------------------------------------------


def test_soft_q_target_pays_beta_times_the_kl_to_pi_ref() -> None:
    probs = torch.tensor([[0.25, 0.75], [0.5, 0.5]], dtype=torch.float64)
    ref = torch.tensor([[0.5, 0.5], [0.9, 0.1]], dtype=torch.float64)
    target = soft_q_target(
        reward=t(1.0, 0.5), done=t(0.0, 1.0), next_log_probs=probs.log(), next_ref_log_probs=ref.log(),
        next_q1_target=torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64),
        next_q2_target=torch.tensor([[1.5, 1.0], [0.0, 0.0]], dtype=torch.float64),
        beta=0.1, gamma=0.9,
    )
    # row 0: min Q̄ = (1, 1), minus β·log(π/π_ref) per action; row 1 is terminal: its reward alone.
    soft_value = 0.25 * (1.0 - 0.1 * ln(0.25 / 0.5)) + 0.75 * (1.0 - 0.1 * ln(0.75 / 0.5))
    assert target.tolist() == pytest.approx([1.0 + 0.9 * soft_value, 0.5])


def test_critic_loss_is_half_mse_per_head() -> None:
    q1_loss, q2_loss = critic_loss(t(1.0, 2.0), t(0.0, 2.0), t(1.5, 2.5))
    assert q1_loss.item() == pytest.approx(0.5 * (0.25 + 0.25) / 2)
    assert q2_loss.item() == pytest.approx(0.5 * (2.25 + 0.25) / 2)


def test_actor_loss_uses_min_q_and_beta_times_the_kl_to_pi_ref() -> None:
    probs = torch.tensor([[0.2, 0.8]], dtype=torch.float64)
    ref = torch.tensor([[0.6, 0.4]], dtype=torch.float64)
    loss = actor_loss(
        log_probs=probs.log(), ref_log_probs=ref.log(), q1=torch.tensor([[1.0, 3.0]], dtype=torch.float64),
        q2=torch.tensor([[2.0, 2.0]], dtype=torch.float64), beta=0.5,
    )
    assert loss.item() == pytest.approx(0.2 * (0.5 * ln(0.2 / 0.6) - 1.0) + 0.8 * (0.5 * ln(0.8 / 0.4) - 2.0))


def test_sac_actor_loss_is_minimised_at_pi_ref_times_exp_q_over_beta() -> None:
    """Soft RL relative to π_ref: the optimum is π ∝ π_ref·exp(Q/β), so with equal Q values it is π_ref."""
    ref = torch.tensor([[0.7, 0.3]], dtype=torch.float64)
    q = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    optimum = ref * torch.exp(q / 0.5)
    optimum = optimum / optimum.sum()
    grid = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    losses = [actor_loss(log_probs=torch.stack([1 - p, p]).log().unsqueeze(0), ref_log_probs=ref.log(), q1=q, q2=q,
                         beta=0.5).item() for p in grid]
    assert grid[int(torch.tensor(losses).argmin())].item() == pytest.approx(optimum[0, 1].item(), abs=0.01)


# --- the KL to the base LM -------------------------------------------------------------------------------


def test_decision_kl_and_log_ratio_by_hand() -> None:
    base_logit = t(0.0, ln(3.0))  # π_ref accepts with 1/2 and 3/4
    ref = reference_log_probs(base_logit)
    assert ref.exp().flatten().tolist() == pytest.approx([0.5, 0.5, 0.25, 0.75])
    probs = torch.tensor([[0.9, 0.1], [0.5, 0.5]], dtype=torch.float64)
    expected = [0.9 * ln(0.9 / 0.5) + 0.1 * ln(0.1 / 0.5), 0.5 * ln(0.5 / 0.25) + 0.5 * ln(0.5 / 0.75)]
    assert decision_kl(probs.log(), ref).tolist() == pytest.approx(expected)
    # the taken actions' log π − log π_ref: reject in row 0, accept in row 1
    ratio = action_log_ratio(t(ln(0.9), ln(0.5)), torch.tensor([0, 1]), base_logit)
    assert ratio.tolist() == pytest.approx([ln(0.9 / 0.5), ln(0.5 / 0.75)])


def test_kl_per_response_from_uniformly_drawn_rows() -> None:
    # two whole episodes, 3 and 1 decisions: Σ KL / episodes exactly
    kl, decisions = t(0.1, 0.2, 0.3, 1.0), torch.tensor([3, 3, 3, 1])
    assert kl_per_response(kl, decisions) == pytest.approx((0.6 + 1.0) / 2)


def test_adaptive_controller_moves_beta_toward_the_target() -> None:
    controller = KLController(config=KLConfig(kl_coef=0.1, kl_target=2.0, kl_horizon=100.0))
    controller.update(3.0, episodes=10)  # error +0.5, clipped to +0.2: β·(1 + 0.2·10/100)
    assert controller.value == pytest.approx(0.1 * 1.02)
    controller.update(1.8, episodes=10)  # error −0.1
    assert controller.value == pytest.approx(0.1 * 1.02 * 0.99)
    fixed = KLController(config=KLConfig(kl_coef=0.1))
    fixed.update(50.0, episodes=1000)
    assert fixed.value == 0.1
    # driven by a KL that responds to β, the controller settles where KL meets the target
    controller = KLController(config=KLConfig(kl_coef=0.01, kl_target=2.0, kl_horizon=10.0))
    for _ in range(2000):
        controller.update(0.2 / controller.value, episodes=1)  # KL ∝ 1/β: the target needs β = 0.1
    assert controller.value == pytest.approx(0.1, rel=0.02)


# --- PPO -------------------------------------------------------------------------------------------


def test_clipped_surrogate_takes_the_pessimistic_term() -> None:
    ratio = t(1.5, 0.5, 1.1, 0.5)
    advantages = t(1.0, 1.0, -2.0, -1.0)
    old_log_probs = torch.zeros(4, dtype=torch.float64)
    loss, clip_fraction = clipped_surrogate_loss(ratio.log(), old_log_probs, advantages, clip_range=0.2)
    # min(ρA, clip(ρ)A): 1.2 (clipped gain), 0.5, -2.2, -0.8 (clipped loss is kept)
    assert loss.item() == pytest.approx(-(1.2 + 0.5 - 2.2 - 0.8) / 4)
    assert clip_fraction.item() == pytest.approx(3 / 4)


def test_clipped_value_loss_takes_the_larger_error() -> None:
    loss = clipped_value_loss(t(8.0, 0.5), t(0.0, 0.0), t(10.0, 1.0), clip_range=5.0)
    # row 0: max((8-10)², (5-10)²) = 25; row 1: inside the clip, 0.25
    assert loss.item() == pytest.approx(0.5 * (25.0 + 0.25) / 2)


def test_gae_by_hand_over_two_episodes() -> None:
    rewards, values, done = t(0, 0, 1, 0, 2), t(0.5, 0.4, 0.3, 1.0, 0.0), t(0, 0, 1, 0, 1)
    advantages, returns = gae(rewards, values, done, gamma=0.9, lam=0.8)
    d0, d1, d2 = 0.9 * 0.4 - 0.5, 0.9 * 0.3 - 0.4, 1.0 - 0.3
    d3, d4 = 0.9 * 0.0 - 1.0, 2.0
    a2 = d2
    a1 = d1 + 0.72 * a2
    a0 = d0 + 0.72 * a1
    expected = [a0, a1, a2, d3 + 0.72 * d4, d4]
    assert advantages.tolist() == pytest.approx(expected)
    assert returns.tolist() == pytest.approx([a + v for a, v in zip(expected, values.tolist())])


def test_reverse_discounted_sum_matches_the_recurrence() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(37, generator=gen, dtype=torch.float64)
    discount = torch.rand(37, generator=gen, dtype=torch.float64) * (torch.rand(37, generator=gen) > 0.2)
    expected, running = [], 0.0
    for i in reversed(range(37)):
        running = x[i].item() + discount[i].item() * running
        expected.append(running)
    assert reverse_discounted_sum(x, discount).tolist() == pytest.approx(expected[::-1])


def test_lagrangian_advantages() -> None:
    assert lagrangian_advantages(t(1.0, -1.0), t(0.5, 0.0), lam=2.0).tolist() == pytest.approx([0.0, -1 / 3])


# --- episodes ----------------------------------------------------------------------------------------


def rollout_rows(episode_id: list[int], done: list[int], *, step: list[int] | None = None) -> Transitions:
    n, hidden = len(episode_id), 2
    if step is None:
        starts = [True] + [bool(d) for d in done[:-1]]
        step = []
        for start in starts:
            step.append(0 if start else step[-1] + 1)
    return Transitions(
        state=torch.zeros(n, hidden), action=torch.zeros(n, dtype=torch.long),
        reward=torch.arange(n, dtype=torch.float32),
        cost=torch.zeros(n), next_state=torch.zeros(n, hidden), done=torch.tensor(done, dtype=torch.float32),
        logp=torch.zeros(n), episode_id=torch.tensor(episode_id), step=torch.tensor(step),
        prompt_id=torch.zeros(n, dtype=torch.long), policy_version=torch.zeros(n, dtype=torch.long),
        base_logit=torch.zeros(n), next_base_logit=torch.zeros(n), episode_decisions=torch.ones(n, dtype=torch.long),
    )


def test_episodes_segment_rows_and_sum_per_episode() -> None:
    episodes = Episodes.of(rollout_rows([4, 4, 4, 9, 2, 2], [0, 0, 1, 1, 0, 1]), learner="test")
    assert episodes.count == 3 and episodes.index.tolist() == [0, 0, 0, 1, 2, 2]
    assert episodes.last_row.tolist() == [2, 3, 5]
    assert episodes.sum(torch.arange(6.0)).tolist() == [3.0, 3.0, 9.0]


@pytest.mark.parametrize(
    ("episode_id", "done", "step", "message"),
    [([1, 1, 2], [0, 0, 1], None, "row 2 .*breaks the episode chain"),
     ([1, 1, 2], [0, 1, 0], None, "last row is not done"),
     ([1, 1, 1], [0, 0, 1], [0, 2, 1], "row 1 .*step 2 after step 0"),
     ([1, 2, 2], [1, 0, 1], [5, 3, 4], None)],
)
def test_episodes_refuse_partial_interleaved_or_shuffled_rollouts(
    episode_id: list[int], done: list[int], step: list[int] | None, message: str | None
) -> None:
    batch = rollout_rows(episode_id, done, step=step)
    if message is None:
        assert Episodes.of(batch, learner="test").count == 2
        return
    with pytest.raises(ValueError, match=message):
        Episodes.of(batch, learner="test")


# --- Lagrange multiplier ----------------------------------------------------------------------------


def test_lambda_rises_when_cost_exceeds_threshold_and_falls_otherwise() -> None:
    config = LagrangeConfig(threshold=0.1, lambda_init=1.0, lambda_lr=0.1, lambda_max=None)
    rising = LagrangeMultiplier(config=config)
    loss = rising.step(0.5)
    assert loss == pytest.approx(-(0.5 - 0.1) * 1.0)
    assert rising.value == pytest.approx(math.exp(0.1 * 0.4 * 1.0))  # log λ += lr·(J_c − d)·λ
    falling = LagrangeMultiplier(config=config)
    falling.step(0.0)
    assert falling.value == pytest.approx(math.exp(-0.1 * 0.1))


def test_lambda_is_clamped_and_waits_for_the_delay() -> None:
    clamped = LagrangeMultiplier(config=LagrangeConfig(lambda_lr=10.0, lambda_max=1.5))
    clamped.step(10.0)
    assert clamped.value == pytest.approx(1.5)
    delayed = LagrangeMultiplier(config=LagrangeConfig(lambda_update_delay_steps=2))
    assert delayed.step(1.0) == 0.0 and delayed.step(1.0) == 0.0 and delayed.value == 1.0
    delayed.step(1.0)
    assert delayed.value > 1.0


def test_cost_window_keeps_the_most_recent_costs() -> None:
    window = CostWindow(size=3)
    window.extend(torch.tensor([1.0, 2.0]))
    window.extend(torch.tensor([3.0, 4.0]))
    assert window.costs.tolist() == [2.0, 3.0, 4.0]


# --- HC-RLHF -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "m", "delta"), [(10, 1000, 0.1), (256, 1000, 0.05), (2, 30, 0.2)])
def test_kappa_matches_scipy_student_t(n: int, m: int, delta: float) -> None:
    expected = student_t.ppf(1 - delta, n - 1) / math.sqrt(n) + 2.0 * student_t.ppf(1 - delta, m - 1) / math.sqrt(m)
    assert kappa(n=n, m=m, fail_prob=delta, c1=1.0, c2=2.0) == pytest.approx(expected)
    assert kappa(n=n, m=m, fail_prob=delta, c1=0.0, c2=0.0) == 0.0


def test_upper_bound_is_mean_plus_kappa_bessel_std() -> None:
    costs = torch.tensor([1.0, 2.0, 3.0, 4.0])
    std = math.sqrt(sum((c - 2.5) ** 2 for c in (1, 2, 3, 4)) / 3)
    assert upper_bound(costs, kappa=0.5) == pytest.approx(2.5 + 0.5 * std)
    assert upper_bound(costs, kappa=0.0) == pytest.approx(2.5)
    assert upper_bound(torch.tensor([0.7]), kappa=3.0) == pytest.approx(0.7)


def test_cost_surrogate_by_hand_and_without_spread() -> None:
    costs = t(1.0, 3.0)
    # c + κ(c² − 2cμ)/(2σ) with μ = 2, σ = 0.5, κ = 0.2
    assert cost_surrogate(costs, mean=2.0, std=0.5, kappa=0.2).tolist() == pytest.approx([0.4, 2.4])
    assert torch.equal(cost_surrogate(costs, mean=2.0, std=0.0, kappa=0.2), costs)
    assert torch.equal(cost_surrogate(costs, mean=2.0, std=0.5, kappa=0.0), costs)


def test_rloo_loss_by_hand() -> None:
    net_returns = t(1.0, 3.0, 2.0, 2.0, 4.0)
    log_likelihoods = t(-1.0, -2.0, -3.0, -4.0, -0.5)
    prompts = torch.tensor([7, 7, 9, 9, 5])
    # prompt 7: mean 2, k = 2 → weights −1, +1; prompt 9: weights 0; prompt 5 alone: G − b = 4 − 1
    expected = -((-1.0) * (-1.0) + 1.0 * (-2.0) + 3.0 * (-0.5)) / 3
    assert rloo_loss(net_returns, log_likelihoods, prompts, baseline=1.0).item() == pytest.approx(expected)


def test_rloo_weight_is_the_leave_one_out_baseline() -> None:
    gen = torch.Generator().manual_seed(1)
    net_returns = torch.randn(4, generator=gen, dtype=torch.float64)
    log_likelihoods = torch.randn(4, dtype=torch.float64, generator=gen).requires_grad_()
    rloo_loss(net_returns, log_likelihoods, torch.zeros(4, dtype=torch.long), baseline=0.0).backward()
    leave_one_out = torch.stack([net_returns[i] - (net_returns.sum() - net_returns[i]) / 3 for i in range(4)])
    assert log_likelihoods.grad.tolist() == pytest.approx((-leave_one_out / 4).tolist())
