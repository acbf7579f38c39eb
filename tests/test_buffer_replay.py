"""The replay-buffer contract, held by the memory backend and by real Redis shards alike."""
from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pytest
import torch
from test_buffer_support import HIDDEN, assert_chain, assert_observed_columns, episodes, fleet, memory_spec, redis_spec  # noqa: F401

from tokenalign.buffers.errors import RateLimitTimeout, TooFewEpisodes
from tokenalign.buffers.layout import RecordSchemaError

_namespaces = itertools.count()


@pytest.fixture(params=["memory", "redis", "redis_unmirrored"])
def make_buffer(request: pytest.FixtureRequest):
    """Factory of buffers of the parametrized backend; Redis ones get a fresh namespace on shared servers, and
    redis_unmirrored reads every sampled row from Redis (buffer.mirror_gib=0)."""
    opened = []

    def make(**overrides):
        if request.param == "memory":
            spec = memory_spec(**overrides)
        else:
            if request.param == "redis_unmirrored":
                overrides["mirror_gib"] = 0
            spec = redis_spec(request.getfixturevalue("fleet"), f"replay-{next(_namespaces)}", **overrides)
        buffer = spec.connect()
        opened.append(buffer)
        return buffer

    yield make
    for buffer in opened:
        buffer.close()


def test_sample_assembles_next_state_from_the_chain(make_buffer) -> None:
    buffer = make_buffer(capacity=1000)
    buffer.add(episodes(list(range(10)), length=7))
    batch = buffer.sample(256)
    assert batch.state.shape == (256, HIDDEN) and batch.state.dtype == torch.float16  # as stored
    assert batch.to("cpu").state.dtype == torch.float32
    assert batch.done.sum() > 0
    assert_chain(batch)
    assert_observed_columns(batch)


def test_float32_states_on_request(make_buffer) -> None:
    buffer = make_buffer(state_dtype="float32")
    buffer.add(episodes(list(range(6)), length=5))
    batch = buffer.sample(64)
    assert batch.state.dtype == batch.next_state.dtype == torch.float32
    assert_chain(batch)
    assert buffer.sample_episodes(3).next_state.dtype == torch.float32


def test_fifo_eviction_drops_oldest_whole_chunks_and_counts_them(make_buffer) -> None:
    buffer = make_buffer(capacity=40, num_shards=1)
    for first in range(0, 30, 3):  # ten chunks of 3 episodes × 4 decisions = 12 transitions
        buffer.add(episodes([first, first + 1, first + 2], length=4))
    assert len(buffer) == 36  # three whole chunks: a fourth would exceed 40
    ids = set(buffer.sample_episodes(9).episode_id.tolist())
    assert ids == set(range(21, 30))
    assert buffer.state_dict()["counters"][0] == {"inserted": 120, "sampled": 36, "evicted": 84}


def test_sampling_is_uniform_over_transitions_across_shards(make_buffer) -> None:
    buffer = make_buffer(capacity=10_000)
    buffer.add(episodes(list(range(40)), length=[1 + i % 9 for i in range(40)]))
    total = len(buffer)
    batch = buffer.sample(20_000)
    counts = np.bincount((batch.episode_id * 16 + batch.step).numpy(), minlength=40 * 16)
    counts = counts[counts > 0]
    assert len(counts) == total  # every stored transition was drawn
    expected = 20_000 / total
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < total + 5 * np.sqrt(2 * total)  # χ² with total-1 dof, 5 sigma


def test_whole_episodes_and_prompt_groups(make_buffer) -> None:
    buffer = make_buffer(capacity=1000)
    buffer.add(episodes(list(range(12)), length=[2, 3, 4] * 4, prompt_ids=[i // 3 for i in range(12)]))
    batch = buffer.sample_episodes(5)
    assert len(set(batch.episode_id.tolist())) == 5
    assert_chain(batch)
    starts = torch.nonzero(torch.diff(batch.episode_id) != 0).flatten() + 1
    for chunk in torch.tensor_split(batch.step, starts):
        assert torch.equal(chunk, torch.arange(len(chunk)))
    groups = buffer.sample_prompt_groups(2)
    assert len(set(groups.prompt_id.tolist())) == 2
    assert len(set(groups.episode_id.tolist())) == 6  # all three episodes of each prompt
    assert torch.equal(groups.prompt_id, groups.prompt_id.sort(stable=True).values)
    assert_chain(groups)
    with pytest.raises(ValueError, match="distinct prompts"):
        buffer.sample_prompt_groups(5)


@pytest.mark.parametrize(
    "bad, match",
    [
        (episodes([1], hidden=HIDDEN + 1), "state size"),
        (episodes([1]).drop_columns(["score:harm"]), "lacks column 'score:harm'"),
        (pa.concat_batches([episodes([1]).slice(0, 3), episodes([2]), episodes([1]).slice(3)]), "interleaves"),
        (episodes([1]).slice(1), "whole and in step order"),
        (episodes([1]).slice(0, 4), "done=True"),
    ],
)
def test_bad_batches_are_refused_before_anything_is_written(make_buffer, bad, match) -> None:
    buffer = make_buffer()
    buffer.add(episodes([7, 8]))
    before = buffer.state_dict()["counters"]
    with pytest.raises(RecordSchemaError, match=match):
        buffer.add(pa.concat_batches([episodes([9]), bad]) if bad.schema == episodes([9]).schema else bad)
    assert buffer.state_dict()["counters"] == before
    assert set(buffer.sample_episodes(2).episode_id.tolist()) == {7, 8}


def test_a_write_larger_than_a_shard_goes_in_whole_episode_chunks_and_a_larger_episode_is_refused(make_buffer) -> None:
    """Capacity 10, episodes of 5: a write of 3 episodes is the chunks [2, 3] and [4]; each evicts the oldest whole
    chunk before it, so episode 4 alone is left. An episode of 11 rows fits no shard: refused, nothing written."""
    buffer = make_buffer(capacity=10, num_shards=1)
    buffer.add(episodes([1]))
    buffer.add(episodes([2, 3, 4]))
    assert len(buffer) == 5 and set(buffer.sample_episodes(1).episode_id.tolist()) == {4}
    with pytest.raises(TooFewEpisodes, match="cannot sample 2 distinct episodes: the buffer holds 1"):
        buffer.sample_episodes(2)  # the learner waits on this one (learner_actor), it does not crash
    with pytest.raises(ValueError, match="an episode of 11 transitions, more than a shard's capacity 10"):
        buffer.add(episodes([5, 6], length=[2, 11]))
    assert len(buffer) == 5 and buffer.state_dict()["counters"][0]["inserted"] == 20


def test_min_size_blocks_sampling_with_a_clear_timeout(make_buffer) -> None:
    buffer = make_buffer(min_size_to_sample=50)
    buffer.add(episodes([1, 2], length=10))
    assert not buffer.can_sample(8)
    with pytest.raises(RateLimitTimeout, match="size 20 .min_size_to_sample 50"):
        buffer.sample(8, timeout_s=0.05)
    buffer.add(episodes([3, 4, 5], length=10))
    assert buffer.sample(8).state.shape[0] == 8


def test_samples_per_insert_blocks_writers_that_run_ahead(make_buffer) -> None:
    buffer = make_buffer(min_size_to_sample=10, samples_per_insert=2.0, error_buffer=20.0)
    buffer.add(episodes([1, 2], length=5))  # free until min size: diff = 20 = target
    with pytest.raises(RateLimitTimeout, match="insert blocked"):
        buffer.add(episodes([3, 4], length=10))  # (10 + 20)·2 − 0 = 60 > 20 + 20
    buffer.sample(10)
    buffer.sample(10)  # diff 0: a third sample would fall below min_diff 0
    with pytest.raises(RateLimitTimeout, match="sample blocked"):
        buffer.sample(10, timeout_s=0.05)
    buffer.add(episodes([3], length=5))
    assert len(buffer.sample(10)) == 10


def test_state_dict_resumes_the_same_samples(make_buffer) -> None:
    buffer = make_buffer(capacity=500)
    buffer.add(episodes(list(range(20)), length=6))
    buffer.sample(7)
    state = buffer.state_dict()
    expected = buffer.sample(64)
    buffer.sample(5)
    buffer.load_state_dict(state)
    again = buffer.sample(64)
    assert torch.equal(expected.state, again.state) and torch.equal(expected.episode_id, again.episode_id)
    assert buffer.state_dict()["counters"] != state["counters"]  # the resumed draws were counted again
    buffer.load_state_dict(state)
    assert buffer.state_dict()["counters"] == state["counters"]


def test_clear_empties_but_keeps_counters(make_buffer) -> None:
    buffer = make_buffer()
    buffer.add(episodes([1, 2, 3]))
    counters = buffer.state_dict()["counters"]
    buffer.clear()
    assert len(buffer) == 0 and buffer.stats()["size"] == 0
    assert buffer.state_dict()["counters"] == counters
    buffer.add(episodes([4]))
    assert buffer.sample_episodes(1).episode_id.unique().tolist() == [4]


@pytest.mark.parametrize("num_shards", [1, 2])  # the batch is one shard's gathered rows, or the shards' parts joined
def test_a_batch_still_held_is_never_overwritten_by_later_samples(make_buffer, num_shards: int) -> None:
    buffer = make_buffer(capacity=1000, num_shards=num_shards)
    buffer.add(episodes(list(range(20)), length=6))
    held = [buffer.sample(64) for _ in range(6)]  # more than the blocks batches are gathered into
    copies = [(batch.state.clone(), batch.next_state.clone()) for batch in held]
    for _ in range(6):
        buffer.sample(64)
    for batch, (state, next_state) in zip(held, copies):
        assert torch.equal(batch.state, state) and torch.equal(batch.next_state, next_state)
        assert_chain(batch)
