"""The MLP trunk shared by MARA's policy, Q critics and value heads: Linear → ReLU per width, then a head."""
from __future__ import annotations

import torch
from torch import nn


def check_widths(widths: tuple[int, ...] | list[int], *, owner: str) -> tuple[int, ...]:
    """Return `widths` as a tuple, raising one ValueError naming `owner` if it is empty or not all positive."""
    widths = tuple(widths)
    if not widths or any(not isinstance(w, int) or isinstance(w, bool) or w <= 0 for w in widths):
        raise ValueError(
            f"widths must be a non-empty sequence of positive ints ({owner}; MARA uses (1024, 256)), got {widths!r}"
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


BASE_LOGIT_FEATURE_CLIP = 8.0
"""π_ref's accept logit enters the networks as clip(l, ±8)/4: within the range of the normalised state's
features, while the last candidate's ±30 and near-certain candidates do not dominate the first layer."""


class ObservationNorm(nn.LayerNorm):
    """What every network makes of an observation [hidden state ; π_ref accept logit ; w].

    Hidden-state scales differ wildly between LMs and layers, so a LayerNorm over the hidden state makes
    one learning rate fit all. π_ref's accept logit (`tokenalign.agents.chain.reference_accept_logits`)
    follows as one clipped, scaled feature. The conditioning weights w must not be folded into the state's
    statistics, and must not drown in it either: the normalised state has norm √H, so w enters as
    (w − 1/P)·√(H/P), the same total norm for a one-hot w. Fed as raw [0, 1] values beside H unit-variance
    features, w barely moved the first layer in training and the agent decoded alike at every w
    (benchmarks/pareto.py on the previous LM, 2026-11-30; that result is in git history).
    """

    def __init__(self, state_size: int, preference_dim: int = 0) -> None:
        super().__init__(state_size)
        self.state_size = state_size
        self.preference_dim = preference_dim
        self.preference_scale = (state_size / preference_dim) ** 0.5 if preference_dim else 0.0

    @property
    def in_features(self) -> int:
        """Size of an observation: hidden state, π_ref's accept logit, w."""
        return self.state_size + 1 + self.preference_dim

    out_features = in_features

    def split(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(hidden state, π_ref accept logit (...,), w) of observations, checked for size, in the norm's dtype."""
        obs = obs.to(self.weight.dtype)
        if obs.shape[-1] != self.in_features:
            raise ValueError(
                f"agent input has {obs.shape[-1]} features, expected state size {self.state_size} + 1 (π_ref's accept "
                f"logit) + preference size {self.preference_dim}: build observations with "
                "tokenalign.envs.engine.DecodingEngine.observation and condition the agent with the preference size it was trained with"
            )
        h = self.state_size
        return obs[..., :h], obs[..., h], obs[..., h + 1:]

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """(..., hidden + 1 + preference_dim) observations (fp16/bf16 cast to the norm's dtype) → features."""
        hidden, base_logit, w = self.split(obs)
        feature = base_logit.clamp(-BASE_LOGIT_FEATURE_CLIP, BASE_LOGIT_FEATURE_CLIP).unsqueeze(-1) / 4.0
        parts = [super().forward(hidden), feature]
        if self.preference_dim:
            parts.append((w - 1.0 / self.preference_dim) * self.preference_scale)
        return torch.cat(parts, dim=-1)
