"""The objectives heads are fitted with, each named as its paper writes it.

    reward  Bradley–Terry:       −log σ(r(x, y_w) − r(x, y_l))
    cost    safe-rlhf's cost model (sequence-wise): −log σ(c_unsafer − c_safer) − log σ(s_safer·c_safer)
                                 − log σ(s_unsafer·c_unsafer), with s = +1 for an unsafe response, −1 for a safe
                                 one, so the sign of a cost says unsafe (> 0) or safe (< 0)
    token   TLCR's discriminator: soft-target cross-entropy −[p·log P(pos) + (1 − p)·log P(neg)] per token,
                                 with p from the Levenshtein labels (tokenalign/data/token_labels.py)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Mean −log σ(r_chosen − r_rejected) over pairs."""
    return -F.logsigmoid(chosen - rejected).mean()


def safety_sign(is_safe: torch.Tensor) -> torch.Tensor:
    """safe-rlhf's cost sign: +1 for an unsafe response, −1 for a safe one."""
    return torch.where(is_safe.bool(), -1.0, 1.0)


def cost_model_loss(safer: torch.Tensor, unsafer: torch.Tensor, *, safer_is_safe: torch.Tensor,
                    unsafer_is_safe: torch.Tensor) -> torch.Tensor:
    """Mean over pairs of safe-rlhf's sequence-wise cost loss (module docstring), from the two responses' costs."""
    return (-F.logsigmoid(unsafer - safer)
            - F.logsigmoid(safety_sign(safer_is_safe) * safer)
            - F.logsigmoid(safety_sign(unsafer_is_safe) * unsafer)).mean()


def soft_token_loss(logits: torch.Tensor, p_pos: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of the soft-target cross-entropy of (N, 2) (negative, positive) logits against P(pos) targets."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    return -(p_pos * log_p[:, 1] + (1 - p_pos) * log_p[:, 0]).mean()
