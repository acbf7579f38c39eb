"""Reward and cost scorers, their combination into MARA's final reward, and per-decision shaping."""
from tokenalign.rewards.base import Scorer, ScorerError
from tokenalign.rewards.combine import CombinedScores, RewardCombiner, RewardConfig, RewardTerm, demo_scorers
from tokenalign.rewards.factory import ScorerConfig, make_scorer, parse_scorer_spec
from tokenalign.rewards.registry import SCORERS, scorer_kinds
from tokenalign.rewards.scorer_base import ScorerBase
from tokenalign.rewards.shaping import ShapingConfig, candidate_logprobs, kl_penalty, mara_kl_penalties

__all__ = [
    "SCORERS",
    "CombinedScores",
    "RewardCombiner",
    "RewardConfig",
    "RewardTerm",
    "Scorer",
    "ScorerBase",
    "ScorerConfig",
    "ScorerError",
    "ShapingConfig",
    "candidate_logprobs",
    "demo_scorers",
    "kl_penalty",
    "make_scorer",
    "parse_scorer_spec",
    "scorer_kinds",
    "mara_kl_penalties",
]
