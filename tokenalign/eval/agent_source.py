"""Find and load a trained agent from a run directory or a checkpoint file.

Accepted files (torch.save, read with weights_only=True so a checkpoint cannot run code):
  * a policy state, `learner.policy_state()`: {"state_size", "widths", "state_dict"};
  * a learner state, `learner.state_dict()` (its "policy" network and config "widths");
  * a dict holding either under "policy_state" or "learner" (the trainer's learner.pt).
A run directory resolves through `checkpoints/latest`, the trainer's pointer to its newest
`checkpoints/step-<updates>/` directory; a checkpoint directory to its policy_state.pt, else learner.pt.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from tokenalign.agents.loading import policy_from_state
from tokenalign.agents.policy import saved_state_size
from tokenalign.agents.value_guided import check_beta
from tokenalign.eval.errors import EvalError

_POLICY_KEYS = {"widths", "state_dict"}
CHECKPOINT_FILES = ("policy_state.pt", "learner.pt")
"""What the trainer writes into each checkpoints/step-<updates>/ directory, the agent alone first."""


def find_checkpoint(path: str | Path) -> Path:
    """The checkpoint file `path` names: the file itself, a checkpoint directory's, or a run's latest."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"agent {str(path)!r} does not exist: pass a run directory written by `tokenalign train` "
            "(runs/<name>-<time>), one of its checkpoints/step-* directories, or a checkpoint file (.pt)"
        )
    if path.is_file():
        return path
    latest = path / "checkpoints" / "latest"
    folder = path / "checkpoints" / latest.read_text().strip() if latest.is_file() else path
    for name in CHECKPOINT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise EvalError(f"{str(path)!r} holds no checkpoint (no checkpoints/latest, {' or '.join(CHECKPOINT_FILES)}); "
                    "the run may not have reached its first checkpoint: pass a checkpoint file instead")


def run_config(path: str | Path) -> Path | None:
    """The config.yaml of the run an agent path belongs to (the run directory, one of its checkpoint
    directories, or a file in one), or None for an agent outside a run directory."""
    path = Path(path).expanduser().resolve()
    for folder in [path, *path.parents][:4]:  # file → step-N → checkpoints → run directory
        if (folder / "config.yaml").is_file() and (folder / "checkpoints").is_dir():
            return folder / "config.yaml"
    return None


def load_agent(path: str | Path, *, state_size: int, device: torch.device | str = "cpu",
               beta: float | None = None) -> torch.nn.Module:
    """The agent saved at `path` (run directory or file), in eval mode, for candidate states of `state_size`
    (`DecodingEngine.state_size`); a value-guided agent decodes at `beta` (None: the β it was trained with)."""
    file = find_checkpoint(path)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        raise EvalError(f"{file} is not a readable torch checkpoint ({str(err).splitlines()[0]}); "
                        "pass a file written by torch.save of a policy or learner state") from None
    policy = policy_from_state(_policy_state(state, file), state_size=state_size, device=device)
    if beta is not None:
        if not hasattr(policy, "beta"):
            raise EvalError("β sets a value-guided agent's tilt (learner.name=value_guided); this agent has none")
        policy.beta = check_beta(beta)
    return policy.eval()


def _policy_state(state: Any, file: Path) -> dict[str, Any]:
    if isinstance(state, dict):
        if _POLICY_KEYS <= state.keys() and saved_state_size(state) is not None:
            return state
        networks = state.get("networks")
        if isinstance(networks, dict) and "policy" in networks:
            return {"parameterisation": state.get("parameterisation"), "state_size": saved_state_size(state),
                    "preference_dim": state.get("preference_dim", 0), "widths": state["config"]["widths"],
                    "state_dict": networks["policy"]}
        for key in ("policy_state", "learner"):
            if isinstance(state.get(key), dict):
                return _policy_state(state[key], file)
    keys = sorted(state) if isinstance(state, dict) else type(state).__name__
    raise EvalError(f"{file} holds no agent (found {keys}); expected a policy_state() or a learner state_dict()")
