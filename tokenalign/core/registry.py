"""Names → (class, options dataclass) for each kind of pluggable component: learners, objectives.

A new method is one file whose class is decorated with its kind's `register(name, config=...)`; the
config dataclass is what `<section>.params` is checked against when a run config loads.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    """The registered classes of one kind, each with its options dataclass."""

    def __init__(self, *, kind: str, key: str) -> None:
        self.kind = kind
        """What is registered, in messages ("learner")."""
        self.key = key
        """The config key that names one ("learner.name")."""
        self.entries: dict[str, tuple[T, type]] = {}

    def register(self, name: str, *, config: type) -> Callable[[T], T]:
        """Class decorator: make the class buildable by `name` with `config` as its options; sets `cls.name`."""

        def decorate(cls: T) -> T:
            if name in self.entries:
                raise ValueError(f"{self.kind} name {name!r} is already registered by {self.entries[name][0].__qualname__}")
            cls.name = name
            self.entries[name] = (cls, config)
            return cls

        return decorate

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self.entries)

    def lookup(self, name: str) -> tuple[T, type]:
        """(class, options dataclass) registered as `name`, or one ValueError naming the config key and the choices."""
        if name not in self.entries:
            raise ValueError(f"unknown {self.kind} {name!r} ({self.key}); known {self.kind}s: {', '.join(self.names())}")
        return self.entries[name]
