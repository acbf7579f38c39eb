"""`python`: a user's own scoring function, named as `module:callable` and imported where the scorer runs."""
from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import ClassVar

from tokenalign.rewards.base import ScorerError
from tokenalign.rewards.factory import ScorerConfig
from tokenalign.rewards.registry import SCORERS, NoOptions
from tokenalign.rewards.scorer_base import ScorerBase

ScoreFunction = Callable[[list[str], list[str]], Sequence[float]]


def import_callable(target: str) -> ScoreFunction:
    """Import `module.sub:attr.path` and return the callable it names."""
    module_name, colon, attr_path = target.partition(":")
    if not colon or not module_name or not attr_path:
        raise ScorerError(
            f"python scorer target {target!r} must look like 'module.sub:function' (e.g. python:my_rewards:score)"
        )
    try:
        obj = importlib.import_module(module_name)
    except ImportError as err:
        raise ScorerError(
            f"python scorer cannot import module {module_name!r} ({err}); install it or add its folder to PYTHONPATH "
            "on every machine that scores"
        ) from err
    for attr in attr_path.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError as err:
            raise ScorerError(f"python scorer: module {module_name!r} has no attribute {attr_path!r}") from err
    if not callable(obj):
        raise ScorerError(f"python scorer target {target!r} is a {type(obj).__name__}, not a callable")
    return obj


@SCORERS.register("python", config=NoOptions)
class CallableScorer(ScorerBase):
    """Scores with `fn(prompts, responses) -> one float per response`."""

    path_example: ClassVar[str | None] = "my_module:my_function"

    def __init__(self, *, fn: ScoreFunction, name: str) -> None:
        super().__init__(name=name)
        self._fn = fn

    @classmethod
    def from_config(cls, config: ScorerConfig) -> CallableScorer:
        """The scorer for `module:callable`, named `python:module:callable` unless the config names it."""
        return cls(fn=import_callable(config.path), name=config.resolved_name)

    def _score(self, prompts: list[str], responses: list[str]) -> Sequence[float]:
        return self._fn(prompts, responses)
