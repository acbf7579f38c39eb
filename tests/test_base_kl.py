"""The exact KL to the base LM: π_ref reproduces base sampling, untrained agents ARE the base LM, the decode
loop's per-token KL against an exact sum, and the KL terms of the on-policy learners by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F

from tokenalign.agents.chain import reference_accept_logits
from tokenalign.agents.policy import AcceptRejectPolicy
from tokenalign.buffers.batches import Transitions
from tokenalign.envs.candidates import SamplingConfig, propose
from tokenalign.envs.engine import DecodingEngine, EngineConfig
from tokenalign.envs.rollout import generate_episodes
from tokenalign.learners import config_class, make_learner

PROMPT = "The secret of life is"


def emission_probs(accept_logit: torch.Tensor, count: int) -> torch.Tensor:
    """π(i) = σ(l_i)·∏_{j<i}(1 − σ(l_j)) for i < count − 1; the last candidate takes what is left."""
    p = torch.sigmoid(accept_logit[: count - 1].double())
    reach = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - p, 0)])
    return torch.cat([p * reach[:-1], reach[-1:]])


@pytest.mark.parametrize("order", ["prob_desc", "prob_asc", "top1_last"])
def test_pi_ref_emits_every_candidate_with_its_warped_probability(order):
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0)) * 3
    cand = propose(logits, SamplingConfig(top_k=12, top_p=0.97, temperature=0.7, order=order))
    torch.testing.assert_close(cand.base_logit, reference_accept_logits(cand.logp, cand.count))
    for row in range(6):
        n = int(cand.count[row])
        if n == 1:
            continue
        torch.testing.assert_close(emission_probs(cand.base_logit[row], n), cand.logp[row, :n].double().exp(),
                                   atol=1e-6, rtol=1e-5)


def engine_for(lm, **config) -> DecodingEngine:
    model, tokenizer = lm
    return DecodingEngine(model=model, tokenizer=tokenizer, config=EngineConfig(**config))


def test_an_untrained_agent_samples_text_exactly_as_the_base_lm(tiny_lm):
    """Chi-square of the first token's distribution against q, and a measured KL of 0 over whole responses."""
    engine = engine_for(tiny_lm, max_new_tokens=1, candidate_block=3, sampling=SamplingConfig(top_k=8, top_p=1.0))
    torch.manual_seed(0)
    agent = AcceptRejectPolicy(state_size=engine.state_size, widths=(32, 16)).eval()
    rows = 2000
    episodes = generate_episodes(engine, agent, [PROMPT] * rows, generator=torch.Generator().manual_seed(1))
    drawn = torch.tensor([e.response_tokens[0] for e in episodes])
    batch = engine.start([PROMPT])
    count = int(batch.cand.count[0])
    ids, q = batch.cand.token_ids[0, :count], batch.cand.logp[0, :count].double().exp()
    observed = torch.stack([(drawn == i).sum() for i in ids]).double()
    assert int(observed.sum()) == rows and count == 8
    expected = q / q.sum() * rows
    assert scipy.stats.chisquare(observed.numpy(), expected.numpy()).pvalue > 1e-3
    # Over whole responses the measured KL is 0 up to float rounding: every decision's Bernoulli is π_ref's.
    long = engine_for(tiny_lm, max_new_tokens=12, candidate_block=4)
    for episode in generate_episodes(long, agent, [PROMPT] * 8, generator=torch.Generator().manual_seed(2)):
        assert episode.num_decisions > 0
        assert abs(episode.kl) < 1e-5 and abs(float(episode.log_ratio.sum())) < 1e-4


def test_per_token_kl_estimators_against_the_exact_sum_over_a_small_vocabulary(tiny_lm):
    """One step over 6 candidates: the decode loop's exact full sum equals Σ_i π(i)·log(π(i)/q(i)) computed by
    hand, and both sampled estimators (Σ of decision KLs, Σ of log-ratios) average to it."""
    engine = engine_for(tiny_lm, max_new_tokens=1, candidate_block=0, sampling=SamplingConfig(top_k=6, top_p=1.0))
    weight = torch.randn(engine.hidden_size, generator=torch.Generator().manual_seed(3))

    def accept_prob(obs: torch.Tensor) -> torch.Tensor:  # a fixed agent far from π_ref
        return torch.sigmoid(obs[:, :-1] @ weight / 8.0)

    batch = engine.start([PROMPT])
    count = int(batch.cand.count[0])
    obs = torch.cat([batch.cand_hidden[0, :count], batch.cand.base_logit[0, :count, None]], -1)
    pi = emission_probs(torch.logit(accept_prob(obs)), count)
    q = batch.cand.logp[0, :count].double().exp()
    exact = float((pi * (pi / q).log()).sum())
    assert count == 6 and exact > 0.05

    rows = 4000
    episodes = generate_episodes(engine, accept_prob, [PROMPT] * rows, generator=torch.Generator().manual_seed(4))
    assert all(e.exact_kl == pytest.approx(exact, rel=1e-4) for e in episodes)
    for name, values in (("decision KLs", [e.kl for e in episodes]),
                         ("log-ratios", [float(e.log_ratio.astype(np.float64).sum()) for e in episodes])):
        mean, se = np.mean(values), np.std(values, ddof=1) / math.sqrt(rows)
        assert abs(mean - exact) < 4 * se + 1e-6, f"{name}: {mean} ± {se} vs exact {exact}"
    # Lazy blocks cannot see the whole step at once: no exact sum there, the estimators still hold.
    lazy = engine_for(tiny_lm, max_new_tokens=1, candidate_block=2, sampling=SamplingConfig(top_k=6, top_p=1.0))
    [episode] = generate_episodes(lazy, accept_prob, [PROMPT], generator=torch.Generator().manual_seed(5))
    assert episode.exact_kl is None or episode.num_decisions <= 2


def on_policy_batch(logp: list[float], action: list[int], base_logit: list[float], episode: list[int],
                    reward: list[float]) -> Transitions:
    n, hidden = len(logp), 4
    episode_t = torch.tensor(episode)
    done = torch.tensor([episode[i] != episode[i + 1] if i + 1 < n else True for i in range(n)], dtype=torch.float32)
    step = torch.cat([torch.arange(int((episode_t == e).sum())) for e in torch.unique_consecutive(episode_t)])
    return Transitions(
        state=torch.randn(n, hidden, generator=torch.Generator().manual_seed(0)), action=torch.tensor(action),
        reward=torch.tensor(reward), cost=torch.zeros(n), next_state=torch.zeros(n, hidden), done=done,
        logp=torch.tensor(logp), episode_id=episode_t, step=step, prompt_id=torch.zeros(n, dtype=torch.long),
        policy_version=torch.zeros(n, dtype=torch.long), base_logit=torch.tensor(base_logit),
        next_base_logit=torch.zeros(n), episode_decisions=torch.bincount(episode_t)[episode_t],
    )


LOGP, ACTION, BASE = [-0.2, -1.5, -0.7, -0.1], [1, 0, 0, 1], [0.5, 1.0, -2.0, 0.0]
EPISODE, REWARD = [0, 0, 1, 1], [0.0, 1.0, 0.0, 3.0]


def log_ratios() -> list[float]:
    """log π_old(a) − log π_ref(a) of each row, by hand: π_ref(accept) = σ(l), π_ref(reject) = σ(−l)."""
    ref = [math.log(1 / (1 + math.exp(-b))) if a else math.log(1 / (1 + math.exp(b))) for a, b in zip(ACTION, BASE)]
    return [lp - r for lp, r in zip(LOGP, ref)]


def test_ppo_pays_the_per_token_kl_in_its_reward():
    batch = on_policy_batch(LOGP, ACTION, BASE, EPISODE, REWARD)
    ppo = make_learner("ppo", state_size=4, config=config_class("ppo")(widths=(8,), kl_coef=0.3))
    metrics = ppo.update(batch)
    ratio = log_ratios()
    assert metrics["episode_kl_reward"] == pytest.approx(-0.3 * ((ratio[0] + ratio[1]) + (ratio[2] + ratio[3])) / 2,
                                                         rel=1e-5)


def test_rloo_pays_the_sequence_kl_in_its_return():
    """With two episodes of one prompt (k = 2) and no cost, loss = −[(G_0 − Ḡ)·L_0 + (G_1 − Ḡ)·L_1], where
    G_i = R_i − β·Σ_t log(π_old/π_ref) and L_i = Σ_t log π_θ(a_t) = Σ_t log π_ref(a_t) for an untrained agent."""
    batch = on_policy_batch(LOGP, ACTION, BASE, EPISODE, REWARD)
    beta = 0.4
    rloo = make_learner("rloo_lagrangian", state_size=4, config=config_class("rloo_lagrangian")(widths=(8,), kl_coef=beta, threshold=10.0))
    metrics = rloo.update(batch)
    ratio = log_ratios()
    g = [1.0 - beta * (ratio[0] + ratio[1]), 3.0 - beta * (ratio[2] + ratio[3])]
    ref = [F.logsigmoid(torch.tensor(b if a else -b)).item() for a, b in zip(ACTION, BASE)]
    likelihood = [ref[0] + ref[1], ref[2] + ref[3]]
    mean = sum(g) / 2
    expected = -((g[0] - mean) * likelihood[0] + (g[1] - mean) * likelihood[1]) / (2 - 1)
    assert metrics["actor_loss"] == pytest.approx(expected, rel=1e-5)
    assert metrics["episode_kl_penalty"] == pytest.approx(beta * sum(ratio) / 2, rel=1e-5)
