"""The Lagrange multiplier λ of a cost constraint J_c ≤ d, shared by PPO-Lagrangian and RLOO-Lagrangian.

As safe-rlhf's ppo_lag trainer: λ = exp(log λ), trained by SGD on the loss −(J_c − d)·λ so that λ grows
while the constraint is violated and shrinks otherwise, with log λ clamped to log(lambda_max). J_c is
estimated from a window of the most recent episode costs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class LagrangeConfig:
    """Options of the cost constraint; PPO-Lagrangian defaults are safe-rlhf's."""

    threshold: float = 0.0  # safe-rlhf
    """d: the constraint is E[episode cost] ≤ d."""
    lambda_init: float = 1.0  # safe-rlhf
    """λ₀, the initial multiplier (must be > 0: λ is trained in log space)."""
    lambda_lr: float = 0.1  # safe-rlhf
    """SGD learning rate on log λ."""
    lambda_max: float | None = 5.0  # safe-rlhf ppo-lag script
    """Upper clamp of λ; None leaves it unbounded."""
    lambda_update_delay_steps: int = 0  # safe-rlhf
    """Updates before λ starts to move."""
    episode_cost_window_size: int = 128  # safe-rlhf
    """How many recent episode costs estimate J_c."""

    def check_lagrange(self) -> None:
        """Raise one ValueError naming the first invalid constraint option."""
        if self.lambda_init <= 0:
            raise ValueError(f"lambda_init must be > 0 (λ is trained as exp(log λ)), got {self.lambda_init}")
        if self.lambda_max is not None and self.lambda_max < self.lambda_init:
            raise ValueError(f"lambda_max must be ≥ learner.params.lambda_init ({self.lambda_init}) or null, got {self.lambda_max}")
        if self.episode_cost_window_size < 1:
            raise ValueError(f"episode_cost_window_size must be ≥ 1, got {self.episode_cost_window_size}")


class CostWindow:
    """The most recent `size` episode costs, oldest first."""

    def __init__(self, *, size: int) -> None:
        self.size = size
        self.costs = torch.zeros(0, device="cpu")  # a host-side window: read once per update, never on the GPU

    def extend(self, costs: torch.Tensor) -> None:
        self.costs = torch.cat([self.costs, costs.detach().float().cpu()])[-self.size :]

    def state_dict(self) -> dict[str, Any]:
        return {"costs": self.costs.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.costs = state["costs"].clone()


class LagrangeMultiplier:
    """λ for one constraint: `step(J_c)` moves it by SGD on −(J_c − d)·λ."""

    def __init__(self, *, config: LagrangeConfig) -> None:
        self.threshold = config.threshold
        self.delay = config.lambda_update_delay_steps
        self.log_lambda_max = math.log(config.lambda_max) if config.lambda_max is not None else None
        self.log_lambda = torch.nn.Parameter(torch.tensor(math.log(config.lambda_init), device="cpu"))  # a host scalar
        self.optimizer = torch.optim.SGD([self.log_lambda], lr=config.lambda_lr)
        self.steps = 0

    @property
    def value(self) -> float:
        """λ = exp(log λ)."""
        return float(self.log_lambda.detach().exp())

    def step(self, cost_estimate: float) -> float:
        """One SGD step on the multiplier loss for the estimate J_c; returns the loss (0 while delayed)."""
        self.steps += 1
        if self.steps <= self.delay:
            return 0.0
        lambda_loss = -(cost_estimate - self.threshold) * self.log_lambda.exp()
        self.optimizer.zero_grad()
        lambda_loss.backward()
        self.optimizer.step()
        if self.log_lambda_max is not None:
            with torch.no_grad():
                self.log_lambda.clamp_(max=self.log_lambda_max)
        return float(lambda_loss.detach())

    def state_dict(self) -> dict[str, Any]:
        return {
            "log_lambda": self.log_lambda.detach().clone(),
            "optimizer": self.optimizer.state_dict(),
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.log_lambda.copy_(state["log_lambda"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = state["steps"]
