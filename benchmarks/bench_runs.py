"""What the objective benchmarks (pareto.py, alarm.py) share: dataclass flags, training runs on one local Ray
session with a decision budget, and mean ± SE over seeds."""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from tokenalign.cluster import ray_cluster
from tokenalign.config import TrainConfig, load_config
from tokenalign.data.prompts import load_prompts
from tokenalign.envs.task import DecodingTask
from tokenalign.eval.evaluate import Generation, evaluate
from tokenalign.eval.metrics import distinct_n
from tokenalign.run.trainer import Trainer

A = TypeVar("A")


def parse_args(cls: type[A], doc: str, quick: dict[str, Any]) -> A:
    """`cls`'s fields as --flags; --quick replaces the fields named in `quick`."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    for f in dataclasses.fields(cls):
        flag = f"--{f.name.replace('_', '-')}"
        if f.type == "bool":
            parser.add_argument(flag, action="store_true")
        else:
            parser.add_argument(flag, type=type(f.default), default=f.default)
    args = cls(**vars(parser.parse_args()))
    return cls(**{**dataclasses.asdict(args), **quick}) if args.quick else args


def command(script: str, args: Any, quick: dict[str, Any]) -> str:
    """The command line that reproduces `args`."""
    defaults = type(args)()
    flags = [f"--{k.replace('_', '-')} {shlex.quote(str(v))}" for k, v in dataclasses.asdict(args).items()
             if k != "quick" and v != getattr(defaults, k) and not (args.quick and k in quick)]
    return " ".join([f"python benchmarks/{script}", *(["--quick"] if args.quick else []), *flags])


def machine() -> dict[str, Any]:
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "gpus": 0}


def budget_overrides(*, learner: str, decisions: int | None, seed: int, runs_dir: Path, name: str) -> list[str]:
    """One training run of `learner` stopped by a decision budget (None: set run.total_episodes after these),
    no end-of-run evaluation, no wandb."""
    params = "{episodes_per_update: 32}" if learner.startswith("ppo") else "{}"  # the demo's 2 actors' rollout scale
    return [f"learner.name={learner}", f"learner.params={params}", f"run.seed={seed}", f"buffer.seed={seed}",
            f"run.total_decisions={'null' if decisions is None else decisions}", "run.total_episodes=1000000000",
            "run.max_minutes=null",
            "run.eval_prompts=0", "run.wandb_mode=disabled", f"run.runs_dir={runs_dir}", f"run.name={name}-seed{seed}"]


def train(overrides: list[str]) -> tuple[Path, dict[str, Any]]:
    """Run one training to its budget; (run directory, training.json)."""
    trainer = Trainer.new_run(load_config(None, overrides))
    trainer.run()
    return trainer.run_dir, json.loads((trainer.run_dir / "training.json").read_text())


def held_out_task(overrides: list[str], num_prompts: int) -> tuple[TrainConfig, DecodingTask]:
    """The demo config with `overrides`, its LM and reward over the first held-out prompts; starts local Ray."""
    config = load_config(None, overrides)
    prompts = load_prompts(config.data.test, prompt_field=config.data.prompt_field, seed=config.data.seed)[:num_prompts]
    task = DecodingTask.build(model=config.lm.path, prompts=prompts, scorers=config.reward,
                              sampling=config.engine.sampling, max_new_tokens=config.engine.max_new_tokens,
                              candidate_block=config.engine.candidate_block,
                              candidate_state=config.engine.candidate_state, dtype=config.lm.dtype)
    request = ray_cluster.ResourceRequest(num_actors=config.rollout.num_actors, gpus_per_actor=0,
                                          cpus_per_actor=config.rollout.cpus_per_actor)
    ray_cluster.connect(num_cpus=ray_cluster.local_cpus_for(request))
    return config, task


AGENT_MODES = {"": "sample", "@serial": "serial"}
"""How agents are evaluated, by the suffix of their result keys: as a text distribution (sampled actions, the
rollout's own decode loop), and as MARA evaluates them (serial first-accept with a greedy agent)."""


def decode(task: DecodingTask, policy: Any, mode: str, *, seed: int, batch_size: int,
           preference: list[float] | None = None):
    """The agent decoding alone in evaluation `mode` on the task's prompts."""
    return evaluate(task, mode, task.prompts, policy=policy, seed=seed, batch_size=batch_size, preference=preference)


def mean_se(values: list[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), (float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0)


def best_of_pool(records: Sequence[Generation], *, prompts: int, pool: int, rank_by: Callable[[Generation], float],
                 report: dict[str, Callable[[Generation], float]], eos: int | None,
                 sizes: Sequence[int] = (1, 2, 4, 8, 16, 32, 64)) -> dict[str, dict[str, float]]:
    """Best-of-N for each N ≤ pool in `sizes`, from `pool` base samples per prompt (prompt-major `records`): the
    first N samples of each prompt reranked by `rank_by`; per N the mean of each `report` column over the picks,
    the KL bound log N − (N−1)/N, distinct-2 and the base LM's perplexity of the picks."""
    key = np.array([rank_by(r) for r in records]).reshape(prompts, pool)
    out = {}
    for n in (n for n in sizes if n <= pool):
        picks = [records[i * pool + j] for i, j in enumerate(key[:, :n].argmax(axis=1))]
        out[str(n)] = {**{name: float(np.mean([column(r) for r in picks])) for name, column in report.items()},
                       "kl": math.log(n) - (n - 1) / n,
                       "distinct_2": distinct_n([_stripped(r, eos) for r in picks], 2),
                       "perplexity": float(np.mean([r.perplexity for r in picks]))}
    return out


def _stripped(record: Generation, eos: int | None) -> list[int]:
    """A response's token ids without a trailing EOS (what distinct-n counts)."""
    ids = record.token_ids
    return ids[:-1] if ids and ids[-1] == eos else ids
