"""The MLP trunk shared by MARA's policy, Q critics and value heads: Linear → ReLU per width, then a head."""
from __future__ import annotations

import torch
from torch import nn


def check_widths(widths: tuple[int, ...] | list[int], *, owner: str) -> tuple[int, ...]:
    """Return `widths` as a tuple, raising one ValueError naming `owner` if it is empty or not all positive."""
    widths = tuple(widths)
    if not widths or any(not isinstance(w, int) or isinstance(w, bool) or w <= 0 for w in widths):
        raise ValueError(
            f"{owner} widths must be a non-empty sequence of positive ints (MARA uses (1024, 256)), got {widths!r}"
        )
    return widths


def mlp(in_features: int, widths: tuple[int, ...], out_features: int) -> nn.Sequential:
    """Linear → ReLU for each hidden width, then a plain Linear head of `out_features`."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Linear(in_features, width), nn.ReLU()]
        in_features = width
    layers.append(nn.Linear(in_features, out_features))
    return nn.Sequential(*layers)


class ObservationNorm(nn.LayerNorm):
    """LayerNorm over the LM hidden state; the conditioning features (preference weights w) centred and scaled.

    Hidden-state scales differ wildly between LMs and layers, so the norm makes one learning rate fit all.
    w must not be folded into the state's statistics, and it must not drown in it either: the normalised
    state has norm √H, so w enters as (w − 1/P)·√(H/P), the same total norm for a one-hot w. Fed as raw
    [0, 1] values beside H unit-variance features, w barely moved the first layer in training and the
    agent decoded alike at every w (benchmarks/results/pareto_unscaled_w.md). A LayerNorm subclass, so
    unconditioned agents keep the parameter names of checkpoints written before conditioning.
    """

    def __init__(self, hidden_size: int, preference_dim: int = 0) -> None:
        super().__init__(hidden_size)
        self.hidden_size = hidden_size
        self.preference_dim = preference_dim
        self.preference_scale = (hidden_size / preference_dim) ** 0.5 if preference_dim else 0.0

    @property
    def out_features(self) -> int:
        return self.hidden_size + self.preference_dim

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """(..., hidden + preference_dim) observations (fp16/bf16 cast to the norm's dtype) → features."""
        obs = obs.to(self.weight.dtype)
        if obs.shape[-1] != self.out_features:
            raise ValueError(
                f"agent input has {obs.shape[-1]} features, expected hidden size {self.hidden_size} + preference "
                f"size {self.preference_dim}: condition the agent with the same preference size it was trained with"
            )
        if not self.preference_dim:
            return super().forward(obs)
        w = obs[..., self.hidden_size:]
        centred = (w - 1.0 / self.preference_dim) * self.preference_scale
        return torch.cat([super().forward(obs[..., : self.hidden_size]), centred], dim=-1)
