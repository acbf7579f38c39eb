"""`head`: a reward, cost or token head fitted by `tokenalign fit-scorer`, scoring from the LM's states.

`head:DIR` reads DIR/head.json and DIR/head.safetensors (tokenalign/heads/model.py). When the head was
fitted on the policy LM, the rollout actor hands it the states the decoding engine already computed
(`use_policy_lm`, then `score_states`): scoring costs one small MLP forward. Otherwise, the first call
loads the head's own LM and scores texts in batched forwards of it.

Reward and cost heads give one score per response, from the state after its last token (or the mean of
its tokens' states, as the head was fitted). Token heads
(TLCR's discriminator) give every response token r_t = 2·p_t(positive) − 1, clipped to ±`clip`; their
score is Σ_t r_t, and in training the r_t themselves go into the per-token reward column, so objectives
leave the token head's score out of the sequence reward (`is_token_level`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tokenalign.heads.model import HeadError, ScoreHead, load_head, read_head_config
from tokenalign.heads.states import ResponseStates, StateReader, pooled
from tokenalign.rewards.base import ScorerError
from tokenalign.rewards.factory import ScorerConfig
from tokenalign.rewards.hf_common import resolve_device, resolve_dtype
from tokenalign.rewards.registry import SCORERS
from tokenalign.rewards.scorer_base import ScorerBase


@dataclass(frozen=True)
class HeadOptions:
    """Options of the `head` scorer."""

    batch_size: int = 32
    """Texts per forward of the head's own LM (not used when it reads the policy LM's states)."""
    device: str = "auto"
    """Device of the head's own LM; auto = CUDA when present, else CPU."""
    dtype: str = "auto"
    """dtype of the head's own LM; auto = float16 on GPU, float32 on CPU."""
    clip: float = 5.0
    """Token heads: |r_t| ≤ clip (TLCR clips its per-token reward at ±5)."""


@SCORERS.register("head", config=HeadOptions)
class HeadScorer(ScorerBase):
    """A fitted head as a scorer; see the module docstring."""

    path_example: ClassVar[str | None] = "runs/heads/reward"

    def __init__(self, *, path: str | Path, name: str, options: HeadOptions = HeadOptions()) -> None:
        super().__init__(name=name)
        self.path = Path(path).expanduser()
        try:
            self.head_config = read_head_config(self.path)
        except HeadError as err:
            raise ScorerError(f"scorer {name!r}: {err}") from None
        self.options = options
        self.head: ScoreHead | None = None
        self.reader: StateReader | None = None
        self.reads_policy_lm = False

    @classmethod
    def from_config(cls, config: ScorerConfig) -> HeadScorer:
        return cls(path=config.path, name=config.resolved_name, options=config.options)

    @classmethod
    def is_token_level(cls, config: ScorerConfig) -> bool:
        try:
            return read_head_config(config.path).kind == "token"
        except HeadError as err:
            raise ScorerError(f"scorer {config.resolved_name!r}: {err}") from None

    @property
    def token_level(self) -> bool:
        """A token head: its rewards are per token."""
        return self.head_config.kind == "token"

    def use_policy_lm(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, name: str) -> bool:
        """Read the policy LM's states from now on if the head was fitted on that LM; whether it was."""
        try:
            self.head = load_head(self.path, lm=model, lm_name=name).to(next(model.parameters()).device)
        except HeadError:
            return False
        self.reader = StateReader(model=model, tokenizer=tokenizer, batch_size=self.options.batch_size)
        self.reads_policy_lm = True
        return True

    def _load_own_lm(self) -> None:
        from tokenalign.lm.loader import load_lm

        device = resolve_device(self.options.device)
        lm = self.head_config.lm
        try:
            model, tokenizer = load_lm(lm, device=device, dtype=resolve_dtype(self.options.dtype, device))
            self.head = load_head(self.path, lm=model, lm_name=lm).to(device)
        except (FileNotFoundError, ValueError) as err:
            raise ScorerError(f"scorer {self.name!r} cannot load the LM its head reads ({err})") from None
        self.reader = StateReader(model=model, tokenizer=tokenizer, batch_size=self.options.batch_size)

    def _score(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        if self.reader is None:
            self._load_own_lm()
        states = self.reader.states(self.reader.encode(prompts, responses))
        return self.score_states([ResponseStates(states=s, length=s.shape[0] - 1) for s in states])

    @torch.no_grad()
    def score_states(self, responses: Sequence[ResponseStates]) -> np.ndarray:
        """One score per response from its states: the last real token's for reward and cost, Σ_t r_t for token heads."""
        if self.token_level:
            return np.array([r.sum() for r in self.token_rewards(responses)], dtype=np.float32)
        if self.head is None:
            self._load_own_lm()
        device = self.head.norm.weight.device
        return self.head(pooled(responses, self.head_config.pooling).to(device)).float().cpu().numpy()

    @torch.no_grad()
    def token_rewards(self, responses: Sequence[ResponseStates]) -> list[np.ndarray]:
        """TLCR's r_t for each of a response's T tokens (0 for a trailing EOS, which the head never saw in fitting)."""
        if not self.token_level:
            raise ScorerError(f"scorer {self.name!r} is a {self.head_config.kind} head; only token heads reward tokens")
        if self.head is None:
            self._load_own_lm()
        device = self.head.norm.weight.device
        tokens = [r.states[1: r.length + 1] for r in responses]
        flat = self.head.token_reward(torch.cat(tokens).to(device), clip=self.options.clip).cpu().numpy()
        out, start = [], 0
        for r, t in zip(responses, tokens):
            reward = np.zeros(r.states.shape[0] - 1, dtype=np.float32)
            reward[: r.length] = flat[start: start + len(t)]
            out.append(reward)
            start += len(t)
        return out
