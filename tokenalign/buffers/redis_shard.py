"""RedisShard: one Redis server as a shard, written atomically by many processes, sampled with pipelined GETRANGEs.

Layout under `<namespace>:` on the server: chunks numbered 1, 2, ... (`tail` is the newest, `head` the
oldest live one), each as `meta:<id>` and `states:<id>` (see chunk_codec), `rows` (hash id → rows, for
eviction), and the counters `size`, `inserted`, `sampled`, `evicted`. A Lua script adds a chunk and evicts
the oldest whole chunks in one atomic step, and remembers the writer's token for a day, so a retried add
is applied once. Readers mirror the scalar columns of the live chunks in a ChunkRing (synced by chunk id)
and fetch only the state bytes of the rows they sample.
"""
from __future__ import annotations

import json
import uuid

import numpy as np
import redis
import torch

from tokenalign.buffers.chunk_codec import (
    ChunkMeta, check_states, decode_meta, encode_chunk, layout_signature, refusal,
)
from tokenalign.buffers.range_reader import RangeReader, Ranges
from tokenalign.buffers.redis_client import connect, public_url, with_retry
from tokenalign.buffers.ring import ChunkRing
from tokenalign.buffers.schema import Decisions, RecordLayout, RecordSchemaError, check_version
from tokenalign.buffers.shard import Columns, ShardCounters, ViewOutdated, episode_starts, make_decisions

TOKEN_TTL_S = 86_400
SYNC_BATCH = 256

_ADD = """
local ns = ARGV[1]
local token_key = ns .. ':token:' .. ARGV[2]
local applied = redis.call('GET', token_key)
if applied then return tonumber(applied) end
local rows, capacity = tonumber(ARGV[3]), tonumber(ARGV[4])
if redis.call('EXISTS', ns .. ':hidden_size') == 1 then return redis.error_reply('OLD_SCHEMA') end
local layout = redis.call('GET', ns .. ':layout')
if layout and layout ~= ARGV[5] then return redis.error_reply('LAYOUT ' .. layout) end
redis.call('SET', ns .. ':layout', ARGV[5])
local id = redis.call('INCR', ns .. ':tail')
redis.call('SET', ns .. ':meta:' .. id, ARGV[6])
redis.call('SET', ns .. ':states:' .. id, ARGV[7])
redis.call('HSET', ns .. ':rows', id, rows)
redis.call('INCRBY', ns .. ':inserted', rows)
local size = redis.call('INCRBY', ns .. ':size', rows)
local head = tonumber(redis.call('GET', ns .. ':head') or 1)
local evicted = 0
while size > capacity do
  local r = tonumber(redis.call('HGET', ns .. ':rows', head))
  redis.call('DEL', ns .. ':meta:' .. head, ns .. ':states:' .. head)
  redis.call('HDEL', ns .. ':rows', head)
  size = size - r
  evicted = evicted + r
  head = head + 1
end
redis.call('SET', ns .. ':head', head)
redis.call('SET', ns .. ':size', size)
redis.call('INCRBY', ns .. ':evicted', evicted)
redis.call('SET', token_key, id, 'EX', ARGV[8])
return id
"""

_CLEAR = """
local ns = ARGV[1]
local tail = tonumber(redis.call('GET', ns .. ':tail') or 0)
for id = tonumber(redis.call('GET', ns .. ':head') or 1), tail do
  redis.call('DEL', ns .. ':meta:' .. id, ns .. ':states:' .. id)
end
redis.call('DEL', ns .. ':rows')
redis.call('SET', ns .. ':head', tail + 1)
redis.call('SET', ns .. ':size', 0)
"""

_COUNTERS = ("inserted", "sampled", "evicted")


class RedisShard:
    """One Redis server holding whole chunks, shared by writers in any process and sampled by learners."""

    def __init__(
        self, *, url: str, password: str | None, namespace: str, layout: RecordLayout, capacity: int,
        write_timeout_s: float = 30.0, index: int = 0, state_dtype: torch.dtype = torch.float32,
    ) -> None:
        self.name = f"redis shard {index} at {public_url(url)}"
        self.state_dtype = state_dtype
        self.layout = layout
        self.hidden_size = hidden_size = layout.hidden_size
        self.capacity = capacity
        self.write_timeout_s = write_timeout_s
        self._ns = namespace
        self._client = connect(url, password=password)
        self._add_script = self._client.register_script(_ADD)
        self._clear_script = self._client.register_script(_CLEAR)
        self._ranges = RangeReader(self._client)
        self._row_bytes = hidden_size * 2
        self._mirror_ring: ChunkRing | None = None
        self._metas: dict[int, ChunkMeta] = {}

    @property
    def _mirror(self) -> ChunkRing:
        """The scalar columns of the live chunks, allocated on first use: writers never need it."""
        if self._mirror_ring is None:
            specs = {col: ((), dtype) for col, dtype in self.layout.scalar_dtypes.items()}
            specs.update({name: ((), np.dtype(np.int64)) for name in ("chunk_id", "row", "state_offset")})
            self._mirror_ring = ChunkRing(capacity=self.capacity, columns=specs)
        return self._mirror_ring

    def _key(self, *parts: object) -> str:
        return ":".join([self._ns, *map(str, parts)])

    def add(self, columns: Columns) -> None:
        meta, states = encode_chunk(columns, layout=self.layout)
        args = [self._ns, uuid.uuid4().hex, len(columns), self.capacity, layout_signature(self.layout), meta, states,
                TOKEN_TTL_S]
        try:
            with_retry(
                lambda: self._add_script(args=args), shard=self.name, timeout_s=self.write_timeout_s, what="adding a chunk"
            )
        except redis.ResponseError as err:
            if "OLD_SCHEMA" in str(err):
                check_version({}, what=f"{self.name} (namespace {self._ns!r})")
            if "LAYOUT" not in str(err):
                raise
            theirs = json.loads(str(err).split(" ", 1)[1])
            if theirs["hidden_size"] != self.hidden_size:
                why = f"holds states of size {theirs['hidden_size']}, these are of size {self.hidden_size}: use the same LM"
            else:
                why = (f"holds records with scorers {theirs['scorers']} and preference size {theirs['preference_dim']}, "
                       f"these have {list(self.layout.scorers)} and {self.layout.preference_dim}: use the same reward config")
            raise RecordSchemaError(
                f"{self.name} under namespace {self._ns!r} {why} as the other writers, or another buffer.namespace"
            ) from None

    def refresh(self) -> None:
        """Mirror the chunks added and evicted since the last refresh (one round trip when nothing changed)."""
        head_value, tail_value = self._client.mget(self._key("head"), self._key("tail"))
        head, tail = int(head_value or 1), int(tail_value or 0)
        last = self._mirror.last_chunk_id
        if last is not None and last > tail:  # the server lost its data (flushed, or restarted without its files)
            self._mirror.clear()
            self._metas.clear()
            last = None
        self._forget_before(head)
        first = max(head, (last or 0) + 1)
        for batch_start in range(first, tail + 1, SYNC_BATCH):
            self._mirror_chunks(list(range(batch_start, min(batch_start + SYNC_BATCH, tail + 1))))

    def _forget_before(self, chunk_id: int) -> None:
        self._mirror.evict_before(chunk_id)
        for stale in [cid for cid in self._metas if cid < chunk_id]:
            del self._metas[stale]

    def _mirror_chunks(self, ids: list[int]) -> None:
        payloads = self._client.mget([self._key("meta", cid) for cid in ids])
        missing = [cid for cid, payload in zip(ids, payloads) if payload is None]
        if missing:  # evicted since `head` was read; FIFO, so everything up to the last missing id is gone
            self._forget_before(missing[-1] + 1)
            ids, payloads = ids[ids.index(missing[-1]) + 1 :], payloads[ids.index(missing[-1]) + 1 :]
        metas = [decode_meta(p, key=self._key("meta", cid), layout=self.layout) for cid, p in zip(ids, payloads)]
        pipe = self._client.pipeline(transaction=False)
        for cid, meta in zip(ids, metas):
            pipe.strlen(self._key("states", cid))
            pipe.getrange(self._key("states", cid), 0, meta.state_offset - 1)
        replies = pipe.execute()
        for i, (cid, meta) in enumerate(zip(ids, metas)):
            length, head = replies[2 * i], replies[2 * i + 1]
            if length == 0 and self._evicted(cid):
                self._forget_before(cid + 1)
                continue
            check_states(meta, key=self._key("states", cid), length=length, head=head)
            values = dict(meta.scalars)
            values.update(
                chunk_id=np.full(meta.rows, cid),
                row=np.arange(meta.rows),
                state_offset=np.full(meta.rows, meta.state_offset),
            )
            self._mirror.append(cid, values, episode_starts(meta.scalars["episode_id"]))
            self._metas[cid] = meta

    def _evicted(self, chunk_id: int) -> bool:
        head = self._client.get(self._key("head"))
        return head is not None and int(head) > chunk_id

    def __len__(self) -> int:
        return self._mirror.size

    def episode_prompts(self) -> np.ndarray:
        return self._mirror.episodes()[2]

    def gather(self, offsets: np.ndarray) -> Decisions:
        """Rows at `offsets`: each one GETRANGE of the state and its successor, read straight into one buffer."""
        cols = self._mirror.columns
        positions = self._mirror.positions(offsets)
        chunk_ids = cols["chunk_id"][positions]
        starts = cols["state_offset"][positions] + cols["row"][positions] * self._row_bytes
        rows, ranges = self._ranges.read_rows(self._state_keys(chunk_ids), starts, 2 * self._row_bytes)
        self._check_ranges(chunk_ids, ranges)
        positions = positions[ranges.read]  # rows of chunks evicted since the refresh are dropped
        self._client.incrby(self._key("sampled"), len(positions))
        pairs = torch.from_numpy(rows.view(np.float16)).view(len(positions), 2, self.hidden_size)
        state = torch.empty((len(positions), self.hidden_size), dtype=self.state_dtype)
        next_state = torch.empty_like(state)
        state.copy_(pairs[:, 0])
        next_state.copy_(pairs[:, 1])
        scalars = {name: cols[name][positions] for name in self.layout.scalar_dtypes}
        next_state[torch.from_numpy(scalars["done"])] = 0.0  # the chain ends: the successor row is another episode's
        return make_decisions(scalars, state, next_state, layout=self.layout, state_dtype=self.state_dtype)

    def gather_episodes(self, indices: np.ndarray) -> Decisions:
        """Whole episodes, each one GETRANGE of its contiguous state rows."""
        cols = self._mirror.columns
        starts, lengths, _ = self._mirror.episodes()
        first, lengths = starts[indices], lengths[indices]
        chunk_ids = cols["chunk_id"][first]
        byte_starts = cols["state_offset"][first] + cols["row"][first] * self._row_bytes
        ranges = self._ranges.read_ranges(self._state_keys(chunk_ids), byte_starts, lengths * self._row_bytes)
        self._check_ranges(chunk_ids, ranges)
        if not ranges.read.all():
            raise ViewOutdated(int(chunk_ids[~ranges.read][0]))
        self._client.incrby(self._key("sampled"), int(lengths.sum()))
        state = torch.from_numpy(ranges.joined(lengths * self._row_bytes).view(np.float16)).view(-1, self.hidden_size)
        state = state.to(self.state_dtype)
        next_state = torch.zeros_like(state)
        next_state[:-1] = state[1:]
        positions = self._mirror.episode_positions(indices)
        scalars = {name: cols[name][positions] for name in self.layout.scalar_dtypes}
        next_state[torch.from_numpy(scalars["done"])] = 0.0
        return make_decisions(scalars, state, next_state, layout=self.layout, state_dtype=self.state_dtype)

    def _state_keys(self, chunk_ids: np.ndarray) -> list[str]:
        return [self._key("states", cid) for cid in chunk_ids.tolist()]

    def _check_ranges(self, chunk_ids: np.ndarray, ranges: Ranges) -> None:
        """Refuse a states value that is not a string or is shorter than its meta says; evicted chunks pass.

        A range comes back empty only when its chunk was evicted after this process's last refresh; any
        other shortfall means someone else wrote the key.
        """
        if ranges.errors:
            index, message = next(iter(ranges.errors.items()))
            raise refusal(self._key("states", int(chunk_ids[index])), f"not a string: {message}")
        if not ranges.read.all():
            self._check_unread(chunk_ids[~ranges.read])

    def _check_unread(self, chunk_ids: np.ndarray) -> None:
        head = int(self._client.get(self._key("head")) or 1)
        for chunk_id in np.unique(chunk_ids[chunk_ids >= head]).tolist():
            key = self._key("states", chunk_id)
            meta = self._metas[chunk_id]
            head = self._client.getrange(key, 0, meta.state_offset - 1)
            check_states(meta, key=key, length=self._client.strlen(key), head=head)
            raise refusal(key, "fewer state bytes than its meta promises")

    def counters(self) -> ShardCounters:
        values = self._client.mget([self._key(name) for name in _COUNTERS])
        return ShardCounters(**{name: int(v or 0) for name, v in zip(_COUNTERS, values)})

    def set_counters(self, counters: ShardCounters) -> None:
        self._client.mset({self._key(name): getattr(counters, name) for name in _COUNTERS})

    def size_now(self) -> int:
        return int(self._client.get(self._key("size")) or 0)

    def clear(self) -> None:
        self._clear_script(args=[self._ns])
        self._mirror.clear()
        self._metas.clear()

    def stats(self) -> dict[str, float]:
        memory = self._client.info("memory")
        return {
            "size": len(self),
            "capacity": self.capacity,
            "server_used_memory": int(memory["used_memory"]),
            "server_dataset_bytes": int(memory["used_memory_dataset"]),
            **vars(self.counters()),
        }

    def close(self) -> None:
        """Close this process's connections (the data stays on the server)."""
        self._ranges.close()
        self._client.close()
