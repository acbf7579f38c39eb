"""MemoryShard: an in-process numpy ring holding each state once, the fastest path on one machine."""
from __future__ import annotations

import numpy as np
import torch

from tokenalign.buffers.batch_memory import BatchMemory
from tokenalign.buffers.batches import Decisions
from tokenalign.buffers.layout import RecordLayout
from tokenalign.buffers.ring import ChunkRing
from tokenalign.buffers.shard import Columns, ShardCounters, make_decisions


class MemoryShard:
    """A shard in this process's memory: float16 states in a ring, next_state read from the chain at sampling."""

    def __init__(
        self, *, layout: RecordLayout, capacity: int, name: str = "memory-0", state_dtype: torch.dtype = torch.float32
    ) -> None:
        self.name = name
        self.state_dtype = state_dtype
        self.layout = layout
        self.capacity = capacity
        specs = {col: ((), dtype) for col, dtype in layout.scalar_dtypes.items()}
        specs["state"] = ((layout.state_size,), np.dtype(np.float16))
        self._ring = ChunkRing(capacity=capacity, columns=specs)
        self._states = torch.from_numpy(self._ring.columns["state"])  # the ring never reallocates
        self._batches = BatchMemory(width=layout.state_size)
        self._counters = ShardCounters()
        self._next_chunk_id = 0

    def add(self, columns: Columns) -> None:
        values = dict(columns.scalars, state=columns.state)
        evicted = self._ring.append(self._next_chunk_id, values, columns.episode_starts())
        self._next_chunk_id += 1
        self._counters.inserted += len(columns)
        self._counters.evicted += evicted

    def refresh(self) -> None:
        """Nothing to do: no other process writes here."""

    def __len__(self) -> int:
        return self._ring.size

    def size_now(self) -> int:
        return self._ring.size

    def episode_prompts(self) -> np.ndarray:
        return self._ring.episodes()[2]

    def gather(self, offsets: np.ndarray) -> Decisions:
        positions = self._ring.positions(offsets)
        self._counters.sampled += len(offsets)
        return self._assemble(positions)

    def gather_episodes(self, indices: np.ndarray) -> Decisions:
        positions = self._ring.episode_positions(indices)
        self._counters.sampled += len(positions)
        return self._assemble(positions)

    def _assemble(self, positions: np.ndarray) -> Decisions:
        state, next_state = self._batches.gather_pairs(self._states, positions, self._ring.successors(positions))
        scalars = {name: self._ring.columns[name][positions] for name in self.layout.scalar_dtypes}
        return make_decisions(scalars, state, next_state, layout=self.layout, state_dtype=self.state_dtype)

    def counters(self) -> ShardCounters:
        return ShardCounters(**vars(self._counters))

    def set_counters(self, counters: ShardCounters) -> None:
        self._counters = ShardCounters(**vars(counters))

    def clear(self) -> None:
        self._ring.clear()

    def close(self) -> None:
        """Nothing to release."""

    def stats(self) -> dict[str, float]:
        row_bytes = sum(column[0].nbytes for column in self._ring.columns.values())
        return {
            "size": len(self),
            "capacity": self._ring.capacity,
            "bytes": len(self) * row_bytes,
            **vars(self._counters),
        }
