"""`value_guided`: a value head Q_θ(s, c) over every candidate of a step, learned by regression; the agent decodes
π(c | s) ∝ q(c | s)·exp(Q_θ(s, c)/β) (agents/value_guided.py; controlled decoding, Mudgal et al. 2024).

The actors record every candidate of every step with a choice (context mode, `records="candidates"`), each
with its one-step scores. With R the run's objective, linear in the raw scores (weighted, lagrangian), and
y_<t the response so far, Q_θ = Δ_θ + G_θ (two outputs of one network) regresses

    Δ(s_t, c) = R(y_<t + c) − R(y_<t)     on every candidate c: the reward's change if the response took c (and
                                          ended there); one-step, but known for every candidate, not only for
                                          the sampled one (a wrong value on unsampled candidates spends KL in
                                          wrong directions)
    G(s_t, c)                             on the emitted candidate: what the rest of the response brings after c.
                                          By default (future_target=soft_bellman, CD-Q) the soft value of what
                                          follows,
                G(s_t, c) = P' − R(y_<t + c) + V_θ(s'),   V_θ(s') = β·log Σ_c' q(c' | s')·exp(Q_θ(s', c')/β),
                                          s' the next step with a choice, P' = R(y_<t') its response so far
                                          (forced tokens between them included), Q_θ relative to P'; after the
                                          last such step the Monte-Carlo tail. That is the KL-regularised
                                          optimum's Q*, not the sampling policy's: updates draw whole episodes.
                                          With future_target=monte_carlo, CD-FUDGE's G = R(y) − R(y_<t + c):
                                          one rollout's remaining reward, a noisier target.

    L = mean over rows (Δ_θ − Δ)² + future_weight · mean over emitted rows (G_θ − G)².

β is kl_coef, the tilt's temperature: a decode-time dial (no retraining) published with the weights. With
kl_target, β follows the actors' measured KL per response towards it (Ziegler et al.'s controller, learners/kl.py),
so a reward of any scale gets the KL budget asked for; the published head carries the β reached. The actors
decode with the current Q (base sampling while Q is 0), so later targets come from the tilted policy's prefixes.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from tokenalign.agents.chain import emission_log_probs
from tokenalign.agents.mlp import check_widths
from tokenalign.agents.value_guided import ValueGuidedPolicy
from tokenalign.buffers.batches import Decisions
from tokenalign.core.parsing import check_bounds
from tokenalign.learners.base import Learner, LearnerContract, adam, gradient_step, read_scalars, seeded
from tokenalign.learners.kl import KLConfig
from tokenalign.learners.registry import register


@dataclass(frozen=True)
class ValueGuidedConfig(KLConfig):
    """The value head, its regression and the tilt's β."""

    kl_coef: float = 0.5
    """β: the tilt π ∝ q·exp(Q/β) at decode time (its KL to the base LM falls as β grows); with kl_target, its start."""
    widths: tuple[int, ...] = (256, 256)
    """Hidden widths of the value head's MLP."""
    lr: float = 1e-3
    """Adam learning rate."""
    batch_size: int = 512
    """monte_carlo: candidate rows per gradient step (soft_bellman draws episodes_per_batch whole episodes)."""
    updates_per_episode: int = 1
    """Gradient steps per collected episode (an episode holds ~ tokens × candidates rows)."""
    learning_starts: int = 4096
    """Candidate rows the buffer holds before the first step."""
    future_weight: float = 1.0
    """Weight of the future-gain loss (0: a myopic head, Q = Δ_θ)."""
    future_target: Literal["monte_carlo", "soft_bellman"] = "soft_bellman"
    """The future gain's target: the next step's soft value under Q_θ (CD-Q), or the response's own (CD-FUDGE).
    CD-Q's, because on the demo it moved the whole frontier up and the Monte-Carlo one moved it down
    (benchmarks/results/reward_kl_value_soft_bellman.md, reward_kl_value_future.md)."""
    episodes_per_batch: int = 4
    """soft_bellman: whole episodes per gradient step (its targets follow a response)."""
    target_tau: float = 0.05
    """soft_bellman: the bootstrap reads a target copy of Q_θ, moved by τ towards it after each step (a bootstrap
    from the moving head itself diverges: each step's soft max adds the head's errors up)."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip."""

    def __post_init__(self) -> None:
        self.check_kl()
        check_widths(self.widths, owner="value_guided")
        if self.kl_coef <= 0:
            raise ValueError(f"kl_coef is value_guided's tilt temperature β and must be > 0, got {self.kl_coef}")
        check_bounds("learner.params", self, batch_size=(1, "≥"), updates_per_episode=(1, "≥"),
                     episodes_per_batch=(1, "≥"), lr=(0, ">"), learning_starts=(0, "≥"), future_weight=(0, "≥"))
        if not 0.0 < self.target_tau <= 1.0:
            raise ValueError(f"target_tau must be in (0, 1], got {self.target_tau}")


@dataclass
class ValueTargets:
    """A batch of candidate rows and their regression targets."""

    observation: torch.Tensor
    """(B, state_size + 1 [+ P]) what the head reads: [state ; π_ref's accept logit (; w)]."""
    one_step: torch.Tensor
    """(B,) Δ = R(y_<t + c) − R(y_<t)."""
    future: torch.Tensor
    """(B,) G = R(y) − R(y_<t + c) (meaningful on emitted rows)."""
    emitted: torch.Tensor
    """(B,) bool: the row's candidate was emitted."""
    step_kl: torch.Tensor | None = None
    """(B,) the behaviour's exact KL to q of the row's step, on emitted rows (0 elsewhere)."""
    episode_rows: torch.Tensor | None = None
    """(B,) candidate rows of the row's episode."""


@register("value_guided", config=ValueGuidedConfig)
class ValueGuidedLearner(Learner):
    """See the module docstring."""

    data_mode = "replay"
    policy_class = ValueGuidedPolicy

    @classmethod
    def contract(cls, config: ValueGuidedConfig) -> LearnerContract:
        episodes = config.future_target == "soft_bellman"
        return LearnerContract(data_mode="replay", gamma=1.0,
                               batch_size=config.episodes_per_batch if episodes else config.batch_size,
                               updates_per_episode=config.updates_per_episode, learning_starts=config.learning_starts,
                               records="candidates", sample="episodes" if episodes else "rows")

    def __init__(self, *, state_size: int, config: ValueGuidedConfig, device: torch.device | str = "cpu",
                 preference_dim: int = 0, seed: int = 0) -> None:
        super().__init__(state_size=state_size, config=config, device=device, preference_dim=preference_dim,
                         seed=seed)
        with seeded(seed):
            self.policy = ValueGuidedPolicy(state_size=state_size, widths=config.widths, preference_dim=preference_dim,
                                            beta=config.kl_coef).to(self.device)
        self.target = copy.deepcopy(self.policy).requires_grad_(False)
        self.optimizer = adam(self.policy.parameters(), lr=config.lr)

    def networks(self) -> dict[str, nn.Module]:
        return {"policy": self.policy, "target": self.target}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"policy": self.optimizer}

    def policy_copies(self) -> list[nn.Module]:
        return [self.target]

    def label(self, objective, decisions: Decisions) -> ValueTargets:
        """The rows' targets under the run's objective, which must be linear in the raw scores."""
        weights = objective.linear_weights()
        if weights is None or decisions.step_scores is None:
            raise ValueError("value_guided learns from candidate rows under an objective linear in the scores "
                             f"(weighted, lagrangian); got objective {objective.name!r}")
        w = torch.as_tensor(np.asarray(weights, np.float32), device=decisions.state.device)
        step, prefix = decisions.step_scores.float() @ w, decisions.prefix_scores.float() @ w
        parts = [decisions.state.float(), decisions.base_logit.float().unsqueeze(-1)]
        if self.preference_dim:
            parts.append(decisions.preference.float())
        observation = torch.cat(parts, dim=-1)
        final = decisions.scores.float() @ w
        future = (self._soft_bellman(observation, decisions, step=step, prefix=prefix, final=final)
                  if self.config.future_target == "soft_bellman" else final - step)
        return ValueTargets(observation=observation, one_step=step - prefix, future=future,
                            emitted=decisions.action.bool(), step_kl=decisions.decision_kl.float(),
                            episode_rows=decisions.episode_decisions.float())

    @torch.no_grad()
    def _soft_bellman(self, observation: torch.Tensor, decisions: Decisions, *, step: torch.Tensor,
                      prefix: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
        """(rows,) G targets of whole episodes' candidate rows: on an emitted row, P' − R(y_<t + c) + V_θ(s') with s'
        the episode's next step with a choice, or R(y) − R(y_<t + c) after its last one (module docstring)."""
        rows, dev = len(step), step.device
        new_step = (decisions.rank == 0).long()
        step_id = torch.cumsum(new_step, 0) - 1  # steps in row order; episodes are whole, in step order
        steps = int(step_id[-1]) + 1 if rows else 0
        q_values = self.target.q_values(observation.to(self.device)).float().to(dev)
        count = torch.bincount(step_id, minlength=steps)
        # log q of each candidate from its step's π_ref accept logits (their chain emits q), then the soft value.
        start = torch.cumsum(count, 0) - count
        width = int(count.max()) if steps else 0
        column = torch.arange(rows, device=dev) - start[step_id]
        base = torch.full((steps, width), -30.0, device=dev).index_put_((step_id, column), decisions.base_logit.float())
        q = torch.zeros(steps, width, device=dev).index_put_((step_id, column), q_values)
        log_q = emission_log_probs(base, count)
        beta = self.kl.value
        soft_value = beta * torch.logsumexp(log_q + q / beta, dim=1)  # (steps,)
        episode = decisions.episode_id
        starts_episode = torch.ones(rows, dtype=torch.bool, device=dev)
        starts_episode[1:] = episode[1:] != episode[:-1]
        episode_index = torch.cumsum(starts_episode.long(), 0) - 1
        last_row_of_episode = torch.cat([torch.nonzero(starts_episode).flatten()[1:] - 1, torch.tensor([rows - 1], device=dev)])
        next_step = (step_id + 1).clamp(max=max(steps - 1, 0))
        next_first = start[next_step]  # the first row of the row's next step
        has_next = (step_id + 1 < steps) & (next_first <= last_row_of_episode[episode_index])
        bootstrap = prefix[next_first] - step + soft_value[next_step]
        return torch.where(has_next, bootstrap, final - step)

    def update(self, batch: ValueTargets) -> dict[str, float]:
        if batch.observation.shape[-1] != self.policy.norm.in_features:
            raise ValueError(f"value_guided: rows of {batch.observation.shape[-1]} features, the head reads "
                             f"{self.policy.norm.in_features}: the rollout LM or candidate_state differs")
        obs, one_step = batch.observation.to(self.device), batch.one_step.to(self.device)
        future, emitted = batch.future.to(self.device), batch.emitted.to(self.device).float()
        predicted = self.policy.components(obs)
        step_loss = (predicted[:, 0] - one_step).square().mean()
        future_loss = ((predicted[:, 1] - future).square() * emitted).sum() / emitted.sum().clamp(min=1.0)
        loss = step_loss + self.config.future_weight * future_loss
        grad_norm = gradient_step(self.optimizer, loss, self.policy.parameters(), max_grad_norm=self.config.max_grad_norm)
        with torch.no_grad():
            for mine, target in zip(self.policy.parameters(), self.target.parameters()):
                target.lerp_(mine, self.config.target_tau)
        self.num_updates += 1
        explained = 1.0 - step_loss.detach() / one_step.var().clamp(min=1e-8)
        metrics = {"loss": loss.detach(), "loss_one_step": step_loss.detach(), "loss_future": future_loss.detach(),
                   "one_step_r2": explained, "q_mean": predicted.detach().sum(-1).mean(), "grad_norm": grad_norm,
                   "kl_coef": self.kl.value}
        if batch.step_kl is not None:
            # Rows are drawn uniformly and a response's KL is the sum of its steps' (on its emitted rows), so
            # Σ step KL / Σ 1/rows-of-its-episode estimates the KL per response of the behaviour.
            metrics["kl_per_response"] = batch.step_kl.sum() / (1.0 / batch.episode_rows.clamp(min=1.0)).sum()
            self.kl.update(metrics["kl_per_response"], episodes=1.0 / self.config.updates_per_episode)
            self.policy.beta = self.target.beta = self.kl.value
        return read_scalars(metrics)

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.policy.beta = self.target.beta = self.kl.value  # β is the controller's, not a network weight
