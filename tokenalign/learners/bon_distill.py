"""`bon_distill`: best-of-n distillation. The agent is trained towards the best-of-n distribution of the base LM
from sets of n base samples per training prompt (actors/sample_set_source.py), so that one sample decodes what
best-of-n spends n on.

Best-of-n from π_ref, with a continuous reward r whose CDF under π_ref(·|x) is F, has the distribution

    π_n(y|x) = n·F(r(y))^{n−1}·π_ref(y|x),     KL(π_n ‖ π_ref) ≤ log n − (n−1)/n      (Beirami et al. 2024)

With ℓ(y) = log π(y) − log π_ref(y) the agent's log-ratio (a sum over the decisions that emit y, as DPO's) and
y⁺, y⁻ the best and the worst of a prompt's n samples:

  bonbon    L = α·L_SFT + (1 − α)·L_IPO                                   (BoNBoN, Gui et al. 2024)
            L_SFT = −log π(y⁺)                            maximum likelihood of best-of-n's own samples
            L_IPO = (ℓ(y⁺) − ℓ(y⁻) − (n − 1)·H_{n−1})²    H_k = Σ_{i≤k} 1/i; under π_n the expected log-ratio gap
                                                          between the best and the worst of n is (n − 1)·H_{n−1}
                                                          (BoNBoN's IPO target 1/(2β*_n)); it pins how far π moves
  jeffreys  L = α·L_SFT + (1 − α)·[(1 − λ)·KL(P ‖ π̂) + λ·KL(π̂ ‖ P)]     (BOND's Jeffreys divergence, Sessa et al.
                                                                        2024; λ = 1 is vBoN's backward KL, Amini
                                                                        et al. 2024)
            on each prompt's n samples as the support: P_j the probability that best-of-n drawn from the set keeps
            sample j (F̂ the set's empirical CDF: F̂(r_j)^n − F̂(r_j⁻)^n, shared evenly by ties) and π̂ = softmax_j
            ℓ(y_j), the agent on the set by self-normalised importance weights (the samples come from π_ref).

The KL to the base LM is set by n (the bound above), not by a coefficient: n is the dial, kl_coef is unused and
kl_target refused. The agent is MARA's accept/reject policy, π_ref plus a residual that starts at zero, so PPO and
the Lagrangian learners can start from it (learner.init_from).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from tokenalign.agents.mlp import check_widths
from tokenalign.agents.policy import AcceptRejectPolicy, decision_log_probs
from tokenalign.core.parsing import check_bounds
from tokenalign.learners.base import Learner, LearnerContract, adam, gradient_step, read_scalars, seeded
from tokenalign.learners.kl import KLConfig
from tokenalign.learners.offline_batches import Responses, SampleSets
from tokenalign.learners.registry import register


def best_worst_gap(n: int) -> float:
    """(n − 1)·H_{n−1}: E[ℓ_n(best of n) − ℓ_n(worst of n)] under π_n, ℓ_n = log π_n/π_ref (BoNBoN)."""
    return (n - 1) * sum(1.0 / i for i in range(1, n))


def best_of_n_weights(reward: torch.Tensor, n: int) -> torch.Tensor:
    """(B, m) the probability that best-of-n, drawing n times with replacement from each row's m samples, keeps
    each sample: F̂(r)^n − F̂(r⁻)^n for its reward level, split evenly among the samples tied at that level."""
    m = reward.shape[-1]
    at_most = (reward.unsqueeze(-1) <= reward.unsqueeze(-2)).sum(dim=-2).to(reward.dtype) / m   # F̂(r_j)
    below = (reward.unsqueeze(-1) < reward.unsqueeze(-2)).sum(dim=-2).to(reward.dtype) / m      # F̂(r_j⁻)
    ties = (reward.unsqueeze(-1) == reward.unsqueeze(-2)).sum(dim=-2).to(reward.dtype)
    return (at_most.pow(n) - below.pow(n)) / ties


def bonbon_loss(log_prob_best: torch.Tensor, gap: torch.Tensor, *, n: int, alpha: float) -> dict[str, torch.Tensor]:
    """BoNBoN's α·L_SFT + (1 − α)·L_IPO from log π(y⁺) and ℓ(y⁺) − ℓ(y⁻) per prompt, means over prompts."""
    sft = -log_prob_best.mean()
    ipo = (gap - best_worst_gap(n)).square().mean()
    return {"loss": alpha * sft + (1.0 - alpha) * ipo, "sft": sft, "ipo": ipo}


def jeffreys_loss(log_prob_best: torch.Tensor, log_ratio: torch.Tensor, reward: torch.Tensor, *, n: int, alpha: float,
                  lam: float) -> dict[str, torch.Tensor]:
    """α·L_SFT + (1 − α)·[(1 − λ)·KL(P ‖ π̂) + λ·KL(π̂ ‖ P)] per prompt's set (module docstring), means over prompts."""
    sft = -log_prob_best.mean()
    log_p = best_of_n_weights(reward, n).log()
    log_agent = torch.log_softmax(log_ratio, dim=-1)
    forward = (log_p.exp() * (log_p - log_agent)).sum(-1).mean()
    backward = (log_agent.exp() * (log_agent - log_p)).sum(-1).mean()
    divergence = (1.0 - lam) * forward + lam * backward
    return {"loss": alpha * sft + (1.0 - alpha) * divergence, "sft": sft, "forward_kl": forward, "backward_kl": backward}


@dataclass(frozen=True)
class BoNDistillConfig(KLConfig):
    """Best-of-n distillation: the sets, the loss and the agent's optimizer."""

    n: int = 8  # BoNBoN's and vBoN's main experiments
    """Base samples per prompt, and the best-of-n distilled: the KL dial (best-of-n's KL ≤ log n − (n−1)/n)."""
    prompts: int = 0
    """Training prompts given a set of n samples (0: all of data.train); drawn once when the learner starts."""
    loss: Literal["bonbon", "jeffreys"] = "bonbon"
    """bonbon: SFT on the best + the IPO best-vs-worst term; jeffreys: SFT + BOND's Jeffreys divergence on the set."""
    sft_weight: float = 0.5  # our choice: BoNBoN tunes α per task
    """α: weight of the SFT term; 1 − α weighs the contrastive term (IPO or Jeffreys)."""
    jeffreys_lambda: float = 0.5  # BOND's J-BOND
    """λ: jeffreys's weight of the backward KL(π̂ ‖ P) (1: vBoN's backward KL alone, 0: the forward KL alone)."""
    widths: tuple[int, ...] = (1024, 256)  # MARA agent
    """Hidden widths of the policy."""
    lr: float = 1e-3  # the actor_lr of PPO's demo, as DPO's
    """Adam learning rate of the policy."""
    batch_size: int = 16
    """Prompts per update, each with its n responses."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip of the policy."""

    def __post_init__(self) -> None:
        self.check_kl()
        check_widths(self.widths, owner="bon_distill")
        if self.kl_target is not None:
            raise ValueError("kl_target must be null for bon_distill, whose KL is set by n (best-of-n's KL ≤ "
                             "log n − (n−1)/n): choose learner.params.n instead")
        check_bounds("learner.params", self, n=(2, "≥"), prompts=(0, "≥"), batch_size=(1, "≥"), lr=(0, ">"))
        for name in ("sft_weight", "jeffreys_lambda"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"learner.params.{name} must be in [0, 1], got {getattr(self, name)}")


@register("bon_distill", config=BoNDistillConfig)
class BoNDistill(Learner):
    """See the module docstring."""

    data_mode = "sets"

    @classmethod
    def contract(cls, config: BoNDistillConfig) -> LearnerContract:
        return LearnerContract(data_mode="sets", gamma=1.0, batch_size=config.batch_size, group_size=config.n,
                               set_prompts=config.prompts)

    def __init__(self, *, state_size: int, config: BoNDistillConfig, device: torch.device | str = "cpu",
                 preference_dim: int = 0, seed: int = 0) -> None:
        super().__init__(state_size=state_size, config=config, device=device, preference_dim=preference_dim,
                         seed=seed)
        if preference_dim:
            raise ValueError("bon_distill distils one best-of-n; a preference-conditioned objective has no single best")
        with seeded(seed):
            self.policy = AcceptRejectPolicy(state_size=state_size, widths=config.widths).to(self.device)
        self.optimizer = adam(self.policy.parameters(), lr=config.lr)

    def networks(self) -> dict[str, nn.Module]:
        return {"policy": self.policy}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"policy": self.optimizer}

    def sequence_log_probs(self, responses: Responses, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(size,) log π(y) and log π(y) − log π_ref(y) of each response: sums over the decisions that emit it."""
        agent = decision_log_probs(self.policy(responses.observation)[..., 1], responses.action)
        reference = decision_log_probs(responses.observation[:, -1], responses.action)
        totals = torch.zeros(2, size, dtype=agent.dtype, device=agent.device)
        totals[0].index_add_(0, responses.response, agent)
        totals[1].index_add_(0, responses.response, agent - reference)
        return totals[0], totals[1]

    def update(self, batch: SampleSets) -> dict[str, float]:
        c = self.config
        batch = batch.to(self.device)
        b, m = batch.reward.shape
        log_prob, log_ratio = (t.view(b, m) for t in self.sequence_log_probs(batch.responses, b * m))
        rows = torch.arange(b, device=self.device)
        best, worst = batch.reward.argmax(dim=1), batch.reward.argmin(dim=1)
        gap = log_ratio[rows, best] - log_ratio[rows, worst]
        if c.loss == "bonbon":
            terms = bonbon_loss(log_prob[rows, best], gap, n=m, alpha=c.sft_weight)
        else:
            terms = jeffreys_loss(log_prob[rows, best], log_ratio, batch.reward, n=m, alpha=c.sft_weight,
                                  lam=c.jeffreys_lambda)
        grad_norm = gradient_step(self.optimizer, terms["loss"], self.policy.parameters(), max_grad_norm=c.max_grad_norm)
        self.num_updates += 1
        return read_scalars({**{k: v.detach() for k, v in terms.items()}, "gap": gap.detach().mean(),
                             "gap_target": best_worst_gap(m), "log_ratio_best": log_ratio[rows, best].detach().mean(),
                             "log_ratio_mean": log_ratio.detach().mean(), "grad_norm": grad_norm})
