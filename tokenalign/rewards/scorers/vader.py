"""`vader`: VADER compound sentiment of the response, the demo's reward.

Lexicon rules on CPU in milliseconds, no model download: what lets the embedded demo train end to
end on a laptop. It scores the response alone.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from tokenalign.rewards.factory import ScorerConfig
from tokenalign.rewards.registry import SCORERS, NoOptions
from tokenalign.rewards.scorer_base import ScorerBase


@SCORERS.register("vader", config=NoOptions)
class VaderScorer(ScorerBase):
    """VADER compound sentiment of the response, in [-1, 1] (higher = more positive)."""

    path_example: ClassVar[str | None] = None

    def __init__(self, *, name: str = "vader") -> None:
        super().__init__(name=name)
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._analyzer = SentimentIntensityAnalyzer()

    @classmethod
    def from_config(cls, config: ScorerConfig) -> VaderScorer:
        return cls(name=config.resolved_name)

    def _score(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        # VADER's lexicon rules work one string at a time; there is no batched form to call.
        return np.array([self._analyzer.polarity_scores(text)["compound"] for text in responses], dtype=np.float32)
