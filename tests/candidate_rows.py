"""Candidate rows as the value_guided learner samples them: base-sampled episodes of the tiny LM through the
record batch a rollout actor writes, read back as Decisions (shared by the learner's tests)."""
from __future__ import annotations

import numpy as np
import torch

from tokenalign.actors.records import episodes_to_records, one_step_scores
from tokenalign.buffers.layout import RecordLayout
from tokenalign.buffers.shard import Columns, make_decisions
from tokenalign.envs.engine import DecodingEngine, EngineConfig
from tokenalign.envs.rollout import generate_episodes
from tokenalign.objectives import ObjectiveSection, make_objective
from tokenalign.rewards.combine import RewardCombiner, RewardConfig
from tokenalign.rewards.factory import parse_scorer_spec
from tokenalign.rewards.shaping import ShapingConfig

PROMPTS = ["The secret of life is", "A man", "Love is", "In the beginning"]


def candidate_batch(lm, scorer: str, *, episodes: int, seed: int):
    """Base-sampled episodes' candidate rows, through the record batch a rollout actor writes, as the learner
    samples them (Decisions), with the reward config and objective that label them."""
    model, tokenizer = lm
    engine = DecodingEngine(model=model, tokenizer=tokenizer, config=EngineConfig(max_new_tokens=16,
                                                                                  candidate_state="context"))
    reward = RewardConfig(scorers=[parse_scorer_spec(scorer)])
    combiner = RewardCombiner.from_config(reward)
    prompts = (PROMPTS * (episodes // len(PROMPTS) + 1))[:episodes]
    decoded = generate_episodes(engine, lambda s: torch.sigmoid(s[:, -1]), prompts,
                                generator=torch.Generator().manual_seed(seed), records="candidates")
    scores = combiner.combine(prompts, [e.response for e in decoded])
    step, prefix = one_step_scores(decoded, prompts, tokenizer=tokenizer, score=combiner.raw_scores)
    layout = RecordLayout(state_size=engine.state_size, scorers=(combiner.terms[0].scorer.name,), candidate_rows=True)
    batch = episodes_to_records(decoded, scores, layout=layout, prompt_ids=list(range(episodes)), policy_version=0,
                                step_scores=step, prefix_scores=prefix)
    columns = Columns.from_batch(batch, layout=layout)
    state = torch.from_numpy(np.array(columns.state, dtype=np.float32))
    decisions = make_decisions(columns.scalars, state, torch.zeros_like(state), layout=layout, state_dtype=torch.float32)
    objective = make_objective(ObjectiveSection(name="weighted"), reward=reward, shaping=ShapingConfig(postback=False),
                               gamma=1.0, signals=("reward",))
    return engine, decoded, decisions, objective
