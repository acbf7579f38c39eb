"""Learner comparison on the demo task: every learner over several seeds at an equal budget of agent decisions,
evaluated on the held-out prompts beside base sampling and best-of-N reranking.

    python benchmarks/compare_algorithms.py            # full: 4 learners × 3 seeds, 200k decisions each
    python benchmarks/compare_algorithms.py --quick    # 2 seeds, 20k decisions, 50 prompts: under 10 minutes
    python benchmarks/compare_algorithms.py --tag mara shaping.token_reward=mara_kl_div   # a variant, own result files

Each run is the real system (Trainer: Ray rollout actors, embedded Redis buffer, learner actor) on one
shared local Ray session, stopped by run.total_decisions. A seed seeds the run (actors, learner, buffer
sampler) and the evaluation's sampling, so base and best-of-N are drawn afresh for every seed, and every
figure is a mean ± standard error over seeds. The Lagrangian learners get the comparison's cost limit as
their threshold, and cost_success is P(cost ≤ that limit). Results (benchmarks/compare_report.py writes
them): benchmarks/results/compare_algorithms[_quick].{json,md} and ..._curves.png, ..._pareto.png. The
JSON is rewritten after every run, so an interrupted comparison keeps what it measured.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_report import write_report  # noqa: E402

from tokenalign.cluster import ray_cluster  # noqa: E402
from tokenalign.config import TrainConfig, load_config  # noqa: E402
from tokenalign.data.prompts import load_prompts  # noqa: E402
from tokenalign.envs.task import DecodingTask  # noqa: E402
from tokenalign.eval.agent_source import load_agent  # noqa: E402
from tokenalign.eval.evaluate import evaluate  # noqa: E402
from tokenalign.learners import config_class  # noqa: E402
from tokenalign.run.trainer import Trainer  # noqa: E402

LEARNERS = ("sac", "ppo", "ppo_lagrangian", "rloo_lagrangian")
DEMO_PARAMS: dict[str, dict[str, Any]] = {
    # The demo's SAC (configs/demo.yaml): MARA's settings scaled to a 2-core CPU.
    "sac": {"batch_size": 256, "update_time": 2, "learning_starts_factor": 4},
    # safe-rlhf updates on 128 episodes (16 prompts × 8 GPUs); the demo's 2 actors collect 16 episodes a round.
    "ppo": {"episodes_per_update": 32},
    "ppo_lagrangian": {"episodes_per_update": 32},
    # HC-RLHF's 2 samples per prompt; 16 prompts make the same 32 episodes per update.
    "rloo_lagrangian": {"prompts_per_update": 16},
}
"""Each learner's parameters: its paper's defaults but for the rollout size, scaled alike to the demo."""
QUICK = {"seeds": 2, "decisions": 20_000, "eval_prompts": 50}


@dataclass
class Args:
    """Comparison settings."""

    learners: str = ",".join(LEARNERS)
    """Comma-separated learner names."""
    seeds: int = 3
    """Seeds per learner (0, 1, ...)."""
    decisions: int = 200_000  # about the demo's 3000 episodes
    """Agent decisions each training run collects (the equal budget)."""
    eval_prompts: int = 200
    """Held-out prompts (builtin:demo-test holds 200) every method is evaluated on."""
    best_of: str = "2,4,8,16"
    """N of the best-of-N baselines."""
    target_best_of: int = 4
    """The reward target of 'decisions to reach the target' is this best-of-N's held-out reward."""
    cost_limit: float = 0.03  # about the base LM's median response cost (its mean is 0.05)
    """Cost threshold of the Lagrangian learners and of cost_success."""
    eval_batch_size: int = 32
    """Sequences decoded together during evaluation."""
    quick: bool = False
    """2 seeds, 20k decisions, 50 prompts; writes the *_quick results."""
    out_dir: str = "benchmarks/results"
    """Where the results go."""
    runs_dir: str = "runs/compare"
    """Parent of the training runs' directories (checkpoints, metrics.jsonl)."""
    tag: str = ""
    """Appended to the result files' names (compare_algorithms_<tag>.*), to keep a variant apart."""


def parse_args() -> Args:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="dotted config overrides for every training run (key=value)")
    for f in fields(Args):
        flag = f"--{f.name.replace('_', '-')}"
        if f.type == "bool":
            parser.add_argument(flag, action="store_true")
        else:
            parser.add_argument(flag, type=type(f.default), default=f.default)
    parsed = vars(parser.parse_args())
    overrides = parsed.pop("overrides")
    args = Args(**parsed)
    if args.quick:
        args = Args(**{**asdict(args), **QUICK})
    unknown = sorted(set(args.learners.split(",")) - set(LEARNERS))
    if unknown:
        parser.error(f"unknown learners {unknown}; choose from {', '.join(LEARNERS)}")
    return args, overrides


def run_config(args: Args, learner: str, seed: int, runs_dir: Path, overrides: list[str]) -> TrainConfig:
    """The demo config (the defaults, then `overrides`) with this learner, seed and decision budget."""
    params = [f"learner.params.{k}={v}" for k, v in DEMO_PARAMS[learner].items()]
    if "threshold" in {f.name for f in fields(config_class(learner))}:  # the constrained learners
        params.append(f"learner.params.threshold={args.cost_limit}")
    return load_config(None, [
        "learner.params={}", f"learner.name={learner}", *params, f"run.seed={seed}", f"buffer.seed={seed}",
        f"run.total_decisions={args.decisions}", "run.total_episodes=1000000000", "run.max_minutes=null",
        "run.eval_prompts=0", "run.wandb_mode=disabled", f"run.runs_dir={runs_dir}", f"run.name={learner}-seed{seed}",
        *overrides,
    ])


def learning_curve(run_dir: Path) -> dict[str, list[float]]:
    """One point per collected rollout batch: cumulative decisions and episodes, the batch's mean reward and cost."""
    curve: dict[str, list[float]] = {"decisions": [], "episodes": [], "reward": [], "cost": [], "batch_episodes": []}
    episodes = 0
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        if m["episodes"] == episodes or "rollout/episodes" not in m:
            continue  # learner lines repeat the last rollout's figures
        episodes = m["episodes"]
        for key, value in (("decisions", m["decisions"]), ("episodes", episodes), ("reward", m["rollout/reward_only"]),
                           ("cost", m["rollout/cost"]), ("batch_episodes", m["rollout/episodes"])):
            curve[key].append(float(value))
    return curve


def train_and_evaluate(args: Args, learner: str, seed: int, runs_dir: Path, task: DecodingTask,
                       overrides: list[str]) -> dict[str, Any]:
    """One training run on the shared Ray session, then its agent (sampled) on the held-out prompts."""
    trainer = Trainer.new_run(run_config(args, learner, seed, runs_dir, overrides))
    trainer.run()
    training = json.loads((trainer.run_dir / "training.json").read_text())
    policy = load_agent(trainer.run_dir, state_size=task.state_size)
    result = evaluate(task, "sample", task.prompts, policy=policy, seed=seed, batch_size=args.eval_batch_size,
                      cost_threshold=args.cost_limit)
    return {"learner": learner, "seed": seed, "run_dir": str(trainer.run_dir), "decisions": training["decisions"],
            "episodes": training["episodes"], "updates": training["updates"], "train_minutes": training["minutes"],
            "curve": learning_curve(trainer.run_dir), "eval": result.summary}


def evaluate_baselines(args: Args, seed: int, task: DecodingTask) -> list[dict[str, Any]]:
    """Base sampling and best-of-N on the held-out prompts, drawn with this seed."""
    rows = [("base", 1), *[("best-of-n", int(n)) for n in args.best_of.split(",")]]
    return [{"method": result.label, "n": n, "seed": seed, "eval": result.summary}
            for mode, n in rows
            for result in [evaluate(task, mode, task.prompts, n=n, seed=seed, batch_size=args.eval_batch_size,
                                    cost_threshold=args.cost_limit)]]


def main() -> None:
    args, overrides = parse_args()
    name = "_".join(["compare_algorithms", *(["quick"] if args.quick else []), *([args.tag] if args.tag else [])])
    runs_dir = Path(args.runs_dir) / time.strftime("%Y%m%d-%H%M%S")
    config = load_config(None, [])
    prompts = load_prompts(config.data.test, prompt_field=config.data.prompt_field, seed=config.data.seed)
    task = DecodingTask.build(model=config.lm.path, prompts=prompts[: args.eval_prompts], scorers=config.reward,
                              sampling=config.engine.sampling, max_new_tokens=config.engine.max_new_tokens,
                              candidate_block=config.engine.candidate_block, dtype=config.lm.dtype)
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in asdict(args).items()
                     if k != "quick" and v != getattr(Args, k) and not (args.quick and k in QUICK))
    data: dict[str, Any] = {
        "command": " ".join(["python benchmarks/compare_algorithms.py", *(["--quick"] if args.quick else []),
                             *([flags] if flags else []), *overrides]),
        "args": asdict(args), "overrides": overrides, "learner_params": DEMO_PARAMS,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "gpus": 0},
        "runs": [], "baselines": [],
    }
    request = ray_cluster.ResourceRequest(num_actors=config.rollout.num_actors, gpus_per_actor=0,
                                          cpus_per_actor=config.rollout.cpus_per_actor)
    ray_cluster.connect(num_cpus=ray_cluster.local_cpus_for(request))
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    for seed in range(args.seeds):
        data["baselines"] += evaluate_baselines(args, seed, task)
        for learner in args.learners.split(","):
            print(f"[{(time.monotonic() - start) / 60:5.1f} min] {learner} seed {seed}", flush=True)
            data["runs"].append(train_and_evaluate(args, learner, seed, runs_dir, task, overrides))
            data["wall_minutes"] = (time.monotonic() - start) / 60
            (out / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n")
    print(write_report(data, out, name))


if __name__ == "__main__":
    torch.set_num_threads(os.cpu_count() or 1)
    main()
