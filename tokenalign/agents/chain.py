"""The accept/reject chain's arithmetic: which rank a step emits when an agent accepts its candidates, in
presentation order, with probabilities p_i = σ(l_i), and which accept logits emit a given distribution.

The first accept emits, so rank i is emitted with π(i) = p_i·∏_{j<i}(1 − p_j), and the last candidate (never
decided on) with the remainder ∏_{j<last}(1 − p_j). Conversely the chain that accepts candidate i with
probability π_i / Σ_{j≥i} π_j emits exactly π: for π = q, the warped LM distribution, that is π_ref, the
accept/reject policy that decodes as base sampling. Sampling sequential Bernoulli decisions and drawing the
emitted rank once from π are the same distribution; the rollout fast path and the logits processor draw once.
Everything is in log space, from logits (no 1 − p of a rounded probability).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

BASE_LOGIT_BOUND = 30.0
"""|π_ref accept logits| are clipped here: the last candidate's is +∞ (it takes all the mass left), and
σ(30) differs from 1 by 1e-13, far below anything a response's probability can resolve."""


def reference_accept_logits(logp: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """(B, K) accept logits of π_ref, the accept/reject policy whose emitted token is distributed exactly as q.

    With q_i the warped probabilities in presentation order, π_ref accepts candidate i with probability
    q_i / (1 − Σ_{j<i} q_j) = q_i / Σ_{j≥i} q_j, so its accept logit is log q_i − log Σ_{j>i} q_j; the
    first-accept rule then emits candidate i with probability ∏_{j<i}(1 − π_ref_j)·π_ref_i = q_i. The tail
    sum comes from a reversed log-cumsum-exp, never from 1 − Σ_{j<i} q_j, which cancels catastrophically.
    """
    k = logp.shape[-1]
    suffix = torch.logcumsumexp(logp.flip(-1), dim=-1).flip(-1)  # log Σ_{j≥i} q_j
    tail = torch.cat([suffix[..., 1:], torch.full_like(suffix[..., :1], float("-inf"))], dim=-1)  # log Σ_{j>i} q_j
    real = torch.arange(k, device=logp.device) < count.unsqueeze(-1)
    last = torch.arange(k, device=logp.device) == (count - 1).unsqueeze(-1)
    logit = torch.where(real & ~last, logp - tail.masked_fill(~real | last, 0.0), 0.0)
    logit = torch.where(last, BASE_LOGIT_BOUND, logit)
    return torch.where(real, logit, -BASE_LOGIT_BOUND).clamp(-BASE_LOGIT_BOUND, BASE_LOGIT_BOUND)


def chain_log_probs(accept_logit: torch.Tensor, decided: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For (B, W) accept logits over the columns `decided` (bool, a prefix of each row): (B, W) the log-probability
    that the first accept is at each column (−inf where not decided), and (B,) that no decided column accepts."""
    log_reject = torch.where(decided, F.logsigmoid(-accept_logit), 0.0)
    reach = torch.cumsum(log_reject, dim=1) - log_reject  # log ∏_{j<i}(1 − p_j)
    first = torch.where(decided, F.logsigmoid(accept_logit) + reach, float("-inf"))
    return first, log_reject.sum(dim=1)


def emission_log_probs(accept_logit: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """(B, K) log π(i) over each row's `count` candidates (the last takes what no decision accepted); −inf past them."""
    ranks = torch.arange(accept_logit.shape[1], device=accept_logit.device)
    last = (count - 1).unsqueeze(1)
    first, none = chain_log_probs(accept_logit, ranks < last)
    return torch.where(ranks == last, none.unsqueeze(1), first)


def draw_first_accept(accept_logit: torch.Tensor, decided: torch.Tensor, *,
                      generator: torch.Generator | None) -> torch.Tensor:
    """(B, W) bool, true from the column each row's chain first accepts at on (all false where none accepts): one
    uniform per row against the cumulative first-accept distribution."""
    first, _ = chain_log_probs(accept_logit, decided)
    cdf = torch.cumsum(first.exp(), dim=1)
    u = torch.rand((accept_logit.shape[0], 1), generator=generator, device=accept_logit.device)
    return (u < cdf) & decided
