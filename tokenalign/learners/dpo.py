"""DPO on the accept/reject agent, and HC-RLHF's adaptive-margin variant, straight from preference pairs.

The agent is π_ref plus a residual, so for a response y its log-ratio log π(y) − log π_ref(y) is a sum over
the decisions that emit y (learners/offline_batches.py, envs/teacher_forcing.py): no reward model, rollout or critic.
With h = log-ratio(chosen) − log-ratio(rejected) (Rafailov et al. 2023's implicit reward margin over β):

    dpo              L = −log σ(β·h)
    adaptive_margin  L = −log σ(β·[h − clamp(h_unpref, m_min, m_max)])      (HC-RLHF's dpo_pop_fixed(_ema))

HC-RLHF takes h_unpref from a second, less preferred pair of a preference-over-preference dataset, under
an EMA copy of the policy (τ 0.99) or the detached current one. Pair datasets carry no such second pair,
so here h_unpref is the same pair's margin under the EMA copy (or detached policy): the margin the policy
already reached, clamped, which the loss asks it to exceed. β is `kl_coef`, DPO's only KL term.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from tokenalign.agents.mlp import check_widths
from tokenalign.agents.policy import AcceptRejectPolicy, decision_log_probs
from tokenalign.core.parsing import check_bounds
from tokenalign.learners.base import Learner, LearnerContract, adam, gradient_step, read_scalars, seeded
from tokenalign.learners.kl import KLConfig
from tokenalign.learners.offline_batches import PairBatch, Responses
from tokenalign.learners.registry import register


def dpo_loss(h: torch.Tensor, *, beta: float) -> torch.Tensor:
    """Mean −log σ(β·h) over pairs."""
    return -F.logsigmoid(beta * h).mean()


def adaptive_margin_loss(h: torch.Tensor, h_unpref: torch.Tensor, *, beta: float, margin_min: float,
                         margin_max: float) -> torch.Tensor:
    """Mean −log σ(β·[h − clamp(h_unpref, m_min, m_max)]) over pairs; h_unpref carries no gradient."""
    return -F.logsigmoid(beta * (h - h_unpref.detach().clamp(margin_min, margin_max))).mean()


@dataclass(frozen=True)
class DPOConfig(KLConfig):
    """DPO options: β is kl_coef; margins and EMA are HC-RLHF's, optimizer sized for the agent MLP."""

    kl_coef: float = 0.1  # DPO's β (Rafailov et al. 2023); HC-RLHF's scripts use 0.02
    """β: scale of the implicit reward β·log(π/π_ref), DPO's only KL term."""
    loss: Literal["dpo", "adaptive_margin"] = "dpo"
    """dpo, or HC-RLHF's adaptive margin (module docstring)."""
    margin_min: float = 0.0  # HC-RLHF
    """Lower clamp of the adaptive margin."""
    margin_max: float = 10.0  # HC-RLHF
    """Upper clamp of the adaptive margin."""
    margin_policy: Literal["ema", "detached"] = "ema"  # HC-RLHF dpo_pop_fixed_ema
    """Where the adaptive margin's h_unpref comes from: an EMA copy of the policy or the detached policy."""
    ema_tau: float = 0.99  # HC-RLHF
    """EMA copy ← τ·EMA + (1 − τ)·policy after each update."""
    widths: tuple[int, ...] = (1024, 256)  # MARA agent
    """Hidden widths of the policy."""
    lr: float = 1e-3  # the actor_lr of PPO's demo (2026-11)
    """Adam learning rate of the policy."""
    batch_size: int = 32
    """Preference pairs per update."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip of the policy."""

    def __post_init__(self) -> None:
        self.check_kl()
        check_widths(self.widths, owner="dpo")
        if self.kl_target is not None:
            raise ValueError("kl_target must be null for dpo, which has no KL measurement to adapt β to (β is kl_coef)")
        check_bounds("learner.params", self, batch_size=(1, "≥"), lr=(0, ">"), ema_tau=(0, "≥"))
        if self.ema_tau >= 1.0:
            raise ValueError(f"ema_tau must be < 1, got {self.ema_tau}")
        if self.margin_min > self.margin_max:
            raise ValueError(f"margin_min ({self.margin_min}) exceeds learner.params.margin_max ({self.margin_max})")


@register("dpo", config=DPOConfig)
class DPO(Learner):
    """See the module docstring."""

    data_mode = "pairs"

    @classmethod
    def contract(cls, config: DPOConfig) -> LearnerContract:
        return LearnerContract(data_mode="pairs", gamma=1.0, batch_size=config.batch_size)

    def __init__(self, *, state_size: int, config: DPOConfig, device: torch.device | str = "cpu",
                 preference_dim: int = 0, seed: int = 0) -> None:
        super().__init__(state_size=state_size, config=config, device=device, preference_dim=preference_dim,
                         seed=seed)
        if preference_dim:
            raise ValueError("dpo learns one agent from pairs; a preference-conditioned objective has no pairs to give")
        with seeded(seed):
            self.policy = AcceptRejectPolicy(state_size=state_size, widths=config.widths).to(self.device)
        self.ema = copy.deepcopy(self.policy).requires_grad_(False)
        self.optimizer = adam(self.policy.parameters(), lr=config.lr)

    def networks(self) -> dict[str, nn.Module]:
        return {"policy": self.policy, "ema": self.ema}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"policy": self.optimizer}

    def policy_copies(self) -> list[nn.Module]:
        return [self.ema]

    def log_ratio(self, policy: AcceptRejectPolicy, side: Responses, size: int) -> torch.Tensor:
        """(size,) log π(y) − log π_ref(y) of each pair's response on this side: a sum over its decisions."""
        logit = policy(side.observation)[..., 1]
        per_decision = decision_log_probs(logit, side.action) - decision_log_probs(side.observation[:, -1], side.action)
        return torch.zeros(size, dtype=per_decision.dtype, device=per_decision.device).index_add(0, side.response, per_decision)

    def margin(self, policy: AcceptRejectPolicy, batch: PairBatch) -> torch.Tensor:
        """h = log-ratio(chosen) − log-ratio(rejected) of each pair."""
        return self.log_ratio(policy, batch.chosen, batch.size) - self.log_ratio(policy, batch.rejected, batch.size)

    def update(self, batch: PairBatch) -> dict[str, float]:
        c = self.config
        batch = batch.to(self.device)
        chosen = self.log_ratio(self.policy, batch.chosen, batch.size)
        h = chosen - self.log_ratio(self.policy, batch.rejected, batch.size)
        if c.loss == "dpo":
            loss = dpo_loss(h, beta=c.kl_coef)
        else:
            with torch.no_grad():
                h_unpref = self.margin(self.ema, batch) if c.margin_policy == "ema" else h.detach()
            loss = adaptive_margin_loss(h, h_unpref, beta=c.kl_coef, margin_min=c.margin_min, margin_max=c.margin_max)
        grad_norm = gradient_step(self.optimizer, loss, self.policy.parameters(), max_grad_norm=c.max_grad_norm)
        with torch.no_grad():
            for target, source in zip(self.ema.parameters(), self.policy.parameters()):
                target.lerp_(source, 1.0 - c.ema_tau)
        self.num_updates += 1
        h = h.detach()
        return read_scalars({"loss": loss, "accuracy": (h > 0).float().mean(), "margin": h.mean(),
                             "implied_reward_chosen": c.kl_coef * chosen.detach().mean(),
                             "grad_norm": grad_norm, "kl_coef": c.kl_coef})
