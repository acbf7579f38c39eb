"""The demo's lexicon-based scorers: VADER sentiment (reward), alt-profanity-check (cost), lexical diversity.

All run on CPU in milliseconds and need no model download, which is what lets the embedded demo
train end to end on a laptop. They score the response alone.
"""
from __future__ import annotations

import numpy as np

from tokenalign.rewards.base import ScorerBase


class VaderScorer(ScorerBase):
    """VADER compound sentiment of the response, in [-1, 1] (higher = more positive)."""

    def __init__(self, *, name: str = "vader") -> None:
        super().__init__(name=name)
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._analyzer = SentimentIntensityAnalyzer()

    def _score(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        # VADER's lexicon rules work one string at a time; there is no batched form to call.
        return np.array([self._analyzer.polarity_scores(text)["compound"] for text in responses], dtype=np.float32)


class ProfanityScorer(ScorerBase):
    """alt-profanity-check's probability that the response is profane, in [0, 1] (higher = less safe)."""

    def __init__(self, *, name: str = "profanity") -> None:
        super().__init__(name=name)
        # Imported here: loading its vectorizer and linear model costs about a second.
        from profanity_check import predict_prob

        self._predict_prob = predict_prob

    def _score(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        return np.asarray(self._predict_prob(responses), dtype=np.float32)


class DistinctScorer(ScorerBase):
    """Lexical diversity of the response: its distinct word bigrams over max(its bigrams, `min_bigrams`), in [0, 1].

    The distinct-2 of Li et al. (2016) per response. Repeating phrases lowers it, which is how agents hack
    VADER on the demo, so the two pull against each other (the Pareto benchmark's second objective). The
    floor of `min_bigrams` keeps a two-word answer from scoring a perfect 1.
    """

    def __init__(self, *, name: str = "distinct", min_bigrams: int = 8) -> None:
        super().__init__(name=name)
        self.min_bigrams = min_bigrams

    def _score(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        scores = np.empty(len(responses), dtype=np.float32)
        for i, text in enumerate(responses):
            words = text.lower().split()
            bigrams = list(zip(words, words[1:]))
            scores[i] = len(set(bigrams)) / max(len(bigrams), self.min_bigrams)
        return scores
