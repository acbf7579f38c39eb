"""SampleSetSource: per training prompt, n responses of the base LM with their rewards, for best-of-N distillation.

BoNBoN, vBoN and BOND train the policy towards the best-of-n distribution from sets of base samples per prompt.
The learner actor draws them once when it starts: n copies per prompt with the engine's own sampling (they
share their prompt's prefill, `eval.sampler.sample_copies`), scored with the run's reward (its combined
`final`, what best-of-N keeps the highest of), then teacher-forced into the decisions that emit them
(actors/forced_responses.py). A response that stopped before max_new_tokens stopped at EOS, and keeps it: the
agent learns when to stop too. Every token was a candidate of its step, so none is uncovered.
"""
from __future__ import annotations

import numpy as np
import torch

from tokenalign.actors.forced_responses import ForcedResponses
from tokenalign.envs.task import DecodingTask
from tokenalign.eval.sampler import sample_copies
from tokenalign.learners.offline_batches import SampleSets

SAMPLE_BATCH = 64
"""Sequences decoded together while the sets are drawn."""


class SampleSetSource:
    """`per_prompt` base-LM responses to each of the first `prompts` training prompts (0: all), with rewards."""

    def __init__(self, *, task: DecodingTask, per_prompt: int, prompts: int, seed: int) -> None:
        engine = task.engine
        chosen = task.prompts[:prompts] if prompts else task.prompts
        generator = torch.Generator(device=engine.device).manual_seed(seed)
        max_new = engine.config.max_new_tokens
        ids = sample_copies(engine, engine.encode([p.text for p in chosen]), copies=per_prompt, max_new_tokens=max_new,
                            sampling=engine.config.sampling, batch_size=SAMPLE_BATCH, generator=generator)
        if engine.eos_token_id is not None:
            ids = [t + [engine.eos_token_id] if len(t) < max_new else t for t in ids]
        rows = [p for p in chosen for _ in range(per_prompt)]
        scores = task.score(rows, [engine.tokenizer.decode(t, skip_special_tokens=True) for t in ids])
        self.per_prompt = per_prompt
        self.size = len(chosen)
        self.reward = torch.as_tensor(np.asarray(scores.final, np.float32).reshape(self.size, per_prompt))
        self.responses = ForcedResponses.force(engine, [p.text for p in rows], ids)

    def stats(self) -> dict[str, float]:
        """What the run reports of its data: prompts, responses, tokens, decisions, the base LM's mean reward and
        best-of-n's on these prompts (what the distilled agent aims at)."""
        return {"prompts": float(self.size), "responses": float(len(self.responses)),
                "tokens": float(self.responses.tokens), "decisions": float(len(self.responses.action)),
                "uncovered_token_share": self.responses.uncovered / max(self.responses.tokens, 1),
                "base_reward": float(self.reward.mean()), "best_of_n_reward": float(self.reward.max(dim=1).values.mean())}

    def batch(self, prompts: torch.Tensor) -> SampleSets:
        """The sets of prompts `prompts` (indices into the source)."""
        responses = (prompts.unsqueeze(1) * self.per_prompt + torch.arange(self.per_prompt)).flatten()
        return SampleSets(responses=self.responses.gather(responses), reward=self.reward[prompts])
