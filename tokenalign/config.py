"""The run configuration: the typed, frozen sections of a `tokenalign train` run, loaded from YAML + overrides.

Each component owns the dataclass of its own section (envs.EngineConfig, rewards.RewardConfig, ...) and each
learner and objective its params dataclass (found through their registries); this module only composes them,
so a setting is documented once, next to the code it drives. `load_config` parses everything once; what
it returns is handed down and never parsed again.

    cfg = load_config("configs/demo.yaml", ["learner.name=ppo_lagrangian", "rollout.num_actors=4"])

Unknown keys, wrong types and malformed overrides are errors that name the dotted key.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from tokenalign.buffers.config import BufferConfig
from tokenalign.buffers.redis_client import public_url
from tokenalign.core.parsing import (
    ConfigError,
    apply_override,
    build,
    changed_fields,
    check_bounds,
    from_dict,
    join,
    mapping,
    to_dict,
    yaml_problem,
)
from tokenalign.data.prompts import DataConfig
from tokenalign.envs.engine import EngineConfig
from tokenalign.learners import LearnerContract, config_class, learner_class
from tokenalign.learners.value_guided import ValueGuidedConfig
from tokenalign.lm.loader import LMDtype
from tokenalign.objectives import ObjectiveSection, make_objective
from tokenalign.rewards.combine import RewardConfig
from tokenalign.rewards.shaping import ShapingConfig


@dataclass(frozen=True)
class LMConfig:
    """The frozen LLM that proposes candidates."""

    path: str = "builtin:tiny"
    """`builtin:tiny` (bundled) or a local Hugging Face model directory."""
    dtype: LMDtype = "auto"
    """Weights dtype: auto = bf16 on a GPU that supports it (else fp16), fp32 on a CPU."""


@dataclass(frozen=True)
class LearnerSection:
    """Which learner trains the agent, and its settings (the learner's own config dataclass)."""

    name: str = "sac"
    """Registered learner: sac, ppo, ppo_lagrangian, rloo_lagrangian, value_guided, dpo or bon_distill."""
    params: Any = None
    """The learner's config dataclass (e.g. PPOConfig); None: its defaults. In YAML, a mapping of its fields,
    e.g. {batch_size: 256, gamma: 0.99}."""
    num_gpus: float = 0.0
    """GPUs of the learner actor (0 = CPU)."""
    init_from: str | None = None
    """A run directory or checkpoint whose agent this run's policy starts from (RL from a good start: a bon_distill
    or dpo agent refined by ppo, ppo_lagrangian, rloo_lagrangian or sac); None starts as the base LM."""

    def __post_init__(self) -> None:
        check_bounds("learner", self, num_gpus=(0, "≥"))
        expected = _learner_config_class(self.name, where="learner.name")
        if self.params is None:
            object.__setattr__(self, "params", expected())
        elif type(self.params) is not expected:
            raise ConfigError(f"learner.params is a {type(self.params).__name__}; learner {self.name!r} takes "
                              f"{expected.__name__}")

    @property
    def contract(self) -> LearnerContract:
        """What this learner, with these params, needs from the runtime."""
        return learner_class(self.name).contract(self.params)

    @classmethod
    def from_plain(cls, data: Any, *, where: str) -> LearnerSection:
        """The section from YAML: `params` parsed into the config dataclass of the learner `name` registers."""
        data = mapping(data, where)
        name = data.get("name", cls.name)
        if not isinstance(name, str):
            raise ConfigError(f"{join(where, 'name')} must be str, got {name!r}")
        params_class = _learner_config_class(name, where=join(where, "name"))
        params = from_dict(params_class, data.get("params", {}), where=join(where, "params"))
        return build(cls, data, where=where, params=params)

    def to_plain(self) -> dict[str, Any]:
        """As in YAML: params are the fields that differ from the learner's defaults."""
        return {"name": self.name, "params": changed_fields(self.params), "num_gpus": self.num_gpus}


def _learner_config_class(name: str, *, where: str) -> type:
    try:
        return config_class(name)
    except ValueError as err:
        raise ConfigError(str(err)) from None


@dataclass(frozen=True)
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


RAY_ADDRESS = re.compile(r"auto|(ray://)?[A-Za-z0-9][A-Za-z0-9.\-]*:[0-9]{1,5}")
"""What `ray.init(address=...)` takes: a head's GCS host:port, a Ray Client ray://host:port, or auto."""


@dataclass(frozen=True)
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
    keep_checkpoints: int = 3
    """Checkpoints kept on disk, newest first (the one the summary was made from is kept besides)."""
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
        check_bounds("run", self, seed=(0, "≥"), total_episodes=(1, "≥"), total_decisions=(1, "≥"), max_minutes=(0, ">"),
                     checkpoint_every=(1, "≥"), keep_checkpoints=(1, "≥"), eval_prompts=(0, "≥"), remote_timeout_s=(0, ">"),
                     placement_timeout_s=(0, ">"))
        if self.ray_address is not None and not RAY_ADDRESS.fullmatch(self.ray_address):
            raise ConfigError(f"run.ray_address is {self.ray_address!r}; give host:port, ray://host:port or auto "
                              "(or null for a local cluster)")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a `tokenalign train` run needs.

    Each section's own defaults are its reference paper's (MARA's 7B settings for SAC and the buffer);
    the few values set here scale them to the embedded demo on a 2-core CPU, which is what
    `tokenalign train` with no arguments runs (configs/demo.yaml spells the same values out). The demo's
    learner comes from the reward–KL frontier (benchmarks/results/reward_kl_value_soft_bellman.md against
    reward_kl_value.md and reward_kl_modes.md): a value-guided head whose future is learnt by soft Bellman backups
    scores 0.13–0.20 more than a myopic one at four of five β (as much at the fifth), and 7× PPO's reward at the
    KL PPO's demo spent, at base sampling's compute (context states). β starts at 0.4 (~1.5 nats on that
    frontier, within best-of-16's bound of 1.84) and follows a KL target of 1.5 nats per response (horizon 300
    episodes: the KL the learner reads is its buffer's, ~350 episodes old on average, and a horizon of 100 made β
    oscillate, 0.31–0.49), so that a reward of another scale gets the same budget
    (benchmarks/results/unseen_reward/: at a fixed β = 0.4 a user's reward did not move).
    """

    lm: LMConfig = field(default_factory=LMConfig)
    """The frozen LLM."""
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(max_new_tokens=24, candidate_block=4,
                                                                      candidate_state="context"))
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
        name="value_guided", params=ValueGuidedConfig(kl_coef=0.4, kl_target=1.5, kl_horizon=300.0)))
    """The learner."""
    buffer: BufferConfig = field(default_factory=lambda: BufferConfig(
        backend="redis", num_shards=2, capacity=200_000, min_size_to_sample=1025))
    """The replay buffer / on-policy queue."""
    rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig(cpus_per_actor=0.5))
    """Rollout actors (half a CPU reserved each: the demo fits a 2-CPU Ray head with its learner)."""
    run: RunConfig = field(default_factory=lambda: RunConfig(total_episodes=6000, max_minutes=8.0, eval_prompts=200))
    """The run: 6,000 episodes (the soft-Bellman head kept gaining up to there), cut at 8 minutes on a slow machine;
    the whole demo test set evaluated, so that the comparison with best-of-4 has the standard error it needs."""

    def __post_init__(self) -> None:
        # What one section cannot check alone, checked here, at load, before any run directory exists.
        contract = self.learner.contract
        if contract.data_mode == "pairs" and not self.data.pairs:
            raise ConfigError(f"data.pairs is empty: learner.name={self.learner.name} learns from preference pairs; "
                              "give them, e.g. data.pairs=[builtin:demo-prefs]")
        try:
            objective = make_objective(self.objective, reward=self.reward, shaping=self.shaping, gamma=contract.gamma,
                                       signals=contract.signals)
        except ConfigError:
            raise
        except ValueError as err:
            raise ConfigError(str(err)) from err
        if contract.records == "candidates":
            if self.engine.candidate_state != "context":
                raise ConfigError(f"learner.name={self.learner.name} learns from every candidate of a step: set "
                                  "engine.candidate_state=context")
            if objective.linear_weights() is None:
                raise ConfigError(f"learner.name={self.learner.name} needs an objective linear in the scores for its "
                                  f"one-step targets: objective.name is {objective.name!r}; use weighted or lagrangian, or a learner of episode rewards (learner.name=ppo)")

    @classmethod
    def from_plain(cls, data: Any, *, where: str = "") -> TrainConfig:
        """The config from plain data: the objective's params are parsed for the objective the learner implies."""
        data = mapping(data, where)
        default_learner = next(f for f in dataclasses.fields(cls) if f.name == "learner").default_factory()
        learner = from_dict(LearnerSection, data["learner"], where="learner") if "learner" in data else default_learner
        objective = ObjectiveSection.for_signals(data.get("objective", {}), signals=learner.contract.signals,
                                                 where="objective")
        return build(cls, data, where=where, learner=learner, objective=objective)


def save_config(path: Path, config: TrainConfig) -> None:
    """Write `config` as YAML to `path` without secrets (`without_secrets`), readable by its owner only."""
    path.write_text(yaml.safe_dump(without_secrets(config), sort_keys=False))
    path.chmod(0o600)


def without_secrets(config: TrainConfig) -> dict[str, Any]:
    """The config as a dict for files and logs (config.yaml, wandb): Redis URLs without their passwords, which
    a run reads from the URL given at start or from TOKENALIGN_REDIS_PASSWORD on resume."""
    data = to_dict(config)
    data["buffer"]["redis_urls"] = [public_url(url) for url in config.buffer.redis_urls]
    return data


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
    """The demo's learner.params are value_guided's: another learner, its params untouched, starts from its paper defaults."""
    learner = data.get("learner")
    if isinstance(learner, dict) and learner.get("name") != demo["name"] and learner.get("params") == demo["params"]:
        learner["params"] = {}


def _merge(base: dict[str, Any], update: dict[str, Any], *, where: str) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "params":
            _merge(base[key], value, where=join(where, key))
        else:
            base[key] = value
