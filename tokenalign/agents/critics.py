"""MARA's twin Q critic for discrete SAC: one LayerNorm, two independent MLP heads Q1(s, ·), Q2(s, ·)."""
from __future__ import annotations

import torch
from torch import nn

from tokenalign.agents.mlp import ObservationNorm, check_widths, mlp


class TwinQCritic(nn.Module):
    """Q1, Q2: (..., hidden) → (..., 2) action values; the min of the two curbs overestimation."""

    def __init__(
        self, *, state_size: int, widths: tuple[int, ...] = (1024, 256), preference_dim: int = 0  # MARA SAC.py
    ) -> None:
        super().__init__()
        self.widths = check_widths(widths, owner="TwinQCritic")
        self.norm = ObservationNorm(state_size, preference_dim)
        self.q1 = mlp(self.norm.out_features, self.widths, 2)
        self.q2 = mlp(self.norm.out_features, self.widths, 2)

    def forward(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q1(s, ·), Q2(s, ·)), each (..., 2)."""
        x = self.norm(state)
        return self.q1(x), self.q2(x)
