"""DPO and adaptive-margin DPO from the demo preference set against the demo's RL agent, at equal wall-clock.

    python benchmarks/dpo_vs_rl.py            # the committed results (about 30 minutes on 2 cores)
    python benchmarks/dpo_vs_rl.py --quick    # a smoke run

Each method trains for `minutes` of wall-clock on this machine (run.max_minutes: the training loop; the
start-up — DPO teacher-forcing its pairs once, PPO starting actors and Redis — is reported beside it), 3 seeds:

    ppo              the demo (`make run`'s config): VADER × 2 − profanity from rollouts, β = the demo's kl_coef
    dpo              learner.name=dpo on builtin:demo-prefs (pairs of base-LM samples, `better` by VADER), the same β
    adaptive_margin  HC-RLHF's adaptive margin (EMA copy, margins 0..10), same data and β

Every agent is measured on the same held-out prompts: reward (the demo's VADER × 2 − profanity), cost,
KL per response to the base LM, distinct-2 and the base LM's perplexity, beside best-of-N by the same
reward (N = 1 … 16, the analytic KL bound). Mean ± SE over seeds.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench_runs import best_of_pool, budget_overrides, command, held_out_task, machine, mean_se, parse_args, train

from tokenalign.eval.agent_source import load_agent
from tokenalign.eval.evaluate import evaluate


@dataclass
class Args:
    """Flags of the benchmark (defaults: the committed run)."""

    minutes: float = 2.5
    """Wall-clock of every training loop (run.max_minutes)."""
    seeds: int = 3
    """Seeds per method."""
    eval_prompts: int = 60
    """Held-out prompts every agent and best-of-N row is measured on."""
    pool: int = 16
    """Base samples per prompt for best-of-N."""
    eval_batch_size: int = 64
    """Prompts per decoding batch in evaluation."""
    runs_dir: str = "runs/bench-dpo"
    """Where the training runs go."""
    out_dir: str = "benchmarks/results"
    """Where the JSON, markdown and PNG go."""
    quick: bool = False
    """A smoke run."""


QUICK = {"minutes": 0.4, "seeds": 1, "eval_prompts": 8, "pool": 4}
METHODS: dict[str, list[str]] = {
    "ppo": [],  # the demo's own learner and params
    "dpo": ["learner.name=dpo", "data.pairs=[builtin:demo-prefs]"],
    "adaptive_margin": ["learner.name=dpo", "data.pairs=[builtin:demo-prefs]", "learner.params.loss=adaptive_margin"],
}
BEST_OF = (1, 2, 4, 8, 16)


def agent_row(task, run_dir: Path, seed: int, batch_size: int) -> dict[str, Any]:
    result = evaluate(task, "sample", task.prompts, policy=load_agent(run_dir, state_size=task.state_size), seed=seed,
                      batch_size=batch_size)
    s = result.summary
    return {"reward": s["reward"]["mean"], "cost": s["cost"]["mean"], "kl": s["kl_per_response"]["mean"],
            "distinct_2": s["distinct_2"], "perplexity": s["perplexity"]["mean"],
            "sample": [r.response for r in result.records[:3]]}


def main() -> None:
    args = parse_args(Args, __doc__, QUICK)
    name = "dpo_vs_rl_quick" if args.quick else "dpo_vs_rl"
    runs_dir = Path(args.runs_dir) / time.strftime("%Y%m%d-%H%M%S")
    _, task = held_out_task([], args.eval_prompts)  # the demo's engine and reward
    data: dict[str, Any] = {"command": command("dpo_vs_rl.py", args, QUICK), "args": asdict(args), "machine": machine(),
                            "seeds": []}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    for seed in range(args.seeds):
        row: dict[str, Any] = {"seed": seed, "agents": {}}
        print(f"[{(time.monotonic() - start) / 60:5.1f} min] seed {seed}: best-of-N pool", flush=True)
        samples = evaluate(task, "base", [p for p in task.prompts for _ in range(args.pool)], seed=seed,
                           batch_size=args.eval_batch_size)
        row["best_of"] = best_of_pool(samples.records, prompts=len(task.prompts), pool=args.pool,
                                      eos=task.engine.eos_token_id, rank_by=lambda r: r.final,
                                      report={"reward": lambda r: r.final, "cost": lambda r: r.cost}, sizes=BEST_OF)
        for method, overrides in METHODS.items():
            print(f"[{(time.monotonic() - start) / 60:5.1f} min] seed {seed}: {method}", flush=True)
            base = budget_overrides(learner="ppo", decisions=None, seed=seed, runs_dir=runs_dir, name=method)
            base = [o for o in base if not o.startswith(("learner.name", "learner.params", "run.max_minutes"))]
            began = time.monotonic()
            run_dir, training = train([*base, f"run.max_minutes={args.minutes}", *overrides])
            row["agents"][method] = {**agent_row(task, run_dir, seed, args.eval_batch_size),
                                     "train_minutes": float(training["minutes"]),
                                     "run_minutes": (time.monotonic() - began) / 60, "updates": float(training["updates"]),
                                     "episodes_or_pairs": float(training["episodes"])}
        data["seeds"].append(row)
        (out / f"{name}.json").write_text(json.dumps(data, indent=1))  # after each seed: a stop keeps them
    seeds = data["seeds"]
    data["summary"] = {
        "agents": {m: {k: list(mean_se([s["agents"][m][k] for s in seeds])) for k, v in seeds[0]["agents"][m].items()
                       if isinstance(v, float)} for m in METHODS},
        "best_of": {n: {k: list(mean_se([s["best_of"][n][k] for s in seeds])) for k in seeds[0]["best_of"][n]}
                    for n in seeds[0]["best_of"]},
    }
    (out / f"{name}.json").write_text(json.dumps(data, indent=1))
    (out / f"{name}.md").write_text(markdown(data))
    print(markdown(data))


def fmt(cell: list[float], digits: int = 3) -> str:
    return f"{cell[0]:.{digits}f} ± {cell[1]:.{digits}f}"


def markdown(data: dict[str, Any]) -> str:
    s = data["summary"]
    lines = ["# DPO and adaptive-margin DPO against the demo's PPO agent, at equal wall-clock", "",
             f"`{data['command']}` — {len(data['seeds'])} seed(s), {data['args']['minutes']} minutes of training loop each "
             f"(the whole run, start-up and final checkpoint included, in the last column), "
             f"{data['args']['eval_prompts']} held-out prompts; mean ± SE over seeds. Reward: the "
             "demo's VADER × 2 − profanity; KL per response to the base LM in nats (agents: measured while decoding; "
             "best-of-N: the analytic bound).", "",
             "| method | reward | cost | KL / response | distinct-2 | base-LM ppl | updates | episodes (PPO) / pairs seen (DPO) "
             "| run minutes |",
             "|---|---|---|---|---|---|---|---|---|"]
    for method, a in s["agents"].items():
        lines.append(f"| {method} | {fmt(a['reward'])} | {fmt(a['cost'])} | {fmt(a['kl'], 2)} | {fmt(a['distinct_2'])} | "
                     f"{fmt(a['perplexity'], 1)} | {a['updates'][0]:.0f} | {a['episodes_or_pairs'][0]:.0f} | "
                     f"{a['run_minutes'][0]:.1f} |")
    for n, b in s["best_of"].items():
        lines.append(f"| best-of-{n} | {fmt(b['reward'])} | {fmt(b['cost'])} | ≤ {b['kl'][0]:.2f} | "
                     f"{fmt(b['distinct_2'])} | {fmt(b['perplexity'], 1)} | | | |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
