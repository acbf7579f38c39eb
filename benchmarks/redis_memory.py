"""Redis memory under the demo's write pattern: the server's own count of what it holds (used_memory) against its
RSS, for one embedded shard of the demo's capacity, written and sampled as fast as one process can.

    python benchmarks/redis_memory.py --minutes 6 --out benchmarks/results

The demo's buffer is capacity-bounded, so what Redis holds stays flat once the shard is full; its RSS also counts
what the allocator keeps after freeing multi-megabyte chunk values (fragmentation), which is what a chaos leak test
(`benchmarks/chaos.py --kinds none`) sees grow. Writes are batches of 8 episodes of 200–700 rows with the demo's
context-state size (2H + 2 = 514 float16), each followed by a draw of 4 whole episodes (the soft-Bellman learner's).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from tokenalign.buffers.config import BufferConfig
from tokenalign.buffers.layout import RecordLayout, make_record_batch
from tokenalign.buffers.redis_client import connect
from tokenalign.buffers.spec import BufferSpec
from tokenalign.cluster.redis_fleet import RedisFleet

STATE_SIZE = 514
"""The demo's context-state size on the bundled LM (2 × 256 + 2)."""
LAYOUT = RecordLayout(state_size=STATE_SIZE, scorers=("vader", "profanity"))


def episodes(rng: np.random.Generator, first: int, count: int = 8):
    """`count` episodes of 200–700 rows with random states (the other columns are not what is measured)."""
    lengths = rng.integers(200, 700, count)
    episode = np.repeat(np.arange(first, first + count), lengths)
    n = len(episode)
    step = np.concatenate([np.arange(k) for k in lengths])
    zeros = np.zeros(n)
    return make_record_batch(
        layout=LAYOUT, episode_id=episode, step=step, state=rng.standard_normal((n, STATE_SIZE)).astype(np.float16),
        action=step % 2, done=np.concatenate([np.arange(k) == k - 1 for k in lengths]), logp=zeros - 0.5,
        policy_version=zeros, prompt_id=episode, rank=step % 3, emit=step % 2 == 1, base_logit=zeros,
        next_base_logit=zeros, log_ratio=zeros, decision_kl=zeros, episode_decisions=np.repeat(lengths, lengths),
        token_reward=zeros, mara_kl_penalty=zeros, accepts_to_end=zeros, response_tokens=np.repeat(lengths, lengths),
        scores=np.zeros((n, 2)), baseline_scores=np.zeros((n, 2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=6.0)
    parser.add_argument("--capacity", type=int, default=100_000, help="one shard's capacity (the demo's: 200,000 / 2)")
    parser.add_argument("--every-s", type=float, default=15.0)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    samples: list[dict[str, float]] = []
    with RedisFleet.start(num_servers=1, run_dir=Path("/tmp/tokenalign-redis-memory")) as fleet:
        config = BufferConfig(backend="redis", num_shards=1, capacity=args.capacity, redis_urls=fleet.urls[:1],
                              namespace="memory", min_size_to_sample=1, seed=0)
        buffer = BufferSpec("replay", LAYOUT, config, tuple(fleet.urls[:1]), fleet.password).connect()
        client = connect(fleet.urls[0], password=fleet.password)
        start, written, due = time.monotonic(), 0, 0.0
        while (now := time.monotonic() - start) < args.minutes * 60:
            buffer.add(episodes(rng, written))
            written += 8
            buffer.sample_episodes(4)
            if now >= due:
                info = client.info("memory")
                samples.append({"t": round(now, 1), "episodes": written, "used_mb": round(info["used_memory"] / 2**20, 1),
                                "rss_mb": round(info["used_memory_rss"] / 2**20, 1)})
                print(samples[-1], flush=True)
                due += args.every_s
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/redis_memory.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items())
    (out / "redis_memory.json").write_text(json.dumps({"command": command, "samples": samples}, indent=1))
    half = [s for s in samples if s["t"] >= samples[-1]["t"] / 2]
    lines = ["# Redis memory under the demo's write pattern", "", f"`{command}` — {written} episodes written "
             f"({written / (samples[-1]['t'] / 60):.0f} a minute; the demo writes ~1,250), one shard of capacity "
             f"{args.capacity}.", "", "| t (s) | episodes | used_memory (MB) | RSS (MB) |", "|---:|---:|---:|---:|"]
    lines += [f"| {s['t']} | {s['episodes']} | {s['used_mb']} | {s['rss_mb']} |" for s in samples]
    lines += ["", f"Second half: used_memory {min(s['used_mb'] for s in half)}–{max(s['used_mb'] for s in half)} MB, "
              f"RSS {min(s['rss_mb'] for s in half)}–{max(s['rss_mb'] for s in half)} MB."]
    (out / "redis_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
