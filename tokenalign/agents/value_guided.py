"""The value-guided agent: a value head Q_θ(s, c) scoring every candidate of a step, decoding the KL-regularised
tilt of the base LM as an accept/reject chain.

The KL-regularised optimum is π*(y) ∝ π_ref(y)·exp(R(y)/β), per token π*(c | s) ∝ q(c | s)·exp(Q*(s, c)/β)
with Q* the soft value of continuing with c (controlled decoding: CD-FUDGE, CD-Q; Q♯). With a learned
Q_θ the agent emits, over the step's candidates,

    π(c_i | s) = w_i / Σ_j w_j,    w_i = q_i·exp(Q_θ(s, c_i)/β),

as the chain that accepts candidate i with w_i / Σ_{j≥i} w_j (`chain.reference_accept_logits` of log π):
its decisions, records, KL and Gymnasium face are those of any agent. Q_θ reads the agent's observation
[state ; l_ref (; w)] of each candidate (context mode: a whole step in one call); log q_i comes from the
step's π_ref accept logits, whose chain emits exactly q. Q_θ's last layer starts at zero, so an untrained
head decodes as base sampling with KL 0. β is a decode-time dial (`beta`): no retraining to move along the
reward–KL curve.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tokenalign.agents.chain import emission_log_probs, reference_accept_logits
from tokenalign.agents.mlp import ObservationNorm, check_widths, mlp
from tokenalign.agents.policy import PARAMETERISATION, check_parameterisation, saved_state_size

KIND = "value-guided"
"""The `kind` of a value-guided agent's policy state (`policy_from_state` builds it by that)."""
COMPONENTS = ("one_step", "future")
"""Q_θ(s, c) = Δ_θ(s, c) + G_θ(s, c): the one-step gain of the reward when c is added to the response so far,
and the gain the rest of the response brings after c (learners/value_guided.py trains each)."""


class ValueGuidedPolicy(nn.Module):
    """See the module docstring: Q_θ over [state ; l_ref (; w)], the tilt at temperature `beta`."""

    def __init__(self, *, state_size: int, widths: tuple[int, ...] = (256, 256), preference_dim: int = 0,
                 beta: float = 0.5) -> None:
        super().__init__()
        if state_size <= 0:
            raise ValueError(f"state_size must be the positive size of a candidate state, got {state_size}")
        self.state_size = state_size
        self.preference_dim = preference_dim
        self.widths = check_widths(widths, owner="ValueGuidedPolicy")
        self.beta = check_beta(beta)
        self.norm = ObservationNorm(state_size, preference_dim)
        self.body = mlp(self.norm.in_features, self.widths, len(COMPONENTS))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def components(self, obs: torch.Tensor) -> torch.Tensor:
        """(..., 2) the parts of Q_θ(s, c) (`COMPONENTS`) for observations (..., state_size + 1 + P) (differentiable)."""
        return self.body(self.norm(obs))

    def q_values(self, obs: torch.Tensor) -> torch.Tensor:
        """Q_θ(s, c), shape (...,): the sum of its components."""
        return self.components(obs).sum(dim=-1)

    @torch.no_grad()
    def step_log_probs(self, obs: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """(B, K) log π(c_i | s) over each row's first `count` candidates (−inf beyond), from their observations
        (B, K, state_size + 1 + P): log q + Q_θ/β, normalised."""
        ranks = torch.arange(obs.shape[1], device=obs.device)
        real = ranks < count.unsqueeze(1)
        log_q = emission_log_probs(self.norm.split(obs)[1].float(), count)
        log_w = (log_q + self.q_values(obs).float() / self.beta).masked_fill(~real, float("-inf"))
        return torch.log_softmax(log_w, dim=-1)

    @torch.no_grad()
    def step_accept_logits(self, obs: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """(B, K) accept logits of the chain that emits π over each row's candidates (`step_log_probs`)."""
        return reference_accept_logits(self.step_log_probs(obs, count), count)

    def accept_logit(self, obs: torch.Tensor) -> torch.Tensor:
        raise TypeError("a value-guided agent's accept logit of a candidate depends on every candidate of its step: "
                        "decode it with engine.candidate_state=context (step_accept_logits), not one candidate at a time")

    def policy_state(self) -> dict[str, Any]:
        """The plain dict actors load: kind, sizes, β and a CPU copy of the weights."""
        return {"kind": KIND, "parameterisation": PARAMETERISATION, "state_size": self.state_size,
                "preference_dim": self.preference_dim, "widths": list(self.widths), "beta": self.beta,
                "state_dict": {k: v.detach().to("cpu", copy=True) for k, v in self.state_dict().items()}}

    @classmethod
    def from_policy_state(cls, state: dict[str, Any], *, state_size: int,
                          device: torch.device | str = "cpu") -> ValueGuidedPolicy:
        """Rebuild the agent of `policy_state()` for candidate states of `state_size`."""
        check_parameterisation(state)
        if saved_state_size(state) != state_size:
            raise ValueError(f"value-guided agent input size {saved_state_size(state)} does not match this engine's "
                             f"candidate states of size {state_size}: the agent was trained on another LM or "
                             "engine.candidate_state")
        policy = cls(state_size=state_size, widths=tuple(state["widths"]), preference_dim=int(state["preference_dim"]),
                     beta=float(state["beta"]))
        policy.load_state_dict(state["state_dict"])
        return policy.to(device)


def check_beta(beta: float) -> float:
    """β as a float, or one ValueError: the tilt divides by it."""
    if not isinstance(beta, (int, float)) or isinstance(beta, bool) or not beta > 0:
        raise ValueError(f"β (the tilt's temperature) must be a positive number, got {beta!r}")
    return float(beta)

