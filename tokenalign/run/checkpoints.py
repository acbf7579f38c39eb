"""Run checkpoints: `checkpoints/step-<updates>/` (learner.pt, policy_state.pt, progress.json) and a `latest`
pointer, written by the driver and read back newest-intact-first.

The learner actor hands its state to the driver through Ray's object store and the driver writes the
files, so a learner on another node (no shared filesystem, another working directory) checkpoints into
the run directory all the same. Every file is written atomically (temporary name, then rename) and a
step directory appears whole; on resume a newest checkpoint that does not load (a truncated file, a
`latest` naming a step that is gone) gives way to the newest one that does, with a warning saying why.
Only the newest `run.keep_checkpoints` are kept, and the one the run's summary was made from.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

LEARNER_FILE = "learner.pt"
POLICY_FILE = "policy_state.pt"
PROGRESS_FILE = "progress.json"


class CheckpointError(RuntimeError):
    """No checkpoint of the run can be read; the message lists why each failed."""


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read back: where, the learner actor's state and the driver's progress counters."""

    path: Path
    learner: dict[str, Any]
    progress: dict[str, Any]


def save_atomically(obj: Any, path: Path) -> None:
    """torch.save to a temporary file beside `path`, then rename: a crash never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def write_checkpoint(root: Path, *, step: int, learner: dict[str, Any], policy: dict[str, Any],
                     progress: dict[str, Any]) -> Path:
    """Write `root/step-<step>/` whole, then point `root/latest` at it; returns the step directory."""
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)  # a crash's leftover
    tmp.mkdir(parents=True)
    save_atomically(learner, tmp / LEARNER_FILE)
    save_atomically(policy, tmp / POLICY_FILE)
    (tmp / PROGRESS_FILE).write_text(json.dumps(progress))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    pointer = root / "latest.tmp"
    pointer.write_text(final.name)
    pointer.replace(root / "latest")
    return final


def prune_checkpoints(root: Path, *, keep: int, protect: frozenset[str] = frozenset()) -> list[str]:
    """Delete all but the newest `keep` step directories, the one `latest` names and those in `protect`; returns
    the names deleted. Called after a write completed, so what is kept is whole; an interrupted deletion leaves
    a damaged old step that `read_newest` skips and the next prune removes."""
    steps = sorted(p for p in root.glob("step-*") if p.is_dir())
    latest = (root / "latest").read_text().strip() if (root / "latest").is_file() else None
    kept = {p.name for p in steps[-keep:]} | set(protect) | ({latest} if latest else set())
    doomed = [p for p in steps if p.name not in kept]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return [p.name for p in doomed]


def read_newest(root: Path) -> Checkpoint:
    """The newest checkpoint that loads: `latest`'s, else the newest step directory, saying what was skipped."""
    candidates = []
    if (root / "latest").is_file():
        candidates.append(root / (root / "latest").read_text().strip())
    candidates += sorted((p for p in root.glob("step-*") if p.is_dir()), reverse=True)
    problems: list[str] = []
    for path in dict.fromkeys(candidates):  # in order, without repeats
        file = path / LEARNER_FILE
        try:
            learner = torch.load(file, map_location="cpu", weights_only=True)
            file = path / PROGRESS_FILE
            progress = json.loads(file.read_text(encoding="utf-8"))
        except Exception as err:  # noqa: BLE001 - garbage bytes make torch's unpickler raise almost any error
            problems.append(f"{path.name}/{file.name}: {type(err).__name__}: {(str(err).splitlines() or [''])[0]}")
            continue
        if problems:
            log.warning("resuming from %s: newer checkpoints do not load (%s)", path.name, "; ".join(problems))
        return Checkpoint(path=path, learner=learner, progress=progress)
    raise CheckpointError(f"no checkpoint in {root} loads ({'; '.join(problems) or 'none written'}); "
                          "the run cannot be resumed: start a new run")
