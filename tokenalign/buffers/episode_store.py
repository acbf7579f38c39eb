"""Where the on-policy queue keeps episodes between actors and learner: in this process, or in a Redis list."""
from __future__ import annotations

import uuid
from collections import deque
from typing import Protocol

import pyarrow as pa

from tokenalign.buffers.chunk_codec import decode_episodes
from tokenalign.buffers.errors import ForeignValueError
from tokenalign.buffers.layout import RecordLayout, to_ipc
from tokenalign.buffers.redis_client import connect, public_url, with_retry

TOKEN_TTL_S = 86_400

_PUSH = """
local ns = ARGV[1]
local token_key = ns .. ':queue_token:' .. ARGV[2]
if redis.call('EXISTS', token_key) == 1 then return 1 end
local rows, capacity = tonumber(ARGV[3]), tonumber(ARGV[4])
local held = tonumber(redis.call('GET', ns .. ':queue_size') or 0)
-- an empty queue takes any write, so one larger than the capacity cannot block its writer forever
if held > 0 and held + rows > capacity then return 0 end
for i = 6, #ARGV, 2 do
  redis.call('RPUSH', ns .. ':queue', ARGV[i])
  redis.call('RPUSH', ns .. ':queue_rows', ARGV[i + 1])
end
redis.call('INCRBY', ns .. ':queue_size', rows)
redis.call('SET', token_key, 1, 'EX', ARGV[5])
return 1
"""

_POP = """
local ns = ARGV[1]
local items = redis.call('LPOP', ns .. ':queue', ARGV[2])
if not items then return {} end
local rows = redis.call('LPOP', ns .. ':queue_rows', ARGV[2])
local total = 0
for _, r in ipairs(rows) do total = total + tonumber(r) end
redis.call('DECRBY', ns .. ':queue_size', total)
return items
"""


class EpisodeStore(Protocol):
    """A FIFO of record batches of whole episodes; each item is popped once."""

    name: str

    def push(self, episodes: list[pa.RecordBatch]) -> bool:
        """Append atomically; False (nothing written) when the store is full."""

    def pop(self, max_items: int) -> tuple[list[pa.RecordBatch], list[ForeignValueError]]:
        """Remove up to max_items, oldest first: the episodes, and a refusal for each item that was not ours."""

    def __len__(self) -> int:
        """Transitions held."""

    def clear(self) -> None:
        """Drop everything held."""

    def close(self) -> None:
        """Release connections."""


class MemoryEpisodeStore:
    """Episodes in this process's memory."""

    def __init__(self, *, capacity: int, name: str = "memory queue") -> None:
        self.name = name
        self.capacity = capacity
        self._items: deque[pa.RecordBatch] = deque()
        self._rows = 0

    def push(self, episodes: list[pa.RecordBatch]) -> bool:
        rows = sum(e.num_rows for e in episodes)
        if self._rows and self._rows + rows > self.capacity:  # as the Redis store: an empty queue takes any write
            return False
        self._items.extend(episodes)
        self._rows += rows
        return True

    def pop(self, max_items: int) -> tuple[list[pa.RecordBatch], list[ForeignValueError]]:
        out = [self._items.popleft() for _ in range(min(max_items, len(self._items)))]
        self._rows -= sum(e.num_rows for e in out)
        return out, []

    def __len__(self) -> int:
        return self._rows

    def clear(self) -> None:
        self._items.clear()
        self._rows = 0

    def close(self) -> None:
        """Nothing to release."""


class RedisEpisodeStore:
    """Episodes as Arrow IPC items of a Redis list; pushes are idempotent under retry, pops atomic."""

    def __init__(
        self, *, url: str, password: str | None, namespace: str, layout: RecordLayout, capacity: int,
        write_timeout_s: float = 30.0, index: int = 0,
    ) -> None:
        self.name = f"redis queue shard {index} at {public_url(url)}"
        self.layout = layout
        self.capacity = capacity
        self.write_timeout_s = write_timeout_s
        self._ns = namespace
        self._client = connect(url, password=password)
        self._push = self._client.register_script(_PUSH)
        self._pop = self._client.register_script(_POP)

    def push(self, episodes: list[pa.RecordBatch]) -> bool:
        rows = sum(e.num_rows for e in episodes)
        args: list[object] = [self._ns, uuid.uuid4().hex, rows, self.capacity, TOKEN_TTL_S]
        for episode in episodes:
            args += [to_ipc(episode), episode.num_rows]
        pushed = with_retry(
            lambda: self._push(args=args), shard=self.name, timeout_s=self.write_timeout_s, what="queueing episodes"
        )
        return bool(pushed)

    def pop(self, max_items: int) -> tuple[list[pa.RecordBatch], list[ForeignValueError]]:
        episodes, refusals = [], []
        for payload in self._pop(args=[self._ns, max_items]):
            try:
                episodes.append(decode_episodes(payload, key=f"{self._ns}:queue", layout=self.layout))
            except ForeignValueError as err:
                refusals.append(err)
        return episodes, refusals

    def __len__(self) -> int:
        return int(self._client.get(f"{self._ns}:queue_size") or 0)

    def clear(self) -> None:
        self._client.delete(f"{self._ns}:queue", f"{self._ns}:queue_rows", f"{self._ns}:queue_size")

    def close(self) -> None:
        self._client.close()
