"""The Learner API every algorithm implements (DESIGN.md, "Learners").

A learner owns the agent and everything trained beside it. It declares what it needs from the runtime
in a `LearnerContract` (built from its config, before any network exists), which the driver and the
learner actor read instead of config field names. The trainer feeds it `Transitions` labelled by the
run's Objective, publishes `policy_state()` to the rollout actors and checkpoints `state_dict()`, which
covers networks, optimizers, multipliers, counters and the RNG so that a resumed run continues
bit-identically. With `preference_dim` > 0 every network sees [hidden state ; w] (RiC's conditioning).
"""
from __future__ import annotations

import abc
import contextlib
import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from tokenalign.agents.policy import PARAMETERISATION, AcceptRejectPolicy, check_parameterisation, saved_state_size
from tokenalign.buffers.batches import Decisions, Transitions
from tokenalign.learners.kl import KLConfig, KLController, decision_kl, kl_per_response, reference_log_probs

DataMode = Literal["replay", "on_policy", "pairs", "sets"]
OFFLINE_MODES: tuple[DataMode, ...] = ("pairs", "sets")
"""Data modes with no rollouts: the learner actor trains on data it prepares once when it starts."""
Signal = Literal["reward", "cost"]


@dataclass(frozen=True)
class LearnerContract:
    """What a learner needs from the runtime; the driver reads this, never the learner's config fields."""

    data_mode: DataMode
    """"replay": one update = one gradient step on a sampled batch; "on_policy": one update = one rollout;
    "pairs": one update = one gradient step on `batch_size` preference pairs (data.pairs), no rollouts;
    "sets": one update = one gradient step on `batch_size` prompts' sets of `group_size` base-LM responses
    (best-of-N distillation), sampled once from the training prompts, no rollouts."""
    gamma: float
    """Discount along the decision chain (the objective's postback uses it)."""
    signals: tuple[Signal, ...] = ("reward",)
    """Per-decision signals the learner trains on apart: ("reward",), or ("reward", "cost") for Lagrangian ones."""
    batch_size: int = 0
    """Replay: transitions sampled per update; pairs: preference pairs per update; sets: prompts per update."""
    updates_per_episode: int = 1
    """Replay: gradient steps per collected episode (MARA's update_time)."""
    learning_starts: int = 0
    """Replay: buffer size (transitions) before the first update."""
    group_size: int = 1
    """On-policy: episodes collected per prompt (RLOO's k); sets: base-LM responses sampled per prompt."""
    set_prompts: int = 0
    """Sets: training prompts given a set (0: all of data.train)."""
    groups_per_update: int = 1
    """On-policy: prompt groups per update."""
    records: Literal["decisions", "candidates"] = "decisions"
    """What the actors record: the decision chain, or every candidate of every step with its one-step scores
    (value-guided learners; context mode)."""
    sample: Literal["rows", "episodes"] = "rows"
    """Replay: an update samples batch_size rows, or batch_size whole episodes (targets that follow a response)."""

    @property
    def offline(self) -> bool:
        """No rollouts: the learner actor alone trains on data it prepares when it starts (OFFLINE_MODES)."""
        return self.data_mode in OFFLINE_MODES


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block (network construction) under `seed` without disturbing the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def adam(parameters: Iterable[nn.Parameter], *, lr: float) -> torch.optim.Adam:
    """Adam with the fused kernel: one pass over each tensor (several times faster than the default on CPU)."""
    return torch.optim.Adam(parameters, lr=lr, fused=True)


def gradient_step(
    optimizer: torch.optim.Optimizer, loss: torch.Tensor, parameters: Iterable[nn.Parameter], *, max_grad_norm: float
) -> torch.Tensor:
    """Backpropagate `loss`, clip the gradient norm of `parameters`, step; returns the norm before clipping."""
    parameters = list(parameters)
    optimizer.zero_grad()
    loss.backward()
    norm = nn.utils.clip_grad_norm_(parameters, max_grad_norm)
    optimizer.step()
    return norm


@torch.no_grad()
def approx_kl(policy: AcceptRejectPolicy, batch: Transitions) -> torch.Tensor:
    """KL(π_old ‖ π_θ) on the batch by the low-variance estimator E[(ρ − 1) − log ρ], ρ = π_θ(a|s)/π_old(a|s)."""
    log_ratio = policy.log_probs(batch.state).gather(-1, batch.action.unsqueeze(-1)).squeeze(-1) - batch.logp
    return ((log_ratio.exp() - 1.0) - log_ratio).mean()


class Learner(abc.ABC):
    """Base of all learners: subclasses build networks and optimizers and implement `update`."""

    name: ClassVar[str]
    """Registry name, set by `@register`."""
    data_mode: ClassVar[DataMode]
    """"replay": one update = one gradient step on a sampled batch; "on_policy": one update = one rollout."""
    policy_class: ClassVar[type[nn.Module]] = AcceptRejectPolicy
    """What the agent is; `start_from` takes an agent of this class only."""

    policy: AcceptRejectPolicy

    @classmethod
    @abc.abstractmethod
    def contract(cls, config: Any) -> LearnerContract:
        """What this learner, with `config`, needs from the runtime."""

    def __init__(
        self, *, state_size: int, config: Any, device: torch.device | str = "cpu", preference_dim: int = 0,
        seed: int = 0,
    ) -> None:
        """`seed`: of network initialisation and minibatch shuffling (a run's run.seed)."""
        if state_size <= 0:
            raise ValueError(f"state_size must be the positive size of a candidate state, got {state_size}")
        if preference_dim < 0:
            raise ValueError(f"preference_dim must be ≥ 0, got {preference_dim}")
        self.state_size = state_size
        self.preference_dim = preference_dim
        self.config = config
        self.device = torch.device(device)
        self.num_updates = 0
        if not isinstance(config, KLConfig):
            raise TypeError(f"{type(self).__name__}'s config {type(config).__name__} must inherit "
                            "tokenalign.learners.kl.KLConfig: every learner's objective carries the KL to the base LM")
        self.kl = KLController(config=config)
        # Minibatch shuffling draws from this CPU generator, so runs replay identically on any device.
        self.generator = torch.Generator().manual_seed(seed)

    def start_from(self, agent: nn.Module) -> None:
        """Start from a trained `agent`'s weights (learner.init_from) instead of the base LM: RL refines what
        supervision (distillation, DPO) found. Networks beside the policy (critics) start afresh."""
        if type(agent) is not self.policy_class:
            raise ValueError(f"learner {self.name!r} trains a {self.policy_class.__name__}; the agent to start from is a "
                             f"{type(agent).__name__}")
        self.policy.load_state_dict(agent.state_dict())
        for copy in self.policy_copies():
            copy.load_state_dict(agent.state_dict())

    def policy_copies(self) -> list[nn.Module]:
        """Networks that follow the policy (an EMA, a target): `start_from` starts them where it starts."""
        return []

    def label(self, objective: Any, decisions: Decisions) -> Any:
        """What `update` trains on, from sampled `decisions`: the objective's Transitions (rewards and costs)."""
        return objective.label(decisions)

    @abc.abstractmethod
    def update(self, batch: Transitions) -> dict[str, float]:
        """Train on `batch` (what `label` made) and return scalar metrics (losses, entropy, multipliers, ...)."""

    @abc.abstractmethod
    def networks(self) -> dict[str, nn.Module]:
        """Every trained or target network, by a stable name."""

    @abc.abstractmethod
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Every optimizer, by a stable name."""

    def extra_state(self) -> dict[str, Any]:
        """Algorithm state beyond networks and optimizers (multipliers, baselines, windows)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what `extra_state` returned."""

    def policy_state(self) -> dict[str, Any]:
        """What rollout actors need: `{"state_size", "widths", "state_dict"}` with CPU tensors."""
        return self.policy.policy_state()

    def state_dict(self) -> dict[str, Any]:
        """Everything for an exact resume; tensors alias live state (save or copy before the next update)."""
        return {
            "learner": self.name,
            "parameterisation": PARAMETERISATION,
            "state_size": self.state_size,
            "preference_dim": self.preference_dim,
            "config": dataclasses.asdict(self.config),
            "networks": {name: net.state_dict() for name, net in self.networks().items()},
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers().items()},
            "extra": self.extra_state(),
            "kl": self.kl.state_dict(),
            "num_updates": self.num_updates,
            "rng": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()`; refuses one of another algorithm, state size or network shape."""
        if state.get("learner") != self.name:
            raise ValueError(
                f"checkpoint holds learner {state.get('learner')!r}, this is {self.name!r}: "
                f"resume with learner name {state.get('learner')!r}"
            )
        check_parameterisation(state)
        if saved_state_size(state) != self.state_size:
            raise ValueError(
                f"checkpoint agent has input size {saved_state_size(state)}, this learner's states have size {self.state_size}: "
                "the checkpoint was trained on another LM"
            )
        if state.get("preference_dim", 0) != self.preference_dim:
            raise ValueError(
                f"checkpoint agent is conditioned on {state.get('preference_dim', 0)} preference weights, this learner on "
                f"{self.preference_dim}: resume with the objective the run was trained with (objective.name)"
            )
        mine = dataclasses.asdict(self.config)
        shape_keys = [k for k in mine if k.endswith("widths") and list(mine[k]) != list(state["config"][k])]
        if shape_keys:
            raise ValueError(
                f"checkpoint networks were built with {shape_keys[0]}={state['config'][shape_keys[0]]}, "
                f"this learner has {mine[shape_keys[0]]}; set the same {shape_keys[0]} in the config to resume"
            )
        for name, net in self.networks().items():
            net.load_state_dict(state["networks"][name])
        for name, opt in self.optimizers().items():
            opt.load_state_dict(state["optimizers"][name])
        self.load_extra_state(state["extra"])
        self.kl.load_state_dict(state["kl"])
        self.num_updates = state["num_updates"]
        self.generator.set_state(state["rng"])

    @torch.no_grad()
    def kl_to_base(self, batch: Transitions, log_probs: torch.Tensor | None = None) -> dict[str, float | torch.Tensor]:
        """β and KL(π_θ(·|s) ‖ π_ref(·|s)) per decision and per response on a checked batch; pass the policy's
        `log_probs` of the batch's states when the update has them, to spare a forward."""
        if log_probs is None:
            log_probs = self.policy.log_probs(batch.state)
        kl = decision_kl(log_probs.detach(), reference_log_probs(batch.base_logit))
        return {"kl_coef": self.kl.value, "kl_per_decision": kl.mean(),
                "kl_per_response": kl_per_response(kl, batch.episode_decisions)}

    def check_batch(self, batch: Transitions) -> Transitions:
        """The batch on the learner's device with observations [state ; π_ref accept logit (; w)] in `state` and
        `next_state` (what every network reads), or one ValueError saying why it cannot be trained on."""
        if len(batch) == 0:
            raise ValueError(f"{self.name}: empty batch; the trainer must pass at least one decision")
        if batch.state.shape[-1] != self.state_size:
            raise ValueError(
                f"{self.name}: batch states have size {batch.state.shape[-1]}, the agent's input size is "
                f"{self.state_size}: the rollout LM differs from the one this learner was built for"
            )
        batch = batch.to(self.device)
        state = [batch.state, batch.base_logit.unsqueeze(-1)]
        next_state = [batch.next_state, batch.next_base_logit.unsqueeze(-1)]
        if self.preference_dim:
            if batch.preference is None or batch.preference.shape[-1] != self.preference_dim:
                got = None if batch.preference is None else batch.preference.shape[-1]
                raise ValueError(f"{self.name}: the agent is conditioned on {self.preference_dim} preference weights, "
                                 f"the batch carries {got}; label batches with the run's preference objective")
            # next_state belongs to the same episode, so it shares w.
            state.append(batch.preference)
            next_state.append(batch.preference)
        return dataclasses.replace(batch, state=torch.cat(state, -1), next_state=torch.cat(next_state, -1))


def read_scalars(metrics: dict[str, float | torch.Tensor]) -> dict[str, float]:
    """The metrics as floats, the tensors among them read from each device in ONE transfer: an `.item()` per
    metric would wait for the GPU a dozen times per update."""
    by_device: dict[torch.device, list[str]] = {}
    for name, value in metrics.items():
        if isinstance(value, torch.Tensor):
            by_device.setdefault(value.device, []).append(name)
    out = {name: float(value) for name, value in metrics.items() if not isinstance(value, torch.Tensor)}
    for names in by_device.values():
        values = torch.stack([metrics[n].detach().float().reshape(()) for n in names]).tolist()
        out.update(zip(names, values))
    return {name: out[name] for name in metrics}
