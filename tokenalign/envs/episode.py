"""What a decoded sequence leaves behind: the Episode record of its decisions, and how the decode loop logs them
(`DecisionLog`, `record_decisions`) with their KL terms."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tokenalign.agents.chain import BASE_LOGIT_BOUND, emission_log_probs
from tokenalign.envs.decode_batch import DecodeBatch
from tokenalign.envs.engine import DecodingEngine
from tokenalign.rewards.shaping import ShapingConfig, mara_kl_penalties


@dataclass
class Episode:
    """One finished sequence and the decisions that made it, in order.

    A token emitted at rank i after rejections of ranks < i has log π(token) = Σ of the step's decision
    log-probabilities, and π_ref's decisions give log q(token) the same way, so per-token and per-response
    log-ratios and KLs are sums over decisions. Tokens emitted without a decision (the last candidate left)
    have π = π_ref given the decisions before them and add nothing.

    With candidate records (`record_candidates`) the rows are instead every candidate of every step that had a
    choice: `action` and `emit` mark the emitted one, `logp` is each candidate's log π, and the step's log-ratio
    and KL sit on its emitted row, so the sums above still give the response's.
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
    token: np.ndarray
    """(n,) int32 token id of the decided candidate."""
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
              emit=np.bool_, mara_kl_penalty=np.float32, token=np.int32)


class DecisionLog:
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
    kl = (p * (F.logsigmoid(logit) - F.logsigmoid(base_logit))
          + (1 - p) * (F.logsigmoid(-logit) - F.logsigmoid(-base_logit)))
    return kl.clamp(min=0.0)  # ≥ 0 up to rounding: an agent equal to π_ref reports 0, never -1e-9


def record_decisions(record: DecisionLog, batch: DecodeBatch, cols: torch.Tensor, state: torch.Tensor, logit: torch.Tensor,
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
               mara_kl_penalty=penalty, token=batch.cand.token_ids.gather(1, cols))


def record_candidates(record: DecisionLog, batch: DecodeBatch, state: torch.Tensor, accept_logit: torch.Tensor,
                      emitted: torch.Tensor, awaiting: torch.Tensor) -> None:
    """Append every candidate of each awaiting row's step (those with a choice: two candidates or more), with
    `state` (B, K, state_size) and the chain's `accept_logit` (B, K) over all of them, `emitted` the rank each row
    emits. Each candidate's logp is log π of it; the step's log-ratio and exact KL go on the emitted row."""
    count = batch.cand.count.unsqueeze(1)
    ranks = torch.arange(state.shape[1], device=state.device).expand(batch.size, state.shape[1])
    taken = awaiting.unsqueeze(1) & (ranks < count) & (count >= 2)
    log_pi = emission_log_probs(accept_logit, batch.cand.count)
    log_q = emission_log_probs(batch.cand.base_logit, batch.cand.count)
    real = ranks < count
    step_kl = torch.where(real, log_pi.exp() * (log_pi - log_q.masked_fill(~real, 0.0)), 0.0).sum(dim=1).clamp(min=0.0)  # ≥ 0 up to rounding
    chosen = ranks == emitted.unsqueeze(1)
    half = torch.finfo(torch.float16).max
    zero = torch.zeros_like(accept_logit)
    record.add(taken=taken, row=batch.row_ids.unsqueeze(1).expand_as(ranks), state=state.clamp(-half, half).half(),
               action=chosen.long(), logp=log_pi.masked_fill(~real, 0.0), rank=ranks, base_logit=batch.cand.base_logit,
               log_ratio=torch.where(chosen, log_pi - log_q, zero), decision_kl=torch.where(chosen, step_kl.unsqueeze(1), zero),
               token_kl=torch.where(chosen, step_kl.unsqueeze(1), zero), token_index=batch.n_new.unsqueeze(1).expand_as(ranks),
               emit=chosen, mara_kl_penalty=zero, token=batch.cand.token_ids)
