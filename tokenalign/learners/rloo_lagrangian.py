"""REINFORCE with a leave-one-out baseline under a high-confidence cost constraint, as HC-RLHF
(UMass-SCALAR-Lab/HC-RLHF: safe_rlhf/algorithms/reinforce_lag/trainer.py).

Per episode i of a rollout (k episodes per prompt), with R_i = clip(Σ_t r_t, ±50), c_i = Σ_t c_t and
log π_old/π_ref summed over the episode's decisions (its response's log-ratio to the base LM, learners/kl.py):

    λ step     loss −(mean(c) + κ·std(c) − d)·λ over the window of recent episode costs (confidence.py)
    c̃_i        = c_i + κ'·(c_i² − 2c_i·μ̂)/(2σ̂)                 so the gradient follows the bound
    G_i        = R_i − β·Σ_t log(π_old/π_ref)(a_t|s_t) − λ·c̃_i   the net return (HC-RLHF's sequence KL)
    L_i        = Σ_t log π(a_t|s_t)                              the episode's log-likelihood
    loss       = −mean_prompts Σ_i (G_i − mean_j G_j)·L_i / (k − 1)

Σ_i (G_i − mean_j G_j)/(k − 1) is the leave-one-out baseline; a prompt with a single episode uses the
running mean b of all net returns seen instead: −(G_i − b)·L_i. No ratio, no clipping: one gradient
step per rollout.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tokenalign.agents.mlp import check_widths
from tokenalign.agents.policy import AcceptRejectPolicy
from tokenalign.buffers.batches import Transitions
from tokenalign.core.parsing import check_bounds
from tokenalign.learners.base import Learner, LearnerContract, adam, approx_kl, gradient_step, read_scalars, seeded
from tokenalign.learners.confidence import cost_surrogate, kappa, upper_bound
from tokenalign.learners.episodes import Episodes
from tokenalign.learners.kl import KLConfig, action_log_ratio
from tokenalign.learners.lagrange import CostWindow, LagrangeConfig, LagrangeMultiplier
from tokenalign.learners.registry import register


@dataclass(frozen=True)
class RLOOLagrangianConfig(LagrangeConfig, KLConfig):
    """REINFORCE-RLOO-Lagrangian options; defaults are HC-RLHF's reinforce_lag script."""

    widths: tuple[int, ...] = (1024, 256)  # MARA agent
    """Hidden widths of the policy."""
    actor_lr: float = 3e-4  # MARA train script (agent MLP)
    """Adam learning rate of the policy."""
    samples_per_prompt: int = 2  # HC-RLHF RLOO runs
    """k, episodes the trainer collects per prompt (1 falls back to the running-mean baseline)."""
    prompts_per_update: int = 64  # HC-RLHF script: per_device_prompt_batch_size
    """Prompts the trainer rolls out per `update`."""
    clip_range_score: float = 50.0  # HC-RLHF script
    """Episode rewards R are clipped to ±this."""
    max_grad_norm: float = 5.0  # HC-RLHF script
    """Gradient-norm clip of the policy."""
    fail_prob: float = 0.1  # HC-RLHF
    """δ: the bound holds with probability 1 − δ."""
    safety_dataset_size: int = 1000  # HC-RLHF
    """m, the size of the held-out safety set in κ."""
    students_c1: float = 1.0  # HC-RLHF
    """C1, weight of the in-sample Student-t term of κ (0 with students_c2 = 0: plain Lagrangian)."""
    students_c2: float = 1.0  # HC-RLHF
    """C2, weight of the safety-set Student-t term of κ."""
    lambda_lr: float = 0.01  # HC-RLHF script
    """SGD learning rate on log λ."""
    lambda_max: float | None = 5.0  # safe-rlhf script; HC-RLHF's 1e6 lets one log-λ step (∝ λ) fall to λ ≈ 0
    """Upper clamp of λ; None leaves it unbounded."""
    episode_cost_window_size: int = 256  # HC-RLHF script
    """How many recent episode costs estimate the bound."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", check_widths(self.widths, owner="rloo_lagrangian config"))
        self.check_kl()
        self.check_lagrange()
        if not 0.0 < self.fail_prob < 1.0:
            raise ValueError(f"fail_prob δ must be in (0, 1), got {self.fail_prob}")
        check_bounds("learner.params", self, samples_per_prompt=(1, "≥"), prompts_per_update=(1, "≥"))


def rloo_loss(
    net_returns: torch.Tensor, log_likelihoods: torch.Tensor, prompt_ids: torch.Tensor, *, baseline: float
) -> torch.Tensor:
    """−mean over prompts of Σ_i (G_i − mean_j G_j)·L_i/(k − 1); single-episode prompts use −(G_i − b)·L_i."""
    _, group, group_size = torch.unique(prompt_ids, return_inverse=True, return_counts=True)
    group_mean = torch.zeros(len(group_size), dtype=net_returns.dtype, device=net_returns.device)
    group_mean = group_mean.index_add(0, group, net_returns) / group_size
    k = group_size[group]
    advantage = torch.where(
        k > 1, (net_returns - group_mean[group]) / (k - 1).clamp(min=1), net_returns - baseline
    )
    return -(advantage.detach() * log_likelihoods).sum() / len(group_size)


@register("rloo_lagrangian", config=RLOOLagrangianConfig)
class RLOOLagrangianLearner(Learner):
    """HC-RLHF's REINFORCE-RLOO with a high-confidence Lagrangian cost constraint."""

    data_mode = "on_policy"

    @classmethod
    def contract(cls, config: RLOOLagrangianConfig) -> LearnerContract:
        # HC-RLHF's sequence reward is undiscounted: γ = 1 along the chain.
        return LearnerContract(data_mode="on_policy", gamma=1.0, signals=("reward", "cost"),
                               group_size=config.samples_per_prompt, groups_per_update=config.prompts_per_update)

    def __init__(
        self, *, state_size: int, config: RLOOLagrangianConfig | None = None, device: torch.device | str = "cpu",
        preference_dim: int = 0, seed: int = 0,
    ) -> None:
        config = config or RLOOLagrangianConfig()
        super().__init__(state_size=state_size, config=config, device=device, preference_dim=preference_dim,
                         seed=seed)
        with seeded(seed):
            self.policy = AcceptRejectPolicy(state_size=state_size, widths=config.widths,
                                             preference_dim=preference_dim).to(self.device)
        self.actor_optimizer = adam(self.policy.parameters(), lr=config.actor_lr)
        self.multiplier = LagrangeMultiplier(config=config)
        self.cost_window = CostWindow(size=config.episode_cost_window_size)
        self.baseline = 0.0
        self.returns_seen = 0

    def networks(self) -> dict[str, nn.Module]:
        return {"policy": self.policy}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor": self.actor_optimizer}

    def extra_state(self) -> dict[str, Any]:
        return {
            "multiplier": self.multiplier.state_dict(),
            "cost_window": self.cost_window.state_dict(),
            "baseline": self.baseline,
            "returns_seen": self.returns_seen,
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.multiplier.load_state_dict(state["multiplier"])
        self.cost_window.load_state_dict(state["cost_window"])
        self.baseline = state["baseline"]
        self.returns_seen = state["returns_seen"]

    def _kappa(self, n: int) -> float:
        cfg = self.config
        return kappa(n=n, m=cfg.safety_dataset_size, fail_prob=cfg.fail_prob, c1=cfg.students_c1, c2=cfg.students_c2)

    def update(self, batch: Transitions) -> dict[str, float]:
        batch = self.check_batch(batch)
        episodes = Episodes.of(batch, learner=self.name)
        cfg = self.config

        rewards = episodes.sum(batch.reward).clamp(-cfg.clip_range_score, cfg.clip_range_score)
        costs = episodes.sum(batch.cost)
        self.cost_window.extend(costs)
        window = self.cost_window.costs
        window_kappa = self._kappa(len(window))
        cost_bound = upper_bound(window, kappa=window_kappa)
        lambda_loss = self.multiplier.step(cost_bound)
        lam = self.multiplier.value

        window_std = float(window.std()) if len(window) >= 2 else 0.0
        surrogate_costs = cost_surrogate(
            costs, mean=float(window.mean()), std=window_std, kappa=self._kappa(episodes.count)
        )
        log_probs = self.policy.log_probs(batch.state)
        kl_metrics = self.kl_to_base(batch, log_probs)
        kl_penalty = self.kl.value * episodes.sum(action_log_ratio(batch.logp, batch.action, batch.base_logit))
        net_returns = rewards - kl_penalty - lam * surrogate_costs
        self.baseline = (self.baseline * self.returns_seen + float(net_returns.sum())) / (
            self.returns_seen + episodes.count
        )
        self.returns_seen += episodes.count

        taken = log_probs.gather(-1, batch.action.unsqueeze(-1)).squeeze(-1)
        loss = rloo_loss(
            net_returns, episodes.sum(taken), batch.prompt_id[episodes.last_row], baseline=self.baseline
        )
        grad_norm = gradient_step(self.actor_optimizer, loss, self.policy.parameters(), max_grad_norm=cfg.max_grad_norm)
        self.num_updates += 1
        self.kl.update(kl_metrics["kl_per_response"], episodes=episodes.count)

        entropy = -(log_probs.exp() * log_probs).sum(-1).mean()
        return read_scalars({
            "actor_loss": loss,
            "entropy": entropy,
            "approx_kl": approx_kl(self.policy, batch),
            "lambda": lam,
            "lambda_loss": lambda_loss,
            "cost_bound": cost_bound,
            "kappa": window_kappa,
            "baseline": self.baseline,
            "net_return": net_returns.mean(),
            "surrogate_cost": surrogate_costs.mean(),
            "cost_success": (costs <= cfg.threshold).float().mean(),
            "accept_rate": batch.action.float().mean(),
            "reward": batch.reward.mean(),
            "cost": batch.cost.mean(),
            "episode_reward": rewards.mean(),
            "episode_cost": costs.mean(),
            "actor_grad_norm": grad_norm,
            "episode_kl_penalty": kl_penalty.mean(),
            **kl_metrics,
        })
