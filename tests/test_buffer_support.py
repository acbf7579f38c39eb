"""Shared helpers of the buffer tests: synthetic episodes whose states encode (episode, step), and a Redis fleet."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from tokenalign.buffers.config import BufferConfig
from tokenalign.buffers.layout import RecordLayout, make_record_batch
from tokenalign.buffers.spec import BufferSpec
from tokenalign.cluster.redis_fleet import RedisFleet

HIDDEN = 32
SCORERS = ("quality", "harm")
LAYOUT = RecordLayout(state_size=HIDDEN, scorers=SCORERS)
FAST = dict(min_size_to_sample=1, seed=0, write_timeout_s=1.0, sample_timeout_s=1.0)
"""Config overrides of the tests: sample at once, and give up on a blocked or unreachable shard after a second."""


def episodes(
    episode_ids: list[int], *, length: int = 5, version: int = 0, prompt_ids: list[int] | None = None, hidden: int = HIDDEN
) -> pa.RecordBatch:
    """Whole episodes; decision (e, t)'s state is [e, t, e, t, ...] (exact in float16 for e, t < 2048), and every
    other column a function of (e, t) too: score:quality = e, score:harm = −e, rank = t % 3, ..."""
    ids = np.asarray(episode_ids)
    lengths = np.full(len(ids), length) if np.ndim(length) == 0 else np.asarray(length)
    episode_id = np.repeat(ids, lengths)
    step = np.concatenate([np.arange(n) for n in lengths])
    n = len(step)
    prompts = ids if prompt_ids is None else np.asarray(prompt_ids)
    done = np.concatenate([np.arange(k) == k - 1 for k in lengths])
    return make_record_batch(
        layout=RecordLayout(state_size=hidden, scorers=SCORERS),
        episode_id=episode_id, step=step,
        state=np.tile(np.stack([episode_id, step], axis=1), (1, (hidden + 1) // 2))[:, :hidden],
        action=step % 2, done=done, logp=np.full(n, -0.5),
        policy_version=np.full(n, version), prompt_id=np.repeat(prompts, lengths),
        rank=step % 3, emit=(step % 2 == 1) | done, base_logit=0.25 * step, next_base_logit=np.where(done, 0.0, 0.25 * (step + 1)),
        log_ratio=-0.25 * step, decision_kl=0.5 * step, episode_decisions=np.repeat(lengths, lengths),
        token_reward=0.125 * step, mara_kl_penalty=0.0625 * step, accepts_to_end=lengths.max() - step,
        response_tokens=np.repeat(lengths, lengths) // 2,
        scores=np.stack([episode_id, -episode_id], axis=1), baseline_scores=np.stack([step, step], axis=1),
    )


def assert_chain(batch) -> None:
    """state, next_state and done agree with the synthetic encoding: next_state(t) = state(t + 1), zeros at done."""
    done = batch.done.bool()
    assert (batch.state[:, 0::2] == batch.episode_id[:, None]).all()
    assert (batch.state[:, 1::2] == batch.step[:, None]).all()
    assert (batch.next_state[~done][:, 0::2] == batch.episode_id[~done, None]).all()
    assert (batch.next_state[~done][:, 1::2] == batch.step[~done, None] + 1).all()
    assert (batch.next_state[done] == 0).all()


def assert_observed_columns(batch) -> None:
    """Every observed column came back as `episodes` wrote it for its (episode, step)."""
    e, t = batch.episode_id.double(), batch.step.double()
    done = batch.done.bool()
    assert torch.equal(batch.action, batch.step % 2) and torch.equal(batch.rank, batch.step % 3)
    assert torch.equal(batch.emit, (batch.step % 2 == 1) | done)
    assert torch.equal(batch.base_logit.double(), 0.25 * t)
    assert torch.equal(batch.next_base_logit.double(), torch.where(done, 0.0, 0.25 * (t + 1)))
    assert torch.equal(batch.log_ratio.double(), -0.25 * t) and torch.equal(batch.decision_kl.double(), 0.5 * t)
    assert torch.equal(batch.episode_decisions[done], batch.step[done] + 1)
    assert torch.equal(batch.token_reward.double(), 0.125 * t)
    assert torch.equal(batch.mara_kl_penalty.double(), 0.0625 * t)
    assert torch.equal(batch.scores.double(), torch.stack([e, -e], 1))
    assert torch.equal(batch.baseline_scores.double(), torch.stack([t, t], 1))
    assert batch.preference.shape == (len(batch), 0) and batch.logp.eq(-0.5).all()
    assert torch.equal(batch.response_tokens[done], (batch.step[done] + 1) // 2)  # length // 2; on done rows length = step + 1
    total = batch.accepts_to_end + batch.step  # the writer's lengths.max(): one value per written batch
    assert len(set(total.tolist())) <= 2


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory):
    """Two embedded Redis servers for a test module; tests isolate themselves by namespace."""
    with RedisFleet.start(num_servers=2, run_dir=tmp_path_factory.mktemp("redis")) as started:
        yield started


def redis_spec(
    fleet: RedisFleet, namespace: str, *, data_mode: str = "replay", num_shards: int = 2, capacity: int = 1000, **overrides
) -> BufferSpec:
    """A spec over the first num_shards servers of the fleet."""
    config = BufferConfig(
        backend="redis", num_shards=num_shards, capacity=capacity, redis_urls=fleet.urls[:num_shards], namespace=namespace,
        **{**FAST, **overrides},
    )
    return BufferSpec(data_mode, LAYOUT, config, tuple(fleet.urls[:num_shards]), fleet.password)


def memory_spec(*, data_mode: str = "replay", num_shards: int = 2, capacity: int = 1000, **overrides) -> BufferSpec:
    """A spec of an in-process buffer."""
    config = BufferConfig(backend="memory", num_shards=num_shards, capacity=capacity, **{**FAST, **overrides})
    return BufferSpec(data_mode, LAYOUT, config)


def test_episodes_helper_builds_valid_chains() -> None:
    batch = episodes([3, 4], length=[2, 3])
    assert batch.num_rows == 5
    assert batch.column("done").to_pylist() == [False, True, False, False, True]


def test_fleet_starts_from_a_relative_run_dir(tmp_path, monkeypatch):
    """`tokenalign train` runs under runs/<name>: a relative path the servers, started in their own dirs, must still find."""
    from tokenalign.cluster.redis_fleet import RedisFleet

    monkeypatch.chdir(tmp_path)
    fleet = RedisFleet.start(num_servers=1, run_dir="runs/relative")
    try:
        assert fleet.alive(0)
    finally:
        fleet.stop()
