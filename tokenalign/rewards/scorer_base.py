"""ScorerBase: what every scorer kind inherits, so that each kind only implements `_score`."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from tokenalign.rewards.base import ScorerError, checked_scores
from tokenalign.rewards.factory import ScorerConfig


class ScorerBase(ABC):
    """Checks a scorer's inputs and outputs once, so each kind only implements `_score`."""

    def __init__(self, *, name: str) -> None:
        self.name = name

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """One score per (prompt, response) pair, float32, shape (n,)."""
        prompts, responses = list(prompts), list(responses)
        if len(prompts) != len(responses):
            raise ScorerError(
                f"scorer {self.name!r} got {len(prompts)} prompts and {len(responses)} responses; "
                "pass one prompt per response"
            )
        if not responses:
            return np.zeros(0, dtype=np.float32)
        try:
            values = self._score(prompts, responses)
        except ScorerError:
            raise
        except Exception as err:  # a user's or a model's failure: say which scorer, keep the cause chained
            raise ScorerError(f"scorer {self.name!r} raised {type(err).__name__}: {err}") from err
        return checked_scores(values, n=len(responses), source=f"scorer {self.name!r}")

    @classmethod
    def is_token_level(cls, config: ScorerConfig) -> bool:
        """Whether a scorer of this config rewards tokens (its score then reaches training per token, not per sequence)."""
        return False

    @abstractmethod
    def _score(self, prompts: list[str], responses: list[str]) -> np.ndarray | Sequence[float]:
        """Scores for a non-empty batch of equal-length prompt and response lists."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
