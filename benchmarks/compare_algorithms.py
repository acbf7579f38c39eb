"""The comparison users run to choose a method: every learner, and resampling from trained agents, against
best-of-N on the reward–KL plane and at equal decode compute, on the demo task (the bundled LM).

    python benchmarks/compare_algorithms.py            # 3 seeds, 60 held-out prompts, every family: ~90 min on 2 cores
    python benchmarks/compare_algorithms.py --quick    # 1 seed, 10 prompts, short runs: a check that it runs
    python benchmarks/compare_algorithms.py --families value,distill --seeds 1

Every training run is the real system (Trainer: Ray rollout actors, Redis buffer, learner actor; offline
learners prepare their data in the learner actor) on one local Ray session, in the demo's context mode (one LM
forward per token), with the same training-loop budget (`--minutes`, run.max_minutes); the wall-clock each run
took is reported beside it, startup and data preparation included (distillation's base samples, DPO's pair
forcing). Each family reaches ≥ 3 KL levels by its own dial:

  value      a value-guided head (learner value_guided), decoded at several β (a decode-time dial), and
             resampled: K agent samples, one kept by weights ∝ π_ref·exp(R/β)/π_agent or the best by reward
  distill    best-of-n distillation (bon_distill, BoNBoN's loss) at several n, from the same number of base
             samples each (n × prompts fixed); its n = 8 agent also resampled (best of K)
  distill_jeffreys    the same at n = 8 with BOND's Jeffreys loss
  ppo, ppo_lagrangian, rloo_lagrangian, sac    the KL coefficient β
  dpo        DPO's β, on builtin:demo-prefs (2,000 pairs of base samples labelled by the demo's scorers)
  ppo_init   PPO (β 0.3) started from the seed's distilled n = 4 agent (learner.init_from): RL from a good start

Best-of-N (N = 1 … 64) comes from one pool of 64 base samples per prompt and seed. Every row carries reward,
cost, KL per response to the base LM (agents: measured while decoding; best-of-N and resampling: their bounds),
distinct-2, the base LM's perplexity, LM forward tokens per generated token (× one base sample's), and the
training wall-clock. Results: benchmarks/results/compare_algorithms[_quick].{json,md,png} (compare_report.py);
the JSON is rewritten after every run, so an interrupted comparison keeps what it measured.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_runs import budget_overrides, command, held_out_task, machine, parse_args, train  # noqa: E402
from compare_report import aggregate, write_report  # noqa: E402
from reward_kl import best_of_n_rows  # noqa: E402

from tokenalign.eval.agent_source import load_agent  # noqa: E402
from tokenalign.eval.evaluate import evaluate  # noqa: E402
from tokenalign.workflows.demo_preferences import ensure_demo_preferences  # noqa: E402


@dataclass(frozen=True)
class Family:
    """One method: its learner and parameters, and the dial that moves it along the KL axis."""

    name: str
    learner: str
    params: str
    """learner.params of every run (YAML), before the dial."""
    dial: str
    """The learner parameter set per level, or "decode_beta" for a head decoded at several β after one run."""
    levels: tuple[float, ...]
    extra: tuple[str, ...] = ()
    """More overrides of its runs."""
    resample: tuple[int, ...] = ()
    """K of the resampling rows, from the agent at `resample_level`."""
    resample_level: float | None = None
    init_from: tuple[str, float] | None = None
    """(family, level) whose agent of the same seed starts every run of this family."""


COST_LIMIT = 0.03  # about the base LM's median response cost
OFFLINE = ("run.checkpoint_every=10",)
"""An offline learner checks its budget between calls of checkpoint_every updates (50 at most): keep them short."""
FAMILIES = (
    Family("value", "value_guided", "{}", "decode_beta", (0.6, 0.45, 0.35), resample=(2, 4), resample_level=0.45),
    # n × prompts = --set-samples base samples per run, so every n pays the same data cost
    Family("distill", "bon_distill", "{}", "n", (4, 8, 16), extra=OFFLINE, resample=(2, 4), resample_level=8),
    Family("distill_jeffreys", "bon_distill", "{loss: jeffreys}", "n", (8,), extra=OFFLINE),
    Family("ppo", "ppo", "{episodes_per_update: 32}", "kl_coef", (0.1, 0.3, 1.0)),
    Family("ppo_lagrangian", "ppo_lagrangian", f"{{episodes_per_update: 32, threshold: {COST_LIMIT}}}", "kl_coef",
           (0.1, 0.3, 1.0)),
    Family("rloo_lagrangian", "rloo_lagrangian", f"{{prompts_per_update: 16, threshold: {COST_LIMIT}}}", "kl_coef",
           (0.1, 0.3, 1.0)),
    Family("sac", "sac", "{batch_size: 256, update_time: 2, learning_starts_factor: 4}", "kl_coef", (0.03, 0.1, 0.3)),
    Family("dpo", "dpo", "{}", "kl_coef", (0.05, 0.1, 0.3), extra=("data.pairs=[builtin:demo-prefs]", *OFFLINE)),
    Family("ppo_init", "ppo", "{episodes_per_update: 32}", "kl_coef", (0.3,), init_from=("distill", 4)),
)
QUICK = {"seeds": 1, "eval_prompts": 10, "minutes": 0.3, "pool": 16}


@dataclass
class Args:
    """Comparison settings."""

    families: str = ",".join(f.name for f in FAMILIES)
    """Comma-separated families (module docstring)."""
    seeds: int = 3
    """Seeds (0, 1, ...): each trains every run and draws its own best-of-N pool."""
    minutes: float = 0.75
    """Training-loop budget of every run (run.max_minutes); startup and offline data preparation come on top."""
    eval_prompts: int = 60
    """Held-out prompts every method decodes."""
    pool: int = 64
    """Base samples per prompt; best-of-N for every N in 1, 2, 4, … up to it."""
    set_samples: int = 4000
    """Distillation: base samples each run draws (n × prompts: the same data cost at every n)."""
    eval_batch_size: int = 32
    """Sequences decoded together during evaluation."""
    overrides: str = ""
    """Config overrides of every training run and of the evaluation engine, space-separated (e.g. lm.path=...)."""
    tag: str = ""
    """Appended to the result files' names (compare_algorithms_<tag>.*), to keep a variant apart."""
    quick: bool = False
    """1 seed, 10 prompts, 0.3-minute runs, N ≤ 16: writes compare_algorithms_quick.*."""
    render: str = ""
    """A results JSON of this script: write its report again beside it (after a change to the report), running nothing."""
    out_dir: str = "benchmarks/results"
    """Where the results go."""
    runs_dir: str = "runs/compare"
    """Parent of the training runs' directories."""


def summary_row(summary: dict[str, Any]) -> dict[str, float]:
    """What the report reads of one evaluation: the KL measured while decoding, or the mode's bound."""
    measured = "kl_per_response" in summary
    return {"reward": summary["reward"]["mean"], "cost": summary["cost"]["mean"], "distinct_2": summary["distinct_2"],
            "perplexity": summary["perplexity"]["mean"],
            "kl": summary["kl_per_response"]["mean"] if measured else summary["kl_per_response_bound"],
            "kl_is_bound": 0.0 if measured else 1.0,
            "forward_tokens_per_token": summary["lm_forward_tokens_per_token"]}


def level_overrides(family: Family, level: float, *, set_samples: int) -> list[str]:
    if family.dial == "decode_beta":
        return []
    if family.dial == "n":  # the same base samples and responses per update at every n
        n = int(level)
        return [f"learner.params.n={n}", f"learner.params.prompts={set_samples // n}",
                f"learner.params.batch_size={max(128 // n, 1)}"]
    return [f"learner.params.{family.dial}={level}"]


def run_family(family: Family, *, seed: int, args: Args, task, runs_dir: Path, trained: dict) -> dict[str, Any]:
    """Train and evaluate one family for one seed; `trained` maps (family, level) to run directories so far."""
    rows: dict[str, Any] = {}
    train_levels = (None,) if family.dial == "decode_beta" else family.levels
    for level in train_levels:
        name = family.name if level is None else f"{family.name}-{family.dial}{level}"
        overrides = [*budget_overrides(learner=family.learner, decisions=None, seed=seed, runs_dir=runs_dir, name=name),
                     f"learner.params={family.params}", *level_overrides(family, level, set_samples=args.set_samples),
                     f"run.max_minutes={args.minutes}", "engine.candidate_state=context", *family.extra,
                     *args.overrides.split()]
        if family.init_from is not None:
            overrides.append(f"learner.init_from={trained[family.init_from]}")
        started = time.monotonic()
        run_dir, training = train(overrides)
        trained[family.name, level] = run_dir
        policy = load_agent(run_dir, state_size=task.state_size)
        # what a user waits for: actors and LM started, offline data prepared, trained, checkpointed
        meta = {"train_minutes": (time.monotonic() - started) / 60, "loop_minutes": float(training["minutes"]),
                "episodes": float(training["episodes"]), "updates": float(training["updates"])}
        for beta in family.levels if level is None else (None,):
            if beta is not None:
                policy.beta = beta
            shown = beta if level is None else level
            result = evaluate(task, "sample", task.prompts, policy=policy, seed=seed, batch_size=args.eval_batch_size)
            rows[f"{family.name} {family.dial}={shown:g}"] = {**summary_row(result.summary), **meta}
            if shown == family.resample_level:
                for k in family.resample:
                    for mode in (["resample"] if hasattr(policy, "beta") else []) + ["resample-best"]:
                        result = evaluate(task, mode, task.prompts, policy=policy, n=k, seed=seed,
                                          batch_size=args.eval_batch_size)
                        rule = "resample" if mode == "resample" else "best-of"
                        rows[f"{family.name} {family.dial}={shown:g} {rule} K={k}"] = {**summary_row(result.summary),
                                                                                       **meta}
    return rows


def main() -> None:
    args = parse_args(Args, __doc__, QUICK)
    if args.render:
        path = Path(args.render)
        data = json.loads(path.read_text())
        data["summary"] = aggregate(data["seeds"])
        print(write_report(data, path.parent, path.stem))
        return
    wanted = args.families.split(",")
    unknown = sorted(set(wanted) - {f.name for f in FAMILIES})
    if unknown:
        raise SystemExit(f"unknown families {unknown}; choose from {', '.join(f.name for f in FAMILIES)}")
    families = [f for f in FAMILIES if f.name in wanted]
    missing = sorted({f.init_from[0] for f in families if f.init_from} - set(wanted))
    if missing:
        raise SystemExit(f"families {[f.name for f in families if f.init_from]} start from {missing}: add them to --families")
    name = "_".join(["compare_algorithms", *(["quick"] if args.quick else []), *([args.tag] if args.tag else [])])
    runs_dir = Path(args.runs_dir) / time.strftime("%Y%m%d-%H%M%S")
    config, task = held_out_task(["engine.candidate_state=context", *args.overrides.split()], args.eval_prompts)
    if any(f.learner == "dpo" for f in families):
        ensure_demo_preferences()  # made (or found) once, outside every DPO run's budget
    data: dict[str, Any] = {"command": command("compare_algorithms.py", args, QUICK), "args": asdict(args),
                            "families": [asdict(f) for f in families], "lm": config.lm.path, "machine": machine(),
                            "seeds": []}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    for seed in range(args.seeds):
        row: dict[str, Any] = {"seed": seed, "agents": {}}
        row["base"] = summary_row(evaluate(task, "base", task.prompts, seed=seed, batch_size=args.eval_batch_size).summary)
        print(f"[{(time.monotonic() - start) / 60:5.1f} min] seed {seed}: best-of-N pool", flush=True)
        row["best_of"] = best_of_n_rows(task, seed=seed, pool=args.pool, batch_size=args.eval_batch_size)
        trained: dict[tuple[str, float | None], Path] = {}
        for family in families:
            print(f"[{(time.monotonic() - start) / 60:5.1f} min] seed {seed}: {family.name}", flush=True)
            row["agents"].update(run_family(family, seed=seed, args=args, task=task, runs_dir=runs_dir, trained=trained))
            data["wall_minutes"] = (time.monotonic() - start) / 60
            (out / f"{name}.json").write_text(json.dumps(data | {"seeds": [*data["seeds"], row]}, indent=1))
        data["seeds"].append(row)
    data["summary"] = aggregate(data["seeds"])
    data["wall_minutes"] = (time.monotonic() - start) / 60
    (out / f"{name}.json").write_text(json.dumps(data, indent=1))
    print(write_report(data, out, name))


if __name__ == "__main__":
    main()
