"""Rollout scaling: episodes/s and decisions/s of the full training system with 1 and 2 rollout actors.

Each setting runs the real trainer (Ray actors, embedded Redis buffer, SAC learner) on the demo task for a
fixed wall-clock budget; throughput is measured from the trainer's metrics.jsonl over the training loop
(actor start-up and the final evaluation excluded). Settings run one after the other in one invocation.

    python benchmarks/scaling.py --minutes 1.5      # writes benchmarks/results/scaling.{json,md}
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

from tokenalign.config import load_config
from tokenalign.run.trainer import Trainer

RESULTS = Path(__file__).resolve().parent / "results"


def measure(num_actors: int, *, minutes: float, runs_dir: str, extra: list[str]) -> dict:
    config = load_config(None, [f"rollout.num_actors={num_actors}", f"run.max_minutes={minutes}",
                                "run.total_episodes=1000000", "run.eval_prompts=4", "run.wandb_mode=disabled",
                                f"run.runs_dir={runs_dir}", f"run.name=scaling-{num_actors}", *extra])
    trainer = Trainer.new_run(config)
    trainer.run()
    lines = [json.loads(x) for x in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    rollouts = [m for m in lines if "rollout/episodes" in m]
    first, last = rollouts[0], rollouts[-1]
    seconds = last["time_s"] - first["time_s"]
    episodes = last["episodes"] - first["episodes"]
    decisions = last["decisions"] - first["decisions"]
    return {"num_actors": num_actors, "seconds": seconds, "episodes": episodes, "decisions": decisions,
            "episodes_per_s": episodes / seconds, "decisions_per_s": decisions / seconds,
            "learner_updates": last["updates"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=1.5, help="training time per setting")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("overrides", nargs="*", help="extra dotted config overrides for every setting")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as runs_dir:
        rows = [measure(n, minutes=args.minutes, runs_dir=runs_dir, extra=args.overrides) for n in (1, 2)]
    ratio = rows[1]["episodes_per_s"] / rows[0]["episodes_per_s"]
    result = {"command": f"python benchmarks/scaling.py --minutes {args.minutes} {' '.join(args.overrides)}".strip(),
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
              "rows": rows, "episodes_per_s_ratio_2_vs_1": ratio}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaling.json").write_text(json.dumps(result, indent=2))
    lines = ["# Rollout scaling", "", f"Command: `{result['command']}` on {os.cpu_count()} CPU cores (no GPU); the demo "
             "task (bundled LM, SAC learner, embedded Redis buffer), measured over the training loop.", "",
             "| rollout actors | episodes/s | decisions/s | episodes | seconds | learner updates |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['num_actors']} | {r['episodes_per_s']:.2f} | {r['decisions_per_s']:.1f} | {r['episodes']} | "
                     f"{r['seconds']:.1f} | {r['learner_updates']} |")
    lines += ["", f"2 actors / 1 actor, episodes/s: {ratio:.2f}×. On 2 cores the actors and the learner share the CPU, "
              "so a second actor buys what the first left idle, not 2×; on a GPU cluster each actor has its own device."]
    (args.out / "scaling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
