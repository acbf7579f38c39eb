"""The emission distribution of an accept/reject chain: which rank a step emits when the agent accepts its
candidates, in presentation order, with probabilities p_i = σ(l_i).

The first accept emits, so rank i is emitted with π(i) = p_i·∏_{j<i}(1 − p_j), and the last candidate (never
decided on) with the remainder ∏_{j<last}(1 − p_j). Sampling sequential Bernoulli decisions and drawing the
emitted rank once from π are the same distribution; the rollout fast path and the logits processor draw once.
Everything is in log space, from logits (no 1 − p of a rounded probability).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


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
