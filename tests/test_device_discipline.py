"""Device discipline, checked on the CPU: every tensor of a rollout, an evaluation and a learner step has an
explicit device. Torch's default device is set to `meta` meanwhile, so a tensor created without a device
lands on meta and the first operation mixing it with the real (CPU) tensors fails, as it would mix CPU
and CUDA tensors on a GPU machine."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from candidate_rows import candidate_batch
from synthetic_accept_reject import AcceptRejectProblem

from tokenalign.agents import AcceptRejectPolicy
from tokenalign.envs.engine import DecodingEngine, EngineConfig
from tokenalign.envs.host_syncs import HostSyncCounter
from tokenalign.envs.rollout import generate_episodes
from tokenalign.envs.task import DecodingTask
from tokenalign.eval.evaluate import MODES, evaluate
from tokenalign.learners import config_class, learner_class, learner_names, make_learner
from tokenalign.learners.base import OFFLINE_MODES
from tokenalign.learners.offline_batches import Responses, SampleSets
from tokenalign.rewards.shaping import ShapingConfig


@contextlib.contextmanager
def no_implicit_device():
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


def test_the_guard_catches_a_tensor_created_without_a_device():
    real = torch.ones(3, device="cpu")
    with no_implicit_device(), pytest.raises((RuntimeError, NotImplementedError)):
        (real + torch.arange(3)).tolist()


@pytest.mark.parametrize("block", [0, 3])
def test_a_rollout_creates_every_tensor_on_its_device(tiny_lm, block):
    model, tokenizer = tiny_lm
    engine = DecodingEngine(model=model, tokenizer=tokenizer, dense_rows=block == 3,
                            config=EngineConfig(max_new_tokens=8, candidate_block=block))
    policy = AcceptRejectPolicy(state_size=engine.state_size, preference_dim=2)
    shaping = ShapingConfig(token_reward="mara_kl_div") if block == 0 else None
    generator = torch.Generator().manual_seed(0)
    with no_implicit_device():
        episodes = generate_episodes(engine, policy, ["Hello there", "A man"], generator=generator, shaping=shaping,
                                     preference=np.array([[0.5, 0.5], [1.0, 0.0]], dtype=np.float32),
                                     keep_token_states=True)
    assert all(e.num_decisions + len(e.response_tokens) > 0 and e.token_states is not None for e in episodes)


def test_every_evaluation_mode_creates_every_tensor_on_its_device(tiny_lm):
    task = DecodingTask.build(model=tiny_lm, prompts=["Hello there", "A man"], scorers=["vader", "profanity,role=cost"],
                              max_new_tokens=6, candidate_block=0)
    policy = AcceptRejectPolicy(state_size=task.state_size)
    with no_implicit_device():
        summaries = {mode: evaluate(task, mode, task.prompts, policy=policy, n=2, seed=0, batch_size=2,
                                    beta=0.5).summary for mode in MODES}
    assert all(s["n"] == 2 for s in summaries.values())


def rollout_batch():
    problem = AcceptRejectProblem(hidden_size=8, p_costly=0.3)
    gen = torch.Generator().manual_seed(0)
    agent = AcceptRejectPolicy(state_size=8, widths=(4,))
    return problem.rollout(agent, problem.sample_prompts(6, generator=gen), samples_per_prompt=2,
                           generator=gen).transitions


@pytest.mark.parametrize("name", [n for n in learner_names()
                                  if learner_class(n).data_mode not in OFFLINE_MODES and n != "value_guided"])
def test_a_learner_step_creates_every_tensor_on_its_device(name):
    learner = make_learner(name, state_size=8, config=config_class(name)(widths=(8, 4)))
    batch = rollout_batch()
    with no_implicit_device():
        metrics = learner.update(batch.to("cpu"))
    assert metrics and all(np.isfinite(v) for v in metrics.values())


@pytest.mark.parametrize("loss", ["bonbon", "jeffreys"])
def test_a_distillation_step_creates_every_tensor_on_its_device(loss):
    gen = torch.Generator().manual_seed(0)
    sets, per_set, decisions = 3, 4, 60
    responses = Responses(observation=torch.randn(decisions, 9, generator=gen),
                          action=torch.randint(2, (decisions,), generator=gen),
                          response=torch.arange(decisions) % (sets * per_set))
    batch = SampleSets(responses=responses, reward=torch.randn(sets, per_set, generator=gen))
    learner = make_learner("bon_distill", state_size=8, config=config_class("bon_distill")(widths=(8, 4), loss=loss))
    with no_implicit_device():
        metrics = learner.update(batch.to("cpu"))
    assert metrics and all(np.isfinite(v) for v in metrics.values())


@pytest.mark.parametrize("future_target", ["monte_carlo", "soft_bellman"])
def test_value_guided_labels_and_updates_with_every_tensor_on_its_device(tiny_lm, future_target):
    engine, _, decisions, objective = candidate_batch(tiny_lm, "vader", episodes=4, seed=0)
    learner = make_learner("value_guided", state_size=engine.state_size,
                           config=config_class("value_guided")(widths=(8,), future_target=future_target))
    with no_implicit_device():
        metrics = learner.update(learner.label(objective, decisions))
    assert metrics and all(np.isfinite(v) for v in metrics.values())


@pytest.mark.parametrize(("name", "bound"), [("sac", 1), ("ppo", 6), ("rloo_lagrangian", 16)])
def test_a_learner_reads_its_metrics_once_per_update(name, bound):
    """SAC, thousands of updates per run, reads the device once per update (all metrics in one transfer); an
    on-policy update reads a bounded number of times, however many minibatches and epochs it runs."""
    learner = make_learner(name, state_size=8, config=config_class(name)(widths=(8, 4)))
    batch = rollout_batch()
    learner.update(batch)
    with HostSyncCounter() as syncs:
        metrics = learner.update(batch)
    assert syncs.total <= bound, syncs.by_op
    assert all(isinstance(v, float) for v in metrics.values())
