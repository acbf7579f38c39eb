"""Decoding with the LLM alone: the `base` (sampling), `greedy` and best-of-N baselines.

An agent that accepts each candidate with the LLM's probability is not sampling: its accept chain walks
the candidates in rank order, which over-weights the top ranks. So the baselines get their own batched
sampler, driven by the engine's LM and settings: logits are warped by the engine's `propose`, so base
sampling draws from exactly the candidates an agent would be shown. Finished rows leave the batch, as
they do in the engine, so both pay only for live sequences. Several samples of one context
(`sample_copies`: best-of-N sets, preference pairs) share its prefill.
"""
from __future__ import annotations

import torch
from transformers import DynamicCache

from tokenalign.envs.candidates import SamplingConfig, propose
from tokenalign.envs.engine import DecodingEngine
from tokenalign.eval.padding import left_pad


def next_tokens(logits: torch.Tensor, sampling: SamplingConfig, *, greedy: bool,
                generator: torch.Generator | None) -> torch.Tensor:
    """(B,) tokens: the argmax of (B, V) `logits`, or one draw from their top-k/top-p/temperature warp."""
    if greedy:
        return logits.argmax(dim=-1)
    candidates = propose(logits, sampling)
    pick = torch.multinomial(candidates.logp.exp(), 1, generator=generator)
    return candidates.token_ids.gather(1, pick).squeeze(1)


@torch.no_grad()
def sample_responses(
    engine: DecodingEngine, prompts: list[str], *, greedy: bool = False, generator: torch.Generator | None = None
) -> list[list[int]]:
    """Generated token ids per prompt (EOS included when reached), sampled or greedy, as one batch."""
    model, device = engine.model, engine.device
    max_new = engine.config.max_new_tokens
    # The engine's own prompt encoding (empty prompt → EOS, left truncation), so both see the same context.
    input_ids, attention_mask, position_ids = left_pad(engine.encode(prompts), pad_token_id=engine.pad_token_id,
                                                       device=device)
    cache = DynamicCache(config=model.config)
    logits = model(input_ids=input_ids, attention_mask=attention_mask.long(), position_ids=position_ids,
                   cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1].float()
    n_real = attention_mask.sum(dim=1)
    tokens = torch.full((len(prompts), max_new), engine.pad_token_id, dtype=torch.long, device=device)
    n_new = torch.zeros(len(prompts), dtype=torch.long, device=device)
    rows = torch.arange(len(prompts), device=device)  # caller's index of each live row
    for step in range(max_new):
        token = next_tokens(logits, engine.config.sampling, greedy=greedy, generator=generator)
        tokens[rows, step] = token
        n_new[rows] += 1
        live = torch.ones_like(token, dtype=torch.bool) if engine.eos_token_id is None else token != engine.eos_token_id
        if step == max_new - 1 or not bool(live.any()):
            break
        if not bool(live.all()):
            keep = live.nonzero(as_tuple=True)[0]
            cache.batch_select_indices(keep)
            rows, attention_mask, n_real, token = rows[keep], attention_mask[keep], n_real[keep], token[keep]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(rows), 1)], dim=1)
        logits = model(input_ids=token.unsqueeze(1), attention_mask=attention_mask.long(),
                       position_ids=n_real.unsqueeze(1), cache=cache, use_cache=True).logits[:, -1].float()
        n_real = n_real + 1
    return [tokens[i, : int(n)].tolist() for i, n in enumerate(n_new)]


@torch.no_grad()
def sample_copies(engine: DecodingEngine, contexts: list[list[int]], *, copies: int, max_new_tokens: int,
                  sampling: SamplingConfig, batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """New token ids of `copies` samples per context (context-major), each cut before its first EOS.

    Contexts are prefilled in length order, so a forward pads little, and once each: their copies share the
    prefill's cache. Finished rows leave the batch, as in the engine.
    """
    model, device = engine.model, engine.device
    per_call = max(batch_size // copies, 1)
    order = sorted(range(len(contexts)), key=lambda i: len(contexts[i]))
    samples: list[list[int]] = [[] for _ in range(len(contexts) * copies)]
    for first in range(0, len(order), per_call):
        chunk = order[first : first + per_call]
        input_ids, attention_mask, position_ids = left_pad([contexts[i] for i in chunk],
                                                           pad_token_id=engine.pad_token_id, device=device)
        cache = DynamicCache(config=model.config)
        logits = model(input_ids=input_ids, attention_mask=attention_mask.long(), position_ids=position_ids,
                       cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1].float()
        cache.batch_repeat_interleave(copies)
        logits = logits.repeat_interleave(copies, dim=0)
        attention_mask = attention_mask.repeat_interleave(copies, dim=0)
        n_real = attention_mask.sum(dim=1)
        tokens = torch.full((len(logits), max_new_tokens), engine.pad_token_id, dtype=torch.long, device=device)
        length = torch.full((len(logits),), max_new_tokens, dtype=torch.long, device=device)
        rows = torch.arange(len(logits), device=device)  # chunk row of each live row
        for step in range(max_new_tokens):
            token = next_tokens(logits, sampling, greedy=False, generator=generator)
            tokens[rows, step] = token
            ended = token == engine.eos_token_id
            length[rows[ended]] = step
            if step == max_new_tokens - 1 or bool(ended.all()):
                break
            if bool(ended.any()):
                keep = (~ended).nonzero(as_tuple=True)[0]
                cache.batch_select_indices(keep)
                rows, attention_mask, n_real, token = rows[keep], attention_mask[keep], n_real[keep], token[keep]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(rows), 1)], dim=1)
            logits = model(input_ids=token.unsqueeze(1), attention_mask=attention_mask.long(),
                           position_ids=n_real.unsqueeze(1), cache=cache,
                           use_cache=True).logits[:, -1].float()
            n_real = n_real + 1
        for j, (row, n) in enumerate(zip(tokens.tolist(), length.tolist())):
            samples[chunk[j // copies] * copies + j % copies] = row[:n]
    return samples
