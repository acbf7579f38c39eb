"""The rollout fast path: a policy decides whole blocks of candidates per forward, for many sequences.

The Gymnasium faces hand one decision at a time to an outside agent. Rollout actors own the agent, so
they evaluate it on every computed candidate of every row at once (in context mode: every candidate of the
step, in one agent call) and draw each row's emitted rank once, from the chain's emission distribution
π(i) = p_i·∏_{j<i}(1 − p_j) over the block (no accept in it: ∏(1 − p_j)). That is the distribution of
sequential decisions; the decisions recorded are the chain the draw implies (rejections before the
emitted rank, the accept at it), exactly those the one-at-a-time faces would take given the same actions
(tests replay them to prove it).
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from tokenalign.envs.candidates import BASE_LOGIT_BOUND
from tokenalign.envs.decode_batch import DecodeBatch
from tokenalign.envs.emission import draw_first_accept
from tokenalign.envs.engine import DecodingEngine
from tokenalign.rewards.shaping import ShapingConfig, mara_kl_penalties


class AcceptPolicy(Protocol):
    """Anything that maps observations (N, H + 1 [+ P]) to accept logits (N,), e.g. agents.AcceptRejectPolicy."""

    def accept_logit(self, observation: torch.Tensor) -> torch.Tensor: ...


AcceptLogitFn = Callable[[torch.Tensor], torch.Tensor]
"""Observations (N, H + 1 [+ P]) → accept logits (N,)."""


@dataclass
class Episode:
    """One finished sequence and the decisions that made it, in order.

    A token emitted at rank i after rejections of ranks < i has log π(token) = Σ of the step's decision
    log-probabilities, and π_ref's decisions give log q(token) the same way, so per-token and per-response
    log-ratios and KLs are sums over decisions. Tokens emitted without a decision (the last candidate left)
    have π = π_ref given the decisions before them and add nothing.
    """

    prompt: str
    prompt_index: int
    response: str
    response_tokens: list[int]
    state: np.ndarray
    """(n, state_size) float16 candidate states, one per decision (`engine.candidate_states`)."""
    action: np.ndarray
    """(n,) int8, 1 = accept."""
    logp: np.ndarray
    """(n,) float32 log-probability of the action under the agent (its stochastic policy, also when decoding greedily)."""
    rank: np.ndarray
    """(n,) int16 rank of the decided candidate in its step."""
    base_logit: np.ndarray
    """(n,) float32 π_ref's accept logit of the candidate (the policy that decodes as base sampling)."""
    log_ratio: np.ndarray
    """(n,) float32 log π(a) − log π_ref(a) of the action under the decoding rule (greedy: log π(a) = 0)."""
    decision_kl: np.ndarray
    """(n,) float32 KL(π(·|s) ‖ π_ref(·|s)) between the decoding rule's and π_ref's Bernoulli at the decision."""
    token_kl: np.ndarray
    """(n,) float32 on step-ending decisions, the exact KL of the step's token distribution to q's (the
    full sum over its candidates), NaN where the step's candidates were not all decided in one block; 0 elsewhere."""
    token_index: np.ndarray
    """(n,) int32 index of the generated token the decision belongs to."""
    emit: np.ndarray
    """(n,) bool: the decision ended its step (it accepted, or it rejected the second-to-last candidate so
    the last was emitted without a decision)."""
    mara_kl_penalty: np.ndarray
    """(n,) float32 MARA's kl_div shaping penalty of each decision before −kl_ctl (zeros without it)."""
    token_states: torch.Tensor | None = None
    """With keep_token_states, (len(response_tokens) + 1, H) float16: the LM's state after the prompt, then
    after each response token (EOS included), as the engine computed them; what a score head on this LM reads."""

    @property
    def num_decisions(self) -> int:
        return int(self.action.shape[0])

    @property
    def kl(self) -> float:
        """KL per response to base sampling, Rao–Blackwellised: Σ over decisions of the Bernoulli KLs, whose
        expectation is KL(π‖q) of the response (the chain rule over decisions and tokens)."""
        return float(self.decision_kl.astype(np.float64).sum())

    @property
    def exact_kl(self) -> float | None:
        """Σ over tokens of the exact per-token KL, where every step's candidates were computed (else None)."""
        total = float(self.token_kl.astype(np.float64).sum())
        return None if np.isnan(total) else total


_TYPES = dict(state=np.float16, action=np.int8, logp=np.float32, rank=np.int16, base_logit=np.float32,
              log_ratio=np.float32, decision_kl=np.float32, token_kl=np.float32, token_index=np.int32,
              emit=np.bool_, mara_kl_penalty=np.float32)


class _DecisionLog:
    """Decisions of a batch, appended block by block as dense (rows, window) blocks with a mask of the
    decisions taken. Each block is copied (the batch mutates in place), on a GPU into pinned host memory
    without waiting; the selection happens on the host once per batch."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.parts: list[dict[str, torch.Tensor]] = []

    def add(self, **columns: torch.Tensor) -> None:
        self.parts.append({k: v.detach().to("cpu", non_blocking=True, copy=True) for k, v in columns.items()})

    def per_sequence(self, n: int, state_size: int) -> list[dict[str, np.ndarray]]:
        if not self.parts:
            empty = {k: np.zeros((0, state_size) if k == "state" else 0, t) for k, t in _TYPES.items()}
            return [dict(empty) for _ in range(n)]
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # the non-blocking copies above
        taken = torch.cat([p["taken"].flatten() for p in self.parts])
        cat = {k: torch.cat([p[k].flatten(0, 1) for p in self.parts])[taken] for k in self.parts[0] if k != "taken"}
        order = torch.argsort(cat["row"], stable=True)  # blocks were appended in time order, ranks in order within
        cat = {k: v[order] for k, v in cat.items()}
        bounds = torch.searchsorted(cat["row"], torch.arange(n + 1, device=cat["row"].device)).tolist()
        return [
            {k: cat[k][bounds[i]: bounds[i + 1]].numpy().astype(t) for k, t in _TYPES.items()}
            for i in range(n)
        ]


def bernoulli_kl(logit: torch.Tensor, base_logit: torch.Tensor) -> torch.Tensor:
    """KL(Bern(σ(logit)) ‖ Bern(σ(base_logit))), elementwise, from logits (no log of a rounded probability)."""
    p = torch.sigmoid(logit)
    return (p * (F.logsigmoid(logit) - F.logsigmoid(base_logit))
            + (1 - p) * (F.logsigmoid(-logit) - F.logsigmoid(-base_logit)))


def decide_block(
    engine: DecodingEngine,
    batch: DecodeBatch,
    accept_logit: AcceptLogitFn,
    *,
    generator: torch.Generator | None,
    greedy: bool = False,
    record: _DecisionLog | None = None,
    shaping: ShapingConfig | None = None,
    preference: torch.Tensor | None = None,
) -> None:
    """Decide every computed candidate from each awaiting row's cursor on, emit first accepts, settle.

    The last candidate of a step is never decided: when all others are rejected the engine emits it
    (`DecodingEngine.settle`). Sampled decoding draws each action from the agent; `greedy` takes the more
    probable one (MARA's serial mode). With MARA's KL `shaping`, every candidate's P(accept) enters each
    decision's penalty, so the engine must compute all candidates at once (candidate_block=0). With
    `preference` (one row of weights w per sequence of the batch), the agent sees [observation ; w].
    """
    status = batch.status if batch.status is not None else engine.read_status(batch)
    if status.window == 0:
        return
    awaiting = batch.awaiting
    # The block is dense: (rows, the widest row's window), the agent evaluated on every slot of it and the
    # decisions kept by mask, so the host never reads which candidates were decided.
    cols = batch.cursor.unsqueeze(1) + torch.arange(status.window, device=engine.device)
    window_end = torch.minimum(batch.computed, batch.cand.count - 1)
    in_range = awaiting.unsqueeze(1) & (cols < window_end.unsqueeze(1))
    cols = cols.clamp(max=engine.k - 1)
    rows = torch.arange(batch.size, device=engine.device).unsqueeze(1).expand_as(cols)
    observed = engine.observation(batch, rows, cols)
    if preference is not None:
        observed = torch.cat([observed.to(preference.dtype), preference[batch.row_ids].unsqueeze(1).expand(
            *cols.shape, preference.shape[1])], -1)
    logit = accept_logit(observed.flatten(0, 1)).float().clamp(-BASE_LOGIT_BOUND, BASE_LOGIT_BOUND).view(cols.shape)
    if greedy:
        accepts = (logit > 0) & in_range
    else:
        accepts = draw_first_accept(logit, in_range, generator=generator)
    has_accept = accepts.any(dim=1)
    first = cols.gather(1, accepts.int().argmax(dim=1, keepdim=True)).squeeze(1)
    # Without an accept the cursor moves past the block: onto the next block, or onto the last candidate.
    stop = torch.where(has_accept, first, window_end)
    if record is not None:
        # The chain the emission implies: rejections before the first accept, the accept at it.
        action = ((cols == stop.unsqueeze(1)) & has_accept.unsqueeze(1)).long()
        _record(record, batch, cols, observed[..., :engine.state_size], logit, action, has_accept, stop, in_range,
                greedy=greedy, shaping=shaping, engine=engine)
    batch.cursor = torch.where(awaiting, stop, batch.cursor)
    engine.emit(batch, awaiting & has_accept, batch.cursor)
    engine.settle(batch, defer_forward=not engine.mode.queries)


def _record(record: _DecisionLog, batch: DecodeBatch, cols: torch.Tensor, state: torch.Tensor, logit: torch.Tensor,
            action: torch.Tensor, has_accept: torch.Tensor, stop: torch.Tensor, in_range: torch.Tensor, *,
            greedy: bool, shaping: ShapingConfig | None, engine: DecodingEngine) -> None:
    """Append the block's decisions (B, W), with their candidates' `state` (B, W, state_size) and KL terms; `taken`
    marks those up to each row's first accept."""
    stop_ = stop.unsqueeze(1)
    taken = in_range & (cols <= stop_)
    base = batch.cand.base_logit.gather(1, cols)
    accepted = action.bool()
    logp = torch.where(accepted, F.logsigmoid(logit), F.logsigmoid(-logit))
    base_logp = torch.where(accepted, F.logsigmoid(base), F.logsigmoid(-base))
    # The decoding rule's own accept logit: greedy decoding is deterministic (an infinite logit of its sign).
    rule_logit = torch.where(logit > 0, BASE_LOGIT_BOUND * 4, -BASE_LOGIT_BOUND * 4) if greedy else logit
    kl = bernoulli_kl(rule_logit, base)
    log_ratio = (0.0 if greedy else logp) - base_logp
    # The exact KL of a step's token distribution: Σ_i P(reach i)·KL_i over its decided candidates, known
    # when the whole step (rank 0 up to the last candidate) is decided in this block, whose window then
    # starts at rank 0.
    reach_log = torch.where(in_range, F.logsigmoid(-rule_logit), 0.0)
    reach = torch.exp(torch.cumsum(reach_log, dim=1) - reach_log)
    whole_step = (batch.cursor == 0) & (batch.computed >= batch.cand.count - 1)
    step_kl = torch.where(whole_step, (reach * kl * in_range).sum(dim=1), float("nan"))
    # A step ends at its accept, or, when the block rejected up to the last candidate, at its last decision.
    count = batch.cand.count.unsqueeze(1)
    ends_step = torch.where(has_accept.unsqueeze(1), cols == stop_, (cols == stop_ - 1) & (stop_ == count - 1))
    penalty = torch.zeros_like(logit)
    if shaping is not None and shaping.token_reward != "none":
        if engine.block < engine.k:
            raise ValueError("MARA's kl_div shaping needs every candidate's P(accept) at each step: set candidate_block=0")
        slot = torch.where(in_range, cols, engine.k)  # out-of-window slots go to a scratch column
        p_all = torch.zeros(batch.size, engine.k + 1, device=logit.device).scatter_(1, slot, torch.sigmoid(logit))
        decided = torch.zeros(batch.size, engine.k + 1, dtype=torch.bool, device=logit.device).scatter_(1, slot, in_range)
        penalty = mara_kl_penalties(p_all[:, :engine.k], batch.cand.logp, decided[:, :engine.k],
                                    config=shaping).gather(1, cols)
    token_kl = torch.where(ends_step, step_kl.unsqueeze(1), 0.0)
    # float16 states: clamp first, a bf16/fp32 value beyond float16's range would become inf.
    half = torch.finfo(torch.float16).max
    record.add(taken=taken, row=batch.row_ids.unsqueeze(1).expand_as(cols), state=state.clamp(-half, half).half(),
               action=action, logp=logp, rank=cols, base_logit=base, log_ratio=log_ratio, decision_kl=kl,
               token_kl=token_kl, token_index=batch.n_new.unsqueeze(1).expand_as(cols), emit=ends_step,
               mara_kl_penalty=penalty)


@dataclass(frozen=True)
class ProbabilityPolicy:
    """A bare function of observations giving P(accept) (N,), as an AcceptPolicy (tests, fixed baselines)."""

    accept_prob: Callable[[torch.Tensor], torch.Tensor]

    def accept_logit(self, observation: torch.Tensor) -> torch.Tensor:
        return torch.logit(self.accept_prob(observation).float().clamp(0.0, 1.0))


@dataclass(frozen=True)
class FixedPreference:
    """A preference-conditioned agent with its weights fixed: it sees [observation ; w] for every observation."""

    policy: AcceptPolicy
    w: torch.Tensor

    def accept_logit(self, observation: torch.Tensor) -> torch.Tensor:
        w = self.w.to(observation.device).expand(*observation.shape[:-1], self.w.shape[0])
        return self.policy.accept_logit(torch.cat([observation.float(), w], -1))


def on_device(policy: Any, device: torch.device) -> Any:
    """The agent with its weights on `device` (the LM's): a module elsewhere is copied there once (an agent is
    a small MLP), so a CPU agent decodes with a GPU LM without mixing devices; anything else is returned."""
    if isinstance(policy, torch.nn.Module):
        weights = next(policy.parameters(), None)
        if weights is not None and weights.device != torch.device(device):
            return copy.deepcopy(policy).to(device)
    return policy


def as_policy(policy: AcceptPolicy | Callable[[torch.Tensor], torch.Tensor]) -> AcceptPolicy:
    """An agent (anything with `accept_logit`), or a bare function of observations giving P(accept)."""
    if hasattr(policy, "accept_logit"):
        return policy
    if not callable(policy):
        raise TypeError(f"policy must have accept_logit(observation) or be a callable giving P(accept), "
                        f"got {type(policy).__name__}")
    return ProbabilityPolicy(policy)


def conditioned(policy: AcceptPolicy | Callable[[torch.Tensor], torch.Tensor],
                preference: Sequence[float] | None) -> AcceptPolicy:
    """The agent to decode with: a preference-conditioned agent with its weights fixed to w, else the agent.

    Without `preference` a conditioned agent is an error (it needs weights); with one, an unconditioned agent is.
    """
    agent = as_policy(policy)
    dim = int(getattr(policy, "preference_dim", 0))
    if preference is None:
        if dim:
            raise ValueError(f"the agent is conditioned on {dim} preference weights: pick them, e.g. --preference "
                             + ",".join([f"{1 / dim:.2g}"] * dim))
        return agent
    if not dim:
        raise ValueError("the agent is not preference-conditioned (trained without objective.name=preference): "
                         "decode it without a preference")
    w = torch.as_tensor(list(preference), dtype=torch.float32)
    if w.shape != (dim,) or bool((w < 0).any()) or not float(w.sum()) > 0:
        raise ValueError(f"preference {list(preference)} must be {dim} non-negative weights with a positive sum for "
                         f"this agent (it was trained on {dim} objectives)")
    return FixedPreference(agent, w / w.sum())  # the agent was trained on simplex weights, as the envs rescale them


@torch.no_grad()
def generate_episodes(
    engine: DecodingEngine,
    policy: AcceptPolicy | Callable[[torch.Tensor], torch.Tensor],
    prompts: list[str],
    *,
    generator: torch.Generator | None = None,
    greedy: bool = False,
    shaping: ShapingConfig | None = None,
    preference: np.ndarray | torch.Tensor | None = None,
    keep_token_states: bool = False,
) -> list[Episode]:
    """Decode `prompts` as one batch with `policy` deciding; return one Episode per prompt, in order.

    `preference` (len(prompts), P) conditions a preference-conditioned agent: row i sees [state ; w_i].
    `keep_token_states` fills each Episode's `token_states` (for score heads on this LM).
    """
    accept_logit = as_policy(on_device(policy, engine.device)).accept_logit
    if preference is not None:
        preference = torch.as_tensor(np.asarray(preference, dtype=np.float32), device=engine.device)
        if preference.shape[0] != len(prompts):
            raise ValueError(f"preference has {preference.shape[0]} rows for {len(prompts)} prompts; give one w per prompt")
    batch = engine.start(prompts, keep_token_states=keep_token_states)
    record = _DecisionLog(engine.device)
    finished: dict[int, list[int]] = {}
    states: dict[int, torch.Tensor] = {}
    while batch.size:
        decide_block(engine, batch, accept_logit, generator=generator, greedy=greedy, record=record, shaping=shaping,
                     preference=preference)
        if batch.status.done:
            for row in batch.done.nonzero(as_tuple=True)[0].tolist():
                finished[int(batch.row_ids[row])] = batch.response_tokens(row)
                if batch.token_hidden is not None:
                    states[int(batch.row_ids[row])] = batch.token_hidden[row, : int(batch.n_new[row]) + 1].half().cpu()
            # Finished rows leave the batch so later forwards only pay for live sequences.
            engine.compact(batch, ~batch.done)
    decisions = record.per_sequence(len(prompts), engine.state_size)
    return [
        Episode(prompt=prompt, prompt_index=i, response=engine.tokenizer.decode(finished[i], skip_special_tokens=True),
                response_tokens=finished[i], token_states=states.get(i), **decisions[i])
        for i, prompt in enumerate(prompts)
    ]
