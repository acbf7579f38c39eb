"""Responses as the decisions that emit them, teacher-forced once and kept for many minibatches.

The LM is frozen, so a response's decisions (candidate states, π_ref's accept logits, actions) never change:
offline learners' sources (pairs, best-of-N sample sets) force their responses once, in batches
(envs/teacher_forcing.py), keep the states on the CPU in float16, and gather minibatches from them.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from tokenalign.envs.engine import DecodingEngine
from tokenalign.envs.teacher_forcing import ForcedDecisions, force_responses
from tokenalign.learners.offline_batches import Responses

FORCE_BATCH = 64
"""Responses per teacher-forced batch: two forwards each, with all their candidates as queries."""


class ForcedResponses:
    """Every response's decisions, grouped by response (CSR: `start[i]`..`start[i+1]`)."""

    def __init__(self, parts: list[ForcedDecisions]) -> None:
        self.state = torch.cat([p.state.half().cpu() for p in parts])
        self.base_logit = torch.cat([p.base_logit.float().cpu() for p in parts])
        self.action = torch.cat([p.action.cpu() for p in parts])
        counts = torch.cat([torch.bincount(p.sequence.cpu(), minlength=p.size) for p in parts])
        self.start = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
        self.tokens = int(sum(int(p.tokens.sum()) for p in parts))
        self.uncovered = int(sum(int(p.uncovered.sum()) for p in parts))

    @classmethod
    def force(cls, engine: DecodingEngine, prompts: Sequence[str], responses: Sequence[Sequence[int]]) -> ForcedResponses:
        """Teacher-force token ids `responses[i]` after `prompts[i]`, FORCE_BATCH responses at a time."""
        return cls([force_responses(engine, prompts[lo: lo + FORCE_BATCH], responses[lo: lo + FORCE_BATCH])
                    for lo in range(0, len(responses), FORCE_BATCH)])

    def __len__(self) -> int:
        return len(self.start) - 1

    def gather(self, responses: torch.Tensor) -> Responses:
        """The decisions of responses `responses` (indices), each tagged with its position in that list."""
        counts = self.start[responses + 1] - self.start[responses]
        owner = torch.repeat_interleave(torch.arange(len(responses)), counts)
        index = torch.repeat_interleave(self.start[responses] - torch.cumsum(counts, 0) + counts, counts) + torch.arange(
            int(counts.sum()))
        observation = torch.cat([self.state[index].float(), self.base_logit[index].unsqueeze(-1)], dim=-1)
        return Responses(observation=observation, action=self.action[index], response=owner)
