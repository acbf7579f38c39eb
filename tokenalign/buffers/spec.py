"""BufferSpec: the small picklable description from which any process re-creates the run's buffer."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from tokenalign.buffers.config import BufferConfig
from tokenalign.buffers.episode_queue import EpisodeQueue
from tokenalign.buffers.episode_store import MemoryEpisodeStore, RedisEpisodeStore
from tokenalign.buffers.errors import BufferSpecError
from tokenalign.buffers.layout import RecordLayout
from tokenalign.buffers.memory import MemoryShard
from tokenalign.buffers.rate_limiter import SampleToInsertRatio
from tokenalign.buffers.redis_shard import RedisShard
from tokenalign.buffers.sharded import ShardedReplayBuffer

DATA_MODES = ("replay", "on_policy")


@dataclass(frozen=True)
class BufferSpec:
    """Everything needed to open the buffer: Ray ships this to actors, who call `spec.connect()`."""

    data_mode: str
    """"replay" opens a ShardedReplayBuffer (SAC); "on_policy" an EpisodeQueue (PPO, RLOO)."""
    layout: RecordLayout
    """What every record batch holds (state size, scorer names, preference size); each must match it."""
    config: BufferConfig
    """The buffer section of the run config."""
    redis_urls: tuple[str, ...] = ()
    """One URL per shard (redis backend)."""
    password: str | None = field(default=None, repr=False)
    """Password of the embedded servers (external URLs carry their own); kept out of repr and logs."""
    owner_pid: int = field(default_factory=os.getpid)
    """Process that made the spec: the only one a memory buffer can live in."""

    def __post_init__(self) -> None:
        if self.data_mode not in DATA_MODES:
            raise BufferSpecError(f"data_mode is {self.data_mode!r}; the learner's data_mode must be one of {DATA_MODES}")
        if self.config.backend == "redis" and len(self.redis_urls) != self.config.num_shards:
            raise BufferSpecError(
                f"the redis backend needs one URL per shard ({self.config.num_shards}), got {len(self.redis_urls)}: "
                "use tokenalign.cluster.buffer_servers.launch_buffer() to start embedded servers, or set buffer.redis_urls"
            )

    def connect(self) -> ShardedReplayBuffer | EpisodeQueue:
        """Open the buffer in this process (Redis: new connections to the shared shards)."""
        cfg = self.config
        if self.config.backend == "memory" and os.getpid() != self.owner_pid:
            raise BufferSpecError(
                "a memory buffer lives in the process that made its spec and cannot be reached from another "
                "process (a Ray actor?): set buffer.backend=redis"
            )
        if self.data_mode == "on_policy":
            return EpisodeQueue(
                stores=self._stores(), layout=self.layout, max_policy_lag=cfg.max_policy_lag,
                write_timeout_s=cfg.write_timeout_s, sample_timeout_s=cfg.sample_timeout_s, state_dtype=self._state_dtype,
            )
        limiter = SampleToInsertRatio(
            min_size_to_sample=cfg.min_size_to_sample, samples_per_insert=cfg.samples_per_insert,
            error_buffer=cfg.error_buffer,
        )
        return ShardedReplayBuffer(
            shards=self._shards(), layout=self.layout, limiter=limiter,
            write_timeout_s=cfg.write_timeout_s, sample_timeout_s=cfg.sample_timeout_s, seed=cfg.seed,
        )

    def _shards(self) -> list[MemoryShard | RedisShard]:
        cfg = self.config
        if self.config.backend == "memory":
            return [
                MemoryShard(
                    layout=self.layout, capacity=cfg.shard_capacity, name=f"memory shard {i}",
                    state_dtype=self._state_dtype,
                )
                for i in range(cfg.num_shards)
            ]
        return [
            RedisShard(
                url=url, password=self.password, namespace=cfg.namespace, layout=self.layout,
                capacity=cfg.shard_capacity, write_timeout_s=cfg.write_timeout_s, index=i, state_dtype=self._state_dtype,
                mirror_bytes=int(cfg.mirror_gib * 2**30) // cfg.num_shards,
            )
            for i, url in enumerate(self.redis_urls)
        ]

    @property
    def _state_dtype(self) -> torch.dtype:
        return getattr(torch, self.config.state_dtype)

    def _stores(self) -> list[MemoryEpisodeStore | RedisEpisodeStore]:
        cfg = self.config
        if self.config.backend == "memory":
            return [MemoryEpisodeStore(capacity=cfg.shard_capacity, name=f"memory queue {i}") for i in range(cfg.num_shards)]
        return [
            RedisEpisodeStore(
                url=url, password=self.password, namespace=cfg.namespace, layout=self.layout,
                capacity=cfg.shard_capacity, write_timeout_s=cfg.write_timeout_s, index=i,
            )
            for i, url in enumerate(self.redis_urls)
        ]
