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

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch

from tokenalign.agents.chain import BASE_LOGIT_BOUND, draw_first_accept
from tokenalign.envs.decode_batch import DecodeBatch
from tokenalign.envs.engine import DecodingEngine
from tokenalign.envs.episode import DecisionLog, Episode, record_candidates, record_decisions
from tokenalign.envs.policies import AcceptPolicy, as_policy, is_step_policy, on_device
from tokenalign.rewards.shaping import ShapingConfig

Records = Literal["decisions", "candidates"]
"""What an Episode holds: the decision chain, or every candidate of every step with a choice."""


def decide_block(
    engine: DecodingEngine,
    batch: DecodeBatch,
    policy: AcceptPolicy,
    *,
    generator: torch.Generator | None,
    greedy: bool = False,
    record: DecisionLog | None = None,
    shaping: ShapingConfig | None = None,
    preference: torch.Tensor | None = None,
    records: Records = "decisions",
) -> None:
    """Decide every computed candidate from each awaiting row's cursor on, emit first accepts, settle.

    The last candidate of a step is never decided: when all others are rejected the engine emits it
    (`DecodingEngine.settle`). Sampled decoding draws each action from the agent; `greedy` takes the more
    probable one (MARA's serial mode). With MARA's KL `shaping`, every candidate's P(accept) enters each
    decision's penalty, so the engine must compute all candidates at once (candidate_block=0). With
    `preference` (one row of weights w per sequence of the batch), the agent sees [observation ; w]. In
    context mode every candidate of the step is scored in one call (a step policy needs that), and `records`
    may be "candidates": every candidate of every step with a choice is recorded, not the decision chain.
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
    if engine.mode.queries:
        if is_step_policy(policy) or records == "candidates":
            raise ValueError("this agent (or its learner's records) needs every candidate of a step at once: decode "
                             "with engine.candidate_state=context")
        observed = _observation(engine, batch, cols, preference)
        logit = policy.accept_logit(observed.flatten(0, 1)).float().view(cols.shape)
    else:  # context mode: the whole step is known, scored in one call
        ranks = torch.arange(engine.k, device=engine.device).expand(batch.size, engine.k)
        whole = _observation(engine, batch, ranks, preference)
        if is_step_policy(policy):
            whole_logit = policy.step_accept_logits(whole, batch.cand.count).float()
        else:
            whole_logit = policy.accept_logit(whole.flatten(0, 1)).float().view(ranks.shape)
        whole_logit = whole_logit.clamp(-BASE_LOGIT_BOUND, BASE_LOGIT_BOUND)
        logit = whole_logit.gather(1, cols)
        observed = whole.gather(1, cols.unsqueeze(-1).expand(*cols.shape, whole.shape[-1]))
    logit = logit.clamp(-BASE_LOGIT_BOUND, BASE_LOGIT_BOUND)
    if greedy:
        accepts = (logit > 0) & in_range
    else:
        accepts = draw_first_accept(logit, in_range, generator=generator)
    has_accept = accepts.any(dim=1)
    first = cols.gather(1, accepts.int().argmax(dim=1, keepdim=True)).squeeze(1)
    # Without an accept the cursor moves past the block: onto the next block, or onto the last candidate.
    stop = torch.where(has_accept, first, window_end)
    if record is not None and records == "candidates":
        emitted = torch.where(has_accept, first, batch.cand.count - 1)
        record_candidates(record, batch, whole[..., :engine.state_size], whole_logit, emitted, awaiting)
    elif record is not None:
        # The chain the emission implies: rejections before the first accept, the accept at it.
        action = ((cols == stop.unsqueeze(1)) & has_accept.unsqueeze(1)).long()
        record_decisions(record, batch, cols, observed[..., :engine.state_size], logit, action, has_accept, stop, in_range,
                greedy=greedy, shaping=shaping, engine=engine)
    batch.cursor = torch.where(awaiting, stop, batch.cursor)
    engine.emit(batch, awaiting & has_accept, batch.cursor)
    engine.settle(batch, defer_forward=not engine.mode.queries)


def _observation(engine: DecodingEngine, batch: DecodeBatch, ranks: torch.Tensor,
                 preference: torch.Tensor | None) -> torch.Tensor:
    """(B, W, S + 1 [+ P]) observations of candidates `ranks` (B, W) of every row, with the row's w appended."""
    rows = torch.arange(batch.size, device=engine.device).unsqueeze(1).expand_as(ranks)
    observed = engine.observation(batch, rows, ranks)
    if preference is None:
        return observed
    w = preference[batch.row_ids].unsqueeze(1).expand(*ranks.shape, preference.shape[1])
    return torch.cat([observed.to(preference.dtype), w], -1)


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
    records: Records = "decisions",
) -> list[Episode]:
    """Decode `prompts` as one batch with `policy` deciding; return one Episode per prompt, in order.

    `preference` (len(prompts), P) conditions a preference-conditioned agent: row i sees [state ; w_i].
    `keep_token_states` fills each Episode's `token_states` (for score heads on this LM). `records`
    "candidates" (context mode) fills the Episode with every candidate of every step with a choice instead of
    the decision chain (`record_candidates`: what value-guided learners train on).
    """
    agent = as_policy(on_device(policy, engine.device))
    if preference is not None:
        preference = torch.as_tensor(np.asarray(preference, dtype=np.float32), device=engine.device)
        if preference.shape[0] != len(prompts):
            raise ValueError(f"preference has {preference.shape[0]} rows for {len(prompts)} prompts; give one w per prompt")
    batch = engine.start(prompts, keep_token_states=keep_token_states)
    record = DecisionLog(engine.device)
    finished: dict[int, list[int]] = {}
    states: dict[int, torch.Tensor] = {}
    while batch.size:
        decide_block(engine, batch, agent, generator=generator, greedy=greedy, record=record, shaping=shaping,
                     preference=preference, records=records)
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
