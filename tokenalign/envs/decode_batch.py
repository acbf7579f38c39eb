"""The decoding engine's batch state: what B sequences being decoded hold (`DecodeBatch`) and what the host
knows of them after a settle round (`StepStatus`).

The engine (`envs/engine.py`) is the only writer of a batch; the faces and the rollout fast path read it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from tokenalign.envs.candidates import Candidates
from tokenalign.envs.kv_cache import SlotCache


@dataclass(frozen=True)
class StepStatus:
    """What the host knows of a batch after a settle round, read from the device in one transfer."""

    last_left: bool
    """Some row's candidate under decision is its last one: it emits without a decision."""
    commit_width: int
    """Tokens to commit in the next forward (the widest row)."""
    query_slots: int
    """Candidate query slots the next forward needs (the widest row's need, at most the block)."""
    fresh: bool
    """Some row takes its next-token logits from the next forward's commits (a new prompt)."""
    dead_slots: int
    """Leading cache slots no row attends to any more."""
    done: int
    """Rows that finished."""
    window: int
    """The widest decision window: candidates computed and undecided, before the row's last one."""

    @property
    def forward(self) -> bool:
        return self.commit_width > 0 or self.query_slots > 0


@dataclass
class DecodeBatch:
    """Mutable decoding state of B sequences. Row r of every tensor belongs to sequence `row_ids[r]`."""

    cache: SlotCache
    attn: torch.Tensor  # (B, T) bool: which cache slots hold the row's real tokens
    n_real: torch.Tensor  # (B,) real tokens in the row's context: the next position id
    tokens: torch.Tensor  # (B, max_new_tokens) emitted tokens
    n_new: torch.Tensor  # (B,) emitted token count
    cand: Candidates  # current step's candidates
    cand_slots: torch.Tensor  # (B, K + 1, H) `cand_hidden`, then a scratch column for query slots past a row's candidates
    context_state: torch.Tensor  # (B, H) the state that gave the current candidates' logits, at unit RMS
    computed: torch.Tensor  # (B,) candidate states available
    cursor: torch.Tensor  # (B,) rank under decision
    commit: torch.Tensor  # (B, C) tokens to commit in the next forward (left-aligned)
    commit_valid: torch.Tensor  # (B, C) bool
    needs_logits: torch.Tensor  # (B,) the row's next-token logits come from its last committed token
    done: torch.Tensor  # (B,) bool
    row_ids: torch.Tensor  # (B,) caller's sequence index of each row
    # (B, max_new_tokens + 1, H) when kept: the state after the prompt, then after each emitted token (score heads read them)
    token_hidden: torch.Tensor | None = None
    status: StepStatus | None = None
    """The last settle round's status (what the host knows without another device read)."""

    @property
    def cand_hidden(self) -> torch.Tensor:
        """(B, K, H) last hidden state of context + candidate, valid for ranks < computed (lookahead mode)."""
        return self.cand_slots[:, :-1]

    @property
    def size(self) -> int:
        return int(self.done.shape[0])

    @property
    def awaiting(self) -> torch.Tensor:
        """(B,) rows waiting for a decision on the candidate at `cursor` (its state is computed)."""
        return ~self.done & ~self.needs_logits & (self.cursor < self.computed)

    def response_tokens(self, row: int) -> list[int]:
        return self.tokens[row, : int(self.n_new[row])].tolist()
