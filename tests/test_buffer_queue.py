"""The on-policy episode queue: FIFO, each episode once, prompt groups, staleness, foreign items, backpressure."""
from __future__ import annotations

import itertools
import pickle

import pytest
import torch
from test_buffer_support import assert_chain, assert_observed_columns, episodes, fleet, memory_spec, redis_spec  # noqa: F401

from tokenalign.buffers.errors import ForeignValueError, RateLimitTimeout
from tokenalign.buffers.layout import RecordSchemaError
from tokenalign.buffers.redis_client import connect

_namespaces = itertools.count()


@pytest.fixture(params=["memory", "redis"])
def make_queue(request: pytest.FixtureRequest):
    """Factory of on-policy queues of the parametrized backend (Redis: a fresh namespace on shared servers)."""
    opened = []

    def make(**overrides):
        if request.param == "memory":
            spec = memory_spec(data_mode="on_policy", **overrides)
        else:
            namespace = f"queue-{next(_namespaces)}"
            spec = redis_spec(request.getfixturevalue("fleet"), namespace, data_mode="on_policy", **overrides)
        queue = spec.connect()
        opened.append(queue)
        return queue

    yield make
    for queue in opened:
        queue.close()


def _episode_order(batch) -> list[int]:
    ids = batch.episode_id.tolist()
    return [e for i, e in enumerate(ids) if i == 0 or ids[i - 1] != e]


def test_episodes_come_whole_in_order_and_once(make_queue) -> None:
    queue = make_queue(num_shards=1)
    queue.add(episodes([1, 2, 3], length=[3, 4, 5]))
    queue.add(episodes([4], length=2))
    first = queue.get(2, learner_version=0)
    assert _episode_order(first) == [1, 2]
    assert_chain(first)
    assert_observed_columns(first)
    assert first.step.tolist() == [0, 1, 2, 0, 1, 2, 3]
    rest = queue.get(2, learner_version=0)
    assert _episode_order(rest) == [3, 4]
    with pytest.raises(RateLimitTimeout, match="only 0 of 1 groups"):
        queue.get(1, learner_version=0, timeout_s=0.05)
    assert queue.stats()["delivered"] == 4
    assert first.state.dtype == torch.float16  # as stored; the learner converts on its device
    full = make_queue(state_dtype="float32")
    full.add(episodes([5]))
    assert full.get(1, learner_version=0).next_state.dtype == torch.float32


def test_prompt_groups_wait_until_complete_and_stay_together(make_queue) -> None:
    queue = make_queue()
    queue.add(episodes([10, 20, 11], prompt_ids=[1, 2, 1]))
    queue.add(episodes([30, 21], prompt_ids=[3, 2]))
    batch = queue.get(2, learner_version=0, group_size=2)
    assert _episode_order(batch) in ([10, 11, 20, 21], [11, 10, 20, 21], [10, 11, 21, 20], [11, 10, 21, 20])
    assert batch.prompt_id.unique_consecutive().tolist() == [1, 2]
    assert_chain(batch)
    with pytest.raises(RateLimitTimeout):
        queue.get(1, learner_version=0, group_size=2, timeout_s=0.05)  # prompt 3 has one of its two
    queue.add(episodes([31], prompt_ids=[3]))
    assert sorted(_episode_order(queue.get(1, learner_version=0, group_size=2))) == [30, 31]


def test_stale_episodes_are_dropped_and_counted(make_queue) -> None:
    queue = make_queue(max_policy_lag=1)
    queue.add(episodes([1, 2], version=3))
    queue.add(episodes([3], version=4))
    queue.add(episodes([4], version=5))
    batch = queue.get(2, learner_version=5)
    assert sorted(_episode_order(batch)) == [3, 4]
    assert torch.all(batch.policy_version >= 4)
    assert queue.state_dict() == {"delivered": 2, "dropped_stale": 2, "dropped_future": 0}
    queue.load_state_dict({"delivered": 7, "dropped_stale": 1, "dropped_future": 3})
    assert queue.stats()["dropped_stale"] == 1 and queue.stats()["dropped_future"] == 3


def test_episodes_newer_than_a_resumed_learner_are_dropped_and_counted(make_queue) -> None:
    # Written at versions 6 and 7 before a crash; the learner resumed from its checkpoint at version 5.
    queue = make_queue(max_policy_lag=1)
    queue.add(episodes([1], version=6))
    queue.add(episodes([2], version=7))
    queue.add(episodes([3], version=5))
    assert _episode_order(queue.get(1, learner_version=5)) == [3]
    assert queue.stats()["dropped_future"] == 2 and queue.stats()["dropped_stale"] == 0
    with pytest.raises(RateLimitTimeout):
        queue.get(1, learner_version=5, timeout_s=0.05)


def test_bad_batches_are_refused_before_anything_is_queued(make_queue) -> None:
    queue = make_queue()
    with pytest.raises(RecordSchemaError, match="whole and in step order"):
        queue.add(episodes([1, 2]).slice(1))
    with pytest.raises(RecordSchemaError, match="state size"):
        queue.add(episodes([1], hidden=8))
    assert len(queue) == 0


def test_a_full_queue_blocks_writers(make_queue) -> None:
    queue = make_queue(num_shards=1, capacity=10)
    queue.add(episodes([1, 2]))
    with pytest.raises(RateLimitTimeout, match="is full .10 transitions held.: is the learner consuming"):
        queue.add(episodes([3]))
    queue.get(1, learner_version=0)
    queue.add(episodes([3]))
    assert len(queue) == 10


def test_foreign_queue_items_are_refused_and_the_rest_kept(fleet) -> None:  # noqa: F811
    spec = redis_spec(fleet, "queue-foreign", data_mode="on_policy", num_shards=1)
    queue = spec.connect()
    queue.add(episodes([1]))
    client = connect(fleet.urls[0], password=fleet.password)
    client.rpush("queue-foreign:queue", pickle.dumps({"x": 1}))
    client.rpush("queue-foreign:queue_rows", 5)
    queue.add(episodes([2]))
    with pytest.raises(ForeignValueError, match="1 queued item.s. refused, the rest kept"):
        queue.get(2, learner_version=0)
    assert _episode_order(queue.get(2, learner_version=0)) == [1, 2]
