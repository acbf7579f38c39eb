"""ChunkRing: preallocated numpy columns holding whole chunks in FIFO order, the index both shard kinds sample from."""
from __future__ import annotations

from collections import deque
from typing import NamedTuple

import numpy as np


class _Chunk(NamedTuple):
    chunk_id: int
    start: int
    rows: int
    episode_starts: np.ndarray  # ring positions
    episode_lengths: np.ndarray
    episode_prompts: np.ndarray


class ChunkRing:
    """A ring of `capacity` rows over named numpy columns, filled by whole chunks and emptied oldest chunk first.

    A chunk may wrap around the end of the arrays, so the live rows are always the circular range
    [head, head + size) and the chain successor of row p is row (p + 1) % capacity. Row `capacity` is an
    extra all-zeros row: the successor of an episode's last decision, so next_state needs no masking.
    """

    def __init__(self, *, capacity: int, columns: dict[str, tuple[tuple[int, ...], np.dtype]]) -> None:
        if capacity < 1:
            raise ValueError(f"ring capacity must be positive, got {capacity}")
        self.capacity = capacity
        self.columns = {name: np.zeros((capacity + 1, *shape), dtype=dtype) for name, (shape, dtype) in columns.items()}
        self.head = 0
        self.size = 0
        self._chunks: deque[_Chunk] = deque()
        self._episode_cache: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._chunk_cache: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def zero_row(self) -> int:
        """Index of the all-zeros row."""
        return self.capacity

    @property
    def last_chunk_id(self) -> int | None:
        """Id of the newest chunk, None when empty."""
        return self._chunks[-1].chunk_id if self._chunks else None

    def append(self, chunk_id: int, values: dict[str, np.ndarray], episode_starts: np.ndarray) -> int:
        """Write a chunk after evicting the oldest chunks it needs room for; returns the rows evicted."""
        rows = len(next(iter(values.values())))
        if rows > self.capacity:
            raise ValueError(f"a chunk of {rows} transitions does not fit a shard of capacity {self.capacity}")
        evicted = 0
        while self.size + rows > self.capacity:
            evicted += self._pop_oldest()
        start = (self.head + self.size) % self.capacity
        positions = (start + np.arange(rows)) % self.capacity
        for name, column in self.columns.items():
            column[positions] = values[name]
        lengths = np.diff(np.r_[episode_starts, rows])
        prompts = values["prompt_id"][episode_starts]
        self._chunks.append(_Chunk(chunk_id, start, rows, (start + episode_starts) % self.capacity, lengths, prompts))
        self.size += rows
        self._episode_cache = self._chunk_cache = None
        return evicted

    def evict_before(self, chunk_id: int) -> int:
        """Drop every chunk older than `chunk_id`; returns the rows dropped."""
        evicted = 0
        while self._chunks and self._chunks[0].chunk_id < chunk_id:
            evicted += self._pop_oldest()
        return evicted

    def _pop_oldest(self) -> int:
        chunk = self._chunks.popleft()
        self.head = (self.head + chunk.rows) % self.capacity
        self.size -= chunk.rows
        self._episode_cache = self._chunk_cache = None
        return chunk.rows

    def clear(self) -> None:
        """Forget every chunk (the arrays are kept for reuse)."""
        self._chunks.clear()
        self.head = self.size = 0
        self._episode_cache = self._chunk_cache = None

    def positions(self, offsets: np.ndarray) -> np.ndarray:
        """Ring positions of live rows `offsets` in [0, size), oldest first."""
        return (self.head + offsets) % self.capacity

    def chunk_positions(self, chunk_ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Ring position of row `rows[i]` of chunk `chunk_ids[i]`, -1 where that chunk is not held."""
        if self._chunk_cache is None:
            self._chunk_cache = (
                np.array([c.chunk_id for c in self._chunks], dtype=np.int64),
                np.array([c.start for c in self._chunks], dtype=np.int64),
            )
        ids, starts = self._chunk_cache
        if not len(ids):
            return np.full(len(chunk_ids), -1, dtype=np.int64)
        # Chunks are appended in increasing id order, so a binary search finds each one.
        index = np.minimum(np.searchsorted(ids, chunk_ids), len(ids) - 1)
        held = ids[index] == chunk_ids
        return np.where(held, (starts[index] + rows) % self.capacity, -1)

    def successors(self, positions: np.ndarray) -> np.ndarray:
        """Chain successor of each position: the next row, or the zero row after an episode's last decision."""
        done = self.columns["done"][positions]
        return np.where(done, self.zero_row, (positions + 1) % self.capacity)

    def episodes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(start position, length, prompt_id) of every live episode, oldest first."""
        if self._episode_cache is None:
            chunks = list(self._chunks)
            self._episode_cache = (
                np.concatenate([c.episode_starts for c in chunks] or [np.zeros(0, np.int64)]),
                np.concatenate([c.episode_lengths for c in chunks] or [np.zeros(0, np.int64)]),
                np.concatenate([c.episode_prompts for c in chunks] or [np.zeros(0, np.int64)]),
            )
        return self._episode_cache

    def episode_positions(self, indices: np.ndarray) -> np.ndarray:
        """Ring positions of the rows of episodes `indices`, each episode in step order."""
        starts, lengths, _ = self.episodes()
        starts, lengths = starts[indices], lengths[indices]
        within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return (np.repeat(starts, lengths) + within) % self.capacity
