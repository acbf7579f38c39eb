"""The learner comparison's report (benchmarks/compare_report.py) on hand-made results with known answers."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from compare_report import aggregate, decisions_to_target, write_report  # noqa: E402


def curve(rewards: list[float], episodes_per_batch: int = 64, decisions_per_episode: int = 10) -> dict[str, list[float]]:
    n = len(rewards)
    episodes = [episodes_per_batch * (i + 1) for i in range(n)]
    return {"decisions": [e * decisions_per_episode for e in episodes], "episodes": episodes, "reward": rewards,
            "cost": [0.1] * n, "batch_episodes": [episodes_per_batch] * n}


def summary(reward: float, cost: float, forward: float = 1.0) -> dict:
    stat = lambda v: {"mean": v, "se": 0.0}  # noqa: E731
    return {"reward": stat(reward), "cost": stat(cost), "cost_success": stat(1.0), "perplexity": stat(20.0),
            "length": stat(24.0), "distinct_2": 0.5, "lm_forward_tokens_per_token": forward, "seconds_per_token": 0.001}


def test_decisions_to_target_uses_the_average_over_the_last_128_episodes() -> None:
    # Batches of 64 episodes: the 128-episode average after batch i is the mean of batches i-1 and i.
    rewards = [0.0, 0.0, 1.0, 0.0, 1.0, 1.0]
    assert decisions_to_target(curve(rewards), 0.5) == 64 * 3 * 10  # batches 1-2 average 0.5
    assert decisions_to_target(curve(rewards), 0.9) == 64 * 6 * 10  # only batches 4-5 average 1.0
    assert decisions_to_target(curve(rewards), 1.1) is None
    assert decisions_to_target(curve([5.0]), 1.0) is None  # one batch is fewer than 128 episodes


def data() -> dict:
    runs = [{"learner": name, "seed": seed, "decisions": 640, "train_minutes": 1.0 + seed,
             "curve": curve(rewards), "eval": summary(reward + 0.2 * seed, cost, forward=8.0)}
            for name, reward, cost, rewards in (("sac", 1.0, 0.02, [0.0, 0.9, 0.9]), ("ppo", 0.2, 0.05, [0.0, 0.1, 0.1]))
            for seed in (0, 1)]
    baselines = [{"method": method, "n": n, "seed": seed, "eval": summary(reward, 0.05, forward=float(n))}
                 for method, n, reward in (("base", 1, 0.0), ("best-of-4", 4, 0.6)) for seed in (0, 1)]
    args = {"decisions": 640, "seeds": 2, "eval_prompts": 10, "cost_limit": 0.03, "target_best_of": 4}
    return {"command": "test", "args": args, "learner_params": {}, "machine": {"cores": 2}, "runs": runs,
            "baselines": baselines, "wall_minutes": 1.0}


def test_aggregate_gives_mean_and_standard_error_over_seeds_and_the_target() -> None:
    agg = aggregate(data())
    assert agg["target"] == {"method": "best-of-4", "reward": 0.6}
    sac = agg["methods"]["sac"]
    assert sac["reward"]["mean"] == pytest.approx(1.1) and sac["reward"]["se"] == pytest.approx(0.1)
    assert sac["train_minutes"]["mean"] == pytest.approx(1.5)
    assert sac["decisions_to_target"]["reached"] == 2 and sac["decisions_to_target"]["mean"] == 64 * 3 * 10
    assert agg["methods"]["ppo"]["decisions_to_target"]["reached"] == 0
    assert agg["methods"]["best-of-4"]["best_of"] == 4 and agg["methods"]["base"]["kind"] == "baseline"


def test_report_names_the_winner_and_where_a_learner_loses_to_best_of_n(tmp_path: Path) -> None:
    text = write_report(data(), tmp_path, "cmp")
    assert "**sac** has the highest held-out reward" in text
    assert "**ppo** (0.300 ± 0.100) is outscored by **best-of-4** (0.600 ± 0.000; gap +0.300, +3.0 SE)" in text
    assert "**sac** (1.100 ± 0.100) outscores every baseline, best-of-4 included" in text
    assert "the learners' distinct-2 is 0.50–0.50 against 0.50–0.50 for the baselines" in text
    for name in ("cmp.json", "cmp.md", "cmp_curves.png", "cmp_pareto.png"):
        assert (tmp_path / name).stat().st_size > 0
