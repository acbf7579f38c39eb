"""A run's directory: made for a new run once preflight passes, or read back (config and checkpoint) to resume one.

    runs/<name>-<time>/: config.yaml, metrics.jsonl, wandb/, checkpoints/, generations.jsonl, summary.json,
                         training.json, report.md, reward.png, cost.png, buffer/ (embedded Redis data)
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from tokenalign.config import TrainConfig, save_config
from tokenalign.core.parsing import ConfigError, apply_override, yaml_problem
from tokenalign.run.checkpoints import Checkpoint, read_newest
from tokenalign.run.preflight import preflight

RESUMABLE = ("objective.", "run.total_episodes", "run.total_decisions", "run.max_minutes", "run.eval_prompts",
             "run.keep_checkpoints")
"""Config keys a resumed run may change: what it optimises and how long it goes on."""


def new_run_dir(config: TrainConfig) -> Path:
    """A new run directory holding `config.yaml`, once `preflight` found nothing a run would fail on."""
    preflight(config)
    run_dir = Path(config.run.runs_dir) / f"{config.run.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=False)
    save_config(run_dir / "config.yaml", config)
    return run_dir


def resume_point(run_dir: Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[TrainConfig, Checkpoint]:
    """The saved config of the run in `run_dir` (with `overrides`) and the checkpoint to restore.

    `overrides` of the objective (`objective.name=...`, `objective.params.*`) or of the run's length relabel
    the stored records from then on: the data stays, the rewards are recomputed from it. The config file is
    rewritten with them only once the run is known to be resumable.
    """
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a tokenalign run directory (no config.yaml); pass runs/<name>-<time>")
    if not any((run_dir / "checkpoints").glob("step-*")):
        raise FileNotFoundError(f"{run_dir} has no checkpoint yet (no checkpoints/step-*); start a new run instead")
    path = run_dir / "config.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        why = yaml_problem(err) if isinstance(err, yaml.YAMLError) else f"{type(err).__name__}: {err}"
        raise ConfigError(f"{path} cannot be read ({why}); the run's config is needed to resume it: restore the file") \
            from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a mapping of config sections; restore the file")
    for override in overrides:
        if not override.startswith(RESUMABLE):
            raise ValueError(f"override {override!r} cannot change a run being resumed; only {', '.join(RESUMABLE)} "
                             "keys can (the LM, data, reward and learner shape the stored records and checkpoints)")
        apply_override(data, override)
    config = TrainConfig.from_plain(data)
    checkpoint = read_newest(run_dir / "checkpoints")  # before anything starts: the run may not be resumable
    if overrides:
        save_config(run_dir / "config.yaml", config)
    return config, checkpoint


def truncate_metrics(run_dir: Path, *, episodes: int) -> None:
    """Drop metrics lines written after `episodes` (a restored checkpoint's count): the resumed run writes them
    again, so every count in metrics.jsonl stays monotone and nothing is counted twice."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines(keepends=True) if json.loads(line).get("episodes", 0) <= episodes]
    path.write_text("".join(kept))
