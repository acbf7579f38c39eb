"""Decoding modes of tokenalign.eval on the bundled model: determinism, best-of-N, MARA's proxy strategies."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.stats
import torch

from tokenalign.agents.policy import AcceptRejectPolicy
from tokenalign.data.prompts import Prompt, prompt_id
from tokenalign.envs.task import DecodingTask
from tokenalign.eval.errors import EvalError
from tokenalign.eval.evaluate import MODES, evaluate
from tokenalign.eval.forward_tokens import ForwardTokenCounter
from tokenalign.eval.perplexity import response_perplexity
from tokenalign.eval.proxy import proxy_decode
from tokenalign.eval.sampler import sample_responses
from tokenalign.lm.loader import load_lm

TEXTS = ["The secret of life is", "A man", "Never trust a computer", "Q: Why", "Love is", "Fortune favors"]
PROMPTS = [Prompt(id=prompt_id(t), text=t, source="test") for t in TEXTS]
AGENT_MODES = ("serial", "top1", "random", "max_prob")


@pytest.fixture(scope="module")
def task() -> DecodingTask:
    return DecodingTask.build(model=load_lm("builtin:tiny"), prompts=TEXTS, max_new_tokens=10, candidate_block=4)


@pytest.fixture(scope="module")
def agent(task) -> AcceptRejectPolicy:
    # An agent far from π_ref whose accept probabilities straddle 0.5, so every strategy has choices to make.
    torch.manual_seed(0)
    policy = AcceptRejectPolicy(state_size=task.state_size, widths=(16,))
    with torch.no_grad():
        torch.nn.init.normal_(policy.body[-1].weight, std=3.0)
    return policy.eval()


def accept_all(states: torch.Tensor) -> torch.Tensor:
    return torch.ones(states.shape[0])


def reject_all(states: torch.Tensor) -> torch.Tensor:
    return torch.zeros(states.shape[0])


def same_generations(a, b) -> bool:
    strip = lambda r: dataclasses.replace(r, decode_s=0.0)  # noqa: E731  (wall time is not output)
    return [strip(r) for r in a.records] == [strip(r) for r in b.records]


@pytest.mark.parametrize("mode", MODES)
def test_same_seed_same_output_and_summary_layout(task, agent, mode):
    first = evaluate(task, mode, PROMPTS, policy=agent, n=3, seed=7, batch_size=4, beta=0.5)
    again = evaluate(task, mode, PROMPTS, policy=agent, n=3, seed=7, batch_size=4, beta=0.5)
    assert same_generations(first, again)
    assert [r.prompt_id for r in first.records] == [p.id for p in PROMPTS]
    s = first.summary
    assert s["n"] == len(PROMPTS) and s["mode"] == first.label
    for key in ("reward", "cost", "cost_success", "length", "perplexity"):
        assert set(s[key]) == {"mean", "se"} and np.isfinite(s[key]["mean"])
    assert s["reward"]["mean"] == pytest.approx(np.mean([r.final for r in first.records]))
    assert s["cost_success"]["mean"] == pytest.approx(np.mean([r.cost <= 0.5 for r in first.records]))
    assert set(s["scores"]) == {"vader", "profanity"}
    assert 0.0 < s["distinct_1"] <= 1.0 and s["lm_forward_tokens"] > 0 and s["seconds_per_token"] > 0


def test_sampling_seed_matters(task):
    runs = [evaluate(task, "base", PROMPTS, seed=s, batch_size=6) for s in (0, 1)]
    assert [r.response for r in runs[0].records] != [r.response for r in runs[1].records]


def test_best_of_n_keeps_the_highest_final_reward(task):
    n, seed = 4, 3
    result = evaluate(task, "best-of-n", PROMPTS, n=n, seed=seed, batch_size=len(PROMPTS) * n)
    assert result.label == "best-of-4"
    # The same generator over the same single batch replays every candidate sample.
    rows = [p for p in PROMPTS for _ in range(n)]
    generator = torch.Generator().manual_seed(seed)
    samples = sample_responses(task.engine, [p.text for p in rows], generator=generator)
    finals = task.score(rows, [task.engine.tokenizer.decode(s, skip_special_tokens=True) for s in samples]).final
    finals = finals.reshape(len(PROMPTS), n)
    assert not np.allclose(finals.min(axis=1), finals.max(axis=1)), "samples should differ in reward"
    for j, record in enumerate(result.records):
        assert record.final == pytest.approx(float(finals[j].max()))
        assert record.token_ids == samples[j * n + int(finals[j].argmax())]
    base = evaluate(task, "base", PROMPTS, seed=seed, batch_size=len(PROMPTS) * n)
    assert result.summary["reward"]["mean"] >= base.summary["reward"]["mean"] - 1e-6
    assert result.summary["lm_forward_tokens"] > base.summary["lm_forward_tokens"]


def test_best_of_one_is_base_sampling(task):
    one = evaluate(task, "best-of-n", PROMPTS, n=1, seed=5)
    base = evaluate(task, "base", PROMPTS, seed=5)
    assert [r.token_ids for r in one.records] == [r.token_ids for r in base.records]


def test_base_sampling_draws_from_the_warped_distribution(task):
    engine = task.engine
    prompt, rows = "A man", 400
    one_token = type(engine)(model=engine.model, tokenizer=engine.tokenizer,
                             config=dataclasses.replace(engine.config, max_new_tokens=1))
    generator = torch.Generator().manual_seed(0)
    drawn = torch.tensor([t[0] for t in sample_responses(one_token, [prompt] * rows, generator=generator)])
    batch = one_token.start([prompt])
    count = int(batch.cand.count[0])
    ids, probs = batch.cand.token_ids[0, :count], batch.cand.logp[0, :count].exp()
    assert bool(torch.isin(drawn, ids).all()), "a sample fell outside top-k/top-p"
    # Chi-square over the top-5 candidates and the pooled rest (every expected count is >= 20).
    observed = torch.stack([(drawn == i).sum() for i in ids]).double()
    observed = torch.cat([observed[:5], observed[5:].sum(0, keepdim=True)])
    expected = torch.cat([probs[:5], probs[5:].sum(0, keepdim=True)]).double()
    expected = expected / expected.sum() * rows
    assert scipy.stats.chisquare(observed.numpy(), expected.numpy()).pvalue > 1e-3


@pytest.mark.parametrize("mode", AGENT_MODES)
def test_rejecting_everything_emits_each_steps_last_candidate_in_every_mode(task, mode):
    """One all-rejected rule for training and every evaluation mode: the last candidate is emitted."""
    engine = task.engine
    batch = engine.start(TEXTS)
    agent = evaluate(task, mode, PROMPTS, policy=reject_all)
    for row, record in enumerate(agent.records):
        assert record.token_ids[0] == int(batch.cand.token_ids[row, batch.cand.count[row] - 1])
    sampled = evaluate(task, "sample", PROMPTS, policy=reject_all)
    assert [r.token_ids for r in agent.records] == [r.token_ids for r in sampled.records]


@pytest.mark.parametrize("mode", ("serial", "top1", "max_prob"))
def test_agent_accepting_everything_is_greedy(task, mode):
    greedy = evaluate(task, "greedy", PROMPTS)
    agent = evaluate(task, mode, PROMPTS, policy=accept_all)
    assert [r.token_ids for r in agent.records] == [r.token_ids for r in greedy.records]


def test_sample_mode_is_the_rollout_decode_loop_with_sampled_actions(task, agent):
    """The agent as a text distribution: the same tokens as the actors' generate_episodes for the same draws."""
    from tokenalign.envs.rollout import generate_episodes

    sampled = evaluate(task, "sample", PROMPTS, policy=agent, seed=3, batch_size=len(PROMPTS))
    episodes = generate_episodes(task.engine, agent, TEXTS, generator=torch.Generator().manual_seed(3))
    assert sampled.label == "agent-sample"
    assert [r.token_ids for r in sampled.records] == [e.response_tokens for e in episodes]
    assert not same_generations(sampled, evaluate(task, "sample", PROMPTS, policy=agent, seed=4, batch_size=len(PROMPTS)))
    greedy = evaluate(task, "greedy", PROMPTS)
    accepting = evaluate(task, "sample", PROMPTS, policy=accept_all)
    assert [r.token_ids for r in accepting.records] == [r.token_ids for r in greedy.records]
    rejecting = evaluate(task, "sample", PROMPTS, policy=reject_all)  # the last candidate is emitted
    assert [r.token_ids for r in rejecting.records] != [r.token_ids for r in greedy.records]


def test_kl_to_the_base_lm_is_measured_while_decoding(task, agent):
    """Sampled agents carry Σ log π/q per response; base sampling is q itself; best-of-N gets its analytic bound."""
    from tokenalign.envs.rollout import generate_episodes

    base = evaluate(task, "base", PROMPTS, seed=1)
    assert all(r.log_ratio == 0.0 for r in base.records) and base.summary["kl_per_response"]["mean"] == 0.0
    best = evaluate(task, "best-of-n", PROMPTS, n=4, seed=1)
    assert all(r.log_ratio is None for r in best.records) and "kl_per_response" not in best.summary
    assert best.summary["kl_per_response_bound"] == pytest.approx(np.log(4) - 3 / 4)
    # Accepting every candidate emits rank 0 with π = 1: the KL and the log-ratio are −Σ log q of the decided
    # tokens, and log q of rank 0 is log σ(π_ref's accept logit there).
    accepting = evaluate(task, "sample", PROMPTS, policy=accept_all, seed=2, batch_size=len(PROMPTS))
    episodes = generate_episodes(task.engine, accept_all, TEXTS, generator=torch.Generator().manual_seed(2))
    expected = [-float(torch.nn.functional.logsigmoid(torch.from_numpy(e.base_logit[e.emit])).sum()) for e in episodes]
    np.testing.assert_allclose([r.log_ratio for r in accepting.records], expected, rtol=1e-5)
    np.testing.assert_allclose([r.kl for r in accepting.records], expected, rtol=1e-5)
    assert all(x > 0 for x in expected)
    s = accepting.summary
    assert s["kl_per_response"]["mean"] == pytest.approx(np.mean(expected), rel=1e-5)
    assert s["kl_per_token"] == pytest.approx(np.sum(expected) / sum(r.tokens for r in accepting.records), rel=1e-5)
    # Greedy decoding of an agent (MARA's serial) is a point mass: its KL is −Σ log q of its tokens, finite.
    serial = evaluate(task, "serial", PROMPTS, policy=agent)
    assert serial.summary["kl_per_response"]["mean"] > 0
    np.testing.assert_allclose([r.kl for r in serial.records], [r.log_ratio for r in serial.records], rtol=1e-4)
    assert "kl_per_response" not in evaluate(task, "top1", PROMPTS, policy=agent).summary


def test_serial_and_top1_emit_the_same_tokens_but_serial_computes_fewer_states(task, agent):
    serial = evaluate(task, "serial", PROMPTS, policy=agent)
    top1 = evaluate(task, "top1", PROMPTS, policy=agent)
    greedy = evaluate(task, "greedy", PROMPTS)
    assert [r.token_ids for r in serial.records] == [r.token_ids for r in top1.records]
    assert [r.token_ids for r in serial.records] != [r.token_ids for r in greedy.records]
    assert serial.summary["lm_forward_tokens"] < top1.summary["lm_forward_tokens"]


@pytest.mark.parametrize("strategy", ("max_prob", "random", "top1"))
def test_first_step_choice_follows_the_strategy(task, agent, strategy):
    engine = task.engine
    all_at_once = type(engine)(model=engine.model, tokenizer=engine.tokenizer,
                               config=dataclasses.replace(engine.config, candidate_block=0, max_new_tokens=1))
    batch = all_at_once.start(TEXTS)
    # (B, K) accept logits of every candidate; the last candidate of a row (and padding) is never decided on.
    logit = agent.accept_logit(torch.cat([batch.cand_hidden, batch.cand.base_logit.unsqueeze(-1)], -1))
    valid = torch.arange(all_at_once.k) < (batch.cand.count - 1).unsqueeze(1)
    accepted = valid & (logit > 0)
    assert bool(accepted.any(dim=1).any()) and not bool(accepted.all()), "the agent should accept some candidates"
    tokens = proxy_decode(all_at_once, agent.accept_logit, TEXTS, strategy=strategy,
                          generator=torch.Generator().manual_seed(0))
    for row, token in enumerate(t[0] for t in tokens):
        rank = int((batch.cand.token_ids[row] == token).nonzero()[0])
        if not bool(accepted[row].any()):
            assert rank == int(batch.cand.count[row]) - 1
        elif strategy == "max_prob":
            assert rank == int(logit[row].masked_fill(~valid[row], float("-inf")).argmax())
        elif strategy == "top1":
            assert rank == int(accepted[row].int().argmax())
        else:
            assert bool(accepted[row, rank])


def test_forward_tokens_count_prompt_and_fed_back_tokens(task):
    engine = task.engine
    with ForwardTokenCounter(model=engine.model) as counter:
        tokens = sample_responses(engine, ["The secret of life is"], greedy=True)[0]
    prompt_len = len(engine.tokenizer("The secret of life is")["input_ids"])
    assert counter.total == prompt_len + len(tokens) - 1  # the last token is never fed back
    engine.model(torch.tensor([[1, 2, 3]]))
    assert counter.total == prompt_len + len(tokens) - 1  # nothing counted outside the block


def test_perplexity_matches_an_unbatched_forward(task):
    model, tok = task.engine.model, task.engine.tokenizer
    prompts = [tok(t)["input_ids"] for t in ("A man", "Never trust a computer you can't")]
    responses = [tok(" walks into a bar")["input_ids"], tok(" lift")["input_ids"]]
    got = response_perplexity(model, prompts, responses, pad_token_id=tok.pad_token_id, batch_size=2)
    for j, (p, r) in enumerate(zip(prompts, responses)):
        logits = model(torch.tensor([p + r])).logits[0, len(p) - 1: -1]
        nll = -torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(r).unsqueeze(1)).mean()
        assert got[j] == pytest.approx(float(nll.exp()), rel=1e-4)


def test_bad_arguments_raise_one_clear_error(task, agent):
    with pytest.raises(EvalError, match="unknown evaluation mode 'beam'"):
        evaluate(task, "beam", PROMPTS)
    with pytest.raises(EvalError, match="pass policy="):
        evaluate(task, "serial", PROMPTS)
    with pytest.raises(EvalError, match="no prompts to evaluate"):
        evaluate(task, "base", [])
    other_lm_agent = AcceptRejectPolicy(state_size=task.state_size + 8, widths=(8,))
    with pytest.raises(EvalError, match="does not match this engine's candidate states of size"):
        evaluate(task, "max_prob", PROMPTS, policy=other_lm_agent)


def test_a_task_built_from_a_path_loads_the_lm_in_the_configured_dtype() -> None:
    # `tokenalign eval` builds its task from lm.path and lm.dtype, as the rollout actors do.
    task = DecodingTask.build(model="builtin:tiny", prompts=TEXTS[:2], max_new_tokens=4, dtype="bfloat16")
    assert {p.dtype for p in task.engine.model.parameters()} == {torch.bfloat16}
    assert len(evaluate(task, "greedy", PROMPTS[:2], batch_size=2).records) == 2
