"""MARA's proxy decoding strategies that look at every candidate of a step at once, with a greedy agent.

As MARA's evaluation does (evaluation/eval_executor.py, src/mara_generator.py), the agent takes its more
probable action, accept iff its accept logit > 0. When no candidate is accepted, the last candidate is
emitted: the one all-rejected rule of every decode loop (DecodingEngine.settle), where MARA's evaluation
emitted its default_action_idx instead. MARA's `serial` mode is the rollout loop decoding greedily
(tokenalign.eval.evaluate). Strategies:

    top1      the first accepted (in rank order) wins: serial's tokens, paid for with every candidate state
    random    one accepted candidate drawn uniformly
    max_prob  the candidate with the highest accept logit if it is positive

All rows of a batch are decided together from the engine's computed candidate states, one agent call
per forward; no forward per candidate.
"""
from __future__ import annotations

from typing import Literal

import torch

from tokenalign.envs.decode_batch import DecodeBatch
from tokenalign.envs.engine import DecodingEngine
from tokenalign.envs.policies import AcceptLogitFn

Strategy = Literal["top1", "random", "max_prob"]
STRATEGIES: tuple[str, ...] = ("top1", "random", "max_prob")


def _choose(batch: DecodeBatch, logit: torch.Tensor, window: torch.Tensor, strategy: Strategy,
            generator: torch.Generator | None) -> torch.Tensor:
    """The rank every row emits: its strategy's pick among accepted candidates, else its last candidate."""
    accepted = window & (logit > 0)
    any_accepted = accepted.any(dim=1)
    fallback = batch.cand.count - 1
    if strategy == "top1":
        return torch.where(any_accepted, accepted.int().argmax(dim=1), fallback)
    if strategy == "random":
        draw = torch.rand(accepted.shape, generator=generator, device=accepted.device)
        return torch.where(any_accepted, draw.masked_fill(~accepted, -1.0).argmax(dim=1), fallback)
    best = logit.masked_fill(~window, float("-inf")).max(dim=1)
    return torch.where(best.values > 0, best.indices, fallback)


@torch.no_grad()
def proxy_decode(
    engine: DecodingEngine,
    accept_logit: AcceptLogitFn,
    prompts: list[str],
    *,
    strategy: Strategy,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """Generated token ids per prompt (EOS included when reached) under proxy `strategy`, as one batch."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown proxy strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if engine.block < engine.k:
        raise ValueError(f"proxy strategy {strategy!r} looks at every candidate: give its engine candidate_block=0")
    batch = engine.start(prompts)
    finished: dict[int, list[int]] = {}
    while batch.size:
        ranks = torch.arange(engine.k, device=engine.device).expand(batch.size, engine.k)
        # The last candidate is never decided on: it is what an all-rejected step emits.
        window = batch.awaiting.unsqueeze(1) & (ranks < (batch.cand.count - 1).unsqueeze(1))
        rows = torch.arange(batch.size, device=engine.device).unsqueeze(1).expand_as(ranks)
        logit = accept_logit(engine.observation(batch, rows, ranks).flatten(0, 1)).float().view(ranks.shape)
        engine.emit(batch, batch.awaiting, _choose(batch, logit, window, strategy, generator))
        if engine.settle(batch).done:
            for row in batch.done.nonzero(as_tuple=True)[0].tolist():
                finished[int(batch.row_ids[row])] = batch.response_tokens(row)
            engine.compact(batch, ~batch.done)
    return [finished[i] for i in range(len(prompts))]
