"""MARA's accept/reject agent: LayerNorm(hidden) → MLP → 2 logits (index 1 = accept) over an LM hidden state."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tokenalign.agents.mlp import ObservationNorm, check_widths, mlp

ACCEPT = 1
REJECT = 0


PARAMETERISATION = "base+residual"
"""Written into every policy state: the accept logit is π_ref's plus a learned residual. Agents saved before
it (a free accept logit over the hidden state alone) are refused with a message, never silently misread."""


def decision_log_probs(accept_logit: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """(N,) log-probability of each action under Bernoulli policies with these accept logits."""
    return F.logsigmoid(torch.where(action.bool(), accept_logit, -accept_logit))



class AcceptRejectPolicy(nn.Module):
    """π(a|s) over a ∈ {reject, accept}, an agent that starts as the base LM.

    The observation s is [h ; l_ref (; w)]: the LM's last hidden state h of "context + candidate", π_ref's
    accept logit l_ref (the accept/reject policy that decodes exactly as base sampling,
    `tokenalign.agents.chain.reference_accept_logits`) and, for a preference-conditioned agent, the
    weights w (RiC). The accept logit is

        l(s) = l_ref + f_θ(s),    f_θ = LayerNorm → MLP → 1, its last layer initialised at zero,

    so an untrained agent decodes exactly as base sampling (KL 0) and training moves it away from the base
    LM only as far as the reward pays for against each learner's KL term.
    """

    def __init__(
        self, *, state_size: int, widths: tuple[int, ...] = (1024, 256), preference_dim: int = 0  # MARA SAC.py
    ) -> None:
        super().__init__()
        if state_size <= 0:
            raise ValueError(f"state_size must be the positive size of a candidate state, got {state_size}")
        self.state_size = state_size
        self.preference_dim = preference_dim
        self.widths = check_widths(widths, owner="AcceptRejectPolicy")
        self.norm = ObservationNorm(state_size, preference_dim)
        self.body = mlp(self.norm.in_features, self.widths, 1)
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def residual(self, obs: torch.Tensor) -> torch.Tensor:
        """f_θ(s), shape (...,): how far the agent's accept logit moved from π_ref's."""
        return self.body(self.norm(obs)).squeeze(-1)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Logits (..., 2) = [0, l_ref + f_θ(s)] (index 1 = accept) for observations (..., hidden + 1 + P)."""
        logit = self.norm.split(obs)[1] + self.residual(obs)
        return torch.stack([torch.zeros_like(logit), logit], dim=-1)

    def log_probs(self, obs: torch.Tensor) -> torch.Tensor:
        """log π(·|s), shape (..., 2), differentiable (what learners train)."""
        return F.log_softmax(self(obs), dim=-1)

    @torch.no_grad()
    def accept_logit(self, obs: torch.Tensor) -> torch.Tensor:
        """l(s) = l_ref + f_θ(s), shape (...,); inference only (what the decode loop samples from)."""
        return self(obs)[..., ACCEPT]

    @torch.no_grad()
    def act(
        self, obs: torch.Tensor, *, deterministic: bool = False, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Actions (...,) int64 and their log-probabilities (...,) float32 for a batch of observations.

        Sampling draws one Bernoulli per row from `generator` (which must live on the agent's device);
        `deterministic` takes the more probable action, rejecting on a tie as MARA's argmax does.
        """
        log_probs = self.log_probs(obs)
        if deterministic:
            action = (log_probs[..., ACCEPT] > log_probs[..., REJECT]).long()
        else:
            action = torch.bernoulli(log_probs[..., ACCEPT].exp(), generator=generator).long()
        return action, log_probs.gather(-1, action.unsqueeze(-1)).squeeze(-1)

    def policy_state(self) -> dict[str, Any]:
        """The plain dict actors load: sizes plus a CPU copy of the weights (independent of training)."""
        return {
            "parameterisation": PARAMETERISATION,
            "state_size": self.state_size,
            "preference_dim": self.preference_dim,
            "widths": list(self.widths),
            "state_dict": {k: v.detach().to("cpu", copy=True) for k, v in self.state_dict().items()},
        }

    @classmethod
    def from_policy_state(
        cls, state: dict[str, Any], *, state_size: int, device: torch.device | str = "cpu"
    ) -> AcceptRejectPolicy:
        """Rebuild a policy from `policy_state()` for candidate states of `state_size`, refusing an agent of another size."""
        missing = {"widths", "state_dict"} - set(state) | ({"state_size"} if saved_state_size(state) is None else set())
        if missing:
            raise ValueError(
                f"not an agent policy state: missing {sorted(missing)}; pass the dict from learner.policy_state()"
            )
        check_parameterisation(state)
        if saved_state_size(state) != state_size:
            raise ValueError(
                f"agent input size {saved_state_size(state)} does not match this engine's candidate states of size "
                f"{state_size}: the agent was trained on another LM or engine.candidate_state; load an agent trained "
                "for this one or train a new one"
            )
        policy = cls(state_size=state_size, widths=tuple(state["widths"]), preference_dim=int(state["preference_dim"]))
        policy.load_state_dict(state["state_dict"])
        return policy.to(device)


def saved_state_size(state: dict[str, Any]) -> int | None:
    """The candidate-state size of a saved agent (policy state or learner checkpoint); agents saved before
    context-mode states existed call it hidden_size (their states are the LM's hidden states)."""
    return state.get("state_size", state.get("hidden_size"))


def check_parameterisation(state: dict[str, Any]) -> None:
    """Refuse an agent (policy state or learner checkpoint) saved before agents started as the base LM."""
    if state.get("parameterisation") != PARAMETERISATION:
        raise ValueError(
            "this agent was saved by an older tokenalign, whose accept logit did not start from the base LM's "
            "(π_ref + residual); it cannot be loaded by this version: train it again (tokenalign train ...)"
        )
