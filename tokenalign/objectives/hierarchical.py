"""`hierarchical`: ALaRM's hierarchical rewards (halfrot/ALaRM: long-form-QA/my_reward.py).

A holistic reward R_h (one scorer, z-normalised) gates the aspect rewards (every other scorer, weighted
by its multiplier, optionally sigmoid-shaped):

    ẑ_h = (R_h − μ_h)/σ_h                         μ_h, σ_h: given, or recorded from the run's own episodes
    R   = w_h·ẑ_h                                  if ẑ_h < threshold   (hierarchical)
    R   = w_h·ẑ_h + Σ_a m_a·shape(s_a)             otherwise
    R   = w_h·(−10)                                 for responses of ≤ 2 tokens (ALaRM's short-answer penalty)

Modes as ALaRM's: `hierarchical`, `holistic_only` (R = w_h·ẑ_h), `weighted_sum` (no gate). The cost is the
cost-role scorers' raw sum as in every objective.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from tokenalign.buffers.batches import Decisions
from tokenalign.objectives.base import Objective, register
from tokenalign.objectives.normalizer import EpisodeNormalizer


@dataclass(frozen=True)
class HierarchicalConfig:
    """ALaRM's options; defaults are its long-form QA setting."""

    holistic: str | None = None
    """Scorer name of the holistic reward; None = the first reward-role scorer."""
    mode: Literal["hierarchical", "holistic_only", "weighted_sum"] = "hierarchical"
    """ALaRM's reward modes."""
    threshold: float = 0.6  # ALaRM QA
    """Aspect rewards count only when the normalised holistic reward reaches this."""
    holistic_weight: float = 5.0  # ALaRM QA (MT: 3)
    """w_h, the holistic reward's weight."""
    holistic_mean: float | None = None  # ALaRM QA fixes (x + 4.896)/3.060 from its reward model's data
    """μ_h; None records it from the run's own episodes."""
    holistic_std: float | None = None
    """σ_h; None records it from the run's own episodes."""
    aspect_shaping: Literal["none", "sigmoid"] = "none"
    """Aspect reward shaping: raw score, or ALaRM's sigmoid(x) − avg_clip."""
    avg_clip: float = 0.0  # ALaRM
    """Subtracted after the sigmoid shaping."""
    short_response_tokens: int = 2  # ALaRM: responses of ≤ 2 tokens
    """Responses of at most this many tokens get the short-answer holistic value."""
    short_response_holistic: float = -10.0  # ALaRM
    """The holistic value given to short responses (before w_h)."""

    def __post_init__(self) -> None:
        if (self.holistic_mean is None) != (self.holistic_std is None):
            raise ValueError("holistic_std and objective.params.holistic_mean go together: set both or neither")
        if self.holistic_std is not None and self.holistic_std <= 0:
            raise ValueError(f"holistic_std must be > 0, got {self.holistic_std}")


@register("hierarchical", config=HierarchicalConfig)
class HierarchicalObjective(Objective):
    """See the module docstring."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        cfg: HierarchicalConfig = self.config
        if cfg.holistic is None:
            if not self.is_reward.any():
                raise ValueError("the hierarchical objective needs a reward-role scorer as the holistic reward")
            self.holistic = int(np.flatnonzero(self.is_reward)[0])
        else:
            self.holistic = self.scorer_index(cfg.holistic, what="holistic")
        self.aspects = np.array([i for i in range(len(self.scorers)) if i != self.holistic], dtype=np.int64)
        self.normalizer = EpisodeNormalizer(1)

    def episode_values(self, scores: np.ndarray, decisions: Decisions) -> tuple[np.ndarray, np.ndarray]:
        cfg: HierarchicalConfig = self.config
        holistic = scores[:, self.holistic]
        if cfg.holistic_mean is None:
            z = self.normalizer(holistic[:, None], decisions.done.numpy() > 0)[:, 0]
        else:
            z = (holistic - cfg.holistic_mean) / cfg.holistic_std
        short = decisions.response_tokens.numpy() <= cfg.short_response_tokens
        z = np.where(short, cfg.short_response_holistic, z)
        aspect_scores = scores[:, self.aspects]
        if cfg.aspect_shaping == "sigmoid":
            aspect_scores = 1.0 / (1.0 + np.exp(-aspect_scores)) - cfg.avg_clip
        aspects = aspect_scores @ self.multiplier[self.aspects]
        reward = cfg.holistic_weight * z
        if cfg.mode == "weighted_sum":
            reward = reward + aspects
        elif cfg.mode == "hierarchical":
            reward = reward + np.where(z >= cfg.threshold, aspects, 0.0)
        return reward, self.cost_of(scores)

    def state_dict(self) -> dict[str, Any]:
        return {"normalizer": self.normalizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.normalizer.load_state_dict(state["normalizer"])
