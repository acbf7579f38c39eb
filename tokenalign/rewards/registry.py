"""Scorer kinds by name: each kind is one module of `tokenalign/rewards/scorers/` that registers its class.

A kind's class is decorated with `SCORERS.register(name, config=Options)` (its options dataclass, the
`key=value` settings a scorer spec may give it), declares `path_example` (None for kinds that take no
path), and builds itself with `from_config` (`rewards/factory.py` ScorerKind). `scorer_kinds()` imports every module of the folder once,
so a new kind is one new file there. Kind modules import heavy libraries (transformers) only when a
scorer is built, so listing the kinds stays cheap.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass

from tokenalign.core.registry import Registry

SCORERS: Registry = Registry(kind="scorer kind", key="reward.scorers[].kind")


@dataclass(frozen=True)
class NoOptions:
    """The options of a kind that has none."""


_loaded = False


def scorer_kinds() -> Registry:
    """The registry with every kind of `tokenalign.rewards.scorers` imported (and so registered)."""
    global _loaded
    if not _loaded:
        from tokenalign.rewards import scorers

        for module in pkgutil.iter_modules(scorers.__path__):
            importlib.import_module(f"{scorers.__name__}.{module.name}")
        _loaded = True
    return SCORERS
