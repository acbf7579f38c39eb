"""PPO-Lagrangian as safe-rlhf (safe_rlhf/algorithms/ppo_lag/trainer.py): PPO under E[episode cost] ≤ d.

A cost critic gives cost advantages Â_c beside the reward advantages Â_r; the policy follows

    Â = (Â_r − λ·Â_c) / (1 + λ)

with λ stepped once per rollout, before the policy update, on −(J_c − d)·λ where J_c is the mean cost of
the last `episode_cost_window_size` episodes (lagrange.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tokenalign.buffers.batches import Transitions
from tokenalign.learners.episodes import Episodes
from tokenalign.learners.lagrange import CostWindow, LagrangeConfig, LagrangeMultiplier
from tokenalign.learners.ppo import PPOConfig, PPOLearner
from tokenalign.learners.registry import register


@dataclass(frozen=True)
class PPOLagrangianConfig(PPOConfig, LagrangeConfig):
    """PPO options plus the cost constraint (safe-rlhf defaults)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_lagrange()


def lagrangian_advantages(
    reward_advantages: torch.Tensor, cost_advantages: torch.Tensor, *, lam: float
) -> torch.Tensor:
    """Â = (Â_r − λ·Â_c) / (1 + λ)."""
    return (reward_advantages - lam * cost_advantages) / (1.0 + lam)


@register("ppo_lagrangian", config=PPOLagrangianConfig)
class PPOLagrangianLearner(PPOLearner):
    """PPO with reward and cost critics and a Lagrange multiplier on the episode cost."""

    signals = ("reward", "cost")

    def __init__(
        self, *, state_size: int, config: PPOLagrangianConfig | None = None, device: torch.device | str = "cpu",
        preference_dim: int = 0, seed: int = 0,
    ) -> None:
        config = config or PPOLagrangianConfig()
        super().__init__(state_size=state_size, config=config, device=device, preference_dim=preference_dim,
                         seed=seed)
        self.multiplier = LagrangeMultiplier(config=config)
        self.cost_window = CostWindow(size=config.episode_cost_window_size)

    def before_update(self, batch: Transitions, episodes: Episodes) -> dict[str, float]:
        self.cost_window.extend(episodes.sum(batch.cost))
        mean_episode_cost = float(self.cost_window.costs.mean())
        lambda_loss = self.multiplier.step(mean_episode_cost)
        return {"lambda": self.multiplier.value, "lambda_loss": lambda_loss, "mean_episode_cost": mean_episode_cost}

    def actor_advantages(self, advantages: dict[str, torch.Tensor]) -> torch.Tensor:
        return lagrangian_advantages(advantages["reward"], advantages["cost"], lam=self.multiplier.value)

    def extra_state(self) -> dict[str, Any]:
        return {"multiplier": self.multiplier.state_dict(), "cost_window": self.cost_window.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.multiplier.load_state_dict(state["multiplier"])
        self.cost_window.load_state_dict(state["cost_window"])
