"""The data an offline learner's actor prepares when it starts, by the learner's data mode (LearnerContract)."""
from __future__ import annotations

from typing import Protocol

import torch

from tokenalign.config import TrainConfig
from tokenalign.envs.task import DecodingTask


class OfflineSource(Protocol):
    """Items (pairs, prompts' sets) teacher-forced once; each update gathers a minibatch of them."""

    size: int
    """Items held."""

    def batch(self, items: torch.Tensor) -> object:
        """The minibatch learners train on (learners/offline_batches.py) of items `items` (indices)."""

    def stats(self) -> dict[str, float]:
        """What the run reports of its data."""


def offline_source(task: DecodingTask, config: TrainConfig) -> OfflineSource:
    """data.pairs for a pair learner (DPO); sets of base samples of data.train for a sets learner (distillation)."""
    contract = config.learner.contract
    if contract.data_mode == "pairs":
        from tokenalign.actors.pair_source import PairSource

        return PairSource(engine=task.engine, specs=config.data.pairs, seed=config.data.seed)
    if contract.data_mode == "sets":
        from tokenalign.actors.sample_set_source import SampleSetSource

        return SampleSetSource(task=task, per_prompt=contract.group_size, prompts=contract.set_prompts,
                               seed=config.run.seed)
    raise ValueError(f"data mode {contract.data_mode!r} is not offline: its learner trains on rollouts")
