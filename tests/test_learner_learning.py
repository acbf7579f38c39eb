"""Each learner learns the synthetic accept/reject problem (synthetic_accept_reject.py) to ≥ 90% of its
optimal return within a bounded number of updates; the Lagrangian learners also end within the cost
threshold although COSTLY tokens pay more. Small networks, CPU, a few seconds each."""
from __future__ import annotations

import pytest
import torch
from synthetic_accept_reject import AcceptRejectProblem, concat, rows

from tokenalign.learners import Learner, config_class, make_learner

HIDDEN = 16
TEMPTING = AcceptRejectProblem(hidden_size=HIDDEN, p_costly=0.25, costly_bonus=1.0)
THRESHOLD = 0.05


def train_on_policy(
    name: str, config: dict, problem: AcceptRejectProblem, *, updates: int, prompts: int, samples_per_prompt: int = 1
) -> tuple[Learner, dict[str, float]]:
    learner = make_learner(name, state_size=problem.hidden_size, config=config_class(name)(**config))
    gen = torch.Generator().manual_seed(1)
    for u in range(updates):
        rollout = problem.rollout(
            learner.policy, problem.sample_prompts(prompts, generator=gen), samples_per_prompt=samples_per_prompt,
            generator=gen, first_episode_id=u * prompts * samples_per_prompt,
        )
        metrics = learner.update(rollout.transitions)
    return learner, metrics


def test_the_problem_is_not_solved_by_an_untrained_agent() -> None:
    learner = make_learner("ppo", state_size=HIDDEN, config=config_class("ppo")(widths=(32, 32)))
    plain = AcceptRejectProblem(hidden_size=HIDDEN)
    assert plain.evaluate(learner.policy, num_episodes=1000, seed=7)[0] < 0.5 * plain.optimal_return()
    assert plain.evaluate(learner.policy, num_episodes=1000, seed=7, deterministic=True)[0] < 0.5


def test_ppo_reaches_90_percent_of_the_optimal_return() -> None:
    problem = AcceptRejectProblem(hidden_size=HIDDEN)
    learner, _ = train_on_policy(
        "ppo", {"widths": (32, 32), "actor_lr": 1e-3, "critic_lr": 1e-3}, problem, updates=30, prompts=32
    )
    mean_return, _ = problem.evaluate(learner.policy, num_episodes=1000, seed=7)
    assert mean_return >= 0.9 * problem.optimal_return()


def test_sac_reaches_90_percent_of_the_optimal_return_greedily() -> None:
    # MARA evaluates the greedy action; SAC's stochastic policy keeps β·KL to π_ref in its objective on purpose.
    problem = AcceptRejectProblem(hidden_size=HIDDEN)
    config = {"widths": (32, 32), "batch_size": 128, "update_time": 1, "tau": 0.1,
              "actor_lr": 1e-3, "critic_lr": 1e-3, "kl_coef": 0.01}
    learner = make_learner("sac", state_size=HIDDEN, config=config_class("sac")(**config))
    gen = torch.Generator().manual_seed(1)
    episodes_per_round, replay = 8, []
    for r in range(45):
        rollout = problem.rollout(
            learner.policy, problem.sample_prompts(episodes_per_round, generator=gen), generator=gen,
            first_episode_id=r * episodes_per_round,
        )
        replay.append(rollout.transitions)
        buffer = concat(replay)
        contract = learner.contract(learner.config)
        if len(buffer) < contract.batch_size:
            continue
        for _ in range(contract.updates_per_episode * episodes_per_round):
            learner.update(rows(buffer, torch.randint(len(buffer), (contract.batch_size,), generator=gen)))
    mean_return, _ = problem.evaluate(learner.policy, num_episodes=1000, seed=7, deterministic=True)
    assert mean_return >= 0.9 * problem.optimal_return()


def test_unconstrained_ppo_takes_the_costly_tokens() -> None:
    learner, _ = train_on_policy(
        "ppo", {"widths": (32, 32), "actor_lr": 1e-3, "critic_lr": 1e-3}, TEMPTING, updates=30, prompts=32
    )
    assert TEMPTING.evaluate(learner.policy, num_episodes=1000, seed=7)[1] > 3 * THRESHOLD


def test_ppo_lagrangian_meets_the_cost_threshold_near_the_constrained_optimum() -> None:
    config = {"widths": (32, 32), "actor_lr": 1e-3, "critic_lr": 1e-3, "threshold": THRESHOLD}
    learner, metrics = train_on_policy("ppo_lagrangian", config, TEMPTING, updates=70, prompts=32)
    mean_return, mean_cost = TEMPTING.evaluate(learner.policy, num_episodes=1000, seed=7)
    assert metrics["lambda"] > TEMPTING.costly_bonus  # λ had to outgrow the bonus from λ₀ = 1
    assert mean_cost <= THRESHOLD
    assert mean_return >= 0.9 * TEMPTING.optimal_return(threshold=THRESHOLD)


@pytest.mark.parametrize("confidence", [1.0, 0.0], ids=["high_confidence", "plain_lagrangian"])
def test_rloo_lagrangian_meets_the_cost_threshold_near_the_constrained_optimum(confidence: float) -> None:
    config = {"widths": (32, 32), "actor_lr": 1e-3, "threshold": THRESHOLD, "lambda_lr": 0.1,
              "students_c1": confidence, "students_c2": confidence}
    learner, metrics = train_on_policy(
        "rloo_lagrangian", config, TEMPTING, updates=160, prompts=32, samples_per_prompt=2
    )
    mean_return, mean_cost = TEMPTING.evaluate(learner.policy, num_episodes=1000, seed=7)
    assert metrics["lambda"] > TEMPTING.costly_bonus
    assert metrics["cost_bound"] <= THRESHOLD
    assert mean_cost <= THRESHOLD
    assert mean_return >= 0.9 * TEMPTING.optimal_return(threshold=THRESHOLD)
