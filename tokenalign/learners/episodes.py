"""Episode structure of an on-policy rollout: rows are whole episodes in step order, ended by `done`."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from tokenalign.buffers.batches import Transitions


@dataclass(frozen=True)
class Episodes:
    """Which episode each row belongs to, plus per-episode sums; built and checked by `Episodes.of`."""

    index: torch.Tensor
    """(B,) int64 episode number 0..E-1 of each row."""
    count: int
    """E, the number of episodes."""
    last_row: torch.Tensor
    """(E,) int64 row of each episode's final decision."""

    @classmethod
    def of(cls, batch: Transitions, *, learner: str) -> Episodes:
        """Segment `batch`, raising one ValueError if its rows are not whole episodes in step order."""
        done = batch.done.bool()
        if not bool(done[-1]):
            raise ValueError(
                f"{learner}: the rollout's last row is not done; on-policy learners train on whole episodes, "
                "so pass every decision of each episode up to and including its done row"
            )
        id_changes = batch.episode_id[1:] != batch.episode_id[:-1]
        if not torch.equal(id_changes, done[:-1]):
            row = int(torch.nonzero(id_changes != done[:-1])[0]) + 1
            raise ValueError(
                f"{learner}: row {row} (episode_id {int(batch.episode_id[row])}) breaks the episode chain; "
                "on-policy rows must be whole episodes, each contiguous in step order and ending on its done row"
            )
        out_of_order = (batch.step[1:] != batch.step[:-1] + 1) & ~done[:-1]
        if bool(out_of_order.any()):
            row = int(torch.nonzero(out_of_order)[0]) + 1
            raise ValueError(
                f"{learner}: row {row} (episode_id {int(batch.episode_id[row])}) has step {int(batch.step[row])} after "
                f"step {int(batch.step[row - 1])}; on-policy rows must be each episode's decisions in step order"
            )
        index = torch.cumsum(done.long(), 0) - done.long()
        return cls(index=index, count=int(done.sum()), last_row=torch.nonzero(done).squeeze(-1))

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Per-episode sums (E,) of per-row `values` (B,); differentiable."""
        return torch.zeros(self.count, dtype=values.dtype, device=values.device).index_add(0, self.index, values)
