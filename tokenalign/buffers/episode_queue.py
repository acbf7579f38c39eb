"""EpisodeQueue: the on-policy FIFO of whole episodes for PPO and RLOO, delivered once each, in prompt groups."""
from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from tokenalign.buffers.batches import Decisions
from tokenalign.buffers.episode_store import EpisodeStore
from tokenalign.buffers.errors import ForeignValueError
from tokenalign.buffers.layout import RecordLayout, validate_record_batch
from tokenalign.buffers.rate_limiter import wait_until
from tokenalign.buffers.redis_client import TRANSIENT
from tokenalign.buffers.shard import Columns, make_decisions
from tokenalign.buffers.sharded import route

PULL_MAX = 1024


class EpisodeQueue:
    """Whole episodes in arrival order, handed to the learner once each, k episodes of a prompt together.

    An episode whose policy_version trails the learner's by more than max_policy_lag is dropped (and
    counted) instead of delivered: on-policy methods must not learn from an old policy's actions. A prompt
    whose group never fills (an actor died mid-group) goes stale and is dropped the same way. An episode
    newer than the learner is dropped too (counted apart): it was written before a resume, by a policy the
    restored learner never had, so its behaviour log-probs belong to no policy the learner can ratio against.
    """

    def __init__(
        self,
        *,
        stores: Sequence[EpisodeStore],
        layout: RecordLayout,
        max_policy_lag: int,
        write_timeout_s: float = 30.0,
        sample_timeout_s: float = 60.0,
        state_dtype: torch.dtype = torch.float32,
    ) -> None:
        if not stores:
            raise ValueError("an EpisodeQueue needs at least one store")
        self.stores = list(stores)
        self.layout = layout
        self.max_policy_lag = max_policy_lag
        self.write_timeout_s = write_timeout_s
        self.sample_timeout_s = sample_timeout_s
        self.state_dtype = state_dtype
        self.delivered = 0
        self.dropped_stale = 0
        self.dropped_future = 0
        self._pool: OrderedDict[int, list[tuple[pa.RecordBatch, int]]] = OrderedDict()
        self._down: set[int] = set()

    def add(self, record_batch: pa.RecordBatch) -> None:
        """Queue one or more whole episodes (validated before anything is written), routed by episode_id."""
        validate_record_batch(record_batch, layout=self.layout)
        columns = Columns.from_batch(record_batch, layout=self.layout)
        starts = columns.episode_starts()
        lengths = np.diff(np.r_[starts, len(columns)])
        episodes = [record_batch.slice(int(s), int(n)) for s, n in zip(starts, lengths)]
        shard_of = route(columns.scalars["episode_id"][starts], len(self.stores))
        for index in np.unique(shard_of).tolist():
            store, mine = self.stores[index], [episodes[i] for i in np.flatnonzero(shard_of == index)]
            wait_until(  # calls both lambdas before the loop moves on
                lambda: store.push(mine),  # noqa: B023
                timeout_s=self.write_timeout_s,
                blocked=lambda: f"{store.name} is full ({len(store)} transitions held): is the learner consuming? "  # noqa: B023
                "(or raise buffer.capacity)",
            )

    def get(
        self, num_groups: int, *, learner_version: int, group_size: int = 1, timeout_s: float | None = None
    ) -> Decisions:
        """The oldest num_groups complete groups (group_size episodes of one prompt), rows in episode/step order."""
        if num_groups < 1 or group_size < 1:
            raise ValueError(f"num_groups and group_size must be positive, got {num_groups} and {group_size}")
        wait_until(
            lambda: self._ready(learner_version, group_size) >= num_groups,
            timeout_s=self.sample_timeout_s if timeout_s is None else timeout_s,
            blocked=lambda: f"only {self._ready(learner_version, group_size)} of {num_groups} groups of {group_size} "
            "fresh episodes arrived: are the rollout actors writing with current weights?",
        )
        episodes: list[pa.RecordBatch] = []
        for prompt in list(self._pool):
            pending = self._pool[prompt]
            while len(pending) >= group_size and len(episodes) < num_groups * group_size:
                episodes += [batch for batch, _ in pending[:group_size]]
                del pending[:group_size]
            if not pending:
                del self._pool[prompt]
        self.delivered += len(episodes)
        return self._transitions(episodes)

    def _ready(self, learner_version: int, group_size: int) -> int:
        self._pull()
        oldest_allowed = learner_version - self.max_policy_lag
        for prompt in list(self._pool):
            pending = self._pool[prompt]
            fresh = [(batch, version) for batch, version in pending if oldest_allowed <= version <= learner_version]
            self.dropped_stale += sum(version < oldest_allowed for _, version in pending)
            self.dropped_future += sum(version > learner_version for _, version in pending)
            if fresh:
                self._pool[prompt] = fresh
            else:
                del self._pool[prompt]
        return sum(len(pending) // group_size for pending in self._pool.values())

    def _pull(self) -> None:
        refusals: list[ForeignValueError] = []
        for index, store in enumerate(self.stores):
            try:
                episodes, refused = store.pop(PULL_MAX)
            except TRANSIENT as err:
                if index not in self._down:
                    warnings.warn(f"{store.name} is unreachable ({err}); reading the live shards", stacklevel=4)
                self._down.add(index)
                continue
            self._down.discard(index)
            refusals += refused
            for episode in episodes:
                prompt = int(episode.column("prompt_id")[0].as_py())
                version = int(pc.min(episode.column("policy_version")).as_py())
                self._pool.setdefault(prompt, []).append((episode, version))
        if refusals:
            raise ForeignValueError(f"{len(refusals)} queued item(s) refused, the rest kept: {refusals[0]}")

    def _transitions(self, episodes: list[pa.RecordBatch]) -> Decisions:
        columns = Columns.from_batch(pa.Table.from_batches(episodes).combine_chunks().to_batches()[0], layout=self.layout)
        state = torch.from_numpy(np.array(columns.state)).to(self.state_dtype)
        next_state = torch.zeros_like(state)
        next_state[:-1] = state[1:]
        next_state[torch.from_numpy(columns.scalars["done"])] = 0.0
        return make_decisions(columns.scalars, state, next_state, layout=self.layout, state_dtype=self.state_dtype)

    def __len__(self) -> int:
        """Transitions waiting: in the stores and pulled but not yet delivered."""
        pooled = sum(batch.num_rows for pending in self._pool.values() for batch, _ in pending)
        return pooled + sum(len(store) for i, store in enumerate(self.stores) if i not in self._down)

    def stats(self) -> dict[str, float]:
        """Queue length and the delivered / dropped counters, for a logger."""
        return {"size": len(self), **self.state_dict()}

    def clear(self) -> None:
        """Drop every waiting episode."""
        self._pool.clear()
        for store in self.stores:
            store.clear()

    def state_dict(self) -> dict[str, Any]:
        """The delivered and dropped counters (waiting episodes are data, not state)."""
        return {"delivered": self.delivered, "dropped_stale": self.dropped_stale, "dropped_future": self.dropped_future}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict returned."""
        self.delivered = int(state["delivered"])
        self.dropped_stale = int(state["dropped_stale"])
        self.dropped_future = int(state.get("dropped_future", 0))  # absent from checkpoints written before it

    def close(self) -> None:
        """Close connections; queued episodes stay in their stores."""
        for store in self.stores:
            store.close()
