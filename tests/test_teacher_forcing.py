"""Teacher forcing: a given response as the decisions that emit it, equal to the engine's own when it decoded it."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tokenalign.agents.policy import decision_log_probs
from tokenalign.envs.candidates import propose
from tokenalign.envs.engine import DecodingEngine, EngineConfig
from tokenalign.envs.rollout import generate_episodes
from tokenalign.envs.teacher_forcing import force_responses

PROMPTS = ["Once upon a time", "My favourite food is", "", "The weather"]


def tilted(obs: torch.Tensor) -> torch.Tensor:
    """An agent that is not π_ref: its accept logit depends on the state and on π_ref's."""
    return 0.7 * obs[:, -1] + obs[:, :8].sum(-1) * 0.3


@pytest.fixture(scope="module")
def engine(tiny_lm):
    model, tokenizer = tiny_lm
    return DecodingEngine(model=model, tokenizer=tokenizer, config=EngineConfig(max_new_tokens=14, candidate_block=3))


@pytest.fixture(scope="module")
def gemma_engine(random_gemma3_dir):
    from tokenalign.lm.loader import load_lm

    model, tokenizer = load_lm(str(random_gemma3_dir))
    return DecodingEngine(model=model, tokenizer=tokenizer, config=EngineConfig(max_new_tokens=14, candidate_block=3))


@pytest.mark.parametrize("lm", ["engine", "gemma_engine"])
def test_forced_decisions_are_the_engines_and_their_log_ratio_sums_to_the_episodes(request, lm):
    engine = request.getfixturevalue(lm)  # Gemma 3: sliding-window layers, whose window the responses pass
    episodes = generate_episodes(engine, type("A", (), {"accept_logit": staticmethod(tilted)})(), PROMPTS,
                                 generator=torch.Generator().manual_seed(5))
    forced = force_responses(engine, PROMPTS, [e.response_tokens for e in episodes])
    assert forced.uncovered.tolist() == [0] * len(PROMPTS)  # sampled tokens are always candidates
    logit = tilted(torch.cat([forced.state, forced.base_logit.unsqueeze(-1)], dim=-1))  # what the agent sees
    log_ratio = forced.sequence_sum(decision_log_probs(logit, forced.action)
                                    - decision_log_probs(forced.base_logit, forced.action))
    for i, episode in enumerate(episodes):
        mine = (forced.sequence == i).numpy()
        np.testing.assert_array_equal(forced.action[mine].numpy(), episode.action)
        np.testing.assert_array_equal(forced.token_index[mine].numpy(), episode.token_index)
        torch.testing.assert_close(forced.state[mine], torch.from_numpy(episode.state).float(), atol=2e-3, rtol=2e-3)
        np.testing.assert_allclose(forced.base_logit[mine].numpy(), episode.base_logit, atol=1e-4)
        assert log_ratio[i].item() == pytest.approx(float(episode.log_ratio.sum()), abs=1e-3)


def test_the_sequence_log_ratio_by_hand_on_the_tiny_lm(engine, tiny_lm):
    """With P(accept) = ½ everywhere, log π(y) = (decisions)·log ½ and log π_ref(y) = Σ_t log q(y_t)."""
    model, tokenizer = tiny_lm
    prompt = "Once upon a time"
    sampled = generate_episodes(engine, lambda s: torch.full((s.shape[0],), 0.5), [prompt],
                                generator=torch.Generator().manual_seed(2))
    response = [t for t in sampled[0].response_tokens if t != tokenizer.eos_token_id]
    forced = force_responses(engine, [prompt], [response])
    ids = torch.tensor([engine.encode([prompt])[0] + response])
    with torch.no_grad():
        logits = model(ids).logits[0]
    p = len(engine.encode([prompt])[0])
    expected_decisions, log_q = 0, 0.0
    for t, token in enumerate(response):
        cand = propose(logits[p + t - 1].unsqueeze(0), engine.config.sampling)
        count = int(cand.count[0])
        rank = cand.token_ids[0, :count].tolist().index(token)
        expected_decisions += rank if rank == count - 1 else rank + 1
        log_q += float(cand.logp[0, rank])
    assert len(forced.action) == expected_decisions
    half = torch.zeros(len(forced.action))
    log_pi = forced.sequence_sum(decision_log_probs(half, forced.action)).item()
    log_ref = forced.sequence_sum(decision_log_probs(forced.base_logit, forced.action)).item()
    assert log_pi == pytest.approx(expected_decisions * math.log(0.5), rel=1e-6)
    assert log_ref == pytest.approx(log_q, abs=1e-4)


def test_tokens_outside_the_candidates_are_counted_not_crashed_on(engine, tiny_lm):
    model, _ = tiny_lm
    prompt = "Once upon a time"
    with torch.no_grad():
        common = [int(model(torch.tensor([engine.encode([prompt])[0]])).logits[0, -1].argmax())]  # the top candidate
        logits = model(torch.tensor([engine.encode([prompt])[0] + common])).logits[0, -1]
    rare = int(logits.argmin())  # never among the top-k / top-p survivors after prompt + common
    forced = force_responses(engine, [prompt, prompt], [common + [rare], common])
    assert forced.uncovered.tolist() == [1, 0] and forced.tokens.tolist() == [len(common) + 1, len(common)]
    assert len(common) not in forced.token_index[forced.sequence == 0].tolist()  # the rare token has no decision
    np.testing.assert_array_equal(forced.action[forced.sequence == 0].numpy(), forced.action[forced.sequence == 1].numpy())
    with torch.no_grad():
        rare_first = int(model(torch.tensor([engine.encode([prompt])[0]])).logits[0, -1].argmin())
    only_rare = force_responses(engine, [prompt], [[rare_first]])
    assert only_rare.uncovered.tolist() == [1] and len(only_rare.action) == 0
    empty = force_responses(engine, [prompt], [[]])
    assert empty.tokens.tolist() == [0] and len(empty.action) == 0
