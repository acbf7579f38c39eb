"""BufferConfig: the user-facing `buffer:` section of a run config."""
from __future__ import annotations

from dataclasses import dataclass, field

from tokenalign.buffers.errors import BufferSpecError

BACKENDS = ("memory", "redis")
STATE_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class BufferConfig:
    """Where decisions are stored, how much, and how fast a learner may consume them."""

    backend: str = "redis"  # DESIGN.md: embedded Redis servers by default, so actors in other processes can write
    """"redis": shards that actors in other processes reach; "memory": an in-process numpy ring (one process, fastest)."""
    num_shards: int = 1
    """Number of shards; episodes are routed to one by episode_id. Each Redis shard is one server."""
    capacity: int = 1_000_000  # MARA train script: buffer size 1e6
    """Transitions kept over all shards (each holds capacity / num_shards); the oldest whole chunks go first."""
    redis_urls: list[str] = field(default_factory=list)
    """redis:// URLs of external servers, one per shard, used as given; empty starts embedded servers."""
    namespace: str = "tokenalign"
    """Prefix of every Redis key this buffer owns, so several buffers can share servers."""
    appendfsync: str = "always"
    """Embedded servers' AOF fsync policy; "always" since one add is one large command, so a killed shard loses
    nothing it acknowledged."""
    min_size_to_sample: int = 1024 * 64 + 1  # MARA train script: learning starts once len(buffer) > batch_size·64
    """Transitions the buffer must hold before a learner may sample (Reverb's min_size_to_sample)."""
    samples_per_insert: float | None = None  # MARA does not bound the ratio: Reverb's MinSize limiter
    """Sampled transitions per inserted one the learner should keep to; None leaves only the min-size rule."""
    error_buffer: float | None = None
    """Allowed drift of samples - inserts·samples_per_insert around its target; None is Acme's min_size·ratio·0.1."""
    max_policy_lag: int = 1  # actors switch weights between episodes (DESIGN.md), so one version of slack
    """On-policy queue: episodes whose policy_version trails the learner's by more than this are dropped."""
    write_timeout_s: float = 30.0
    """How long a writer retries an unreachable shard, or waits on the rate limiter, before raising."""
    sample_timeout_s: float = 60.0
    """How long sample() waits for the rate limiter to allow it before raising."""
    seed: int | None = None
    """Seed of the sampler's random generator; None draws one from the OS."""
    state_dtype: str = "float16"
    """dtype of sampled state / next_state: "float16" (as stored; half the bytes to build and to move to a GPU,
    the learner converts on its device), or "float32" (converted on the host)."""

    mirror_gib: float = 8.0  # MARA's whole buffer: 1e6 transitions of 4096-d float16 states are 7.6 GiB
    """Host memory (GiB) a sampling process may fill with copies of Redis-held states (newest first), sampled locally."""

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise BufferSpecError(f"buffer.backend is {self.backend!r}; choose one of {BACKENDS}")
        if self.num_shards < 1:
            raise BufferSpecError(f"buffer.num_shards is {self.num_shards}; it must be at least 1")
        if self.capacity < self.num_shards:
            raise BufferSpecError(
                f"buffer.capacity {self.capacity} is smaller than buffer.num_shards {self.num_shards}; raise the capacity"
            )
        if self.redis_urls and len(self.redis_urls) != self.num_shards:
            raise BufferSpecError(
                f"buffer.redis_urls has {len(self.redis_urls)} URLs but buffer.num_shards is {self.num_shards}; "
                "give one URL per shard (or none, to start embedded servers)"
            )
        if self.redis_urls and self.backend != "redis":
            raise BufferSpecError("buffer.redis_urls is set but buffer.backend is 'memory'; set buffer.backend=redis")
        if not self.namespace or not self.namespace.isascii() or any(c.isspace() for c in self.namespace):
            raise BufferSpecError(f"buffer.namespace is {self.namespace!r}; use ASCII letters, digits and ':_-'")
        if self.appendfsync not in ("always", "everysec", "no"):
            raise BufferSpecError(f"buffer.appendfsync is {self.appendfsync!r}; use always, everysec or no")
        if self.samples_per_insert is not None and self.samples_per_insert <= 0:
            raise BufferSpecError(f"buffer.samples_per_insert is {self.samples_per_insert}; give a positive ratio or None")
        if self.state_dtype not in STATE_DTYPES:
            raise BufferSpecError(f"buffer.state_dtype is {self.state_dtype!r}; choose one of {STATE_DTYPES}")
        if self.mirror_gib < 0:
            raise BufferSpecError(f"buffer.mirror_gib is {self.mirror_gib}; give 0 (read every sample from Redis) or more")
        if self.seed is not None and self.seed < 0:
            raise BufferSpecError(f"buffer.seed is {self.seed}; give a seed ≥ 0 or null")
        if self.max_policy_lag < 0:
            raise BufferSpecError(f"buffer.max_policy_lag is {self.max_policy_lag}; it must be 0 or more")

    @property
    def shard_capacity(self) -> int:
        """Transitions one shard holds."""
        return -(-self.capacity // self.num_shards)
