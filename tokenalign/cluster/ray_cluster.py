"""Ray: start or join a cluster, check that it can hold the run, and pin rollout actors to GPU bundles.

Resources are checked BEFORE any actor starts: a run that asks for 8 GPUs on a cluster with 2 is a clear
error naming the settings to change, not a hang in Ray's scheduler.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from tokenalign.core.parsing import ConfigError

log = logging.getLogger(__name__)

NAMESPACE = "tokenalign"


class ClusterResourceError(ConfigError):
    """The Ray cluster cannot hold what the run asks for (or cannot be reached): the settings named must change."""


def connect(*, address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> bool:
    """Join the Ray cluster at `address` (or RAY_ADDRESS, or the one a `ray job submit` runs in), else start
    a local one. Returns True when this call started a local cluster (the caller shuts it down)."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        try:
            ray.init(address=address, namespace=NAMESPACE, log_to_driver=True)
        except ConnectionError as err:
            raise ClusterResourceError(
                f"cannot reach the Ray cluster at {address!r} ({err}); start one with `ray start --head` "
                "or drop run.ray_address / RAY_ADDRESS to run locally"
            ) from err
        return False
    ray.init(num_cpus=num_cpus, num_gpus=num_gpus, namespace=NAMESPACE, include_dashboard=False,
             log_to_driver=True, configure_logging=False)
    return True


@dataclass(frozen=True)
class ResourceRequest:
    """What a run needs from the cluster."""

    num_actors: int
    """Rollout actors."""
    gpus_per_actor: float
    """GPUs per rollout actor."""
    cpus_per_actor: float
    """CPUs per rollout actor."""
    learner_gpus: float = 0.0
    """GPUs of the learner actor."""
    learner_cpus: float = 1.0
    """CPUs of the learner actor."""
    reward_service_gpus: float = 0.0
    """GPUs of the reward service (0 = scorers run inside the rollout actors)."""

    @property
    def gpus(self) -> float:
        return self.num_actors * self.gpus_per_actor + self.learner_gpus + self.reward_service_gpus

    @property
    def cpus(self) -> float:
        return self.num_actors * self.cpus_per_actor + self.learner_cpus


def local_cpus_for(request: ResourceRequest) -> int:
    """Logical CPUs for a local cluster: the machine's cores, or more when the run's actors need them.

    Ray's CPUs are a scheduling quota, not pinned cores; on a 2-core laptop the demo's 2 actors and a
    learner share the cores (each actor sets its own torch thread count).
    """
    return max(os.cpu_count() or 1, int(-(-request.cpus // 1)))


def check_resources(request: ResourceRequest, *, local_gpus: int | None = None) -> None:
    """Raise ClusterResourceError when the cluster lacks the GPUs or CPUs the run asks for. `local_gpus`: check
    against a local cluster not started yet, which gets this machine's GPUs and as many CPUs as asked for
    (`local_cpus_for`), instead of the connected one."""
    if local_gpus is not None:
        have_gpus, have_cpus = float(local_gpus), request.cpus
    else:
        total = ray.cluster_resources()
        have_gpus, have_cpus = float(total.get("GPU", 0.0)), float(total.get("CPU", 0.0))
    if request.gpus > have_gpus:
        raise ClusterResourceError(
            f"the run asks for {request.gpus:g} GPUs (rollout.num_actors={request.num_actors} × "
            f"rollout.gpus_per_actor={request.gpus_per_actor:g} + learner.num_gpus={request.learner_gpus:g} + "
            f"rollout.reward_service_gpus={request.reward_service_gpus:g}) but the Ray cluster has {have_gpus:g}: lower those "
            "settings or add GPU nodes"
        )
    if request.cpus > have_cpus:
        raise ClusterResourceError(
            f"the run asks for {request.cpus:g} CPUs (rollout.num_actors={request.num_actors} × "
            f"rollout.cpus_per_actor={request.cpus_per_actor:g} + 1 for the learner) but the Ray cluster has "
            f"{have_cpus:g}: lower rollout.num_actors or rollout.cpus_per_actor, or add nodes"
        )
    if request.gpus_per_actor > 1:
        per_node = have_gpus if local_gpus is not None else max(
            (float(n["Resources"].get("GPU", 0.0)) for n in ray.nodes() if n.get("Alive")), default=0.0)
        if request.gpus_per_actor > per_node:
            raise ClusterResourceError(
                f"rollout.gpus_per_actor={request.gpus_per_actor:g} but no node has more than {per_node:g} GPUs; "
                "an actor's GPUs must sit on one node"
            )


def reserve_rollout_bundles(
    *, num_actors: int, gpus_per_actor: float, cpus_per_actor: float, strategy: str, timeout_s: float
) -> PlacementGroup:
    """One placement-group bundle per rollout actor (PACK or SPREAD over nodes), reserved up front."""
    bundle: dict[str, float] = {"CPU": cpus_per_actor}
    if gpus_per_actor > 0:
        bundle["GPU"] = gpus_per_actor
    group = placement_group([dict(bundle) for _ in range(num_actors)], strategy=strategy)
    if not group.wait(timeout_seconds=timeout_s):
        remove_placement_group(group)
        raise ClusterResourceError(
            f"could not reserve {num_actors} bundles of {bundle} ({strategy}) within {timeout_s:g}s; the cluster "
            f"has {ray.available_resources()} free: lower rollout.num_actors or free resources"
        )
    return group


def bundle_options(group: PlacementGroup, index: int, *, gpus: float, cpus: float) -> dict[str, Any]:
    """`.options(...)` that place an actor in bundle `index` of `group`."""
    return dict(
        num_gpus=gpus, num_cpus=cpus,
        scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=group, placement_group_bundle_index=index),
    )
