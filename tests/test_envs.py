"""The Gymnasium faces: registration, check_env, episode semantics, the vector env, and reuse by SB3."""
from __future__ import annotations

import gymnasium
import numpy as np
import pytest
import scipy.stats
import torch
from gymnasium.utils.env_checker import check_env

import tokenalign  # noqa: F401  (registers the env)
from tokenalign.agents.value_guided import ValueGuidedPolicy
from tokenalign.envs.accept_reject import AcceptRejectEnv
from tokenalign.envs.rollout import generate_episodes
from tokenalign.envs.vector import AcceptRejectVectorEnv

PROMPTS = ["The secret of life is", "A man", "Never trust a computer"]


@pytest.fixture(scope="module")
def env(tiny_lm):
    return AcceptRejectEnv(model=tiny_lm, prompts=PROMPTS, max_new_tokens=12)


def test_make_with_no_kwargs_uses_the_bundled_defaults():
    env = gymnasium.make("tokenalign/AcceptReject-v0")
    obs, info = env.reset(seed=0)
    assert obs.shape == env.observation_space.shape and obs.dtype == np.float32
    assert env.unwrapped.engine.config.sampling.top_k == 40
    assert {t.scorer.name for t in env.unwrapped.task.combiner.terms} == {"vader", "profanity"}
    assert info["prompt"] in {p.text for p in env.unwrapped.task.prompts}


def test_make_kwargs_change_model_prompts_and_sampling(tiny_lm):
    env = gymnasium.make("tokenalign/AcceptReject-v0", model=tiny_lm, prompts=["Hello there"],
                         sampling={"top_k": 5}, max_new_tokens=3, scorers=["vader"])
    _, info = env.reset(seed=1)
    assert info["prompt"] == "Hello there" and info["num_candidates"] <= 5
    assert env.unwrapped.engine.config.max_new_tokens == 3


def test_passes_gymnasium_check_env(env):
    check_env(env, skip_render_check=True)


def test_episode_semantics_and_final_reward(env):
    obs, info = env.reset(seed=3)
    rng = np.random.default_rng(0)
    rewards, costs, steps = [], [], 0
    terminated = truncated = False
    while not (terminated or truncated):
        obs, reward, terminated, truncated, info = env.step(int(rng.integers(2)))
        rewards.append(reward)
        costs.append(info["cost"])
        steps += 1
    assert all(r == 0.0 for r in rewards[:-1]) and all(c == 0.0 for c in costs[:-1])
    expected = env.task.combiner.combine([info["prompt"]], [info["text"]])
    assert rewards[-1] == pytest.approx(float(expected.final[0]), abs=1e-6)
    assert costs[-1] == pytest.approx(float(expected.cost[0]), abs=1e-6)
    assert set(info["reward_terms"]) == {"vader", "profanity"}
    assert not obs.any()
    assert truncated == (info["num_tokens"] == 12 and not terminated)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(1)


def test_env_trajectory_equals_the_rollout_fast_path(env):
    """Same prompt, same actions → same states and text as the actors' fast path."""
    gen = torch.Generator().manual_seed(5)
    [episode] = generate_episodes(env.engine, lambda s: torch.full((s.shape[0],), 0.5), [PROMPTS[0]], generator=gen)
    obs, _ = env.reset(options={"prompt": PROMPTS[0]})
    for i, action in enumerate(episode.action.tolist()):
        np.testing.assert_allclose(obs[:-1], episode.state[i].astype(np.float32), atol=1e-2, rtol=1e-3)
        assert obs[-1] == pytest.approx(episode.base_logit[i], abs=1e-5)
        obs, _, terminated, truncated, info = env.step(action)
    assert terminated or truncated
    assert info["text"] == episode.response


def test_bad_action_is_a_clear_error(env):
    env.reset(seed=0)
    with pytest.raises(ValueError, match="accept"):
        env.step(3)


def test_vector_env_batches_and_autoresets(tiny_lm):
    venv = AcceptRejectVectorEnv(num_envs=3, model=tiny_lm, prompts=PROMPTS, max_new_tokens=6)
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (3, venv.single_observation_space.shape[0])
    ends = np.zeros(3, dtype=int)
    finished_before = np.zeros(3, dtype=bool)
    for _ in range(60):
        obs, rewards, terminated, truncated, infos = venv.step(np.ones(3, dtype=int))
        done = terminated | truncated
        assert not (done & finished_before).any()  # NEXT_STEP autoreset: a finished row restarts first
        assert (rewards[~done] == 0).all()
        assert (obs[done] == 0).all() and (np.abs(obs[~done]).sum(axis=1) > 0).all()
        ends += done
        finished_before = done
    assert (ends >= 2).all()


def test_vector_env_rows_match_single_env(tiny_lm):
    """A row of the batched vector env follows exactly the single env's greedy trajectory."""
    venv = AcceptRejectVectorEnv(num_envs=2, model=tiny_lm, prompts=[PROMPTS[1]], max_new_tokens=8)
    env = AcceptRejectEnv(model=tiny_lm, prompts=[PROMPTS[1]], max_new_tokens=8)
    vobs, _ = venv.reset(seed=0)
    obs, _ = env.reset(seed=0)
    for _ in range(8):
        np.testing.assert_allclose(vobs[0], obs, atol=1e-4)
        vobs, vrew, vterm, vtrunc, _ = venv.step(np.array([1, 1]))
        obs, rew, term, trunc, _ = env.step(1)
        assert vrew[0] == pytest.approx(rew, abs=1e-6)
        if term or trunc:
            break


def test_stable_baselines3_ppo_trains_on_the_env_unchanged(tiny_lm):
    from stable_baselines3 import PPO

    env = AcceptRejectEnv(model=tiny_lm, prompts=PROMPTS, max_new_tokens=8)
    model = PPO("MlpPolicy", env, n_steps=64, batch_size=32, n_epochs=2, seed=0, device="cpu", verbose=0)
    model.learn(total_timesteps=256)
    action, _ = model.predict(env.reset(seed=0)[0], deterministic=True)
    assert env.action_space.contains(int(action))
    assert model.num_timesteps >= 256


def test_step_candidates_let_a_value_guided_head_act_through_the_env(tiny_lm):
    """With step_candidates the info shows every candidate of the step (the returned observation at `cursor`); a
    value-guided head accepting with its chain's logit for that candidate emits π ∝ q·exp(Q/β) over the step's
    candidates: the first token of 400 one-token episodes against the exact π (chi-square)."""
    env = AcceptRejectEnv(model=tiny_lm, prompts=PROMPTS, max_new_tokens=1, candidate_state="context",
                          sampling={"top_k": 6}, step_candidates=True)
    torch.manual_seed(0)
    head = ValueGuidedPolicy(state_size=env.engine.state_size, widths=(8,), beta=0.5)
    torch.nn.init.normal_(head.body[-1].weight, std=2.0)
    obs, info = env.reset(seed=0, options={"prompt": PROMPTS[1]})
    step = torch.from_numpy(info["step_observations"])
    assert step.shape == (info["num_candidates"], env.engine.state_size + 1) and info["cursor"] == 0
    exact = head.step_log_probs(step[None], torch.tensor([len(step)]))[0].exp()
    gen = torch.Generator().manual_seed(1)
    counts = torch.zeros(len(step))
    for _ in range(400):
        obs, info = env.reset(options={"prompt": PROMPTS[1]})
        while True:
            seen = torch.from_numpy(info["step_observations"])
            torch.testing.assert_close(seen, step)  # the same step each episode: one prompt, one forward
            np.testing.assert_array_equal(info["step_observations"][info["cursor"]], obs)
            logit = head.step_accept_logits(seen[None], torch.tensor([len(seen)]))[0, info["cursor"]]
            accept = int(torch.rand(1, generator=gen) < torch.sigmoid(logit))
            obs, _, terminated, truncated, info = env.step(accept)
            if info["emitted"]:  # an accept emits its candidate; a reject emits only the last, forced one
                counts[info["rank"] if accept else len(step) - 1] += 1
                break
        assert (terminated or truncated) and "step_observations" not in info
    expected = exact * counts.sum()
    assert scipy.stats.chisquare(counts.numpy(), expected.numpy()).pvalue > 1e-3


def test_step_candidates_need_context_states(tiny_lm):
    with pytest.raises(ValueError, match="step_candidates needs candidate_state='context'"):
        AcceptRejectEnv(model=tiny_lm, step_candidates=True)
