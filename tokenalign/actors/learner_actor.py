"""LearnerActor: owns the learner and the run's objective, samples straight from the buffer, publishes weights,
hands its state to the driver for checkpoints.

Every sampled batch of observed `Decisions` is labelled by the objective (rewards and costs) right here,
then trained on. Replay learners (SAC) take `train(n)` calls of n gradient steps on sampled batches;
on-policy learners (PPO, RLOO) take `train_on_policy()`, one update on the freshest complete prompt
groups. Offline learners (DPO on pairs, best-of-N distillation on sample sets) have no buffer and no rollout
actors: the actor loads the LM itself, prepares its data once (`PairSource`, `SampleSetSource`: responses
teacher-forced into the decisions that emit them) and takes `train_offline(n)` calls; it also writes the
run's sample generations and end-of-run evaluation. After each call the new policy is published to the
WeightStore with the learner's update count as version.
"""
from __future__ import annotations

from typing import Any

import ray
import torch

from tokenalign.actors.rollout_actor import actor_device, build_task, sample_generations
from tokenalign.buffers.errors import TooFewEpisodes
from tokenalign.buffers.layout import RecordLayout
from tokenalign.buffers.spec import BufferSpec
from tokenalign.config import TrainConfig
from tokenalign.learners.base import LearnerContract
from tokenalign.learners.registry import make_learner
from tokenalign.objectives import make_objective


def _on_cpu(obj: Any) -> Any:
    """`obj` with every tensor copied to the CPU (a driver without the learner's GPU must unpickle it)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _on_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_on_cpu(v) for v in obj)
    return obj


@ray.remote
class LearnerActor:
    """See the module docstring."""

    def __init__(self, *, config: TrainConfig, layout: RecordLayout, weights: Any,
                 buffer_spec: BufferSpec | None = None) -> None:
        torch.set_num_threads(config.rollout.torch_threads)
        torch.manual_seed(config.run.seed)
        self.config = config
        self.device = actor_device(config.learner.num_gpus)
        self.contract: LearnerContract = config.learner.contract
        self.objective = make_objective(config.objective, reward=config.reward, shaping=config.shaping,
                                        gamma=self.contract.gamma, signals=self.contract.signals)
        if layout.preference_dim != self.objective.preference_dim:
            raise ValueError(f"the buffer's records carry {layout.preference_dim} preference weights, objective "
                             f"{self.objective.name!r} needs {self.objective.preference_dim}")
        self.learner = make_learner(config.learner.name, state_size=layout.state_size, config=config.learner.params,
                                    device=self.device, preference_dim=layout.preference_dim, seed=config.run.seed)
        if config.learner.init_from is not None:
            from tokenalign.eval.agent_source import load_agent

            self.learner.start_from(load_agent(config.learner.init_from, state_size=layout.state_size))
        self.weights = weights
        if self.contract.offline:
            from tokenalign.actors.offline_sources import offline_source

            self.task = build_task(config, device=self.device)
            self.source = offline_source(self.task, config)
            self.buffer = None
        else:
            if buffer_spec is None:
                raise ValueError(f"learner {config.learner.name!r} learns from rollouts and needs the run's buffer")
            self.buffer = buffer_spec.connect()

    @property
    def version(self) -> int:
        return self.learner.num_updates

    def publish(self) -> int:
        """Put the current policy in the object store and announce its version."""
        ref = ray.put(self.learner.policy_state())
        ray.get(self.weights.publish.remote(self.version, [ref]), timeout=self.config.run.remote_timeout_s)
        return self.version

    def describe(self) -> LearnerContract:
        """The learner's contract: what the driver schedules by."""
        return self.contract

    def buffer_stats(self) -> dict[str, float]:
        """The buffer's counters, or an offline learner's data's."""
        return self.source.stats() if self.buffer is None else self.buffer.stats()

    def train(self, max_updates: int) -> dict[str, float]:
        """Up to `max_updates` gradient steps, as many as the buffer's rate limiter allows right now."""
        batch_size, starts = self.contract.batch_size, self.contract.learning_starts
        sums: dict[str, float] = {}
        done = 0
        for _ in range(max_updates):
            # can_sample refreshes the buffer's view first; MARA starts learning once the buffer holds
            # more than batch_size × learning_starts_factor transitions.
            if not self.buffer.can_sample(batch_size) or len(self.buffer) <= starts:
                break
            try:
                sampled = (self.buffer.sample_episodes(batch_size) if self.contract.sample == "episodes"
                           else self.buffer.sample(batch_size))
            except TooFewEpisodes:
                break  # rows enough, whole episodes not yet (or evicted since): the next call draws again
            metrics = self.learner.update(self.learner.label(self.objective, sampled))
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + float(value)
            done += 1
        if done:
            self.publish()
        return {"updates_done": float(done), "num_updates": float(self.version),
                **{k: v / done for k, v in sums.items()}} if done else {"updates_done": 0.0, "num_updates": float(self.version)}

    def train_on_policy(self) -> dict[str, float]:
        """One update on the oldest fresh complete prompt groups, as many as the contract asks for."""
        batch = self.buffer.get(self.contract.groups_per_update, learner_version=self.version,
                                group_size=self.contract.group_size)
        metrics = self.learner.update(self.learner.label(self.objective, batch))
        self.publish()
        return {"updates_done": 1.0, "num_updates": float(self.version), **{k: float(v) for k, v in metrics.items()}}

    def train_offline(self, updates: int) -> dict[str, float]:
        """`updates` gradient steps, each on `batch_size` items (pairs, prompts' sets) drawn with the learner's
        (checkpointed) generator."""
        sums: dict[str, float] = {}
        for _ in range(updates):
            items = torch.randint(self.source.size, (self.contract.batch_size,), generator=self.learner.generator)
            for key, value in self.learner.update(self.source.batch(items)).items():
                sums[key] = sums.get(key, 0.0) + float(value)
        self.publish()
        return {"updates_done": float(updates), "num_updates": float(self.version),
                "items_seen": float(updates * self.contract.batch_size), **{k: v / updates for k, v in sums.items()}}

    def sample_generations(self, prompt_indices: list[int]) -> list[dict[str, Any]]:
        """An offline learner's run has no rollout actor: its agent's sample generations come from here."""
        return sample_generations(self.task, self.learner.policy, prompt_indices,
                                  generator=torch.Generator(device=self.device).manual_seed(self.config.run.seed))

    def evaluate(self, *, num_prompts: int, best_of: int, seed: int) -> dict[str, Any]:
        """An offline learner's end-of-run summary on held-out prompts (agent, base LM, best-of-N)."""
        from tokenalign.eval.summary import evaluate_run

        with torch.no_grad():
            return evaluate_run(self.task, self.learner.policy, config=self.config, num_prompts=num_prompts,
                                best_of=best_of, seed=seed)

    def state(self) -> dict[str, Any]:
        """Learner state (networks, optimizers, multipliers, counters, RNG), the buffer's counters and the
        objective's statistics, on the CPU: the driver writes them (`tokenalign/checkpoints.py`)."""
        buffer = {} if self.buffer is None else self.buffer.state_dict()
        return _on_cpu({"learner": self.learner.state_dict(), "buffer": buffer,
                        "objective": {"name": self.objective.name, "state": self.objective.state_dict()}})

    def policy_state(self) -> dict[str, Any]:
        """The agent alone, what `tokenalign generate --agent` and evaluation load."""
        return self.learner.policy_state()

    def load_state(self, state: dict[str, Any]) -> int:
        """Restore what `state` returned; returns the restored update count."""
        self.learner.load_state_dict(state["learner"])
        if self.buffer is not None:
            self.buffer.load_state_dict(state["buffer"])
        # A run resumed with another objective relabels the stored data from scratch: its statistics start anew.
        saved = state.get("objective", {})
        if saved.get("name") == self.objective.name:
            self.objective.load_state_dict(saved["state"])
        return self.version
