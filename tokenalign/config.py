"""The run configuration: typed dataclass sections, loaded from YAML, changed by dotted overrides.

Each component owns the dataclass of its own section (envs.EngineConfig, rewards.RewardConfig, ...);
this module only composes them, so a setting is documented once, next to the code it drives.

    cfg = load_config("configs/demo.yaml", ["learner.name=ppo_lagrangian", "rollout.num_actors=4"])

Unknown keys, wrong types and malformed overrides are errors that name the dotted key.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from tokenalign.buffers.config import BufferConfig
from tokenalign.buffers.redis_client import public_url
from tokenalign.data import DataConfig
from tokenalign.envs.engine import EngineConfig
from tokenalign.lm import LMDtype
from tokenalign.objectives import ObjectiveSection
from tokenalign.rewards.combine import RewardConfig
from tokenalign.rewards.base import ScorerError
from tokenalign.rewards.factory import ScorerConfig, parse_scorer_spec
from tokenalign.rewards.shaping import ShapingConfig


class ConfigError(ValueError):
    """The configuration file or an override is invalid; the message names the key."""


def check_bounds(section: str, config: Any, **bounds: tuple[float, str]) -> None:
    """One ConfigError naming `section.field` for the first field below its (minimum, "≥" or ">") bound;
    None values (where a field allows None) pass."""
    for name, (minimum, relation) in bounds.items():
        value = getattr(config, name)
        if value is None:
            continue
        if value < minimum or (relation == ">" and value == minimum):
            raise ConfigError(f"{section}.{name} must be {relation} {minimum:g}, got {value!r}")


@dataclass
class LMConfig:
    """The frozen LLM that proposes candidates."""

    path: str = "builtin:tiny"
    """`builtin:tiny` (bundled) or a local Hugging Face model directory."""
    dtype: LMDtype = "auto"
    """Weights dtype: auto = bf16 on a GPU that supports it (else fp16), fp32 on a CPU."""


@dataclass
class LearnerSection:
    """Which learner trains the agent, and its settings (the learner's own config dataclass checks them)."""

    name: str = "sac"
    """Registered learner: sac, ppo, ppo_lagrangian or rloo_lagrangian."""
    params: dict[str, Any] = field(default_factory=dict)
    """Overrides of the learner's config dataclass, e.g. {batch_size: 256, gamma: 0.99}."""
    num_gpus: float = 0.0
    """GPUs of the learner actor (0 = CPU)."""

    def __post_init__(self) -> None:
        check_bounds("learner", self, num_gpus=(0, "≥"))


@dataclass
class RolloutConfig:
    """Rollout actors: how many, on what, and how they batch episodes."""

    num_actors: int = 2
    """Ray rollout actors; each loads its own copy of the LM."""
    gpus_per_actor: float = 0.0
    """GPUs each actor is pinned to (0 = CPU); with GPUs each actor gets its own placement-group bundle."""
    cpus_per_actor: float = 1.0
    """CPUs reserved per actor."""
    episodes_per_batch: int = 8
    """Episodes an actor decodes together as one engine batch (RLOO: prompts × the learner's samples_per_prompt)."""
    placement_strategy: Literal["PACK", "SPREAD"] = "PACK"
    """Placement-group strategy for the actors' bundles."""
    max_restarts: int = 3
    """Times Ray restarts a dead rollout actor before the run fails."""
    torch_threads: int = 1
    """Intra-op threads per actor on CPU (several actors share the cores)."""
    reward_service_gpus: float = 0.0
    """0: scorers run inside each rollout actor; > 0: one RewardService actor with these GPUs scores for all."""

    def __post_init__(self) -> None:
        check_bounds("rollout", self, num_actors=(1, "≥"), gpus_per_actor=(0, "≥"), cpus_per_actor=(0, ">"),
                     episodes_per_batch=(1, "≥"), max_restarts=(0, "≥"), torch_threads=(1, "≥"),
                     reward_service_gpus=(0, "≥"))
        for name in ("gpus_per_actor", "reward_service_gpus"):
            value = getattr(self, name)
            if value > 1 and value != int(value):
                raise ConfigError(f"rollout.{name} above 1 must be a whole number of GPUs (the models spread over "
                                  f"them), got {value}")


@dataclass
class RunConfig:
    """The run as a whole: its name, length, seed, outputs and logging."""

    name: str = "demo"
    """Run name; the run directory is runs_dir/<name>-<time>."""
    runs_dir: str = "runs"
    """Parent directory of run directories."""
    seed: int = 0
    """Seed of everything random in the run."""
    total_episodes: int = 3000
    """Stop after this many collected episodes."""
    total_decisions: int | None = None
    """Also stop after this many agent decisions (None = no limit): an equal budget when comparing learners."""
    max_minutes: float | None = 6.0
    """Also stop after this many minutes of training (None = no limit)."""
    checkpoint_every: int = 500
    """Write a checkpoint every this many learner updates (and at the end)."""
    eval_prompts: int = 100
    """Held-out prompts evaluated at the end (summary.json); 0 skips the evaluation."""
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    """wandb mode; offline keeps the run under the run directory."""
    ray_address: str | None = None
    """Ray cluster address; None starts a local Ray (or uses RAY_ADDRESS / the job's cluster)."""
    remote_timeout_s: float = 600.0
    """Longest wait on any remote call before a clear error."""
    placement_timeout_s: float = 120.0
    """Longest wait to reserve the rollout actors' resource bundles before a clear error."""

    def __post_init__(self) -> None:
        check_bounds("run", self, total_episodes=(1, "≥"), total_decisions=(1, "≥"), max_minutes=(0, ">"),
                     checkpoint_every=(1, "≥"), eval_prompts=(0, "≥"), remote_timeout_s=(0, ">"),
                     placement_timeout_s=(0, ">"))


@dataclass
class TrainConfig:
    """Everything a `tokenalign train` run needs.

    Each section's own defaults are its reference paper's (MARA's 7B settings for SAC and the buffer);
    the few values set here scale them to the embedded demo on a 2-core CPU, which is what
    `tokenalign train` with no arguments runs (configs/demo.yaml spells the same values out). The demo's
    learner, β and postback come from the reward–KL frontier (benchmarks/results/reward_kl.md): PPO with the
    exact KL learned within the demo's budget where SAC did not, and postback pays the agent per decision.
    """

    lm: LMConfig = field(default_factory=LMConfig)
    """The frozen LLM."""
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(max_new_tokens=24, candidate_block=4))
    """Decoding: candidates, episode length, candidate blocks."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training and evaluation prompts."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Reward and cost scorers and how they combine."""
    shaping: ShapingConfig = field(default_factory=lambda: ShapingConfig(postback=False))
    """Postback and MARA's per-decision shaping, both off: postback copies the episode's reward onto every
    decision, so an agent earns more by making more decisions (rejecting); the learners carry the exact KL."""
    objective: ObjectiveSection = field(default_factory=ObjectiveSection)
    """How the learner turns the recorded raw scores into rewards and costs (weighted: MARA's sum)."""
    learner: LearnerSection = field(default_factory=lambda: LearnerSection(
        name="ppo", params={"episodes_per_update": 32, "actor_lr": 1e-3, "critic_lr": 1e-3, "kl_coef": 0.3}))
    """The learner."""
    buffer: BufferConfig = field(default_factory=lambda: BufferConfig(
        backend="redis", num_shards=2, capacity=200_000, min_size_to_sample=1025))
    """The replay buffer / on-policy queue."""
    rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig(cpus_per_actor=0.5))
    """Rollout actors (half a CPU reserved each: the demo fits a 2-CPU Ray head with its learner)."""
    run: RunConfig = field(default_factory=RunConfig)
    """Run-level settings."""

    def __post_init__(self) -> None:
        # The learner's and the objective's own options are checked here, at load, before any run directory exists.
        from tokenalign.learners.registry import learner_class, make_config
        from tokenalign.objectives import make_objective

        try:
            contract = learner_class(self.learner.name).contract(make_config(self.learner.name, self.learner.params))
            if contract.data_mode == "pairs" and not self.data.pairs:
                raise ConfigError(f"data.pairs is empty: learner.name={self.learner.name} learns from preference pairs; "
                                  "give them, e.g. data.pairs=[builtin:demo-prefs]")
            make_objective(self.objective, reward=self.reward, shaping=self.shaping, gamma=contract.gamma,
                           signals=contract.signals)
        except ConfigError:
            raise
        except ValueError as err:
            raise ConfigError(str(err)) from err


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error on one line: where (line:column of the file) and what."""
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + (getattr(err, "problem", None) or str(err).splitlines()[0])


def save_config(path: Path, config: "TrainConfig") -> None:
    """Write `config` as YAML to `path` without secrets (`without_secrets`), readable by its owner only."""
    path.write_text(yaml.safe_dump(without_secrets(config), sort_keys=False))
    path.chmod(0o600)


def without_secrets(config: "TrainConfig") -> dict[str, Any]:
    """The config as a dict for files and logs (config.yaml, wandb): Redis URLs without their passwords, which
    a run reads from the URL given at start or from TOKENALIGN_REDIS_PASSWORD on resume."""
    data = to_dict(config)
    data["buffer"]["redis_urls"] = [public_url(url) for url in config.buffer.redis_urls]
    return data


def to_dict(config: Any) -> Any:
    """A plain dict (YAML-ready) of a dataclass config."""
    return dataclasses.asdict(config)


def from_dict(cls: type, data: Any, *, where: str = "") -> Any:
    """Build dataclass `cls` from nested plain data, checking every key and type on the way."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown key {_join(where, unknown[0])!r}; {where or 'the config'} has keys: {', '.join(sorted(names))}")
    kwargs = {key: _coerce(hints[key], value, _join(where, key)) for key, value in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{where or 'config'}: {err}") from err


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        if hint is ScorerConfig:
            return _scorer_config(value, where)
        return from_dict(hint, value, where=where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        candidates = [a for a in args if a is not type(None)]
        errors = []
        for arg in candidates:
            try:
                return _coerce(arg, value, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {hint}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return [_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where} is {value!r}; choose one of {', '.join(map(repr, args))}")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        # YAML 1.1 reads 1e-3 (no dot) as a string; a float field takes it as the number it spells.
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where} must be float, got {value!r}") from None
    if hint in (int, float, str, bool) and not (isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        raise ConfigError(f"{where} must be {hint.__name__}, got {value!r}")
    return value


def _scorer_config(value: Any, where: str) -> ScorerConfig:
    """A scorer from its compact string or a mapping (the kind's options flat or under `options`), errors keyed."""
    try:
        if isinstance(value, str):
            return parse_scorer_spec(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a scorer spec string or a mapping, got {value!r}")
        return ScorerConfig.from_mapping(value)
    except (TypeError, ScorerError) as err:
        raise ConfigError(f"{where}: {err}") from err


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply one `dotted.key=value` override to nested config data; the value is parsed as YAML."""
    key, sep, raw = override.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {override!r} is not of the form dotted.key=value (e.g. learner.name=ppo)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {override!r}: the value is not valid YAML ({err})") from err
    node = data
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {'.'.join(parts[: i + 1])!r} is not a section")
        node = child
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Defaults, then the YAML file at `path` (if any), then each dotted override, checked as a whole."""
    data = to_dict(TrainConfig())
    demo_learner = dict(data["learner"])
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist; pass an existing YAML file (e.g. configs/demo.yaml)")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: cannot read it as UTF-8 text ({err}); save it as UTF-8 YAML") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({yaml_problem(err)})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections (lm, engine, learner, ...)")
        _merge(data, loaded, where="")
        _drop_demo_params(data, demo_learner)
    for override in overrides:
        apply_override(data, override)
        _drop_demo_params(data, demo_learner)
    return from_dict(TrainConfig, data)


def _drop_demo_params(data: dict[str, Any], demo: dict[str, Any]) -> None:
    """The demo's learner.params are PPO's: another learner, its params untouched, starts from its paper defaults."""
    learner = data.get("learner")
    if isinstance(learner, dict) and learner.get("name") != demo["name"] and learner.get("params") == demo["params"]:
        learner["params"] = {}


def _merge(base: dict[str, Any], update: dict[str, Any], *, where: str) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "params":
            _merge(base[key], value, where=_join(where, key))
        else:
            base[key] = value
