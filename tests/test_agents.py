"""The accept/reject policy, the twin Q critic and the value head."""
from __future__ import annotations

import pytest
import torch

from tokenalign.agents import ACCEPT, AcceptRejectPolicy, TwinQCritic, ValueHead


@pytest.fixture()
def policy() -> AcceptRejectPolicy:
    torch.manual_seed(0)
    return AcceptRejectPolicy(state_size=12, widths=(16, 8))


def test_policy_is_mara_shaped_mlp_with_defaults() -> None:
    policy = AcceptRejectPolicy(state_size=64)
    layers = [policy.norm, *policy.body]
    assert [type(m).__name__ for m in layers] == ["ObservationNorm", "Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert isinstance(policy.norm, torch.nn.LayerNorm)  # old checkpoints keep their parameter names
    assert [(m.in_features, m.out_features) for m in policy.body if isinstance(m, torch.nn.Linear)] == [
        (65, 1024), (1024, 256), (256, 1)  # [hidden ; π_ref accept logit] → the residual of the accept logit
    ]


def test_an_untrained_agent_is_pi_ref_and_training_moves_it_by_a_residual() -> None:
    policy = AcceptRejectPolicy(state_size=12, widths=(16, 8))
    obs = torch.randn(50, 13) * 3
    assert torch.equal(policy.accept_logit(obs), obs[:, -1])  # l = l_ref + 0
    with torch.no_grad():
        policy.body[-1].bias.fill_(0.5)
    torch.testing.assert_close(policy.accept_logit(obs), obs[:, -1] + 0.5)
    torch.testing.assert_close(policy.residual(obs), torch.full((50,), 0.5))


def test_forward_accept_logit_and_act_agree(policy: AcceptRejectPolicy) -> None:
    state = torch.randn(5, 3, 13)
    logits = policy(state)
    assert logits.shape == (5, 3, 2)
    p_accept = torch.sigmoid(policy.accept_logit(state))
    assert torch.allclose(p_accept, torch.softmax(logits, -1)[..., ACCEPT])
    action, logp = policy.act(state, deterministic=True)
    assert action.dtype == torch.int64 and logp.dtype == torch.float32 and action.shape == (5, 3)
    assert torch.equal(action, (p_accept > 0.5).long())
    assert torch.allclose(logp, torch.log_softmax(logits, -1).gather(-1, action.unsqueeze(-1)).squeeze(-1))


def test_sampled_actions_follow_the_accept_probability_and_generator(policy: AcceptRejectPolicy) -> None:
    state = torch.randn(1, 13).expand(20000, 13)
    action, _ = policy.act(state, generator=torch.Generator().manual_seed(3))
    again, _ = policy.act(state, generator=torch.Generator().manual_seed(3))
    assert torch.equal(action, again)
    assert abs(action.float().mean().item() - torch.sigmoid(policy.accept_logit(state[:1])).item()) < 0.02


def test_half_precision_states_are_accepted(policy: AcceptRejectPolicy) -> None:
    state = torch.randn(4, 13)
    assert torch.allclose(policy.accept_logit(state.half()), policy.accept_logit(state.half().float()))


def test_policy_state_round_trip_is_an_independent_copy(policy: AcceptRejectPolicy) -> None:
    state = policy.policy_state()
    assert state["state_size"] == 12 and state["widths"] == [16, 8]
    assert all(t.device.type == "cpu" for t in state["state_dict"].values())
    clone = AcceptRejectPolicy.from_policy_state(state, state_size=12)
    x = torch.randn(7, 13)
    assert torch.equal(clone(x), policy(x))
    with torch.no_grad():
        policy.body[-1].bias.add_(1.0)
    assert not torch.equal(clone(x), policy(x))


def test_loading_an_agent_of_another_lm_is_a_clear_error(policy: AcceptRejectPolicy) -> None:
    with pytest.raises(ValueError, match=r"agent input size 12 .* candidate states of size 4096.*trained on another LM"):
        AcceptRejectPolicy.from_policy_state(policy.policy_state(), state_size=4096)
    with pytest.raises(ValueError, match="missing"):
        AcceptRejectPolicy.from_policy_state({"state_dict": {}}, state_size=12)


@pytest.mark.parametrize("widths", [(), (0, 4), (4.5,)])
def test_bad_widths_are_rejected(widths: tuple) -> None:
    with pytest.raises(ValueError, match="widths"):
        AcceptRejectPolicy(state_size=8, widths=widths)


def test_twin_critic_heads_are_independent_over_one_layer_norm() -> None:
    critic = TwinQCritic(state_size=12, widths=(16, 8))
    q1, q2 = critic(torch.randn(6, 13))
    assert q1.shape == q2.shape == (6, 2)
    assert not torch.equal(q1, q2)
    assert sum(isinstance(m, torch.nn.LayerNorm) for m in critic.modules()) == 1


def test_value_head_gives_one_value_per_state() -> None:
    assert ValueHead(state_size=12, widths=(8,))(torch.randn(3, 5, 13)).shape == (3, 5)
