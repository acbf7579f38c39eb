"""The batch types decisions take between the buffer and learners: observed `Decisions`, labelled `Transitions`.

Both are chains of decisions (DESIGN.md, "Decision chain"), one tensor per column of the record layout
(`buffers/layout.py`); an Objective turns Decisions into Transitions where the learner samples.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class DecisionChain:
    """What every batch of decisions holds, observed or labelled. Rows are transitions (s, a, s', d); for
    on-policy data rows are whole episodes in step order, so `episode_id` and `done` delimit the chains."""

    state: torch.Tensor
    """(B, hidden) hidden state of the candidate being decided: float16 as the buffer hands it over
    (buffer.state_dtype), float32 after `to(device)`."""
    action: torch.Tensor
    """(B,) int64, 1 = accept, 0 = reject."""
    next_state: torch.Tensor
    """(B, hidden) state of the next decision in the chain (zeros where done), dtype as `state`."""
    done: torch.Tensor
    """(B,) float32, 1.0 on the episode's last decision."""
    logp: torch.Tensor
    """(B,) float32 log-probability of `action` under the behaviour policy."""
    episode_id: torch.Tensor
    """(B,) int64 episode identifier."""
    step: torch.Tensor
    """(B,) int64 decision index within its episode."""
    prompt_id: torch.Tensor
    """(B,) int64 prompt identifier (RLOO groups the k episodes of one prompt by it)."""
    policy_version: torch.Tensor
    """(B,) int64 version of the agent weights that took the decision."""
    base_logit: torch.Tensor
    """(B,) float32 π_ref's accept logit at `state` (the agent's accept logit is it plus a residual)."""
    next_base_logit: torch.Tensor
    """(B,) float32 π_ref's accept logit at `next_state` (0 where done)."""
    episode_decisions: torch.Tensor
    """(B,) int64 decisions of the row's episode (turns per-decision KLs into KL per response)."""

    def __len__(self) -> int:
        return int(self.action.shape[0])

    def to(self, device: torch.device | str):
        """Every tensor on `device`; states handed over as float16 (buffer.state_dtype) become float32 there.
        To a GPU, host tensors go through pinned memory without blocking: the copies overlap each other and
        the update already queued, instead of a dozen waits on pageable copies."""
        device = torch.device(device)
        pinned = device.type == "cuda"
        moved = {f.name: None if getattr(self, f.name) is None else
                 _to_device(getattr(self, f.name), device, pinned=pinned) for f in fields(self)}
        moved["state"], moved["next_state"] = moved["state"].float(), moved["next_state"].float()
        return type(self)(**moved)


@dataclass
class Decisions(DecisionChain):
    """Sampled decisions as the buffer hands them over: what was observed. An Objective turns them into
    `Transitions` (rewards and costs)."""

    rank: torch.Tensor
    """(B,) int64 rank of the decided candidate."""
    emit: torch.Tensor
    """(B,) bool: the decision ended its step (a token was emitted after it)."""
    log_ratio: torch.Tensor
    """(B,) float32 log π(a) − log π_ref(a) under the behaviour agent."""
    decision_kl: torch.Tensor
    """(B,) float32 KL(π(·|s) ‖ π_ref(·|s)) of the behaviour agent."""
    token_reward: torch.Tensor
    """(B,) float32 per-token reward of token-level scorers (0 on rows that do not end a step)."""
    mara_kl_penalty: torch.Tensor
    """(B,) float32 MARA's kl_div shaping penalty before −kl_ctl."""
    accepts_to_end: torch.Tensor
    """(B,) int64 accepts from the decision up to (not including) its episode's last."""
    response_tokens: torch.Tensor
    """(B,) int64 length of the episode's response in tokens."""
    scores: torch.Tensor
    """(B, scorers) float32 each scorer's raw score of the episode's response (layout.scorers order)."""
    baseline_scores: torch.Tensor
    """(B, scorers) float32 raw scores of the base LM's greedy response to the prompt (zeros without sft_baseline)."""
    preference: torch.Tensor
    """(B, preference_dim) float32 the episode's preference weights w."""
    step_scores: torch.Tensor | None = None
    """Candidate rows: (B, scorers) float32 each scorer's raw score of the response so far plus the row's candidate."""
    prefix_scores: torch.Tensor | None = None
    """Candidate rows: (B, scorers) float32 each scorer's raw score of the response so far."""


@dataclass
class Transitions(DecisionChain):
    """A batch of decisions with rewards and costs: what every learner's `update` consumes. Objectives build
    them from `Decisions`; tests and benchmarks may build them directly."""

    reward: torch.Tensor
    """(B,) float32 per-decision reward."""
    cost: torch.Tensor
    """(B,) float32 per-decision cost (sequence cost on the episode's last decision)."""
    preference: torch.Tensor | None = None
    """(B, preference_dim) float32 the episode's preference weights, for preference-conditioned agents."""


def select_rows(batch, rows: torch.Tensor):
    """The rows `rows` of a Decisions or Transitions batch, in that order."""
    return type(batch)(**{f.name: None if getattr(batch, f.name) is None else getattr(batch, f.name)[rows]
                          for f in fields(batch)})


def concat_rows(parts: list, *, into: dict[str, torch.Tensor] | None = None):
    """Rows of several Decisions (or Transitions) batches, one after another; the fields named in `into` are
    written into the tensors given there (one row per row of all parts)."""
    if len(parts) == 1:
        return parts[0]
    into = into or {}

    def joined(name: str) -> torch.Tensor | None:
        column = [getattr(p, name) for p in parts]
        if column[0] is None:
            return None
        return torch.cat(column, out=into[name]) if name in into else torch.cat(column)

    return type(parts[0])(**{f.name: joined(f.name) for f in fields(parts[0])})


def with_rewards(decisions: Decisions, *, reward: torch.Tensor, cost: torch.Tensor, conditioned: bool) -> Transitions:
    """The Transitions of `decisions` with the given per-decision reward and cost (what objectives return)."""
    chain = {f.name: getattr(decisions, f.name) for f in fields(DecisionChain)}
    return Transitions(**chain, reward=reward, cost=cost, preference=decisions.preference if conditioned else None)


def _to_device(tensor: torch.Tensor, device: torch.device, *, pinned: bool) -> torch.Tensor:
    if pinned and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
