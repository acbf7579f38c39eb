"""MARA's accept/reject agent: LayerNorm(hidden) → MLP → 2 logits (index 1 = accept) over an LM hidden state."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tokenalign.agents.mlp import ObservationNorm, check_widths, mlp

ACCEPT = 1
REJECT = 0


class AcceptRejectPolicy(nn.Module):
    """π(a|s) over a ∈ {reject, accept} for the LM's last hidden state s of "context + candidate".

    A preference-conditioned agent (preference_dim > 0) sees s = [hidden state ; w] (RiC).
    """

    def __init__(
        self, *, hidden_size: int, widths: tuple[int, ...] = (1024, 256), preference_dim: int = 0  # MARA SAC.py
    ) -> None:
        super().__init__()
        if hidden_size <= 0:
            raise ValueError(f"hidden_size must be the LM's positive hidden size, got {hidden_size}")
        self.hidden_size = hidden_size
        self.preference_dim = preference_dim
        self.widths = check_widths(widths, owner="AcceptRejectPolicy")
        self.norm = ObservationNorm(hidden_size, preference_dim)
        self.body = mlp(self.norm.out_features, self.widths, 2)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        """Logits (..., 2) for observations (..., hidden + preference_dim); fp16/bf16 are cast to the agent's dtype."""
        return self.body(self.norm(state))

    def log_probs(self, state: torch.Tensor) -> torch.Tensor:
        """log π(·|s), shape (..., 2), differentiable (what learners train)."""
        return F.log_softmax(self(state), dim=-1)

    @torch.no_grad()
    def accept_prob(self, state: torch.Tensor) -> torch.Tensor:
        """P(accept | s), shape (...,); inference only."""
        logits = self(state)
        return torch.sigmoid(logits[..., ACCEPT] - logits[..., REJECT])

    @torch.no_grad()
    def act(
        self, state: torch.Tensor, *, deterministic: bool = False, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Actions (...,) int64 and their log-probabilities (...,) float32 for a batch of states.

        Sampling draws one Bernoulli per row from `generator` (which must live on the agent's device);
        `deterministic` takes the more probable action, rejecting on a tie as MARA's argmax does.
        """
        log_probs = self.log_probs(state)
        if deterministic:
            action = (log_probs[..., ACCEPT] > log_probs[..., REJECT]).long()
        else:
            action = torch.bernoulli(log_probs[..., ACCEPT].exp(), generator=generator).long()
        return action, log_probs.gather(-1, action.unsqueeze(-1)).squeeze(-1)

    def policy_state(self) -> dict[str, Any]:
        """The plain dict actors load: sizes plus a CPU copy of the weights (independent of training)."""
        return {
            "hidden_size": self.hidden_size,
            "preference_dim": self.preference_dim,
            "widths": list(self.widths),
            "state_dict": {k: v.detach().to("cpu", copy=True) for k, v in self.state_dict().items()},
        }

    @classmethod
    def from_policy_state(
        cls, state: dict[str, Any], *, hidden_size: int, device: torch.device | str = "cpu"
    ) -> "AcceptRejectPolicy":
        """Rebuild a policy from `policy_state()` for an LM of `hidden_size`, refusing an agent of another size."""
        missing = {"hidden_size", "widths", "state_dict"} - set(state)
        if missing:
            raise ValueError(
                f"not an agent policy state: missing {sorted(missing)}; pass the dict from learner.policy_state()"
            )
        if state["hidden_size"] != hidden_size:
            raise ValueError(
                f"agent input size {state['hidden_size']} does not match the LM's hidden size {hidden_size}: "
                "the agent was trained on another LM; load an agent trained on this LM or train a new one"
            )
        # Agents saved before preference conditioning carry no preference_dim: they are unconditioned.
        policy = cls(hidden_size=hidden_size, widths=tuple(state["widths"]), preference_dim=int(state.get("preference_dim", 0)))
        policy.load_state_dict(state["state_dict"])
        return policy.to(device)
