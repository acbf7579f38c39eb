"""Context-mode candidate states: one LM forward per token, the emitted rank drawn once from the chain's emission
distribution, records that learners read as the sequential decisions they imply, and the Gymnasium faces."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from gymnasium.utils.env_checker import check_env

from tokenalign.agents.chain import chain_log_probs, draw_first_accept, emission_log_probs
from tokenalign.agents.policy import AcceptRejectPolicy
from tokenalign.buffers.batches import Transitions
from tokenalign.envs.accept_reject import AcceptRejectEnv
from tokenalign.envs.candidate_state import unit_rms
from tokenalign.envs.candidates import SamplingConfig
from tokenalign.envs.engine import DecodingEngine, EngineConfig
from tokenalign.envs.rollout import generate_episodes
from tokenalign.envs.teacher_forcing import force_responses
from tokenalign.eval.forward_tokens import ForwardTokenCounter
from tokenalign.learners import config_class, make_learner

PROMPTS = ["The secret of life is", "A man", "Never trust a computer you can't throw out a window, said"]


def context_engine(lm, **config) -> DecodingEngine:
    model, tokenizer = lm
    return DecodingEngine(model=model, tokenizer=tokenizer, config=EngineConfig(candidate_state="context", **config))


def sequential_chain(p: torch.Tensor) -> torch.Tensor:
    """π(i) of sequential Bernoulli decisions by hand: reject ranks < i with 1 − p_j, accept i with p_i; the last
    candidate (p ignored) takes the rest."""
    out, reach = [], 1.0
    for i in range(len(p) - 1):
        out.append(reach * float(p[i]))
        reach *= 1.0 - float(p[i])
    return torch.tensor([*out, reach], dtype=torch.float64)


def test_the_one_shot_emission_distribution_is_the_sequential_chains():
    """Exact, for random accept probabilities and candidate counts; and one uniform per row draws from it."""
    gen = torch.Generator().manual_seed(0)
    logit = torch.randn(64, 9, generator=gen, dtype=torch.float64) * 2
    count = torch.randint(1, 10, (64,), generator=gen)
    log_pi = emission_log_probs(logit, count)
    for row in range(64):
        n = int(count[row])
        torch.testing.assert_close(log_pi[row, :n].exp(), sequential_chain(torch.sigmoid(logit[row, :n])),
                                   rtol=1e-12, atol=1e-15)
        assert torch.isinf(log_pi[row, n:]).all()
    # The draw: rank i first accepted with π(i) over a window, none with ∏(1 − p) (χ² over 40k draws).
    row_logit = torch.tensor([[0.3, -1.0, 0.5, -0.2]])
    decided = torch.tensor([[True, True, True, False]])
    first, none = chain_log_probs(row_logit.double(), decided)
    expected = torch.cat([first[0, :3].exp(), none.exp()]).numpy() * 40_000
    draws = draw_first_accept(row_logit.expand(40_000, 4), decided.expand(40_000, 4),
                              generator=torch.Generator().manual_seed(1))
    stop = torch.where(draws.any(1), draws.int().argmax(1), torch.tensor(3))
    observed = torch.bincount(stop, minlength=4).numpy()
    assert scipy.stats.chisquare(observed, expected).pvalue > 1e-3


def test_context_states_are_what_the_steps_forward_returned(tiny_lm):
    """[h_t ; e_c ; log q ; log(1 + rank)]: h_t is a cache-free forward's last state of the context, e_c the LM
    head's row of the candidate, both at unit RMS."""
    model, tokenizer = tiny_lm
    engine = context_engine(tiny_lm, max_new_tokens=10)
    batch = engine.start(PROMPTS)
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        engine.apply(batch, torch.randint(0, 2, (batch.size,), generator=gen))
    hidden = engine.hidden_size
    assert engine.state_size == 2 * hidden + 2
    for row, prompt in enumerate(PROMPTS):
        if bool(batch.done[row]):
            continue
        prefix = tokenizer(prompt, add_special_tokens=False)["input_ids"] + batch.response_tokens(row)
        context = model(torch.tensor([prefix]), output_hidden_states=True).hidden_states[-1][0, -1]
        count = int(batch.cand.count[row])
        ranks = torch.arange(count)
        states = engine.candidate_states(batch, torch.full((count,), row), ranks)
        torch.testing.assert_close(states[:, :hidden], unit_rms(context).expand(count, -1), atol=1e-4, rtol=1e-4)
        embeddings = model.get_output_embeddings().weight[batch.cand.token_ids[row, :count]]
        torch.testing.assert_close(states[:, hidden: 2 * hidden], unit_rms(embeddings))
        torch.testing.assert_close(states[:, -2], batch.cand.logp[row, :count])
        torch.testing.assert_close(states[:, -1], torch.log1p(ranks.float()))


def test_context_mode_costs_one_forward_per_token(tiny_lm):
    """One forward per token step for the whole batch (rows one step apart share it), one forward token per
    live row and generated token after the prompt; lookahead pays a query token per candidate looked at."""
    _, tokenizer = tiny_lm
    agent = lambda s: torch.full((s.shape[0],), 0.2)  # noqa: E731  (rejects like a trained agent)
    cost = {}
    for mode in ("context", "lookahead"):
        model, _ = tiny_lm
        engine = DecodingEngine(model=model, tokenizer=tokenizer,
                                config=EngineConfig(max_new_tokens=16, candidate_state=mode))
        with ForwardTokenCounter(model=model) as counter:
            episodes = generate_episodes(engine, agent, PROMPTS, generator=torch.Generator().manual_seed(2))
        prefill = len(PROMPTS) * max(len(ids) for ids in engine.encode(PROMPTS))  # one left-padded forward
        generated = sum(len(e.response_tokens) for e in episodes)
        cost[mode] = (counter.total - prefill) / generated
        if mode == "context":
            assert engine.forwards == max(len(e.response_tokens) for e in episodes)  # prefill + one per step
    assert cost["context"] <= 1.0 < 2.0 < cost["lookahead"]


def test_an_untrained_context_agent_samples_exactly_as_the_base_lm(tiny_lm):
    """χ² of the first token against q, and a measured KL of 0 (decision KLs, log-ratios and the exact sum)."""
    engine = context_engine(tiny_lm, max_new_tokens=1, sampling=SamplingConfig(top_k=8, top_p=1.0))
    torch.manual_seed(0)
    agent = AcceptRejectPolicy(state_size=engine.state_size, widths=(32, 16)).eval()
    rows = 2000
    episodes = generate_episodes(engine, agent, [PROMPTS[0]] * rows, generator=torch.Generator().manual_seed(1))
    drawn = torch.tensor([e.response_tokens[0] for e in episodes])
    batch = engine.start([PROMPTS[0]])
    ids, q = batch.cand.token_ids[0, :8], batch.cand.logp[0, :8].double().exp()
    observed = torch.stack([(drawn == i).sum() for i in ids]).double()
    assert int(observed.sum()) == rows
    assert scipy.stats.chisquare(observed.numpy(), (q / q.sum() * rows).numpy()).pvalue > 1e-3
    long = context_engine(tiny_lm, max_new_tokens=12)
    for episode in generate_episodes(long, agent, PROMPTS, generator=torch.Generator().manual_seed(2)):
        assert episode.num_decisions > 0
        assert abs(episode.kl) < 1e-5 and abs(float(episode.log_ratio.sum())) < 1e-4 and abs(episode.exact_kl) < 1e-5


def test_context_records_replay_as_sequential_decisions_with_the_same_learner_loss(tiny_lm):
    """The fast path draws each step's rank once; the chain it records (rejections, then the accept) is what the
    one-decision-at-a-time face takes, state for state; a learner updated on either gets the same loss."""
    engine = context_engine(tiny_lm, max_new_tokens=10)
    torch.manual_seed(3)
    agent = AcceptRejectPolicy(state_size=engine.state_size, widths=(16,))
    torch.nn.init.normal_(agent.body[-1].weight, std=0.5)  # an agent far from π_ref
    agent.eval()
    episodes = generate_episodes(engine, agent, PROMPTS, generator=torch.Generator().manual_seed(4))
    fast, replay = [], []
    for episode in episodes:
        batch = engine.start([episode.prompt])
        for i, action in enumerate(episode.action.tolist()):
            observation = engine.observe(batch)[0]
            # batches of 3 and of 1 round the LM's fp32 sums differently: float16 states agree to an ulp or two
            torch.testing.assert_close(observation[:-1].half().float(), torch.from_numpy(episode.state[i]).float(),
                                       atol=1e-3, rtol=1e-3)
            assert float(observation[-1]) == pytest.approx(float(episode.base_logit[i]), abs=1e-5)
            with torch.no_grad():
                logp = float(agent.log_probs(observation)[action])
            assert logp == pytest.approx(float(episode.logp[i]), abs=1e-4)
            replay.append((observation, action, logp))
            assert bool(engine.apply(batch, torch.tensor([action]))[0]) == bool(episode.emit[i])
        assert batch.response_tokens(0) == episode.response_tokens
        fast += [(torch.cat([torch.from_numpy(episode.state[i]).float(), torch.tensor([episode.base_logit[i]])]),
                  int(episode.action[i]), float(episode.logp[i])) for i in range(episode.num_decisions)]
    episode_ids = [e for e, episode in enumerate(episodes) for _ in range(episode.num_decisions)]

    def losses(rows) -> dict[str, float]:
        batch = transitions(rows, episode_ids, state_size=engine.state_size)
        ppo = make_learner("ppo", state_size=engine.state_size, config=config_class("ppo")(widths=(16,)), seed=5)
        return ppo.update(batch)

    on_fast, on_replay = losses(fast), losses(replay)
    assert on_fast.keys() == on_replay.keys()
    for key in on_fast:
        assert on_fast[key] == pytest.approx(on_replay[key], rel=1e-3, abs=1e-4), key


def transitions(rows, episode_ids: list[int], *, state_size: int) -> Transitions:
    """A PPO batch of decisions [observation, action, logp], the episode's reward 1 on its last decision."""
    n = len(rows)
    observation = torch.stack([r[0].half().float() for r in rows])  # the buffer stores states as float16
    episode = torch.tensor(episode_ids)
    done = torch.tensor([episode_ids[i] != episode_ids[i + 1] if i + 1 < n else True for i in range(n)],
                        dtype=torch.float32)
    step = torch.cat([torch.arange(int((episode == e).sum())) for e in torch.unique_consecutive(episode)])
    state, base = observation[:, :state_size], observation[:, state_size]
    next_state = torch.cat([state[1:], torch.zeros(1, state_size)]) * (1 - done).unsqueeze(1)
    next_base = torch.cat([base[1:], torch.zeros(1)]) * (1 - done)
    return Transitions(state=state, action=torch.tensor([r[1] for r in rows]), reward=done.clone(),
                       cost=torch.zeros(n), next_state=next_state, done=done, logp=torch.tensor([r[2] for r in rows]),
                       episode_id=episode, step=step, prompt_id=episode.clone(), policy_version=torch.zeros(n, dtype=torch.long),
                       base_logit=base, next_base_logit=next_base, episode_decisions=torch.bincount(episode)[episode])


def test_teacher_forcing_in_context_mode_gives_the_rollouts_decisions(tiny_lm):
    """DPO's data path: forcing a response through the engine gives the states and actions its decoding took."""
    engine = context_engine(tiny_lm, max_new_tokens=10)
    episodes = generate_episodes(engine, lambda s: torch.full((s.shape[0],), 0.3), PROMPTS,
                                 generator=torch.Generator().manual_seed(6))
    forced = force_responses(engine, [e.prompt for e in episodes], [e.response_tokens for e in episodes])
    for i, episode in enumerate(episodes):
        mine = forced.sequence == i
        assert forced.action[mine].tolist() == episode.action.tolist()
        torch.testing.assert_close(forced.state[mine].half().float(), torch.from_numpy(episode.state).float(),
                                   atol=2e-3, rtol=1e-3)
        torch.testing.assert_close(forced.base_logit[mine], torch.from_numpy(episode.base_logit), atol=1e-4, rtol=1e-4)


def test_kept_token_states_in_context_mode_match_a_full_forward(tiny_lm):
    """What score heads read: the state after the prompt and after every response token, the last one included."""
    model, tokenizer = tiny_lm
    engine = context_engine(tiny_lm, max_new_tokens=8)
    episodes = generate_episodes(engine, lambda s: torch.full((s.shape[0],), 0.5), PROMPTS,
                                 generator=torch.Generator().manual_seed(7), keep_token_states=True)
    for episode in episodes:
        ids = tokenizer(episode.prompt, add_special_tokens=False)["input_ids"] + episode.response_tokens
        full = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]
        expected = full[len(ids) - len(episode.response_tokens) - 1:]
        torch.testing.assert_close(episode.token_states.float(), expected, atol=1e-2, rtol=1e-2)


def test_the_env_passes_check_env_in_context_mode():
    env = AcceptRejectEnv(max_new_tokens=6, candidate_state="context")
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (env.engine.state_size + 1,) == (2 * env.engine.hidden_size + 3,)
    assert math.isfinite(float(np.abs(obs).sum()))
