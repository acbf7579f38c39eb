"""The base LM's perplexity of each response given its prompt.

A reward that climbs while perplexity explodes is reward hacking: the agent found token strings the
scorers like but the LM would never write. The LM's own distribution is used (temperature 1, no
top-k/top-p), so the number is comparable across decoding settings.
"""
from __future__ import annotations

import numpy as np
import torch
from transformers import PreTrainedModel

from tokenalign.eval.padding import left_pad


@torch.no_grad()
def response_perplexity(
    model: PreTrainedModel,
    prompt_ids: list[list[int]],
    response_ids: list[list[int]],
    *,
    pad_token_id: int,
    batch_size: int = 16,
) -> np.ndarray:
    """exp(mean NLL of the response tokens given prompt + earlier response tokens), float64 (n,)."""
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"got {len(prompt_ids)} prompts and {len(response_ids)} responses; pass one per response")
    if any(not r for r in response_ids):
        raise ValueError("every response needs at least one token to have a perplexity")
    device = next(model.parameters()).device
    out = np.empty(len(response_ids), dtype=np.float64)
    for lo in range(0, len(response_ids), batch_size):
        prompts, responses = prompt_ids[lo: lo + batch_size], response_ids[lo: lo + batch_size]
        input_ids, attention_mask, position_ids = left_pad(
            [p + r for p, r in zip(prompts, responses)], pad_token_id=pad_token_id, device=device)
        # Left padding puts every response at the right end, so only the last R+1 positions' logits matter.
        width = max(len(r) for r in responses)
        logits = model(input_ids=input_ids, attention_mask=attention_mask.long(), position_ids=position_ids,
                       logits_to_keep=width + 1).logits[:, :-1]
        targets = input_ids[:, -width:]
        # log q(target) = logit − logsumexp, one row in fp32 at a time: a whole batch's fp32 logits and a
        # log-softmax copy of them would take gigabytes at a 128k vocabulary.
        logp = torch.stack([_target_logp(logits[i], targets[i]) for i in range(len(responses))])
        lengths = torch.tensor([len(r) for r in responses], device=device)
        in_response = torch.arange(width, device=device).unsqueeze(0) >= (width - lengths).unsqueeze(1)
        nll = -(logp * in_response).sum(dim=1) / lengths
        out[lo: lo + len(responses)] = torch.exp(nll).double().cpu().numpy()
    return out


def _target_logp(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(T,) log-probabilities of `targets` (T,) under next-token `logits` (T, V), computed in fp32."""
    row = logits.float()
    return row.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(row, dim=-1)
