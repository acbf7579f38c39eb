"""The driver of a training run: it orchestrates, logs and checkpoints; it never touches episode data.

    run dir  runs/<name>-<time>/: config.yaml, metrics.jsonl, wandb/, checkpoints/, generations.jsonl,
             summary.json, report.md, reward.png, cost.png, buffer/ (embedded Redis data)

Asynchronous by default (replay learners): every rollout actor always has one `collect` in flight and the
learner one `train`; the learner gets `update_time` gradient steps per collected episode (MARA) and the
buffer's rate limiter keeps the two in balance. On-policy learners run synchronous rounds: all actors
collect, the learner updates on those episodes, publishes, repeat. Pair learners (DPO) have neither rollout
actors nor a buffer: the learner actor trains on the run's preference pairs and also evaluates.

Faults: a rollout actor that dies is restarted by Ray (rollout.max_restarts) and its batch is handed out
again; what it had written stays in the buffer. SIGINT / SIGTERM end the loop, write a final checkpoint
and shut everything down. Every wait on a remote call has a timeout.
"""
from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import ray
import yaml
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError
from ray.util.placement_group import remove_placement_group
from transformers import AutoConfig

from tokenalign.actors.learner_actor import LearnerActor
from tokenalign.actors.rollout_actor import RolloutActor
from tokenalign.actors.weights import WeightStore
from tokenalign.buffers.errors import ShardUnavailableError
from tokenalign.buffers.schema import RecordLayout
from tokenalign.buffers.spec import launch_buffer
from tokenalign.cluster import ray_cluster
from tokenalign.cluster.watchdog import DriverWatchdog
from tokenalign.checkpoints import Checkpoint, read_newest, write_checkpoint
from tokenalign.config import (
    ConfigError, TrainConfig, apply_override, from_dict, save_config, without_secrets, yaml_problem,
)
from tokenalign.data import load_prompts
from tokenalign.learners.registry import learner_class, make_config
from tokenalign.lm import resolve_lm_path
from tokenalign.objectives import make_objective
from tokenalign.preflight import preflight
from tokenalign.run_lock import RunLock

log = logging.getLogger(__name__)

RESUMABLE = ("objective.", "run.total_episodes", "run.total_decisions", "run.max_minutes", "run.eval_prompts")
"""Config keys a resumed run may change: what it optimises and how long it goes on."""


@contextlib.contextmanager
def sigint_ignored() -> Iterator[None]:
    """SIGINT ignored meanwhile: processes started in the block inherit the ignore."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass
class Progress:
    """Counters and the data cursor: what a checkpoint restores besides the learner."""

    episodes: int = 0
    decisions: int = 0
    updates: int = 0
    prompt_cursor: int = 0
    epoch: int = 0
    elapsed_s: float = 0.0
    actor_restarts: int = 0
    shard_restarts: int = 0
    last_checkpoint_updates: int = -1
    rollout: dict[str, float] = field(default_factory=dict)
    learner: dict[str, float] = field(default_factory=dict)


class Trainer:
    """One training run; `run()` returns the summary."""

    def __init__(self, *, config: TrainConfig, run_dir: Path, resume_from: Checkpoint | None = None) -> None:
        """`resume_from`: the checkpoint a resumed run restores (None: a new run)."""
        self.config = config
        self.run_dir = run_dir
        self.resume_from = resume_from
        self.progress = Progress()
        self._stop_reason: str | None = None
        self._fleet = None
        self._started_ray = False
        self._watchdog: DriverWatchdog | None = None
        self._keep_alive: threading.Event | None = None

    # ------------------------------------------------------------------------------------------- set-up
    @classmethod
    def new_run(cls, config: TrainConfig) -> "Trainer":
        """A new run directory for `config`, once `preflight` found nothing a run would fail on."""
        preflight(config, data_mode=learner_class(config.learner.name).contract(
            make_config(config.learner.name, config.learner.params)).data_mode)
        run_dir = Path(config.run.runs_dir) / f"{config.run.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir.mkdir(parents=True, exist_ok=False)
        save_config(run_dir / "config.yaml", config)
        return cls(config=config, run_dir=run_dir)

    @classmethod
    def from_run_dir(cls, run_dir: Path, overrides: list[str] | tuple[str, ...] = ()) -> "Trainer":
        """Resume the run in `run_dir` from its last checkpoint, with its saved config.

        `overrides` of the objective (`objective.name=...`, `objective.params.*`) or of the run's length
        relabel the stored records from then on: the data stays, the rewards are recomputed from it.
        """
        if not (run_dir / "config.yaml").is_file():
            raise FileNotFoundError(f"{run_dir} is not a tokenalign run directory (no config.yaml); pass runs/<name>-<time>")
        if not any((run_dir / "checkpoints").glob("step-*")):
            raise FileNotFoundError(f"{run_dir} has no checkpoint yet (no checkpoints/step-*); start a new run instead")
        try:
            data = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            why = yaml_problem(err) if isinstance(err, yaml.YAMLError) else f"{type(err).__name__}: {err}"
            raise ConfigError(f"{run_dir / 'config.yaml'} cannot be read ({why}); the run's config is needed to resume "
                              "it: restore the file") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{run_dir / 'config.yaml'} is not a mapping of config sections; restore the file")
        for override in overrides:
            if not override.startswith(RESUMABLE):
                raise ValueError(f"override {override!r} cannot change a run being resumed; only {', '.join(RESUMABLE)} "
                                 "keys can (the LM, data, reward and learner shape the stored records and checkpoints)")
            apply_override(data, override)
        config = from_dict(TrainConfig, data)
        checkpoint = read_newest(run_dir / "checkpoints")  # before anything starts: the run may not be resumable
        if overrides:
            save_config(run_dir / "config.yaml", config)
        return cls(config=config, run_dir=run_dir, resume_from=checkpoint)

    def _resources(self) -> ray_cluster.ResourceRequest:
        r = self.config.rollout
        if self.data_mode == "pairs":  # no rollouts: the learner actor alone, with its own copy of the LM
            return ray_cluster.ResourceRequest(num_actors=0, gpus_per_actor=0.0, cpus_per_actor=0.0,
                                               learner_gpus=self.config.learner.num_gpus)
        return ray_cluster.ResourceRequest(num_actors=r.num_actors, gpus_per_actor=r.gpus_per_actor,
                                           cpus_per_actor=r.cpus_per_actor, learner_gpus=self.config.learner.num_gpus,
                                           reward_service_gpus=r.reward_service_gpus)

    def _start(self) -> None:
        cfg = self.config
        self.contract = learner_class(cfg.learner.name).contract(make_config(cfg.learner.name, cfg.learner.params))
        self.data_mode = self.contract.data_mode
        request = self._resources()
        self._started_ray = ray_cluster.connect(address=cfg.run.ray_address, num_cpus=ray_cluster.local_cpus_for(request))
        ray_cluster.check_resources(request)
        hidden_size = int(AutoConfig.from_pretrained(resolve_lm_path(cfg.lm.path), local_files_only=True).hidden_size)
        objective = make_objective(cfg.objective, reward=cfg.reward, shaping=cfg.shaping, gamma=self.contract.gamma,
                                   signals=self.contract.signals)
        layout = RecordLayout(hidden_size=hidden_size, scorers=tuple(s.resolved_name for s in cfg.reward.scorers),
                              preference_dim=objective.preference_dim)
        self.train_prompts = load_prompts(cfg.data.train, prompt_field=cfg.data.prompt_field, seed=cfg.data.seed)
        self.buffer_spec = None
        if self.data_mode != "pairs":
            self.buffer_spec, self._fleet = launch_buffer(cfg.buffer, layout=layout, data_mode=self.data_mode,
                                                          run_dir=self.run_dir, on_ray=not self._started_ray)
            if self._fleet is not None:  # a dead embedded shard restarts from its append-only file and rejoins
                self._keep_alive = self._fleet.keep_alive(on_restart=self._shard_restarted)
        self.weights = WeightStore.remote()
        self.learner = LearnerActor.options(num_gpus=cfg.learner.num_gpus, num_cpus=1).remote(
            config=cfg, layout=layout, weights=self.weights, buffer_spec=self.buffer_spec)
        if self.resume_from is not None:
            self._restore()
        self._call(self.learner.publish.remote())
        self.reward_service = None
        self.actors: list[Any] = []
        if self.data_mode == "pairs":
            return
        if cfg.rollout.reward_service_gpus > 0:
            from tokenalign.actors.reward_service import RewardService

            self.reward_service = RewardService.options(num_gpus=cfg.rollout.reward_service_gpus).remote(config=cfg.reward)
        self.bundles = ray_cluster.reserve_rollout_bundles(
            num_actors=cfg.rollout.num_actors, gpus_per_actor=cfg.rollout.gpus_per_actor,
            cpus_per_actor=cfg.rollout.cpus_per_actor, strategy=cfg.rollout.placement_strategy,
            timeout_s=cfg.run.placement_timeout_s)
        self.actors = [
            RolloutActor.options(**ray_cluster.bundle_options(self.bundles, i, gpus=cfg.rollout.gpus_per_actor,
                                                              cpus=cfg.rollout.cpus_per_actor),
                                 max_restarts=cfg.rollout.max_restarts).remote(
                index=i, config=cfg, buffer_spec=self.buffer_spec, weights=self.weights, objective=objective,
                reward_service=self.reward_service)
            for i in range(cfg.rollout.num_actors)
        ]
        self.actor_info = [self._call(a.info.remote()) for a in self.actors]

    def _call(self, ref: Any) -> Any:
        try:
            return ray.get(ref, timeout=self.config.run.remote_timeout_s)
        except GetTimeoutError as err:
            raise TimeoutError(f"a remote call took longer than run.remote_timeout_s={self.config.run.remote_timeout_s:g}s; "
                               "raise it for slow models, or check the actors' logs") from err

    # --------------------------------------------------------------------------------------------- data
    def _next_prompts(self) -> list[int]:
        """The next batch of training-prompt indices, each repeated samples_per_prompt times; shuffled per epoch."""
        k = self.contract.group_size
        distinct = max(1, self.config.rollout.episodes_per_batch // k)
        order = np.random.default_rng(self.config.run.seed + self.progress.epoch).permutation(len(self.train_prompts))
        picked = []
        for _ in range(distinct):
            if self.progress.prompt_cursor >= len(order):
                self.progress.epoch += 1
                self.progress.prompt_cursor = 0
                order = np.random.default_rng(self.config.run.seed + self.progress.epoch).permutation(len(self.train_prompts))
            picked.append(int(order[self.progress.prompt_cursor]))
            self.progress.prompt_cursor += 1
        return [i for i in picked for _ in range(k)]

    # --------------------------------------------------------------------------------------------- loop
    def run(self) -> dict[str, Any]:
        import wandb
        from tqdm import tqdm

        with RunLock(self.run_dir):
            previous = self._catch_signals()  # from the start: a Ctrl-C while Ray starts stops the run, checkpointed
            try:
                self._start()
                self._catch_signals()  # again: ray.init installs a SIGTERM handler that would abort the driver unsaved
                if self._started_ray and DriverWatchdog.applies():
                    self._watchdog = DriverWatchdog()
                with sigint_ignored():  # wandb's service inherits the ignore: a Ctrl-C to the group spares it
                    self.wandb = wandb.init(project="tokenalign", name=self.run_dir.name, dir=str(self.run_dir),
                                            mode=self.config.run.wandb_mode, config=without_secrets(self.config),
                                            resume="allow", id=self.run_dir.name.replace(":", "-"))
                self.metrics_file = (self.run_dir / "metrics.jsonl").open("a")
                self.bar = tqdm(total=self.config.run.total_episodes, initial=self.progress.episodes, unit="ep",
                                desc="train", dynamic_ncols=True)
                self._t0 = time.monotonic() - self.progress.elapsed_s
                if self.data_mode == "replay":
                    self._loop_async()
                elif self.data_mode == "pairs":
                    self._loop_pairs()
                else:
                    self._loop_sync()
                self.bar.close()
                self.checkpoint()
                return self._finish()
            except ShardUnavailableError as err:
                # A shard that stays down (an external one; an embedded one restarts itself): stop in order.
                ckpt = self.checkpoint()
                raise ShardUnavailableError(
                    f"the replay buffer stayed unreachable ({str(err).split(';')[0]}); the run stopped with a "
                    f"checkpoint ({ckpt.name}): bring the shard back, then `tokenalign train --resume {self.run_dir}`"
                ) from None
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
                self._shutdown()
                if self._watchdog is not None:
                    self._watchdog.disarm()

    def _catch_signals(self) -> dict[int, Any]:
        """SIGINT and SIGTERM stop the run after the calls in flight, with a checkpoint; returns the old handlers."""
        return {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._stop_reason = signal.Signals(signum).name
        log.warning("%s received: stopping after the calls in flight, then checkpointing", self._stop_reason)

    def _should_stop(self) -> bool:
        run = self.config.run
        if self._stop_reason:
            return True
        if self.progress.episodes >= run.total_episodes:
            return True
        if run.total_decisions is not None and self.progress.decisions >= run.total_decisions:
            return True
        return run.max_minutes is not None and (time.monotonic() - self._t0) / 60 >= run.max_minutes

    def _loop_async(self) -> None:
        update_time = self.contract.updates_per_episode
        in_flight: dict[Any, tuple[str, int, list[int]]] = {}
        for i, actor in enumerate(self.actors):
            prompts = self._next_prompts()
            in_flight[actor.collect.remote(prompts)] = ("actor", i, prompts)
        budget = 0
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=self.config.run.remote_timeout_s)
            if not ready:
                raise TimeoutError(f"no rollout actor or learner answered within run.remote_timeout_s="
                                   f"{self.config.run.remote_timeout_s:g}s")
            kind, index, prompts = in_flight.pop(ready[0])
            if kind == "actor":
                stats = self._actor_result(ready[0], index)
                if stats is None:  # the actor died: Ray restarts it, its batch goes out again
                    in_flight[self.actors[index].collect.remote(prompts)] = ("actor", index, prompts)
                    continue
                budget += int(stats["episodes_written"]) * update_time
            else:
                self._learner_result(self._call(ready[0]))
            stopping = self._should_stop()
            if kind == "actor" and not stopping:
                nxt = self._next_prompts()
                in_flight[self.actors[index].collect.remote(nxt)] = ("actor", index, nxt)
            learner_busy = any(k == "learner" for k, _, _ in in_flight.values())
            if budget > 0 and not learner_busy and not stopping:
                chunk = min(budget, 50 * update_time)
                budget -= chunk
                in_flight[self.learner.train.remote(chunk)] = ("learner", -1, [])

    def _loop_sync(self) -> None:
        """Rounds: all actors collect with the current weights until the learner's rollout size is reached
        (groups of samples_per_prompt episodes of one prompt), then one update, which publishes new weights."""
        needed = self.contract.groups_per_update
        groups = 0
        while not self._should_stop():
            refs = [(i, actor.collect.remote(self._next_prompts())) for i, actor in enumerate(self.actors)]
            for i, ref in refs:
                stats = self._actor_result(ref, i)
                groups += int(stats["groups_written"]) if stats is not None else 0
            if groups >= needed:
                self._learner_result(self._call(self.learner.train_on_policy.remote()))
                # Surplus groups stay queued (one version behind, within buffer.max_policy_lag) and are
                # consumed first next time; counting only new ones never waits on groups the queue dropped.
                groups = 0

    def _loop_pairs(self) -> None:
        """Gradient steps on preference pairs, in calls of at most 50 updates (fewer with a smaller
        run.checkpoint_every) so that stop conditions and checkpoints come between them; an episode of the run's
        counters is one pair seen (run.total_episodes = epochs × pairs)."""
        per_call = max(1, min(self.config.run.checkpoint_every, 50))
        while not self._should_stop():
            metrics = self._call(self.learner.train_pairs.remote(per_call))
            self.progress.episodes += int(metrics["pairs_seen"])
            self.bar.update(int(metrics["pairs_seen"]))
            self._learner_result(metrics)

    def _actor_result(self, ref: Any, index: int) -> dict[str, float] | None:
        try:
            stats = self._call(ref)
        except (RayActorError, ActorUnavailableError) as err:
            self.progress.actor_restarts += 1
            log.warning("rollout actor %d died (%s); Ray restarts it and its batch is collected again", index, err)
            self._await_restart(index)
            return None
        p = self.progress
        p.episodes += int(stats["episodes"])
        p.decisions += int(stats["decisions"])
        p.rollout = stats
        self._log()
        self.bar.update(int(stats["episodes"]))
        return stats

    def _await_restart(self, index: int) -> None:
        """Block until Ray has restarted rollout actor `index`; a dead one (restarts used up) is an error."""
        deadline = time.monotonic() + self.config.run.remote_timeout_s
        while True:
            try:
                self._call(self.actors[index].info.remote())
                return
            except ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"rollout actor {index} did not come back within run.remote_timeout_s")
                time.sleep(0.5)
            except RayActorError as err:
                raise RuntimeError(f"rollout actor {index} died for good after rollout.max_restarts="
                                   f"{self.config.rollout.max_restarts} restarts: {err}") from err

    def _learner_result(self, metrics: dict[str, float]) -> None:
        self.progress.updates = int(metrics["num_updates"])
        self.progress.learner = metrics
        self._log()
        every = self.config.run.checkpoint_every
        if self.progress.updates // every > max(self.progress.last_checkpoint_updates, 0) // every:
            self.checkpoint()

    def _log(self) -> None:
        p = self.progress
        line = {"time_s": round(time.monotonic() - self._t0, 3), "episodes": p.episodes, "decisions": p.decisions,
                "updates": p.updates, "actor_restarts": p.actor_restarts,
                **{f"rollout/{k}": v for k, v in p.rollout.items()}, **{f"learner/{k}": v for k, v in p.learner.items()}}
        self.metrics_file.write(json.dumps(line) + "\n")
        self.metrics_file.flush()
        self.wandb.log(line, step=p.episodes)
        self.bar.set_postfix(updates=p.updates, reward=f"{p.rollout.get('reward', float('nan')):.3f}",
                             cost=f"{p.rollout.get('cost', float('nan')):.3f}", refresh=False)

    # ---------------------------------------------------------------------------------------- checkpoint
    def checkpoint(self) -> Path:
        """Write checkpoints/step-<updates>/ from the state the learner hands over (`checkpoints.py`)."""
        p = self.progress
        p.elapsed_s = time.monotonic() - self._t0
        p.last_checkpoint_updates = p.updates
        state, policy = self._call([self.learner.state.remote(), self.learner.policy_state.remote()])
        return write_checkpoint(self.run_dir / "checkpoints", step=p.updates, learner=state, policy=policy,
                                progress=vars(p))

    def _restore(self) -> None:
        ckpt = self.resume_from
        self._call(self.learner.load_state.remote(ckpt.learner))
        self.progress = Progress(**ckpt.progress)
        self._truncate_metrics()
        log.info("resumed %s from %s: %d episodes, %d updates", self.run_dir, ckpt.path.name, self.progress.episodes,
                 self.progress.updates)

    def _truncate_metrics(self) -> None:
        """Drop metrics lines written after the checkpoint: the resumed run writes them again, so every count in
        metrics.jsonl stays monotone and nothing is counted twice."""
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return
        kept = [line for line in path.read_text().splitlines(keepends=True)
                if json.loads(line).get("episodes", 0) <= self.progress.episodes]
        path.write_text("".join(kept))

    # ------------------------------------------------------------------------------------------- finish
    def _finish(self) -> dict[str, Any]:
        from tokenalign.eval.report import write_report

        cfg = self.config
        decoder = self.actors[0] if self.actors else self.learner  # a pair learner's run has no rollout actor
        samples = self._call(decoder.sample_generations.remote(list(range(min(8, len(self.train_prompts))))))
        (self.run_dir / "generations.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
        summary: dict[str, Any] = {}
        if cfg.run.eval_prompts > 0:
            summary = self._call(decoder.evaluate.remote(num_prompts=cfg.run.eval_prompts, best_of=4, seed=cfg.run.seed))
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        training = {"episodes": self.progress.episodes, "decisions": self.progress.decisions,
                    "updates": self.progress.updates, "minutes": round(self.progress.elapsed_s / 60, 2),
                    "actor_restarts": self.progress.actor_restarts, "shard_restarts": self.progress.shard_restarts,
                    "stopped_by": self._stop_reason or "budget",
                    "buffer": self._call(self.learner.buffer_stats.remote())}
        (self.run_dir / "training.json").write_text(json.dumps(training, indent=2))
        self.metrics_file.close()
        write_report(self.run_dir)
        self.wandb.summary.update({f"eval/{mode}/{k}": v["mean"] for mode, s in summary.items() if isinstance(s, dict)
                                   for k, v in s.items() if isinstance(v, dict) and "mean" in v})
        self.wandb.finish()
        return summary

    def _shard_restarted(self, index: int) -> None:
        self.progress.shard_restarts += 1
        log.warning("buffer shard %d died; restarted it from its append-only file (writers retried meanwhile, "
                    "the learner sampled the other shards)", index)

    def _shutdown(self) -> None:
        """Stop what this run started, so a Ray cluster can host the next run (or a test session many)."""
        if self._keep_alive is not None:
            self._keep_alive.set()  # before the fleet stops: a stopped server is not a dead one
        for name in ("actors", "learner", "weights", "reward_service"):
            handles = getattr(self, name, None)
            for handle in handles if isinstance(handles, list) else [handles]:
                if handle is not None:
                    ray.kill(handle, no_restart=True)
        if getattr(self, "bundles", None) is not None:
            remove_placement_group(self.bundles)
        if self._fleet is not None:
            self._fleet.stop()
        if self._started_ray:
            ray.shutdown()
