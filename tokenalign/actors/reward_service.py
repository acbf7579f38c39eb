"""RewardService: one Ray actor (on its own GPUs) scoring for every rollout actor, in shared batches.

Reward and cost models of LLM size (beaver-7b) are too large to copy into each rollout actor. The service
holds them once, each model on its own GPU where it was given several (`place_scorers`); concurrent
requests from the actors that arrive within a short window are scored as one batch, in a worker thread,
so the event loop keeps taking the next requests while a batch scores (the actors decode meanwhile).
`RemoteCombiner` gives rollout code the same face as a local RewardCombiner.
"""
from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import ray
import torch

from tokenalign.rewards.combine import CombinedScores, RewardCombiner, RewardConfig


def place_scorers(config: RewardConfig, *, gpus: int) -> RewardConfig:
    """The config with each model scorer left on `device: auto` put on a GPU of its own, round robin over
    the `gpus` visible ones (MARA's beaver-7b reward and cost models on two GPUs, not both on cuda:0)."""
    if gpus < 2:
        return config
    placed, index = [], 0
    for scorer in config.scorers:
        if getattr(scorer.options, "device", None) == "auto":
            options = dataclasses.replace(scorer.options, device=f"cuda:{index % gpus}")
            scorer = dataclasses.replace(scorer, options=options)
            index += 1
        placed.append(scorer)
    return dataclasses.replace(config, scorers=placed)


@ray.remote
class RewardService:
    """Scores (prompt, response) pairs with the run's reward configuration; see the module docstring."""

    def __init__(self, *, config: RewardConfig, window_s: float = 0.02, max_batch: int = 256) -> None:
        self.combiner = RewardCombiner.from_config(place_scorers(config, gpus=torch.cuda.device_count()))
        self.window_s = window_s
        self.max_batch = max_batch
        self._pending: list[tuple[list[str], list[str], list[int], dict[int, str], asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None
        self._scoring = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reward-service")  # models are not re-entrant
        self.batches_scored = 0
        self.requests_scored = 0

    async def missing_baselines(self, prompt_ids: list[int]) -> list[int]:
        return self.combiner.missing_baselines(prompt_ids)

    async def combine(self, prompts: list[str], responses: list[str], prompt_ids: list[int],
                      baseline_responses: dict[int, str]) -> dict[str, Any]:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((prompts, responses, prompt_ids, baseline_responses, future))
        if sum(len(p[0]) for p in self._pending) >= self.max_batch:
            self._flush()
        elif self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_later())
        return await future

    async def stats(self) -> dict[str, int]:
        return {"batches_scored": self.batches_scored, "requests_scored": self.requests_scored}

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.window_s)
        self._flusher = None
        self._flush()

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            asyncio.create_task(self._score(pending))

    async def _score(self, pending: list[tuple[list[str], list[str], list[int], dict[int, str], asyncio.Future]]) -> None:
        baselines: dict[int, str] = {}
        for request in pending:
            baselines.update(request[3])
        try:
            scores = await asyncio.get_running_loop().run_in_executor(self._scoring, lambda: self.combiner.combine(
                [p for r in pending for p in r[0]], [x for r in pending for x in r[1]],
                prompt_ids=[i for r in pending for i in r[2]], baseline_responses=baselines,
            ))
        except Exception as err:  # every waiting caller gets the scorer's error, not a hang
            for request in pending:
                request[4].set_exception(err)
            return
        self.batches_scored += 1
        self.requests_scored += len(pending)
        start = 0
        for request in pending:
            end = start + len(request[0])
            request[4].set_result({"final": scores.final[start:end], "reward": scores.reward[start:end],
                                   "cost": scores.cost[start:end], "raw": {k: v[start:end] for k, v in scores.raw.items()},
                                   "baseline_raw": {k: v[start:end] for k, v in scores.baseline_raw.items()}})
            start = end


class RemoteCombiner:
    """A RewardCombiner look-alike that forwards to a RewardService actor."""

    def __init__(self, service: Any, *, timeout_s: float) -> None:
        self.service = service
        self.timeout_s = timeout_s

    def missing_baselines(self, prompt_ids: Sequence[int]) -> list[int]:
        return ray.get(self.service.missing_baselines.remote([int(i) for i in prompt_ids]), timeout=self.timeout_s)

    def combine(self, prompts: Sequence[str], responses: Sequence[str], *, prompt_ids: Sequence[int] | np.ndarray | None = None,
                baseline_responses: Mapping[int, str] | None = None, states: Sequence[Any] | None = None) -> CombinedScores:
        """The service's scores of the texts; `states` stay here (heads in the service read their own LM)."""
        ids = [int(i) for i in prompt_ids] if prompt_ids is not None else [0] * len(prompts)
        out = ray.get(self.service.combine.remote(list(prompts), list(responses), ids, dict(baseline_responses or {})),
                      timeout=self.timeout_s)
        return CombinedScores(final=out["final"], reward=out["reward"], cost=out["cost"], raw=out["raw"],
                              baseline_raw=out["baseline_raw"])
