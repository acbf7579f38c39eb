"""Whether a run's settings, taken together, can make progress: checked before a run directory exists.

Each section checks its own fields when the config loads. What no section can see alone is whether a
shard holds the longest episode, whether the buffer can ever hold what the learner waits for, whether the
rate limiter lets writers and the learner both move, whether the test set has the prompts the final
evaluation asks for, and whether the cluster has the GPUs the actors ask for. Each of those would otherwise
start a run that fails minutes later inside an actor (a write larger than a shard), never learns (a
threshold the buffer never reaches) or evaluates less than asked; here each is one error naming the keys
and the smallest value that works.

Sizes are worst cases: an episode writes at most `engine.max_new_tokens` steps of `engine.sampling.top_k`
candidates (all but the last are decisions of the accept/reject chain; candidate-row learners record all).
"""
from __future__ import annotations

import math
import os

import ray

from tokenalign.buffers.rate_limiter import error_band
from tokenalign.cluster.ray_cluster import ResourceRequest, check_resources, connect
from tokenalign.config import TrainConfig
from tokenalign.core.parsing import ConfigError
from tokenalign.data.prompts import load_prompts


def check_feasible(config: TrainConfig) -> None:
    """One ConfigError (a ClusterResourceError for GPUs) for the first combination that cannot make progress; what
    needs no network (the cluster the run joins is `check_cluster`'s)."""
    if config.learner.contract.data_mode == "replay":
        check_replay_sizes(config)
        check_rate_limiter(config)
    check_eval_prompts(config)
    check_local_gpus(config)


def rows_per_episode(config: TrainConfig) -> int:
    """The most rows one episode writes: a decision per rejected candidate, or every candidate of every step."""
    k = config.engine.sampling.top_k
    per_step = k if config.learner.contract.records == "candidates" else max(k - 1, 1)
    return config.engine.max_new_tokens * per_step


def episodes_per_write(config: TrainConfig) -> int:
    """Episodes one rollout actor writes at once (a batch: whole prompt groups of the learner's group size)."""
    k = config.learner.contract.group_size
    return max(1, config.rollout.episodes_per_batch // k) * k


def check_replay_sizes(config: TrainConfig) -> None:
    """Every shard holds the longest episode (a batch larger than a shard goes in chunks of whole episodes, an
    episode is never split), and the buffer can reach the size the learner waits for before its first update."""
    buffer, contract = config.buffer, config.learner.contract
    longest = rows_per_episode(config)
    if buffer.shard_capacity < longest:
        e = config.engine
        raise ConfigError(
            f"buffer.capacity={buffer.capacity} over buffer.num_shards={buffer.num_shards} holds "
            f"{buffer.shard_capacity} transitions a shard, but one episode can write {longest} (engine.max_new_tokens="
            f"{e.max_new_tokens} × engine.sampling.top_k={e.sampling.top_k}): raise buffer.capacity to at least "
            f"{longest * buffer.num_shards}")
    starts = _params_key(config, "learning_starts_factor", "learning_starts")
    if starts.endswith("_factor"):  # SAC: MARA's learning starts are a multiple of its batch
        starts += " × learner.params.batch_size"
    needs = {"buffer.min_size_to_sample": buffer.min_size_to_sample, starts: contract.learning_starts + 1}
    if contract.sample == "episodes":
        check_whole_episodes(config, longest)
    else:
        needs[_params_key(config, "batch_size")] = contract.batch_size
    key, need = max(needs.items(), key=lambda item: item[1])
    if need > buffer.capacity:
        raise ConfigError(
            f"{key} waits for {need} transitions before the first update, but buffer.capacity={buffer.capacity} never "
            f"holds that many: raise buffer.capacity to at least {need} or lower {key}")


def check_whole_episodes(config: TrainConfig, longest: int) -> None:
    """A learner that draws whole episodes needs a buffer sure to hold a batch of them, each in one shard."""
    buffer, batch = config.buffer, config.learner.contract.batch_size
    held = buffer.num_shards * (buffer.shard_capacity // longest)
    if held < batch:
        key = _params_key(config, "episodes_per_batch")
        need = buffer.num_shards * -(-batch // buffer.num_shards) * longest
        raise ConfigError(
            f"{key}={batch} whole episodes per update, but buffer.capacity={buffer.capacity} over "
            f"buffer.num_shards={buffer.num_shards} is sure to hold only {held} of up to {longest} transitions: "
            f"raise buffer.capacity to at least {need} or lower {key}")


def _params_key(config: TrainConfig, *names: str) -> str:
    """The dotted key of the first of `names` that the learner's params have (learners name their settings apart)."""
    fields = vars(config.learner.params)
    return next((f"learner.params.{name}" for name in names if name in fields), f"learner.params ({names[0]})")


def check_rate_limiter(config: TrainConfig) -> None:
    """With buffer.samples_per_insert set, writers wait for the learner and the learner for writers: its error band
    must hold one rollout batch's worth of ratio plus one learner batch, or both sides wait until one times out."""
    buffer, contract = config.buffer, config.learner.contract
    ratio = buffer.samples_per_insert
    if ratio is None:
        return
    longest = rows_per_episode(config)
    write = episodes_per_write(config) * longest
    band = 2 * error_band(min_size_to_sample=buffer.min_size_to_sample, samples_per_insert=ratio,
                          error_buffer=buffer.error_buffer)
    draw = contract.batch_size * (longest if contract.sample == "episodes" else 1)
    need = max(ratio * write + draw, 2 * max(1.0, ratio))
    if band < need:
        raise ConfigError(
            f"buffer.error_buffer={buffer.error_buffer} allows samples to drift {band:g} transitions from "
            f"buffer.samples_per_insert={ratio:g} × inserts, less than one rollout batch's share ({ratio:g} × {write}) "
            f"plus one learner batch ({draw}): set buffer.error_buffer to at least {math.ceil(need / 2)}")


def check_eval_prompts(config: TrainConfig) -> None:
    """The final evaluation's prompts exist in the test set (fewer would be evaluated without a word)."""
    wanted = config.run.eval_prompts
    if wanted == 0:
        return
    try:
        have = len(load_prompts(config.data.test, prompt_field=config.data.prompt_field, seed=config.data.seed))
    except (FileNotFoundError, ValueError) as err:
        field = "" if config.data.prompt_field is None else f" (data.prompt_field={config.data.prompt_field})"
        raise ConfigError(f"data.test{field}: {err}") from None
    if wanted > have:
        raise ConfigError(f"run.eval_prompts={wanted} but data.test holds {have} prompts: set run.eval_prompts to at "
                          f"most {have} or add test prompts")


def resource_request(config: TrainConfig) -> ResourceRequest:
    """What the run asks of the cluster: its rollout actors, the learner actor and a reward service."""
    r, learner_gpus = config.rollout, config.learner.num_gpus
    if config.learner.contract.offline:  # no rollouts: the learner actor alone, with its own copy of the LM
        return ResourceRequest(num_actors=0, gpus_per_actor=0.0, cpus_per_actor=0.0, learner_gpus=learner_gpus)
    return ResourceRequest(num_actors=r.num_actors, gpus_per_actor=r.gpus_per_actor, cpus_per_actor=r.cpus_per_actor,
                           learner_gpus=learner_gpus, reward_service_gpus=r.reward_service_gpus)


def check_cluster(config: TrainConfig) -> None:
    """The Ray cluster the run joins (run.ray_address / RAY_ADDRESS, or one already started in this process) holds
    its actors; joined here, before the run directory, and the run goes on in it."""
    address = _cluster_address(config)
    if address or ray.is_initialized():
        connect(address=address)
        check_resources(resource_request(config))


def check_local_gpus(config: TrainConfig) -> None:
    """A local cluster, not started yet, gets this machine's GPUs (CPUs: as many as asked, `local_cpus_for`)."""
    request = resource_request(config)
    if request.gpus > 0 and not (_cluster_address(config) or ray.is_initialized()):
        import torch

        check_resources(request, local_gpus=torch.cuda.device_count())


def _cluster_address(config: TrainConfig) -> str | None:
    """The Ray cluster the run joins: run.ray_address, else RAY_ADDRESS (set by `ray job submit`); None: a local one."""
    return config.run.ray_address or os.environ.get("RAY_ADDRESS")
