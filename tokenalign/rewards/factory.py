"""Scorer configuration: the dataclass, its compact CLI string form, and `make_scorer`.

Compact form: `kind[:target][,key=value,...]`, e.g. `vader`, `profanity,role=cost,multiplier=-1`,
`hf-classifier:/models/sentiment,label=POSITIVE,output=prob`, `safe-rlhf-score:/models/beaver-7b-v1.0-cost,role=cost`,
`python:my_rewards:length_bonus`, `head:/runs/heads/reward`. Keys are role, multiplier and name, or one of
the kind's own options (its options dataclass in `tokenalign/rewards/scorers/<kind>.py`). YAML takes the
same keys flat: `{kind: hf-classifier, path: /models/rm, label: 1}`. Either form is parsed once, into a
ScorerConfig whose `options` is the kind's options dataclass.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

from tokenalign.core.parsing import ConfigError, coerce
from tokenalign.rewards.base import Scorer, ScorerError
from tokenalign.rewards.registry import scorer_kinds

Role = Literal["reward", "cost"]
ROLES: tuple[str, ...] = ("reward", "cost")


class ScorerKind(Protocol):
    """What a registered scorer class provides besides the Scorer interface."""

    path_example: ClassVar[str | None]
    """An example of the kind's path (its model directory, file or target), None when it takes no path."""

    @classmethod
    def from_config(cls, config: ScorerConfig) -> Scorer:
        """The scorer `config` describes (its options are `config.options`)."""
        ...

    @classmethod
    def is_token_level(cls, config: ScorerConfig) -> bool:
        """Whether a scorer of this config rewards tokens (ScorerBase: no)."""
        ...


@dataclass(frozen=True)
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
    options: Any = None
    """The kind's own options dataclass (e.g. hf-classifier's label, output, template, batch_size, device, dtype);
    None: its defaults."""

    def __post_init__(self) -> None:
        cls, options_type = _kind(self.kind)
        if self.role not in ROLES:
            raise ScorerError(f"scorer role {self.role!r} is unknown; use 'reward' or 'cost'")
        if cls.path_example is not None and not self.path:
            raise ScorerError(f"scorer kind {self.kind!r} needs a path, e.g. '{self.kind}:{cls.path_example}'")
        if cls.path_example is None and self.path:
            raise ScorerError(f"scorer kind {self.kind!r} takes no path, got {self.path!r}")
        if self.options is None:
            object.__setattr__(self, "options", options_type())
        elif type(self.options) is not options_type:
            raise ScorerError(f"scorer kind {self.kind!r} takes options {options_type.__name__}, "
                              f"got {type(self.options).__name__}")

    @property
    def token_level(self) -> bool:
        """Whether the scorer rewards tokens (a token head): objectives then take its reward per token, not per sequence."""
        return _kind(self.kind)[0].is_token_level(self)

    @property
    def resolved_name(self) -> str:
        """The scorer's name in records and logs: `name`, else `kind:<last part of path>` (e.g. hf-classifier:rm)."""
        if self.name:
            return self.name
        return f"{self.kind}:{Path(self.path).name}" if self.path else self.kind

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> ScorerConfig:
        """The config of a mapping whose keys are ScorerConfig fields, with the kind's options flat or under
        `options`; values may be text (a spec string's), which fills number fields."""
        own = {f.name for f in dataclasses.fields(cls)}
        options = dict(data.get("options") or {})
        options.update({k: v for k, v in data.items() if k not in own})
        kind = data.get("kind")
        if not isinstance(kind, str):
            raise ScorerError(f"a scorer needs a kind (a string such as 'vader'), got {kind!r}")
        fields = {k: v for k, v in data.items() if k in own and k != "options"}
        if "multiplier" in fields:
            fields["multiplier"] = _coerced(float, fields["multiplier"], "multiplier", kind=kind)
        return cls(**fields, options=_options(_kind(kind)[1], options, kind=kind))

    @classmethod
    def from_plain(cls, data: Any, *, where: str) -> ScorerConfig:
        """A scorer from a run config: its compact string or a mapping, errors keyed by `where`."""
        try:
            if isinstance(data, str):
                return parse_scorer_spec(data)
            if not isinstance(data, dict):
                raise ConfigError(f"{where} must be a scorer spec string or a mapping, got {data!r}")
            return cls.from_mapping(data)
        except (TypeError, ScorerError) as err:
            raise ConfigError(f"{where}: {err}") from err


def _kind(kind: str) -> tuple[type[ScorerKind], type]:
    try:
        return scorer_kinds().lookup(kind)
    except ValueError as err:
        raise ScorerError(str(err)) from None


def _options(options_type: type, values: dict[str, Any], *, kind: str) -> Any:
    """`values` as the kind's options dataclass; spec strings become the numbers their fields hold."""
    hints = typing.get_type_hints(options_type)
    for key in values:
        if key not in hints:
            keys = ", ".join(sorted(hints)) or "none"
            raise ScorerError(f"scorer kind {kind!r} has no option {key!r}; its options: {keys}")
    typed = {key: _coerced(hints[key], value, key, kind=kind) for key, value in values.items()}
    try:
        return options_type(**typed)
    except (TypeError, ValueError) as err:
        if isinstance(err, ScorerError):
            raise
        raise ScorerError(f"scorer kind {kind!r}: {err}") from err


def _coerced(hint: Any, value: Any, key: str, *, kind: str) -> Any:
    try:
        return coerce(hint, value, key, from_text=True)
    except ConfigError as err:
        raise ScorerError(f"scorer kind {kind!r}: {err}") from None


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
        values[key] = value.strip()
    return ScorerConfig.from_mapping({"kind": kind.strip(), "path": target.strip() or None, **values})


def make_scorer(config: ScorerConfig | str) -> Scorer:
    """Build the scorer a config (or its compact string form) describes."""
    if isinstance(config, str):
        config = parse_scorer_spec(config)
    cls, _ = scorer_kinds().lookup(config.kind)
    return cls.from_config(config)
