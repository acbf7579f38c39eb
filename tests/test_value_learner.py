"""The value_guided learner: candidate rows with one-step scores through the buffer's records, its regression
targets and loss by hand, and a planted reward whose values the head learns."""
from __future__ import annotations

import textwrap

import pytest
import torch
from candidate_rows import candidate_batch

from tokenalign.buffers.batches import select_rows
from tokenalign.config import load_config
from tokenalign.core.parsing import ConfigError
from tokenalign.learners import config_class, make_learner
from tokenalign.learners.value_guided import ValueTargets


@pytest.fixture()
def counting_scorer(tmp_path, monkeypatch):
    """A user's scorer: +1 per occurrence of the word 'the' (a planted reward the head must find)."""
    (tmp_path / "planted.py").write_text(textwrap.dedent("""
        import re

        def the_count(prompts, responses):
            return [float(len(re.findall(r"\\bthe\\b", r.lower()))) for r in responses]
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "python:planted:the_count"


def test_candidate_rows_carry_one_step_scores_and_their_targets_are_the_objectives(tiny_lm, counting_scorer):
    """Every candidate of every step with a choice is a row; Δ = R(y_<t + c) − R(y_<t) and G = R(y) − R(y_<t + c)
    under the weighted objective (multiplier 1 here), checked against the texts by hand."""
    engine, decoded, decisions, objective = candidate_batch(tiny_lm, counting_scorer, episodes=4, seed=0)
    tokenizer = engine.tokenizer
    targets = make_learner("value_guided", state_size=engine.state_size,
                           config=config_class("value_guided")(future_target="monte_carlo")).label(objective, decisions)
    count = lambda ids: float(len(__import__("re").findall(r"\bthe\b", tokenizer.decode(ids).lower())))  # noqa: E731
    row = 0
    for episode in decoded:
        final = count(episode.response_tokens)
        for t, token, emitted in zip(episode.token_index.tolist(), episode.token.tolist(), episode.action.tolist()):
            prefix = episode.response_tokens[:t]
            assert float(targets.one_step[row]) == count(prefix + [token]) - count(prefix)
            assert float(targets.future[row]) == final - count(prefix + [token])
            assert bool(targets.emitted[row]) == bool(emitted)
            row += 1
    assert row == len(decisions) > 0
    assert targets.observation.shape == (row, engine.state_size + 1)


def test_the_loss_by_hand():
    learner = make_learner("value_guided", state_size=6, config=config_class("value_guided")(widths=(4,), future_weight=0.5))
    torch.nn.init.normal_(learner.policy.body[-1].weight)
    batch = ValueTargets(observation=torch.randn(5, 7, generator=torch.Generator().manual_seed(0)),
                         one_step=torch.tensor([1.0, 0.0, -1.0, 0.5, 0.0]), future=torch.tensor([2.0, 9.0, 1.0, 9.0, 0.0]),
                         emitted=torch.tensor([True, False, True, False, True]))
    with torch.no_grad():
        predicted = learner.policy.components(batch.observation)
    step = float(((predicted[:, 0] - batch.one_step) ** 2).mean())
    future = float(((predicted[:, 1] - batch.future) ** 2)[batch.emitted].mean())
    metrics = learner.update(batch)
    assert metrics["loss_one_step"] == pytest.approx(step, rel=1e-5)
    assert metrics["loss_future"] == pytest.approx(future, rel=1e-5)
    assert metrics["loss"] == pytest.approx(step + 0.5 * future, rel=1e-5)


def test_the_head_learns_a_planted_reward(tiny_lm, counting_scorer):
    """+1 per 'the': the one-step head learns Δ = 1 for the candidate ' the' and 0 for others (within 0.15 on
    average on held-out rows); the future head is calibrated on the base samples' future counts (within 0.05) and
    expects more of them early in a response than late."""
    engine, _, train, objective = candidate_batch(tiny_lm, counting_scorer, episodes=96, seed=1)
    _, _, held_out, _ = candidate_batch(tiny_lm, counting_scorer, episodes=32, seed=2)
    learner = make_learner("value_guided", state_size=engine.state_size, seed=0,
                           config=config_class("value_guided")(widths=(64,), lr=3e-3, batch_size=256,
                                                               future_target="monte_carlo"))
    data = learner.label(objective, train)
    gen = torch.Generator().manual_seed(3)
    for _ in range(600):
        rows = torch.randint(len(data.one_step), (256,), generator=gen)
        learner.update(ValueTargets(data.observation[rows], data.one_step[rows], data.future[rows], data.emitted[rows]))
    test = learner.label(objective, held_out)
    with torch.no_grad():
        predicted = learner.policy.components(test.observation)
    planted = test.one_step == 1
    assert int(planted.sum()) >= 10  # the held-out rows do hold the planted word
    assert float((predicted[planted, 0] - 1).abs().mean()) < 0.15
    assert float(predicted[~planted, 0].abs().mean()) < 0.15
    # The future part is an average over continuations: calibrated on what it saw, larger early than late.
    with torch.no_grad():
        fitted = learner.policy.components(data.observation[data.emitted])[:, 1]
    assert abs(float(fitted.mean() - data.future[data.emitted].mean())) < 0.05
    position = train.step[data.emitted]
    early, late = fitted[position < position.median()], fitted[position >= position.median()]
    assert float(early.mean()) > float(late.mean())


def test_the_value_learner_needs_context_states_and_a_linear_objective():
    with pytest.raises(ConfigError, match="learner.name=value_guided learns from every candidate of a step: set "
                                          "engine.candidate_state=context"):
        load_config(None, ["engine.candidate_state=lookahead"])  # the demo's learner, out of its mode
    with pytest.raises(ConfigError, match="needs an objective linear in the scores .* 'hierarchical'"):
        load_config(None, ["objective.name=hierarchical"])


def train_future_head(engine, data_batch, objective, *, target: str, beta: float, steps: int = 400):
    """A value_guided head trained on whole episodes of `data_batch`, future targets of kind `target`."""
    learner = make_learner("value_guided", state_size=engine.state_size, seed=0,
                           config=config_class("value_guided")(widths=(64,), lr=3e-3, kl_coef=beta, future_target=target))
    episodes = torch.unique_consecutive(data_batch.episode_id)
    gen = torch.Generator().manual_seed(4)
    for _ in range(steps):
        chosen = episodes[torch.randperm(len(episodes), generator=gen)[:8]]
        rows = torch.nonzero(torch.isin(data_batch.episode_id, chosen)).flatten()
        learner.update(learner.label(objective, select_rows(data_batch, rows)))
    return learner


def test_the_soft_bellman_head_is_the_monte_carlo_one_at_large_beta_and_optimistic_at_small(tiny_lm, counting_scorer):
    """CD-Q's target bootstraps the next step's soft value β·log E_q exp(Q/β): at β = 20 that is E_q Q, so the
    learned future gain matches the Monte-Carlo head's on base samples (within 0.1); at β = 0.3 it is the
    tilted optimum's, which says 'the' more often, so it expects a larger future count."""
    engine, _, data, objective = candidate_batch(tiny_lm, counting_scorer, episodes=96, seed=5)
    emitted = data.action.bool()
    mc = train_future_head(engine, data, objective, target="monte_carlo", beta=20.0)
    soft_large = train_future_head(engine, data, objective, target="soft_bellman", beta=20.0)
    soft_small = train_future_head(engine, data, objective, target="soft_bellman", beta=0.3)
    observation = mc.label(objective, data).observation[emitted]
    with torch.no_grad():
        future = {name: float(head.policy.components(observation)[:, 1].mean())
                  for name, head in (("mc", mc), ("soft_large", soft_large), ("soft_small", soft_small))}
    assert abs(future["soft_large"] - future["mc"]) < 0.1, future
    assert future["soft_small"] > future["mc"] + 0.1, future


def test_kl_target_moves_beta_towards_it_and_publishes_it():
    """Rows of one-row episodes whose step KL is 2 nats: the behaviour spent 2 nats per response. With kl_target 1
    β grows by Ziegler's clipped step, β·(1 + 0.2·n/horizon) with n = 1 episode per update; with kl_target 4 it
    shrinks by the same step (error −0.5 clipped to −0.2); the published head and a restored learner carry it."""
    def learner(target: float):
        return make_learner("value_guided", state_size=6, config=config_class("value_guided")(
            widths=(4,), kl_coef=0.5, kl_target=target, kl_horizon=10.0))

    batch = ValueTargets(observation=torch.zeros(4, 7), one_step=torch.zeros(4), future=torch.zeros(4),
                         emitted=torch.ones(4, dtype=torch.bool), step_kl=torch.full((4,), 2.0), episode_rows=torch.ones(4))
    above, below = learner(1.0), learner(4.0)
    for agent, factor in ((above, 1.02), (below, 0.98)):
        metrics = agent.update(batch)
        assert metrics["kl_per_response"] == pytest.approx(2.0) and metrics["kl_coef"] == 0.5
        assert agent.kl.value == pytest.approx(0.5 * factor) and agent.policy.beta == agent.kl.value
        assert agent.policy_state()["beta"] == pytest.approx(0.5 * factor)
    restored = learner(1.0)
    restored.load_state_dict(above.state_dict())
    assert restored.policy.beta == pytest.approx(0.5 * 1.02)
