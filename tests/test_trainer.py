"""End-to-end training with real Ray and real Redis on loopback: every learner, actor faults, GPU placement."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import ray
import torch

from tokenalign.config import load_config
from tokenalign.run.trainer import Trainer

SHORT = [
    "run.total_episodes=32", "run.eval_prompts=4", "run.checkpoint_every=2", "rollout.episodes_per_batch=4",
    "engine.max_new_tokens=8", "buffer.min_size_to_sample=64", "learner.params.batch_size=32",
]
LEARNER_PARAMS = {
    "sac": ["learner.params.update_time=1", "learner.params.learning_starts_factor=1"],
    "ppo": ["learner.params.episodes_per_update=8"],
    "ppo_lagrangian": ["learner.params.episodes_per_update=8"],
    "rloo_lagrangian": ["learner.params.prompts_per_update=4"],
    # Whole-episode draws make its updates quick and its actors quicker: at 32 episodes the actors could finish
    # before the first published head reached them (a flake: no rollout with policy_version > 0).
    "value_guided": ["learner.params.learning_starts=64", "learner.params.episodes_per_batch=2", "run.total_episodes=96"],
}


def short_config(tmp_path: Path, learner: str, *extra: str):
    params = [o for o in SHORT if not (learner != "sac" and o.startswith("learner.params.batch_size"))]
    return load_config(None, ["learner.params={}", *params, f"learner.name={learner}", *LEARNER_PARAMS[learner],
                              f"run.runs_dir={tmp_path}", *extra])


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(("learner", "candidate_state"), [("sac", "lookahead"), ("ppo", "lookahead"),
                                                       ("ppo_lagrangian", "lookahead"), ("rloo_lagrangian", "lookahead"),
                                                       ("ppo", "context"), ("value_guided", "context")])
def test_short_training_run_for_each_learner(ray_cluster, tmp_path, learner, candidate_state):
    trainer = Trainer.new_run(short_config(tmp_path, learner, f"engine.candidate_state={candidate_state}"))
    summary = trainer.run()
    run_dir = trainer.run_dir
    assert set(summary) == {"agent", "base", "best_of_4"}
    assert summary["agent"]["candidate_state"] == candidate_state
    if candidate_state == "context":  # the agent decodes at the cost of sampling: one forward per token
        agent, base = (summary[m]["lm_forward_tokens_per_token"] for m in ("agent", "base"))
        assert agent <= 1.2 * base
    for mode in summary.values():
        assert mode["n"] == 4 and {"mean", "se"} <= set(mode["reward"]) and {"mean", "se"} <= set(mode["cost"])
    training = json.loads((run_dir / "training.json").read_text())
    assert training["episodes"] >= 32 and training["updates"] >= 1
    metrics = read_metrics(run_dir)
    assert metrics[-1]["updates"] >= 1 and any("learner/num_updates" in m for m in metrics)
    # every run reports its agent's KL to the base LM: measured by the actors, estimated and weighted by the learner
    assert all(m["rollout/kl_per_response"] >= 0 for m in metrics if "rollout/kl_per_response" in m)
    assert any("learner/kl_coef" in m and "learner/kl_per_response" in m for m in metrics)
    assert summary["agent"]["kl_per_response"]["mean"] >= 0 and "kl_per_response_bound" in summary["best_of_4"]
    for name in ("config.yaml", "summary.json", "report.md", "reward.png", "cost.png", "generations.jsonl"):
        assert (run_dir / name).is_file(), name
    latest = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    assert (latest / "learner.pt").is_file() and (latest / "policy_state.pt").is_file()
    assert any((run_dir / "wandb").iterdir())
    # the actors decoded with weights the learner published after updating, and those weights moved: the
    # agent's last layer starts at zero (it decodes as the base LM) and only updates change it
    assert max(m.get("rollout/policy_version", -1) for m in metrics) > 0
    # no secret in any file of the run directory (wandb's and the servers' own files included)
    secret = trainer.processes.fleet.password.encode()
    assert not [f for f in run_dir.rglob("*") if f.is_file() and secret in f.read_bytes()]
    weights = torch.load(latest / "policy_state.pt", weights_only=True)["state_dict"]
    last = max((k for k in weights if k.startswith("body.") and k.endswith(".weight")), key=lambda k: int(k.split(".")[1]))
    assert float(weights[last].abs().sum()) > 0


def test_killed_rollout_actor_is_restarted_and_no_episode_is_lost(ray_cluster, tmp_path):
    config = short_config(tmp_path, "sac", "run.total_episodes=96", "rollout.max_restarts=2")
    trainer = Trainer.new_run(config)
    killed = []

    def kill_one_actor_mid_run() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and trainer.progress.episodes < 24:
            time.sleep(0.05)
        ray.kill(trainer.processes.actors[1], no_restart=False)
        killed.append(trainer.progress.episodes)

    threading.Thread(target=kill_one_actor_mid_run, daemon=True).start()
    trainer.run()
    training = json.loads((trainer.run_dir / "training.json").read_text())
    assert killed and training["actor_restarts"] >= 1
    assert training["episodes"] >= 96
    # Every decision an actor reported as written is in the buffer (a batch re-collected after the kill
    # can only add, never remove).
    assert training["buffer"]["size"] >= training["decisions"]


def test_a_killed_learner_stops_the_run_in_one_line_naming_the_checkpoint_a_resume_continues_from(ray_cluster, tmp_path):
    """The learner's state lives only in checkpoints (a restarted one would publish versions below what actors
    hold), so its death stops the run, in order, with the resume command."""
    from tokenalign.run.trainer import LearnerDiedError

    trainer = Trainer.new_run(short_config(tmp_path, "sac", "run.total_episodes=100000", "run.eval_prompts=0"))

    def kill_the_learner_after_a_checkpoint() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (trainer.run_dir / "checkpoints" / "latest").is_file():
            time.sleep(0.05)
        ray.kill(trainer.processes.learner, no_restart=True)

    threading.Thread(target=kill_the_learner_after_a_checkpoint, daemon=True).start()
    with pytest.raises(LearnerDiedError) as caught:
        trainer.run()
    message = str(caught.value)
    assert "\n" not in message and message.startswith("the learner actor died (")
    assert f"`tokenalign train --resume {trainer.run_dir}` continues from the newest (step-" in message
    newest = message.rsplit("(", 1)[1].rstrip(")")
    assert (trainer.run_dir / "checkpoints" / newest / "learner.pt").is_file()


def test_a_decision_budget_stops_the_run_and_zero_eval_prompts_skip_the_evaluation(ray_cluster, tmp_path):
    config = short_config(tmp_path, "ppo", "run.total_episodes=100000", "run.total_decisions=150", "run.eval_prompts=0")
    trainer = Trainer.new_run(config)
    assert trainer.run() == {}
    training = json.loads((trainer.run_dir / "training.json").read_text())
    assert training["decisions"] >= 150 and training["episodes"] < 100  # stopped by decisions, not episodes
    assert not (trainer.run_dir / "summary.json").exists()
    assert "not evaluated" in (trainer.run_dir / "report.md").read_text()


def test_rollout_actors_pinned_to_distinct_fake_gpus(ray_cluster, tmp_path):
    config = short_config(tmp_path, "sac", "rollout.gpus_per_actor=1", "run.total_episodes=8")
    trainer = Trainer.new_run(config)
    trainer.run()
    ids = [tuple(info["gpu_ids"]) for info in trainer.processes.actor_info]
    assert all(len(i) == 1 for i in ids) and len(set(ids)) == 2
    assert all(info["device"] == "cpu" for info in trainer.processes.actor_info)  # fake GPUs: no CUDA behind them


def test_asking_for_more_gpus_than_exist_fails_before_starting_anything(ray_cluster, tmp_path):
    from tokenalign.cluster.ray_cluster import ClusterResourceError

    with pytest.raises(ClusterResourceError, match="asks for 8 GPUs"):
        Trainer.new_run(short_config(tmp_path, "sac", "rollout.gpus_per_actor=4"))
    assert not any(tmp_path.iterdir())  # refused before a run directory exists


# ppo_lagrangian is PPO with a cost advantage (its preference path is ppo's): rloo_lagrangian covers the Lagrangian side
@pytest.mark.parametrize("learner", ["sac", "ppo", "rloo_lagrangian"])
def test_a_preference_conditioned_agent_trains_end_to_end(ray_cluster, tmp_path, learner):
    """RiC: the actors draw w per episode and store it, the agent sees [state ; w], evaluation picks w."""
    import torch

    trainer = Trainer.new_run(short_config(tmp_path, learner, "objective.name=preference"))
    summary = trainer.run()
    assert summary["agent"]["n"] == 4  # summarised at equal weights
    latest = trainer.run_dir / "checkpoints" / (trainer.run_dir / "checkpoints" / "latest").read_text().strip()
    policy = torch.load(latest / "policy_state.pt", weights_only=True)
    state = torch.load(latest / "learner.pt", weights_only=True)
    assert policy["preference_dim"] == 2 and state["learner"]["num_updates"] >= 1
    assert state["objective"]["name"] == "preference" and state["objective"]["state"]["normalizer"]["count"] >= 2


def test_a_run_resumes_with_another_objective_over_its_stored_data(ray_cluster, tmp_path):
    import torch
    import yaml

    first = Trainer.new_run(short_config(tmp_path, "sac", "run.eval_prompts=0"))
    first.run()
    with pytest.raises(ValueError, match="cannot change a run being resumed"):
        Trainer.from_run_dir(first.run_dir, ["learner.name=ppo"])
    resumed = Trainer.from_run_dir(first.run_dir, ["objective.name=hierarchical", "run.total_episodes=96"])
    assert yaml.safe_load((first.run_dir / "config.yaml").read_text())["objective"]["name"] == "hierarchical"
    resumed.run()
    latest = first.run_dir / "checkpoints" / (first.run_dir / "checkpoints" / "latest").read_text().strip()
    state = torch.load(latest / "learner.pt", weights_only=True)
    assert state["objective"]["name"] == "hierarchical" and state["objective"]["state"]["normalizer"]["count"] >= 2
    assert resumed.progress.episodes >= 96


def test_the_driver_writes_checkpoints_wherever_the_learner_runs_and_resumes_past_a_corrupt_one(
        ray_cluster, tmp_path, monkeypatch):
    """No shared filesystem: the learner actor hands its state over and the driver writes it, so a learner in
    another working directory (another node) still checkpoints into the run directory; and a resume skips a
    newest checkpoint that does not load, for the one before."""
    import os

    elsewhere = tmp_path / "learner-node"
    elsewhere.mkdir()

    class LearnerElsewhere(Trainer):
        def _start(self):
            super()._start()
            ray.get(self.processes.learner.__ray_call__.remote(lambda actor, path: os.chdir(path), str(elsewhere)))

    monkeypatch.chdir(tmp_path)
    config = short_config(Path("runs"), "sac", "run.eval_prompts=0", "run.keep_checkpoints=2")  # a relative run dir
    first = LearnerElsewhere(config=config, run_dir=Trainer.new_run(config).run_dir)
    first.run()
    steps = sorted((tmp_path / first.run_dir / "checkpoints").glob("step-*"))
    training = json.loads((tmp_path / first.run_dir / "training.json").read_text())
    assert training["updates"] > 2 * 2  # checkpoint_every=2: more were written than kept
    assert [s.name for s in steps][-1] == training["checkpoint"] and len(steps) == 2
    assert all((s / "learner.pt").is_file() for s in steps)
    assert not any(elsewhere.rglob("*.pt"))

    newest, before = steps[-1], steps[-2]
    (newest / "learner.pt").write_bytes((newest / "learner.pt").read_bytes()[:100])
    resumed = Trainer.from_run_dir(first.run_dir, ["run.total_episodes=48"])
    assert resumed.resume_from.path.name == before.name
    resumed.run()
    assert resumed.progress.episodes >= 48
    assert len(list((tmp_path / first.run_dir / "checkpoints").glob("step-*"))) <= 3  # 2, and the first summary's
    metrics = read_metrics(tmp_path / first.run_dir)
    episodes = [m["episodes"] for m in metrics]
    assert episodes == sorted(episodes)  # the lines written after the restored checkpoint were dropped


def test_a_killed_buffer_shard_is_restarted_with_its_data_and_the_run_completes(ray_cluster, tmp_path):
    """SIGKILL of one embedded Redis shard mid-run: writers retry while the fleet restarts it from its
    append-only file, the learner samples the other shard meanwhile, and every transition it held is back."""
    config = short_config(tmp_path, "sac", "run.total_episodes=96")
    trainer = Trainer.new_run(config)
    before: dict[str, float] = {}

    def kill_a_shard_mid_run() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and trainer.progress.episodes < 32:
            time.sleep(0.05)
        before.update(ray.get(trainer.processes.learner.buffer_stats.remote()))
        trainer.processes.fleet.kill(0)

    threading.Thread(target=kill_a_shard_mid_run, daemon=True).start()
    trainer.run()
    training = json.loads((trainer.run_dir / "training.json").read_text())
    assert before and training["shard_restarts"] >= 1 and training["episodes"] >= 96
    after = training["buffer"]
    assert after["shards_down"] == 0
    assert after["shard0/size"] >= before["shard0/size"] > 0  # nothing the shard acknowledged was lost
    assert after["shard0/size"] == after["shard0/inserted"] - after["shard0/evicted"]
