"""The KL to the base LM that every learner's objective carries, and Ziegler et al.'s adaptive β.

The agent's accept logit is π_ref's plus a residual (agents/policy.py), and π_ref decodes exactly as base
sampling, so the KL of the agent's text to the base LM's is a sum over decisions of Bernoulli KLs to
π_ref's, and the log-ratio of a response is a sum of per-decision log-ratios log π(a|s) − log π_ref(a|s).
Each learner puts them where its literature does: PPO the per-token −β·log(π/π_ref) into the reward
(InstructGPT), RLOO the sequence form into the return (HC-RLHF), SAC π_ref in place of the uniform prior of
soft RL (its temperature α is β).

β is fixed (`kl_target` None) or adapted towards a target KL per response by Ziegler et al. (2019)'s
proportional controller: e = clip(KL/target − 1, ±0.2), β ← β·(1 + e·n/horizon) after n episodes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

PROPORTIONAL_CLIP = 0.2  # Ziegler et al. 2019


@dataclass(frozen=True)
class KLConfig:
    """The KL-to-base-LM term of a learner's objective (a mixin of every learner's config)."""

    kl_coef: float = 0.02  # InstructGPT (Ouyang et al. 2022); the demo's 0.3: benchmarks/results/demo_run/README.md
    """β: weight of KL(π ‖ π_ref) to the base LM; the starting value when kl_target is set."""
    kl_target: float | None = None
    """Target KL per response in nats; None keeps β fixed, a value adapts β towards it (Ziegler et al. 2019)."""
    kl_horizon: float = 10000.0  # Ziegler et al. 2019
    """Episodes over which the controller corrects a KL error (Ziegler et al. 2019's horizon)."""

    def check_kl(self) -> None:
        if self.kl_coef < 0.0:
            raise ValueError(f"kl_coef (β) must be ≥ 0, got {self.kl_coef}")
        if self.kl_target is not None and self.kl_target <= 0.0:
            raise ValueError(f"kl_target must be a positive KL per response in nats (or null for a fixed β), "
                             f"got {self.kl_target}")
        if self.kl_horizon <= 0.0:
            raise ValueError(f"kl_horizon must be > 0 episodes, got {self.kl_horizon}")


class KLController:
    """β, fixed or adapted towards `kl_target` after each measured KL per response."""

    def __init__(self, *, config: KLConfig) -> None:
        self.config = config
        self.value = float(config.kl_coef)

    def update(self, kl_per_response: float | torch.Tensor, *, episodes: float) -> None:
        """Move β after `episodes` episodes whose KL per response was measured as `kl_per_response` (read from
        the device only when β adapts)."""
        target = self.config.kl_target
        if target is None:
            return
        error = min(max(float(kl_per_response) / target - 1.0, -PROPORTIONAL_CLIP), PROPORTIONAL_CLIP)
        self.value *= 1.0 + error * episodes / self.config.kl_horizon

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


def reference_log_probs(base_logit: torch.Tensor) -> torch.Tensor:
    """log π_ref(·|s), shape (..., 2) (index 1 = accept), from π_ref's accept logits."""
    return torch.stack([F.logsigmoid(-base_logit), F.logsigmoid(base_logit)], dim=-1)


def decision_kl(log_probs: torch.Tensor, ref_log_probs: torch.Tensor) -> torch.Tensor:
    """KL(π(·|s) ‖ π_ref(·|s)) = Σ_a π(a|s)·(log π(a|s) − log π_ref(a|s)), shape (...,)."""
    return (log_probs.exp() * (log_probs - ref_log_probs)).sum(-1)


def action_log_ratio(logp: torch.Tensor, action: torch.Tensor, base_logit: torch.Tensor) -> torch.Tensor:
    """log π(a|s) − log π_ref(a|s) of taken actions with log-probabilities `logp`: summed over a token's
    decisions, the token's log π/q (InstructGPT's per-token KL estimate)."""
    return logp - reference_log_probs(base_logit).gather(-1, action.unsqueeze(-1)).squeeze(-1)


def kl_per_response(kl: torch.Tensor, episode_decisions: torch.Tensor) -> torch.Tensor:
    """KL per response from per-decision KLs of rows drawn uniformly from decisions: mean(KL)/mean(1/L).

    A row of an episode with L decisions is drawn with probability ∝ L, so mean(KL) is the KL per decision
    and 1/mean(1/L) the mean decisions per episode; for whole episodes this is exactly Σ KL / episodes.
    """
    return (kl.double().mean() / (1.0 / episode_decisions.double().clamp(min=1)).mean()).float()
