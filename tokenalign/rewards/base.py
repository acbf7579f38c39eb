"""The scorer interface: a model that maps (prompt, response) pairs to one float each.

Reward and cost models are both scorers; whether a score is a reward or a cost, and with what weight
it enters the final reward, is the combiner's business (rewards/combine.py), not the scorer's.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from tokenalign.heads.states import ResponseStates


class ScorerError(ValueError):
    """A scorer cannot be built, or was given or returned something it cannot use."""


@runtime_checkable
class Scorer(Protocol):
    """Anything that scores responses: `score(prompts, responses)` returns float32 of shape (n,)."""

    name: str

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """One score per (prompt, response) pair, float32, shape (n,)."""
        ...


@runtime_checkable
class StateScorer(Protocol):
    """A scorer that can read the policy LM's states instead of text (a head fitted on that LM)."""

    name: str
    reads_policy_lm: bool
    """Whether `use_policy_lm` found the head fitted on the policy LM: then `score_states` is what to call."""
    token_level: bool
    """Whether it rewards tokens (`token_rewards`), not only sequences."""

    def use_policy_lm(self, model: Any, tokenizer: Any, *, name: str) -> bool:
        """Read the policy LM's states from now on if fitted on it; whether it was."""
        ...

    def score_states(self, responses: Sequence[ResponseStates]) -> np.ndarray:
        """One score per response from its states."""
        ...

    def token_rewards(self, responses: Sequence[ResponseStates]) -> list[np.ndarray]:
        """Per-token rewards of each response (one per response token)."""
        ...


def checked_scores(values: object, *, n: int, source: str) -> np.ndarray:
    """`values` as float32 of shape (n,), or a ScorerError saying what `source` returned instead."""
    try:
        raw = np.asarray(values)
        if raw.dtype.kind not in "biuf":  # numpy would turn "1.5" into 1.5 without a word
            raise TypeError(f"its elements are {type(raw.flat[0].item()).__name__}, e.g. {raw.flat[0].item()!r}"
                            if raw.size else raw.dtype.name)
        scores = raw.astype(np.float32)
    except (TypeError, ValueError) as err:
        raise ScorerError(
            f"{source} returned {type(values).__name__} that is not a sequence of floats ({err})"
        ) from err
    if scores.shape != (n,):
        raise ScorerError(
            f"{source} returned shape {scores.shape} for {n} responses; return exactly one float per response"
        )
    if not np.isfinite(scores).all():
        bad = np.flatnonzero(~np.isfinite(scores))[:5].tolist()
        raise ScorerError(
            f"{source} returned non-finite scores at positions {bad}; a NaN or inf reward would poison training"
        )
    return scores
