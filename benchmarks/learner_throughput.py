"""Learner throughput: updates/s and samples/s of every registered learner at the agent's real scale.

Each learner is built with its default config (MARA's widths 1024, 256) for an LM of `--hidden-size`
and fed `--batch-size` decisions per update: a sampled replay batch for replay learners, a rollout of
whole episodes (`--episode-length` decisions each, two per prompt) for on-policy learners, which do all
their epochs and minibatches inside one update. samples/s counts decisions consumed per second.

    python benchmarks/learner_throughput.py --device cpu --repeats 3
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from tokenalign.buffers.batches import Transitions
from tokenalign.learners import learner_names, make_learner


def synthetic_batch(*, rows: int, hidden_size: int, episode_length: int, seed: int) -> Transitions:
    """`rows` decisions forming whole episodes of `episode_length`, two episodes per prompt."""
    if rows % episode_length:
        raise ValueError(f"--batch-size {rows} must be a multiple of --episode-length {episode_length}")
    gen = torch.Generator().manual_seed(seed)
    episode = torch.arange(rows // episode_length).repeat_interleave(episode_length)
    done = (torch.arange(rows) % episode_length == episode_length - 1).float()
    state = torch.randn(rows, hidden_size, generator=gen)
    base_logit = torch.randn(rows, generator=gen)
    return Transitions(
        state=state,
        action=torch.randint(2, (rows,), generator=gen),
        reward=done * torch.randn(rows, generator=gen),
        cost=done * torch.rand(rows, generator=gen),
        next_state=torch.roll(state, -1, 0) * (1.0 - done).unsqueeze(-1),
        done=done,
        logp=torch.full((rows,), -0.6931),
        episode_id=episode,
        step=torch.arange(rows) % episode_length,
        prompt_id=episode // 2,
        policy_version=torch.zeros(rows, dtype=torch.long),
        base_logit=base_logit,
        next_base_logit=torch.roll(base_logit, -1, 0) * (1.0 - done),
        episode_decisions=torch.full((rows,), episode_length),
    )


def measure(name: str, batch: Transitions, *, state_size: int, device: str, warmup: int, repeats: int) -> dict:
    learner = make_learner(name, state_size=state_size, device=device)
    batch = batch.to(device)
    for _ in range(warmup):
        learner.update(batch)
    start = time.perf_counter()
    for _ in range(repeats):
        learner.update(batch)  # metrics are read back (one transfer), so each update has finished here
    seconds = (time.perf_counter() - start) / repeats
    return {
        "learner": name,
        "data_mode": learner.data_mode,
        "rows_per_update": len(batch),
        "seconds_per_update": seconds,
        "updates_per_s": 1.0 / seconds,
        "samples_per_s": len(batch) / seconds,
    }


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    return f"{cpu}, {os.cpu_count()} cores, torch threads: {torch.get_num_threads()}"


def markdown(report: dict) -> str:
    lines = [
        "# Learner throughput",
        "",
        f"`{report['command']}`",
        "",
        f"Device: {report['device']} ({report['device_name']}); torch {report['torch']}; "
        f"hidden {report['hidden_size']}, "
        f"batch {report['batch_size']} decisions per update, default configs (widths 1024, 256); "
        "1-minute load average {:.1f} at start, {:.1f} at end.".format(*report["load_average_1min"]),
        "",
        "| learner | data mode | s / update | updates / s | samples / s |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for row in report["results"]:
        lines.append(
            f"| {row['learner']} | {row['data_mode']} | {row['seconds_per_update']:.3f} | {row['updates_per_s']:.2f} "
            f"| {row['samples_per_s']:.0f} |"
        )
    lines += ["", *report["notes"], ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden-size", type=int, default=4096, help="LM hidden size (Mistral-7B: 4096)")
    parser.add_argument("--batch-size", type=int, default=1024, help="decisions per update (MARA: 1024)")
    parser.add_argument("--episode-length", type=int, default=32, help="decisions per on-policy episode")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--learners", nargs="*", default=learner_names(), choices=learner_names())
    parser.add_argument("--warmup", type=int, default=1, help="untimed updates first")
    parser.add_argument("--repeats", type=int, default=3, help="timed updates per learner")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "learner_throughput")
    parser.add_argument("--note", action="append", default=[], help="a line for the results' notes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    load = os.getloadavg()
    batch = synthetic_batch(
        rows=args.batch_size, hidden_size=args.hidden_size, episode_length=args.episode_length, seed=0
    )
    results = []
    for name in args.learners:
        results.append(measure(name, batch, state_size=args.hidden_size, device=args.device,
                               warmup=args.warmup, repeats=args.repeats))
        print(json.dumps(results[-1]), flush=True)
    notes = [
        "One update: SAC takes one gradient step on a sampled batch; PPO and PPO-Lagrangian consume the rollout "
        "in 4 epochs x 4 minibatches; RLOO-Lagrangian takes one gradient step. samples/s = decisions consumed / s.",
        *args.note,
    ]
    if not torch.cuda.is_available():
        notes.append("No GPU was available to this run, so only CPU numbers are reported.")
    report = {
        "command": shlex.join(["python", "benchmarks/learner_throughput.py", *sys.argv[1:]]),
        "device": args.device,
        "device_name": device_name(args.device),
        "torch": torch.__version__,
        "hidden_size": args.hidden_size,
        "batch_size": args.batch_size,
        "episode_length": args.episode_length,
        "results": results,
        "load_average_1min": [load[0], os.getloadavg()[0]],
        "notes": notes,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))


if __name__ == "__main__":
    main()
