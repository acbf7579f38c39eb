"""Per-decision reward shaping as MARA does it: MARA's "KL" penalty at each decision, the final reward posted back.

MARA's penalty (its reward_type `kl_div`, here `mara_kl_div`) reproduces MARA; it is NOT a KL. The
exact KL to the base LM is in every learner's objective instead (tokenalign/learners/kl.py). MARA takes
a log_softmax of the accept PROBABILITIES as if they were logits, so its "log-probabilities" stay within
about one nat of uniform whatever the agent does: it scored a policy that reproduces base sampling (true
KL 0) at −1.82 per token and a degenerate agent at −2.04 (issue 11). At one generation step the agent
decides on candidates i = 0..C−2 in order (the last is emitted without a decision), with
p_i = P(accept candidate i). MARA's distribution over them is

    q_i = p_i                              (default)
    q_i = p_i · ∏_{j<i} (1 − p_j)          (cond_prob: P(first accept at i))
    rl_logp_i = log_softmax_i(q)           (a softmax of the probabilities themselves, exactly as MARA)

and with lp = rl_logp_i and ref = llm_logp_i, the LLM's warped log-prob of candidate i, the reward is
r_i = −kl_ctl · penalty(lp, ref) with the penalty kinds of MARA's --kl_penalty:

    kl    lp − ref
    abs   |lp − ref|
    mse   ½ · (lp − ref)²
    full  exp(lp) · (lp − ref)             (candidate i's term of KL(π_rl ‖ π_llm))

Postback (MARA's postback_reward). The final sequence reward R goes onto the episode's last decision,
and a discounted copy onto each earlier one: decision i gets γ^a_i · R, where a_i counts the accepts
from i up to (not including) the last decision, i.e. γ is applied once per emitted token crossed. The
rollout records a_i (`accepts_to_end`); the objective applies it where the learner samples
(tokenalign/objectives/base.py), so postback and γ never travel to the actors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

KLPenalty = Literal["kl", "abs", "mse", "full"]
KL_PENALTIES: tuple[str, ...] = ("kl", "abs", "mse", "full")


@dataclass(frozen=True)
class ShapingConfig:
    """Token-level reward shaping."""

    token_reward: Literal["mara_kl_div", "none"] = "none"
    """Per-decision reward: nothing (`none`), or MARA's kl_div penalty (`mara_kl_div`, MARA train.py's default,
    kept to reproduce MARA: it is not a KL; the learners' kl_coef is)."""
    kl_penalty: KLPenalty = "kl"
    """KL estimator: kl, abs, mse or full (MARA train script: --kl_penalty kl)."""
    kl_ctl: float = 0.1
    """KL coefficient in r_i = −kl_ctl·penalty (MARA train script: --kl_ctl 0.1)."""
    cond_prob: bool = True
    """Use P(first accept at i) instead of P(accept i) (MARA train script: --cond_prob)."""
    postback: bool = True
    """Add the final reward, discounted per accept, to earlier decisions (MARA train script: --postback_reward 1)."""

    def __post_init__(self) -> None:
        if self.token_reward == "kl_div":
            raise ValueError("shaping.token_reward 'kl_div' is now named 'mara_kl_div' (it reproduces MARA's penalty, "
                             "which is not a KL; the exact KL to the base LM is learner.params.kl_coef)")
        if self.token_reward not in ("mara_kl_div", "none"):
            raise ValueError(f"shaping.token_reward {self.token_reward!r} is unknown; use 'none' or 'mara_kl_div'")
        if self.kl_penalty not in KL_PENALTIES:
            raise ValueError(f"shaping kl_penalty {self.kl_penalty!r} is unknown; use one of {', '.join(KL_PENALTIES)}")


def candidate_logprobs(accept_prob: torch.Tensor, mask: torch.Tensor, *, cond_prob: bool) -> torch.Tensor:
    """MARA's rl_logp over each row's candidates, shape (B, C); -inf where `mask` is False."""
    p = accept_prob.masked_fill(~mask, 0.0)
    if cond_prob:
        rejected_all_before = torch.cumprod(1.0 - p, dim=-1).roll(1, dims=-1)
        rejected_all_before[..., 0] = 1.0
        p = p * rejected_all_before
    return torch.log_softmax(p.masked_fill(~mask, float("-inf")), dim=-1)


def kl_penalty(lp: torch.Tensor, ref: torch.Tensor, kind: KLPenalty) -> torch.Tensor:
    """MARA's per-candidate KL estimate between the agent's log-prob `lp` and the LLM's `ref`."""
    if kind == "kl":
        return lp - ref
    if kind == "abs":
        return (lp - ref).abs()
    if kind == "mse":
        return 0.5 * (lp - ref).square()
    if kind == "full":
        return lp.exp() * (lp - ref)
    raise ValueError(f"kl_penalty {kind!r} is unknown; use one of {', '.join(KL_PENALTIES)}")


def mara_kl_penalties(
    accept_prob: torch.Tensor, llm_logp: torch.Tensor, mask: torch.Tensor, *, config: ShapingConfig
) -> torch.Tensor:
    """Per-candidate penalties penalty(lp_i, ref_i), shape (B, C), zero where `mask` (bool, True = real
    candidate) is False; the reward is r_i = −kl_ctl·penalty, applied by the objective in the learner.

    `accept_prob` is the agent's P(accept) of every candidate and `llm_logp` the LLM's warped log-prob,
    both (B, C) in the order the agent decides on them.
    """
    if config.token_reward == "none":
        return torch.zeros_like(accept_prob)
    lp = candidate_logprobs(accept_prob, mask, cond_prob=config.cond_prob).masked_fill(~mask, 0.0)
    ref = llm_logp.masked_fill(~mask, 0.0)
    return kl_penalty(lp, ref, config.kl_penalty).masked_fill(~mask, 0.0)
