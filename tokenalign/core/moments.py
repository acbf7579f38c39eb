"""Running moments of a stream of observations, for z-normalisation."""
from __future__ import annotations

from typing import Any

import numpy as np


class RunningMoments:
    """Running mean and variance of each of k columns (Chan et al.'s parallel update), for z-normalisation."""

    def __init__(self, k: int) -> None:
        self.count = 0
        self.mean = np.zeros(k)
        self.m2 = np.zeros(k)

    def update(self, values: np.ndarray) -> None:
        """Add rows (n, k) of new observations."""
        n = len(values)
        if not n:
            return
        batch_mean = values.mean(axis=0)
        batch_m2 = ((values - batch_mean) ** 2).sum(axis=0)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * n / total
        self.m2 = self.m2 + batch_m2 + delta**2 * self.count * n / total
        self.count = total

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation, at least 1e-6 so that z-scores stay finite."""
        return np.maximum(np.sqrt(self.m2 / max(self.count, 1)), 1e-6)

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean.tolist(), "m2": self.m2.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count, self.mean, self.m2 = int(state["count"]), np.array(state["mean"]), np.array(state["m2"])
