"""A state-value head V(s) (reward or cost critic for PPO) with its own LayerNorm, shaped like the policy."""
from __future__ import annotations

import torch
from torch import nn

from tokenalign.agents.mlp import ObservationNorm, check_widths, mlp


class ValueHead(nn.Module):
    """V: (..., hidden) → (...,)."""

    def __init__(
        self, *, state_size: int, widths: tuple[int, ...] = (1024, 256), preference_dim: int = 0  # MARA SAC.py shapes
    ) -> None:
        super().__init__()
        self.widths = check_widths(widths, owner="ValueHead")
        self.norm = ObservationNorm(state_size, preference_dim)
        self.body = mlp(self.norm.out_features, self.widths, 1)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.body(self.norm(state)).squeeze(-1)
