"""The env under other RL libraries, unchanged: RLlib's PPO (new API stack, a remote env runner) and SB3's
make_vec_env on the id form that works in any process, plus the Gymnasium conventions they rely on."""
from __future__ import annotations

import gymnasium
import numpy as np
import pytest

from tokenalign.envs.accept_reject import AcceptRejectEnv
from tokenalign.envs.vector import AcceptRejectVectorEnv

ENV_ID = "tokenalign:tokenalign/AcceptReject-v0"  # "module:id" imports tokenalign first, in any process


def test_rllib_ppo_trains_two_iterations_with_a_remote_env_runner(ray_cluster):
    from ray.rllib.algorithms.ppo import PPOConfig

    config = (PPOConfig()
              .environment(ENV_ID, env_config={"max_new_tokens": 6})
              .env_runners(num_env_runners=1, num_envs_per_env_runner=1)
              .training(train_batch_size_per_learner=64, minibatch_size=32, num_epochs=1)
              .learners(num_learners=0))
    algo = config.build_algo()
    try:
        sampled = [algo.train()["env_runners"]["num_env_steps_sampled_lifetime"] for _ in range(2)]
    finally:
        algo.stop()
    assert sampled[0] >= 64 and sampled[1] >= 128


def test_the_env_class_takes_rllibs_config_dict():
    env = AcceptRejectEnv({"max_new_tokens": 5, "candidate_block": 0})
    assert env.engine.config.max_new_tokens == 5 and env.engine.config.candidate_block == 0
    with pytest.raises(TypeError, match=r"unknown AcceptRejectEnv argument\(s\) \['max_tokens'\].*'max_new_tokens'"):
        AcceptRejectEnv({"max_tokens": 5})


def test_sb3_make_vec_env_on_the_id():
    from stable_baselines3.common.env_util import make_vec_env

    venv = make_vec_env(ENV_ID, n_envs=2, env_kwargs={"max_new_tokens": 4}, seed=0)
    obs = venv.reset()
    obs, reward, done, info = venv.step(np.ones(2, dtype=np.int64))
    assert obs.shape == (2, venv.observation_space.shape[0]) and reward.shape == (2,)
    venv.close()


def test_an_unsupported_render_mode_is_a_type_error_in_both_faces():
    with pytest.raises(TypeError, match="render_mode 'rgb_array' is not supported; use one of \\['ansi'\\]"):
        AcceptRejectEnv(max_new_tokens=4, render_mode="rgb_array")
    with pytest.raises(TypeError, match="render_mode 'human' is not supported"):
        AcceptRejectVectorEnv(num_envs=2, max_new_tokens=4, render_mode="human")


def test_a_decision_limit_truncates_and_scores_the_text_so_far():
    env = gymnasium.make(ENV_ID, max_new_tokens=32, max_decisions=3)
    env.reset(seed=0)
    steps = [env.step(0) for _ in range(3)]
    *_, truncated, info = steps[-1]
    assert truncated and info["truncated_by"] == "max_decisions" and info["scored"]
    assert set(info["reward_terms"]) == {"vader", "profanity"} and steps[-1][1] != 0.0
    assert not any(s[4]["scored"] for s in steps[:-1])


def test_gymnasiums_own_step_limit_says_the_text_was_not_scored():
    env = gymnasium.make(ENV_ID, max_new_tokens=32, max_episode_steps=2)
    env.reset(seed=0)
    env.step(0)
    _, reward, _, truncated, info = env.step(0)
    assert truncated and not info["scored"] and reward == 0.0


def test_the_vector_env_honours_prompt_options_and_renders_text():
    venv = AcceptRejectVectorEnv(num_envs=2, max_new_tokens=4, render_mode="ansi")
    venv.reset(seed=0, options={"prompt": ["The secret of life is", "Love is"]})
    assert [t.startswith(p) for t, p in zip(venv.render(), ["The secret of life is", "Love is"])] == [True, True]
    venv.reset(seed=0, options={"prompt": "A man"})
    assert all(t.startswith("A man") for t in venv.render())
    with pytest.raises(ValueError, match="one prompt string or a list of 2"):
        venv.reset(options={"prompt": ["only one"]})
    with pytest.raises(ValueError, match=r"unknown reset option\(s\) \['prompts'\]; the env takes \['prompt', 'preference'\]"):
        venv.reset(options={"prompts": "A man"})
