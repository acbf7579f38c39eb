"""Objectives: observed signals → per-decision rewards and costs, where the learner samples (see base.py)."""
from tokenalign.objectives import hierarchical, preference, weighted  # noqa: F401  (registers the built-ins)
from tokenalign.objectives.base import (
    Objective,
    ObjectiveSection,
    make_objective,
    objective_config_class,
    objective_names,
    register,
    resolve_name,
)

__all__ = ["Objective", "ObjectiveSection", "make_objective", "objective_config_class", "objective_names", "register",
           "resolve_name"]
