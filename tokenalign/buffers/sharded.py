"""ShardedReplayBuffer: routes writers' episodes to shards and samples uniformly over every stored transition."""
from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from tokenalign.buffers.batch_memory import BatchMemory
from tokenalign.buffers.batches import Decisions, concat_rows, select_rows
from tokenalign.buffers.errors import ShardUnavailableError, TooFewEpisodes
from tokenalign.buffers.layout import RecordLayout, validate_record_batch
from tokenalign.buffers.rate_limiter import SampleToInsertRatio, wait_until
from tokenalign.buffers.redis_client import TRANSIENT
from tokenalign.buffers.shard import Columns, Shard, ShardCounters, ViewOutdated

REDRAWS = 20  # under heavy eviction a reader may lose a few races in a row; each redraw fetches only what was lost
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def route(episode_id: np.ndarray, num_shards: int) -> np.ndarray:
    """Shard of each episode: a multiplicative hash, so ids that share a stride still spread evenly."""
    mixed = episode_id.astype(np.uint64) * _GOLDEN
    return ((mixed >> np.uint64(32)) % np.uint64(num_shards)).astype(np.int64)


def whole_episode_chunks(rows: np.ndarray, episode_of_row: np.ndarray, *, limit: int) -> list[np.ndarray]:
    """`rows` (sorted, whole episodes) cut between episodes into consecutive chunks of at most `limit` rows each."""
    if len(rows) <= limit:
        return [rows]
    chunks, start = [], 0
    boundaries = np.flatnonzero(np.diff(episode_of_row[rows])) + 1  # where an episode starts
    ends = np.r_[boundaries, len(rows)]
    while start < len(rows):
        stop = int(ends[np.searchsorted(ends, start + limit, side="right") - 1])
        chunks.append(rows[start:stop])
        start = stop
    return chunks


class ShardedReplayBuffer:
    """Replay storage over one or more shards: add whole episodes, sample transitions, episodes or prompt groups.

    Sampling draws each shard in proportion to its size, then rows uniformly inside it, so every stored
    transition is equally likely. Shards that cannot be reached are skipped with a warning. One instance
    serves one thread; other threads and processes open their own from the BufferSpec.
    """

    def __init__(
        self,
        *,
        shards: Sequence[Shard],
        layout: RecordLayout,
        limiter: SampleToInsertRatio,
        write_timeout_s: float = 30.0,
        sample_timeout_s: float = 60.0,
        seed: int | None = None,
    ) -> None:
        if not shards:
            raise ValueError("a ShardedReplayBuffer needs at least one shard")
        self.shards = list(shards)
        self.layout = layout
        self.limiter = limiter
        self.write_timeout_s = write_timeout_s
        self.sample_timeout_s = sample_timeout_s
        self._rng = np.random.default_rng(seed)
        self._down: set[int] = set()
        self._counters_seen = [ShardCounters() for _ in self.shards]
        self._write_skip_until: dict[int, float] = {}
        self._batches = BatchMemory(width=layout.state_size)
        self._readers = ThreadPoolExecutor(max_workers=len(self.shards), thread_name_prefix="shard-reader")

    # -- writers ---------------------------------------------------------------------------------------------
    def add(self, record_batch: pa.RecordBatch) -> None:
        """Store one or more whole episodes (validated before anything is written), each on its episode_id's shard;
        a shard's part larger than the shard goes in chunks of whole episodes, each evicted as one."""
        validate_record_batch(record_batch, layout=self.layout)
        columns = Columns.from_batch(record_batch, layout=self.layout)
        starts = columns.episode_starts()
        lengths = np.diff(np.r_[starts, len(columns)])
        episode_ids = columns.scalars["episode_id"][starts]
        episode_of_row = np.repeat(np.arange(len(starts)), lengths)
        row_shard = self._write_route(episode_ids, skip=self._writes_skipping())[episode_of_row]
        smallest = min(shard.capacity for shard in self.shards)
        if lengths.max() > smallest:
            raise ValueError(
                f"this write holds an episode of {lengths.max()} transitions, more than a shard's capacity {smallest} "
                "(an episode is never split): raise buffer.capacity"
            )
        if self.limiter.samples_per_insert is not None:
            wait_until(
                lambda: self.limiter.can_insert(len(columns), counters=self._totals(), size=self._server_size()),
                timeout_s=self.write_timeout_s,
                blocked=lambda: "insert blocked by the rate limiter (is the learner sampling?): "
                + self.limiter.describe(counters=self._totals(), size=self._server_size()),
            )
        failed: set[int] = set()
        failures: list[str] = []
        written = np.zeros(len(columns), dtype=bool)
        pending = np.unique(row_shard).tolist()
        while pending:
            index = pending.pop(0)
            rows = np.flatnonzero((row_shard == index) & ~written)
            try:
                for chunk in whole_episode_chunks(rows, episode_of_row, limit=self.shards[index].capacity):
                    self.shards[index].add(columns.take(chunk))
                    written[chunk] = True
            except ShardUnavailableError as err:
                rows = rows[~written[rows]]
                # A shard down past the retry window is routed around: its episodes go to the live shards,
                # and later writes skip it for one more window before trying it again.
                failed.add(index)
                failures.append(str(err))
                self._write_skip_until[index] = time.monotonic() + self.write_timeout_s
                skip = self._writes_skipping() | failed
                if len(skip) == len(self.shards):
                    raise ShardUnavailableError("every shard is unreachable: " + "; ".join(failures)) from None
                row_shard[rows] = self._write_route(episode_ids, skip=skip)[episode_of_row[rows]]
                pending = sorted(set(pending) | set(np.unique(row_shard[rows]).tolist()))
        if failures:
            warnings.warn("; ".join(failures) + " — its episodes were written to the live shards", stacklevel=2)

    def _writes_skipping(self) -> set[int]:
        """Shards that failed a write less than a retry window ago."""
        now = time.monotonic()
        return {index for index, until in self._write_skip_until.items() if until > now}

    def _write_route(self, episode_ids: np.ndarray, *, skip: set[int]) -> np.ndarray:
        """Each episode's shard: by episode id over all shards, or over the live ones while some are skipped."""
        live = [i for i in range(len(self.shards)) if i not in skip] or list(range(len(self.shards)))
        return np.asarray(live, dtype=np.int64)[route(episode_ids, len(live))]

    # -- learners --------------------------------------------------------------------------------------------
    def sample(self, n: int, *, timeout_s: float | None = None) -> Decisions:
        """n transitions drawn uniformly (with replacement) over all stored ones, as tensors."""
        if n < 1:
            raise ValueError(f"sample size must be positive, got {n}")
        self._wait_to_sample(n, timeout_s)
        parts, missing = [], n
        for _ in range(REDRAWS):
            live, sizes = self._live_sizes()
            if not live:
                raise ValueError("the buffer is empty: add episodes before sampling (or raise buffer.min_size_to_sample)")
            counts = self._rng.multinomial(missing, sizes / sizes.sum())
            draws = [(i, self._rng.integers(0, size, count)) for i, size, count in zip(live, sizes, counts) if count]
            try:
                for part in self._gather_all(draws, lambda shard, rows: shard.gather(rows)):
                    parts.append(part)
                    missing -= len(part)
            except TRANSIENT:
                pass  # a shard died since the refresh: the next one marks it down and the draw goes to the others
            if not missing:
                return self._joined(parts)
            self._refresh()  # writers evicted some drawn rows meanwhile, or a shard died: draw replacements afresh
        raise RuntimeError(f"writers evicted sampled chunks {REDRAWS} times in a row; raise buffer.capacity")

    def _joined(self, parts: list[Decisions]) -> Decisions:
        """The shards' parts as one batch, the states written into reused memory (fresh pages would fault)."""
        if len(parts) == 1:
            return parts[0]
        rows = sum(len(part) for part in parts)
        block = self._batches.lend(2 * rows, parts[0].state.dtype)
        return concat_rows(parts, into={"state": block[:rows], "next_state": block[rows:]})

    def sample_episodes(self, n: int) -> Decisions:
        """n distinct episodes drawn uniformly, rows of each in step order."""
        return self._with_fresh_view(lambda: self._draw_episodes(n))

    def sample_prompt_groups(self, n: int) -> Decisions:
        """Every stored episode of n distinct prompts drawn uniformly; a prompt's episodes are adjacent."""
        return self._with_fresh_view(lambda: self._draw_prompt_groups(n))

    def _draw_episodes(self, n: int) -> Decisions:
        prompts = self._episode_prompts()
        total = sum(len(p) for _, p in prompts)
        if not 1 <= n <= total:
            raise TooFewEpisodes(f"cannot sample {n} distinct episodes: the buffer holds {total}")
        chosen = np.sort(self._rng.choice(total, n, replace=False))
        bounds = np.cumsum([0] + [len(p) for _, p in prompts])
        return self._gather_episodes(
            [(i, chosen[(chosen >= lo) & (chosen < hi)] - lo) for (i, _), lo, hi in zip(prompts, bounds[:-1], bounds[1:])]
        )

    def _draw_prompt_groups(self, n: int) -> Decisions:
        prompts = self._episode_prompts()
        distinct = np.unique(np.concatenate([p for _, p in prompts]))
        if not 1 <= n <= len(distinct):
            raise TooFewEpisodes(f"cannot sample {n} distinct prompts: the buffer holds episodes of {len(distinct)}")
        chosen = self._rng.choice(distinct, n, replace=False)
        batch = self._gather_episodes([(i, np.flatnonzero(np.isin(p, chosen))) for i, p in prompts])
        return select_rows(batch, torch.from_numpy(np.argsort(batch.prompt_id.numpy(), kind="stable")))

    def _with_fresh_view(self, draw: Callable[[], Decisions]) -> Decisions:
        for _ in range(REDRAWS):
            self._refresh()
            try:
                return draw()
            except (ViewOutdated, *TRANSIENT):
                continue  # writers evicted a chosen episode, or its shard died, meanwhile: choose again from a fresh view
        raise RuntimeError(f"writers evicted sampled chunks (or shards died under the draw) {REDRAWS} times in a row; "
                           "raise buffer.capacity, or check the shards")

    def can_sample(self, n: int) -> bool:
        """Whether the rate limiter lets a learner take n transitions now."""
        self._refresh()
        counters = self._totals() if self.limiter.samples_per_insert is not None else ShardCounters()
        return self.limiter.can_sample(n, counters=counters, size=self._size())

    def _wait_to_sample(self, n: int, timeout_s: float | None) -> None:
        wait_until(
            lambda: self.can_sample(n),
            timeout_s=self.sample_timeout_s if timeout_s is None else timeout_s,
            blocked=lambda: "sample blocked by the rate limiter (are the rollout actors writing?): "
            + self.limiter.describe(counters=self._totals(), size=self._size()),
        )

    def _gather_episodes(self, picks: list[tuple[int, np.ndarray]]) -> Decisions:
        picks = [(i, idx) for i, idx in picks if len(idx)]
        return concat_rows(self._gather_all(picks, lambda shard, indices: shard.gather_episodes(indices)))

    def _gather_all(
        self, picks: list[tuple[int, np.ndarray]], gather: Callable[[Shard, np.ndarray], Decisions]
    ) -> list[Decisions]:
        """Run the shards' reads side by side: each waits on its own server, so the waits overlap."""
        if len(picks) == 1:
            return [gather(self.shards[picks[0][0]], picks[0][1])]
        return list(self._readers.map(lambda pick: gather(self.shards[pick[0]], pick[1]), picks))

    def _episode_prompts(self) -> list[tuple[int, np.ndarray]]:
        return [(i, self.shards[i].episode_prompts()) for i in range(len(self.shards)) if i not in self._down]

    # -- shard health ----------------------------------------------------------------------------------------
    def _refresh(self) -> None:
        for index, shard in enumerate(self.shards):
            try:
                shard.refresh()
            except TRANSIENT as err:
                if index not in self._down:
                    warnings.warn(f"{shard.name} is unreachable ({err}); sampling from the live shards", stacklevel=3)
                self._down.add(index)
            else:
                self._down.discard(index)
        if len(self._down) == len(self.shards):
            raise ShardUnavailableError(
                "every shard is unreachable: " + ", ".join(s.name for s in self.shards)
                + "; restart them or fix buffer.redis_urls"
            )

    def _live_sizes(self) -> tuple[list[int], np.ndarray]:
        live = [i for i in range(len(self.shards)) if i not in self._down and len(self.shards[i])]
        return live, np.array([len(self.shards[i]) for i in live], dtype=np.float64)

    def _totals(self) -> ShardCounters:
        total = ShardCounters()
        reachable = self._reachable()
        for index, shard in enumerate(self.shards):
            if shard not in reachable:
                continue
            counters = self._counters_seen[index] = shard.counters()
            total.inserted += counters.inserted
            total.sampled += counters.sampled
            total.evicted += counters.evicted
        return total

    def _server_size(self) -> int:
        return sum(shard.size_now() for shard in self._reachable())

    def _reachable(self) -> list[Shard]:
        """Shards that answer now; the rate limiter counts only these until the others come back."""
        reachable = []
        for shard in self.shards:
            try:
                shard.size_now()
            except TRANSIENT:
                continue
            reachable.append(shard)
        return reachable

    # -- bookkeeping -----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Transitions stored now in the reachable shards."""
        self._refresh()
        return self._size()

    def _size(self) -> int:
        return sum(len(s) for i, s in enumerate(self.shards) if i not in self._down)

    def clear(self) -> None:
        """Drop every stored transition; counters are kept (they are the rate limiter's state)."""
        for shard in self.shards:
            shard.clear()

    def stats(self) -> dict[str, float]:
        """Totals over the shards and each shard's own figures, flat for a logger."""
        self._refresh()
        out: dict[str, float] = {"size": self._size(), "shards_down": len(self._down)}
        for index, shard in enumerate(self.shards):
            if index not in self._down:
                out.update({f"shard{index}/{k}": v for k, v in shard.stats().items()})
        return out

    def state_dict(self) -> dict[str, Any]:
        """Counters of every shard (the rate limiter's state) and the sampler's RNG, for exact resume. A shard
        that is down contributes its last counters read (here or by the rate limiter): a checkpoint never
        waits for a shard."""
        for index, shard in enumerate(self.shards):
            try:
                self._counters_seen[index] = shard.counters()
            except TRANSIENT:
                pass
        return {
            "counters": [vars(counters) for counters in self._counters_seen],
            "rng": self._rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict returned (the sampler's RNG and sampled counts); the number of shards must match."""
        if len(state["counters"]) != len(self.shards):
            raise ValueError(
                f"checkpoint has {len(state['counters'])} shards, this buffer {len(self.shards)}: "
                "resume with the same buffer.num_shards"
            )
        for shard, counters in zip(self.shards, state["counters"]):
            # A shard keeps what actors wrote after the checkpoint (sound episodes, of an older policy), so its
            # own inserted and evicted counts are what it holds; only `sampled`, the learner's, rolls back.
            shard.set_counters(dataclasses.replace(shard.counters(), sampled=ShardCounters(**counters).sampled))
        self._rng.bit_generator.state = state["rng"]

    def close(self) -> None:
        """Close connections; stored data stays where it is."""
        self._readers.shutdown()
        for shard in self.shards:
            shard.close()
