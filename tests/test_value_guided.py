"""Value-guided decoding: the accept/reject chain of w = q·exp(Q/β) emits softmax(log q + Q/β) exactly, a constant
Q decodes as base sampling with KL 0, and each step's exact KL is the brute-force sum over its candidates."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

from tokenalign.agents.chain import emission_log_probs
from tokenalign.agents.value_guided import ValueGuidedPolicy
from tokenalign.envs.candidates import SamplingConfig
from tokenalign.envs.engine import DecodingEngine, EngineConfig
from tokenalign.envs.rollout import generate_episodes

PROMPT = "The secret of life is"


def context_engine(lm, **config) -> DecodingEngine:
    model, tokenizer = lm
    return DecodingEngine(model=model, tokenizer=tokenizer, config=EngineConfig(candidate_state="context", **config))


def head(engine: DecodingEngine, *, beta: float, scale: float) -> ValueGuidedPolicy:
    """A value-guided agent whose Q is far from constant (`scale`) or zero (0)."""
    torch.manual_seed(0)
    policy = ValueGuidedPolicy(state_size=engine.state_size, widths=(16,), beta=beta)
    torch.nn.init.normal_(policy.body[-1].weight, std=scale)
    return policy.eval()


def first_step(engine: DecodingEngine, policy: ValueGuidedPolicy) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(candidate ids, log q, Q) of the first step of PROMPT."""
    batch = engine.start([PROMPT])
    count = int(batch.cand.count[0])
    ranks = torch.arange(count)
    with torch.no_grad():
        q_values = policy.q_values(engine.observation(batch, torch.zeros_like(ranks), ranks))
    return batch.cand.token_ids[0, :count], batch.cand.logp[0, :count], q_values


def test_the_tilted_chain_emits_softmax_of_log_q_plus_q_over_beta(tiny_lm):
    """Exactly, through the chain's accept logits; and 3000 sampled first tokens χ²-fit it."""
    engine = context_engine(tiny_lm, max_new_tokens=1, sampling=SamplingConfig(top_k=10, top_p=1.0))
    policy = head(engine, beta=0.5, scale=1.0)
    ids, log_q, q_values = first_step(engine, policy)
    target = torch.softmax(log_q.double() + q_values.double() / 0.5, dim=0)
    assert float((target - log_q.double().exp()).abs().max()) > 0.05  # the tilt moves the distribution
    batch = engine.start([PROMPT])
    ranks = torch.arange(engine.k).unsqueeze(0)
    observation = engine.observation(batch, torch.zeros_like(ranks), ranks)
    logits = policy.step_accept_logits(observation, batch.cand.count)
    emitted = emission_log_probs(logits.double(), batch.cand.count)[0, : len(ids)].exp()
    torch.testing.assert_close(emitted, target, atol=1e-6, rtol=1e-5)

    rows = 3000
    episodes = generate_episodes(engine, policy, [PROMPT] * rows, generator=torch.Generator().manual_seed(1))
    drawn = torch.tensor([e.response_tokens[0] for e in episodes])
    observed = torch.stack([(drawn == i).sum() for i in ids]).double()
    assert int(observed.sum()) == rows
    assert scipy.stats.chisquare(observed.numpy(), (target * rows).numpy()).pvalue > 1e-3


def test_a_constant_value_decodes_as_base_sampling_with_kl_zero(tiny_lm):
    """An untrained head (Q ≡ 0) and a constant one (every candidate's Q alike) are base sampling."""
    engine = context_engine(tiny_lm, max_new_tokens=12)
    untrained = head(engine, beta=0.3, scale=0.0)
    constant = head(engine, beta=0.3, scale=0.0)
    torch.nn.init.constant_(constant.body[-1].bias, 2.5)
    for policy in (untrained, constant):
        for episode in generate_episodes(engine, policy, [PROMPT, "A man", "Love is"],
                                         generator=torch.Generator().manual_seed(2)):
            assert episode.num_decisions > 0
            assert abs(episode.kl) < 1e-5 and abs(episode.exact_kl) < 1e-5
            assert abs(float(episode.log_ratio.astype(np.float64).sum())) < 1e-4


@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_each_steps_exact_kl_is_the_brute_force_sum(tiny_lm, beta):
    """One step: the decode loop's exact KL equals Σ_i π_i·log(π_i/q_i) by hand; the sampled estimators agree."""
    engine = context_engine(tiny_lm, max_new_tokens=1, sampling=SamplingConfig(top_k=8, top_p=1.0))
    policy = head(engine, beta=beta, scale=1.0)
    _, log_q, q_values = first_step(engine, policy)
    pi = torch.softmax(log_q.double() + q_values.double() / beta, dim=0)
    exact = float((pi * (pi.log() - log_q.double())).sum())
    assert exact > 0.01
    episodes = generate_episodes(engine, policy, [PROMPT] * 3000, generator=torch.Generator().manual_seed(3))
    assert all(e.exact_kl == pytest.approx(exact, rel=1e-4, abs=1e-6) for e in episodes)
    values = np.array([e.kl for e in episodes])
    assert abs(values.mean() - exact) < 4 * values.std(ddof=1) / np.sqrt(len(values)) + 1e-6


def test_a_value_guided_agent_needs_context_states(tiny_lm):
    model, tokenizer = tiny_lm
    engine = DecodingEngine(model=model, tokenizer=tokenizer, config=EngineConfig(max_new_tokens=4))
    policy = ValueGuidedPolicy(state_size=engine.state_size, widths=(8,))
    with pytest.raises(ValueError, match="needs every candidate of a step at once: decode with engine.candidate_state=context"):
        generate_episodes(engine, policy, [PROMPT])
    with pytest.raises(ValueError, match="β .* must be a positive number"):
        ValueGuidedPolicy(state_size=8, beta=0.0)


def test_beta_is_a_decode_time_dial_of_a_saved_head(tmp_path):
    from tokenalign.agents.policy import AcceptRejectPolicy
    from tokenalign.eval.agent_source import load_agent
    from tokenalign.eval.errors import EvalError

    saved = ValueGuidedPolicy(state_size=10, widths=(8,), beta=0.5)
    torch.save(saved.policy_state(), tmp_path / "value.pt")
    assert load_agent(tmp_path / "value.pt", state_size=10).beta == 0.5
    loaded = load_agent(tmp_path / "value.pt", state_size=10, beta=0.2)
    assert isinstance(loaded, ValueGuidedPolicy) and loaded.beta == 0.2
    torch.testing.assert_close(loaded.state_dict()["body.0.weight"], saved.state_dict()["body.0.weight"])
    torch.save(AcceptRejectPolicy(state_size=10, widths=(8,)).policy_state(), tmp_path / "mlp.pt")
    with pytest.raises(EvalError, match="β sets a value-guided agent's tilt"):
        load_agent(tmp_path / "mlp.pt", state_size=10, beta=0.2)
