"""The three ways a run feeds its learner, chosen by the learner's data mode; the driver never touches episode data.

Asynchronous (replay learners): every rollout actor always has one `collect` in flight and the learner one
`train`; the learner gets `update_time` gradient steps per collected episode (MARA) and the buffer's rate
limiter keeps the two in balance. Synchronous (on-policy learners): all actors collect, the learner updates
on those episodes, publishes, repeat. Pairs (DPO): no rollout actors and no buffer; the learner actor trains
on the run's preference pairs.

A rollout actor that dies is restarted by Ray and its batch is handed out again; what it had written stays
in the buffer.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import ray
from ray.exceptions import ActorUnavailableError, RayActorError

from tokenalign.config import TrainConfig
from tokenalign.run.processes import RunProcesses

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Counters and the data cursor: what a checkpoint restores besides the learner."""

    episodes: int = 0
    decisions: int = 0
    updates: int = 0
    prompt_cursor: int = 0
    epoch: int = 0
    elapsed_s: float = 0.0
    actor_restarts: int = 0
    shard_restarts: int = 0
    last_checkpoint_updates: int = -1
    rollout: dict[str, float] = field(default_factory=dict)
    learner: dict[str, float] = field(default_factory=dict)


class Observer(Protocol):
    """What the loops report to: the driver logs, checkpoints and shows progress."""

    def rollout_done(self, stats: dict[str, float]) -> None:
        """An actor's batch is in the buffer (`progress` already counts it)."""

    def learner_done(self, metrics: dict[str, float]) -> None:
        """A learner call returned (`progress` already counts its updates)."""


class TrainingLoop:
    """Runs the loop of the learner's data mode until `should_stop()`; counts into `progress`."""

    def __init__(self, *, config: TrainConfig, processes: RunProcesses, progress: Progress, num_prompts: int,
                 observer: Observer, should_stop: Callable[[], bool]) -> None:
        self.config = config
        self.processes = processes
        self.contract = processes.contract
        self.progress = progress
        self.num_prompts = num_prompts
        self.observer = observer
        self.should_stop = should_stop

    def run(self) -> None:
        mode = self.contract.data_mode
        {"replay": self._loop_async, "on_policy": self._loop_sync, "pairs": self._loop_offline,
         "sets": self._loop_offline}[mode]()

    def next_prompts(self) -> list[int]:
        """The next batch of training-prompt indices, each repeated samples_per_prompt times; shuffled per epoch."""
        k = self.contract.group_size
        p = self.progress
        distinct = max(1, self.config.rollout.episodes_per_batch // k)
        order = np.random.default_rng(self.config.run.seed + p.epoch).permutation(self.num_prompts)
        picked = []
        for _ in range(distinct):
            if p.prompt_cursor >= len(order):
                p.epoch += 1
                p.prompt_cursor = 0
                order = np.random.default_rng(self.config.run.seed + p.epoch).permutation(self.num_prompts)
            picked.append(int(order[p.prompt_cursor]))
            p.prompt_cursor += 1
        return [i for i in picked for _ in range(k)]

    def _loop_async(self) -> None:
        actors, learner, call = self.processes.actors, self.processes.learner, self.processes.call
        update_time = self.contract.updates_per_episode
        timeout = self.config.run.remote_timeout_s
        in_flight: dict[Any, tuple[str, int, list[int]]] = {}
        for i, actor in enumerate(actors):
            prompts = self.next_prompts()
            in_flight[actor.collect.remote(prompts)] = ("actor", i, prompts)
        budget = 0
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=timeout)
            if not ready:
                raise TimeoutError(f"no rollout actor or learner answered within run.remote_timeout_s={timeout:g}s")
            kind, index, prompts = in_flight.pop(ready[0])
            if kind == "actor":
                stats = self._actor_result(ready[0], index)
                if stats is None:  # the actor died: Ray restarts it, its batch goes out again
                    in_flight[actors[index].collect.remote(prompts)] = ("actor", index, prompts)
                    continue
                budget += int(stats["episodes_written"]) * update_time
            else:
                self._learner_result(call(ready[0]))
            stopping = self.should_stop()
            if kind == "actor" and not stopping:
                nxt = self.next_prompts()
                in_flight[actors[index].collect.remote(nxt)] = ("actor", index, nxt)
            learner_busy = any(k == "learner" for k, _, _ in in_flight.values())
            if budget > 0 and not learner_busy and not stopping:
                chunk = min(budget, 50 * update_time)
                budget -= chunk
                in_flight[learner.train.remote(chunk)] = ("learner", -1, [])

    def _loop_sync(self) -> None:
        """Rounds: all actors collect with the current weights until the learner's rollout size is reached
        (groups of samples_per_prompt episodes of one prompt), then one update, which publishes new weights."""
        needed = self.contract.groups_per_update
        groups = 0
        while not self.should_stop():
            refs = [(i, actor.collect.remote(self.next_prompts())) for i, actor in enumerate(self.processes.actors)]
            for i, ref in refs:
                stats = self._actor_result(ref, i)
                groups += int(stats["groups_written"]) if stats is not None else 0
            if groups >= needed:
                self._learner_result(self.processes.call(self.processes.learner.train_on_policy.remote()))
                # Surplus groups stay queued (one version behind, within buffer.max_policy_lag) and are
                # consumed first next time; counting only new ones never waits on groups the queue dropped.
                groups = 0

    def _loop_offline(self) -> None:
        """Gradient steps on the learner actor's own data (pairs, sample sets), in calls of at most 50 updates
        (fewer with a smaller run.checkpoint_every) so that stop conditions and checkpoints come between them; an
        episode of the run's counters is one item seen, a pair or a prompt's set (run.total_episodes = epochs × items)."""
        per_call = max(1, min(self.config.run.checkpoint_every, 50))
        while not self.should_stop():
            metrics = self.processes.call(self.processes.learner.train_offline.remote(per_call))
            self.progress.episodes += int(metrics["items_seen"])
            self._learner_result(metrics)

    def _actor_result(self, ref: Any, index: int) -> dict[str, float] | None:
        try:
            stats = self.processes.call(ref)
        except (RayActorError, ActorUnavailableError) as err:
            self.progress.actor_restarts += 1
            log.warning("rollout actor %d died (%s); Ray restarts it and its batch is collected again", index, err)
            self.processes.await_restart(index)
            return None
        p = self.progress
        p.episodes += int(stats["episodes"])
        p.decisions += int(stats["decisions"])
        p.rollout = stats
        self.observer.rollout_done(stats)
        return stats

    def _learner_result(self, metrics: dict[str, float]) -> None:
        self.progress.updates = int(metrics["num_updates"])
        self.progress.learner = metrics
        self.observer.learner_done(metrics)
