"""Replay-buffer throughput and footprint, side by side in one run, at MARA's state size and batch.

Compares the memory backend and the Redis backend (1 and 2 embedded shards) with the MARA-style baseline
(a deque of [state_list, action, reward, next_state_list, done]; random.sample then np.array), with the
raw rate of fetching the same state bytes from the same Redis by pipelined MGET of per-row keys, and with
Redis read row by row (buffer.mirror_gib=0) instead of from the sampler's mirror of the stored states (the
default, timed in steady state: the mirror holds every chunk; how fast a cold one fills is its own column).

The whole measurement runs in several fresh processes one after another and the table gives the median
run of each figure: where a process's allocator happens to place the large fresh tensors of the float32
rows swings a single run's figures by up to 2x, and the ratio column shows that range.

    .venv/bin/python benchmarks/buffer_throughput.py
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import redis
import torch

from tokenalign.buffers.config import BufferConfig
from tokenalign.buffers.layout import RecordLayout, make_record_batch
from tokenalign.buffers.spec import BufferSpec
from tokenalign.cluster.buffer_servers import launch_buffer

MGET_KEYS_PER_COMMAND = 256
ROWS = (
    "mara_baseline", "memory", "redis_1_shard", "redis_2_shards", "redis_1_shard_unmirrored", "redis_raw_mget",
    "memory_float32", "redis_1_shard_float32", "float32_batch_floor",
)
TARGET_PER_S = 200_000  # issue 16: what a GPU learner on this MLP can take from the Redis feed


@dataclass
class Args:
    """Benchmark settings."""

    hidden_size: int = 4096  # MARA: Mistral-7B / Llama hidden state
    """State dimension."""
    batch_size: int = 1024  # MARA train script
    """Transitions per sample."""
    capacity: int = 16_384
    """Transitions stored in each backend (all are filled)."""
    episode_len: int = 256
    """Decisions per episode."""
    episodes_per_add: int = 4
    """Episodes per add() call, as a rollout actor writes a finished batch."""
    baseline_size: int = 2048
    """Transitions in the MARA-style deque (each costs ~262 KB, so it stays small; sampling cost depends on the batch)."""
    torch_threads: int = 1  # rollout.torch_threads's default, which the learner actor runs with too
    """Intra-op threads of the measuring process, as a learner actor sets them."""
    reps: int = 15
    """Timed sample calls per backend, taken round-robin across backends (the median is reported)."""
    processes: int = 3
    """Fresh processes the whole measurement runs in, one after another (the median run is reported)."""
    out_dir: str = "benchmarks/results"
    """Where buffer_throughput.json and .md go."""


def parse_args() -> Args:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in asdict(Args()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    return Args(**vars(parser.parse_args()))


def layout(args: Args) -> RecordLayout:
    """The records of a demo-like run: the LM's hidden size, a reward and a cost scorer."""
    return RecordLayout(state_size=args.hidden_size, scorers=("reward", "cost"))


def make_batches(args: Args, rng: np.random.Generator) -> list:
    rows = args.episode_len * args.episodes_per_add
    batches = []
    for start in range(0, args.capacity, rows):
        first_episode = start // args.episode_len
        episode_id = np.repeat(np.arange(first_episode, first_episode + args.episodes_per_add), args.episode_len)
        step = np.tile(np.arange(args.episode_len), args.episodes_per_add)
        done = step == args.episode_len - 1
        action = rng.integers(0, 2, rows)
        base_logit = rng.standard_normal(rows).astype(np.float32)
        batches.append(
            make_record_batch(
                layout=layout(args), episode_id=episode_id, step=step,
                state=rng.standard_normal((rows, args.hidden_size), dtype=np.float32), action=action, done=done,
                logp=np.full(rows, -0.5), policy_version=np.zeros(rows), prompt_id=episode_id, rank=step % 4,
                emit=action == 1, base_logit=base_logit, next_base_logit=np.where(done, 0, np.roll(base_logit, -1)),
                log_ratio=np.zeros(rows), decision_kl=np.zeros(rows), episode_decisions=np.full(rows, args.episode_len),
                accepts_to_end=np.zeros(rows), response_tokens=np.full(rows, args.episode_len),
                scores=rng.standard_normal((rows, 2)),
            )
        )
    return batches


def interleaved_medians(samplers: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Median seconds per call of each sampler, timed round-robin so that load from neighbours hits all alike."""
    for sample in samplers.values():
        for _ in range(3):  # warm-up: connections, script caches, and the allocator settling on the batch size
            sample()
    times: dict[str, list[float]] = {name: [] for name in samplers}
    for _ in range(reps):
        for name, sample in samplers.items():
            start = time.perf_counter()
            sample()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def fill_baseline(args: Args, rng: np.random.Generator) -> tuple[dict, Callable[[], object]]:
    """MARA's buffer: every state a Python list of floats, stored twice (state and next_state)."""
    buffer: deque = deque(maxlen=args.baseline_size)
    states = rng.standard_normal((args.episode_len + 1, args.hidden_size), dtype=np.float32)
    start = time.perf_counter()
    for t in range(args.baseline_size):
        i = t % args.episode_len
        buffer.append([states[i].tolist(), int(t % 2), 1.0, states[i + 1].tolist(), i == args.episode_len - 1])
    add_s = time.perf_counter() - start

    def sample() -> list[np.ndarray]:
        return [np.array(column) for column in zip(*random.sample(buffer, args.batch_size))]

    first = buffer[0]
    state_bytes = sys.getsizeof(first[0]) + sum(sys.getsizeof(x) for x in first[0])
    scalar_bytes = sum(sys.getsizeof(first[i]) for i in (1, 2, 4))
    bytes_per = sys.getsizeof(first) + 2 * state_bytes + scalar_bytes
    return {"add_per_s": args.baseline_size / add_s, "bytes_per_transition": bytes_per}, sample


def fill_buffer(args: Args, batches: list, *, backend: str, num_shards: int, run_dir: str, **overrides):
    """Add every batch to a fresh buffer (default settings but for `overrides`); (figures, sampler, spec, fleet)."""
    config = BufferConfig(
        backend=backend, num_shards=num_shards, capacity=args.capacity, min_size_to_sample=0, seed=0, **overrides
    )
    spec, fleet = launch_buffer(config, layout=layout(args), data_mode="replay", run_dir=run_dir)
    buffer = spec.connect()
    start = time.perf_counter()
    for batch in batches:
        buffer.add(batch)
    add_s = time.perf_counter() - start
    stats = buffer.stats()
    if backend == "memory":
        held = sum(stats[f"shard{i}/bytes"] for i in range(num_shards))
    else:
        held = sum(redis_key_bytes(url, spec.password, config.namespace) for url in spec.redis_urls)
    figures = {"add_per_s": stats["size"] / add_s, "bytes_per_transition": held / stats["size"]}
    return figures, lambda: buffer.sample(args.batch_size), spec, fleet


def redis_key_bytes(url: str, password: str | None, namespace: str) -> int:
    """Bytes the server spends on the buffer's keys (MEMORY USAGE: value, key and allocator rounding)."""
    client = redis.Redis.from_url(url, password=password)
    keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    held = sum(pipe.execute())
    client.close()
    return held


def second_reader(args: Args, spec: BufferSpec, **overrides) -> Callable[[], object]:
    """A second reader of the same Redis data with other reader settings (e.g. buffer.state_dtype=float32)."""
    buffer = replace(spec, config=replace(spec.config, **overrides)).connect()
    return lambda: buffer.sample(args.batch_size)


def mirror_fill_per_s(args: Args, spec: BufferSpec, readers: int = 3) -> float:
    """Transitions/s a fresh reader copies into its mirror (median of `readers`): its first sample reads every chunk."""
    rates = []
    for _ in range(readers):
        buffer = spec.connect()
        buffer.can_sample(1)  # index the chunks first, so that the copy (and one batch) is what is timed
        start = time.perf_counter()
        buffer.sample(args.batch_size)
        rates.append(args.capacity / (time.perf_counter() - start))
        buffer.close()
    return statistics.median(rates)


def float32_floor_sampler(args: Args, rng: np.random.Generator) -> Callable[[], object]:
    """What converting a batch on the host costs: fresh float32 state and next_state made from float16 rows."""
    rows = torch.from_numpy(rng.standard_normal((2, args.batch_size, args.hidden_size), dtype=np.float32).astype(np.float16))
    return lambda: (rows[0].float(), rows[1].float())


def raw_mget_sampler(args: Args, batches: list, spec) -> Callable[[], object]:
    """Per-row keys on the same server, fetched as state + successor keys by pipelined MGET: the wire's rate."""
    client = redis.Redis.from_url(spec.redis_urls[0], password=spec.password)
    states = np.concatenate([b.column("state").flatten().to_numpy() for b in batches]).reshape(-1, args.hidden_size)
    pipe = client.pipeline(transaction=False)
    for i, row in enumerate(states):
        pipe.set(f"raw:{i}", row.tobytes())
        if i % 512 == 511:
            pipe.execute()
    pipe.execute()
    rng = np.random.default_rng(0)

    def sample() -> list:
        rows = rng.integers(0, len(states) - 1, args.batch_size)
        keys = [f"raw:{r}" for r in np.concatenate([rows, rows + 1]).tolist()]
        p = client.pipeline(transaction=False)
        for i in range(0, len(keys), MGET_KEYS_PER_COMMAND):
            p.mget(keys[i : i + MGET_KEYS_PER_COMMAND])
        return p.execute()

    return sample


def ratios(results: dict) -> dict[str, float]:
    """Every target ratio of one run."""
    base = results["mara_baseline"]
    raw = results["redis_raw_mget"]["sample_per_s"]
    return {
        "redis_1_sample_vs_target_200k": results["redis_1_shard"]["sample_per_s"] / TARGET_PER_S,
        "redis_2_sample_vs_target_200k": results["redis_2_shards"]["sample_per_s"] / TARGET_PER_S,
        "memory_bytes_vs_baseline": base["bytes_per_transition"] / results["memory"]["bytes_per_transition"],
        "redis_bytes_vs_baseline": base["bytes_per_transition"] / results["redis_1_shard"]["bytes_per_transition"],
        "memory_sample_vs_baseline": results["memory"]["sample_per_s"] / base["sample_per_s"],
        "redis_1_sample_vs_baseline": results["redis_1_shard"]["sample_per_s"] / base["sample_per_s"],
        "redis_2_sample_vs_baseline": results["redis_2_shards"]["sample_per_s"] / base["sample_per_s"],
        "redis_1_sample_vs_raw_mget": results["redis_1_shard"]["sample_per_s"] / raw,
        "redis_1_unmirrored_sample_vs_raw_mget": results["redis_1_shard_unmirrored"]["sample_per_s"] / raw,
        "memory_float32_sample_vs_baseline": results["memory_float32"]["sample_per_s"] / base["sample_per_s"],
        "redis_1_float32_sample_vs_baseline": results["redis_1_shard_float32"]["sample_per_s"] / base["sample_per_s"],
        "redis_1_float32_sample_vs_raw_mget": results["redis_1_shard_float32"]["sample_per_s"] / raw,
    }


def median_run(runs: list[dict]) -> dict:
    """Each row's figures as the median over runs; ratios as the median, min and max of the runs' ratios."""
    results = {
        name: {key: statistics.median(run[name][key] for run in runs) for key in runs[0][name]} for name in ROWS
    }
    per_run = [ratios(run) for run in runs]
    results["ratios"] = {key: statistics.median(r[key] for r in per_run) for key in per_run[0]}
    results["ratio_ranges"] = {key: [min(r[key] for r in per_run), max(r[key] for r in per_run)] for key in per_run[0]}
    results["runs"] = runs
    return results


def write_results(args: Args, results: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "buffer_throughput.json").write_text(json.dumps({"args": asdict(args), **results}, indent=2) + "\n")
    lines = [
        "# Replay buffer throughput",
        "",
        f"State dim {args.hidden_size} (fp16 stored), batch {args.batch_size}, {args.capacity} transitions per backend, "
        f"episodes of {args.episode_len}; median of {args.reps} samples per backend, timed round-robin across "
        f"backends; each figure is the median of {args.processes} runs in fresh processes. Redis servers are "
        "embedded ones with appendfsync always (the default). Made by:",
        "",
        "    " + " ".join([".venv/bin/python", "benchmarks/buffer_throughput.py", *sys.argv[1:]]),
        "",
        f"Machine: {os.cpu_count()} CPUs shared with other jobs, {args.torch_threads} torch thread(s) as a learner actor "
        f"runs; 1-minute load average "
        f"{min(r['machine']['load_start'] for r in results['runs']):.1f} to "
        f"{max(r['machine']['load_end'] for r in results['runs']):.1f} over the runs.",
        "",
        "| backend | add transitions/s | sample transitions/s | mirror fill transitions/s | bytes / transition |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name in ROWS:
        row = results[name]
        add, fill, size = (
            f"{row[key]:,.0f}" if key in row else "–" for key in ("add_per_s", "mirror_fill_per_s", "bytes_per_transition")
        )
        lines.append(f"| {name} | {add} | {row['sample_per_s']:,.0f} | {fill} | {size} |")
    targets = {
        "redis_1_sample_vs_target_200k": 1, "redis_2_sample_vs_target_200k": 1,
        "memory_bytes_vs_baseline": 30, "redis_bytes_vs_baseline": 30, "memory_sample_vs_baseline": 50,
        "redis_1_sample_vs_baseline": 10, "redis_2_sample_vs_baseline": 10, "redis_1_sample_vs_raw_mget": 0.5,
        "redis_1_unmirrored_sample_vs_raw_mget": 0.5, "memory_float32_sample_vs_baseline": 50,
        "redis_1_float32_sample_vs_baseline": 10, "redis_1_float32_sample_vs_raw_mget": 0.5,
    }
    lines += [
        "",
        "Rows without a suffix use the default settings: states are handed over as stored, float16, and the learner",
        "converts them on its own device (half the bytes to build and to move to a GPU); a Redis sampler gathers from",
        "its mirror of the stored states (buffer.mirror_gib), which holds every chunk here: steady state. mirror fill:",
        "transitions/s a fresh reader copies into its mirror in its first sample (whole chunks, one contiguous GETRANGE",
        "each), the one read each inserted transition costs a sampler. redis_1_shard_unmirrored: the same data read",
        "row by row (buffer.mirror_gib=0, a two-row GETRANGE per transition). *_float32: the same data with",
        "buffer.state_dtype=float32, converted on the host. redis_raw_mget: the same bytes (each sampled state",
        "and its successor) fetched by pipelined MGET of per-row keys from the 1-shard server, as bytes, no tensors.",
        "float32_batch_floor: only making fresh float32 state and next_state tensors from float16 rows. The float32",
        "rows swing from run to run with where the allocator places each fresh 32 MB batch (fresh pages fault).",
        "",
        "| ratio | median | range over runs | target |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {k} | {v:.2f} | {results['ratio_ranges'][k][0]:.2f}–{results['ratio_ranges'][k][1]:.2f} | ≥ {targets[k]} |"
        for k, v in results["ratios"].items()
    ]
    (out_dir / "buffer_throughput.md").write_text("\n".join(lines) + "\n")


def measure(args: Args) -> dict:
    """One run of every row, side by side in this process."""
    torch.set_num_threads(args.torch_threads)
    load_start = os.getloadavg()[0]
    rng = np.random.default_rng(0)
    batches = make_batches(args, rng)
    results, samplers = {}, {}
    results["mara_baseline"], samplers["mara_baseline"] = fill_baseline(args, rng)
    results["memory"], samplers["memory"], _, _ = fill_buffer(args, batches, backend="memory", num_shards=1, run_dir="")
    results["memory_float32"], samplers["memory_float32"], _, _ = fill_buffer(
        args, batches, backend="memory", num_shards=1, run_dir="", state_dtype="float32"
    )
    results["float32_batch_floor"], samplers["float32_batch_floor"] = {}, float32_floor_sampler(args, rng)
    with tempfile.TemporaryDirectory() as run_dir:
        fleets = []
        try:
            for name, shards in (("redis_1_shard", 1), ("redis_2_shards", 2)):
                results[name], samplers[name], spec, fleet = fill_buffer(
                    args, batches, backend="redis", num_shards=shards, run_dir=f"{run_dir}/{name}"
                )
                fleets.append(fleet)
                if shards == 1:
                    results[name]["mirror_fill_per_s"] = mirror_fill_per_s(args, spec)
                    results["redis_raw_mget"], samplers["redis_raw_mget"] = {}, raw_mget_sampler(args, batches, spec)
                    results["redis_1_shard_unmirrored"] = {}
                    samplers["redis_1_shard_unmirrored"] = second_reader(args, spec, mirror_gib=0)
                    results["redis_1_shard_float32"] = {}
                    samplers["redis_1_shard_float32"] = second_reader(args, spec, state_dtype="float32")
            for name, seconds in interleaved_medians(samplers, args.reps).items():
                results[name]["sample_per_s"] = args.batch_size / seconds
        finally:
            for fleet in fleets:
                fleet.stop()
    results["machine"] = {"load_start": load_start, "load_end": os.getloadavg()[0]}
    return results


def main() -> None:
    args = parse_args()
    runs = []
    for _ in range(args.processes):
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            runs.append(pool.apply(measure, (args,)))
    write_results(args, median_run(runs), Path(args.out_dir))
    print((Path(args.out_dir) / "buffer_throughput.md").read_text())


if __name__ == "__main__":
    main()
