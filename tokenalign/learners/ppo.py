"""PPO over the decision chain, with safe-rlhf's losses (safe_rlhf/trainers/rl_trainer.py, ppo trainer).

On a rollout of whole episodes, with the behaviour log-probs log π_old recorded by the actors and π_ref
the accept/reject policy that decodes as the base LM (learners/kl.py):

    r_t        = clip(score_t, ±50) − β·(log π_old(a_t|s_t) − log π_ref(a_t|s_t))   (InstructGPT's KL reward)
    Â_t        = GAE(γ, λ) of δ_t = r_t + γ(1 − d_t)·V(s_{t+1}) − V(s_t), standardised over the rollout (CleanRL)
    ρ_t        = π_θ(a_t|s_t) / π_old(a_t|s_t)
    L^CLIP     = −E_t[min(ρ_t·Â_t, clip(ρ_t, 1 − ε, 1 + ε)·Â_t)]
    L^VF       = ½·E_t[max((V(s_t) − R̂_t)², (V_old(s_t) + clip(V(s_t) − V_old(s_t), ±ε_V) − R̂_t)²)]
    actor loss = L^CLIP − c_H·H[π_θ(·|s_t)]

optimized for `update_epochs` passes over shuffled minibatches; actor and critics step separately. The
KL reward goes to the reward signal only (a cost critic learns the cost alone); β moves after each rollout.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from tokenalign.agents.mlp import check_widths
from tokenalign.agents.policy import AcceptRejectPolicy
from tokenalign.agents.value import ValueHead
from tokenalign.buffers.batches import Transitions
from tokenalign.core.parsing import check_bounds
from tokenalign.learners.advantages import gae
from tokenalign.learners.base import Learner, LearnerContract, adam, approx_kl, gradient_step, read_scalars, seeded
from tokenalign.learners.episodes import Episodes
from tokenalign.learners.kl import KLConfig, action_log_ratio
from tokenalign.learners.registry import register


@dataclass(frozen=True)
class PPOConfig(KLConfig):
    """PPO options; loss defaults are safe-rlhf's, optimizer defaults sized for the MARA agent MLP."""

    widths: tuple[int, ...] = (1024, 256)  # MARA agent
    """Hidden widths of the policy and of each value head."""
    actor_lr: float = 3e-4  # MARA train script (agent MLP)
    """Adam learning rate of the policy."""
    critic_lr: float = 3e-4  # MARA train script (agent MLP)
    """Adam learning rate of the value heads."""
    gamma: float = 1.0  # safe-rlhf
    """Discount γ along the decision chain."""
    gae_lambda: float = 0.95  # safe-rlhf
    """GAE λ."""
    clip_range_ratio: float = 0.2  # safe-rlhf
    """PPO ratio clip ε."""
    clip_range_value: float = 5.0  # safe-rlhf
    """Value clip ε_V around the rollout-time values."""
    clip_range_score: float = 50.0  # safe-rlhf
    """Per-decision rewards and costs are clipped to ±this."""
    normalize_advantages: bool = True  # CleanRL ppo.py norm_adv
    """Standardise the policy's advantages over each rollout (the KL-shaped reward's scale then matters less)."""
    entropy_coef: float = 0.0  # safe-rlhf has no entropy bonus (CleanRL ppo.py uses 0.01)
    """Entropy bonus coefficient c_H."""
    update_epochs: int = 4  # CleanRL ppo.py
    """Passes over each rollout."""
    num_minibatches: int = 4  # CleanRL ppo.py
    """Minibatches per pass."""
    max_grad_norm: float = 1.0  # safe-rlhf
    """Gradient-norm clip of each network."""
    episodes_per_update: int = 128  # safe-rlhf scripts: 16 prompts per device × 8 devices
    """Episodes the trainer collects per `update`."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", check_widths(self.widths, owner=f"{type(self).__name__}"))
        self.check_kl()
        for name in ("gamma", "gae_lambda"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        check_bounds("learner.params", self, update_epochs=(1, "≥"), num_minibatches=(1, "≥"),
                     episodes_per_update=(1, "≥"))


def clipped_surrogate_loss(
    log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor, *, clip_range: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L^CLIP, fraction of rows whose ratio was clipped)."""
    ratio = torch.exp(log_probs - old_log_probs)
    surrogate = torch.min(ratio * advantages, ratio.clamp(1.0 - clip_range, 1.0 + clip_range) * advantages)
    return -surrogate.mean(), ((ratio - 1.0).abs() > clip_range).float().mean()


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, *, clip_range: float
) -> torch.Tensor:
    """L^VF = ½·E[max((V − R̂)², (V_old + clip(V − V_old, ±ε_V) − R̂)²)]."""
    clipped = old_values + (values - old_values).clamp(-clip_range, clip_range)
    return 0.5 * torch.max((values - returns).square(), (clipped - returns).square()).mean()


@register("ppo", config=PPOConfig)
class PPOLearner(Learner):
    """PPO with a reward critic; subclasses add critics (`signals`) and combine advantages."""

    data_mode = "on_policy"
    signals: tuple[str, ...] = ("reward",)
    """Per-decision signals that get a value head and GAE; each names a Transitions column."""

    @classmethod
    def contract(cls, config: PPOConfig) -> LearnerContract:
        return LearnerContract(data_mode="on_policy", gamma=config.gamma, signals=cls.signals,
                               groups_per_update=config.episodes_per_update)

    def __init__(
        self, *, state_size: int, config: PPOConfig | None = None, device: torch.device | str = "cpu",
        preference_dim: int = 0, seed: int = 0,
    ) -> None:
        config = config or PPOConfig()
        super().__init__(state_size=state_size, config=config, device=device, preference_dim=preference_dim,
                         seed=seed)
        shape = dict(state_size=state_size, widths=config.widths, preference_dim=preference_dim)
        with seeded(seed):
            self.policy = AcceptRejectPolicy(**shape).to(self.device)
            self.critics = {signal: ValueHead(**shape).to(self.device) for signal in self.signals}
        self.actor_optimizer = adam(self.policy.parameters(), lr=config.actor_lr)
        self.critic_optimizers = {
            signal: adam(critic.parameters(), lr=config.critic_lr) for signal, critic in self.critics.items()
        }

    def networks(self) -> dict[str, nn.Module]:
        return {"policy": self.policy, **{f"{signal}_critic": critic for signal, critic in self.critics.items()}}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor": self.actor_optimizer, **{f"{s}_critic": opt for s, opt in self.critic_optimizers.items()}}

    def before_update(self, batch: Transitions, episodes: Episodes) -> dict[str, float]:
        """Hook run on a checked rollout before any gradient step; returns extra metrics."""
        return {}

    def actor_advantages(self, advantages: dict[str, torch.Tensor]) -> torch.Tensor:
        """The advantage the policy follows, from the per-signal GAE advantages."""
        return advantages["reward"]

    def update(self, batch: Transitions) -> dict[str, float]:
        batch = self.check_batch(batch)
        episodes = Episodes.of(batch, learner=self.name)
        cfg = self.config
        metrics = self.before_update(batch, episodes)

        with torch.no_grad():
            kl_metrics = self.kl_to_base(batch)
            kl_reward = -self.kl.value * action_log_ratio(batch.logp, batch.action, batch.base_logit)
            old_values, advantages, returns = {}, {}, {}
            for signal, critic in self.critics.items():
                score = getattr(batch, signal).clamp(-cfg.clip_range_score, cfg.clip_range_score)
                if signal == "reward":
                    score = score + kl_reward
                old_values[signal] = critic(batch.state)
                advantages[signal], returns[signal] = gae(
                    score, old_values[signal], batch.done, gamma=cfg.gamma, lam=cfg.gae_lambda
                )
            actor_advantages = self.actor_advantages(advantages)
            if cfg.normalize_advantages and len(actor_advantages) > 1:
                actor_advantages = (actor_advantages - actor_advantages.mean()) / (actor_advantages.std() + 1e-8)

        sums: dict[str, torch.Tensor] = {}
        steps = 0
        minibatch_size = math.ceil(len(batch) / cfg.num_minibatches)
        for _ in range(cfg.update_epochs):
            for rows in torch.randperm(len(batch), generator=self.generator, device="cpu").to(self.device).split(minibatch_size):
                for name, value in self._minibatch_step(batch, rows, actor_advantages, old_values, returns).items():
                    sums[name] = sums.get(name, 0.0) + value
                steps += 1
        self.num_updates += 1
        self.kl.update(kl_metrics["kl_per_response"], episodes=episodes.count)

        metrics.update({name: total / steps for name, total in sums.items()})
        metrics.update(kl_metrics)
        metrics.update({
            "approx_kl": approx_kl(self.policy, batch),
            "accept_rate": batch.action.float().mean(),
            "reward": batch.reward.mean(),
            "cost": batch.cost.mean(),
            "episode_reward": episodes.sum(batch.reward).mean(),
            "episode_kl_reward": episodes.sum(kl_reward).mean(),
            "episode_cost": episodes.sum(batch.cost).mean(),
            "advantage": actor_advantages.mean(),
        })
        return read_scalars(metrics)

    def _minibatch_step(
        self,
        batch: Transitions,
        rows: torch.Tensor,
        advantages: torch.Tensor,
        old_values: dict[str, torch.Tensor],
        returns: dict[str, torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        cfg = self.config
        state = batch.state[rows]
        log_probs = self.policy.log_probs(state)
        entropy = -(log_probs.exp() * log_probs).sum(-1).mean()
        new_log_prob = log_probs.gather(-1, batch.action[rows].unsqueeze(-1)).squeeze(-1)
        policy_loss, clip_fraction = clipped_surrogate_loss(
            new_log_prob, batch.logp[rows], advantages[rows], clip_range=cfg.clip_range_ratio
        )
        actor_loss = policy_loss - cfg.entropy_coef * entropy
        stats = {
            "policy_loss": policy_loss.detach(),
            "entropy": entropy.detach(),
            "clip_fraction": clip_fraction,
            "actor_grad_norm": gradient_step(
                self.actor_optimizer, actor_loss, self.policy.parameters(), max_grad_norm=cfg.max_grad_norm
            ),
        }
        for signal, critic in self.critics.items():
            value_loss = clipped_value_loss(
                critic(state), old_values[signal][rows], returns[signal][rows], clip_range=cfg.clip_range_value
            )
            stats[f"{signal}_value_loss"] = value_loss.detach()
            stats[f"{signal}_critic_grad_norm"] = gradient_step(
                self.critic_optimizers[signal], value_loss, critic.parameters(), max_grad_norm=cfg.max_grad_norm
            )
        return stats
