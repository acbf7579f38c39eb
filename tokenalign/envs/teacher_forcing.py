"""Given responses as the accept/reject decisions that emit them: teacher forcing through the decoding rule.

Preference learning (DPO) needs log π(y) − log π_ref(y) of a given response y under the agent. The agent
emits token y_t at rank r among its step's candidates by rejecting ranks 0..r−1 and accepting r, so
log π(y_t) = Σ_{j<r} log(1 − p_j) + log p_r (no accept decision when r is the last candidate left, none at
all for a single survivor: the engine's all-rejected rule), and π_ref's decisions give log q(y_t) the same
way. The sequence log-ratio is a sum over those decisions. A token outside its step's candidates has
probability 0 under the agent and π_ref alike: it adds no decision and nothing to the log-ratio, and is
counted (`ForcedDecisions.uncovered`), because a high share means the sampling settings do not cover the data.

Two batched forwards per batch of sequences, as the engine computes states: a causal pass over prompt +
response gives every step's candidates (`propose`, the engine's warping) and the KV cache; a second pass
feeds every needed candidate as a query that sees its step's context and itself only (a 4D mask) at the
position of the token it stands for. Candidate states equal the engine's (tested against its episodes).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from tokenalign.envs.attention import attention_mask
from tokenalign.envs.candidate_state import context_states, unit_rms
from tokenalign.envs.candidates import propose
from tokenalign.envs.engine import DecodingEngine


@dataclass
class ForcedDecisions:
    """The decisions that emit given responses, flat over all of them, in sequence then token then rank order."""

    state: torch.Tensor
    """(N, H) float32 last hidden state of context + candidate at each decision."""
    base_logit: torch.Tensor
    """(N,) π_ref's accept logit at each decision."""
    action: torch.Tensor
    """(N,) int64: 1 accepts the response's token, 0 rejects a candidate ranked above it."""
    sequence: torch.Tensor
    """(N,) int64 index of the response each decision belongs to."""
    token_index: torch.Tensor
    """(N,) int64 index of the response token each decision helps emit."""
    tokens: torch.Tensor
    """(B,) int64 tokens of each response."""
    uncovered: torch.Tensor
    """(B,) int64 tokens of each response outside their step's candidates (probability 0 under π and π_ref)."""

    @property
    def size(self) -> int:
        return int(self.tokens.shape[0])

    def sequence_sum(self, values: torch.Tensor) -> torch.Tensor:
        """(B,) per-response sums of per-decision `values` (N,)."""
        return torch.zeros(self.size, dtype=values.dtype, device=values.device).index_add_(
            0, self.sequence.to(values.device), values)


@torch.no_grad()
def force_responses(engine: DecodingEngine, prompts: Sequence[str],
                    responses: Sequence[Sequence[int]]) -> ForcedDecisions:
    """The decisions that emit each response's token ids after its prompt (prompts encoded as the engine does)."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses; give one prompt per response")
    budget = engine.max_positions
    contexts = engine.encode(list(prompts))
    sequences = []
    for prompt_ids, response in zip(contexts, responses):
        response = list(response)
        if budget is not None and len(prompt_ids) + len(response) > budget:
            response = response[: max(budget - 1, 0)]
            prompt_ids = prompt_ids[-(budget - len(response)):]
        sequences.append((prompt_ids, response))
    dev = engine.device
    b = len(sequences)
    width = max(len(p) + len(r) for p, r in sequences)
    input_ids = torch.full((b, width), engine.pad_token_id, dtype=torch.long, device=dev)
    real = torch.zeros(b, width, dtype=torch.bool, device=dev)
    for i, (p, r) in enumerate(sequences):
        input_ids[i, : len(p) + len(r)] = torch.tensor(p + r, dtype=torch.long, device=dev)
        real[i, : len(p) + len(r)] = True
    cache = engine.new_cache()
    causal = torch.ones(width, width, dtype=torch.bool, device=dev).tril() & real.unsqueeze(1)
    causal |= torch.eye(width, dtype=torch.bool, device=dev)  # padding rows see themselves: no NaN softmax
    position = torch.arange(width, device=dev).expand(b, width)
    hidden = engine.base(input_ids=input_ids, attention_mask=attention_mask(causal, position, position, dtype=engine.dtype,
                                                                   sliding_window=engine.sliding_window),
                         position_ids=position, cache=cache, use_cache=True).last_hidden_state

    # Every response step: the context's last position, the candidates there, the forced token's rank.
    seq = torch.tensor([i for i, (_, r) in enumerate(sequences) for _ in r], dtype=torch.long, device=dev)
    tok = torch.tensor([t for _, r in sequences for t in range(len(r))], dtype=torch.long, device=dev)
    start = torch.tensor([len(p) for p, _ in sequences], dtype=torch.long, device=dev)
    tokens = torch.tensor([len(r) for _, r in sequences], dtype=torch.long)
    if not len(seq):
        empty = torch.zeros(0, dtype=torch.long)
        return ForcedDecisions(state=torch.zeros(0, engine.state_size), base_logit=torch.zeros(0), action=empty,
                               sequence=empty, token_index=empty, tokens=tokens, uncovered=torch.zeros(b, dtype=torch.long))
    context_end = start[seq] + tok - 1  # the position whose state gives the step's next-token logits
    cand = propose(engine.next_token_logits(hidden[seq, context_end].float()), engine.config.sampling)
    target = input_ids[seq, context_end + 1]
    ranks = torch.arange(engine.k, device=dev)
    match = (cand.token_ids == target.unsqueeze(1)) & (ranks < cand.count.unsqueeze(1))
    covered = match.any(dim=1)
    rank = match.int().argmax(dim=1)
    # Decisions of a step: ranks 0..rank, except that the last candidate left is emitted without one.
    last = torch.where(rank == cand.count - 1, rank - 1, rank)
    decided = covered.unsqueeze(1) & (ranks <= last.unsqueeze(1))
    step, col = decided.nonzero(as_tuple=True)
    if not len(step):
        states = torch.zeros(0, engine.state_size, device=dev)
    elif engine.mode.queries:
        states = _candidate_states(engine, cache, real, seq[step], context_end[step] + 1, cand.token_ids[step, col])
    else:  # context mode: the state at the context's end, as the engine's forward gave it
        context = unit_rms(hidden[seq[step], context_end[step]].float())
        states = context_states(context, engine.lm_head.weight[cand.token_ids[step, col]], cand.logp[step, col], col)
    uncovered = torch.zeros(b, dtype=torch.long).index_add_(0, seq[~covered].cpu(),
                                                             torch.ones(int((~covered).sum()), dtype=torch.long))
    return ForcedDecisions(state=states.float(), base_logit=cand.base_logit[step, col],
                           action=(col == rank[step]).long(), sequence=seq[step], token_index=tok[step],
                           tokens=tokens, uncovered=uncovered)


def _candidate_states(engine: DecodingEngine, cache: DynamicCache, real: torch.Tensor, sequence: torch.Tensor,
                      position: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """(N, H) states of candidate `token[n]` placed at `position[n]` of `sequence[n]`, seeing its context only."""
    dev = engine.device
    b, width = real.shape
    per_row = torch.bincount(sequence, minlength=b)
    q = int(per_row.max()) if len(sequence) else 0
    slot = torch.arange(len(sequence), device=dev) - torch.cumsum(per_row, 0)[sequence] + per_row[sequence]
    query_ids = torch.full((b, q), engine.pad_token_id, dtype=torch.long, device=dev)
    query_pos = torch.zeros(b, q, dtype=torch.long, device=dev)
    query_ids[sequence, slot] = token
    query_pos[sequence, slot] = position
    # A query sees its context (positions before its own, real tokens only) and itself.
    allowed = torch.zeros(b, q, width + q, dtype=torch.bool, device=dev)
    allowed[:, :, :width] = (torch.arange(width, device=dev) < query_pos.unsqueeze(-1)) & real.unsqueeze(1)
    diagonal = torch.arange(q, device=dev)
    allowed[:, diagonal, width + diagonal] = True
    key_pos = torch.cat([torch.arange(width, device=dev).expand(b, width), query_pos], dim=1)
    hidden = engine.base(input_ids=query_ids, attention_mask=attention_mask(allowed, query_pos, key_pos, dtype=engine.dtype,
                                                                   sliding_window=engine.sliding_window),
                         position_ids=query_pos, cache=cache, use_cache=True).last_hidden_state
    return hidden[sequence, slot]
