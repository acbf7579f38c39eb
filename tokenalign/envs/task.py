"""What the Gymnasium faces share: the LM and engine, the prompt set, and the sequence reward.

`DecodingTask.build` turns the env's keyword arguments (paths, specs, plain dicts) into live objects
once, so the single env and the vector env accept exactly the same arguments.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tokenalign.data.prompts import Prompt, load_prompts, prompt_id
from tokenalign.envs.candidates import SamplingConfig
from tokenalign.envs.engine import DecodingEngine, EngineConfig
from tokenalign.heads.states import ResponseStates
from tokenalign.lm.loader import load_lm
from tokenalign.rewards.combine import CombinedScores, RewardCombiner, RewardConfig
from tokenalign.rewards.factory import ScorerConfig, parse_scorer_spec

ModelArg = str | tuple[PreTrainedModel, PreTrainedTokenizerBase]
ScorersArg = RewardConfig | Sequence[ScorerConfig | str | dict[str, Any]] | None


@dataclass
class DecodingTask:
    """A decoding engine over a prompt set, with the reward that scores finished responses."""

    engine: DecodingEngine
    prompts: list[Prompt]
    combiner: RewardCombiner

    @classmethod
    def build(
        cls,
        *,
        model: ModelArg = "builtin:tiny",
        prompts: str | Sequence[str] | Sequence[Prompt] = "builtin:demo-train",
        scorers: ScorersArg = None,
        sampling: SamplingConfig | dict[str, Any] | None = None,
        max_new_tokens: int = 32,
        candidate_block: int = 8,
        candidate_state: str = "lookahead",
        device: str = "cpu",
        dtype: str = "auto",
    ) -> DecodingTask:
        if isinstance(model, str):
            lm, tokenizer = load_lm(model, device=device, dtype=dtype)
        else:
            lm, tokenizer = model
        if isinstance(sampling, dict):
            sampling = SamplingConfig(**sampling)
        engine = DecodingEngine(model=lm, tokenizer=tokenizer, config=EngineConfig(
            sampling=sampling or SamplingConfig(), max_new_tokens=max_new_tokens, candidate_block=candidate_block,
            candidate_state=candidate_state))
        return cls(engine=engine, prompts=_prompt_set(prompts), combiner=RewardCombiner.from_config(_reward_config(scorers)))

    @property
    def state_size(self) -> int:
        """Features of a candidate state (what the agent reads beside π_ref's accept logit)."""
        return self.engine.state_size

    def score(self, prompts: list[Prompt], responses: list[str], *,
              states: Sequence[ResponseStates] | None = None) -> CombinedScores:
        """Score finished responses (heads on the policy LM from their `states`); the SFT baseline, when
        configured, decodes greedily with the engine."""
        ids = [p.id for p in prompts]
        missing = set(self.combiner.missing_baselines(ids))
        baseline = None
        if missing:
            todo = [p for p in {p.id: p for p in prompts if p.id in missing}.values()]
            baseline = dict(zip([p.id for p in todo], self.greedy_responses([p.text for p in todo])))
        return self.combiner.combine([p.text for p in prompts], responses, prompt_ids=ids, baseline_responses=baseline,
                                     states=states)

    @torch.no_grad()
    def greedy_responses(self, texts: list[str]) -> list[str]:
        """The base LM's greedy responses: the engine with an agent that accepts every first candidate."""
        from tokenalign.envs.rollout import generate_episodes  # rollout builds on the engine, not on tasks

        episodes = generate_episodes(self.engine, lambda s: torch.ones(s.shape[0]), texts)
        return [e.response for e in episodes]

    def pick_prompt(self, rng: np.random.Generator) -> Prompt:
        return self.prompts[int(rng.integers(len(self.prompts)))]


def _prompt_set(prompts: str | Sequence[str] | Sequence[Prompt]) -> list[Prompt]:
    """A dataset spec, loaded prompts, or inline prompt strings."""
    if isinstance(prompts, str):
        return load_prompts(prompts)
    items = list(prompts)
    if not items:
        raise ValueError("prompts is an empty list; pass prompt strings or a dataset spec such as 'builtin:demo-train'")
    return [p if isinstance(p, Prompt) else Prompt(id=prompt_id(p), text=p, source="inline") for p in items]


def _reward_config(scorers: ScorersArg) -> RewardConfig:
    if scorers is None:
        return RewardConfig()
    if isinstance(scorers, RewardConfig):
        return scorers
    configs = []
    for spec in scorers:
        if isinstance(spec, str):
            configs.append(parse_scorer_spec(spec))
        elif isinstance(spec, dict):
            configs.append(ScorerConfig.from_mapping(spec))
        else:
            configs.append(spec)
    return RewardConfig(scorers=configs)
