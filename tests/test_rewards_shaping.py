"""MARA's per-decision KL reward and final-reward postback, against straight transcriptions of MARA's loops."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tokenalign.rewards import ShapingConfig, candidate_logprobs, mara_kl_penalties


def mara_step_rewards(accept_prob: list[float], llm_logp: list[float], *, kl_ctl: float, penalty: str,
                      cond_prob: bool) -> list[float]:
    """One step's rewards computed candidate by candidate, as MARA's explore_with_env does."""
    if cond_prob:
        q, refuse = [accept_prob[0]], 1 - accept_prob[0]
        for p in accept_prob[1:]:
            q.append(refuse * p)
            refuse *= 1 - p
    else:
        q = list(accept_prob)
    norm = math.log(sum(math.exp(v) for v in q))
    rewards = []
    for lp, ref in zip((v - norm for v in q), llm_logp):
        kl = {"kl": lp - ref, "abs": abs(lp - ref), "mse": 0.5 * (lp - ref) ** 2, "full": math.exp(lp) * (lp - ref)}[penalty]
        rewards.append(-kl_ctl * kl)
    return rewards


def ragged_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    counts = torch.tensor([5, 2, 1, 4])
    mask = torch.arange(5)[None, :] < counts[:, None]
    accept_prob = torch.rand(4, 5, generator=generator, dtype=torch.float64)
    llm_logp = torch.log_softmax(torch.randn(4, 5, generator=generator, dtype=torch.float64), -1)
    return accept_prob, llm_logp.masked_fill(~mask, float("-inf")), mask


@pytest.mark.parametrize("penalty", ["kl", "abs", "mse", "full"])
@pytest.mark.parametrize("cond_prob", [False, True])
def test_mara_kl_penalties_match_maras_loop_on_a_ragged_batch(penalty, cond_prob):
    accept_prob, llm_logp, mask = ragged_batch(seed=len(penalty) + cond_prob)
    config = ShapingConfig(token_reward="mara_kl_div", kl_penalty=penalty, kl_ctl=0.3, cond_prob=cond_prob)
    rewards = -config.kl_ctl * mara_kl_penalties(accept_prob, llm_logp, mask, config=config)
    assert rewards.shape == (4, 5) and torch.isfinite(rewards).all()
    for row in range(4):
        n = int(mask[row].sum())
        expected = mara_step_rewards(accept_prob[row, :n].tolist(), llm_logp[row, :n].tolist(), kl_ctl=0.3,
                                     penalty=penalty, cond_prob=cond_prob)
        np.testing.assert_allclose(rewards[row, :n].numpy(), expected, rtol=1e-9, atol=1e-12)
        assert (rewards[row, n:] == 0).all()


def test_cond_prob_is_the_probability_of_the_first_accept():
    accept_prob = torch.tensor([[0.5, 0.2, 0.9, 0.7]])
    mask = torch.tensor([[True, True, True, False]])
    q = torch.tensor([0.5, 0.5 * 0.2, 0.5 * 0.8 * 0.9])
    logp = candidate_logprobs(accept_prob, mask, cond_prob=True)
    torch.testing.assert_close(logp[0, :3], torch.log_softmax(q, -1))
    assert logp[0, 3] == float("-inf")


def test_no_token_reward_and_config_validation():
    accept_prob, llm_logp, mask = ragged_batch(seed=0)
    assert (mara_kl_penalties(accept_prob, llm_logp, mask, config=ShapingConfig(token_reward="none")) == 0).all()
    with pytest.raises(ValueError, match="kl_penalty 'kld' is unknown; use one of kl, abs, mse, full"):
        ShapingConfig(kl_penalty="kld")
    with pytest.raises(ValueError, match="token_reward 'logit'"):
        ShapingConfig(token_reward="logit")
    with pytest.raises(ValueError, match="now named 'mara_kl_div'.*not a KL"):
        ShapingConfig(token_reward="kl_div")


def test_maras_penalty_is_not_a_kl():
    """π_ref, the accept/reject policy that decodes exactly as base sampling, has KL 0 to the base LM; MARA's
    penalty charges it anyway, and less than it charges a policy that always emits the top candidate."""
    from tokenalign.agents.chain import reference_accept_logits

    logq = torch.log_softmax(torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]]), -1)
    mask = torch.ones(1, 5, dtype=torch.bool)
    config = ShapingConfig(token_reward="mara_kl_div", kl_penalty="full", cond_prob=True)
    ref = torch.sigmoid(reference_accept_logits(logq, torch.tensor([5])))
    reproduces_q = float(mara_kl_penalties(ref, logq, mask, config=config).sum())
    top1_only = float(mara_kl_penalties(torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0]]), logq, mask, config=config).sum())
    assert abs(reproduces_q) > 0.1 and top1_only != reproduces_q
