"""Four writer processes add and evict concurrently while a reader samples: nothing lost, duplicated or torn."""
from __future__ import annotations

import multiprocessing
import pickle

import numpy as np
from test_buffer_support import assert_chain, episodes, fleet, redis_spec  # noqa: F401

from tokenalign.buffers.redis_client import connect
from tokenalign.buffers.sharded import route

WRITERS = 4
ADDS = 25
SHARD_CAPACITY = 100


def _writes(writer: int) -> list:
    """Writer w's record batches: three episodes each, of varied lengths, ids w·100 + j (deterministic)."""
    rng = np.random.default_rng(writer)
    return [
        episodes([writer * 100 + 3 * k + i for i in range(3)], length=list(rng.integers(2, 8, 3)))
        for k in range(ADDS)
    ]


def _write_all(spec, writer: int, start=None) -> None:
    buffer = spec.connect()
    batches = _writes(writer)
    if start is not None:
        start.wait()  # all writers begin together, so their adds and evictions interleave
    for batch in batches:
        buffer.add(batch)
    buffer.close()


def test_four_writer_processes_lose_and_duplicate_nothing(fleet) -> None:  # noqa: F811
    spec = redis_spec(fleet, "concurrent", capacity=2 * SHARD_CAPACITY)
    pickle.loads(pickle.dumps(spec))  # what a process pool or Ray does with it
    reader = spec.connect()
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(WRITERS)
    writers = [context.Process(target=_write_all, args=(spec, w, start)) for w in range(WRITERS)]
    for process in writers:
        process.start()
    reads = 0
    while any(p.is_alive() for p in writers):
        if reader.can_sample(32):
            assert_chain(reader.sample(32))  # never a torn or half-evicted row
            reads += 1
    for process in writers:
        process.join()
        assert process.exitcode == 0

    lengths = {}
    for w in range(WRITERS):
        for batch in _writes(w):
            ids, counts = np.unique(batch.column("episode_id").to_numpy(), return_counts=True)
            lengths.update(zip(ids.tolist(), counts.tolist()))
    shard_of = dict(zip(lengths, route(np.array(list(lengths)), 2).tolist()))
    state = reader.state_dict()["counters"]
    for shard in range(2):
        expected_rows = sum(n for e, n in lengths.items() if shard_of[e] == shard)
        assert state[shard]["inserted"] == expected_rows  # each add applied exactly once
        assert state[shard]["inserted"] - state[shard]["evicted"] == len(reader.shards[shard]) <= SHARD_CAPACITY
        client = connect(fleet.urls[shard], password=fleet.password)
        head, tail = (int(v) for v in client.mget("concurrent:head", "concurrent:tail"))
        assert tail == len({(w, k) for w in range(WRITERS) for k in range(ADDS)
                            if any(shard_of[e] == shard for e in _writes(w)[k].column("episode_id").to_pylist())})
        assert sorted(int(k) for k in client.hkeys("concurrent:rows")) == list(range(head, tail + 1))

    reader.can_sample(1)  # refresh the reader's view of both shards
    live = reader.sample_episodes(sum(len(shard.episode_prompts()) for shard in reader.shards))
    ids, counts = np.unique(live.episode_id.numpy(), return_counts=True)
    assert all(lengths[e] == n for e, n in zip(ids.tolist(), counts.tolist()))  # whole, none duplicated
    assert_chain(live)
    for w in range(WRITERS):  # FIFO per writer and shard: what survives is a suffix of what it wrote
        for shard in range(2):
            mine = [e for e in range(w * 100, w * 100 + 3 * ADDS) if shard_of[e] == shard]
            alive = [e in set(ids.tolist()) for e in mine]
            assert alive == sorted(alive)
    assert reads > 0

