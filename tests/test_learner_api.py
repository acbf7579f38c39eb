"""The Learner API: registry, policy hand-off to actors, exact resume, and clear errors on bad input."""
from __future__ import annotations

import copy
import io
from dataclasses import dataclass

import pytest
import torch
from synthetic_accept_reject import AcceptRejectProblem, rows

from tokenalign.agents import AcceptRejectPolicy
from tokenalign.buffers.batches import Transitions
from tokenalign.config import load_config
from tokenalign.core.parsing import ConfigError
from tokenalign.learners import Learner, config_class, learner_class, learner_names, make_learner, register, registry
from tokenalign.learners.base import OFFLINE_MODES, LearnerContract
from tokenalign.learners.kl import KLConfig

HIDDEN = 8
SMALL = {
    "sac": {"widths": (16, 8), "batch_size": 32, "update_time": 2},
    "ppo": {"widths": (16, 8), "num_minibatches": 3, "update_epochs": 2},
    "ppo_lagrangian": {"widths": (16, 8), "num_minibatches": 3, "update_epochs": 2, "threshold": 0.1},
    "rloo_lagrangian": {"widths": (16, 8), "threshold": 0.1},
}


def small(name: str, **changes):
    """Learner `name`'s config at the SMALL sizes, with `changes`."""
    return config_class(name)(**{**SMALL[name], **changes})


def rollouts(count: int, *, seed: int = 0, p_costly: float = 0.3) -> list[Transitions]:
    """`count` rollouts of 6 prompts × 2 episodes each from a fixed random agent."""
    problem = AcceptRejectProblem(hidden_size=HIDDEN, p_costly=p_costly)
    gen = torch.Generator().manual_seed(seed)
    agent = AcceptRejectPolicy(state_size=HIDDEN, widths=(4,))
    return [
        problem.rollout(agent, problem.sample_prompts(6, generator=gen), samples_per_prompt=2, generator=gen,
                        first_episode_id=100 * i).transitions
        for i in range(count)
    ]


def parameters(learner: Learner) -> list[torch.Tensor]:
    return [p.detach().clone() for net in learner.networks().values() for p in net.state_dict().values()]


def test_registry_names_modes_and_config_overrides() -> None:
    assert set(learner_names()) >= {"sac", "ppo", "ppo_lagrangian", "rloo_lagrangian"}
    modes = {name: learner_class(name).data_mode for name in SMALL}
    assert all(make_learner(name, state_size=HIDDEN, config=small(name)).data_mode == modes[name] for name in SMALL)
    assert config_class("sac")().gamma == 0.99
    assert modes == {"sac": "replay", "ppo": "on_policy", "ppo_lagrangian": "on_policy", "rloo_lagrangian": "on_policy"}
    sac = make_learner("sac", state_size=HIDDEN, config=config_class("sac")(widths=[16, 8], gamma=0.5))
    assert sac.config.widths == (16, 8) and sac.config.gamma == 0.5 and sac.contract(sac.config).batch_size == 1024


def test_unknown_learner_and_unknown_config_key_are_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown learner 'dqn' \(learner.name\); known learners: bon_distill, dpo, ppo, ppo_lagrangian, rloo_lagrangian"):
        make_learner("dqn", state_size=HIDDEN)
    with pytest.raises(ConfigError, match=r"unknown key 'learner.params.learning_rate'; learner.params has keys: batch_size"):
        load_config(None, ["learner.params.learning_rate=1e-3"])
    with pytest.raises(TypeError, match="learner 'ppo' takes a PPOConfig, got SACConfig"):
        make_learner("ppo", state_size=HIDDEN, config=config_class("sac")())
    with pytest.raises(ValueError, match="lambda_init must be > 0"):
        make_learner("ppo_lagrangian", state_size=HIDDEN, config=config_class("ppo_lagrangian")(lambda_init=0.0))


def test_a_new_algorithm_is_one_registered_class(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry.LEARNERS, "entries", dict(registry.LEARNERS.entries))

    @dataclass(frozen=True)
    class CountingConfig(KLConfig):
        widths: tuple[int, ...] = (4,)

    @register("counting_test", config=CountingConfig)
    class Counting(Learner):
        data_mode = "replay"

        @classmethod
        def contract(cls, config: CountingConfig) -> LearnerContract:
            return LearnerContract(data_mode="replay", gamma=0.9, batch_size=8)

        def __init__(self, *, state_size: int, config: CountingConfig, device: str = "cpu", preference_dim: int = 0,
                     seed: int = 0) -> None:
            super().__init__(state_size=state_size, config=config, device=device, preference_dim=preference_dim,
                             seed=seed)
            self.policy = AcceptRejectPolicy(state_size=state_size, widths=config.widths)

        def update(self, batch: Transitions) -> dict[str, float]:
            self.num_updates += 1
            return {"rows": float(len(self.check_batch(batch)))}

        def networks(self) -> dict[str, torch.nn.Module]:
            return {"policy": self.policy}

        def optimizers(self) -> dict[str, torch.optim.Optimizer]:
            return {}

    learner = make_learner("counting_test", state_size=HIDDEN, config=config_class("counting_test")(widths=(3,)))
    assert isinstance(learner, Counting) and learner.name == "counting_test" and learner.config.widths == (3,)
    batch = rollouts(1)[0]
    assert learner.update(batch) == {"rows": float(len(batch))}
    assert learner.state_dict()["num_updates"] == 1 and "counting_test" in learner_names()
    with pytest.raises(ValueError, match="already registered"):
        register("counting_test", config=CountingConfig)(Counting)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_policy_state_is_what_actors_load(name: str) -> None:
    learner = make_learner(name, state_size=HIDDEN, config=small(name))
    state = learner.policy_state()
    assert set(state) == {"parameterisation", "state_size", "preference_dim", "widths", "state_dict"}
    assert state["widths"] == [16, 8]
    actor_copy = AcceptRejectPolicy.from_policy_state(state, state_size=HIDDEN)
    x = torch.randn(5, HIDDEN + 1)
    assert torch.equal(actor_copy(x), learner.policy(x))
    # an untrained agent IS π_ref: its accept logit is the observation's π_ref logit, exactly
    assert torch.equal(actor_copy.accept_logit(x), x[:, -1])
    with pytest.raises(ValueError, match="trained on another LM"):
        AcceptRejectPolicy.from_policy_state(state, state_size=HIDDEN * 2)
    old = {k: v for k, v in state.items() if k != "parameterisation"}
    with pytest.raises(ValueError, match="saved by an older tokenalign.*train it again"):
        AcceptRejectPolicy.from_policy_state(old, state_size=HIDDEN)
    checkpoint = {k: v for k, v in learner.state_dict().items() if k != "parameterisation"}
    with pytest.raises(ValueError, match="saved by an older tokenalign"):
        make_learner(name, state_size=HIDDEN, config=small(name)).load_state_dict(checkpoint)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_state_dict_round_trip_resumes_bit_identically(name: str) -> None:
    batches = rollouts(4)
    learner = make_learner(name, state_size=HIDDEN, config=small(name))
    for batch in batches[:2]:
        learner.update(batch)
    buffer = io.BytesIO()
    torch.save(learner.state_dict(), buffer)
    expected = [learner.update(batch) for batch in batches[2:]]

    resumed = make_learner(name, state_size=HIDDEN, config=small(name), seed=99)
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert [resumed.update(batch) for batch in batches[2:]] == expected
    assert all(torch.equal(a, b) for a, b in zip(parameters(resumed), parameters(learner)))
    assert resumed.num_updates == learner.num_updates == 4
    assert torch.equal(resumed.generator.get_state(), learner.generator.get_state())


def test_load_state_dict_refuses_another_learner_lm_or_shape() -> None:
    state = make_learner("ppo", state_size=HIDDEN, config=small("ppo")).state_dict()
    with pytest.raises(ValueError, match="checkpoint holds learner 'ppo', this is 'sac'"):
        make_learner("sac", state_size=HIDDEN, config=small("sac")).load_state_dict(state)
    with pytest.raises(ValueError, match="trained on another LM"):
        make_learner("ppo", state_size=HIDDEN + 1, config=small("ppo")).load_state_dict(state)
    with pytest.raises(ValueError, match=r"widths=\(16, 8\).*set the same widths"):
        make_learner("ppo", state_size=HIDDEN, config=config_class("ppo")(widths=(4,))).load_state_dict(state)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_bad_batches_are_refused_before_anything_changes(name: str) -> None:
    learner = make_learner(name, state_size=HIDDEN, config=small(name))
    before = copy.deepcopy(learner.state_dict())
    other_lm = rollouts(1)[0]
    other_lm.state = torch.zeros(len(other_lm), HIDDEN + 4)
    with pytest.raises(ValueError, match=f"states have size {HIDDEN + 4}, the agent's input size is {HIDDEN}"):
        learner.update(other_lm)
    if learner.data_mode == "on_policy":
        truncated = rollouts(1)[0]
        truncated = rows(truncated, torch.arange(len(truncated) - 1))
        with pytest.raises(ValueError, match="last row is not done"):
            learner.update(truncated)
    after = learner.state_dict()
    assert after["num_updates"] == 0
    assert all(torch.equal(a, b) for a, b in zip(parameters(learner), [
        p for net in before["networks"].values() for p in net.values()
    ]))
    assert repr(after["extra"]) == repr(before["extra"])


def test_sac_moves_its_targets_by_tau_once_per_update_time() -> None:
    sac = make_learner("sac", state_size=HIDDEN, config=small("sac", update_time=3, tau=0.25))
    batch = rollouts(1)[0]
    target_before = [p.clone() for p in sac.critic_target.parameters()]
    sac.update(batch)
    sac.update(batch)
    assert all(torch.equal(a, b) for a, b in zip(sac.critic_target.parameters(), target_before))
    sac.update(batch)
    for target, before, online in zip(sac.critic_target.parameters(), target_before, sac.critic.parameters()):
        assert torch.allclose(target, 0.75 * before + 0.25 * online)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_fixed_beta_stays_put_and_adaptive_beta_follows_the_measured_kl(name: str) -> None:
    batch = rollouts(1)[0]
    fixed = make_learner(name, state_size=HIDDEN, config=small(name, kl_coef=0.2))
    assert fixed.update(batch)["kl_coef"] == pytest.approx(0.2) and fixed.kl.value == pytest.approx(0.2)
    # The untrained agent is π_ref (KL 0), far below the target: β falls, and is checkpointed.
    adaptive = make_learner(name, state_size=HIDDEN,
                            config=small(name, kl_coef=0.2, kl_target=5.0, kl_horizon=10.0))
    assert adaptive.update(batch)["kl_per_response"] == pytest.approx(0.0, abs=1e-6)
    assert adaptive.kl.value < 0.2
    restored = make_learner(name, state_size=HIDDEN, config=small(name, kl_target=5.0, kl_horizon=10.0))
    restored.load_state_dict(adaptive.state_dict())
    assert restored.kl.value == adaptive.kl.value


@pytest.mark.parametrize("name", ["ppo_lagrangian", "rloo_lagrangian"])
def test_lagrangian_learners_raise_lambda_on_costly_rollouts_and_lower_it_on_safe_ones(name: str) -> None:
    costly = make_learner(name, state_size=HIDDEN, config=small(name))
    costly_batch = rollouts(1, p_costly=0.7)[0]
    costly_batch.cost = costly_batch.done * 1.0
    assert costly.update(costly_batch)["lambda"] > 1.0
    safe = make_learner(name, state_size=HIDDEN, config=small(name))
    safe_batch = rollouts(1)[0]
    safe_batch.cost = torch.zeros_like(safe_batch.cost)
    metrics = safe.update(safe_batch)
    assert metrics["lambda"] < 1.0 and metrics.get("cost_success", 1.0) == 1.0


EXPECTED_METRICS = {
    "sac": {"critic_loss", "actor_loss", "entropy", "accept_rate", "reward", "cost", "actor_grad_norm",
            "critic_grad_norm", "kl_coef", "kl_per_decision", "kl_per_response"},
    "ppo": {"policy_loss", "reward_value_loss", "entropy", "approx_kl", "clip_fraction", "accept_rate", "reward",
            "cost", "actor_grad_norm", "reward_critic_grad_norm", "kl_coef", "kl_per_response", "episode_kl_reward"},
    "ppo_lagrangian": {"policy_loss", "reward_value_loss", "cost_value_loss", "lambda", "approx_kl", "entropy",
                       "cost_critic_grad_norm", "mean_episode_cost"},
    "rloo_lagrangian": {"actor_loss", "entropy", "approx_kl", "lambda", "cost_bound", "kappa", "cost_success",
                        "accept_rate", "episode_reward", "episode_cost", "actor_grad_norm", "kl_coef", "kl_per_response",
                        "episode_kl_penalty"},
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_update_reports_finite_metrics(name: str) -> None:
    metrics = make_learner(name, state_size=HIDDEN, config=small(name)).update(rollouts(1)[0])
    assert EXPECTED_METRICS[name] <= set(metrics)
    assert all(isinstance(v, float) and torch.isfinite(torch.tensor(v)) for v in metrics.values())


def test_float16_states_from_the_buffer_train_every_learner_after_to() -> None:
    """The buffer hands states over as stored (float16, the default); Transitions.to makes them float32 on device."""
    # dpo, bon_distill: tests/test_dpo.py, tests/test_distillation.py; value_guided learns from candidate rows
    # (tests/test_value_learner.py)
    for name in [n for n in learner_names() if learner_class(n).data_mode not in OFFLINE_MODES and n != "value_guided"]:
        batch = rollouts(1)[0]
        half = Transitions(**{**vars(batch), "state": batch.state.half(), "next_state": batch.next_state.half()})
        learner = make_learner(name, state_size=batch.state.shape[1], config=config_class(name)(widths=(8, 4)))
        metrics = learner.update(half.to("cpu"))
        assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
