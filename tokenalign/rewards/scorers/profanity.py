"""`profanity`: alt-profanity-check's probability that the response is profane, the demo's cost.

A linear model over a vectorizer, on CPU in milliseconds, no model download. It scores the response alone.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from tokenalign.rewards.factory import ScorerConfig
from tokenalign.rewards.registry import SCORERS, NoOptions
from tokenalign.rewards.scorer_base import ScorerBase


@SCORERS.register("profanity", config=NoOptions)
class ProfanityScorer(ScorerBase):
    """alt-profanity-check's probability that the response is profane, in [0, 1] (higher = less safe)."""

    path_example: ClassVar[str | None] = None

    def __init__(self, *, name: str = "profanity") -> None:
        super().__init__(name=name)
        # Imported here: loading its vectorizer and linear model costs about a second.
        from profanity_check import predict_prob

        self._predict_prob = predict_prob

    @classmethod
    def from_config(cls, config: ScorerConfig) -> ProfanityScorer:
        return cls(name=config.resolved_name)

    def _score(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        return np.asarray(self._predict_prob(responses), dtype=np.float32)
