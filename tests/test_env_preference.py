"""Preference-conditioned Gymnasium faces (RiC): [hidden state ; w] observations and Σ_i w_i·z_i rewards."""
from __future__ import annotations

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from tokenalign.envs.accept_reject import AcceptRejectEnv
from tokenalign.envs.vector import AcceptRejectVectorEnv

PROMPTS = ["The secret of life is", "A man", "Never trust a computer"]


@pytest.fixture(scope="module")
def env(tiny_lm):
    return AcceptRejectEnv(model=tiny_lm, prompts=PROMPTS, max_new_tokens=4, preference=[0.3, 0.7])


def run_episode(env, options=None, seed=None, rng=None):
    """Play one episode with random actions; return the last observation, reward and info."""
    rng = rng or np.random.default_rng(0)
    obs, info = env.reset(seed=seed, options=options)
    done = False
    while not done:
        obs, reward, terminated, truncated, info = env.step(int(rng.integers(2)))
        done = terminated or truncated
    return obs, reward, info


def test_passes_gymnasium_check_env(tiny_lm):
    env = AcceptRejectEnv(model=tiny_lm, prompts=PROMPTS, max_new_tokens=4, preference=[0.3, 0.7])
    check_env(env, skip_render_check=True)


def test_default_env_stays_unconditioned(tiny_lm):
    env = AcceptRejectEnv(model=tiny_lm, prompts=PROMPTS, max_new_tokens=4)
    assert env.preference is None and env.preference_dim == 0 and env.preference_normalizer is None
    assert env.observation_space.shape == (env.task.state_size + 1,)
    obs, reward, info = run_episode(env, seed=0)
    assert "preference" not in info and not obs.any()
    expected = env.task.combiner.combine([info["prompt"]], [info["text"]])
    assert reward == pytest.approx(float(expected.final[0]), abs=1e-6)


def test_observation_ends_with_w_and_reset_option_changes_it(env):
    hidden = env.task.state_size + 1  # [hidden state ; π_ref accept logit] before w
    assert env.preference_dim == 2 and env.observation_space.shape == (hidden + 2,)
    obs, info = env.reset(seed=0)
    np.testing.assert_array_equal(obs[hidden:], np.array([0.3, 0.7], dtype=np.float32))
    np.testing.assert_array_equal(info["preference"], obs[hidden:])
    assert np.abs(obs[:hidden]).sum() > 0

    obs, info = env.reset(seed=0, options={"preference": [1, 0]})
    np.testing.assert_array_equal(obs[hidden:], [1.0, 0.0])
    obs, _, terminated, truncated, info = env.step(1)
    np.testing.assert_array_equal(obs[hidden:], [1.0, 0.0])
    np.testing.assert_array_equal(info["preference"], [1.0, 0.0])

    obs, _, info = run_episode(env, options={"preference": [2, 6]})  # normalised to the simplex
    np.testing.assert_allclose(obs[hidden:], [0.25, 0.75])
    assert not obs[:hidden].any()  # after the episode: [0 ; w]
    assert env.observation_space.contains(obs)

    obs, _ = env.reset(seed=1)  # no option: back to the constructor's w
    np.testing.assert_array_equal(obs[hidden:], np.array([0.3, 0.7], dtype=np.float32))


def test_reward_is_the_normalised_first_objective_for_w_1_0(tiny_lm):
    env = AcceptRejectEnv(model=tiny_lm, prompts=PROMPTS, max_new_tokens=4, preference=[0.5, 0.5])
    multiplier = np.array([t.multiplier for t in env.task.combiner.terms])
    assert env.scorer_names == ["vader", "profanity"] and list(multiplier) == [2.0, -1.0]

    # First episode: nothing to estimate a spread from yet, so the reward is w·v unnormalised. (The tiny
    # LM's 4-token texts score 0 on VADER, so w = [0, 1] is the telling weight here.)
    _, reward, info = run_episode(env, options={"preference": [0, 1]}, seed=0)
    assert reward == pytest.approx(-1.0 * info["reward_terms"]["profanity"], abs=1e-12) and reward != 0
    assert env.preference_normalizer.moments.count == 1

    # Plant a known normaliser state, then check one episode's reward by hand.
    count, mean, m2 = 5, np.array([0.4, -0.1]), np.array([1.25, 0.02])
    env.preference_normalizer.moments.load_state_dict({"count": count, "mean": mean.tolist(), "m2": m2.tolist()})
    _, reward, info = run_episode(env, options={"preference": [1, 0]}, rng=np.random.default_rng(1))
    v = multiplier * np.array([info["reward_terms"]["vader"], info["reward_terms"]["profanity"]])
    new_mean = mean + (v - mean) / (count + 1)
    new_m2 = m2 + (v - mean) ** 2 * count / (count + 1)
    z = (v - new_mean) / np.sqrt(new_m2 / (count + 1))
    assert reward == pytest.approx(z[0], rel=1e-9, abs=1e-12) and abs(reward) > 1e-3
    assert env.preference_normalizer.moments.count == count + 1
    np.testing.assert_allclose(env.preference_normalizer.moments.mean, new_mean, rtol=1e-12)
    np.testing.assert_allclose(env.preference_normalizer.moments.m2, new_m2, rtol=1e-12)
    assert set(info["reward_terms"]) == {"vader", "profanity"}  # raw scores, untouched
    np.testing.assert_array_equal(info["preference"], [1.0, 0.0])

    # And the full scalarisation with the other weights, on the same planted state.
    env.preference_normalizer.moments.load_state_dict({"count": count, "mean": mean.tolist(), "m2": m2.tolist()})
    _, reward, info = run_episode(env, options={"preference": [0.25, 0.75]}, rng=np.random.default_rng(1))
    v = multiplier * np.array([info["reward_terms"]["vader"], info["reward_terms"]["profanity"]])
    z = (v - (mean + (v - mean) / (count + 1))) / np.sqrt((m2 + (v - mean) ** 2 * count / (count + 1)) / (count + 1))
    assert reward == pytest.approx(0.25 * z[0] + 0.75 * z[1], rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("bad", [[1.0], [0.2, 0.3, 0.5], [-0.5, 1.5], [0, 0], [float("nan"), 1.0], "heavy",
                                 [[0.5, 0.5]]])
def test_bad_preference_is_one_clear_error(tiny_lm, env, bad):
    with pytest.raises(ValueError, match="preference must be 2 non-negative weights") as caught:
        AcceptRejectEnv(model=tiny_lm, prompts=PROMPTS, max_new_tokens=4, preference=bad)
    assert "vader" in str(caught.value) and "profanity" in str(caught.value)
    with pytest.raises(ValueError, match="preference must be 2 non-negative weights"):
        env.reset(options={"preference": bad})


def test_preference_option_on_an_unconditioned_env_is_an_error(tiny_lm):
    env = AcceptRejectEnv(model=tiny_lm, prompts=PROMPTS, max_new_tokens=4)
    with pytest.raises(ValueError, match="preference"):
        env.reset(options={"preference": [0.5, 0.5]})


def test_vector_env_rows_carry_their_w(tiny_lm):
    venv = AcceptRejectVectorEnv(num_envs=3, model=tiny_lm, prompts=PROMPTS, max_new_tokens=4, preference=[1, 1])
    hidden = venv.task.state_size + 1
    assert venv.single_observation_space.shape == (hidden + 2,) and venv.observation_space.shape == (3, hidden + 2)
    obs, info = venv.reset(seed=0)
    np.testing.assert_array_equal(obs[:, hidden:], np.full((3, 2), 0.5, dtype=np.float32))
    w = np.array([[1, 0], [0, 1], [0.5, 0.5]], dtype=np.float32)
    obs, info = venv.reset(seed=0, options={"preference": w})
    np.testing.assert_array_equal(obs[:, hidden:], w)
    np.testing.assert_array_equal(info["preference"], w)
    ends = 0
    for _ in range(30):
        obs, rewards, terminated, truncated, info = venv.step(np.ones(3, dtype=int))
        done = terminated | truncated
        assert venv.observation_space.contains(obs)
        np.testing.assert_array_equal(obs[:, hidden:], w)  # kept across autoresets
        assert (obs[done, :hidden] == 0).all() and (rewards[~done] == 0).all()
        ends += int(done.sum())
    assert venv.preference_normalizer.moments.count == ends >= 6
    obs, _ = venv.reset(options={"preference": [0.2, 0.8]})  # one w for every row
    np.testing.assert_allclose(obs[:, hidden:], np.tile([0.2, 0.8], (3, 1)))
    with pytest.raises(ValueError, match="preference"):
        venv.reset(options={"preference": [[1, 0], [0, 1]]})
    with pytest.raises(ValueError, match="preference must be 2 non-negative weights"):
        venv.reset(options={"preference": [-1, 2]})


def test_vector_env_row_rewards_match_the_single_env(tiny_lm):
    """One row, greedy actions: the same w-weighted rewards as the single env, normaliser included."""
    venv = AcceptRejectVectorEnv(num_envs=1, model=tiny_lm, prompts=[PROMPTS[1]], max_new_tokens=4,
                                 preference=[0.4, 0.6])
    env = AcceptRejectEnv(model=tiny_lm, prompts=[PROMPTS[1]], max_new_tokens=4, preference=[0.4, 0.6])
    vobs, _ = venv.reset(seed=0)
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)  # the same actions on both, so the episodes' texts (and scores) differ
    finished = 0
    for _ in range(30):
        np.testing.assert_allclose(vobs[0], obs, atol=1e-4)
        action = int(rng.integers(2))
        vobs, vrew, _, _, _ = venv.step(np.array([action]))
        obs, rew, term, trunc, _ = env.step(action)
        assert vrew[0] == pytest.approx(rew, abs=1e-6)
        if term or trunc:
            finished += 1
            obs, _ = env.reset()
            vobs, _, _, _, _ = venv.step(np.array([1]))  # NEXT_STEP autoreset: this step only restarts the row
    assert finished >= 3  # from the second episode on the rewards are normalised
    assert venv.preference_normalizer.moments.count == env.preference_normalizer.moments.count == finished
    np.testing.assert_allclose(venv.preference_normalizer.moments.mean, env.preference_normalizer.moments.mean)


def test_stable_baselines3_ppo_trains_on_the_preference_env(tiny_lm):
    from stable_baselines3 import PPO

    env = AcceptRejectEnv(model=tiny_lm, prompts=PROMPTS, max_new_tokens=8, preference=[0.3, 0.7])
    model = PPO("MlpPolicy", env, n_steps=64, batch_size=32, n_epochs=2, seed=0, device="cpu", verbose=0)
    model.learn(total_timesteps=256)
    obs, _ = env.reset(seed=0, options={"preference": [0.9, 0.1]})
    action, _ = model.predict(obs, deterministic=True)
    assert env.action_space.contains(int(action))
    assert model.num_timesteps >= 256 and env.preference_normalizer.moments.count >= 2
