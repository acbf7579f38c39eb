"""Learner names → classes and their config dataclasses; `make_learner` builds one from a plain dict."""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from tokenalign.learners.base import Learner
from tokenalign.registry import Registry

LEARNERS: Registry[type[Learner]] = Registry(kind="learner", key="learner.name")
register = LEARNERS.register
"""Class decorator: make a Learner buildable as `make_learner(name, ...)` with `config` as its options."""


def learner_names() -> list[str]:
    """Registered learner names, sorted."""
    return LEARNERS.names()


def learner_class(name: str) -> type[Learner]:
    """The Learner class registered as `name` (its `contract` is readable without building it)."""
    return LEARNERS.lookup(name)[0]


def config_class(name: str) -> type:
    """The config dataclass of learner `name`."""
    return LEARNERS.lookup(name)[1]


def make_config(name: str, config: dict[str, Any] | None = None) -> Any:
    """Learner `name`'s config dataclass with `config`'s overrides, each checked against its field's type;
    an unknown key or a wrong type is a ValueError naming `learner.params.<key>`."""
    from tokenalign.config import from_dict  # config composes every section, this one included

    config_cls = LEARNERS.lookup(name)[1]
    known = [f.name for f in dataclasses.fields(config_cls)]
    overrides = dict(config or {})
    for key in overrides:
        if key not in known:
            raise ValueError(f"unknown config key {key!r} for learner {name!r} (learner.params.{key}); "
                             f"known keys: {', '.join(known)}")
    return from_dict(config_cls, overrides, where="learner.params")


def make_learner(
    name: str, *, hidden_size: int, config: dict[str, Any] | None = None, device: torch.device | str = "cpu",
    preference_dim: int = 0,
) -> Learner:
    """Build learner `name` for an LM of `hidden_size` (agents conditioned on `preference_dim` weights) with
    config overrides `config` on `device`."""
    cls = LEARNERS.lookup(name)[0]
    return cls(hidden_size=hidden_size, config=make_config(name, config), device=device, preference_dim=preference_dim)
