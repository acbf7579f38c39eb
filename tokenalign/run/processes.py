"""The processes of a run: Ray, the buffer's servers, the learner actor, the rollout actors and the reward
service, started in order and stopped in order; every wait on one of them has a timeout.

A rollout actor that dies is restarted by Ray (rollout.max_restarts); `await_restart` waits for it. A dead
embedded buffer shard restarts from its append-only file (the fleet's keep-alive) and rejoins.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError
from ray.util.placement_group import remove_placement_group
from transformers import AutoConfig

from tokenalign.actors.learner_actor import LearnerActor
from tokenalign.actors.rollout_actor import RolloutActor
from tokenalign.actors.weights import WeightStore
from tokenalign.buffers.layout import RecordLayout
from tokenalign.cluster import ray_cluster
from tokenalign.cluster.buffer_servers import launch_buffer
from tokenalign.cluster.redis_fleet import RedisFleet
from tokenalign.config import TrainConfig
from tokenalign.envs.candidate_state import CANDIDATE_STATES
from tokenalign.lm.loader import resolve_lm_path
from tokenalign.objectives import make_objective
from tokenalign.run.feasibility import resource_request


class RunProcesses:
    """What a run starts; `start()` brings it up, `shutdown()` takes it down (also after a partial start)."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.contract = config.learner.contract
        self.learner: Any = None
        """The LearnerActor."""
        self.weights: Any = None
        """The WeightStore actors pull published policies from."""
        self.reward_service: Any = None
        """The RewardService actor, when rollout.reward_service_gpus > 0."""
        self.actors: list[Any] = []
        """The RolloutActors (none for a pair learner)."""
        self.actor_info: list[dict[str, Any]] = []
        """What each rollout actor reports of itself (its device and Ray's GPU ids)."""
        self.fleet: RedisFleet | None = None
        """Embedded Redis servers of the buffer (None: memory backend, external servers or a pair learner)."""
        self.started_ray = False
        self._bundles: Any = None
        self._keep_alive: threading.Event | None = None

    def resources(self) -> ray_cluster.ResourceRequest:
        """What the run asks of the cluster."""
        return resource_request(self.config)

    def start_ray(self) -> None:
        """Connect to (or start) Ray and check that the cluster can host the run."""
        request = self.resources()
        self.started_ray = ray_cluster.connect(address=self.config.run.ray_address,
                                               num_cpus=ray_cluster.local_cpus_for(request))
        ray_cluster.check_resources(request)

    def start_learner(self, *, run_dir: Path, on_shard_restart: Callable[[int], None]) -> None:
        """The buffer (its servers in `run_dir`) and the learner actor; the rollout actors come after a restore."""
        cfg = self.config
        hidden_size = int(AutoConfig.from_pretrained(resolve_lm_path(cfg.lm.path), local_files_only=True).hidden_size)
        state_size = CANDIDATE_STATES[cfg.engine.candidate_state].state_size(hidden_size)
        self.objective = make_objective(cfg.objective, reward=cfg.reward, shaping=cfg.shaping, gamma=self.contract.gamma,
                                        signals=self.contract.signals)
        layout = RecordLayout(state_size=state_size, scorers=tuple(s.resolved_name for s in cfg.reward.scorers),
                              preference_dim=self.objective.preference_dim,
                              candidate_rows=self.contract.records == "candidates")
        self.buffer_spec = None
        if not self.contract.offline:
            self.buffer_spec, self.fleet = launch_buffer(cfg.buffer, layout=layout, data_mode=self.contract.data_mode,
                                                         run_dir=run_dir, on_ray=not self.started_ray)
            if self.fleet is not None:  # a dead embedded shard restarts from its append-only file and rejoins
                self._keep_alive = self.fleet.keep_alive(on_restart=on_shard_restart)
        self.weights = WeightStore.remote()
        self.learner = LearnerActor.options(num_gpus=cfg.learner.num_gpus, num_cpus=1).remote(
            config=cfg, layout=layout, weights=self.weights, buffer_spec=self.buffer_spec)

    def start_rollouts(self) -> None:
        """The reward service (if any) and the rollout actors, each in its own placement-group bundle."""
        cfg = self.config
        if self.contract.offline:
            return
        if cfg.rollout.reward_service_gpus > 0:
            from tokenalign.actors.reward_service import RewardService

            self.reward_service = RewardService.options(num_gpus=cfg.rollout.reward_service_gpus).remote(config=cfg.reward)
        self._bundles = ray_cluster.reserve_rollout_bundles(
            num_actors=cfg.rollout.num_actors, gpus_per_actor=cfg.rollout.gpus_per_actor,
            cpus_per_actor=cfg.rollout.cpus_per_actor, strategy=cfg.rollout.placement_strategy,
            timeout_s=cfg.run.placement_timeout_s)
        self.actors = [
            RolloutActor.options(**ray_cluster.bundle_options(self._bundles, i, gpus=cfg.rollout.gpus_per_actor,
                                                              cpus=cfg.rollout.cpus_per_actor),
                                 max_restarts=cfg.rollout.max_restarts).remote(
                index=i, config=cfg, buffer_spec=self.buffer_spec, weights=self.weights, objective=self.objective,
                reward_service=self.reward_service)
            for i in range(cfg.rollout.num_actors)
        ]
        self.actor_info = [self.call(actor.info.remote()) for actor in self.actors]

    def call(self, ref: Any) -> Any:
        """`ray.get(ref)` within run.remote_timeout_s, or a TimeoutError that says which setting to raise."""
        timeout = self.config.run.remote_timeout_s
        try:
            return ray.get(ref, timeout=timeout)
        except GetTimeoutError as err:
            raise TimeoutError(f"a remote call took longer than run.remote_timeout_s={timeout:g}s; "
                               "raise it for slow models, or check the actors' logs") from err

    def await_restart(self, index: int) -> None:
        """Block until Ray has restarted rollout actor `index`; a dead one (restarts used up) is an error."""
        deadline = time.monotonic() + self.config.run.remote_timeout_s
        while True:
            try:
                self.call(self.actors[index].info.remote())
                return
            except ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"rollout actor {index} did not come back within run.remote_timeout_s") from None
                time.sleep(0.5)
            except RayActorError as err:
                raise RuntimeError(f"rollout actor {index} died for good after rollout.max_restarts="
                                   f"{self.config.rollout.max_restarts} restarts: {err}") from err

    def shutdown(self) -> None:
        """Stop what this run started, so a Ray cluster can host the next run (or a test session many)."""
        if self._keep_alive is not None:
            self._keep_alive.set()  # before the fleet stops: a stopped server is not a dead one
        for handle in [*self.actors, self.learner, self.weights, self.reward_service]:
            if handle is not None:
                ray.kill(handle, no_restart=True)
        if self._bundles is not None:
            remove_placement_group(self._bundles)
        if self.fleet is not None:
            self.fleet.stop()
        if self.started_ray:
            ray.shutdown()
