"""The LM states a head reads, computed from text (or token ids) in batched forwards of a frozen LM.

For a prompt and a response the states are, in order, the LM's last hidden state after the prompt and
after each response token: exactly what the decoding engine computes while it decodes (a candidate's
state is "context + candidate", and the engine keeps the emitted ones with `keep_token_states`), so a
head fitted here scores an episode from the engine's states with no forward of its own. Prompts are
tokenised as the engine feeds them (no special tokens; an empty prompt is EOS). Responses carry no EOS:
`response_length` drops a trailing one from generated ids, so reward and cost heads read the state
after the last real token either way.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tokenalign.lm.prompt_ids import prompt_token_ids


@dataclass(frozen=True)
class ResponseStates:
    """One response's states as a head reads them."""

    states: torch.Tensor
    """(T + 1, H): the state after the prompt, then after each of the response's T tokens (EOS included)."""
    length: int
    """Response tokens before a trailing EOS: reward and cost heads read states[length]."""


Pooling = Literal["last", "mean"]


def pooled(responses: Sequence[ResponseStates], how: Pooling) -> torch.Tensor:
    """(n, H) what a reward or cost head reads of each response: the state after its last token (safe-rlhf's end
    score), or the mean over its tokens' states; an empty response gives the state after the prompt either way."""
    if how == "last":
        return torch.stack([r.states[r.length] for r in responses])
    return torch.stack([r.states[1: r.length + 1].float().mean(0) if r.length else r.states[0].float()
                        for r in responses])


def response_length(token_ids: Sequence[int], eos_token_id: int | None) -> int:
    """Tokens of a response before a trailing EOS (the state a reward or cost head reads is after the last of them)."""
    n = len(token_ids)
    return n - 1 if n and eos_token_id is not None and token_ids[-1] == eos_token_id else n


class StateReader:
    """Batched forwards of a frozen causal LM giving the per-position states of (prompt, response) pairs."""

    def __init__(self, *, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch_size: int = 32) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.device = next(model.parameters()).device
        self.hidden_size = int(model.config.hidden_size)
        self.max_positions = (getattr(model.config, "max_position_embeddings", None)
                              or getattr(model.config, "n_positions", None))

    def encode(self, prompts: Sequence[str], responses: Sequence[str]) -> list[tuple[list[int], list[int]]]:
        """(prompt ids, response ids) of each pair, tokenised as the engine feeds them."""
        pairs = []
        for prompt, response in zip(prompts, responses, strict=True):
            prompt_ids = prompt_token_ids(self.tokenizer, prompt)
            pairs.append((prompt_ids, self.tokenizer(response, add_special_tokens=False)["input_ids"]))
        return pairs

    @torch.no_grad()
    def states(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[torch.Tensor]:
        """(len(response) + 1, H) float32 states of each (prompt ids, response ids) pair, on the CPU.

        A pair longer than the LM's positions loses the start of its prompt (as the engine cuts prompts).
        Pairs are sorted by length into batches so that padding stays small.
        """
        fitted = [self._fit(list(p), list(r)) for p, r in pairs]
        order = sorted(range(len(fitted)), key=lambda i: len(fitted[i][0]) + len(fitted[i][1]))
        out: list[torch.Tensor | None] = [None] * len(fitted)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start: start + self.batch_size]
            ids = [fitted[i][0] + fitted[i][1] for i in chunk]
            width = max(len(x) for x in ids)
            input_ids = torch.full((len(ids), width), self.tokenizer.pad_token_id or 0, dtype=torch.long)
            mask = torch.zeros(len(ids), width, dtype=torch.long)
            for row, x in enumerate(ids):  # right padding: every real token keeps the position it has alone
                input_ids[row, : len(x)] = torch.tensor(x)
                mask[row, : len(x)] = 1
            hidden = self.model.base_model(input_ids=input_ids.to(self.device),
                                           attention_mask=mask.to(self.device)).last_hidden_state.float().cpu()
            for row, i in enumerate(chunk):
                first = len(fitted[i][0]) - 1
                out[i] = hidden[row, first: first + len(fitted[i][1]) + 1]
        return out  # type: ignore[return-value]

    def _fit(self, prompt: list[int], response: list[int]) -> tuple[list[int], list[int]]:
        if self.max_positions is None or len(prompt) + len(response) <= self.max_positions:
            return prompt, response
        response = response[: self.max_positions - 1]
        return prompt[-(self.max_positions - len(response)):], response
