"""MARA's sequence-level reward from several scorers, and the reward/cost pair for Lagrangian learners.

    final  = baseline_multiplier · (Σ_k multiplier_k · score_k − baseline)
    reward = baseline_multiplier · (Σ_{k: role=reward} multiplier_k · score_k − baseline_reward)
    cost   = Σ_{k: role=cost} score_k                       (raw: higher = less safe, as safe-rlhf)

`baseline` is a constant, or with `sft_baseline` the same weighted score of the base LM's greedy
response to the same prompt (MARA's sft_as_reward_baseline); `baseline_reward` is then its reward-role
part. Greedy decoding is deterministic, so each prompt's baseline is scored once and cached by prompt id.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tokenalign.rewards.base import Scorer, ScorerError, StateScorer, checked_scores

if TYPE_CHECKING:
    from tokenalign.heads.states import ResponseStates
from tokenalign.rewards.factory import Role, ScorerConfig, make_scorer


def demo_scorers() -> list[ScorerConfig]:
    """MARA's 2:1 setting on the demo's scorers: reward = vader × 2, cost = profanity × −1."""
    return [ScorerConfig(kind="vader", multiplier=2.0), ScorerConfig(kind="profanity", role="cost", multiplier=-1.0)]


@dataclass(frozen=True)
class RewardConfig:
    """How scorers combine into the final reward."""

    scorers: list[ScorerConfig] = field(default_factory=demo_scorers)
    """The reward and cost models, each with its role and multiplier."""
    baseline: float = 0.0
    """Constant subtracted from the weighted score (MARA train script: --reward_baseline 0.0)."""
    sft_baseline: bool = False
    """Subtract the weighted score of the base LM's greedy response instead (MARA: --sft_as_reward_baseline)."""
    baseline_multiplier: float = 1.0
    """Scale of (weighted score − baseline) (MARA train.py default 1.0)."""


@dataclass(frozen=True)
class RewardTerm:
    """A scorer with its role and weight in the final reward."""

    scorer: Scorer
    """The model that scores (prompt, response) pairs."""
    role: Role = "reward"
    """`reward` or `cost`."""
    multiplier: float = 1.0
    """Weight in the final reward."""


@dataclass
class CombinedScores:
    """The scores of n responses; every array has shape (n,) and dtype float32."""

    final: np.ndarray
    """MARA's final reward (all scorers weighted, minus the baseline)."""
    reward: np.ndarray
    """Reward-role scorers weighted, minus their baseline: the reward of Lagrangian learners."""
    cost: np.ndarray
    """Sum of the cost-role scorers' raw scores (zeros without cost scorers)."""
    raw: dict[str, np.ndarray]
    """Each scorer's raw score by scorer name."""
    baseline_raw: dict[str, np.ndarray]
    """With sft_baseline, each scorer's raw score of the base LM's greedy response to the same prompt (else zeros)."""
    token_reward: list[np.ndarray] | None = None
    """With token-level scorers and the responses' states: per response, Σ_k multiplier_k·r_{k,t} for each of its
    tokens (their sum is the token scorers' part of `final`)."""


class RewardCombiner:
    """Scores responses with every term and combines them as MARA does."""

    def __init__(
        self,
        *,
        terms: Sequence[RewardTerm],
        baseline: float = 0.0,
        sft_baseline: bool = False,
        baseline_multiplier: float = 1.0,
    ) -> None:
        if not terms:
            raise ScorerError("a reward needs at least one scorer; the demo uses 'vader' and 'profanity,role=cost'")
        names = [t.scorer.name for t in terms]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ScorerError(f"scorer names must be unique, {duplicates} repeat; give the copies distinct name=...")
        self.terms = list(terms)
        self.baseline = float(baseline)
        self.sft_baseline = sft_baseline
        self.baseline_multiplier = float(baseline_multiplier)
        self._multiplier = np.array([t.multiplier for t in terms], dtype=np.float32)
        self._is_reward = np.array([t.role == "reward" for t in terms])
        self._baseline_cache: dict[int, np.ndarray] = {}

    @classmethod
    def from_config(cls, config: RewardConfig) -> RewardCombiner:
        """Build every scorer of `config`."""
        terms = [RewardTerm(scorer=make_scorer(c), role=c.role, multiplier=c.multiplier) for c in config.scorers]
        return cls(
            terms=terms, baseline=config.baseline, sft_baseline=config.sft_baseline,
            baseline_multiplier=config.baseline_multiplier,
        )

    def use_policy_lm(self, model: Any, tokenizer: Any, *, name: str) -> bool:
        """Let every head fitted on the policy LM read its states; whether any does (decode then keeping them).

        A token head must: its rewards belong to the policy's tokens, which another LM does not share.
        """
        reading = [t.scorer.use_policy_lm(model, tokenizer, name=name) for t in self._state_terms]
        lost = [t.scorer.name for t, reads in zip(self._state_terms, reading) if t.scorer.token_level and not reads]
        if lost:
            raise ScorerError(f"token heads {lost} were not fitted on the policy LM {name!r}: their per-token rewards "
                              "would fall on another tokenizer's tokens; fit them on the policy LM (fit-scorer lm=...)")
        return any(reading)

    @property
    def _state_terms(self) -> list[RewardTerm]:
        return [t for t in self.terms if isinstance(t.scorer, StateScorer)]

    def missing_baselines(self, prompt_ids: Sequence[int] | np.ndarray) -> list[int]:
        """The prompt ids among `prompt_ids` whose greedy baseline response has not been scored yet."""
        if not self.sft_baseline:
            return []
        return [int(p) for p in np.unique(np.asarray(prompt_ids, dtype=np.int64)) if int(p) not in self._baseline_cache]

    def combine(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        *,
        prompt_ids: Sequence[int] | np.ndarray | None = None,
        baseline_responses: Mapping[int, str] | None = None,
        states: Sequence[ResponseStates] | None = None,
    ) -> CombinedScores:
        """Score `responses` to `prompts`; with sft_baseline pass `prompt_ids` and the greedy responses
        of at least the ids `missing_baselines(prompt_ids)` lists, as {prompt_id: response}. With the
        responses' policy-LM `states`, heads that read the policy LM score from them and token heads
        give `token_reward`."""
        baseline_raw = np.zeros((len(self.terms), len(responses)), dtype=np.float32)
        if self.sft_baseline:
            baseline_raw = self._baseline_scores(prompts, prompt_ids, baseline_responses)
            weighted_baseline = self._multiplier[:, None] * baseline_raw
            baseline_all = weighted_baseline.sum(axis=0)
            baseline_reward = weighted_baseline[self._is_reward].sum(axis=0)
        else:
            baseline_all = baseline_reward = np.float32(self.baseline)
        raw = np.stack([self._score_term(t, prompts, responses, states) for t in self.terms])
        weighted = self._multiplier[:, None] * raw
        scale = np.float32(self.baseline_multiplier)
        return CombinedScores(
            final=(scale * (weighted.sum(axis=0) - baseline_all)).astype(np.float32),
            reward=(scale * (weighted[self._is_reward].sum(axis=0) - baseline_reward)).astype(np.float32),
            cost=raw[~self._is_reward].sum(axis=0).astype(np.float32),
            raw={t.scorer.name: raw[k] for k, t in enumerate(self.terms)},
            baseline_raw={t.scorer.name: baseline_raw[k].astype(np.float32) for k, t in enumerate(self.terms)},
            token_reward=self._token_rewards(states),
        )

    def raw_scores(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """(scorers, n) every scorer's raw score of each response, from its text (partial responses too)."""
        return np.stack([self._score_term(t, prompts, responses, None) for t in self.terms])

    @staticmethod
    def _score_term(term: RewardTerm, prompts: Sequence[str], responses: Sequence[str],
                    states: Sequence[ResponseStates] | None) -> np.ndarray:
        scorer = term.scorer
        if states is not None and isinstance(scorer, StateScorer) and scorer.reads_policy_lm:
            return checked_scores(scorer.score_states(states), n=len(responses), source=f"scorer {scorer.name!r}")
        return scorer.score(prompts, responses)

    def _token_rewards(self, states: Sequence[ResponseStates] | None) -> list[np.ndarray] | None:
        token_terms = [t for t in self._state_terms if t.scorer.token_level and t.scorer.reads_policy_lm]
        if states is None or not token_terms:
            return None
        per_term = [[t.multiplier * r for r in t.scorer.token_rewards(states)] for t in token_terms]
        return [np.sum(rewards, axis=0).astype(np.float32) for rewards in zip(*per_term)]

    def _baseline_scores(
        self,
        prompts: Sequence[str],
        prompt_ids: Sequence[int] | np.ndarray | None,
        baseline_responses: Mapping[int, str] | None,
    ) -> np.ndarray:
        """Each term's raw score of each prompt's greedy response, shape (terms, n); scores new ids once."""
        if prompt_ids is None:
            raise ScorerError("sft_baseline needs prompt_ids to find each prompt's greedy baseline response")
        ids = np.asarray(prompt_ids, dtype=np.int64)
        if ids.shape != (len(prompts),):
            raise ScorerError(f"prompt_ids has shape {ids.shape}, expected ({len(prompts)},): one id per response")
        if ids.size == 0:
            return np.zeros((len(self.terms), 0), dtype=np.float32)
        unique, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
        new = [(int(p), int(i)) for p, i in zip(unique, first) if int(p) not in self._baseline_cache]
        if new:
            given = baseline_responses or {}
            absent = [p for p, _ in new if p not in given]
            if absent:
                raise ScorerError(
                    f"no greedy baseline response for prompt ids {absent[:5]}; pass baseline_responses for every id "
                    "that RewardCombiner.missing_baselines(prompt_ids) lists"
                )
            new_prompts = [prompts[i] for _, i in new]
            new_responses = [given[p] for p, _ in new]
            scores = np.stack([t.scorer.score(new_prompts, new_responses) for t in self.terms])
            self._baseline_cache.update({p: scores[:, j] for j, (p, _) in enumerate(new)})
        table = np.stack([self._baseline_cache[int(p)] for p in unique], axis=1)
        return table[:, inverse]
