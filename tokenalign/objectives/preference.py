"""`preference`: preference-conditioned multi-objective rewards (RiC; MORL's linear scalarisation).

Each episode gets weights w on the probability simplex, drawn by the rollout actor and stored with it;
the agent sees [hidden state ; w], and the reward is the w-weighted sum of the normalised objectives:

    v_i = multiplier_i · score_i           (so a cost-role scorer with multiplier −1 is maximised as −cost)
    ẑ_i = (v_i − μ_i)/σ_i                  μ, σ recorded from the run's own episodes
    R   = Σ_i w_i·ẑ_i

At inference the user picks w (`tokenalign eval --preference 0.3,0.7`). RiC samples w from an 11-point
grid w₁ ∈ {0, 0.1, …, 1} for two objectives; MORL commonly from a flat Dirichlet. With fixed `weights`
the objective is MORLHF's: one unconditioned agent per scalarisation, the same normalised sum.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from tokenalign.buffers.batches import Decisions
from tokenalign.objectives.base import Objective, register
from tokenalign.objectives.normalizer import EpisodeNormalizer

RIC_GRID = np.round(np.linspace(0.0, 1.0, 11), 1)  # RiC: w₁ ∈ {0, 0.1, ..., 1}


@dataclass(frozen=True)
class PreferenceConfig:
    """RiC / MORL options."""

    objectives: list[str] = field(default_factory=list)
    """Scorer names that are the objectives, in w's order; empty = every scorer of the reward section."""
    sampling: Literal["grid", "dirichlet"] = "grid"  # RiC
    """How rollout actors draw w: RiC's 11-point grid (two objectives), or a Dirichlet."""
    dirichlet_alpha: float = 1.0
    """Concentration of the Dirichlet (1 = uniform on the simplex)."""
    normalize: bool = True  # RiC normalises each reward
    """z-normalise each objective with statistics recorded from the run's own episodes."""
    weights: list[float] = field(default_factory=list)
    """Fixed w for every episode (MORLHF: an unconditioned agent per weight); empty = w drawn per episode and
    seen by the agent."""

    def __post_init__(self) -> None:
        if self.dirichlet_alpha <= 0:
            raise ValueError(f"dirichlet_alpha must be > 0, got {self.dirichlet_alpha}")
        if self.weights and (min(self.weights) < 0 or not sum(self.weights) > 0):
            raise ValueError(f"weights must be non-negative with a positive sum, got {self.weights}")


@register("preference", config=PreferenceConfig)
class PreferenceObjective(Objective):
    """See the module docstring."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        cfg: PreferenceConfig = self.config
        names = cfg.objectives or self.scorers
        self.columns = np.array([self.scorer_index(n, what="objectives") for n in names], dtype=np.int64)
        if len(self.columns) < 2:
            raise ValueError(f"the preference objective needs at least two objectives, got {list(names)}")
        if cfg.weights and len(cfg.weights) != len(self.columns):
            raise ValueError(f"objective.params.weights has {len(cfg.weights)} weights for {len(self.columns)} "
                             f"objectives {list(names)}")
        self.fixed = np.asarray(cfg.weights, dtype=np.float64) / sum(cfg.weights) if cfg.weights else None
        if self.fixed is None and cfg.sampling == "grid" and len(self.columns) != 2:
            raise ValueError(f"objective.params.sampling=grid is RiC's grid for two objectives, this run has "
                             f"{len(self.columns)}; use sampling=dirichlet")
        self.normalizer = EpisodeNormalizer(len(self.columns))

    @property
    def preference_dim(self) -> int:
        return 0 if self.fixed is not None else len(self.columns)

    def sample_preferences(self, n: int, rng: np.random.Generator) -> np.ndarray | None:
        cfg: PreferenceConfig = self.config
        if self.fixed is not None:
            return None
        if cfg.sampling == "grid":
            w1 = rng.choice(RIC_GRID, size=n)
            return np.stack([w1, 1.0 - w1], axis=1).astype(np.float32)
        return rng.dirichlet(np.full(self.preference_dim, cfg.dirichlet_alpha), size=n).astype(np.float32)

    def objective_values(self, scores: np.ndarray) -> np.ndarray:
        """v_i = multiplier_i·score_i of each objective, (B, objectives)."""
        return scores[:, self.columns] * self.multiplier[self.columns]

    def episode_values(self, scores: np.ndarray, decisions: Decisions) -> tuple[np.ndarray, np.ndarray]:
        values = self.objective_values(scores)
        if self.config.normalize:
            values = self.normalizer(values, decisions.done.numpy() > 0)
        w = self.fixed if self.fixed is not None else decisions.preference.double().numpy()
        reward = (values * w).sum(axis=1)
        return reward, self.cost_of(scores)

    def state_dict(self) -> dict[str, Any]:
        return {"normalizer": self.normalizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.normalizer.load_state_dict(state["normalizer"])
