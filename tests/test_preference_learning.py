"""A preference-conditioned agent learns a planted optimum that flips with w (RiC's conditioning must bind)."""
from __future__ import annotations

import pytest
import torch

from tokenalign.buffers.batches import Transitions
from tokenalign.learners import config_class, make_learner

HIDDEN = 64


def bandit_round(learner, generator: torch.Generator, n: int = 256) -> Transitions:
    """One-decision episodes: accepting pays +1 when w₁ > 0.5 and −1 otherwise; rejecting pays the opposite."""
    state = torch.randn(n, HIDDEN, generator=generator)
    base = torch.zeros(n)  # π_ref accepts with 1/2
    w1 = torch.randint(0, 11, (n,), generator=generator).float() / 10  # RiC's grid
    preference = torch.stack([w1, 1 - w1], 1)
    with torch.no_grad():
        action, logp = learner.policy.act(torch.cat([state, base[:, None], preference], -1), generator=generator)
    good = torch.where(w1 > 0.5, 1, 0)
    reward = torch.where(action == good, 1.0, -1.0)
    reward = torch.where(w1 == 0.5, 0.0, reward)
    ones = torch.ones(n)
    return Transitions(state=state, action=action, reward=reward, cost=torch.zeros(n), next_state=torch.zeros_like(state),
                       done=ones, logp=logp, episode_id=torch.arange(n), step=torch.zeros(n, dtype=torch.long),
                       prompt_id=torch.arange(n), policy_version=torch.zeros(n, dtype=torch.long), preference=preference,
                       base_logit=base, next_base_logit=base, episode_decisions=torch.ones(n, dtype=torch.long))


@pytest.mark.parametrize("name, updates, margin", [("ppo", 16, 0.1), ("rloo_lagrangian", 150, 0.2)])
def test_a_conditioned_agent_learns_an_optimum_that_flips_with_w(name, updates, margin):
    """With w fed as raw [0, 1] values beside the normalised state, PPO still accepted at ~0.6 for every w
    after 10 updates; with w scaled to the state's norm (agents/mlp.py) it separates them."""
    params = {"widths": (64, 32), "kl_coef": 0.01} | ({"episodes_per_update": 256} if name == "ppo" else {"threshold": 1.0})
    learner = make_learner(name, state_size=HIDDEN, config=config_class(name)(**params), preference_dim=2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(updates):
        learner.update(bandit_round(learner, generator))
    obs = torch.cat([torch.randn(500, HIDDEN, generator=generator), torch.zeros(500, 1)], -1)

    def accept(w1: float) -> float:
        return float(torch.sigmoid(learner.policy.accept_logit(torch.cat([obs, torch.tensor([w1, 1 - w1]).expand(500, 2)], -1))).mean())

    assert accept(1.0) > 1 - margin and accept(0.0) < margin


def test_a_conditioned_agent_decodes_with_the_weights_the_user_picks():
    from tokenalign.agents import AcceptRejectPolicy
    from tokenalign.envs.policies import conditioned

    torch.manual_seed(0)
    agent = AcceptRejectPolicy(state_size=HIDDEN, widths=(8,), preference_dim=2).eval()
    obs = torch.randn(5, HIDDEN + 1)
    fixed = conditioned(agent, [3.0, 1.0])  # rescaled onto the simplex, as the envs do
    torch.testing.assert_close(fixed.accept_logit(obs), agent.accept_logit(torch.cat([obs, torch.tensor([0.75, 0.25]).expand(5, 2)], -1)))
    with pytest.raises(ValueError, match="conditioned on 2 preference weights: pick them, e.g. --preference 0.5,0.5"):
        conditioned(agent, None)
    with pytest.raises(ValueError, match="must be 2 non-negative weights"):
        conditioned(agent, [1.0, -1.0])
    plain = AcceptRejectPolicy(state_size=HIDDEN, widths=(8,))
    with pytest.raises(ValueError, match="not preference-conditioned"):
        conditioned(plain, [0.5, 0.5])
