"""Discrete soft actor-critic relative to the base LM: MARA's SAC (src/SAC.py) with π_ref as the prior.

Soft RL maximises E[Σ r] − β·KL(π ‖ prior); MARA's prior is uniform (an entropy bonus with a temperature
tuned to a target entropy), which let the agent collapse onto a few tokens far from the LM (issue 11: 46
nats per response). Here the prior is π_ref, the accept/reject policy that decodes as base sampling, so
the regulariser is the exact KL of the agent's text to the base LM's and the temperature is β
(learners/kl.py: fixed, or adapted to a target KL per response). Per gradient step, with twin critics
Q1, Q2 and their Polyak targets Q̄1, Q̄2:

    V̄(s')      = Σ_a π(a|s')·(min_i Q̄_i(s', a) − β·(log π(a|s') − log π_ref(a|s')))
    y          = r + (1 − d)·γ·V̄(s')
    L_Q        = ½·MSE(Q1(s, a), y) + ½·MSE(Q2(s, a), y)
    L_π        = E_s[Σ_a π(a|s)·(β·(log π(a|s) − log π_ref(a|s)) − min_i Q_i(s, a))]

The targets move by τ once per `update_time` steps, i.e. once per collected episode.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tokenalign.agents.critics import TwinQCritic
from tokenalign.agents.mlp import check_widths
from tokenalign.agents.policy import AcceptRejectPolicy
from tokenalign.buffers.batches import Transitions
from tokenalign.core.parsing import check_bounds
from tokenalign.learners.base import Learner, LearnerContract, adam, gradient_step, read_scalars, seeded
from tokenalign.learners.kl import KLConfig, reference_log_probs
from tokenalign.learners.registry import register


@dataclass(frozen=True)
class SACConfig(KLConfig):
    """Discrete SAC options; defaults are MARA's training script (Mistral-7B, 2:1 reward:cost)."""

    widths: tuple[int, ...] = (1024, 256)  # MARA hidden_dim 1024 → (1024, 1024/4)
    """Hidden widths of the policy and of each Q head."""
    actor_lr: float = 3e-4  # MARA train script
    """Adam learning rate of the policy."""
    critic_lr: float = 3e-4  # MARA train script
    """Adam learning rate of the twin critic."""
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

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", check_widths(self.widths, owner="sac config"))
        self.check_kl()
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")
        check_bounds("learner.params", self, batch_size=(1, "≥"), update_time=(1, "≥"))


def soft_q_target(
    *,
    reward: torch.Tensor,
    done: torch.Tensor,
    next_log_probs: torch.Tensor,
    next_ref_log_probs: torch.Tensor,
    next_q1_target: torch.Tensor,
    next_q2_target: torch.Tensor,
    beta: float,
    gamma: float,
) -> torch.Tensor:
    """y = r + (1 − d)·γ·Σ_a π(a|s')·(min Q̄(s', a) − β·(log π(a|s') − log π_ref(a|s')))."""
    kl_terms = next_log_probs - next_ref_log_probs
    soft_value = (next_log_probs.exp() * (torch.min(next_q1_target, next_q2_target) - beta * kl_terms)).sum(-1)
    return reward + (1.0 - done) * gamma * soft_value


def critic_loss(q1: torch.Tensor, q2: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(½·MSE(Q1(s,a), y), ½·MSE(Q2(s,a), y))."""
    return 0.5 * F.mse_loss(q1, target), 0.5 * F.mse_loss(q2, target)


def actor_loss(
    *, log_probs: torch.Tensor, ref_log_probs: torch.Tensor, q1: torch.Tensor, q2: torch.Tensor, beta: float
) -> torch.Tensor:
    """E_s[Σ_a π(a|s)·(β·(log π(a|s) − log π_ref(a|s)) − min Q(s, a))]."""
    return (log_probs.exp() * (beta * (log_probs - ref_log_probs) - torch.min(q1, q2))).sum(-1).mean()


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
        self, *, state_size: int, config: SACConfig | None = None, device: torch.device | str = "cpu",
        preference_dim: int = 0, seed: int = 0,
    ) -> None:
        config = config or SACConfig()
        super().__init__(state_size=state_size, config=config, device=device, preference_dim=preference_dim,
                         seed=seed)
        shape = dict(state_size=state_size, widths=config.widths, preference_dim=preference_dim)
        with seeded(seed):
            self.policy = AcceptRejectPolicy(**shape).to(self.device)
            self.critic = TwinQCritic(**shape).to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_optimizer = adam(self.policy.parameters(), lr=config.actor_lr)
        self.critic_optimizer = adam(self.critic.parameters(), lr=config.critic_lr)

    def networks(self) -> dict[str, nn.Module]:
        return {"policy": self.policy, "critic": self.critic, "critic_target": self.critic_target}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor": self.actor_optimizer, "critic": self.critic_optimizer}

    def update(self, batch: Transitions) -> dict[str, float]:
        batch = self.check_batch(batch)
        cfg = self.config
        beta = self.kl.value
        action = batch.action.unsqueeze(-1)

        with torch.no_grad():
            next_q1_target, next_q2_target = self.critic_target(batch.next_state)
            target = soft_q_target(
                reward=batch.reward, done=batch.done, next_log_probs=self.policy.log_probs(batch.next_state),
                next_ref_log_probs=reference_log_probs(batch.next_base_logit), next_q1_target=next_q1_target,
                next_q2_target=next_q2_target, beta=beta, gamma=cfg.gamma,
            )
        q1, q2 = (q.gather(-1, action).squeeze(-1) for q in self.critic(batch.state))
        q1_loss, q2_loss = critic_loss(q1, q2, target)
        critic_grad_norm = gradient_step(
            self.critic_optimizer, q1_loss + q2_loss, self.critic.parameters(), max_grad_norm=cfg.max_grad_norm
        )

        log_probs = self.policy.log_probs(batch.state)
        with torch.no_grad():
            q1_pi, q2_pi = self.critic(batch.state)
        pi_loss = actor_loss(log_probs=log_probs, ref_log_probs=reference_log_probs(batch.base_logit), q1=q1_pi,
                             q2=q2_pi, beta=beta)
        actor_grad_norm = gradient_step(
            self.actor_optimizer, pi_loss, self.policy.parameters(), max_grad_norm=cfg.max_grad_norm
        )

        kl_metrics = self.kl_to_base(batch, log_probs)
        # One gradient step stands for 1/update_time of a collected episode.
        self.kl.update(kl_metrics["kl_per_response"], episodes=1.0 / cfg.update_time)
        self.num_updates += 1
        if self.num_updates % cfg.update_time == 0:
            self._polyak_update()
        probs = log_probs.detach().exp()
        return read_scalars({
            "critic_loss": q1_loss + q2_loss,
            "q1_loss": q1_loss,
            "q2_loss": q2_loss,
            "actor_loss": pi_loss,
            "entropy": -(probs * log_probs.detach()).sum(-1).mean(),
            "q1": q1.mean(),
            "q2": q2.mean(),
            "accept_prob": probs[:, 1].mean(),
            "accept_rate": batch.action.float().mean(),
            "reward": batch.reward.mean(),
            "cost": batch.cost.mean(),
            "actor_grad_norm": actor_grad_norm,
            "critic_grad_norm": critic_grad_norm,
            **kl_metrics,
        })

    @torch.no_grad()
    def _polyak_update(self) -> None:
        for target, source in zip(self.critic_target.parameters(), self.critic.parameters()):
            target.lerp_(source, self.config.tau)
