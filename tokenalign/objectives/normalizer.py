"""Z-normalisation of episode scores with statistics recorded from the run's own episodes."""
from __future__ import annotations

from typing import Any

import numpy as np

from tokenalign.core.moments import RunningMoments


class EpisodeNormalizer:
    """ẑ = (x − μ)/σ per column, μ and σ over every episode seen so far, each counted once when it finishes."""

    def __init__(self, columns: int) -> None:
        self.moments = RunningMoments(columns)

    def __call__(self, values: np.ndarray, finished: np.ndarray) -> np.ndarray:
        """Record the rows whose episode ends here (`finished`, bool (B,)), then normalise every row (B, columns)."""
        self.moments.update(values[finished])
        if self.moments.count < 2:  # nothing to estimate a spread from yet: leave the values as they are
            return values
        return (values - self.moments.mean) / self.moments.std

    def state_dict(self) -> dict[str, Any]:
        return self.moments.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.moments.load_state_dict(state)
