"""Candidate-state modes: what the agent's state of a candidate is, and what computing it costs.

    lookahead   MARA's: the LM's last hidden state of "context + candidate". Each candidate looked at is one
                query token fed to the LM (masked query slots, `DecodingEngine._forward`): ~5–15 LM forward
                tokens per emitted token. H features.
    context     what the step's one forward already returned: the context's last hidden state h_t, the
                candidate's frozen output embedding e_c (its LM-head row: the input embedding where they are
                tied), its warped log-probability log q_c and its rank. No query slots: one LM forward per
                emitted token, like sampling, and every candidate of a step is scored in one agent call.
                State [h_t/rms(h_t) ; e_c/rms(e_c) ; log q_c ; log(1 + rank)], 2H + 2 features: both
                vectors at unit RMS, so that the agent's one LayerNorm over the state weighs them alike
                whatever the LM's scales (CD-Q, GenARM and ARGS read the same quantities).

A mode is an object registered in CANDIDATE_STATES with `queries` (does the engine feed candidate query
slots), `state_size(hidden_size)` and `states(batch, rows, ranks, output_embeddings=...)`; the engine asks it nothing else.
"""
from __future__ import annotations

from typing import Literal, Protocol

import torch

from tokenalign.envs.decode_batch import DecodeBatch

CandidateStateName = Literal["lookahead", "context"]

LOG_Q_FLOOR = -30.0
"""log q of a candidate enters the context state clipped here (padding slots hold −inf)."""


class CandidateStateMode(Protocol):
    """How a candidate's state is computed and what it holds."""

    queries: bool
    """The engine feeds each candidate looked at as a query token (its state needs a forward of its own)."""

    def state_size(self, hidden_size: int) -> int:
        """Features of one candidate state for an LM of `hidden_size`."""
        ...

    def states(self, batch: DecodeBatch, rows: torch.Tensor, ranks: torch.Tensor, *,
               output_embeddings: torch.Tensor) -> torch.Tensor:
        """(..., state_size) float32 states of candidate `ranks[...]` of row `rows[...]` (index tensors of one shape);
        `output_embeddings` (V, H) is the LM head's weight."""
        ...


class Lookahead:
    """MARA's: the LM's state of context + candidate, computed by a query slot per candidate."""

    queries = True

    def state_size(self, hidden_size: int) -> int:
        return hidden_size

    def states(self, batch: DecodeBatch, rows: torch.Tensor, ranks: torch.Tensor, *,
               output_embeddings: torch.Tensor) -> torch.Tensor:
        return batch.cand_hidden[rows, ranks]


class Context:
    """The step's own forward: context state, the candidate's output embedding, log q, rank."""

    queries = False

    def state_size(self, hidden_size: int) -> int:
        return 2 * hidden_size + 2

    def states(self, batch: DecodeBatch, rows: torch.Tensor, ranks: torch.Tensor, *,
               output_embeddings: torch.Tensor) -> torch.Tensor:
        return context_states(batch.context_state[rows], output_embeddings[batch.cand.token_ids[rows, ranks]],
                              batch.cand.logp[rows, ranks], ranks)


def context_states(context: torch.Tensor, embedding: torch.Tensor, log_q: torch.Tensor,
                   ranks: torch.Tensor) -> torch.Tensor:
    """(..., 2H + 2) context-mode states from the context states at unit RMS (..., H), the candidates' output
    embeddings (..., H), their warped log-probabilities (...,) and ranks (...,)."""
    features = [context.float(), unit_rms(embedding.float()), log_q.clamp(min=LOG_Q_FLOOR).unsqueeze(-1),
                torch.log1p(ranks.float()).unsqueeze(-1)]
    return torch.cat(features, dim=-1)


def unit_rms(x: torch.Tensor) -> torch.Tensor:
    """`x` scaled to unit root-mean-square over its last dimension."""
    return x * torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + 1e-12)


CANDIDATE_STATES: dict[str, CandidateStateMode] = {"lookahead": Lookahead(), "context": Context()}
"""The modes by name (`engine.candidate_state`)."""
