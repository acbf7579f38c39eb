"""`distinct`: lexical diversity of the response (distinct-2 per response), the Pareto benchmark's second objective.

Repeating phrases lowers it, which is how agents hack VADER on the demo, so the two pull against each other.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from tokenalign.rewards.factory import ScorerConfig
from tokenalign.rewards.registry import SCORERS
from tokenalign.rewards.scorer_base import ScorerBase


@dataclass(frozen=True)
class DistinctOptions:
    """Options of the `distinct` scorer."""

    min_bigrams: int = 8
    """Floor of the denominator, so a two-word answer does not score a perfect 1."""


@SCORERS.register("distinct", config=DistinctOptions)
class DistinctScorer(ScorerBase):
    """Distinct word bigrams of the response over max(its bigrams, `min_bigrams`), in [0, 1] (Li et al. 2016's distinct-2)."""

    path_example: ClassVar[str | None] = None

    def __init__(self, *, name: str = "distinct", min_bigrams: int = 8) -> None:
        super().__init__(name=name)
        self.min_bigrams = min_bigrams

    @classmethod
    def from_config(cls, config: ScorerConfig) -> DistinctScorer:
        return cls(name=config.resolved_name, min_bigrams=config.options.min_bigrams)

    def _score(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        scores = np.empty(len(responses), dtype=np.float32)
        for i, text in enumerate(responses):
            words = text.lower().split()
            bigrams = list(zip(words, words[1:]))
            scores[i] = len(set(bigrams)) / max(len(bigrams), self.min_bigrams)
        return scores
