"""Resampling from a guided proposal: K draws from the agent, one kept, and the KL bound every such rule obeys.

A trained agent π_a (value-guided, distilled) is a proposal near the KL-regularised optimum
π*(y) ∝ π_ref(y)·exp(R(y)/β). Keeping one of its K draws by self-normalised importance weights

    w_i ∝ π_ref(y_i)·exp(R(y_i)/β) / π_a(y_i) = exp(R(y_i)/β − ℓ(y_i)),     ℓ(y) = log π_a(y) − log π_ref(y)

moves its text towards π* (exactly there as K → ∞), at K samples' compute; keeping the best by reward is the
other rule (best-of-K over the agent). ℓ(y) is summed exactly over the decisions that emitted y. Any rule that
keeps one of K draws from π_a has p(y) ≤ P(y among the draws) ≤ K·π_a(y), so

    KL(p ‖ π_ref) = E_p[log p/π_ref] ≤ log K + E_p[ℓ(y)]

the bound reported for these modes, its expectation estimated on the kept responses.
"""
from __future__ import annotations

import math

import numpy as np
import torch


def importance_pick(final: np.ndarray, log_ratio: np.ndarray, *, beta: float,
                    generator: torch.Generator) -> np.ndarray:
    """(P,) index of the kept draw of each row of (P, K) rewards `final` and log-ratios ℓ, drawn ∝ exp(R/β − ℓ)."""
    logits = torch.as_tensor(np.asarray(final, np.float64) / beta - np.asarray(log_ratio, np.float64),
                             device=generator.device)
    return torch.multinomial(torch.softmax(logits, dim=1), 1, generator=generator).squeeze(1).cpu().numpy()


def resample_kl_bound(k: int, kept_log_ratio: np.ndarray) -> float:
    """log K + the mean log-ratio ℓ of the kept responses: an estimate of the KL bound of a keep-one-of-K rule."""
    return math.log(k) + float(np.mean(kept_log_ratio))
