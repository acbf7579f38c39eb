"""Scorer configuration: the dataclass, its compact CLI string form, and `make_scorer`.

Compact form: `kind[:target][,key=value,...]`, e.g. `vader`, `profanity,role=cost,multiplier=-1`,
`hf-classifier:/models/sentiment,label=POSITIVE,output=prob`, `safe-rlhf-score:/models/beaver-7b-v1.0-cost,role=cost`,
`python:my_rewards:length_bonus`. Keys are ScorerConfig field names.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tokenalign.rewards.base import Scorer, ScorerError

Role = Literal["reward", "cost"]
ROLES: tuple[str, ...] = ("reward", "cost")
SCORER_KINDS: tuple[str, ...] = ("vader", "profanity", "distinct", "hf-classifier", "safe-rlhf-score", "python")
_HF_KINDS = ("hf-classifier", "safe-rlhf-score")


@dataclass
class ScorerConfig:
    """One reward or cost model and how its score enters the combined reward."""

    kind: str
    """Scorer kind: vader, profanity, distinct, hf-classifier, safe-rlhf-score or python."""
    path: str | None = None
    """Local model directory (hf-classifier, safe-rlhf-score) or `module:callable` (python)."""
    role: Role = "reward"
    """`reward` (higher is better) or `cost` (higher is less safe, as in safe-rlhf)."""
    multiplier: float = 1.0
    """Weight in MARA's final reward Σ multiplier·score − baseline (MARA's 2:1 demo: vader 2, profanity −1)."""
    name: str | None = None
    """Name in logs and in CombinedScores.raw; derived from kind and path when unset."""
    label: int | str | None = None
    """hf-classifier: the label (index or name) to read; may be unset only for single-output models."""
    output: Literal["logit", "prob"] = "logit"
    """hf-classifier: the label's raw logit (as MARA reads reward models) or its probability."""
    template: str | None = None
    """HF kinds: input text with {prompt} and {response}; unset = {response} (classifier) or beaver's template."""
    batch_size: int = 16
    """HF kinds: texts per forward; a memory knob, not an algorithm setting (MARA scores one at a time)."""
    device: str = "auto"
    """HF kinds: torch device; auto = CUDA when present, else CPU."""
    dtype: str = "auto"
    """HF kinds: float32, float16 or bfloat16; auto = float16 on GPU (as MARA loads score models), float32 on CPU."""
    max_length: int | None = None
    """HF kinds: truncate inputs to this many tokens; unset = no truncation (as MARA's beaver scoring)."""

    def __post_init__(self) -> None:
        if self.kind not in SCORER_KINDS:
            raise ScorerError(f"unknown scorer kind {self.kind!r}; known kinds: {', '.join(SCORER_KINDS)}")
        if self.role not in ROLES:
            raise ScorerError(f"scorer role {self.role!r} is unknown; use 'reward' or 'cost'")
        if self.kind in (*_HF_KINDS, "python") and not self.path:
            example = "python:my_module:my_function" if self.kind == "python" else f"{self.kind}:/path/to/model"
            raise ScorerError(f"scorer kind {self.kind!r} needs a path, e.g. {example!r}")
        if self.output not in ("logit", "prob"):
            raise ScorerError(f"scorer output {self.output!r} is unknown; use 'logit' or 'prob'")
        if self.kind != "hf-classifier" and (self.label is not None or self.output != "logit"):
            raise ScorerError(f"label and output apply to hf-classifier only, not to {self.kind!r}")
        if self.kind not in _HF_KINDS and self.template is not None:
            raise ScorerError(f"template applies to hf-classifier and safe-rlhf-score only, not to {self.kind!r}")


    @property
    def resolved_name(self) -> str:
        """The scorer's name in records and logs: `name`, else derived from kind and path (e.g. hf-classifier:rm)."""
        if self.name:
            return self.name
        if self.kind in _HF_KINDS:
            return f"{self.kind}:{Path(self.path).name}"
        return f"python:{self.path}" if self.kind == "python" else self.kind


_COERCE: dict[str, Callable[[str], object]] = {"multiplier": float, "batch_size": int, "max_length": int}
_OPTION_KEYS = tuple(f.name for f in dataclasses.fields(ScorerConfig) if f.name not in ("kind", "path"))


def parse_scorer_spec(spec: str) -> ScorerConfig:
    """The ScorerConfig that a compact string such as `hf-classifier:/models/rm,label=1` describes."""
    head, *options = spec.strip().split(",")
    kind, _, target = head.partition(":")
    values: dict[str, object] = {}
    for option in options:
        key, eq, value = option.partition("=")
        key = key.strip()
        if not eq or key not in _OPTION_KEYS:
            raise ScorerError(
                f"scorer spec {spec!r}: option {option!r} is not key=value with a key among {', '.join(_OPTION_KEYS)}"
            )
        try:
            values[key] = _COERCE.get(key, str)(value.strip())
        except ValueError as err:
            raise ScorerError(f"scorer spec {spec!r}: {key}={value!r} is not a valid {_COERCE[key].__name__}") from err
    return ScorerConfig(kind=kind.strip(), path=target.strip() or None, **values)


def make_scorer(config: ScorerConfig | str) -> Scorer:
    """Build the scorer a config (or its compact string form) describes.

    Each kind's module is imported only when built: transformers alone takes seconds to import, and
    the demo's lexical scorers should not pay for it.
    """
    if isinstance(config, str):
        config = parse_scorer_spec(config)
    hf_options = dict(
        batch_size=config.batch_size, device=config.device, dtype=config.dtype, max_length=config.max_length,
        **({} if config.template is None else {"template": config.template}),
    )
    if config.kind == "vader":
        from tokenalign.rewards.lexical import VaderScorer

        return VaderScorer(name=config.resolved_name)
    if config.kind == "profanity":
        from tokenalign.rewards.lexical import ProfanityScorer

        return ProfanityScorer(name=config.resolved_name)
    if config.kind == "distinct":
        from tokenalign.rewards.lexical import DistinctScorer

        return DistinctScorer(name=config.resolved_name)
    if config.kind == "hf-classifier":
        from tokenalign.rewards.hf_classifier import HFClassifierScorer

        return HFClassifierScorer(
            path=config.path, name=config.resolved_name, label=config.label, output=config.output, **hf_options
        )
    if config.kind == "safe-rlhf-score":
        from tokenalign.rewards.safe_rlhf import SafeRLHFScorer

        return SafeRLHFScorer(path=config.path, name=config.resolved_name, **hf_options)
    from tokenalign.rewards.python_callable import CallableScorer

    return CallableScorer.from_target(config.path, name=config.resolved_name)
