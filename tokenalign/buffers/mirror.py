"""StateMirror: a sampling process's copy of the state rows of a shard's newest chunks, so samples gather locally.

Read row by row, a Redis shard sends every draw's state bytes afresh, and a server moves ~0.6-1 GB/s to a reader
on loopback however it is asked (row by row, whole chunks, or a raw pipelined MGET). A learner draws each stored
transition many times, so a reader copies each chunk's states once, as one contiguous range, and gathers later
samples from its own memory as the memory backend does. A chunk never changes under its id while the shard keeps
its data, so a copy stays valid until its chunk is evicted (dropped at the refresh that sees the shard's head
pass it) or the shard loses its data (dropped whole); the shard drives both. The copy is bounded by a row budget
and holds the newest chunks (they stay in the shard longest); rows of older chunks are still read from the shard
one by one, so which rows are drawn never depends on where they are read from.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from tokenalign.buffers.batch_memory import BatchMemory
from tokenalign.buffers.ring import ChunkRing


class StateMirror:
    """float16 state rows of whole chunks, newest chunks first within `rows`, looked up by (chunk id, row)."""

    def __init__(self, *, rows: int, state_size: int) -> None:
        self.rows = rows
        # The done column gives each row's chain successor (the zero row after an episode's last decision).
        # A ring holds at least one row; a budget of 0 never fills it.
        columns = {"state": ((state_size,), np.dtype(np.float16)), "done": ((), np.dtype(bool))}
        self._ring = ChunkRing(capacity=max(rows, 1), columns=columns)
        self._states = torch.from_numpy(self._ring.columns["state"])  # the ring never reallocates
        self._batches = BatchMemory(width=state_size)

    @property
    def held_rows(self) -> int:
        """State rows held now."""
        return self._ring.size

    def wanted(self, newest_first: Iterable[tuple[int, int]]) -> list[int]:
        """Ids of the chunks to copy, oldest first: of the (chunk id, rows) given newest first, those newer than
        every held chunk, taken while they fit the budget (a copy of an older chunk would only be dropped again)."""
        last = self._ring.last_chunk_id
        ids, room = [], self.rows
        for chunk_id, rows in newest_first:
            if (last is not None and chunk_id <= last) or rows > room:
                break
            ids.append(chunk_id)
            room -= rows
        return ids[::-1]

    def add(
        self, chunk_id: int, states: np.ndarray, scalars: dict[str, np.ndarray], episode_starts: np.ndarray
    ) -> None:
        """Hold one chunk (newer than every held one): its (rows, hidden) float16 states, and its scalar columns,
        of which the ring keeps `done` (and reads `prompt_id` for its episode index)."""
        self._ring.append(chunk_id, {**scalars, "state": states}, episode_starts)

    def locate(self, chunk_ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Mirror position of row `rows[i]` of chunk `chunk_ids[i]`, -1 where the chunk is not held."""
        return self._ring.chunk_positions(chunk_ids, rows)

    def gather(self, positions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The states at `positions` and their chain successors (zeros after a done), as float16 tensors."""
        return self._batches.gather_pairs(self._states, positions, self._ring.successors(positions))

    def forget_before(self, chunk_id: int) -> None:
        """Drop every chunk older than `chunk_id` (the shard evicted them)."""
        self._ring.evict_before(chunk_id)

    def clear(self) -> None:
        """Drop everything (the shard lost its data)."""
        self._ring.clear()
