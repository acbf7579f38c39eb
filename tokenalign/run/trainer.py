"""The driver of a training run: it starts the run's processes, runs the training loop, logs, checkpoints,
evaluates and shuts down; it never touches episode data.

    trainer = Trainer.new_run(load_config(...))     # or Trainer.from_run_dir(run_dir, overrides) to resume
    summary = trainer.run()

The run directory (`run_dir.py`), the processes (`processes.py`) and the loops (`loops.py`) are their own
modules. SIGINT / SIGTERM end the loop after the calls in flight, write a final checkpoint and shut
everything down; a buffer shard that stays unreachable stops the run the same way.
"""
from __future__ import annotations

import contextlib
import json
import logging
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ray.exceptions import ActorUnavailableError, RayActorError

from tokenalign.buffers.errors import ShardUnavailableError
from tokenalign.cluster.watchdog import DriverWatchdog
from tokenalign.config import TrainConfig, without_secrets
from tokenalign.data.prompts import load_prompts
from tokenalign.run.checkpoints import Checkpoint, prune_checkpoints, write_checkpoint
from tokenalign.run.loops import Progress, TrainingLoop
from tokenalign.run.processes import RunProcesses
from tokenalign.run.run_dir import new_run_dir, resume_point, truncate_metrics
from tokenalign.run.run_lock import RunLock

log = logging.getLogger(__name__)


class LearnerDiedError(RuntimeError):
    """The learner actor (or the weight store) died: the run stopped; a resume continues from the newest checkpoint."""


@contextlib.contextmanager
def sigint_ignored() -> Iterator[None]:
    """SIGINT ignored meanwhile: processes started in the block inherit the ignore."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class Trainer:
    """One training run; `run()` returns the summary."""

    def __init__(self, *, config: TrainConfig, run_dir: Path, resume_from: Checkpoint | None = None) -> None:
        """`resume_from`: the checkpoint a resumed run restores (None: a new run)."""
        self.config = config
        self.run_dir = run_dir
        self.resume_from = resume_from
        self.progress = Progress()
        self.processes = RunProcesses(config)
        self._stop_reason: str | None = None
        self._watchdog: DriverWatchdog | None = None

    @classmethod
    def new_run(cls, config: TrainConfig) -> Trainer:
        """A new run directory for `config`, once `preflight` found nothing a run would fail on."""
        return cls(config=config, run_dir=new_run_dir(config))

    @classmethod
    def from_run_dir(cls, run_dir: Path, overrides: list[str] | tuple[str, ...] = ()) -> Trainer:
        """Resume the run in `run_dir` from its last checkpoint, with its saved config (and resumable `overrides`)."""
        config, checkpoint = resume_point(run_dir, overrides)
        return cls(config=config, run_dir=run_dir, resume_from=checkpoint)

    def _start(self) -> None:
        """Ray, the buffer and the learner; the checkpoint restored and published; then the rollout actors."""
        self.processes.start_ray()
        self.train_prompts = load_prompts(self.config.data.train, prompt_field=self.config.data.prompt_field,
                                          seed=self.config.data.seed)
        self.processes.start_learner(run_dir=self.run_dir, on_shard_restart=self._shard_restarted)
        if self.resume_from is not None:
            self._restore()
        self.processes.call(self.processes.learner.publish.remote())
        self.processes.start_rollouts()

    def run(self) -> dict[str, Any]:
        import wandb
        from tqdm import tqdm

        with RunLock(self.run_dir):
            previous = self._catch_signals()  # from the start: a Ctrl-C while Ray starts stops the run, checkpointed
            try:
                self._start()
                self._catch_signals()  # again: ray.init installs a SIGTERM handler that would abort the driver unsaved
                if self.processes.started_ray and DriverWatchdog.applies():
                    self._watchdog = DriverWatchdog()
                with sigint_ignored():  # wandb's service inherits the ignore: a Ctrl-C to the group spares it
                    self.wandb = wandb.init(project="tokenalign", name=self.run_dir.name, dir=str(self.run_dir),
                                            mode=self.config.run.wandb_mode, config=without_secrets(self.config),
                                            resume="allow", id=self.run_dir.name.replace(":", "-"))
                self.metrics_file = (self.run_dir / "metrics.jsonl").open("a")
                self.bar = tqdm(total=self.config.run.total_episodes, initial=self.progress.episodes, unit="ep",
                                desc="train", dynamic_ncols=True)
                self._t0 = time.monotonic() - self.progress.elapsed_s
                TrainingLoop(config=self.config, processes=self.processes, progress=self.progress,
                             num_prompts=len(self.train_prompts), observer=self, should_stop=self._should_stop).run()
                self.bar.close()
                return self._finish(self.checkpoint())
            except (RayActorError, ActorUnavailableError) as err:
                # Rollout actors are restarted by Ray (loops.py); this is the learner or the weight store, whose
                # state lives only in the checkpoints: stop, and say where a resume continues from.
                newest = (self.run_dir / "checkpoints" / "latest")
                since = newest.read_text().strip() if newest.is_file() else "none written yet"
                raise LearnerDiedError(
                    f"the learner actor died ({(str(err).splitlines() or [type(err).__name__])[0][:200]}); the run "
                    f"stopped without a final checkpoint: `tokenalign train --resume {self.run_dir}` continues from "
                    f"the newest ({since})") from None
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
                self.processes.shutdown()
                if self._watchdog is not None:
                    self._watchdog.disarm()

    # ------------------------------------------------------------------------------------- stop and signals
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

    # ------------------------------------------------------------------------------- what the loop reports
    def rollout_done(self, stats: dict[str, float]) -> None:
        self._log()
        self.bar.update(int(stats["episodes"]))

    def learner_done(self, metrics: dict[str, float]) -> None:
        if "items_seen" in metrics:  # an offline learner's episodes are the items (pairs, sets) it has seen
            self.bar.update(int(metrics["items_seen"]))
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

    def _shard_restarted(self, index: int) -> None:
        self.progress.shard_restarts += 1
        log.warning("buffer shard %d died; restarted it from its append-only file (writers retried meanwhile, "
                    "the learner sampled the other shards)", index)

    # ---------------------------------------------------------------------------------------- checkpoint
    def checkpoint(self) -> Path:
        """Write checkpoints/step-<updates>/ from the state the learner hands over (`run/checkpoints.py`)."""
        p = self.progress
        p.elapsed_s = time.monotonic() - self._t0
        p.last_checkpoint_updates = p.updates
        learner = self.processes.learner
        state, policy = self.processes.call([learner.state.remote(), learner.policy_state.remote()])
        root = self.run_dir / "checkpoints"
        path = write_checkpoint(root, step=p.updates, learner=state, policy=policy, progress=vars(p))
        prune_checkpoints(root, keep=self.config.run.keep_checkpoints, protect=self._summary_checkpoint())
        return path

    def _summary_checkpoint(self) -> frozenset[str]:
        """The checkpoint an earlier summary.json was made from (training.json names it), if any."""
        try:
            return frozenset([json.loads((self.run_dir / "training.json").read_text())["checkpoint"]])
        except (OSError, ValueError, KeyError, TypeError):
            return frozenset()

    def _restore(self) -> None:
        ckpt = self.resume_from
        self.processes.call(self.processes.learner.load_state.remote(ckpt.learner))
        self.progress = Progress(**ckpt.progress)
        truncate_metrics(self.run_dir, episodes=self.progress.episodes)
        log.info("resumed %s from %s: %d episodes, %d updates", self.run_dir, ckpt.path.name, self.progress.episodes,
                 self.progress.updates)

    # ------------------------------------------------------------------------------------------- finish
    def _finish(self, checkpoint: Path) -> dict[str, Any]:
        """Samples, the evaluation (summary.json), training.json naming `checkpoint` (the evaluated agent's: kept
        by pruning from then on), the report."""
        from tokenalign.eval.report import write_report

        cfg, call = self.config, self.processes.call
        # A pair learner's run has no rollout actor: its learner actor decodes.
        decoder = self.processes.actors[0] if self.processes.actors else self.processes.learner
        samples = call(decoder.sample_generations.remote(list(range(min(8, len(self.train_prompts))))))
        (self.run_dir / "generations.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
        summary: dict[str, Any] = {}
        if cfg.run.eval_prompts > 0:
            summary = call(decoder.evaluate.remote(num_prompts=cfg.run.eval_prompts, best_of=4, seed=cfg.run.seed))
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        training = {"episodes": self.progress.episodes, "decisions": self.progress.decisions,
                    "updates": self.progress.updates, "minutes": round(self.progress.elapsed_s / 60, 2),
                    "actor_restarts": self.progress.actor_restarts, "shard_restarts": self.progress.shard_restarts,
                    "stopped_by": self._stop_reason or "budget", "checkpoint": checkpoint.name,
                    "buffer": call(self.processes.learner.buffer_stats.remote())}
        (self.run_dir / "training.json").write_text(json.dumps(training, indent=2))
        self.metrics_file.close()
        write_report(self.run_dir)
        self.wandb.summary.update({f"eval/{mode}/{k}": v["mean"] for mode, s in summary.items() if isinstance(s, dict)
                                   for k, v in s.items() if isinstance(v, dict) and "mean" in v})
        self.wandb.finish()
        return summary
