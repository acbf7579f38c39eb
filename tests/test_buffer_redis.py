"""Redis shards against real embedded servers: security, persistence, faults and foreign values."""
from __future__ import annotations

import pickle
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import redis
from test_buffer_support import HIDDEN, LAYOUT, assert_chain, episodes, fleet, redis_spec  # noqa: F401

from tokenalign.buffers.chunk_codec import encode_chunk, layout_signature
from tokenalign.buffers.errors import ForeignValueError
from tokenalign.buffers.layout import RecordLayout, RecordSchemaError, make_record_batch, to_ipc
from tokenalign.buffers.redis_client import connect
from tokenalign.buffers.shard import Columns
from tokenalign.buffers.sharded import route
from tokenalign.cluster.redis_fleet import RedisFleet


class _WritesAFile:
    """Unpickling this creates a file: proof of whether anything was ever unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def _ids_on(shard: int, count: int, num_shards: int = 2, start: int = 0) -> list[int]:
    """The first `count` episode ids from `start` that route to `shard`."""
    ids, candidate = [], start
    while len(ids) < count:
        if int(route(np.array([candidate]), num_shards)[0]) == shard:
            ids.append(candidate)
        candidate += 1
    return ids


def test_servers_bind_loopback_and_require_a_generated_password(fleet: RedisFleet) -> None:
    with pytest.raises(redis.AuthenticationError):
        connect(fleet.urls[0], password=None).ping()
    client = connect(fleet.urls[0], password=fleet.password)
    assert client.config_get("bind")["bind"] == "127.0.0.1"
    assert client.config_get("appendonly")["appendonly"] == "yes"
    assert len(fleet.password) >= 32
    server = fleet._servers[0]
    assert fleet.password not in " ".join(server._process.args)  # never on a command line
    assert (server.run_dir / "redis.conf").stat().st_mode & 0o777 == 0o600
    assert fleet.password not in repr(redis_spec(fleet, "repr"))


def test_killed_shard_restarts_with_its_data(tmp_path: Path) -> None:
    with RedisFleet.start(num_servers=1, run_dir=tmp_path) as one:
        spec = redis_spec(one, "persist", num_shards=1)
        buffer = spec.connect()
        buffer.add(episodes([1, 2, 3], length=4))
        buffer.add(episodes([4], length=6))
        counters = buffer.state_dict()["counters"]
        one.kill(0)
        assert not one.alive(0)
        one.restart(0)
        reopened = spec.connect()
        assert len(reopened) == 18
        batch = reopened.sample_episodes(4)
        assert sorted(set(batch.episode_id.tolist())) == [1, 2, 3, 4]
        assert_chain(batch)
        assert reopened.state_dict()["counters"][0]["inserted"] == counters[0]["inserted"]
        reopened.add(episodes([5]))  # ids continue after the reloaded ones
        assert len(reopened) == 23


def test_dead_shard_writers_route_around_it_naming_it_and_sampling_goes_on(tmp_path: Path) -> None:
    with RedisFleet.start(num_servers=2, run_dir=tmp_path) as two:
        buffer = redis_spec(two, "faults").connect()
        on0, on1 = _ids_on(0, 3), _ids_on(1, 3)
        buffer.add(episodes(on0 + on1))
        two.kill(1)
        with pytest.warns(UserWarning, match="redis shard 1 at redis://127.0.0.1:.* is unreachable"):
            batch = buffer.sample(64)
        assert set(batch.episode_id.tolist()) <= set(on0)
        started = time.monotonic()
        new = _ids_on(0, 1, start=100) + _ids_on(1, 1, start=100)
        with pytest.warns(UserWarning, match=r"redis shard 1 at redis://127\.0\.0\.1:\d+/0 stayed unreachable.*"
                                             r"its episodes were written to the live shards"):
            buffer.add(episodes(new))
        assert time.monotonic() - started >= 0.9  # it retried for write_timeout_s, not once
        two.restart(1)
        assert len(buffer) == 8 * 5  # both new episodes on shard 0; shard 1 kept its data
        assert set(buffer.sample_episodes(8).episode_id.tolist()) == set(on0 + on1 + new)


def test_an_episode_draw_that_meets_its_shard_dying_draws_again_from_the_live_ones(tmp_path: Path) -> None:
    """The shard dies after the view that chose the episodes was read (a chaos run met it: the learner died)."""
    with RedisFleet.start(num_servers=2, run_dir=tmp_path) as two:
        buffer = redis_spec(two, "faults").connect()
        on0, on1 = _ids_on(0, 3), _ids_on(1, 3)
        buffer.add(episodes(on0 + on1))
        gather, calls = buffer._gather_episodes, []

        def shard_dies_first(picks):
            calls.append([shard for shard, rows in picks if len(rows)])
            if len(calls) == 1:
                two.kill(1)
            return gather(picks)

        buffer._gather_episodes = shard_dies_first
        with pytest.warns(UserWarning, match="redis shard 1 at redis://127.0.0.1:.* is unreachable"):
            batch = buffer.sample_episodes(3)
        assert 1 in calls[0] and calls[-1] == [0]  # the first draw reached the dying shard, the last only the live one
        assert set(batch.episode_id.tolist()) == set(on0)


def test_a_writer_retrying_through_a_restart_writes_once(tmp_path: Path) -> None:
    with RedisFleet.start(num_servers=1, run_dir=tmp_path) as one:
        buffer = redis_spec(one, "retry", num_shards=1, write_timeout_s=30.0).connect()
        one.kill(0)
        restarter = threading.Timer(0.5, one.restart, args=(0,))
        restarter.start()
        buffer.add(episodes([1, 2]))  # fails fast, backs off, succeeds once the server is back
        restarter.join()
        assert len(buffer) == 10
        assert buffer.state_dict()["counters"][0]["inserted"] == 10


def test_a_replayed_add_token_is_applied_once(fleet: RedisFleet) -> None:
    buffer = redis_spec(fleet, "token", num_shards=1).connect()
    shard = buffer.shards[0]
    meta, states = encode_chunk(Columns.from_batch(episodes([1]), layout=LAYOUT), layout=LAYOUT)
    args = ["token", "same-token", 5, shard.capacity, layout_signature(LAYOUT), meta, states, 60]
    assert shard._add_script(args=args) == shard._add_script(args=args) == 1
    assert len(buffer) == 5


def test_foreign_values_are_refused_and_never_unpickled(fleet: RedisFleet, tmp_path: Path) -> None:
    spec = redis_spec(fleet, "foreign", num_shards=1)
    spec.connect().add(episodes([1, 2]))
    client = connect(fleet.urls[0], password=fleet.password)
    marker = tmp_path / "pwned"
    client.set("foreign:meta:1", pickle.dumps(_WritesAFile(marker)))
    with pytest.raises(ForeignValueError, match="'foreign:meta:1' holds a value this buffer did not write"):
        spec.connect().sample(4)
    assert not marker.exists()

    # Readers meet a states value where they read it: row by row without a mirror, whole when a mirror first
    # copies the chunk (a chunk already copied is not read again).
    spec = redis_spec(fleet, "foreign2", num_shards=1, mirror_gib=0)
    buffer = spec.connect()
    buffer.add(episodes([1, 2]))
    buffer.sample(4)
    mirroring = redis_spec(fleet, "foreign2", num_shards=1).connect()
    mirroring.can_sample(1)  # indexed before the value is replaced, mirrored after
    client.set("foreign2:states:1", pickle.dumps(_WritesAFile(marker)))
    for reader in (buffer, mirroring):
        with pytest.raises(ForeignValueError, match="'foreign2:states:1' holds a value this buffer did not write .not the states"):
            reader.sample(64)
    with pytest.raises(ForeignValueError, match="foreign2:states:1"):
        spec.connect().sample(4)
    client.delete("foreign2:states:1")
    client.lpush("foreign2:states:1", "not a string")
    with pytest.raises(ForeignValueError, match="'foreign2:states:1' holds a value this buffer did not write .not a string"):
        buffer.sample(64)
    assert not marker.exists()


def test_writers_with_another_hidden_size_are_refused(fleet: RedisFleet) -> None:
    redis_spec(fleet, "hidden", num_shards=1).connect().add(episodes([1]))
    other = redis_spec(fleet, "hidden", num_shards=1)
    other = type(other)(other.data_mode, RecordLayout(state_size=HIDDEN * 2, scorers=LAYOUT.scorers), other.config,
                        other.redis_urls, other.password)
    with pytest.raises(RecordSchemaError, match="namespace 'hidden' holds states of size 32"):
        other.connect().add(episodes([2], hidden=HIDDEN * 2))


def test_a_buffer_written_by_an_older_version_is_refused_with_one_message(fleet: RedisFleet) -> None:
    """Version-1 records held concluded rewards, not raw scores: nothing of them can be relabelled."""
    client = connect(fleet.urls[0], password=fleet.password)
    client.set("old:hidden_size", HIDDEN)  # what a version-1 writer left in its namespace
    with pytest.raises(RecordSchemaError, match="schema version 1.*written by an older tokenalign.*Start a new run"):
        redis_spec(fleet, "old", num_shards=1).connect().add(episodes([1]))
    old = episodes([1])
    old = old.replace_schema_metadata({**old.schema.metadata, b"tokenalign.schema_version": b"1"})
    with pytest.raises(RecordSchemaError, match="schema version 1"):
        redis_spec(fleet, "old2", num_shards=1).connect().add(old)
    queue = redis_spec(fleet, "old3", num_shards=1, data_mode="on_policy").connect()
    client.rpush("old3:queue", to_ipc(old))
    client.rpush("old3:queue_rows", old.num_rows)
    with pytest.raises(ForeignValueError, match="schema version 1"):
        queue.get(1, learner_version=0, timeout_s=0.5)


def test_writers_with_other_scorers_are_refused(fleet: RedisFleet) -> None:
    redis_spec(fleet, "scorers", num_shards=1).connect().add(episodes([1]))
    other = redis_spec(fleet, "scorers", num_shards=1)
    layout = RecordLayout(state_size=HIDDEN, scorers=("quality", "harm", "extra"))
    other = type(other)(other.data_mode, layout, other.config, other.redis_urls, other.password)
    batch = make_record_batch(layout=layout, **{k: v for k, v in _columns(episodes([2])).items()},
                              scores=np.zeros((5, 3)), baseline_scores=np.zeros((5, 3)))
    with pytest.raises(RecordSchemaError, match="scorers \\['quality', 'harm'\\].*use the same reward config"):
        other.connect().add(batch)


def _columns(batch) -> dict[str, np.ndarray]:
    """The fixed per-decision columns and the state of a record batch, as make_record_batch takes them."""
    fixed = {f.name: batch.column(f.name).to_numpy(zero_copy_only=False) for f in batch.schema
             if ":" not in f.name and f.name != "state"}
    state = batch.column("state").flatten().to_numpy(zero_copy_only=False).reshape(batch.num_rows, -1)
    return {**fixed, "state": state}


def test_a_checkpoint_never_waits_for_a_dead_shard_and_a_restarted_one_rejoins(tmp_path: Path) -> None:
    with RedisFleet.start(num_servers=2, run_dir=tmp_path) as two:
        buffer = redis_spec(two, "down", num_shards=2, write_timeout_s=1.0).connect()
        buffer.add(episodes([1, 2, 3, 4]))
        held = buffer.state_dict()["counters"]
        two.kill(1)
        state = buffer.state_dict()  # shard 1 is down: its last counters stand in
        assert state["counters"] == held
        restarts: list[int] = []
        watcher = two.keep_alive(on_restart=restarts.append, interval_s=0.1)
        try:
            deadline = time.monotonic() + 20
            while not restarts and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            watcher.set()
        assert restarts == [1] and two.alive(1)
        assert [vars(s.counters()) for s in buffer.shards] == held  # its data came back from the append-only file
        assert len(buffer) == 20


def test_writers_route_around_a_dead_shard_and_return_to_it_once_it_is_back(tmp_path: Path) -> None:
    with RedisFleet.start(num_servers=2, run_dir=tmp_path) as two:
        buffer = redis_spec(two, "around", num_shards=2, write_timeout_s=0.5).connect()
        ids = list(range(1, 21))
        assert set(route(np.array(ids), 2).tolist()) == {0, 1}  # these episodes use both shards
        two.kill(1)
        with pytest.warns(UserWarning, match="its episodes were written to the live shards"):
            buffer.add(episodes(ids))  # shard 1 fails after its retry window; its episodes go to shard 0
        assert buffer.shards[0].counters().inserted == 5 * len(ids)  # every episode, each written once
        started = time.monotonic()
        buffer.add(episodes([21, 22, 23, 24]))  # within the window: shard 1 is skipped without a wait
        assert time.monotonic() - started < 0.4
        assert buffer.shards[0].counters().inserted == 5 * (len(ids) + 4)
        two.restart(1)
        time.sleep(0.6)  # the window has passed: the shard is tried again and takes its share
        buffer.add(episodes(list(range(30, 50))))
        assert buffer.shards[1].counters().inserted > 0
