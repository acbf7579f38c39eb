"""Chaos: the demo run under a seeded random schedule of faults, then a check of what must hold afterwards.

    python benchmarks/chaos.py                      # 30 minutes of training time, a fault every 1–3 minutes
    python benchmarks/chaos.py --minutes 6 --gap 30 60 --out /tmp/chaos   # a short one
    python benchmarks/chaos.py --kinds none --out /tmp/leak                # 30 minutes, no fault: a leak test
    python benchmarks/chaos.py --minutes 3 --gap 20 35 --max-faults 5 ...  # CI's: one fault of each kind (.ci/run)

Every gap the schedule does one of five faults (kinds in a shuffled rotation, so each comes up alike):
SIGKILL a rollout actor (Ray restarts it), SIGKILL the learner actor (the run stops in one line; resumed),
SIGKILL one embedded Redis shard (the fleet restarts it from its append-only file), SIGKILL the driver (then
`tokenalign train --resume`), SIGINT to the driver's whole process group (a final checkpoint; then resumed).
A monitor samples every process of the run (RSS), the run directory's size and its checkpoints.

Afterwards it checks: the run finished with a summary; it stopped only where a fault stops it (a rollout actor or
Redis shard killed must not stop the driver); the driver's counters are monotone in metrics.jsonl and
agree with training.json; every decision the driver counted is among the transitions the buffer inserted (the
excess is what actors wrote after the last checkpoint before a driver or learner death: durable in Redis, which
fsyncs every write, but not in the driver's counters, which are durable at checkpoints); the policy version
(learner updates) never went backwards within a driver's life and resumed from a checkpoint's; no process or
redis-server of the run is left; RSS per process kind flat after warm-up (the slope is reported; it is checked,
growth under FLAT_GROWTH of the RSS, over the longest driver life if it ran WARM_UP_S + FLAT_MIN_S, which a run with faults
every few minutes never has); at most run.keep_checkpoints + 1 checkpoints on disk. Results: <out>/chaos.json and
chaos.md; the exit status is 1 when a check fails.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

KINDS = ("rollout_actor", "learner_actor", "redis_shard", "driver_sigkill", "group_sigint")
WARM_UP_S = 300.0
"""A driver life's first five minutes are warm-up: Ray's workers start, the buffer and the learner's mirror fill."""
FLAT_GROWTH = 0.10
"""RSS counts as flat when the fitted growth over a life after warm-up is under this share of its mean RSS there."""
FLAT_MIN_S = 600.0
"""The flatness check needs this long after warm-up: over a shorter stretch a slope says little."""
BIN = Path(sys.executable).parent / "tokenalign"


def processes() -> dict[int, tuple[str, str]]:
    """pid → (command line, cwd) of every process this user can read."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            found[int(entry.name)] = (cmd, cwd)
    return found


def kind_of(cmd: str, cwd: str, run_dir: Path | None) -> str | None:
    """Which part of a run a process is (None: not one)."""
    if "ray::RolloutActor" in cmd:
        return "rollout_actor"
    if "ray::LearnerActor" in cmd:
        return "learner_actor"
    if "redis-server" in cmd and run_dir is not None and cwd.startswith(str(run_dir)):
        return "redis_shard"
    if "tokenalign" in cmd and " train" in cmd and "chaos.py" not in cmd:
        return "driver"
    if "ray::" in cmd or "raylet" in cmd or "gcs_server" in cmd or "ray/_private" in cmd or "ray/dashboard" in cmd:
        return "ray"
    return None


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20 if path.exists() else 0.0


class Chaos:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.runs = Path(args.runs_dir).resolve()
        self.run_dir: Path | None = None
        self.driver: subprocess.Popen | None = None
        self.events: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []
        self.t0 = time.monotonic()
        self.exit_codes: list[int] = []
        self._stop = threading.Event()
        self.kinds = tuple(args.kinds)

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 1)

    def log(self, what: str, **extra: Any) -> None:
        self.events.append({"t": self.now(), "what": what, **extra})
        print(f"[{self.now():7.1f}s] {what} {extra if extra else ''}", flush=True)

    def start(self, resume: bool) -> None:
        argv = [str(BIN), "train", "--resume", str(self.run_dir)] if resume else [str(BIN), "train", *self.overrides()]
        self.driver = subprocess.Popen(argv, start_new_session=True, stdout=subprocess.DEVNULL,
                                       stderr=open(self.runs / "driver.log", "a"))
        self.log("resume" if resume else "start", pid=self.driver.pid)
        while self.run_dir is None:
            found = sorted(self.runs.glob("chaos-*"))
            if found:
                self.run_dir = found[-1]
            time.sleep(0.5)

    def overrides(self) -> list[str]:
        a = self.args
        return [f"run.runs_dir={self.runs}", "run.name=chaos", f"run.max_minutes={a.minutes}",
                "run.total_episodes=1000000000", f"run.eval_prompts={a.eval_prompts}",
                f"run.checkpoint_every={a.checkpoint_every}", "run.wandb_mode=disabled",
                f"rollout.max_restarts={10 ** 6}"]

    def wait_driver(self) -> int:
        code = self.driver.wait()
        self.exit_codes.append(code)
        self.log("driver exited", code=code)
        return code

    def monitor(self) -> None:
        while not self._stop.wait(self.args.sample_s):
            by_kind: dict[str, float] = {}
            for pid, (cmd, cwd) in processes().items():
                kind = kind_of(cmd, cwd, self.run_dir)
                if kind is not None:
                    by_kind[kind] = by_kind.get(kind, 0.0) + rss_mb(pid)
            checkpoints = len(list((self.run_dir / "checkpoints").glob("step-*"))) if self.run_dir else 0
            self.samples.append({"t": self.now(), "rss_mb": by_kind, "checkpoints": checkpoints,
                                 "run_dir_mb": dir_mb(self.run_dir) if self.run_dir else 0.0,
                                 "driver_pid": self.driver.pid if self.driver else None})

    def fault(self, kind: str) -> None:
        if kind in ("rollout_actor", "learner_actor", "redis_shard"):
            deadline = time.monotonic() + 120  # a resumed run takes ~45 s to start its actors and servers
            while True:
                pids = [pid for pid, (cmd, cwd) in processes().items() if kind_of(cmd, cwd, self.run_dir) == kind]
                if pids or time.monotonic() > deadline or self.driver.poll() is not None:
                    break
                time.sleep(1)
            if not pids:
                self.log("fault skipped: no process", kind=kind)
                return
            pid = self.rng.choice(sorted(pids))
            os.kill(pid, signal.SIGKILL)
            self.log("fault", kind=kind, pid=pid)
            if kind == "learner_actor":  # the run stops in one line; resume it
                self.wait_driver()
                self.start(resume=True)
        elif kind == "driver_sigkill":
            os.kill(self.driver.pid, signal.SIGKILL)
            self.log("fault", kind=kind, pid=self.driver.pid)
            self.wait_driver()
            time.sleep(2)  # the watchdog ends Ray's leftovers
            self.start(resume=True)
        else:
            os.killpg(self.driver.pid, signal.SIGINT)
            self.log("fault", kind=kind, pgid=self.driver.pid)
            self.wait_driver()
            self.start(resume=True)

    def run(self) -> dict[str, Any]:
        self.runs.mkdir(parents=True, exist_ok=True)
        self.start(resume=False)
        threading.Thread(target=self.monitor, daemon=True).start()
        rotation: list[str] = []
        lo, hi = self.args.gap
        while True:
            faults = sum(e["what"] == "fault" for e in self.events)
            more = self.kinds and (self.args.max_faults is None or faults < self.args.max_faults)
            deadline = time.monotonic() + self.rng.uniform(lo, hi) if more else float("inf")
            while time.monotonic() < deadline and self.driver.poll() is None:
                time.sleep(0.5)
            if self.driver.poll() is not None:
                code = self.wait_driver()
                if code == 0 and (self.run_dir / "summary.json").is_file() and self._finished():
                    break
                self.log("unexpected stop", code=code)  # no fault of the schedule stops a run here
                self.start(resume=True)
                continue
            if not rotation:
                rotation = list(self.kinds)
                self.rng.shuffle(rotation)
            self.fault(rotation.pop())
        self._stop.set()
        time.sleep(3)
        raw = {"events": self.events, "samples": self.samples, "exit_codes": self.exit_codes, "run_dir": str(self.run_dir)}
        (self.runs / "chaos_raw.json").write_text(json.dumps(raw))  # kept whatever the check says
        return self.check()

    def _finished(self) -> bool:
        training = json.loads((self.run_dir / "training.json").read_text())
        return training["stopped_by"] == "budget"

    def check(self) -> dict[str, Any]:
        run_dir = self.run_dir
        training = json.loads((run_dir / "training.json").read_text())
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        episodes = [m["episodes"] for m in metrics]
        updates = [m["updates"] for m in metrics]
        buffer = training["buffer"]
        inserted = sum(v for k, v in buffer.items() if k.endswith("/inserted"))
        leftovers = {pid: cmd[:80] for pid, (cmd, cwd) in processes().items()
                     if kind_of(cmd, cwd, run_dir) is not None or str(run_dir) in cmd}
        faults = [e for e in self.events if e["what"] == "fault"]
        slopes, flat = self.rss_slopes()
        keep = yaml.safe_load((run_dir / "config.yaml").read_text())["run"]["keep_checkpoints"]
        checks = {
            "finished with a summary": (run_dir / "summary.json").is_file() and self.exit_codes[-1] == 0,
            "episodes and updates monotone in metrics.jsonl": episodes == sorted(episodes) and updates == sorted(updates),
            "training.json agrees with metrics.jsonl": bool(metrics) and training["episodes"] >= episodes[-1]
            and training["updates"] >= updates[-1],
            "every counted decision is in the buffer": inserted >= training["decisions"],
            "no process or redis-server of the run left": not leftovers,
            f"checkpoints on disk within retention ({keep} + the summary's)":
                max(s["checkpoints"] for s in self.samples) <= keep + 1,
            "no stop but the faults that stop a run": not any(e["what"] == "unexpected stop" for e in self.events),
            ("faults of every kind" if set(self.kinds) == set(KINDS) else f"faults of kinds {', '.join(self.kinds) or 'none'}"):
                {f["kind"] for f in faults} == set(self.kinds),
        }
        if flat:
            checks[f"RSS flat after warm-up (growth < {FLAT_GROWTH:.0%} over a life's last {flat['minutes']:.0f} min)"] = \
                all(v["growth"] < FLAT_GROWTH for v in flat["kinds"].values())
        return {
            "command": "python benchmarks/chaos.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
            "seed": self.args.seed, "minutes": self.args.minutes, "wall_minutes": round(self.now() / 60, 1),
            "faults": faults, "events": self.events, "exit_codes": self.exit_codes,
            "training": {k: v for k, v in training.items() if k != "buffer"}, "buffer_inserted": inserted,
            "uncounted_transitions": inserted - training["decisions"], "leftover_processes": leftovers,
            "rss_slope_mb_per_min": slopes, "flatness": flat, "peak_rss_mb": {k: round(max(x["rss_mb"].get(k, 0.0) for x in self.samples), 1)
                                                            for k in {k for x in self.samples for k in x["rss_mb"]}}, "peak_run_dir_mb": round(max(s["run_dir_mb"] for s in self.samples), 1),
            "checks": checks, "run_dir": str(run_dir),
        }

    def rss_slopes(self) -> tuple[dict[str, float], dict[str, Any]]:
        """Per process kind, the median over driver lives of the RSS slope (MB/min) after each life's first minute;
        and over the longest life, if it ran FLAT_MIN_S past WARM_UP_S, each kind's slope after warm-up and its
        fitted growth there as a share of its mean RSS (empty otherwise)."""
        slopes: dict[str, list[float]] = {}
        lives: dict[int, list[dict[str, Any]]] = {}
        for s in self.samples:
            lives.setdefault(s["driver_pid"], []).append(s)
        for life in lives.values():
            for kind, (slope, _) in fit_rss(life, life[0]["t"] + 60).items():
                slopes.setdefault(kind, []).append(slope)
        longest = max(lives.values(), key=lambda life: life[-1]["t"] - life[0]["t"], default=[])
        flat: dict[str, Any] = {}
        if longest and longest[-1]["t"] - longest[0]["t"] >= WARM_UP_S + FLAT_MIN_S:
            minutes = (longest[-1]["t"] - longest[0]["t"] - WARM_UP_S) / 60
            fits = fit_rss(longest, longest[0]["t"] + WARM_UP_S)
            flat = {"minutes": round(minutes, 1), "kinds": {
                kind: {"slope_mb_per_min": round(slope, 2), "mean_mb": round(mean, 1),
                       "growth": round(slope * minutes / mean, 4) if mean else 0.0}
                for kind, (slope, mean) in fits.items()}}
        return {k: round(float(np.median(v)), 2) for k, v in slopes.items()}, flat


def fit_rss(life: list[dict[str, Any]], start: float) -> dict[str, tuple[float, float]]:
    """Per process kind, the least-squares RSS slope (MB/min) and the mean RSS (MB) of a life's samples from `start`."""
    late = [s for s in life if s["t"] >= start]
    fits = {}
    for kind in {k for s in late for k in s["rss_mb"]}:
        points = [(s["t"], s["rss_mb"][kind]) for s in late if kind in s["rss_mb"]]
        if len(points) >= 8:
            t, mb = np.array(points).T
            fits[kind] = (float(np.polyfit(t / 60, mb, 1)[0]), float(mb.mean()))
    return fits


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Chaos: the demo run under {len(result['faults'])} faults", "",
             f"`{result['command']}` — {result['minutes']} minutes of training, {result['wall_minutes']} minutes of "
             f"wall clock; run directory {result['run_dir']}.", "", "| check | holds |", "|---|---|"]
    lines += [f"| {name} | {'yes' if ok else '**no**'} |" for name, ok in result["checks"].items()]
    t = result["training"]
    lines += ["", f"Counters: {t['episodes']} episodes, {t['decisions']} decisions, {t['updates']} updates; "
              f"actor restarts {t['actor_restarts']}, shard restarts {t['shard_restarts']}; the buffer inserted "
              f"{result['buffer_inserted']} transitions, {result['uncounted_transitions']} of them after the last "
              "checkpoint before a driver or learner death (kept and sampled, not in the driver's counts).",
              "", "RSS slope after warm-up (MB/min, median over driver lives): "
              + ", ".join(f"{k} {v:+.2f}" for k, v in sorted(result["rss_slope_mb_per_min"].items()))
              + "; peak RSS (MB): " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(result["peak_rss_mb"].items()))
              + f"; peak run directory {result['peak_run_dir_mb']} MB."]
    if result["flatness"]:
        flat = result["flatness"]
        lines += ["", f"RSS over the longest driver life after its {WARM_UP_S / 60:.0f}-minute warm-up ({flat['minutes']} min):",
                  "", "| process kind | mean RSS (MB) | slope (MB/min) | fitted growth / mean |", "|---|---:|---:|---:|"]
        lines += [f"| {k} | {v['mean_mb']} | {v['slope_mb_per_min']:+.2f} | {v['growth']:+.1%} |"
                  for k, v in sorted(flat["kinds"].items())]
    lines += ["", "| t (s) | fault |", "|---:|---|"]
    lines += [f"| {f['t']} | {f['kind']} |" for f in result["faults"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="training minutes (run.max_minutes)")
    parser.add_argument("--gap", type=float, nargs=2, default=(60.0, 180.0), help="seconds between faults, min max")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-faults", type=int, default=None, help="stop faulting after this many (default: no limit)")
    parser.add_argument("--kinds", type=kinds_arg, default=KINDS,
                        help=f"comma-separated faults to rotate through, of {', '.join(KINDS)}; none: a leak test")
    parser.add_argument("--eval-prompts", type=int, default=40)
    parser.add_argument("--checkpoint-every", type=int, default=200)
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--runs-dir", default="/tmp/tokenalign-chaos")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    result = Chaos(args).run()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "chaos.json").write_text(json.dumps(result, indent=2))
    (out / "chaos.md").write_text(markdown(result))
    print(markdown(result))
    sys.exit(0 if all(result["checks"].values()) else 1)


def kinds_arg(text: str) -> tuple[str, ...]:
    """--kinds: a comma-separated subset of KINDS, or none."""
    kinds = () if text.strip() == "none" else tuple(k.strip() for k in text.split(","))
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown fault kind(s) {unknown}: choose from {', '.join(KINDS)}, or none")
    return kinds


if __name__ == "__main__":
    main()
