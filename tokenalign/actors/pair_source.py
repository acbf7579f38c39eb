"""PairSource: a run's preference pairs as the decisions that emit each response, for pair learners (DPO).

Both sides are teacher-forced once when the learner actor starts (actors/forced_responses.py); every update
gathers a minibatch of pairs from them. Tokens outside their
step's candidates add nothing to either side's log-ratio; their share is reported, and warned about when
it is high (the sampling settings do not cover the data).
"""
from __future__ import annotations

import logging

import torch

from tokenalign.actors.forced_responses import ForcedResponses
from tokenalign.data.pairs import PreferencePair, load_pairs
from tokenalign.envs.engine import DecodingEngine
from tokenalign.learners.offline_batches import PairBatch
from tokenalign.workflows.demo_preferences import PAIR_SOURCES

log = logging.getLogger(__name__)

UNCOVERED_WARNING = 0.05
"""Share of uncovered tokens above which the run warns: beyond it the agent cannot express the data."""


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
    def _force(engine: DecodingEngine, pairs: list[PreferencePair], *, chosen: bool) -> ForcedResponses:
        texts = [p.chosen if chosen else p.rejected for p in pairs]
        ids = [engine.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        return ForcedResponses.force(engine, [p.prompt for p in pairs], ids)

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
