"""The learner-side state mirror of Redis shards, against real embedded servers: the same samples as reading every
row from Redis, nothing evicted, nothing stale after a shard loses its data, and its memory bound."""
from __future__ import annotations

import shutil
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from test_buffer_support import HIDDEN, assert_chain, assert_observed_columns, episodes, fleet, redis_spec  # noqa: F401

from tokenalign.buffers import redis_shard
from tokenalign.buffers.batches import select_rows
from tokenalign.buffers.config import BufferConfig
from tokenalign.buffers.errors import BufferSpecError
from tokenalign.cluster.redis_fleet import RedisFleet

ROW_BYTES = 2 * HIDDEN  # float16 states


def _assert_same(a, b) -> None:
    for field in fields(a):
        x, y = getattr(a, field.name), getattr(b, field.name)
        assert (x is None and y is None) if x is None or y is None else torch.equal(x, y), field.name


def _by_transition(batch):
    """The batch's rows sorted by (episode, step): a batch is a multiset of draws."""
    return select_rows(batch, torch.from_numpy(np.lexsort((batch.step.numpy(), batch.episode_id.numpy()))))


def _held_chunks(shard) -> list[int]:
    """Ids of the chunks whose states the shard's mirror holds."""
    ids = np.array(sorted(shard._metas))
    return ids[shard._mirror.locate(ids, np.zeros_like(ids)) >= 0].tolist()


def test_mirrored_samples_are_the_stored_transitions_drawn_as_without_a_mirror(
    fleet: RedisFleet, monkeypatch  # noqa: F811
) -> None:
    monkeypatch.setattr(redis_shard, "FILL_BYTES", 1)  # one chunk per pipelined read: the batching is exercised too
    plain = redis_spec(fleet, "mirror-same", mirror_gib=0).connect()
    for first in range(0, 60, 6):
        plain.add(episodes(list(range(first, first + 6)), length=[1 + (first + i) % 9 for i in range(6)]))
    mirrored = redis_spec(fleet, "mirror-same").connect()  # same seed, so the same draws
    for _ in range(3):
        batch = mirrored.sample(512)
        _assert_same(batch, plain.sample(512))
        assert_chain(batch)
        assert_observed_columns(batch)
    for shard in mirrored.shards:
        assert shard._mirror.held_rows == len(shard) > 0  # every row came from the mirror


def test_evicted_chunks_are_dropped_from_the_mirror_and_never_sampled(fleet: RedisFleet) -> None:  # noqa: F811
    buffer = redis_spec(fleet, "mirror-evict", capacity=40, num_shards=1).connect()
    for first in range(0, 30, 3):  # chunks of 3 episodes × 4 decisions; the shard keeps the newest three
        buffer.add(episodes([first, first + 1, first + 2], length=4))
        live = set(range(max(0, first - 6), first + 3))
        assert set(buffer.sample(256).episode_id.tolist()) == live
        shard = buffer.shards[0]
        assert _held_chunks(shard) == sorted(shard._metas) and shard._mirror.held_rows == len(shard)
    redis_spec(fleet, "mirror-evict", capacity=40, num_shards=1).connect().clear()  # another process evicts all
    assert len(buffer) == 0 and buffer.shards[0]._mirror.held_rows == 0


def test_a_shard_that_lost_its_data_is_mirrored_afresh(tmp_path: Path) -> None:
    with RedisFleet.start(num_servers=1, run_dir=tmp_path) as one:
        buffer = redis_spec(one, "mirror-restart", num_shards=1).connect()
        buffer.add(episodes([1, 2]))
        buffer.add(episodes([3]))
        assert set(buffer.sample(128).episode_id.tolist()) == {1, 2, 3}

        one.kill(0)
        one.restart(0)  # with its append-only file: the same chunks, still valid in the mirror
        batch = buffer.sample(128)
        assert set(batch.episode_id.tolist()) == {1, 2, 3}
        assert_chain(batch)

        one.kill(0)
        for path in one._servers[0].run_dir.glob("appendonly*"):  # restarted without its files
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        one.restart(0)
        # New chunks reuse ids 1, 2, 3 with other states, and the tail passes the reader's newest id.
        writer = redis_spec(one, "mirror-restart", num_shards=1).connect()
        for ids in ([10, 11], [12], [13]):
            writer.add(episodes(ids, length=3))
        batch = buffer.sample(256)
        assert set(batch.episode_id.tolist()) == {10, 11, 12, 13}
        assert_chain(batch)  # states agree with the scalars: nothing kept from before the loss
        assert_observed_columns(batch)


def test_the_memory_bound_holds_the_newest_chunks_and_leaves_the_draws_alone(fleet: RedisFleet) -> None:  # noqa: F811
    budget = 25  # rows: the two newest chunks of 12
    plain = redis_spec(fleet, "mirror-bound", num_shards=1, mirror_gib=0).connect()
    for first in range(0, 15, 3):
        plain.add(episodes([first, first + 1, first + 2], length=4))
    bounded = redis_spec(fleet, "mirror-bound", num_shards=1, mirror_gib=budget * ROW_BYTES / 2**30).connect()
    batch = bounded.sample(20_000)
    shard = bounded.shards[0]
    assert shard._mirror.rows == budget and bounded.stats()["shard0/mirrored"] == 24
    assert _held_chunks(shard) == [4, 5]
    assert shard._mirror._ring.columns["state"].shape[0] == budget + 1  # what it allocated: the budget and one zero row
    assert_chain(batch)
    assert_observed_columns(batch)
    # The same draws as reading every row from Redis (mirrored rows come first, so compare as multisets) ...
    _assert_same(_by_transition(batch), _by_transition(plain.sample(20_000)))
    # ... and so uniform over all 60 stored transitions, mirrored or not.
    counts = np.bincount((batch.episode_id * 4 + batch.step).numpy(), minlength=60)
    assert (counts > 0).all()
    chi2 = float(((counts - 20_000 / 60) ** 2 / (20_000 / 60)).sum())
    assert chi2 < 60 + 5 * np.sqrt(2 * 60)  # χ² with 59 dof, 5 sigma


def test_a_negative_budget_is_refused() -> None:
    with pytest.raises(BufferSpecError, match="buffer.mirror_gib is -1"):
        BufferConfig(mirror_gib=-1)
