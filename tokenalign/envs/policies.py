"""How the decode loop sees an agent: the AcceptPolicy protocol (per candidate, or a whole step at once), the
wrappers that fix a preference-conditioned agent's weights or turn a bare function into an agent, and the agent
moved to the LM's device."""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch


class AcceptPolicy(Protocol):
    """Anything that maps observations (N, S + 1 [+ P]) to accept logits (N,), e.g. agents.AcceptRejectPolicy.

    A step policy (agents.ValueGuidedPolicy) instead has `step_accept_logits(observations (B, K, S + 1 [+ P]),
    count (B,)) -> (B, K)`: the accept logits of every candidate of a step, given all of them (context mode)."""

    def accept_logit(self, observation: torch.Tensor) -> torch.Tensor: ...


def is_step_policy(policy: Any) -> bool:
    """Whether `policy` scores a step's candidates together (`step_accept_logits`)."""
    return hasattr(policy, "step_accept_logits")


AcceptLogitFn = Callable[[torch.Tensor], torch.Tensor]
"""Observations (N, H + 1 [+ P]) → accept logits (N,)."""


@dataclass(frozen=True)
class ProbabilityPolicy:
    """A bare function of observations giving P(accept) (N,), as an AcceptPolicy (tests, fixed baselines)."""

    accept_prob: Callable[[torch.Tensor], torch.Tensor]

    def accept_logit(self, observation: torch.Tensor) -> torch.Tensor:
        return torch.logit(self.accept_prob(observation).float().clamp(0.0, 1.0))


@dataclass(frozen=True)
class FixedPreference:
    """A preference-conditioned agent with its weights fixed: it sees [observation ; w] for every observation."""

    policy: AcceptPolicy
    w: torch.Tensor

    def with_w(self, observation: torch.Tensor) -> torch.Tensor:
        w = self.w.to(observation.device).expand(*observation.shape[:-1], self.w.shape[0])
        return torch.cat([observation.float(), w], -1)

    def accept_logit(self, observation: torch.Tensor) -> torch.Tensor:
        return self.policy.accept_logit(self.with_w(observation))


@dataclass(frozen=True)
class FixedPreferenceSteps(FixedPreference):
    """A preference-conditioned step policy with its weights fixed."""

    def step_accept_logits(self, observation: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        return self.policy.step_accept_logits(self.with_w(observation), count)


def on_device(policy: Any, device: torch.device) -> Any:
    """The agent with its weights on `device` (the LM's): a module elsewhere is copied there once (an agent is
    a small MLP), so a CPU agent decodes with a GPU LM without mixing devices; anything else is returned."""
    if isinstance(policy, torch.nn.Module):
        weights = next(policy.parameters(), None)
        if weights is not None and weights.device != torch.device(device):
            return copy.deepcopy(policy).to(device)
    return policy


def as_policy(policy: AcceptPolicy | Callable[[torch.Tensor], torch.Tensor]) -> AcceptPolicy:
    """An agent (anything with `accept_logit` or `step_accept_logits`), or a bare function of observations giving
    P(accept)."""
    if hasattr(policy, "accept_logit") or is_step_policy(policy):
        return policy
    if not callable(policy):
        raise TypeError(f"policy must have accept_logit(observation) or be a callable giving P(accept), "
                        f"got {type(policy).__name__}")
    return ProbabilityPolicy(policy)


def conditioned(policy: AcceptPolicy | Callable[[torch.Tensor], torch.Tensor],
                preference: Sequence[float] | None) -> AcceptPolicy:
    """The agent to decode with: a preference-conditioned agent with its weights fixed to w, else the agent.

    Without `preference` a conditioned agent is an error (it needs weights); with one, an unconditioned agent is.
    """
    agent = as_policy(policy)
    dim = int(getattr(policy, "preference_dim", 0))
    if preference is None:
        if dim:
            raise ValueError(f"the agent is conditioned on {dim} preference weights: pick them, e.g. --preference "
                             + ",".join([f"{1 / dim:.2g}"] * dim))
        return agent
    if not dim:
        raise ValueError("the agent is not preference-conditioned (trained without objective.name=preference): "
                         "decode it without a preference")
    w = torch.as_tensor(list(preference), dtype=torch.float32)
    if w.shape != (dim,) or bool((w < 0).any()) or not float(w.sum()) > 0:
        raise ValueError(f"preference {list(preference)} must be {dim} non-negative weights with a positive sum for "
                         f"this agent (it was trained on {dim} objectives)")
    fixed = FixedPreferenceSteps if is_step_policy(agent) else FixedPreference
    return fixed(agent, w / w.sum())  # the agent was trained on simplex weights, as the envs rescale them
