"""An agent rebuilt from its policy state, whatever its kind (the accept/reject MLP, the value-guided head)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tokenalign.agents.policy import AcceptRejectPolicy
from tokenalign.agents.value_guided import KIND as VALUE_GUIDED
from tokenalign.agents.value_guided import ValueGuidedPolicy


def policy_from_state(state: dict[str, Any], *, state_size: int, device: torch.device | str = "cpu") -> nn.Module:
    """The agent of `policy_state()`, for candidate states of `state_size`: by its `kind` (none: accept/reject)."""
    if state.get("kind") == VALUE_GUIDED:
        return ValueGuidedPolicy.from_policy_state(state, state_size=state_size, device=device)
    return AcceptRejectPolicy.from_policy_state(state, state_size=state_size, device=device)
