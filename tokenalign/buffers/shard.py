"""The interface every shard offers, and the column conversions shards share."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pyarrow as pa
import torch

from tokenalign.buffers.batches import Decisions
from tokenalign.buffers.layout import RecordLayout, RecordSchemaError


def episode_starts(episode_id: np.ndarray) -> np.ndarray:
    """Row index where each episode begins, for rows that hold whole episodes one after another."""
    return np.flatnonzero(np.r_[True, episode_id[1:] != episode_id[:-1]])


class ViewOutdated(Exception):
    """A chunk this process's view listed was evicted before its rows were read; refresh and draw again."""


@dataclass
class ShardCounters:
    """Transitions ever inserted into, sampled from and evicted from one shard (Reverb's rate-limiter state)."""

    inserted: int = 0
    """Transitions written, evicted ones included."""
    sampled: int = 0
    """Transitions handed to learners."""
    evicted: int = 0
    """Transitions dropped by FIFO eviction."""


@dataclass
class Columns:
    """One validated record batch as numpy arrays: per-decision scalars and the (n, hidden) float16 states."""

    scalars: dict[str, np.ndarray]
    """Column name → (n,) array, for every column of the schema but the state."""
    state: np.ndarray
    """(n, hidden) float16 states, a view of the record batch's memory."""

    @classmethod
    def from_batch(cls, batch: pa.RecordBatch, *, layout: RecordLayout) -> Columns:
        """View a record batch (already validated against `layout`) as numpy columns, checking episode order."""
        scalars = {name: batch.column(name).to_numpy(zero_copy_only=False) for name in layout.scalar_dtypes}
        flat = batch.column("state").flatten().to_numpy(zero_copy_only=False)
        columns = cls(scalars=scalars, state=flat.reshape(batch.num_rows, -1))
        columns.check_whole_episodes()
        return columns

    def __len__(self) -> int:
        return int(self.state.shape[0])

    def episode_starts(self) -> np.ndarray:
        """Row index where each episode of the batch begins."""
        return episode_starts(self.scalars["episode_id"])

    def check_whole_episodes(self) -> None:
        """Raise RecordSchemaError unless the rows are whole episodes, each in step order and ending in done."""
        if len(self) == 0:
            raise RecordSchemaError("record batch has no rows; write whole episodes")
        starts = self.episode_starts()
        lengths = np.diff(np.r_[starts, len(self)])
        if len(np.unique(self.scalars["episode_id"][starts])) != len(starts):
            raise RecordSchemaError("record batch interleaves episodes; write each episode's decisions contiguously")
        expected_step = np.arange(len(self)) - np.repeat(starts, lengths)
        if not np.array_equal(self.scalars["step"], expected_step):
            bad = int(self.scalars["episode_id"][np.flatnonzero(self.scalars["step"] != expected_step)[0]])
            raise RecordSchemaError(
                f"episode {bad} is not whole and in step order (steps must run 0, 1, 2, ...); write whole episodes"
            )
        expected_done = np.zeros(len(self), dtype=bool)
        expected_done[starts + lengths - 1] = True
        if not np.array_equal(self.scalars["done"], expected_done):
            bad = int(self.scalars["episode_id"][np.flatnonzero(self.scalars["done"] != expected_done)[0]])
            raise RecordSchemaError(f"episode {bad} must have done=True on its last decision and only there")

    def take(self, rows: np.ndarray) -> Columns:
        """The rows at `rows` (whole episodes, so the result is valid too)."""
        return Columns(scalars={k: v[rows] for k, v in self.scalars.items()}, state=self.state[rows])


def make_decisions(
    scalars: dict[str, np.ndarray], state: torch.Tensor, next_state: torch.Tensor, *, layout: RecordLayout,
    state_dtype: torch.dtype,
) -> Decisions:
    """Assemble learner-side tensors from gathered scalar columns and state rows (converted to state_dtype)."""

    def column(name: str, dtype: type) -> torch.Tensor:
        return torch.from_numpy(scalars[name].astype(dtype))

    def wide(names: list[str]) -> torch.Tensor:
        n = len(scalars["action"])
        return torch.from_numpy(np.stack([scalars[c] for c in names], axis=1).astype(np.float32)
                                if names else np.zeros((n, 0), np.float32))

    return Decisions(
        state=state.to(state_dtype),
        next_state=next_state.to(state_dtype),
        action=column("action", np.int64),
        done=column("done", np.float32),
        logp=column("logp", np.float32),
        episode_id=column("episode_id", np.int64),
        step=column("step", np.int64),
        prompt_id=column("prompt_id", np.int64),
        policy_version=column("policy_version", np.int64),
        rank=column("rank", np.int64),
        base_logit=column("base_logit", np.float32),
        next_base_logit=column("next_base_logit", np.float32),
        episode_decisions=column("episode_decisions", np.int64),
        emit=column("emit", np.bool_),
        log_ratio=column("log_ratio", np.float32),
        decision_kl=column("decision_kl", np.float32),
        token_reward=column("token_reward", np.float32),
        mara_kl_penalty=column("mara_kl_penalty", np.float32),
        accepts_to_end=column("accepts_to_end", np.int64),
        response_tokens=column("response_tokens", np.int64),
        scores=wide(layout.score_columns),
        baseline_scores=wide(layout.baseline_columns),
        preference=wide(layout.preference_columns),
        step_scores=wide(layout.step_columns) if layout.candidate_rows else None,
        prefix_scores=wide(layout.prefix_columns) if layout.candidate_rows else None,
    )


class Shard(Protocol):
    """One partition of the replay buffer. Sampling indices are drawn by the caller, so one RNG serves all shards."""

    name: str
    capacity: int

    def add(self, columns: Columns) -> None:
        """Store whole, validated episodes as one chunk, evicting the oldest whole chunks past capacity."""

    def refresh(self) -> None:
        """Bring this process's view of the shard up to date with writes from other processes."""

    def __len__(self) -> int:
        """Transitions stored, as of the last refresh."""

    def size_now(self) -> int:
        """Transitions stored right now, writes from other processes included."""

    def episode_prompts(self) -> np.ndarray:
        """prompt_id of every stored episode, oldest first; position i is episode index i."""

    def gather(self, offsets: np.ndarray) -> Decisions:
        """Transitions at `offsets` in [0, len) (oldest first), with next_state from the chain; rows whose
        chunk another process evicted since the last refresh are left out."""

    def gather_episodes(self, indices: np.ndarray) -> Decisions:
        """Whole episodes at episode `indices`, rows in step order; ViewOutdated if one was evicted meanwhile."""

    def counters(self) -> ShardCounters:
        """This shard's insert / sample / evict counters."""

    def set_counters(self, counters: ShardCounters) -> None:
        """Restore counters from a checkpoint."""

    def clear(self) -> None:
        """Drop every stored transition (counters are kept)."""

    def stats(self) -> dict[str, float]:
        """Size, capacity, counters and bytes held, for logging."""

    def close(self) -> None:
        """Release connections; stored data stays."""
