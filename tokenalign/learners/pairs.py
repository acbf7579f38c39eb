"""What preference learners train on: both responses of preference pairs as the decisions that emit them.

Built by the learner actor's `PairSource` (actors/pair_source.py) from teacher-forced responses
(envs/teacher_forcing.py); learners only read it. Each side is flat over its decisions, with the pair
(0..size−1) each decision belongs to, so a sequence's log-ratio is one `index_add`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


@dataclass
class PairSide:
    """The decisions of one side (chosen or rejected) of a batch of pairs."""

    observation: torch.Tensor
    """(N, H + 1) float32 [state ; π_ref accept logit] at each decision (what the agent reads)."""
    action: torch.Tensor
    """(N,) int64: 1 accepts the response's token, 0 rejects a candidate ranked above it."""
    pair: torch.Tensor
    """(N,) int64 index of the pair (within the batch) each decision belongs to."""

    def to(self, device: torch.device | str) -> PairSide:
        return PairSide(**{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)})


@dataclass
class PairBatch:
    """A minibatch of preference pairs: the chosen and the rejected responses' decisions."""

    chosen: PairSide
    """The preferred responses."""
    rejected: PairSide
    """The other responses."""
    size: int
    """Pairs in the batch."""

    def to(self, device: torch.device | str) -> PairBatch:
        return PairBatch(chosen=self.chosen.to(device), rejected=self.rejected.to(device), size=self.size)
