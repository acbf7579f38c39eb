"""Scorer configuration: the dataclass, its compact CLI string form, and `make_scorer`.

Compact form: `kind[:target][,key=value,...]`, e.g. `vader`, `profanity,role=cost,multiplier=-1`,
`hf-classifier:/models/sentiment,label=POSITIVE,output=prob`, `safe-rlhf-score:/models/beaver-7b-v1.0-cost,role=cost`,
`python:my_rewards:length_bonus`, `head:/runs/heads/reward`. Keys are role, multiplier and name, or one of
the kind's own options (its options dataclass in `tokenalign/rewards/scorers/<kind>.py`). YAML takes the
same keys flat: `{kind: hf-classifier, path: /models/rm, label: 1}`.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tokenalign.rewards.base import Scorer, ScorerError
from tokenalign.rewards.registry import scorer_kinds

Role = Literal["reward", "cost"]
ROLES: tuple[str, ...] = ("reward", "cost")


@dataclass
class ScorerConfig:
    """One reward or cost model and how its score enters the combined reward."""

    kind: str
    """Scorer kind: a name registered in tokenalign/rewards/scorers/ (vader, profanity, hf-classifier, head, ...)."""
    path: str | None = None
    """The kind's target: a local model directory (hf-classifier, safe-rlhf-score, head) or `module:callable` (python)."""
    role: Role = "reward"
    """`reward` (higher is better) or `cost` (higher is less safe, as in safe-rlhf)."""
    multiplier: float = 1.0
    """Weight in MARA's final reward Σ multiplier·score − baseline (MARA's 2:1 demo: vader 2, profanity −1)."""
    name: str | None = None
    """Name in logs and in CombinedScores.raw; derived from kind and path when unset."""
    options: dict[str, Any] = field(default_factory=dict)
    """The kind's own options (e.g. hf-classifier's label, output, template, batch_size, device, dtype)."""

    def __post_init__(self) -> None:
        kinds = scorer_kinds()
        try:
            cls, options_type = kinds.lookup(self.kind)
        except ValueError as err:
            raise ScorerError(str(err)) from None
        if self.role not in ROLES:
            raise ScorerError(f"scorer role {self.role!r} is unknown; use 'reward' or 'cost'")
        if cls.path_example is not None and not self.path:
            raise ScorerError(f"scorer kind {self.kind!r} needs a path, e.g. '{self.kind}:{cls.path_example}'")
        if cls.path_example is None and self.path:
            raise ScorerError(f"scorer kind {self.kind!r} takes no path, got {self.path!r}")
        self.options = dataclasses.asdict(_checked_options(options_type, dict(self.options), kind=self.kind))

    @property
    def kind_options(self) -> Any:
        """The options as the kind's options dataclass."""
        return scorer_kinds().lookup(self.kind)[1](**self.options)

    @property
    def token_level(self) -> bool:
        """Whether the scorer rewards tokens (a token head): objectives then take its reward per token, not per sequence."""
        return scorer_kinds().lookup(self.kind)[0].is_token_level(self)

    @property
    def resolved_name(self) -> str:
        """The scorer's name in records and logs: `name`, else `kind:<last part of path>` (e.g. hf-classifier:rm)."""
        if self.name:
            return self.name
        return f"{self.kind}:{Path(self.path).name}" if self.path else self.kind

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> "ScorerConfig":
        """The config of a YAML mapping whose keys are ScorerConfig fields, with the kind's options flat or under `options`."""
        own = {f.name for f in dataclasses.fields(cls)}
        options = dict(data.get("options") or {})
        options.update({k: v for k, v in data.items() if k not in own})
        return cls(**{k: v for k, v in data.items() if k in own and k != "options"}, options=options)


_COMMON_COERCE = {"multiplier": float}


def _checked_options(options_type: type, values: dict[str, Any], *, kind: str) -> Any:
    """`values` as the kind's options dataclass; spec strings become the numbers their fields hold."""
    hints = typing.get_type_hints(options_type)
    for key, value in values.items():
        if key not in hints:
            keys = ", ".join(sorted(hints)) or "none"
            raise ScorerError(f"scorer kind {kind!r} has no option {key!r}; its options: {keys}")
        values[key] = _coerce(hints[key], value, key=key, kind=kind)
    try:
        return options_type(**values)
    except (TypeError, ValueError) as err:
        if isinstance(err, ScorerError):
            raise
        raise ScorerError(f"scorer kind {kind!r}: {err}") from err


def _coerce(hint: Any, value: Any, *, key: str, kind: str) -> Any:
    """A spec's string as the int or float its field holds; a Literal field's value checked."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None and type(None) in args:
        return None
    literal = next((a for a in args if typing.get_origin(a) is Literal), None)
    if literal is not None and value not in typing.get_args(literal):
        choices = ", ".join(map(repr, typing.get_args(literal)))
        raise ScorerError(f"scorer kind {kind!r}: {key}={value!r} is not one of {choices}")
    if isinstance(value, str) and str not in args:
        for number in (int, float):
            if number in args:
                try:
                    return number(value)
                except ValueError:
                    raise ScorerError(f"scorer kind {kind!r}: {key}={value!r} is not a valid {number.__name__}") from None
    return value


def parse_scorer_spec(spec: str) -> ScorerConfig:
    """The ScorerConfig that a compact string such as `hf-classifier:/models/rm,label=1` describes."""
    head, *options = spec.strip().split(",")
    kind, _, target = head.partition(":")
    values: dict[str, Any] = {}
    for option in options:
        key, eq, value = option.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ScorerError(f"scorer spec {spec!r}: option {option!r} is not key=value")
        coerce = _COMMON_COERCE.get(key, str)
        try:
            values[key] = coerce(value.strip())
        except ValueError:
            raise ScorerError(f"scorer spec {spec!r}: {key}={value.strip()!r} is not a valid {coerce.__name__}") from None
    return ScorerConfig.from_mapping({"kind": kind.strip(), "path": target.strip() or None, **values})


def make_scorer(config: ScorerConfig | str) -> Scorer:
    """Build the scorer a config (or its compact string form) describes."""
    if isinstance(config, str):
        config = parse_scorer_spec(config)
    cls, _ = scorer_kinds().lookup(config.kind)
    return cls.from_config(config)
