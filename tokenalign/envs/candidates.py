"""Candidate proposal: which tokens the agent is shown at a generation step, and in what order.

The LLM's next-token logits are warped as Hugging Face's logits processors do (temperature, then top-k,
then top-p over the renormalised top-k survivors). The survivors are the candidates, ordered as MARA
orders them. Everything is batched: one call serves every sequence of a batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from tokenalign.agents.chain import reference_accept_logits

CandidateOrder = Literal["prob_desc", "top1_last", "prob_asc"]


@dataclass(frozen=True)
class SamplingConfig:
    """How candidates are drawn from the LLM's next-token distribution."""

    top_k: int = 40  # MARA train script
    """Keep at most this many highest-probability tokens."""
    top_p: float = 0.95  # MARA train script
    """Keep the smallest prefix (highest first) whose probability mass reaches top_p."""
    temperature: float = 0.8  # MARA train script
    """Divide logits by this before top-k / top-p."""
    order: CandidateOrder = "prob_desc"
    """Order shown to the agent: "prob_desc" (MARA v0), "top1_last" (MARA v1), "prob_asc" (--reverse_choice)."""

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.temperature <= 0.0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.order not in ("prob_desc", "top1_last", "prob_asc"):
            raise ValueError(f"order must be prob_desc, top1_last or prob_asc, got {self.order!r}")


@dataclass
class Candidates:
    """The candidates of a batch of sequences, padded to the widest row."""

    token_ids: torch.Tensor
    """(B, K) int64 candidate token ids in presentation order; padding where rank >= count."""
    logp: torch.Tensor
    """(B, K) float32 log-probability of each candidate under the warped LLM distribution; -inf as padding."""
    count: torch.Tensor
    """(B,) int64 number of real candidates per row (>= 1)."""
    base_logit: torch.Tensor
    """(B, K) float32 accept logit of π_ref, the accept/reject policy that decodes exactly as base sampling
    (`reference_accept_logits`); -BASE_LOGIT_BOUND as padding."""

    def select(self, rows: torch.Tensor) -> Candidates:
        """The candidates of `rows` (an index tensor)."""
        return Candidates(token_ids=self.token_ids[rows], logp=self.logp[rows], count=self.count[rows],
                          base_logit=self.base_logit[rows])

    def assign_where(self, index: torch.Tensor, rows: torch.Tensor, fresh: Candidates) -> None:
        """Take `fresh` (a row per entry of `index`) into rows `index` where the bool mask `rows` says."""
        keep = rows.unsqueeze(1)
        self.token_ids[index] = torch.where(keep, fresh.token_ids, self.token_ids[index])
        self.logp[index] = torch.where(keep, fresh.logp, self.logp[index])
        self.count[index] = torch.where(rows, fresh.count, self.count[index])
        self.base_logit[index] = torch.where(keep, fresh.base_logit, self.base_logit[index])


def propose(logits: torch.Tensor, config: SamplingConfig) -> Candidates:
    """Warp next-token `logits` (B, V) and return the surviving candidates of every row."""
    k = min(config.top_k, logits.shape[-1])
    top_logits, top_ids = torch.topk(logits.float() / config.temperature, k, dim=-1)  # sorted, highest first
    # topk orders equal logits as the kernel happens to (it varies with the batch), and low-precision logits
    # tie often: ties go to the lower token id (as argmax), so every batch presents the same order.
    by_id = top_ids.argsort(dim=-1)
    top_logits, top_ids = top_logits.gather(1, by_id), top_ids.gather(1, by_id)
    order = top_logits.argsort(dim=-1, descending=True, stable=True)
    top_logits, top_ids = top_logits.gather(1, order), top_ids.gather(1, order)
    probs = torch.softmax(top_logits, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs
    # A token survives top-p while the mass of the tokens ranked above it is still short of top_p,
    # which always keeps the top token.
    keep = mass_before < config.top_p
    count = keep.sum(dim=-1)
    logp = torch.log_softmax(top_logits.masked_fill(~keep, float("-inf")), dim=-1)
    if config.order != "prob_desc":
        rank = torch.arange(k, device=logits.device).expand_as(top_ids)
        if config.order == "prob_asc":
            source = (count.unsqueeze(1) - 1 - rank).clamp(min=0)
        else:  # top1_last: ranks 1..count-1 first, then the top-1
            source = torch.where(rank < count.unsqueeze(1) - 1, rank + 1, torch.zeros_like(rank))
        source = torch.where(rank < count.unsqueeze(1), source, rank)
        top_ids, logp = top_ids.gather(1, source), logp.gather(1, source)
    return Candidates(token_ids=top_ids, logp=logp, count=count, base_logit=reference_accept_logits(logp, count))
