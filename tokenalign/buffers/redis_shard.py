"""RedisShard: one Redis server as a shard, written atomically by many processes, sampled from a local mirror.

Layout under `<namespace>:` on the server: chunks numbered 1, 2, ... (`tail` is the newest, `head` the
oldest live one), each as `meta:<id>` and `states:<id>` (see chunk_codec), `rows` (hash id → rows, for
eviction), the counters `size`, `inserted`, `sampled`, `evicted`, and `epoch`, set by the first add into an
empty namespace, so a reader can tell that ids restarted under it. A Lua script adds a chunk and evicts the
oldest whole chunks in one atomic step, and remembers the writer's token for a day, so a retried add is
applied once. Readers keep the scalar columns of the live chunks in a ChunkRing (the index, synced by chunk
id); a sampling reader also copies the states of the newest chunks into a StateMirror, each chunk once as one
contiguous range, and fetches only the rows of chunks beyond the mirror's budget, one GETRANGE each.
"""
from __future__ import annotations

import json
import uuid

import numpy as np
import redis
import torch

from tokenalign.buffers.batches import Decisions
from tokenalign.buffers.chunk_codec import (
    ChunkMeta,
    check_states,
    decode_meta,
    encode_chunk,
    layout_signature,
    refusal,
)
from tokenalign.buffers.layout import RecordLayout, RecordSchemaError, check_version
from tokenalign.buffers.mirror import StateMirror
from tokenalign.buffers.range_reader import RangeReader, Ranges
from tokenalign.buffers.redis_client import connect, public_url, with_retry
from tokenalign.buffers.ring import ChunkRing
from tokenalign.buffers.shard import Columns, ShardCounters, ViewOutdated, episode_starts, make_decisions

TOKEN_TTL_S = 86_400
SYNC_BATCH = 256
FILL_BYTES = 1 << 26  # whole chunks read per pipeline: amortises the round trip, bounds the reader's reused buffer

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
redis.call('SET', ns .. ':epoch', ARGV[2], 'NX')
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
        write_timeout_s: float = 30.0, index: int = 0, state_dtype: torch.dtype = torch.float32, mirror_bytes: int = 0,
    ) -> None:
        self.name = f"redis shard {index} at {public_url(url)}"
        self.state_dtype = state_dtype
        self.layout = layout
        self.state_size = state_size = layout.state_size
        self.capacity = capacity
        self.write_timeout_s = write_timeout_s
        self._ns = namespace
        self._client = connect(url, password=password)
        self._add_script = self._client.register_script(_ADD)
        self._clear_script = self._client.register_script(_CLEAR)
        self._ranges = RangeReader(self._client)
        self._row_bytes = state_size * 2
        self._index_ring: ChunkRing | None = None
        self._metas: dict[int, ChunkMeta] = {}
        self._epoch: bytes | None = None
        self._mirror_rows = min(mirror_bytes // self._row_bytes, capacity)
        self._mirror_copy: StateMirror | None = None

    @property
    def _index(self) -> ChunkRing:
        """The scalar columns of the live chunks, allocated on first use: writers never need it."""
        if self._index_ring is None:
            specs = {col: ((), dtype) for col, dtype in self.layout.scalar_dtypes.items()}
            specs.update({name: ((), np.dtype(np.int64)) for name in ("chunk_id", "row", "state_offset")})
            self._index_ring = ChunkRing(capacity=self.capacity, columns=specs)
        return self._index_ring

    @property
    def _mirror(self) -> StateMirror:
        """Copies of the newest chunks' states, allocated on first use: only samplers fill it."""
        if self._mirror_copy is None:
            self._mirror_copy = StateMirror(rows=self._mirror_rows, state_size=self.state_size)
        return self._mirror_copy

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
            if theirs["hidden_size"] != self.state_size:
                why = f"holds states of size {theirs['hidden_size']}, these are of size {self.state_size}: use the same LM"
            else:
                why = (f"holds records with scorers {theirs['scorers']} and preference size {theirs['preference_dim']}, "
                       f"these have {list(self.layout.scorers)} and {self.layout.preference_dim}: use the same reward config")
            raise RecordSchemaError(
                f"{self.name} under namespace {self._ns!r} {why} as the other writers, or another buffer.namespace"
            ) from None

    def refresh(self) -> None:
        """Index the chunks added and evicted since the last refresh (one round trip when nothing changed)."""
        head_value, tail_value, epoch = self._client.mget(self._key("head"), self._key("tail"), self._key("epoch"))
        head, tail = int(head_value or 1), int(tail_value or 0)
        last = self._index.last_chunk_id
        # Ids restart when the server loses its data (flushed, or restarted without its files): the epoch changes
        # with the first add after the loss, or is gone; a tail behind our newest id tells for a namespace written
        # before epochs existed. Nothing indexed or mirrored from before is valid then.
        if epoch != self._epoch or (last is not None and last > tail):
            self._index.clear()
            self._metas.clear()
            self._mirror.clear()
            self._epoch, last = epoch, None
        self._forget_before(head)
        first = max(head, (last or 0) + 1)
        for batch_start in range(first, tail + 1, SYNC_BATCH):
            self._index_chunks(list(range(batch_start, min(batch_start + SYNC_BATCH, tail + 1))))

    def _forget_before(self, chunk_id: int) -> None:
        self._index.evict_before(chunk_id)
        self._mirror.forget_before(chunk_id)
        for stale in [cid for cid in self._metas if cid < chunk_id]:
            del self._metas[stale]

    def _index_chunks(self, ids: list[int]) -> None:
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
            self._index.append(cid, values, episode_starts(meta.scalars["episode_id"]))
            self._metas[cid] = meta

    def _evicted(self, chunk_id: int) -> bool:
        head = self._client.get(self._key("head"))
        return head is not None and int(head) > chunk_id

    def __len__(self) -> int:
        return self._index.size

    def episode_prompts(self) -> np.ndarray:
        return self._index.episodes()[2]

    def gather(self, offsets: np.ndarray) -> Decisions:
        """Rows at `offsets`: from the mirror where it holds their chunk, the others one GETRANGE each of the state
        and its successor, read straight into one buffer. Mirrored rows come first (a batch is a set of draws)."""
        self._fill_mirror()
        cols = self._index.columns
        positions = self._index.positions(offsets)
        local = self._mirror.locate(cols["chunk_id"][positions], cols["row"][positions])
        held = local >= 0
        state, next_state = self._mirror.gather(local[held])
        if not held.all():
            near = len(state)
            far, pairs = self._read_pairs(positions[~held])
            state, next_state = torch.cat([state, pairs[:, 0]]), torch.cat([next_state, pairs[:, 1]])
            next_state[near:][torch.from_numpy(cols["done"][far])] = 0.0  # the successor row is another episode's
            positions = np.concatenate([positions[held], far])
        self._client.incrby(self._key("sampled"), len(positions))
        scalars = {name: cols[name][positions] for name in self.layout.scalar_dtypes}
        return make_decisions(scalars, state, next_state, layout=self.layout, state_dtype=self.state_dtype)

    def _read_pairs(self, positions: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
        """(positions read, (m, 2, hidden) float16 view of the reader's buffer): each row's state and successor.
        Rows of chunks evicted since the refresh are left out."""
        cols = self._index.columns
        chunk_ids = cols["chunk_id"][positions]
        starts = cols["state_offset"][positions] + cols["row"][positions] * self._row_bytes
        rows, ranges = self._ranges.read_rows(self._state_keys(chunk_ids), starts, 2 * self._row_bytes)
        self._check_ranges(chunk_ids, ranges)
        return positions[ranges.read], torch.from_numpy(rows.view(np.float16)).view(-1, 2, self.state_size)

    def _fill_mirror(self) -> None:
        """Copy into the mirror the indexed chunks it should hold and does not: whole chunks, in pipelined reads."""
        wanted = self._mirror.wanted((cid, self._metas[cid].rows) for cid in reversed(self._metas))
        batch, size = [], 0
        for chunk_id in wanted:
            batch.append(chunk_id)
            size += self._metas[chunk_id].rows * self._row_bytes
            if size >= FILL_BYTES:
                self._mirror_chunks(batch)
                batch, size = [], 0
        if batch:
            self._mirror_chunks(batch)

    def _mirror_chunks(self, ids: list[int]) -> None:
        """Copy chunks `ids` (oldest first) into the mirror, each one contiguous GETRANGE of its state rows."""
        metas = [self._metas[cid] for cid in ids]
        lengths = np.array([meta.rows for meta in metas]) * self._row_bytes
        chunk_ids = np.array(ids)
        starts = np.array([meta.state_offset for meta in metas])
        ranges = self._ranges.read_ranges(self._state_keys(chunk_ids), starts, lengths)
        self._check_ranges(chunk_ids, ranges)
        data = np.frombuffer(ranges.buffer, dtype=np.uint8)
        for chunk_id, meta, offset, length in zip(ids, metas, ranges.offsets.tolist(), lengths.tolist()):
            if offset >= 0:  # else evicted since the refresh: its rows are read one by one until the next one drops it
                states = data[offset: offset + length].view(np.float16).reshape(meta.rows, self.state_size)
                self._mirror.add(chunk_id, states, meta.scalars, episode_starts(meta.scalars["episode_id"]))

    def gather_episodes(self, indices: np.ndarray) -> Decisions:
        """Whole episodes, each one GETRANGE of its contiguous state rows."""
        cols = self._index.columns
        starts, lengths, _ = self._index.episodes()
        first, lengths = starts[indices], lengths[indices]
        chunk_ids = cols["chunk_id"][first]
        byte_starts = cols["state_offset"][first] + cols["row"][first] * self._row_bytes
        ranges = self._ranges.read_ranges(self._state_keys(chunk_ids), byte_starts, lengths * self._row_bytes)
        self._check_ranges(chunk_ids, ranges)
        if not ranges.read.all():
            raise ViewOutdated(int(chunk_ids[~ranges.read][0]))
        self._client.incrby(self._key("sampled"), int(lengths.sum()))
        state = torch.from_numpy(ranges.joined(lengths * self._row_bytes).view(np.float16)).view(-1, self.state_size)
        state = state.to(self.state_dtype)
        next_state = torch.zeros_like(state)
        next_state[:-1] = state[1:]
        positions = self._index.episode_positions(indices)
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
        self._index.clear()
        self._metas.clear()
        self._mirror.clear()

    def stats(self) -> dict[str, float]:
        memory = self._client.info("memory")
        return {
            "size": len(self),
            "capacity": self.capacity,
            "mirrored": self._mirror.held_rows,
            "server_used_memory": int(memory["used_memory"]),
            "server_dataset_bytes": int(memory["used_memory_dataset"]),
            **vars(self.counters()),
        }

    def close(self) -> None:
        """Close this process's connections (the data stays on the server)."""
        self._ranges.close()
        self._client.close()
