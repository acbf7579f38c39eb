"""The rollout fast path: a policy decides whole blocks of candidates per forward, for many sequences.

The Gymnasium faces hand one decision at a time to an outside agent. Rollout actors own the agent, so
they evaluate it on every computed candidate of every row at once, sample all actions of the block in
one draw, and let the first accept of each row decide: the decisions taken are exactly those the
one-at-a-time faces would take given the same actions (tests replay them to prove it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np
import torch

from tokenalign.envs.engine import DecodeBatch, DecodingEngine
from tokenalign.rewards.shaping import ShapingConfig, mara_kl_penalties


class AcceptPolicy(Protocol):
    """Anything that maps candidate states (N, H) to P(accept) (N,), e.g. agents.AcceptRejectPolicy."""

    def accept_prob(self, state: torch.Tensor) -> torch.Tensor: ...


AcceptProbFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Episode:
    """One finished sequence and the decisions that made it, in order."""

    prompt: str
    prompt_index: int
    response: str
    response_tokens: list[int]
    state: np.ndarray
    """(n, H) float16 candidate states, one per decision."""
    action: np.ndarray
    """(n,) int8, 1 = accept."""
    logp: np.ndarray
    """(n,) float32 log-probability of the action under the behaviour policy."""
    rank: np.ndarray
    """(n,) int16 rank of the decided candidate in its step."""
    llm_logp: np.ndarray
    """(n,) float32 warped LLM log-probability of the decided candidate."""
    token_index: np.ndarray
    """(n,) int32 index of the generated token the decision belongs to."""
    emit: np.ndarray
    """(n,) bool: the decision emitted its candidate (an accept, or the forced last rank)."""
    agent_token_logp: np.ndarray
    """(n,) float32 on emitting decisions the agent's log-probability of emitting that token,
    log[p_i·∏_{j<i}(1 − p_j)] (the forced last rank: log ∏_{j<i}(1 − p_j)); 0 elsewhere."""
    mara_kl_penalty: np.ndarray
    """(n,) float32 MARA's kl_div shaping penalty of each decision before −kl_ctl (zeros without shaping)."""

    @property
    def num_decisions(self) -> int:
        return int(self.action.shape[0])


_TYPES = dict(state=np.float16, action=np.int8, logp=np.float32, rank=np.int16, llm_logp=np.float32,
              token_index=np.int32, emit=np.bool_, agent_token_logp=np.float32, mara_kl_penalty=np.float32)


class _DecisionLog:
    """Decisions of a batch, appended block by block, grouped per sequence at the end."""

    def __init__(self) -> None:
        self.parts: list[dict[str, torch.Tensor]] = []

    def add(self, **columns: torch.Tensor) -> None:
        self.parts.append({k: v.detach() for k, v in columns.items()})

    def per_sequence(self, n: int, hidden_size: int) -> list[dict[str, np.ndarray]]:
        if not self.parts:
            empty = {k: np.zeros((0, hidden_size) if k == "state" else 0, t) for k, t in _TYPES.items()}
            return [dict(empty) for _ in range(n)]
        cat = {k: torch.cat([p[k] for p in self.parts]).cpu() for k in self.parts[0]}
        order = torch.argsort(cat["row"], stable=True)  # blocks were appended in time order
        cat = {k: v[order] for k, v in cat.items()}
        cat["agent_token_logp"] = _emission_logp(cat)
        bounds = torch.searchsorted(cat["row"], torch.arange(n + 1)).tolist()
        return [
            {k: cat[k][bounds[i]: bounds[i + 1]].numpy().astype(t) for k, t in _TYPES.items()}
            for i in range(n)
        ]


def _emission_logp(cat: dict[str, torch.Tensor]) -> torch.Tensor:
    """log π(emitted token) = Σ_{j<i} log(1 − p_j) + [accepted]·log p_i on emitting rows, 0 elsewhere.

    Rows are grouped by sequence and in decision order, so a step's decisions are one contiguous run
    (same row, same token_index); the sum over earlier ranks is a cumulative sum restarted per run.
    """
    log_reject = cat["log_reject"].double()
    step_key = cat["row"] * (1 << 20) + cat["token_index"]
    starts = torch.ones_like(step_key, dtype=torch.bool)
    starts[1:] = step_key[1:] != step_key[:-1]
    total = torch.cumsum(log_reject, 0)
    run_base = torch.cummax(torch.where(starts, torch.arange(len(total)), 0), 0).values
    before = total - log_reject - (total[run_base] - log_reject[run_base])  # Σ over this run's earlier rows
    own = torch.where(cat["action"].bool(), cat["log_accept"].double(), 0.0)
    return torch.where(cat["emit"], before + own, 0.0).float()


def decide_block(
    engine: DecodingEngine,
    batch: DecodeBatch,
    accept_prob: AcceptProbFn,
    *,
    generator: torch.Generator | None,
    greedy: bool = False,
    record: _DecisionLog | None = None,
    shaping: ShapingConfig | None = None,
    preference: torch.Tensor | None = None,
) -> None:
    """Decide every computed candidate from each awaiting row's cursor on, emit first accepts, settle.

    With KL `shaping`, every candidate's P(accept) enters each decision's reward, so the engine must
    compute all candidates at once (candidate_block=0): a step is then decided in a single call. With
    `preference` (one row of weights w per sequence of the batch), the agent sees [state ; w].
    """
    awaiting = batch.awaiting
    k = engine.k
    ranks = torch.arange(k, device=engine.device)
    in_range = awaiting.unsqueeze(1) & (ranks >= batch.cursor.unsqueeze(1)) & (ranks < batch.computed.unsqueeze(1))
    rows, cols = in_range.nonzero(as_tuple=True)
    states = batch.cand_hidden[rows, cols]
    observed = states if preference is None else torch.cat([states.to(preference.dtype), preference[batch.row_ids[rows]]], -1)
    p_accept = accept_prob(observed).float().clamp(1e-6, 1 - 1e-6)
    if greedy:
        action = (p_accept > 0.5).long()
    else:
        u = torch.rand(p_accept.shape, generator=generator, device=p_accept.device)
        action = (u < p_accept).long()
    accepts = torch.zeros(batch.size, k, dtype=torch.bool, device=engine.device)
    accepts[rows, cols] = action.bool()
    has_accept = accepts.any(dim=1)
    first_accept = torch.where(has_accept, accepts.int().argmax(dim=1), batch.computed - 1)
    exhausted = awaiting & ~has_accept & (batch.computed == batch.cand.count)
    emit_rows = awaiting & (has_accept | exhausted)
    # Decisions taken: up to the first accept, or all computed ones when none accepted.
    last_decided = torch.where(has_accept, first_accept, batch.computed - 1)
    taken = cols <= last_decided[rows]
    if record is not None:
        log_accept, log_reject = p_accept.log(), (1 - p_accept).log()
        logp = torch.where(action.bool(), log_accept, log_reject)
        penalty = torch.zeros_like(p_accept)
        if shaping is not None and shaping.token_reward != "none":
            if engine.block < k:
                raise ValueError("KL shaping needs every candidate's P(accept) at each step: set candidate_block=0")
            p_all = torch.zeros(batch.size, k, device=p_accept.device)
            p_all[rows, cols] = p_accept
            penalty = mara_kl_penalties(p_all, batch.cand.logp, in_range, config=shaping)[rows, cols]
        emit = emit_rows[rows] & (cols == torch.where(has_accept, first_accept, batch.computed - 1)[rows])
        record.add(row=batch.row_ids[rows[taken]], state=states[taken].half(), action=action[taken],
                   logp=logp[taken], rank=cols[taken], llm_logp=batch.cand.logp[rows[taken], cols[taken]],
                   token_index=batch.n_new[rows[taken]], emit=emit[taken], log_accept=log_accept[taken],
                   log_reject=log_reject[taken], mara_kl_penalty=penalty[taken])
    batch.cursor = torch.where(awaiting & ~emit_rows, batch.computed, batch.cursor)
    batch.cursor = torch.where(emit_rows, first_accept, batch.cursor)
    engine.emit(batch, emit_rows, batch.cursor)
    engine.settle(batch)


def as_accept_prob(policy: AcceptPolicy | AcceptProbFn) -> AcceptProbFn:
    """Accept either an agent (with `accept_prob`) or a bare function of states."""
    fn = getattr(policy, "accept_prob", policy)
    if not callable(fn):
        raise TypeError(f"policy must have accept_prob(state) or be callable, got {type(policy).__name__}")
    return fn


def conditioned(policy: AcceptPolicy | AcceptProbFn, preference: Sequence[float] | None) -> AcceptProbFn:
    """The accept function of a preference-conditioned agent fixed to weights w: it sees [state ; w].

    Without `preference` the policy is returned as an accept function; a conditioned agent then needs one.
    """
    fn = as_accept_prob(policy)
    dim = int(getattr(policy, "preference_dim", 0))
    if preference is None:
        if dim:
            raise ValueError(f"the agent is conditioned on {dim} preference weights: pick them, e.g. --preference "
                             + ",".join([f"{1 / dim:.2g}"] * dim))
        return fn
    if not dim:
        raise ValueError("the agent is not preference-conditioned (trained without objective.name=preference): "
                         "decode it without a preference")
    w = torch.as_tensor(list(preference), dtype=torch.float32)
    if w.shape != (dim,) or bool((w < 0).any()) or not float(w.sum()) > 0:
        raise ValueError(f"preference {list(preference)} must be {dim} non-negative weights with a positive sum for "
                         f"this agent (it was trained on {dim} objectives)")
    w = w / w.sum()  # the agent was trained on simplex weights, as the envs rescale them
    return lambda state: fn(torch.cat([state.float(), w.to(state.device).expand(*state.shape[:-1], dim)], -1))


@torch.no_grad()
def generate_episodes(
    engine: DecodingEngine,
    policy: AcceptPolicy | AcceptProbFn,
    prompts: list[str],
    *,
    generator: torch.Generator | None = None,
    greedy: bool = False,
    shaping: ShapingConfig | None = None,
    preference: np.ndarray | torch.Tensor | None = None,
) -> list[Episode]:
    """Decode `prompts` as one batch with `policy` deciding; return one Episode per prompt, in order.

    `preference` (len(prompts), P) conditions a preference-conditioned agent: row i sees [state ; w_i].
    """
    accept_prob = as_accept_prob(policy)
    if preference is not None:
        preference = torch.as_tensor(np.asarray(preference, dtype=np.float32), device=engine.device)
        if preference.shape[0] != len(prompts):
            raise ValueError(f"preference has {preference.shape[0]} rows for {len(prompts)} prompts; give one w per prompt")
    batch = engine.start(prompts)
    record = _DecisionLog()
    finished: dict[int, list[int]] = {}
    while batch.size:
        decide_block(engine, batch, accept_prob, generator=generator, greedy=greedy, record=record, shaping=shaping,
                     preference=preference)
        if bool(batch.done.any()):
            for row in batch.done.nonzero(as_tuple=True)[0].tolist():
                finished[int(batch.row_ids[row])] = batch.response_tokens(row)
            # Finished rows leave the batch so later forwards only pay for live sequences.
            engine.compact(batch, ~batch.done)
    decisions = record.per_sequence(len(prompts), engine.hidden_size)
    return [
        Episode(prompt=prompt, prompt_index=i, response=engine.tokenizer.decode(finished[i], skip_special_tokens=True),
                response_tokens=finished[i], **decisions[i])
        for i, prompt in enumerate(prompts)
    ]
