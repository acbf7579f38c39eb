"""Ray cluster helpers: resource checks before anything starts, GPU bundles per rollout actor."""
from __future__ import annotations

import pytest
import ray
from ray.util.placement_group import remove_placement_group

from tokenalign.cluster.ray_cluster import (
    ClusterResourceError,
    ResourceRequest,
    bundle_options,
    check_resources,
    reserve_rollout_bundles,
)


@ray.remote
class _WhereAmI:
    def gpu_ids(self) -> list[str]:
        return [str(g) for g in ray.get_gpu_ids()]


def test_two_rollout_actors_land_on_distinct_gpus(ray_cluster):
    group = reserve_rollout_bundles(num_actors=2, gpus_per_actor=1, cpus_per_actor=1, strategy="PACK", timeout_s=30)
    try:
        actors = [_WhereAmI.options(**bundle_options(group, i, gpus=1, cpus=1)).remote() for i in range(2)]
        ids = ray.get([a.gpu_ids.remote() for a in actors], timeout=60)
        assert all(len(i) == 1 for i in ids)
        assert ids[0] != ids[1]
    finally:
        for a in actors:
            ray.kill(a)
        remove_placement_group(group)


def test_asking_for_more_gpus_than_the_cluster_has_is_a_clear_error(ray_cluster):
    with pytest.raises(ClusterResourceError, match=r"asks for 8 GPUs .* has 2"):
        check_resources(ResourceRequest(num_actors=8, gpus_per_actor=1, cpus_per_actor=0.5))
    with pytest.raises(ClusterResourceError, match="CPUs"):
        check_resources(ResourceRequest(num_actors=100, gpus_per_actor=0, cpus_per_actor=1))
    check_resources(ResourceRequest(num_actors=2, gpus_per_actor=1, cpus_per_actor=1))


def test_unreservable_bundles_fail_fast_with_a_clear_error(ray_cluster):
    with pytest.raises(ClusterResourceError, match="could not reserve"):
        reserve_rollout_bundles(num_actors=3, gpus_per_actor=1, cpus_per_actor=1, strategy="PACK", timeout_s=2)
