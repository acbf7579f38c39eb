"""benchmarks/gpu_check.py's CPU dry run: every step of the GPU check runs, and its report says what it measured."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_check  # noqa: E402


def test_the_gpu_check_dry_run_completes_and_reports(ray_cluster, tmp_path):
    report = gpu_check.main(["--dry-run", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "gpu_check_dry_run.json").read_text())
    assert saved["command"] == "python benchmarks/gpu_check.py --dry-run"
    assert [r["batch"] for r in report["throughput"]["rows"]] == [1, 4]
    assert all(r["engine_tokens_per_s"] > 0 and r["generate_tokens_per_s"] > 0 for r in report["throughput"]["rows"])
    # the accelerator path's reads: 2 per forward plus each finished sequence's harvest (8 short sequences here)
    t = report["throughput"]
    assert t["host_reads"] <= 2 * t["forwards"] + 8 * 8, t["host_reads_by_op"]
    assert {r["learner"] for r in report["learners"]} == {"sac", "ppo"} and all(r["updates_per_s"] > 0 for r in report["learners"])
    assert report["training"]["episodes"] >= 16 and report["training"]["agent"]["kl_per_response"]["mean"] >= 0
    assert "Host reads per forward" in (tmp_path / "gpu_check_dry_run.md").read_text()
