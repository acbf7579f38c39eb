"""Objectives: each built-in against hand-computed rewards, MARA's postback and shaping, relabelling stored data."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from test_buffer_support import memory_spec

from tokenalign.buffers.batches import Decisions
from tokenalign.buffers.layout import RecordLayout, make_record_batch
from tokenalign.buffers.shard import Columns, make_decisions
from tokenalign.config import load_config
from tokenalign.core.parsing import ConfigError
from tokenalign.objectives import (
    ObjectiveSection,
    make_objective,
    objective_config_class,
    objective_names,
    resolve_name,
)
from tokenalign.objectives.preference import RIC_GRID
from tokenalign.rewards.combine import RewardCombiner, RewardConfig
from tokenalign.rewards.factory import ScorerConfig
from tokenalign.rewards.shaping import ShapingConfig

HIDDEN = 4
DEMO = RewardConfig()  # vader × 2 (reward), profanity × −1 (cost)
TEXTS = ["What a wonderful, happy day!", "This is awful and I hate it.", "damn this shit", "ok", "Love love love it"]


def records(scores: np.ndarray, *, lengths: list[int], actions: list[list[int]] | None = None,
            response_tokens: list[int] | None = None, baseline: np.ndarray | None = None,
            preference: np.ndarray | None = None, token_reward: np.ndarray | None = None,
            penalty: np.ndarray | None = None, scorers=("vader", "profanity")):
    """Decisions of len(lengths) episodes with the given per-episode raw scores (E, scorers)."""
    layout = RecordLayout(state_size=HIDDEN, scorers=scorers, preference_dim=0 if preference is None else preference.shape[1])
    lengths = np.asarray(lengths)
    n = int(lengths.sum())
    done = np.concatenate([np.arange(k) == k - 1 for k in lengths])
    action = np.concatenate(actions) if actions is not None else np.ones(n, np.int8)
    from tokenalign.actors.records import accepts_to_end

    batch = make_record_batch(
        layout=layout, episode_id=np.repeat(np.arange(len(lengths)), lengths),
        step=np.concatenate([np.arange(k) for k in lengths]), state=np.zeros((n, HIDDEN)), action=action, done=done,
        logp=np.zeros(n), policy_version=np.zeros(n), prompt_id=np.repeat(np.arange(len(lengths)), lengths),
        rank=np.zeros(n), emit=action == 1, base_logit=np.zeros(n), next_base_logit=np.zeros(n), log_ratio=np.zeros(n),
        decision_kl=np.zeros(n), episode_decisions=np.repeat(lengths, lengths),
        token_reward=np.zeros(n) if token_reward is None else token_reward,
        mara_kl_penalty=np.zeros(n) if penalty is None else penalty, accepts_to_end=accepts_to_end(action, done),
        response_tokens=np.repeat(response_tokens if response_tokens is not None else lengths, lengths),
        scores=np.repeat(scores, lengths, axis=0),
        baseline_scores=None if baseline is None else np.repeat(baseline, lengths, axis=0),
        preference=None if preference is None else np.repeat(preference, lengths, axis=0),
    )
    columns = Columns.from_batch(batch, layout=layout)
    state = torch.from_numpy(np.array(columns.state, dtype=np.float32))
    return make_decisions(columns.scalars, state, torch.zeros_like(state), layout=layout, state_dtype=torch.float32)


def objective(name: str | None = None, *, reward: RewardConfig = DEMO, shaping: ShapingConfig | None = None,
              gamma: float = 1.0, signals=("reward",), **params):
    resolved = resolve_name(name, signals=signals)
    return make_objective(ObjectiveSection(name=name, params=objective_config_class(resolved)(**params)), reward=reward,
                          shaping=shaping or ShapingConfig(token_reward="none", postback=False), gamma=gamma,
                          signals=signals)


def at_done(batch, decisions: Decisions) -> np.ndarray:
    return batch.reward[decisions.done.bool()].double().numpy()


def test_the_builtins_are_registered_and_the_default_follows_the_learners_signals():
    assert set(objective_names()) >= {"weighted", "lagrangian", "hierarchical", "preference"}
    assert objective().name == "weighted" and objective(signals=("reward", "cost")).name == "lagrangian"


@pytest.mark.parametrize("sft", [False, True])
def test_weighted_and_lagrangian_equal_the_combiners_final_and_reward(sft):
    reward = RewardConfig(baseline=0.3, baseline_multiplier=1.5, sft_baseline=sft)
    combiner = RewardCombiner.from_config(reward)
    ids = list(range(len(TEXTS)))
    greedy = {i: TEXTS[(i + 2) % len(TEXTS)] for i in ids}
    scores = combiner.combine(["q"] * len(TEXTS), TEXTS, prompt_ids=ids, baseline_responses=greedy)
    raw = np.stack([scores.raw["vader"], scores.raw["profanity"]], 1)
    base = np.stack([scores.baseline_raw["vader"], scores.baseline_raw["profanity"]], 1)
    decisions = records(raw, lengths=[3, 1, 2, 4, 2], baseline=base)
    weighted = objective("weighted", reward=reward).label(decisions)
    lagrangian = objective("lagrangian", reward=reward).label(decisions)
    np.testing.assert_allclose(at_done(weighted, decisions), scores.final, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(at_done(lagrangian, decisions), scores.reward, rtol=1e-6, atol=1e-6)
    for labelled in (weighted, lagrangian):
        np.testing.assert_allclose(labelled.cost[decisions.done.bool()].numpy(), scores.cost, rtol=1e-6)
        assert (labelled.cost[~decisions.done.bool()] == 0).all() and (labelled.reward[~decisions.done.bool()] == 0).all()


def mara_postback(rewards: list[float], actions: list[int], final: float, gamma: float) -> list[float]:
    """MARA's Learner.update for one episode, reaching decision 0 as well."""
    rewards = list(rewards)
    rewards[-1] += final
    discounted = final
    for i in range(len(rewards) - 2, -1, -1):
        if actions[i] == 1:
            discounted *= gamma
        rewards[i] += discounted
    return rewards


def test_postback_and_token_terms_match_maras_loop_over_many_episodes():
    rng = np.random.default_rng(0)
    lengths = [1, 6, 3, 12, 2]
    actions = [np.append(rng.integers(0, 2, n - 1), 1) for n in lengths]
    token = rng.normal(size=sum(lengths)).astype(np.float32)
    penalty = rng.normal(size=sum(lengths)).astype(np.float32)
    raw = rng.normal(size=(len(lengths), 2)).astype(np.float32)
    decisions = records(raw, lengths=lengths, actions=actions, token_reward=token, penalty=penalty)
    shaping = ShapingConfig(token_reward="mara_kl_div", kl_ctl=0.1, postback=True)
    out = objective("weighted", shaping=shaping, gamma=0.9).label(decisions).reward.double().numpy()
    final = raw.astype(np.float64) @ np.array([2.0, -1.0])
    per_decision = token.astype(np.float64) - 0.1 * penalty
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    expected = np.concatenate([mara_postback(per_decision[s: s + n].tolist(), a.tolist(), f, 0.9)
                               for s, n, a, f in zip(starts, lengths, actions, final)])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    no_postback = objective("weighted", shaping=ShapingConfig(token_reward="none", postback=False)).label(decisions)
    np.testing.assert_allclose(no_postback.reward.double().numpy(), token + decisions.done.numpy() * np.repeat(final, lengths),
                               rtol=1e-5, atol=1e-6)


def test_hierarchical_gates_aspects_by_the_normalised_holistic_reward():
    raw = np.array([[0.9, 0.2], [0.1, 0.5], [0.95, 0.9], [0.8, 0.0]])
    decisions = records(raw, lengths=[2, 1, 3, 2], response_tokens=[10, 10, 10, 2])
    params = dict(holistic_mean=0.5, holistic_std=0.25, threshold=0.6, holistic_weight=5.0)
    z = (raw[:, 0] - 0.5) / 0.25  # 1.6, -1.6, 1.8, (short)
    aspects = -1.0 * raw[:, 1]    # profanity × −1
    expected = {
        "hierarchical": [5 * z[0] + aspects[0], 5 * z[1], 5 * z[2] + aspects[2], 5 * -10.0],
        "holistic_only": [5 * z[0], 5 * z[1], 5 * z[2], -50.0],
        "weighted_sum": [5 * z[0] + aspects[0], 5 * z[1] + aspects[1], 5 * z[2] + aspects[2], -50.0 + aspects[3]],
    }
    for mode, values in expected.items():
        labelled = objective("hierarchical", mode=mode, **params).label(decisions)
        np.testing.assert_allclose(at_done(labelled, decisions), values, rtol=1e-6, err_msg=mode)
    sigmoid = objective("hierarchical", aspect_shaping="sigmoid", avg_clip=0.5, **params).label(decisions)
    assert at_done(sigmoid, decisions)[0] == pytest.approx(5 * z[0] - (1 / (1 + np.exp(-0.2)) - 0.5))


def test_hierarchical_records_its_normalisation_from_the_runs_own_episodes():
    raw = np.array([[1.0, 0.0], [3.0, 0.0], [5.0, 0.0]])
    decisions = records(raw, lengths=[1, 2, 1], response_tokens=[9, 9, 9])
    labelled = objective("hierarchical", threshold=100.0).label(decisions)
    z = (raw[:, 0] - 3.0) / np.sqrt(8 / 3)
    np.testing.assert_allclose(at_done(labelled, decisions), 5 * z, rtol=1e-6)


def test_preference_weights_normalised_objectives_per_episode():
    raw = np.array([[0.5, 0.1], [-0.5, 0.3], [0.9, 0.0], [0.1, 0.6]])
    w = np.array([[1.0, 0.0], [0.3, 0.7], [0.5, 0.5], [0.0, 1.0]], np.float32)
    decisions = records(raw, lengths=[2, 1, 1, 3], preference=w)
    pref = objective("preference")
    labelled = pref.label(decisions)
    values = raw * np.array([2.0, -1.0])
    z = (values - values.mean(0)) / values.std(0)
    np.testing.assert_allclose(at_done(labelled, decisions), (z * w).sum(1), rtol=1e-5)
    torch.testing.assert_close(labelled.preference, decisions.preference)
    assert pref.preference_dim == 2
    grid = pref.sample_preferences(500, np.random.default_rng(0))
    assert set(np.round(grid[:, 0].astype(np.float64), 1)) == set(RIC_GRID) and np.allclose(grid.sum(1), 1)
    morlhf = objective("preference", weights=[3.0, 1.0])  # one fixed scalarisation, unconditioned
    plain = records(raw, lengths=[2, 1, 1, 3])
    assert morlhf.preference_dim == 0 and morlhf.sample_preferences(4, np.random.default_rng(0)) is None
    np.testing.assert_allclose(at_done(morlhf.label(plain), plain), z @ [0.75, 0.25], rtol=1e-5)
    dirichlet = objective("preference", sampling="dirichlet").sample_preferences(100, np.random.default_rng(0))
    assert dirichlet.shape == (100, 2) and np.allclose(dirichlet.sum(1), 1) and len(np.unique(dirichlet[:, 0])) == 100


def test_stored_data_is_relabelled_by_another_objective_without_a_new_rollout():
    """The same sampled records give each objective's own hand-computed rewards: no rollout in between."""
    spec = memory_spec(data_mode="on_policy", num_shards=1)
    layout = RecordLayout(state_size=32, scorers=("vader", "profanity"))
    spec = type(spec)(spec.data_mode, layout, spec.config)
    queue = spec.connect()
    raw = np.array([[0.8, 0.1], [0.2, 0.4]])
    one = records(raw, lengths=[2, 3], response_tokens=[9, 9])
    n = len(one)
    queue.add(make_record_batch(
        layout=layout, state=np.zeros((n, 32)), scores=one.scores.numpy(), baseline_scores=one.baseline_scores.numpy(),
        **{k: getattr(one, k).numpy() for k in ("episode_id", "step", "action", "done", "logp", "policy_version",
                                                "prompt_id", "rank", "emit", "base_logit", "next_base_logit",
                                                "log_ratio", "decision_kl", "episode_decisions",
                                                "token_reward", "mara_kl_penalty", "accepts_to_end", "response_tokens")}))
    stored = queue.get(2, learner_version=0)
    weighted = objective("weighted").label(stored)
    holistic = objective("hierarchical", mode="holistic_only", holistic_mean=0.0, holistic_std=1.0).label(stored)
    np.testing.assert_allclose(at_done(weighted, stored), raw @ [2.0, -1.0], rtol=1e-6)
    np.testing.assert_allclose(at_done(holistic, stored), 5 * raw[:, 0], rtol=1e-6)


def test_objective_and_learner_options_are_checked_at_load():
    with pytest.raises(ConfigError, match="learner.params.actor_lr must be float, got 'fast'"):
        load_config(None, ["learner.name=ppo", "learner.params.actor_lr=fast"])
    with pytest.raises(ConfigError, match="learner.params.episodes_per_update must be int"):
        load_config(None, ["learner.name=ppo", "learner.params.episodes_per_update=2.5"])
    assert load_config(None, ["learner.name=ppo", "learner.params.actor_lr=1e-3"])  # YAML's 1e-3 string is the float it spells
    with pytest.raises(ConfigError, match="objective.params.holistic is 'bleu', not a scorer of this run"):
        load_config(None, ["objective.name=hierarchical", "objective.params.holistic=bleu"])
    with pytest.raises(ConfigError, match="unknown key 'objective.params.gate'"):
        load_config(None, ["objective.name=hierarchical", "objective.params.gate=1"])
    with pytest.raises(ConfigError, match="grid for two objectives"):
        load_config(None, ["objective.name=preference", "reward.scorers=[vader, profanity, 'vader,name=v2']"])
    named = RewardConfig(scorers=[ScorerConfig(kind="vader", name="joy"), ScorerConfig(kind="profanity", role="cost")])
    assert objective("hierarchical", reward=named).scorers == ["joy", "profanity"]
