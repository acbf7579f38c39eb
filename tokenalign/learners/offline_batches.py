"""What offline learners train on: given responses as the decisions that emit them, and preference pairs of them.

Built by the learner actor's sources (actors/pair_source.py, actors/sample_set_source.py) from teacher-forced
responses (envs/teacher_forcing.py); learners only read them. `Responses` is flat over the decisions, with the
response (0..n−1 within the batch) each decision belongs to, so a sequence's log-ratio is one `index_add`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


@dataclass
class Responses:
    """The decisions that emit a batch of responses (one side of a batch of pairs, or a batch of sample sets)."""

    observation: torch.Tensor
    """(N, H + 1) float32 [state ; π_ref accept logit] at each decision (what the agent reads)."""
    action: torch.Tensor
    """(N,) int64: 1 accepts the response's token, 0 rejects a candidate ranked above it."""
    response: torch.Tensor
    """(N,) int64 index of the response (within the batch) each decision belongs to."""

    def to(self, device: torch.device | str) -> Responses:
        return Responses(**{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)})


@dataclass
class PairBatch:
    """A minibatch of preference pairs: the chosen and the rejected responses' decisions."""

    chosen: Responses
    """The preferred responses."""
    rejected: Responses
    """The other responses."""
    size: int
    """Pairs in the batch."""

    def to(self, device: torch.device | str) -> PairBatch:
        return PairBatch(chosen=self.chosen.to(device), rejected=self.rejected.to(device), size=self.size)


@dataclass
class SampleSets:
    """A minibatch of prompts, each with its set of n base-LM responses and their rewards (best-of-N distillation)."""

    responses: Responses
    """The decisions of the B·n responses; response b·n + j is prompt b's j-th."""
    reward: torch.Tensor
    """(B, n) float32 the run's combined reward (final) of each response."""

    @property
    def size(self) -> int:
        return int(self.reward.shape[0])

    def to(self, device: torch.device | str) -> SampleSets:
        return SampleSets(responses=self.responses.to(device), reward=self.reward.to(device))
