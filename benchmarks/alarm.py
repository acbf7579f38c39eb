"""ALaRM's hierarchical rewards against a flat weighted sum and the holistic reward alone, on the demo task.

    python benchmarks/alarm.py            # 3 seeds × 3 objectives, 30k decisions per agent, 100 held-out prompts
    python benchmarks/alarm.py --quick    # 1 seed, 4k decisions, 20 prompts: a check that it runs

The demo's scorers plus one aspect: `vader` (holistic: sentiment, ×2), `profanity` (cost role, ×−1) and
`distinct` (lexical diversity, ×1: the aspect every VADER-trained agent so far destroyed). The same
scorers, learner and decision budget for every agent; only the objective differs:
  * weighted       R = 2·vader − profanity + distinct                                (MARA's flat sum)
  * hierarchical   R = 5·ẑ_vader, plus (−profanity + distinct) once ẑ_vader ≥ 0.6;
                   −50 for answers of ≤ 2 tokens                                     (ALaRM's QA defaults)
  * holistic_only  R = 5·ẑ_vader (and the short-answer rule)
Every agent decodes the same held-out prompts with the same seed, as a text distribution (sampled actions:
the main rows) and as MARA evaluates it (serial first-accept, greedy agent: "@serial"); the arena then
plays each pair head to head within each decoding. Judges: the full weighted reward (which the `weighted` agent
optimises directly, so it favours it), the holistic reward alone, and lexical diversity alone. Beside
the win rates, each agent's mean scores, distinct-2 and base-LM perplexity, against base sampling.

Results: benchmarks/results/alarm[_quick].{json,md}.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_runs import (  # noqa: E402
    AGENT_MODES,
    budget_overrides,
    command,
    decode,
    held_out_task,
    machine,
    mean_se,
    parse_args,
    train,
)

from tokenalign.eval.agent_source import load_agent  # noqa: E402
from tokenalign.eval.arena import compare  # noqa: E402
from tokenalign.eval.evaluate import evaluate  # noqa: E402
from tokenalign.eval.records import Generation  # noqa: E402

SCORERS = "reward.scorers=['vader,multiplier=2', 'profanity,role=cost,multiplier=-1', 'distinct']"
OBJECTIVES: dict[str, list[str]] = {
    "weighted": ["objective.name=weighted"],
    "hierarchical": ["objective.name=hierarchical"],
    "holistic_only": ["objective.name=hierarchical", "objective.params.mode=holistic_only"],
}
JUDGES = {"weighted reward": None, "holistic (vader)": "vader", "diversity (distinct)": "distinct"}
"""Arena judges: the record's final (2·vader − profanity + distinct), or one scorer's raw score."""
QUICK = {"seeds": 1, "decisions": 4000, "eval_prompts": 20}


@dataclass
class Args:
    """ALaRM benchmark settings."""

    seeds: int = 3
    """Seeds (0, 1, ...): each trains one agent per objective."""
    decisions: int = 30_000
    """Agent decisions each agent collects (the equal budget)."""
    learner: str = "ppo"
    """Learner of every agent."""
    eval_prompts: int = 100
    """Held-out prompts every agent decodes."""
    eval_batch_size: int = 32
    """Sequences decoded together during evaluation."""
    quick: bool = False
    """1 seed, 4k decisions, 20 prompts: writes alarm_quick.*."""
    out_dir: str = "benchmarks/results"
    """Where the results go."""
    runs_dir: str = "runs/alarm"
    """Parent of the training runs' directories."""


def judged(records: list[Generation], scorer: str | None) -> list[Generation]:
    """The records with `final` replaced by one scorer's raw score (None keeps the weighted reward)."""
    return records if scorer is None else [dataclasses.replace(r, final=r.scores[scorer]) for r in records]


def summary_row(result) -> dict[str, Any]:
    s = result.summary
    means = {k: float(np.mean([r.scores[k] for r in result.records])) for k in ("vader", "profanity", "distinct")}
    return {"reward": s["reward"]["mean"], **means, "distinct_2": s["distinct_2"], "perplexity": s["perplexity"]["mean"]}


def main() -> None:
    args = parse_args(Args, __doc__, QUICK)
    name = "alarm_quick" if args.quick else "alarm"
    runs_dir = Path(args.runs_dir) / time.strftime("%Y%m%d-%H%M%S")
    _, task = held_out_task([SCORERS], args.eval_prompts)
    data: dict[str, Any] = {"command": command("alarm.py", args, QUICK), "args": asdict(args), "machine": machine(),
                            "objectives": OBJECTIVES, "seeds": []}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    for seed in range(args.seeds):
        row: dict[str, Any] = {"seed": seed, "agents": {}, "arena": {}}
        records: dict[str, list[Generation]] = {}
        base = evaluate(task, "base", task.prompts, seed=seed, batch_size=args.eval_batch_size)
        records["base"], row["agents"]["base"] = base.records, summary_row(base)
        for objective, extra in OBJECTIVES.items():
            print(f"[{(time.monotonic() - start) / 60:5.1f} min] seed {seed}: {objective}", flush=True)
            run_dir, training = train([SCORERS, *extra, *budget_overrides(
                learner=args.learner, decisions=args.decisions, seed=seed, runs_dir=runs_dir, name=objective)])
            policy = load_agent(run_dir, state_size=task.state_size)
            for suffix, mode in AGENT_MODES.items():
                result = decode(task, policy, mode, seed=seed, batch_size=args.eval_batch_size)
                records[objective + suffix] = result.records
                row["agents"][objective + suffix] = {**summary_row(result), "decisions": training["decisions"],
                                                     "sample": [r.response for r in result.records[:3]]}
        matches = [(red + suffix, blue + suffix) for suffix in AGENT_MODES for red, blue in combinations(OBJECTIVES, 2)]
        matches += [("base", o + suffix) for suffix in AGENT_MODES for o in OBJECTIVES]
        for red, blue in matches:
            row["arena"][f"{blue} vs {red}"] = {
                judge: compare(judged(records[red], scorer), judged(records[blue], scorer), red_name=red,
                               blue_name=blue).rates
                for judge, scorer in JUDGES.items()}
        data["seeds"].append(row)
        data["wall_minutes"] = (time.monotonic() - start) / 60
        (out / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n")
    print(write_report(data, out, name))


def write_report(data: dict[str, Any], out: Path, name: str) -> str:
    seeds = data["seeds"]
    lines = ["# ALaRM: hierarchical vs weighted vs holistic-only rewards", "",
             f"`{data['command']}` — {len(seeds)} seed(s), {data['wall_minutes']:.1f} min on {data['machine']['cores']} "
             "CPU cores. Mean ± SE over seeds.", "",
             "| agent | weighted reward | vader | profanity | distinct | distinct-2 | base-LM perplexity |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for agent in ["base", *[o + suffix for suffix in AGENT_MODES for o in OBJECTIVES]]:
        cells = []
        for key in ("reward", "vader", "profanity", "distinct", "distinct_2", "perplexity"):
            m, se = mean_se([s["agents"][agent][key] for s in seeds])
            cells.append(f"{m:.1f} ± {se:.1f}" if key == "perplexity" else f"{m:.3f} ± {se:.3f}")
        lines.append(f"| {agent} | " + " | ".join(cells) + " |")
    lines += ["", "Arena: the first agent's win / tie / loss rates against the second (mean over seeds), per judge.", "",
              "| match | " + " | ".join(JUDGES) + " |", "|---|" + "---|" * len(JUDGES)]
    for match in seeds[0]["arena"]:
        cells = []
        for judge in JUDGES:
            rates = {k: np.mean([s["arena"][match][judge][k] for s in seeds]) for k in ("win", "tie", "loss")}
            cells.append(f"{rates['win']:.2f} / {rates['tie']:.2f} / {rates['loss']:.2f}")
        lines.append(f"| {match} | " + " | ".join(cells) + " |")
    lines += ["", "Sample responses (seed 0):", ""]
    for agent in [o + suffix for suffix in AGENT_MODES for o in OBJECTIVES]:
        lines += [f"- {agent}: " + " · ".join(repr(t) for t in seeds[0]["agents"][agent]["sample"])]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    return "\n".join(lines)


if __name__ == "__main__":
    torch.set_num_threads(os.cpu_count() or 1)
    main()
