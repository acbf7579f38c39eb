"""The algorithm comparison's report (benchmarks/compare_report.py) on hand-made results with known answers."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from compare_report import aggregate, equal_compute, relative_compute, write_report  # noqa: E402


def row(reward: float, kl: float, forward: float, *, bound: bool = False, distinct: float = 0.7) -> dict[str, float]:
    return {"reward": reward, "cost": 0.05, "distinct_2": distinct, "perplexity": 12.0, "kl": kl,
            "kl_is_bound": 1.0 if bound else 0.0, "forward_tokens_per_token": forward, "train_minutes": 0.75,
            "episodes": 900.0, "updates": 40.0}


def best_of(n: int, reward: float) -> dict[str, float]:
    return {"reward": reward, "cost": 0.05, "distinct_2": 0.7, "perplexity": 12.0,
            "kl_bound": math.log(n) - (n - 1) / n, "forward_tokens_per_token": 1.5 * n}


def seed_row(shift: float) -> dict:
    # base sampling costs 2 fwd tokens per token in its batches, best-of-1 1.5 in its pool's
    return {"base": {"reward": 0.0, "cost": 0.05, "distinct_2": 0.7, "perplexity": 12.0, "forward_tokens_per_token": 2.0},
            "best_of": {str(n): best_of(n, r + shift) for n, r in ((1, 0.0), (2, 0.4), (4, 0.7), (8, 0.9), (16, 1.5))},
            "agents": {"value decode_beta=0.45": row(0.8 + shift, 1.1, 2.0),  # × base 1: beats best-of-1 only
                       # measured × 3 (K copies of a prompt side by side pad less), charged K × its agent's: × 4
                       "value decode_beta=0.45 resample K=4": row(1.3 + shift, 1.5, 6.0, bound=True),
                       "ppo kl_coef=0.3": row(0.9 + shift, 0.5, 2.0, distinct=0.3)}}  # degenerate


def data(seeds: int = 2) -> dict:
    rows = [seed_row(0.02 * i) for i in range(seeds)]
    return {"command": "python benchmarks/compare_algorithms.py", "machine": {"cores": 2}, "wall_minutes": 80.0,
            "lm": "builtin:tiny",
            "args": {"seeds": seeds, "eval_prompts": 60, "minutes": 0.75}, "seeds": rows, "summary": aggregate(rows)}


def test_aggregate_is_the_mean_and_standard_error_over_seeds():
    s = data()["summary"]
    reward = s["agents"]["ppo kl_coef=0.3"]["reward"]
    assert reward[0] == pytest.approx(0.91) and reward[1] == pytest.approx(0.01)  # std 0.01414 / √2
    assert s["best_of"]["4"]["kl_bound"][0] == pytest.approx(math.log(4) - 0.75)


def test_a_resampling_row_is_charged_k_times_its_agents_compute():
    relative = relative_compute(data()["summary"])
    assert relative["value decode_beta=0.45"] == pytest.approx(1.0) and relative["4"] == pytest.approx(4.0)
    assert relative["value decode_beta=0.45 resample K=4"] == pytest.approx(4.0)  # not the measured 3.0


def test_equal_compute_picks_the_best_row_within_each_budget_and_refuses_degenerate_wins():
    verdicts = {c["n"]: c for c in equal_compute(data()["summary"])}
    # best-of-1 (× 1): the value row (0.81) and the degenerate PPO row (0.91, distinct-2 0.3) are within; the
    # best reward is PPO's, whose text is degenerate: no win
    assert verdicts[1]["row"] == "ppo kl_coef=0.3" and not verdicts[1]["wins"]
    # best-of-4 (× 4): the resampled row (× 4, 1.31) beats 0.71
    assert verdicts[4]["row"] == "value decode_beta=0.45 resample K=4" and verdicts[4]["wins"]
    assert verdicts[4]["gap"] == pytest.approx(0.6)
    # best-of-16: the same row is below 1.21
    assert verdicts[16]["row"] == "value decode_beta=0.45 resample K=4" and not verdicts[16]["wins"]


def test_the_report_marks_bounds_states_the_goal_and_writes_its_figure(tmp_path):
    text = write_report(data(), tmp_path, "compare")
    assert "| value decode_beta=0.45 resample K=4 | 1.310 ± 0.010 | 0.050 ± 0.000 | ≤ 1.50 ± 0.00 |" in text
    assert "| value decode_beta=0.45 | 0.810 ± 0.010 | 0.050 ± 0.000 | 1.10 ± 0.00 |" in text
    assert "Goal beyond the bar (a row above best-of-N's curve at every budget ≤ best-of-16's): **not reached**" in text
    assert "ppo kl_coef=0.3 at its KL: best-of-2" in text
    assert (tmp_path / "compare.md").read_text() == text and (tmp_path / "compare.png").stat().st_size > 10_000
