"""A run's buffer servers: the BufferSpec actors connect with, starting embedded Redis servers when none are given."""
from __future__ import annotations

from pathlib import Path

from tokenalign.buffers.config import BufferConfig
from tokenalign.buffers.layout import RecordLayout
from tokenalign.buffers.redis_client import redis_password
from tokenalign.buffers.spec import BufferSpec
from tokenalign.cluster.redis_fleet import RedisFleet


def launch_buffer(
    config: BufferConfig, *, layout: RecordLayout, data_mode: str, run_dir: str | Path, on_ray: bool = False
) -> tuple[BufferSpec, RedisFleet | None]:
    """The run's BufferSpec, starting embedded Redis servers (in run_dir, or from Ray actors) when none are given.

    The caller owns the returned fleet and stops it at the end of the run (its data stays in run_dir).
    """
    if config.backend == "memory" or config.redis_urls:
        return BufferSpec(data_mode, layout, config, tuple(config.redis_urls), redis_password()), None
    start = RedisFleet.start_on_ray if on_ray else RedisFleet.start
    fleet = start(num_servers=config.num_shards, run_dir=Path(run_dir) / "buffer", appendfsync=config.appendfsync)
    return BufferSpec(data_mode, layout, config, tuple(fleet.urls), fleet.password), fleet
