"""Discrete soft actor-critic as MARA trains its accept/reject agent (MARA src/SAC.py).

Per gradient step, with twin critics Q1, Q2, their Polyak targets Q̄1, Q̄2, the policy π and temperature α:

    y          = r + (1 − d)·γ·Σ_a π(a|s')·(min_i Q̄_i(s', a) − α·log π(a|s'))
    L_Q        = ½·MSE(Q1(s, a), y) + ½·MSE(Q2(s, a), y)
    L_π        = E_s[Σ_a π(a|s)·(α·log π(a|s) − min_i Q_i(s, a))]
    L_α        = E_s[(H(π(·|s)) − H̄)·α]        (H̄ = factor·log|A|, gradient through log α only)

The targets move by τ once per `update_time` steps, i.e. once per collected episode.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tokenalign.agents.critics import TwinQCritic
from tokenalign.agents.mlp import check_widths
from tokenalign.agents.policy import AcceptRejectPolicy
from tokenalign.buffers.schema import Transitions
from tokenalign.learners.base import Learner, LearnerContract, adam, gradient_step, seeded
from tokenalign.learners.registry import register


@dataclass
class SACConfig:
    """Discrete SAC options; defaults are MARA's training script (Mistral-7B, 2:1 reward:cost)."""

    widths: tuple[int, ...] = (1024, 256)  # MARA hidden_dim 1024 → (1024, 1024/4)
    """Hidden widths of the policy and of each Q head."""
    actor_lr: float = 3e-4  # MARA train script
    """Adam learning rate of the policy."""
    critic_lr: float = 3e-4  # MARA train script
    """Adam learning rate of the twin critic."""
    alpha_lr: float = 3e-4  # MARA train script
    """Adam learning rate of log α."""
    alpha_init: float = 0.01  # MARA train script
    """Initial (or, without autotuning, fixed) temperature α."""
    autotune_alpha: bool = True  # MARA train script
    """Tune α towards the target entropy; False keeps α = alpha_init."""
    target_entropy_factor: float = 0.6  # MARA train script, "log" target entropy type
    """Target entropy H̄ = factor·log 2."""
    gamma: float = 0.99  # MARA train script
    """Discount γ along the decision chain."""
    tau: float = 0.005  # MARA train script
    """Polyak factor τ of the target critic."""
    batch_size: int = 1024  # MARA train script
    """Transitions per sampled batch (the trainer samples this many per `update`)."""
    update_time: int = 10  # MARA train script
    """Gradient steps per collected episode; the targets move once per this many steps."""
    max_grad_norm: float = 0.5  # MARA train script
    """Gradient-norm clip for actor and critic."""
    learning_starts_factor: int = 64  # MARA train script
    """Learning starts once the buffer holds more than batch_size × this many transitions."""
    seed: int = 0
    """Seed of network initialization."""

    def __post_init__(self) -> None:
        self.widths = check_widths(self.widths, owner="sac config")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"sac gamma must be in [0, 1], got {self.gamma}")
        if self.alpha_init <= 0.0:
            raise ValueError(f"sac alpha_init must be > 0 (α is trained as exp(log α)), got {self.alpha_init}")
        if self.batch_size < 1 or self.update_time < 1:
            raise ValueError(f"sac batch_size and update_time must be ≥ 1, got {self.batch_size}, {self.update_time}")


def soft_q_target(
    *,
    reward: torch.Tensor,
    done: torch.Tensor,
    next_probs: torch.Tensor,
    next_log_probs: torch.Tensor,
    next_q1_target: torch.Tensor,
    next_q2_target: torch.Tensor,
    alpha: torch.Tensor | float,
    gamma: float,
) -> torch.Tensor:
    """y = r + (1 − d)·γ·Σ_a π(a|s')·(min Q̄(s', a) − α·log π(a|s'))."""
    soft_value = (next_probs * (torch.min(next_q1_target, next_q2_target) - alpha * next_log_probs)).sum(-1)
    return reward + (1.0 - done) * gamma * soft_value


def critic_loss(q1: torch.Tensor, q2: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(½·MSE(Q1(s,a), y), ½·MSE(Q2(s,a), y))."""
    return 0.5 * F.mse_loss(q1, target), 0.5 * F.mse_loss(q2, target)


def actor_loss(
    *, probs: torch.Tensor, log_probs: torch.Tensor, q1: torch.Tensor, q2: torch.Tensor, alpha: torch.Tensor | float
) -> torch.Tensor:
    """E_s[Σ_a π(a|s)·(α·log π(a|s) − min Q(s, a))]."""
    return (probs * (alpha * log_probs - torch.min(q1, q2))).sum(-1).mean()


def temperature_loss(*, entropy: torch.Tensor, target_entropy: float, log_alpha: torch.Tensor) -> torch.Tensor:
    """E_s[(H(π(·|s)) − H̄)·α], the entropy gap detached so only log α learns."""
    return ((entropy - target_entropy).detach() * log_alpha.exp()).mean()


@register("sac", config=SACConfig)
class SACLearner(Learner):
    """MARA's discrete SAC: replay data, one gradient step per `update`."""

    data_mode = "replay"

    @classmethod
    def contract(cls, config: SACConfig) -> LearnerContract:
        return LearnerContract(data_mode="replay", gamma=config.gamma, batch_size=config.batch_size,
                               updates_per_episode=config.update_time,
                               learning_starts=config.batch_size * config.learning_starts_factor)

    def __init__(
        self, *, hidden_size: int, config: SACConfig | None = None, device: torch.device | str = "cpu",
        preference_dim: int = 0,
    ) -> None:
        config = config or SACConfig()
        super().__init__(hidden_size=hidden_size, config=config, device=device, preference_dim=preference_dim)
        shape = dict(hidden_size=hidden_size, widths=config.widths, preference_dim=preference_dim)
        with seeded(config.seed):
            self.policy = AcceptRejectPolicy(**shape).to(self.device)
            self.critic = TwinQCritic(**shape).to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(config.alpha_init), device=self.device))
        self.target_entropy = config.target_entropy_factor * math.log(2)
        self.actor_optimizer = adam(self.policy.parameters(), lr=config.actor_lr)
        self.critic_optimizer = adam(self.critic.parameters(), lr=config.critic_lr)
        self.alpha_optimizer = adam([self.log_alpha], lr=config.alpha_lr)

    def networks(self) -> dict[str, nn.Module]:
        return {"policy": self.policy, "critic": self.critic, "critic_target": self.critic_target}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor": self.actor_optimizer, "critic": self.critic_optimizer, "alpha": self.alpha_optimizer}

    def extra_state(self) -> dict[str, Any]:
        return {"log_alpha": self.log_alpha.detach().clone()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])

    def update(self, batch: Transitions) -> dict[str, float]:
        batch = self.check_batch(batch)
        cfg = self.config
        alpha = self.log_alpha.exp().detach()
        action = batch.action.unsqueeze(-1)

        with torch.no_grad():
            next_log_probs = self.policy.log_probs(batch.next_state)
            next_q1_target, next_q2_target = self.critic_target(batch.next_state)
            target = soft_q_target(
                reward=batch.reward, done=batch.done, next_probs=next_log_probs.exp(), next_log_probs=next_log_probs,
                next_q1_target=next_q1_target, next_q2_target=next_q2_target, alpha=alpha, gamma=cfg.gamma,
            )
        q1, q2 = (q.gather(-1, action).squeeze(-1) for q in self.critic(batch.state))
        q1_loss, q2_loss = critic_loss(q1, q2, target)
        critic_grad_norm = gradient_step(
            self.critic_optimizer, q1_loss + q2_loss, self.critic.parameters(), max_grad_norm=cfg.max_grad_norm
        )

        log_probs = self.policy.log_probs(batch.state)
        probs = log_probs.exp()
        with torch.no_grad():
            q1_pi, q2_pi = self.critic(batch.state)
        pi_loss = actor_loss(probs=probs, log_probs=log_probs, q1=q1_pi, q2=q2_pi, alpha=alpha)
        actor_grad_norm = gradient_step(
            self.actor_optimizer, pi_loss, self.policy.parameters(), max_grad_norm=cfg.max_grad_norm
        )

        entropy = -(probs * log_probs).sum(-1)
        alpha_loss = temperature_loss(entropy=entropy, target_entropy=self.target_entropy, log_alpha=self.log_alpha)
        if cfg.autotune_alpha:
            self.alpha_optimizer.zero_grad()
            alpha_loss.backward()
            self.alpha_optimizer.step()

        self.num_updates += 1
        if self.num_updates % cfg.update_time == 0:
            self._polyak_update()
        return {
            "critic_loss": (q1_loss + q2_loss).item(),
            "q1_loss": q1_loss.item(),
            "q2_loss": q2_loss.item(),
            "actor_loss": pi_loss.item(),
            "alpha_loss": alpha_loss.item(),
            "alpha": self.log_alpha.exp().item(),
            "entropy": entropy.mean().item(),
            "q1": q1.mean().item(),
            "q2": q2.mean().item(),
            "accept_prob": probs[:, 1].mean().item(),
            "accept_rate": batch.action.float().mean().item(),
            "reward": batch.reward.mean().item(),
            "cost": batch.cost.mean().item(),
            "actor_grad_norm": actor_grad_norm.item(),
            "critic_grad_norm": critic_grad_norm.item(),
        }

    @torch.no_grad()
    def _polyak_update(self) -> None:
        for target, source in zip(self.critic_target.parameters(), self.critic.parameters()):
            target.lerp_(source, self.config.tau)
