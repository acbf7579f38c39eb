"""Best-of-n distillation: its losses by hand, the sets it learns from, a learned preference for the best of sets it
never saw, and a run like any other."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from tokenalign.actors.sample_set_source import SampleSetSource
from tokenalign.data.prompts import load_prompts
from tokenalign.envs.task import DecodingTask
from tokenalign.learners import config_class, make_learner
from tokenalign.learners.bon_distill import best_of_n_weights, best_worst_gap, bonbon_loss, jeffreys_loss


def test_the_best_worst_gap_is_n_minus_one_times_the_harmonic_number():
    assert best_worst_gap(2) == pytest.approx(1.0)
    assert best_worst_gap(3) == pytest.approx(2 * 1.5)
    assert best_worst_gap(8) == pytest.approx(7 * (1 + 1 / 2 + 1 / 3 + 1 / 4 + 1 / 5 + 1 / 6 + 1 / 7))


def test_best_of_n_weights_by_hand_with_and_without_ties():
    # distinct: ranks 1..3 of 3 → (k/3)² − ((k−1)/3)²
    weights = best_of_n_weights(torch.tensor([[0.1, 0.5, 0.3]]), 2)
    assert weights[0].tolist() == pytest.approx([1 / 9, 5 / 9, 3 / 9])
    # two samples tied at the bottom share F̂(0.2)² − 0 = 4/9
    weights = best_of_n_weights(torch.tensor([[0.2, 0.7, 0.2]]), 2)
    assert weights[0].tolist() == pytest.approx([2 / 9, 5 / 9, 2 / 9])
    # best-of-n with replacement from the set, simulated, keeps each sample that often
    reward = torch.tensor([0.4, 0.1, 0.9, 0.4, 0.6])
    draws = torch.randint(5, (200_000, 3), generator=torch.Generator().manual_seed(0))
    top = reward[draws].max(dim=1).values
    kept_level = torch.stack([(top == r).float().mean() for r in reward])
    ties = torch.stack([(reward == r).sum() for r in reward]).float()
    assert torch.allclose(best_of_n_weights(reward.unsqueeze(0), 3)[0], kept_level / ties, atol=4e-3)


def test_bonbon_loss_by_hand():
    terms = bonbon_loss(torch.tensor([-3.0, -5.0]), torch.tensor([1.0, 4.0]), n=3, alpha=0.25)
    # SFT: mean −log π(y⁺) = 4; IPO: target (3−1)·H_2 = 3, mean((1−3)², (4−3)²) = 2.5
    assert terms["sft"].item() == pytest.approx(4.0)
    assert terms["ipo"].item() == pytest.approx(2.5)
    assert terms["loss"].item() == pytest.approx(0.25 * 4.0 + 0.75 * 2.5)


def test_jeffreys_loss_by_hand():
    reward = torch.tensor([[0.0, 1.0]])  # best-of-2 over the set keeps them with P = [1/4, 3/4]
    matched = jeffreys_loss(torch.tensor([-2.0]), torch.tensor([[0.0, math.log(3.0)]]), reward, n=2, alpha=0.3, lam=0.5)
    assert matched["forward_kl"].item() == pytest.approx(0.0, abs=1e-6)
    assert matched["backward_kl"].item() == pytest.approx(0.0, abs=1e-6)
    assert matched["loss"].item() == pytest.approx(0.3 * 2.0)
    base = jeffreys_loss(torch.tensor([-2.0]), torch.tensor([[0.0, 0.0]]), reward, n=2, alpha=0.0, lam=0.25)
    forward = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    backward = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert base["forward_kl"].item() == pytest.approx(forward, rel=1e-5)
    assert base["backward_kl"].item() == pytest.approx(backward, rel=1e-5)
    assert base["loss"].item() == pytest.approx(0.75 * forward + 0.25 * backward, rel=1e-5)


@pytest.fixture(scope="module")
def sets(tiny_lm):
    """Sets of 4 samples for 80 training prompts, scored by vader; the first 64 train, the last 16 are held out."""
    task = DecodingTask.build(model=tiny_lm, prompts=load_prompts("builtin:demo-train")[:80], scorers=["vader"],
                              max_new_tokens=8, candidate_state="context")
    return task, SampleSetSource(task=task, per_prompt=4, prompts=80, seed=0)


def test_sample_sets_are_the_engines_own_samples_scored_by_the_run_reward(sets):
    task, source = sets
    stats = source.stats()
    assert stats["prompts"] == 80 and stats["responses"] == 320 and source.reward.shape == (80, 4)
    assert stats["uncovered_token_share"] == 0.0  # sampled from the very candidates teacher forcing rebuilds
    assert stats["best_of_n_reward"] >= stats["base_reward"]
    batch = source.batch(torch.tensor([3, 0]))
    assert batch.reward.tolist() == source.reward[[3, 0]].tolist()
    assert batch.responses.response.max().item() == 7  # 2 prompts × 4 responses


@pytest.fixture(scope="module")
def planted(sets):
    """The same sets with a planted reward the agent can read off its states: fewer rejected candidates is better
    (a response of higher-ranked tokens)."""
    task, source = sets
    planted = copy.copy(source)
    everything = source.responses.gather(torch.arange(len(source.responses)))
    rejections = torch.zeros(len(source.responses)).index_add_(0, everything.response, (everything.action == 0).float())
    planted.reward = -rejections.view(source.reward.shape)
    return task, planted


@pytest.mark.parametrize("loss", ["bonbon", "jeffreys"])
def test_a_distilled_agent_prefers_the_best_of_sets_it_never_saw(planted, loss):
    task, source = planted
    learner = make_learner("bon_distill", state_size=task.state_size, seed=1,
                           config=config_class("bon_distill")(n=4, loss=loss, widths=(64,), lr=3e-3, batch_size=16))
    held_out = source.batch(torch.arange(64, 80))
    distinct = held_out.reward.max(dim=1).values > held_out.reward.min(dim=1).values

    def gap() -> torch.Tensor:
        with torch.no_grad():
            _, ratio = learner.sequence_log_probs(held_out.responses, 64)
        ratio = ratio.view(16, 4)
        rows = torch.arange(16)
        return (ratio[rows, held_out.reward.argmax(1)] - ratio[rows, held_out.reward.argmin(1)])[distinct]

    assert torch.all(gap() == 0)  # it starts as the base LM
    for _ in range(120):
        learner.update(source.batch(torch.randint(64, (16,), generator=learner.generator)))
    assert (gap() > 0).float().mean().item() >= 0.9 and gap().mean().item() > 1.0, (loss, gap())


def test_a_bon_distill_run_resumes_and_rl_starts_from_its_agent(ray_cluster, tmp_path):
    """A distillation run has the run layout, evaluates and resumes; learner.init_from: PPO's first rollouts decode
    with its agent (a base-LM start decodes with KL exactly 0: its residual is zero); an agent of another kind or
    shape is one ConfigError before any run directory."""
    from tokenalign.config import load_config
    from tokenalign.core.parsing import ConfigError
    from tokenalign.eval.agent_source import load_agent
    from tokenalign.run.trainer import Trainer

    short = ["run.checkpoint_every=4", "engine.max_new_tokens=8", f"run.runs_dir={tmp_path}"]
    trainer = Trainer.new_run(load_config(None, [
        "learner.name=bon_distill", "learner.params={n: 4, prompts: 24, batch_size: 8, widths: [64]}",
        "run.total_episodes=96", "run.eval_prompts=4", "run.name=distilled", *short]))
    summary = trainer.run()
    run_dir = trainer.run_dir
    assert set(summary) == {"agent", "base", "best_of_4"} and summary["agent"]["kl_per_response"]["mean"] >= 0
    training = json.loads((run_dir / "training.json").read_text())
    assert training["episodes"] == 96 and training["updates"] == 12  # 96 sets seen, 8 per update
    assert training["buffer"]["prompts"] == 24 and training["buffer"]["responses"] == 96
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all("learner/loss" in m and "learner/gap" in m for m in metrics)
    policy = load_agent(run_dir, state_size=2 * 256 + 2)
    assert any(p.abs().sum() > 0 for p in policy.body[-1].parameters())
    Trainer.from_run_dir(run_dir, ["run.total_episodes=160"]).run()
    again = json.loads((run_dir / "training.json").read_text())
    assert again["episodes"] == 160 and again["updates"] == 20

    def first_rollout_kl(*init: str) -> float:
        ppo = Trainer.new_run(load_config(None, [
            "learner.name=ppo", "learner.params={episodes_per_update: 8, widths: [64]}", "run.total_episodes=8",
            "rollout.episodes_per_batch=4", "run.eval_prompts=0", *init, *short]))
        ppo.run()
        lines = [json.loads(line) for line in (ppo.run_dir / "metrics.jsonl").read_text().splitlines()]
        return next(m["rollout/kl_per_response"] for m in lines if "rollout/kl_per_response" in m)

    assert first_rollout_kl() == 0.0
    assert first_rollout_kl(f"learner.init_from={run_dir}") > 0.0
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ConfigError, match=r"learner\.params\.widths=\[64\]"):
        Trainer.new_run(load_config(None, ["learner.name=ppo", f"learner.init_from={run_dir}", *short]))
    with pytest.raises(ConfigError, match=r"learner\.init_from=.* holds an agent of kind AcceptRejectPolicy, but "
                                          r"learner\.name=value_guided"):
        Trainer.new_run(load_config(None, ["learner.name=value_guided", f"learner.init_from={run_dir}",
                                           "engine.candidate_state=context", *short]))
    with pytest.raises(ConfigError, match=r"learner\.init_from: .*does not exist"):
        Trainer.new_run(load_config(None, ["learner.name=ppo", f"learner.init_from={tmp_path / 'nowhere'}", *short]))
    assert sorted(p.name for p in tmp_path.iterdir()) == before
