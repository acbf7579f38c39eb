"""`weighted` and `lagrangian`: MARA's combined reward, and the reward/cost split of safe-rlhf's Lagrangian.

    weighted     R = baseline_multiplier · (Σ_k multiplier_k·score_k − baseline)
    lagrangian   R = baseline_multiplier · (Σ_{k: role=reward} multiplier_k·score_k − baseline_reward)
    both         C = Σ_{k: role=cost} score_k                 (raw: higher = less safe, as safe-rlhf)

`baseline` is `reward.baseline`, or with `reward.sft_baseline` the same weighted sum of the scores of the
base LM's greedy response to the prompt (MARA's sft_as_reward_baseline), recorded with each episode.
These are exactly `RewardCombiner`'s final and reward (tested equal), now computed where the learner samples.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tokenalign.buffers.batches import Decisions
from tokenalign.objectives.base import Objective, register


@dataclass(frozen=True)
class WeightedConfig:
    """No options of its own: multipliers and baselines come from the `reward` section (MARA's train script)."""


@register("weighted", config=WeightedConfig)
class WeightedObjective(Objective):
    """MARA's final reward, costs folded in through their multipliers; the demo's default."""

    reward_roles_only = False

    def linear_weights(self) -> np.ndarray:
        mask = self.is_reward if self.reward_roles_only else np.ones_like(self.is_reward)
        return self.reward.baseline_multiplier * self.multiplier * mask

    def episode_values(self, scores: np.ndarray, decisions: Decisions) -> tuple[np.ndarray, np.ndarray]:
        mask = self.is_reward if self.reward_roles_only else np.ones_like(self.is_reward)
        weights = self.multiplier * mask
        if self.reward.sft_baseline:
            baseline = decisions.baseline_scores.double().numpy() @ weights
        else:
            baseline = self.reward.baseline
        reward = self.reward.baseline_multiplier * (scores @ weights - baseline)
        return reward, self.cost_of(scores)


@dataclass(frozen=True)
class LagrangianConfig:
    """No options of its own: reward multipliers come from the `reward` section, the threshold from the learner."""


@register("lagrangian", config=LagrangianConfig)
class LagrangianObjective(WeightedObjective):
    """Reward-role scorers only in the reward; the cost is left to the learner's Lagrange multiplier."""

    reward_roles_only = True
