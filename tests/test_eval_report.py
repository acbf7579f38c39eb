"""End-of-run report from a synthetic run directory: report.md, reward.png, cost.png, bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tokenalign.eval.errors import EvalError
from tokenalign.eval.report import the_bar, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SUMMARY = {
    "base": {"reward": {"mean": 0.10, "se": 0.02}, "cost": {"mean": 0.30, "se": 0.01}, "n": 100,
             "cost_success": {"mean": 0.9, "se": 0.03}, "lm_forward_tokens_per_token": 1.5,
             "distinct_2": 0.7, "perplexity": {"mean": 20.0, "se": 1.0}},
    "best-of-4": {"reward": {"mean": 0.50, "se": 0.02}, "cost": {"mean": 0.29, "se": 0.01}, "n": 100,
                  "kl_per_response_bound": 0.6363, "lm_forward_tokens_per_token": 6.0, "distinct_2": 0.65, "perplexity": {"mean": 21.0, "se": 1.0}},
    "agent-serial": {"reward": {"mean": 0.40, "se": 0.03}, "cost": {"mean": 0.31, "se": 0.01}, "n": 100,
                     "kl_per_response": {"mean": 12.5, "se": 0.5},
                     "lm_forward_tokens_per_token": 9.0, "distinct_2": 0.1, "perplexity": {"mean": 50.0, "se": 2.0}},
}


def write_run(run_dir: Path, *, lines: int = 40, summary: dict | None = SUMMARY) -> Path:
    """metrics.jsonl as the trainer logs it: a line per rollout, and a line per learner result that repeats
    the last rollout's numbers; the first learner result comes before any rollout."""
    run_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rollout: dict[str, float] = {}
    with (run_dir / "metrics.jsonl").open("w") as f:
        f.write(json.dumps({"time_s": 0.5, "episodes": 0, "updates": 0, "learner/alpha": 0.01}) + "\n")
        for i in range(lines):
            rollout = {"rollout/reward": 0.4 * i / lines + 0.1 * rng.standard_normal(),
                       "rollout/cost": 0.3 + 0.05 * rng.standard_normal()}
            f.write(json.dumps({"time_s": 3.0 * (i + 1), "episodes": 16 * (i + 1), "updates": 10 * i, **rollout}) + "\n")
            if i % 3 == 0:  # learners log only when they update
                f.write(json.dumps({"time_s": 3.0 * (i + 1) + 1, "episodes": 16 * (i + 1), "updates": 10 * i + 5,
                                    **rollout, "learner/actor_loss": -0.01 * i, "learner/alpha": 0.01 + 0.001 * i}) + "\n")
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def test_report_tables_plots_and_meaning(tmp_path):
    run = write_run(tmp_path / "demo-1")
    write_report(run)
    report = (run / "report.md").read_text()
    assert "# Run report: demo-1" in report
    assert "640 episodes and 395 learner updates in 121 s" in report
    assert ("| agent-serial | 100 | 0.400 ± 0.030 | 0.310 ± 0.010 | — | 12.50 ± 0.50 | — | 50.0 ± 2.0 | 0.100 | 9.0 | — |"
            in report)
    assert "| best-of-4 | 100 | 0.500 ± 0.020 | 0.290 ± 0.010 | — | ≤ 0.64 |" in report
    assert "at KL 12.50 nats per response against ≤ 0.64, at 1.5× the LM forward tokens" in report
    assert "**agent-serial** vs base: reward better by 0.300 ± 0.036, cost indistinguishable" in report
    assert "at 6.0× the LM forward tokens per generated token" in report
    assert "**agent-serial** vs best-of-4: reward indistinguishable (-0.100 ± 0.036)" not in report
    assert "**agent-serial** vs best-of-4: reward worse by 0.100 ± 0.036" in report
    assert "Highest mean reward: **best-of-4**" in report
    assert "**agent-serial** repeats itself: distinct-2 0.100 vs 0.700 for base" in report
    assert "**agent-serial** writes text the base LM finds unlikely: perplexity 50.0 vs 20.0" in report
    assert "**best-of-4** repeats itself" not in report and "**best-of-4** writes text" not in report
    # Last logged value of each learner metric (line 39 is the last multiple of 3).
    assert "| learner/actor_loss | -0.39 |" in report and "| learner/alpha | 0.049 |" in report
    for name in ("reward.png", "cost.png"):
        data = (run / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
    assert not list(run.glob("*.tmp*"))


def test_report_of_an_unevaluated_run(tmp_path):
    run = write_run(tmp_path / "demo-2", lines=0, summary=None)
    write_report(run)
    report = (run / "report.md").read_text()
    assert "not evaluated (no summary.json)" in report and "| mode |" not in report
    assert "No rollout reward was logged." in report and (run / "reward.png").is_file()


def test_report_reads_the_trainers_mode_names(tmp_path):
    names = {"agent-serial": "agent", "best-of-4": "best_of_4", "base": "base"}
    run = write_run(tmp_path / "demo-4", summary={names[m]: s for m, s in SUMMARY.items()})
    write_report(run)
    assert "**agent** vs best_of_4: reward worse by 0.100 ± 0.036" in (run / "report.md").read_text()


def test_the_bar_states_each_comparison_and_its_verdict():
    base, best = SUMMARY["base"], SUMMARY["best-of-4"]
    # Clears: +0.15 over best-of-4 with 2 SE = 2·hypot(0.02, 0.03) = 0.072; KL 1.80 ≤ log 16 − 15/16 = 1.835.
    good = {"reward": {"mean": 0.65, "se": 0.03}, "cost": base["cost"], "n": 100, "kl_per_response": {"mean": 1.80, "se": 0.1},
            "distinct_2": 0.63, "perplexity": {"mean": 26.0, "se": 1.0}, "lm_forward_tokens_per_token": 1.0}
    assert the_bar("agent", {"base": base, "best_of_4": best, "agent": good}) == (
        "**agent** clears the bar for training over best-of-N: reward +0.150 over best-of-4's (2 SE = 0.072) ✓; "
        "KL 1.80 nats per response (best-of-16's bound 1.84) ✓; distinct-2 0.90× base sampling's (bar ≥ 0.9) ✓; "
        "perplexity 1.30× base sampling's (bar ≤ 1.3) ✓; 1.0 LM forward tokens per token (bar ≤ 3) ✓.")
    for key, value, failed in [("reward", {"mean": 0.57, "se": 0.03}, "reward +0.070 over best-of-4's (2 SE = 0.072) ✗"),
                               ("kl_per_response", {"mean": 1.84, "se": 0.1}, "(best-of-16's bound 1.84) ✗"),
                               ("distinct_2", 0.62, "distinct-2 0.89× base sampling's (bar ≥ 0.9) ✗"),
                               ("perplexity", {"mean": 26.2, "se": 1.0}, "perplexity 1.31× base sampling's (bar ≤ 1.3) ✗"),
                               ("lm_forward_tokens_per_token", 3.1, "3.1 LM forward tokens per token (bar ≤ 3) ✗")]:
        line = the_bar("agent", {"base": base, "best-of-4": best, "agent": {**good, key: value}})
        assert line.startswith("**agent** does not clear the bar") and failed in line and line.count("✗") == 1, key
    assert the_bar("agent", {"base": base, "agent": good}) is None  # nothing to compare with
    assert the_bar("agent", {"base": base, "best-of-4": best, "agent": {**good, "kl_per_response": None}}) is None


def test_missing_run_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="run directory .*nowhere' does not exist"):
        write_report(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="metrics.jsonl does not exist"):
        write_report(tmp_path / "empty")


def test_bad_metrics_write_nothing_and_keep_the_old_report(tmp_path):
    run = write_run(tmp_path / "demo-3")
    (run / "report.md").write_text("previous report\n")
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"time_s": 1, "episodes": 2}\n')
    with pytest.raises(EvalError, match=r"metrics.jsonl:56: missing \['updates'\]"):
        write_report(run)
    assert (run / "report.md").read_text() == "previous report\n"
    assert not (run / "reward.png").exists()
    (run / "metrics.jsonl").write_text("")
    with pytest.raises(EvalError, match="is empty"):
        write_report(run)
    write_run(run)
    (run / "summary.json").write_text(json.dumps({"base": {"reward": {"mean": 0, "se": 0}}}))
    with pytest.raises(EvalError, match=r"modes \['base'\] lack reward/cost/n"):
        write_report(run)
