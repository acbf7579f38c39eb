"""PairSource: a run's preference pairs as the decisions that emit each response, for pair learners (DPO).

The LM is frozen, so a response's decisions (candidate states, π_ref's accept logits, actions) never change:
they are teacher-forced once (envs/teacher_forcing.py, batched) when the learner actor starts, kept on the
CPU in float16 states, and every update gathers a minibatch of pairs from them. Tokens outside their
step's candidates add nothing to either side's log-ratio; their share is reported, and warned about when
it is high (the sampling settings do not cover the data).
"""
from __future__ import annotations

import logging

import torch

from tokenalign.data.pairs import PreferencePair, load_pairs
from tokenalign.envs.engine import DecodingEngine
from tokenalign.envs.teacher_forcing import ForcedDecisions, force_responses
from tokenalign.learners.pairs import PairBatch, PairSide
from tokenalign.workflows.demo_preferences import PAIR_SOURCES

log = logging.getLogger(__name__)

UNCOVERED_WARNING = 0.05
"""Share of uncovered tokens above which the run warns: beyond it the agent cannot express the data."""
FORCE_BATCH = 64
"""Responses per teacher-forced batch: two forwards each, with all their candidates as queries."""


class _Side:
    """One side's decisions of every pair, grouped by pair (CSR: `start[i]`..`start[i+1]`)."""

    def __init__(self, parts: list[ForcedDecisions]) -> None:
        self.state = torch.cat([p.state.half().cpu() for p in parts])
        self.base_logit = torch.cat([p.base_logit.float().cpu() for p in parts])
        self.action = torch.cat([p.action.cpu() for p in parts])
        counts = torch.cat([torch.bincount(p.sequence.cpu(), minlength=p.size) for p in parts])
        self.start = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
        self.tokens = int(sum(int(p.tokens.sum()) for p in parts))
        self.uncovered = int(sum(int(p.uncovered.sum()) for p in parts))

    def gather(self, pairs: torch.Tensor) -> PairSide:
        counts = self.start[pairs + 1] - self.start[pairs]
        owner = torch.repeat_interleave(torch.arange(len(pairs)), counts)
        index = torch.repeat_interleave(self.start[pairs] - torch.cumsum(counts, 0) + counts, counts) + torch.arange(
            int(counts.sum()))
        observation = torch.cat([self.state[index].float(), self.base_logit[index].unsqueeze(-1)], dim=-1)
        return PairSide(observation=observation, action=self.action[index], pair=owner)


class PairSource:
    """The pairs of `specs` (`data.pairs`) with `better` labels, teacher-forced through `engine`."""

    def __init__(self, *, engine: DecodingEngine, specs: list[str], seed: int) -> None:
        if not specs:
            raise ValueError("data.pairs is empty: a pair learner needs preference pairs, e.g. "
                             "data.pairs=[builtin:demo-prefs]")
        pairs = load_pairs(specs, seed=seed, require=("other_answer", "better"), builtins=PAIR_SOURCES)
        self.chosen = self._force(engine, pairs, chosen=True)
        self.rejected = self._force(engine, pairs, chosen=False)
        self.size = len(pairs)
        share = self.uncovered_share
        if share > UNCOVERED_WARNING:
            log.warning("%.1f%% of the pairs' tokens are outside their step's candidates (engine.sampling top_k / top_p):"
                        " they carry no signal; widen the sampling or use data the LM could have sampled", 100 * share)

    @staticmethod
    def _force(engine: DecodingEngine, pairs: list[PreferencePair], *, chosen: bool) -> _Side:
        tokenizer = engine.tokenizer
        parts = []
        for lo in range(0, len(pairs), FORCE_BATCH):
            chunk = pairs[lo: lo + FORCE_BATCH]
            texts = [p.chosen if chosen else p.rejected for p in chunk]
            ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
            parts.append(force_responses(engine, [p.prompt for p in chunk], ids))
        return _Side(parts)

    @property
    def uncovered_share(self) -> float:
        """Share of all response tokens (both sides) outside their step's candidates."""
        tokens = self.chosen.tokens + self.rejected.tokens
        return (self.chosen.uncovered + self.rejected.uncovered) / max(tokens, 1)

    def stats(self) -> dict[str, float]:
        """Pairs, tokens, decisions and the uncovered share: what the run reports of its data."""
        return {"pairs": float(self.size), "tokens": float(self.chosen.tokens + self.rejected.tokens),
                "decisions": float(len(self.chosen.action) + len(self.rejected.action)),
                "uncovered_token_share": self.uncovered_share}

    def batch(self, pairs: torch.Tensor) -> PairBatch:
        """The decisions of pairs `pairs` (indices into the dataset)."""
        return PairBatch(chosen=self.chosen.gather(pairs), rejected=self.rejected.gather(pairs), size=len(pairs))
