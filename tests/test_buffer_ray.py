"""On a Ray cluster: shard servers started by Ray actors, and writers that are Ray actors opening the spec."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import ray
import redis
from test_buffer_support import LAYOUT, assert_chain, episodes, memory_spec  # noqa: F401

from tokenalign.buffers.config import BufferConfig
from tokenalign.buffers.redis_client import connect
from tokenalign.cluster.buffer_servers import launch_buffer


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance whose workers can import this test's helpers."""
    tests_dir = str(Path(__file__).parent)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": tests_dir}})
    yield
    ray.shutdown()


@ray.remote(num_cpus=0)
class Writer:
    """A rollout actor's view of the buffer: it gets the spec, never a client."""

    def __init__(self, spec) -> None:
        self.buffer = spec.connect()

    def write(self, episode_ids: list[int]) -> int:
        self.buffer.add(episodes(episode_ids, length=4))
        return len(episode_ids)


def test_ray_started_shards_serve_actor_writers_and_survive_a_kill(ray_cluster, tmp_path: Path) -> None:
    config = BufferConfig(backend="redis", num_shards=2, capacity=1000, min_size_to_sample=1, seed=0)
    spec, fleet = launch_buffer(config, layout=LAYOUT, data_mode="replay", run_dir=tmp_path, on_ray=True)
    try:
        assert fleet.on_ray and len(fleet.urls) == 2
        writers = [Writer.remote(spec) for _ in range(2)]
        ray.get([w.write.remote([10 * i + j for j in range(5)]) for i, w in enumerate(writers)])
        buffer = spec.connect()
        assert len(buffer) == 40
        assert_chain(buffer.sample(64))
        fleet.kill(1)
        assert not fleet.alive(1)
        fleet.restart(1)
        assert len(spec.connect()) == 40  # reloaded from its append-only file
        ray.kill(fleet._servers[0])  # an actor that dies takes its server with it
        client = connect(fleet.urls[0], password=fleet.password)
        deadline = time.monotonic() + 30
        with pytest.raises(redis.ConnectionError):
            while time.monotonic() < deadline:
                client.ping()
                time.sleep(0.1)
    finally:
        fleet.stop()


def test_a_memory_spec_is_refused_inside_an_actor(ray_cluster) -> None:
    with pytest.raises(ray.exceptions.RayActorError) as failure:
        ray.get(Writer.remote(memory_spec()).write.remote([1]))
    assert "set buffer.backend=redis" in str(failure.value)
