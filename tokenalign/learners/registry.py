"""Learner names → classes and their config dataclasses; `make_learner` builds one from its typed config."""
from __future__ import annotations

from typing import Any

import torch

from tokenalign.core.registry import Registry
from tokenalign.learners.base import Learner

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


def make_learner(
    name: str, *, state_size: int, config: Any = None, device: torch.device | str = "cpu", preference_dim: int = 0,
    seed: int = 0,
) -> Learner:
    """Build learner `name` for candidate states of `state_size` (agents conditioned on `preference_dim` weights) on `device`,
    with `config`, an instance of its config dataclass (None: the defaults), networks and shuffling seeded by `seed`."""
    cls, config_cls = LEARNERS.lookup(name)
    config = config_cls() if config is None else config
    if type(config) is not config_cls:
        raise TypeError(f"learner {name!r} takes a {config_cls.__name__}, got {type(config).__name__}")
    return cls(state_size=state_size, config=config, device=device, preference_dim=preference_dim, seed=seed)
