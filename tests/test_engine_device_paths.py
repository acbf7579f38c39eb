"""The engine's accelerator path, checked on the CPU: host reads per forward, dense rows, bf16 weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tokenalign.envs.engine import DecodingEngine, EngineConfig
from tokenalign.envs.host_syncs import HostSyncCounter
from tokenalign.envs.rollout import generate_episodes
from tokenalign.lm.loader import load_lm

PROMPTS = ["The secret of life is", "A man", "Never trust a computer you can't throw out a window, said", "Love"]


@pytest.mark.parametrize("block", [0, 3])
def test_a_rollout_reads_the_device_twice_per_forward(tiny_lm, block):
    """The accelerator path reads one status per settle round: 2 per forward, one per round that emits a last
    candidate left (forced: no decision, no forward; frequent where top-p often leaves one candidate), plus a
    bounded harvest per finished sequence (its tokens, its row leaving the batch), whatever the batch size."""
    model, tokenizer = tiny_lm
    engine = DecodingEngine(model=model, tokenizer=tokenizer, dense_rows=True,
                            config=EngineConfig(max_new_tokens=24, candidate_block=block))
    with HostSyncCounter() as syncs:
        episodes = generate_episodes(engine, lambda s: torch.full((s.shape[0],), 0.3), PROMPTS * 2,
                                     generator=torch.Generator().manual_seed(0))
    assert sum(e.num_decisions for e in episodes) > 50 and engine.forwards > 24
    per_sequence = 8
    assert syncs.total <= 2 * engine.forwards + engine.forced_rounds + per_sequence * len(episodes), syncs.by_op


def test_host_sync_counter_sees_each_kind_of_read():
    x = torch.arange(4)
    with HostSyncCounter() as syncs:
        bool(x.any()), int(x.sum()), x.tolist(), x.nonzero(), x[x > 1], x.max().item(), x.cpu()
        x[torch.tensor([0, 2])], x + 1  # integer indexing and arithmetic stay on the device
    assert syncs.total == 7, syncs.by_op


def test_dense_rows_decode_exactly_as_indexed_rows(tiny_lm):
    """The accelerator's dense emission and the CPU's indexed one give the same episodes, decision by decision
    (values to float32 rounding: the LM head sees batches of other sizes)."""
    model, tokenizer = tiny_lm
    runs = []
    for dense in (True, False):
        engine = DecodingEngine(model=model, tokenizer=tokenizer, dense_rows=dense,
                                config=EngineConfig(max_new_tokens=16, candidate_block=3))
        runs.append(generate_episodes(engine, lambda s: torch.full((s.shape[0],), 0.25), PROMPTS,
                                      generator=torch.Generator().manual_seed(4), keep_token_states=True))
    for dense, indexed in zip(*runs):
        assert dense.response_tokens == indexed.response_tokens
        np.testing.assert_array_equal(dense.action, indexed.action)
        np.testing.assert_array_equal(dense.rank, indexed.rank)
        np.testing.assert_allclose(dense.state, indexed.state, atol=1e-3)
        np.testing.assert_allclose(dense.log_ratio, indexed.log_ratio, atol=1e-5)
        torch.testing.assert_close(dense.token_states, indexed.token_states, rtol=0, atol=1e-3)


@pytest.fixture(scope="module")
def tiny_bf16():
    return load_lm("builtin:tiny", dtype=torch.bfloat16)


def test_bf16_always_accept_follows_bf16_greedy_generate(tiny_bf16):
    """In bf16 the engine's batched candidate forward and generate's forward round differently, so the two
    greedy paths may part at a near-tie: every token up to the first divergence matches, the divergence (if
    any) is at a step whose top two logits are within bf16's rounding (0.1 nats), and most tokens match."""
    model, tokenizer = tiny_bf16
    engine = DecodingEngine(model=model, tokenizer=tokenizer, dense_rows=True,
                            config=EngineConfig(max_new_tokens=24, candidate_block=4))
    matched = total = 0
    for episode in generate_episodes(engine, lambda s: torch.ones(s.shape[0]), PROMPTS):
        ids = tokenizer(episode.prompt, return_tensors="pt", add_special_tokens=False).input_ids
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=24,
                             pad_token_id=tokenizer.pad_token_id, output_logits=True, return_dict_in_generate=True)
        reference = out.sequences[0, ids.shape[1]:].tolist()
        same = next((i for i, (a, b) in enumerate(zip(episode.response_tokens, reference)) if a != b),
                    min(len(reference), len(episode.response_tokens)))
        if same < min(len(reference), len(episode.response_tokens)):
            top2 = out.logits[same][0].float().topk(2).values
            assert float(top2[0] - top2[1]) < 0.1, f"{episode.prompt!r} diverged at token {same} without a near-tie"
        matched += same
        total += len(reference)
    assert matched >= 0.75 * total


def test_bf16_candidate_states_match_a_cache_free_forward(tiny_bf16):
    """bf16 candidate states equal a cache-free bf16 forward within bf16 rounding (3 significant bits of the
    state's scale: atol 0.05 + rtol 0.02 on states of order 1)."""
    model, tokenizer = tiny_bf16
    engine = DecodingEngine(model=model, tokenizer=tokenizer, dense_rows=True,
                            config=EngineConfig(max_new_tokens=12, candidate_block=3))
    batch = engine.start(PROMPTS)
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        engine.apply(batch, torch.randint(0, 2, (batch.size,), generator=gen))
    checked = 0
    for row, prompt in enumerate(PROMPTS):
        if bool(batch.done[row]):
            continue
        prefix = tokenizer(prompt, add_special_tokens=False)["input_ids"] + batch.response_tokens(row)
        for rank in range(int(batch.computed[row])):
            ids = torch.tensor([prefix + [int(batch.cand.token_ids[row, rank])]])
            reference = model(ids, output_hidden_states=True).hidden_states[-1][0, -1].float()
            torch.testing.assert_close(batch.cand_hidden[row, rank], reference, atol=0.05, rtol=0.02)
            checked += 1
    assert checked >= 6


def test_bf16_fast_path_replays_one_decision_at_a_time(tiny_bf16):
    """The bf16 rollout fast path and the one-at-a-time face take the same decisions to the same tokens; π_ref's
    logits agree to bf16 rounding of a batch of 4 against a batch of 1: l_ref = log q_i − log Σ_{j>i} q_j combines
    two logits near 10 rounded to 8 mantissa bits (0.04 each), so within 0.1."""
    model, tokenizer = tiny_bf16
    engine = DecodingEngine(model=model, tokenizer=tokenizer, dense_rows=True,
                            config=EngineConfig(max_new_tokens=12, candidate_block=4))
    episodes = generate_episodes(engine, lambda s: torch.full((s.shape[0],), 0.4), PROMPTS,
                                 generator=torch.Generator().manual_seed(3))
    for episode in episodes:
        batch = engine.start([episode.prompt])
        for i, action in enumerate(episode.action.tolist()):
            assert bool(batch.awaiting[0])
            assert float(engine.observe(batch)[0, -1]) == pytest.approx(float(episode.base_logit[i]), abs=0.1)
            assert bool(engine.apply(batch, torch.tensor([action]))[0]) == bool(episode.emit[i])
        assert batch.response_tokens(0) == episode.response_tokens
