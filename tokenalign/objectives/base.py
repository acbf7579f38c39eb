"""The Objective API: observed signals → per-decision rewards and costs, in the learner process.

Rollouts store raw signals (buffers/layout.py); an Objective labels each sampled batch of `Decisions`
into the `Transitions` a learner trains on. Changing the objective, or resuming a run with another
one, relabels stored data without a new rollout.

Every objective computes, for each row, its episode's sequence reward R and cost C from the episode's
raw scores (repeated on every row); the base class then places them as MARA does:

    r_t = −kl_ctl·mara_kl_penalty_t              (MARA's shaping, when shaping.token_reward=mara_kl_div)
        + token_reward_t                          (token heads: Σ_k multiplier_k·r_k,t, placed by the rollout actor)
        + R·γ^accepts_to_end_t   (postback)   or   R·done_t
    c_t = C·done_t

so postback, shaping and token rewards mean the same under every objective. A new objective is one
file with `@register`; its options are a dataclass checked at config load (`objective.params`).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from tokenalign.buffers.batches import Decisions, Transitions, with_rewards
from tokenalign.core.parsing import ConfigError, build, changed_fields, from_dict, join, mapping
from tokenalign.core.registry import Registry
from tokenalign.rewards.combine import RewardConfig
from tokenalign.rewards.shaping import ShapingConfig


@dataclass(frozen=True)
class ObjectiveSection:
    """Which objective turns observed signals into rewards and costs, and its settings."""

    name: str | None = None
    """weighted, lagrangian, hierarchical or preference; None: lagrangian for learners that need a separate cost
    signal (ppo_lagrangian, rloo_lagrangian), weighted otherwise."""
    params: Any = None
    """The objective's own config dataclass (e.g. HierarchicalConfig); None: its defaults. In YAML, a mapping of
    its fields, e.g. {threshold: 0.6} for hierarchical."""

    @classmethod
    def for_signals(cls, data: Any, *, signals: tuple[str, ...], where: str) -> ObjectiveSection:
        """The section from YAML, its params parsed for the objective it names (or that a learner needing
        `signals` gets by default)."""
        data = mapping(data, where)
        name = data.get("name")
        if name is not None and not isinstance(name, str):
            raise ConfigError(f"{join(where, 'name')} must be str or null, got {name!r}")
        params_class = _objective_config_class(resolve_name(name, signals=signals))
        params = from_dict(params_class, data.get("params", {}), where=join(where, "params"))
        return build(cls, data, where=where, params=params)

    def to_plain(self) -> dict[str, Any]:
        """As in YAML: params are the fields that differ from the objective's defaults."""
        return {"name": self.name, "params": {} if self.params is None else changed_fields(self.params)}


def resolve_name(name: str | None, *, signals: tuple[str, ...]) -> str:
    """The objective a run uses: `name`, or the default for a learner that needs `signals`."""
    if name is not None:
        return name
    return "lagrangian" if "cost" in signals else "weighted"


class Objective(abc.ABC):
    """Base of all objectives; subclasses implement `episode_values`."""

    name: ClassVar[str]
    """Registry name, set by `@register`."""

    def __init__(self, *, config: Any, reward: RewardConfig, shaping: ShapingConfig, gamma: float) -> None:
        self.config = config
        self.reward = reward
        self.shaping = shaping
        self.gamma = gamma
        self.scorers = [s.resolved_name for s in reward.scorers]
        # A token head's reward reaches the learner per token (the token_reward column); its sequence score,
        # the sum of those, would count it twice.
        self.multiplier = np.array([0.0 if s.token_level else s.multiplier for s in reward.scorers], dtype=np.float64)
        self.is_reward = np.array([s.role == "reward" for s in reward.scorers])

    @property
    def preference_dim(self) -> int:
        """Size of the per-episode conditioning vector w the agent sees (0: unconditioned)."""
        return 0

    def sample_preferences(self, n: int, rng: np.random.Generator) -> np.ndarray | None:
        """Weights w for n new episodes, drawn by the rollout actor (None for unconditioned objectives)."""
        return None

    def scorer_index(self, name: str, *, what: str) -> int:
        """Column of scorer `name` in the records, or one error naming the dotted key and the choices."""
        if name not in self.scorers:
            raise ValueError(f"objective.params.{what} is {name!r}, not a scorer of this run; choose one of {self.scorers}")
        return self.scorers.index(name)

    @abc.abstractmethod
    def episode_values(self, scores: np.ndarray, decisions: Decisions) -> tuple[np.ndarray, np.ndarray]:
        """(R, C), each (B,) float64, for rows whose episodes have raw `scores` (B, scorers)."""

    def label(self, decisions: Decisions) -> Transitions:
        """The Transitions a learner trains on: per-decision rewards and costs for `decisions` (on the CPU)."""
        scores = decisions.scores.double().numpy()
        episode_reward, episode_cost = self.episode_values(scores, decisions)
        done = decisions.done.double()
        final = torch.from_numpy(np.asarray(episode_reward, dtype=np.float64))
        if self.shaping.postback:
            reward = final * torch.pow(torch.tensor(self.gamma, dtype=torch.float64, device=final.device),
                                       decisions.accepts_to_end.double())
        else:
            reward = final * done
        reward = reward + decisions.token_reward.double()
        if self.shaping.token_reward == "mara_kl_div":
            reward = reward - self.shaping.kl_ctl * decisions.mara_kl_penalty.double()
        cost = torch.from_numpy(np.asarray(episode_cost, dtype=np.float64)) * done
        return with_rewards(decisions, reward=reward.float(), cost=cost.float(), conditioned=self.preference_dim > 0)

    def linear_weights(self) -> np.ndarray | None:
        """w with R = w·scores + (a constant per episode) when this objective's sequence reward is linear in the raw
        scores (what one-step value targets need: R of a partial response), else None."""
        return None

    def cost_of(self, scores: np.ndarray) -> np.ndarray:
        """The sequence cost every objective reports: the sum of the cost-role scorers' raw scores (safe-rlhf)."""
        return scores[:, ~self.is_reward].sum(axis=1)

    def state_dict(self) -> dict[str, Any]:
        """Statistics the objective keeps (normalisers), checkpointed with the learner."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""


OBJECTIVES: Registry[type[Objective]] = Registry(kind="objective", key="objective.name")
register = OBJECTIVES.register
"""Class decorator: make an Objective buildable by name with `config` as its options."""


def objective_names() -> list[str]:
    """Registered objective names, sorted."""
    return OBJECTIVES.names()


def objective_config_class(name: str) -> type:
    """The config dataclass of objective `name`."""
    return OBJECTIVES.lookup(name)[1]


def make_objective(
    section: ObjectiveSection, *, reward: RewardConfig, shaping: ShapingConfig, gamma: float, signals: tuple[str, ...]
) -> Objective:
    """Build the run's objective from its config section, for a learner with discount `gamma` needing `signals`."""
    name = resolve_name(section.name, signals=signals)
    config_class = _objective_config_class(name)
    config = config_class() if section.params is None else section.params
    if type(config) is not config_class:
        raise ConfigError(f"objective.params is a {type(config).__name__}; objective {name!r} takes "
                          f"{config_class.__name__}")
    return OBJECTIVES.lookup(name)[0](config=config, reward=reward, shaping=shaping, gamma=gamma)


def _objective_config_class(name: str) -> type:
    try:
        return objective_config_class(name)
    except ValueError as err:
        raise ConfigError(str(err)) from None
