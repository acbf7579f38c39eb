"""Reverb's SampleToInsertRatio rate limiter, counted in transitions over all shards.

Reverb keeps inserts / samples / deletes next to its table; here they are each shard's ShardCounters, kept
with the data (in Redis for Redis shards) so writers in other processes see them, and checkpointed by
ShardedReplayBuffer.state_dict. This class is the rule over those counters, and the waiting.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable

from tokenalign.buffers.errors import RateLimitTimeout
from tokenalign.buffers.shard import ShardCounters

ACME_TOLERANCE_RATE = 0.1  # Acme agents: error_buffer = min_replay_size · samples_per_insert · 0.1


def error_band(*, min_size_to_sample: int, samples_per_insert: float, error_buffer: float | None) -> float:
    """How far samples may drift either way from samples_per_insert · inserts: error_buffer, or Acme's default."""
    return error_buffer if error_buffer is not None else samples_per_insert * min_size_to_sample * ACME_TOLERANCE_RATE


class SampleToInsertRatio:
    """Keep samples ≈ samples_per_insert · inserts within ±error_buffer, once min_size_to_sample is reached.

    diff = inserted · samples_per_insert − sampled. A sample of n needs size ≥ min_size_to_sample and
    diff − n ≥ min_diff; an insert of m is free while size + m ≤ min_size_to_sample, else needs
    (inserted + m) · samples_per_insert − sampled ≤ max_diff, where min/max_diff = spi·min_size ∓ error_buffer.
    With samples_per_insert None only the min-size rule applies (Reverb's MinSize limiter).
    """

    def __init__(
        self, *, min_size_to_sample: int, samples_per_insert: float | None = None, error_buffer: float | None = None
    ) -> None:
        if min_size_to_sample < 0:
            raise ValueError(f"min_size_to_sample must be 0 or more, got {min_size_to_sample}")
        self.min_size_to_sample = min_size_to_sample
        self.samples_per_insert = samples_per_insert
        if samples_per_insert is None:
            self.min_diff, self.max_diff = -math.inf, math.inf
            return
        offset = samples_per_insert * min_size_to_sample
        band = error_band(min_size_to_sample=min_size_to_sample, samples_per_insert=samples_per_insert,
                          error_buffer=error_buffer)
        self.min_diff, self.max_diff = offset - band, offset + band
        if self.max_diff - self.min_diff < 2 * max(1.0, samples_per_insert):  # Reverb's guard against deadlock
            raise ValueError(
                f"error_buffer {band} is too small for samples_per_insert {samples_per_insert}: "
                f"it must be at least {max(1.0, samples_per_insert)}"
            )

    def _diff(self, counters: ShardCounters) -> float:
        return counters.inserted * (self.samples_per_insert or 0.0) - counters.sampled

    def can_sample(self, n: int, *, counters: ShardCounters, size: int) -> bool:
        """Whether a learner may take n transitions now."""
        if n > self.max_diff - self.min_diff:
            raise ValueError(
                f"a batch of {n} can never be sampled within an error band of {self.max_diff - self.min_diff:g} "
                "transitions; raise buffer.error_buffer above half the batch size"
            )
        return size >= self.min_size_to_sample and self._diff(counters) - n >= self.min_diff

    def can_insert(self, n: int, *, counters: ShardCounters, size: int) -> bool:
        """Whether writers may add n transitions now."""
        if size + n <= self.min_size_to_sample:
            return True
        return (counters.inserted + n) * (self.samples_per_insert or 0.0) - counters.sampled <= self.max_diff

    def describe(self, *, counters: ShardCounters, size: int) -> str:
        """The state a timeout message reports."""
        return (
            f"size {size} (min_size_to_sample {self.min_size_to_sample}), inserted {counters.inserted}, "
            f"sampled {counters.sampled}, samples_per_insert {self.samples_per_insert}, "
            f"diff {self._diff(counters):g} allowed in [{self.min_diff:g}, {self.max_diff:g}]"
        )


def wait_until(allowed: Callable[[], bool], *, timeout_s: float, blocked: Callable[[], str]) -> None:
    """Poll `allowed` with exponential backoff; raise RateLimitTimeout with `blocked()` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    delay = 0.001
    while not allowed():
        if time.monotonic() >= deadline:
            raise RateLimitTimeout(blocked())
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.1)
