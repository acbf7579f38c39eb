"""The decoding engine: candidate states, MARA semantics, greedy equivalence, batching and restarts."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from tokenalign.envs.candidates import SamplingConfig, propose
from tokenalign.envs.engine import DecodingEngine, EngineConfig
from tokenalign.envs.rollout import generate_episodes
from tokenalign.lm.loader import load_lm

PROMPTS = ["The secret of life is", "A man", "Never trust a computer you can't throw out a window, said"]


def make_engine(lm, **config) -> DecodingEngine:
    model, tokenizer = lm
    return DecodingEngine(model=model, tokenizer=tokenizer, config=EngineConfig(**config))


def full_forward_state(model, tokenizer, prefix_ids: list[int], candidate: int) -> torch.Tensor:
    """Cache-free reference: the last hidden state of prefix + candidate in a fresh forward."""
    ids = torch.tensor([prefix_ids + [candidate]])
    return model(ids, output_hidden_states=True).hidden_states[-1][0, -1]


def test_propose_matches_hf_warpers():
    torch.manual_seed(0)
    logits = torch.randn(4, 300) * 3
    cfg = SamplingConfig(top_k=40, top_p=0.9, temperature=0.7)
    cands = propose(logits, cfg)
    warped = logits.clone()
    for warper in (TemperatureLogitsWarper(0.7), TopKLogitsWarper(40), TopPLogitsWarper(0.9)):
        warped = warper(None, warped)
    expected_logp = torch.log_softmax(warped, dim=-1)
    for row in range(4):
        survivors = torch.isfinite(warped[row]).nonzero().flatten()
        n = int(cands.count[row])
        assert n == survivors.numel()
        ids = cands.token_ids[row, :n]
        assert set(ids.tolist()) == set(survivors.tolist())
        assert torch.all(cands.logp[row, :n][:-1] >= cands.logp[row, :n][1:])  # highest first
        torch.testing.assert_close(cands.logp[row, :n], expected_logp[row, ids])


def test_tied_candidates_are_ordered_by_token_id_whatever_the_batch():
    """Equal logits (common in bf16) go lowest token id first, as argmax takes them, in every row of every
    batch: the rollout's batch and the one-at-a-time replay must present the same order."""
    row = torch.full((50,), -5.0)
    row[[31, 7, 19]] = 2.0  # a three-way tie at the top
    row[[40, 3]] = 1.0
    for batch in (row[None], torch.stack([torch.randn(50), row, row.flip(0), row])):
        cands = propose(batch.to(torch.bfloat16), SamplingConfig(top_k=5, top_p=1.0))
        for r in range(batch.shape[0]):
            if torch.equal(batch[r], row):
                assert cands.token_ids[r].tolist() == [7, 19, 31, 3, 40]
    flipped = propose(row.flip(0)[None], SamplingConfig(top_k=5, top_p=1.0))
    assert flipped.token_ids[0].tolist() == [49 - 31, 49 - 19, 49 - 7, 49 - 40, 49 - 3]


@pytest.mark.parametrize("order", ["prob_asc", "top1_last"])
def test_candidate_orders(order):
    logits = torch.randn(3, 100) * 2
    base = propose(logits, SamplingConfig(top_p=0.9))
    other = propose(logits, SamplingConfig(top_p=0.9, order=order))
    for row in range(3):
        n = int(base.count[row])
        ids = base.token_ids[row, :n].tolist()
        expected = ids[::-1] if order == "prob_asc" else ids[1:] + ids[:1]
        assert other.token_ids[row, :n].tolist() == expected


@pytest.mark.parametrize(("lm", "block"), [("tiny", 0), ("tiny", 3), ("gemma3", 3)])
def test_candidate_states_match_full_forward(request, lm, block):
    """Each candidate's state equals a cache-free forward, also past Gemma 3's sliding window."""
    lm = request.getfixturevalue("tiny_lm") if lm == "tiny" else load_lm(str(request.getfixturevalue("random_gemma3_dir")))
    model, tokenizer = lm
    engine = make_engine(lm, max_new_tokens=12, candidate_block=block)
    batch = engine.start(PROMPTS)
    gen = torch.Generator().manual_seed(1)
    for _ in range(6):  # rows drift apart: different emitted counts, padding slots in the cache
        action = torch.randint(0, 2, (batch.size,), generator=gen)
        engine.apply(batch, action)
    worst = 0.0
    for row, prompt in enumerate(PROMPTS):
        if bool(batch.done[row]):
            continue
        prefix = tokenizer(prompt, add_special_tokens=False)["input_ids"] + batch.response_tokens(row)
        for rank in range(int(batch.computed[row])):
            ref = full_forward_state(model, tokenizer, prefix, int(batch.cand.token_ids[row, rank]))
            worst = max(worst, float((batch.cand_hidden[row, rank] - ref).abs().max()))
    assert worst <= 1e-4


def assert_always_accept_is_greedy(lm, *, max_new_tokens: int, candidate_block: int,
                                   candidate_state: str = "lookahead") -> None:
    model, tokenizer = lm
    engine = make_engine(lm, max_new_tokens=max_new_tokens, candidate_block=candidate_block,
                         candidate_state=candidate_state)
    for episode in generate_episodes(engine, lambda s: torch.ones(s.shape[0]), PROMPTS):
        ids = tokenizer(episode.prompt, return_tensors="pt", add_special_tokens=False).input_ids
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id)
        assert episode.response_tokens == out[0, ids.shape[1]:].tolist()
        assert episode.action.tolist() == [1] * episode.num_decisions
        assert set(episode.rank.tolist()) <= {0}


@pytest.mark.parametrize("candidate_state", ["lookahead", "context"])
def test_always_accept_reproduces_greedy_generate(tiny_lm, candidate_state):
    assert_always_accept_is_greedy(tiny_lm, max_new_tokens=24, candidate_block=8, candidate_state=candidate_state)


@pytest.mark.parametrize("candidate_state", ["lookahead", "context"])
def test_greedy_on_llama_with_rotary_positions(random_llama_dir, candidate_state):
    assert_always_accept_is_greedy(load_lm(str(random_llama_dir)), max_new_tokens=10, candidate_block=4,
                                   candidate_state=candidate_state)


@pytest.mark.parametrize("candidate_state", ["lookahead", "context"])
def test_greedy_on_gemma3_with_sliding_window_layers(random_gemma3_dir, candidate_state):
    """Gemma 3's sliding-window layers get their own mask (and full caches): the engine still decodes as generate."""
    assert_always_accept_is_greedy(load_lm(str(random_gemma3_dir)), max_new_tokens=10, candidate_block=4,
                                   candidate_state=candidate_state)


def test_rejecting_all_but_the_last_candidate_emits_it_without_a_decision(tiny_lm):
    engine = make_engine(tiny_lm, max_new_tokens=8, candidate_block=3)
    batch = engine.start(PROMPTS[:1])
    decisions = 0
    while not bool(batch.done[0]):
        count, before = int(batch.cand.count[0]), int(batch.n_new[0])
        last_token = int(batch.cand.token_ids[0, count - 1])
        for rank in range(count - 1):  # the last candidate is never asked about
            assert bool(batch.awaiting[0]) and int(batch.cursor[0]) == rank
            ended = engine.apply(batch, torch.zeros(1, dtype=torch.long))
            assert bool(ended[0]) == (rank == count - 2)
            decisions += 1
        assert int(batch.tokens[0, before]) == last_token
    assert decisions > 0


def test_single_survivor_needs_no_decision(tiny_lm):
    engine = make_engine(tiny_lm, max_new_tokens=10, sampling=SamplingConfig(top_k=1))
    episodes = generate_episodes(engine, lambda s: torch.zeros(s.shape[0]), PROMPTS)
    for episode in episodes:
        assert episode.num_decisions == 0
        assert len(episode.response_tokens) > 0


def test_fast_path_decisions_replay_one_at_a_time(tiny_lm):
    """The rollout fast path and the one-decision-at-a-time faces give the same trajectory."""
    engine = make_engine(tiny_lm, max_new_tokens=16, candidate_block=4)
    gen = torch.Generator().manual_seed(3)
    episodes = generate_episodes(engine, lambda s: torch.full((s.shape[0],), 0.4), PROMPTS, generator=gen)
    for episode in episodes:
        batch = engine.start([episode.prompt])
        for i, action in enumerate(episode.action.tolist()):
            assert bool(batch.awaiting[0])
            observation = engine.observe(batch)[0]
            torch.testing.assert_close(observation[:-1].half().float(), torch.from_numpy(episode.state[i]).float(),
                                       atol=1e-2, rtol=1e-3)
            assert float(observation[-1]) == pytest.approx(float(episode.base_logit[i]), abs=1e-4)
            assert bool(engine.apply(batch, torch.tensor([action]))[0]) == bool(episode.emit[i])
        assert bool(batch.done[0])
        assert batch.response_tokens(0) == episode.response_tokens


def test_restarted_row_matches_a_fresh_start(tiny_lm):
    engine = make_engine(tiny_lm, max_new_tokens=12, candidate_block=0)
    batch = engine.start(PROMPTS)
    for _ in range(5):
        engine.apply(batch, torch.ones(batch.size, dtype=torch.long))
    engine.restart_rows(batch, torch.tensor([1]), ["Fortune favours"])
    fresh = engine.start(["Fortune favours"])
    n = int(fresh.computed[0])
    assert int(batch.computed[1]) == n
    torch.testing.assert_close(batch.cand_hidden[1, :n], fresh.cand_hidden[0, :n], atol=1e-4, rtol=0)
    for _ in range(4):
        engine.apply(batch, torch.ones(batch.size, dtype=torch.long))
        engine.apply(fresh, torch.ones(1, dtype=torch.long))
    assert batch.response_tokens(1) == fresh.response_tokens(0)


def test_fast_path_records_mara_kl_shaping(tiny_lm):
    from tokenalign.rewards.shaping import ShapingConfig, mara_kl_penalties

    shaping = ShapingConfig(token_reward="mara_kl_div", kl_ctl=0.1)
    engine = make_engine(tiny_lm, max_new_tokens=6, candidate_block=0)
    p = 0.3
    [episode] = generate_episodes(engine, lambda s: torch.full((s.shape[0],), p), PROMPTS[:1],
                                  generator=torch.Generator().manual_seed(0), shaping=shaping)
    batch = engine.start(PROMPTS[:1])  # the first step's candidates, to recompute its first decision by hand
    mask = torch.arange(engine.k) < batch.cand.count[0] - 1  # the decided candidates: all but the last
    expected = mara_kl_penalties(torch.full((1, engine.k), p), batch.cand.logp[:1], mask[None], config=shaping)[0, 0]
    assert episode.mara_kl_penalty[0] == pytest.approx(float(expected), abs=1e-5)
    assert (episode.mara_kl_penalty != 0).all()
    with pytest.raises(ValueError, match="candidate_block=0"):
        generate_episodes(make_engine(tiny_lm, max_new_tokens=4, candidate_block=2), lambda s: torch.full((s.shape[0],), p),
                          PROMPTS[:1], shaping=shaping)


def test_fast_path_records_each_tokens_log_ratio_to_the_base_lm(tiny_lm):
    """Σ over a token's decisions of log π(a) − log π_ref(a) = log π(token) − log q(token): i·log(1 − p) + log p
    for an accept at rank i, (C − 1)·log(1 − p) for the last candidate, minus the warped log q of that token."""
    p = 0.04
    engine = make_engine(tiny_lm, max_new_tokens=8, candidate_block=3)
    prompt = PROMPTS[0]
    [episode] = generate_episodes(engine, lambda s: torch.full((s.shape[0],), p), [prompt],
                                  generator=torch.Generator().manual_seed(0))
    # Replay the episode one decision at a time to read each step's candidates and the emitted token's log q.
    batch = engine.start([prompt])
    last_taken = 0
    for i, action in enumerate(episode.action.tolist()):
        if i == 0 or episode.token_index[i] != episode.token_index[i - 1]:
            step_start, logq = i, batch.cand.logp[0].clone()
        engine.apply(batch, torch.tensor([action]))
        if episode.emit[i]:
            rank = int(episode.rank[i]) + (0 if action == 1 else 1)  # a reject here emitted the next (last) one
            expected = int(episode.rank[i]) * np.log(1 - p) + (np.log(p) if action == 1 else np.log(1 - p)) - float(logq[rank])
            assert episode.log_ratio[step_start: i + 1].sum() == pytest.approx(expected, abs=1e-4)
            last_taken += int(action == 0)
    assert last_taken > 0  # the all-rejected rule was exercised


@pytest.mark.parametrize("field, value", [("max_new_tokens", "5"), ("candidate_block", 2.0), ("max_new_tokens", True)])
def test_engine_settings_of_the_wrong_type_are_one_clear_error(field, value):
    with pytest.raises(ValueError, match=rf"{field} must be an int >= \d.*, got {value!r}"):
        EngineConfig(**{field: value})
