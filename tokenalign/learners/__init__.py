"""Learners: the Learner API, its registry, and the algorithms (each registers itself on import).

Adding an algorithm is one new module here with a `@register("name", config=...)` class: every module of
this package is imported below, so the registry sees it without further wiring.
"""
import importlib
import pkgutil

from tokenalign.learners.base import Learner, LearnerContract
from tokenalign.learners.registry import config_class, learner_class, learner_names, make_learner, register

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
del _module

__all__ = ["Learner", "LearnerContract", "config_class", "learner_class", "learner_names", "make_learner", "register"]
