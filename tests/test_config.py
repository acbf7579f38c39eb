"""The run config: the demo file equals the defaults, overrides are typed, mistakes name the key."""
from __future__ import annotations

from pathlib import Path

import pytest

from tokenalign.config import load_config
from tokenalign.core.parsing import ConfigError, to_dict

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def test_demo_yaml_is_exactly_the_default_config():
    assert to_dict(load_config(DEMO)) == to_dict(load_config(None))


def test_dotted_overrides_are_typed_and_nested():
    cfg = load_config(None, ["learner.name=ppo_lagrangian", "rollout.num_actors=4", "engine.sampling.top_k=10",
                             "learner.params.episodes_per_update=16", "run.max_minutes=null",
                             "reward.scorers=[vader, 'profanity,role=cost,multiplier=-1']"])
    assert cfg.learner.name == "ppo_lagrangian" and cfg.learner.params.episodes_per_update == 16
    assert cfg.rollout.num_actors == 4 and cfg.engine.sampling.top_k == 10 and cfg.run.max_minutes is None
    assert [s.kind for s in cfg.reward.scorers] == ["vader", "profanity"] and cfg.reward.scorers[1].role == "cost"


@pytest.mark.parametrize("override, message", [
    ("rollout.num_actor=3", "unknown key 'rollout.num_actor'"),
    ("rollout.num_actors=many", "rollout.num_actors must be int"),
    ("engine.sampling.order=sideways", "engine.sampling.order is 'sideways'"),
    ("engine.sampling.top_p=1.5", "top_p"),
    ("no_equals_sign", "dotted.key=value"),
    ("lm.path.sub=1", "'lm.path' is not a section"),
    # values that used to train silently at another value, or fail 25 s in (issue 15)
    ("run.total_episodes=-5", r"run.total_episodes must be ≥ 1, got -5"),
    ("run.checkpoint_every=0", r"run.checkpoint_every must be ≥ 1, got 0"),
    ("run.max_minutes=0", r"run.max_minutes must be > 0, got 0"),
    ("rollout.episodes_per_batch=0", r"rollout.episodes_per_batch must be ≥ 1, got 0"),
    ("rollout.num_actors=0", r"rollout.num_actors must be ≥ 1, got 0"),
    ("learner.num_gpus=-1", r"learner.num_gpus must be ≥ 0, got -1"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_missing_or_malformed_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_cluster_example_config_loads():
    cfg = load_config(DEMO.parent / "cluster_mistral7b.yaml")
    assert cfg.rollout.num_actors == 5 and cfg.rollout.gpus_per_actor == 1 and cfg.learner.num_gpus == 1
    assert [s.role for s in cfg.reward.scorers] == ["reward", "cost"] and cfg.lm.dtype == "auto"
    # the node's 8 GPUs: five actors, the reward and cost models on a GPU each, the learner
    assert cfg.rollout.num_actors * cfg.rollout.gpus_per_actor + cfg.rollout.reward_service_gpus + cfg.learner.num_gpus == 8


def test_a_redis_password_never_reaches_the_saved_config(tmp_path):
    from tokenalign.config import save_config, without_secrets

    cfg = load_config(None, ['buffer.redis_urls=["redis://:hunter2@10.0.0.5:6379/0"]', "buffer.num_shards=1"])
    save_config(tmp_path / "config.yaml", cfg)
    text = (tmp_path / "config.yaml").read_text()
    assert "hunter2" not in text and "redis://10.0.0.5:6379/0" in text
    assert (tmp_path / "config.yaml").stat().st_mode & 0o777 == 0o600
    assert without_secrets(cfg)["buffer"]["redis_urls"] == ["redis://10.0.0.5:6379/0"]
    assert cfg.buffer.redis_urls == ["redis://:hunter2@10.0.0.5:6379/0"]  # the running config keeps it


def test_the_gemma_configs_load():
    cpu = load_config(DEMO.parent / "gemma270m.yaml")
    gpu = load_config(DEMO.parent / "gemma270m_gpu.yaml")
    assert cpu.lm.path == gpu.lm.path == "builtin:gemma3-270m" and cpu.lm.dtype == gpu.lm.dtype == "auto"
    assert cpu.rollout.num_actors * cpu.rollout.cpus_per_actor + 1 <= 2  # fits the 2-core machine
    assert gpu.rollout.num_actors * gpu.rollout.gpus_per_actor + gpu.learner.num_gpus <= 1  # fits one GPU
