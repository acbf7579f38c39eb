"""Resampling from a guided proposal on a toy LM whose responses can all be listed (the tiny LM, top-3 candidates,
two tokens): the kept responses against the exact distribution of the keep rule (chi-square), and the reported KL
bound against the brute-force KL of that distribution."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.stats
import torch

from tokenalign.agents.policy import AcceptRejectPolicy, decision_log_probs
from tokenalign.data.prompts import Prompt
from tokenalign.envs.candidates import propose
from tokenalign.envs.task import DecodingTask
from tokenalign.envs.teacher_forcing import force_responses
from tokenalign.eval.errors import EvalError
from tokenalign.eval.evaluate import evaluate

PROMPT = Prompt(id=7, text="I think the food is", source="test")
K, BETA, DRAWS = 3, 0.2, 1500


@pytest.fixture(scope="module")
def toy(tiny_lm):
    """The task, an agent far from π_ref, and every response with log π_a, log π_ref and its reward."""
    task = DecodingTask.build(model=tiny_lm, prompts=[PROMPT], scorers=["vader"], max_new_tokens=2,
                              candidate_state="context", sampling={"top_k": 3, "top_p": 1.0, "temperature": 1.0})
    engine = task.engine
    torch.manual_seed(3)
    agent = AcceptRejectPolicy(state_size=task.state_size, widths=(8,))
    torch.nn.init.normal_(agent.body[-1].weight, std=1.0)
    agent.eval()
    context = engine.encode([PROMPT.text])[0]

    def candidates(prefix: list[int]) -> list[int]:
        with torch.no_grad():
            logits = engine.model(torch.tensor([context + prefix])).logits[:, -1].float()
        c = propose(logits, engine.config.sampling)
        return c.token_ids[0, : int(c.count[0])].tolist()

    responses = []
    for first in candidates([]):
        responses += [[first]] if first == engine.eos_token_id else [[first, s] for s in candidates([first])]
    forced = force_responses(engine, [PROMPT.text] * len(responses), responses)
    obs = torch.cat([forced.state, forced.base_logit.unsqueeze(-1)], dim=-1)
    with torch.no_grad():
        log_agent = forced.sequence_sum(decision_log_probs(agent(obs)[..., 1], forced.action)).double().numpy()
    log_ref = forced.sequence_sum(decision_log_probs(forced.base_logit, forced.action)).double().numpy()
    texts = [engine.tokenizer.decode(r, skip_special_tokens=True) for r in responses]
    reward = task.score([PROMPT] * len(responses), texts).final
    assert np.exp(log_agent).sum() == pytest.approx(1.0, abs=1e-4)  # the list is every response
    assert np.exp(log_ref).sum() == pytest.approx(1.0, abs=1e-4)
    return task, agent, responses, log_agent, log_ref, reward


def kept_distribution(rule: str, log_agent: np.ndarray, log_ref: np.ndarray, reward: np.ndarray) -> np.ndarray:
    """p(y) of keeping one of K draws from π_a, over every K-tuple of responses."""
    tuples = np.array(list(itertools.product(range(len(reward)), repeat=K)))
    prob = np.exp(log_agent[tuples].sum(axis=1))
    if rule == "resample":
        keep = torch.softmax(torch.as_tensor(reward[tuples] / BETA - (log_agent - log_ref)[tuples]), dim=1).numpy()
    else:  # the first of the highest rewards, as evaluate's argmax
        keep = np.eye(K)[reward[tuples].argmax(axis=1)]
    p = np.zeros(len(reward))
    np.add.at(p, tuples, prob[:, None] * keep)
    return p


@pytest.mark.parametrize("rule,label", [("resample", "agent-resample-3"), ("resample-best", "agent-best-of-3")])
def test_kept_responses_follow_the_rules_exact_distribution_and_respect_the_kl_bound(toy, rule, label):
    task, agent, responses, log_agent, log_ref, reward = toy
    result = evaluate(task, rule, [PROMPT] * DRAWS, policy=agent, n=K, seed=0, batch_size=512, beta=BETA)
    assert result.label == label and result.summary["samples_per_prompt"] == K
    assert result.summary["lm_forward_tokens_per_token"] > K * 0.9  # K samples' compute per kept token
    index = {tuple(r): i for i, r in enumerate(responses)}
    counts = np.bincount([index[tuple(r.token_ids)] for r in result.records], minlength=len(responses))
    p = kept_distribution(rule, log_agent, log_ref, reward)
    p, agent_alone = p / p.sum(), np.exp(log_agent) / np.exp(log_agent).sum()  # float32 decisions: sums 1 ± 1e-4
    big = p * DRAWS >= 5  # cells expected under 5 merged into one
    merge = lambda x: np.append(x[big], x[~big].sum()) if (~big).any() else x  # noqa: E731
    assert scipy.stats.chisquare(merge(counts), merge(p) * DRAWS).pvalue > 1e-3
    assert scipy.stats.chisquare(merge(counts), merge(agent_alone) * DRAWS).pvalue < 1e-6  # the rule moved the text
    # KL(p ‖ π_ref) by brute force ≤ log K + E_p[ℓ]; the reported bound estimates the right side
    exact_kl = float(np.sum(p * (np.log(np.maximum(p, 1e-300)) - log_ref)))
    bound = math.log(K) + float(np.sum(p * (log_agent - log_ref)))
    assert exact_kl <= bound
    kept = np.array([r.log_ratio for r in result.records])
    se = kept.std(ddof=1) / math.sqrt(DRAWS)
    assert result.summary["kl_per_response_bound"] == pytest.approx(bound, abs=4 * se)
    assert "kl_per_response" not in result.summary  # the agent's own KL does not describe the kept text


def test_resample_without_a_beta_is_one_clear_error(toy):
    task, agent, *_ = toy
    with pytest.raises(EvalError, match=r"pass a β > 0 \(eval --resample-beta\)"):
        evaluate(task, "resample", [PROMPT], policy=agent, n=2)
