"""`tokenalign eval` and `tokenalign arena`: the command-line faces of tokenalign.eval.

    tokenalign eval --agent runs/demo-<time> --modes base,greedy,best-of-n,sample,serial --best-of 4,16
    tokenalign arena runs/demo-<time>/eval/generations-base.jsonl runs/demo-<time>/eval/generations-agent-sample.jsonl

A user error (missing run directory, agent of another LM, empty prompt file, mismatched generations
files) prints one line naming the fix and returns exit status 2.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tokenalign.config import TrainConfig
from tokenalign.data.prompts import load_prompts
from tokenalign.envs.task import DecodingTask
from tokenalign.eval.agent_source import find_checkpoint, load_agent
from tokenalign.eval.arena import arena_markdown, compare, write_arena
from tokenalign.eval.errors import EvalError
from tokenalign.eval.evaluate import AGENT_MODES, DEFAULT_BEST_OF, MODES, N_MODES, evaluate
from tokenalign.eval.metrics import DEFAULT_COST_THRESHOLD, write_summary
from tokenalign.eval.records import read_generations, write_generations
from tokenalign.eval.report import summary_markdown
from tokenalign.lm.loader import pick_device

USER_ERRORS = (ValueError, FileNotFoundError)
"""What bad input raises across tokenalign (DataError, ConfigError, EvalError, ... are ValueErrors)."""


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `tokenalign eval` (the config file and dotted overrides are added by the CLI)."""
    parser.add_argument("--agent", default=None,
                        help="run directory or checkpoint (.pt) of a trained agent; needed by the agent modes")
    # Comma-separated lists, so they cannot swallow the trailing key=value overrides.
    parser.add_argument("--modes", type=_names, default=None, metavar="MODE[,MODE...]",
                        help=f"any of {', '.join(MODES)} (default: base,greedy,best-of-n, plus sample with --agent)")
    parser.add_argument("--best-of", type=_counts, default=[DEFAULT_BEST_OF], metavar="N[,N...]",
                        help=f"N of best-of-n (and the agent samples of resample, resample-best); several values "
                             f"evaluate each (default: {DEFAULT_BEST_OF}, MARA's)")
    parser.add_argument("--resample-beta", type=float, default=None,
                        help="β of resample's weights π_ref·exp(R/β)/π_agent (default: a value-guided agent's own β)")
    parser.add_argument("--num-prompts", type=int, default=None,
                        help="evaluate the first N held-out prompts of data.test (default: run.eval_prompts)")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences decoded together")
    parser.add_argument("--seed", type=int, default=None, help="seed of every random draw (default: run.seed)")
    parser.add_argument("--cost-threshold", type=float, default=DEFAULT_COST_THRESHOLD,
                        help=f"cost ≤ this is safe (default {DEFAULT_COST_THRESHOLD}; 0 for safe-rlhf cost models)")
    parser.add_argument("--out", default=None,
                        help="output directory (default: <agent run dir>/eval, else <run.runs_dir>/eval-<time>)")
    parser.add_argument("--device", default="auto", help="torch device of the LM and agent (auto = cuda if present)")
    add_preference_argument(parser)


def add_preference_argument(parser: argparse.ArgumentParser) -> None:
    """`--preference w1,w2,...`: the weights a preference-conditioned agent decodes with (RiC: the user picks w);
    `--beta`: the tilt's temperature a value-guided agent decodes at."""
    parser.add_argument("--preference", type=preference_weights, default=None, metavar="W1,W2[,...]",
                        help="weights over the objectives for a preference-conditioned agent, e.g. 0.3,0.7")
    parser.add_argument("--beta", type=float, default=None,
                        help="a value-guided agent's β: π ∝ q·exp(Q/β) (default: the β it was trained with)")



def preference_weights(text: str) -> list[float]:
    """Comma-separated non-negative floats, as `--preference` takes them."""
    try:
        weights = [float(w) for w in _names(text)]
    except ValueError:
        weights = []
    if not weights or any(w < 0 for w in weights):
        raise argparse.ArgumentTypeError(f"expected comma-separated non-negative weights such as 0.3,0.7, got {text!r}")
    return weights


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _counts(text: str) -> list[int]:
    try:
        counts = [int(n) for n in _names(text)]
    except ValueError:
        counts = []
    if not counts:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 4,16, got {text!r}")
    return counts


def run_eval_command(args: argparse.Namespace, config: TrainConfig) -> int:
    """`tokenalign eval`: write generations-<mode>.jsonl per mode and summary.json; print the summary table."""
    try:
        modes = args.modes or ["base", "greedy", "best-of-n", *(["sample"] if args.agent else [])]
        _check_args(args, modes)
        checkpoint = find_checkpoint(args.agent) if args.agent else None
        device = pick_device(args.device)
        prompts = load_prompts(config.data.test, prompt_field=config.data.prompt_field, seed=config.data.seed)
        prompts = prompts[: args.num_prompts if args.num_prompts is not None else config.run.eval_prompts]
        task = DecodingTask.build(model=config.lm.path, prompts=prompts, scorers=config.reward,
                                  sampling=config.engine.sampling, max_new_tokens=config.engine.max_new_tokens,
                                  candidate_block=config.engine.candidate_block,
                                  candidate_state=config.engine.candidate_state, device=device,
                                  dtype=config.lm.dtype)
        policy = load_agent(checkpoint, state_size=task.state_size, device=device, beta=args.beta) if checkpoint else None
        out = Path(args.out) if args.out else _default_out(args.agent, config)
        seed = config.run.seed if args.seed is None else args.seed
        summaries = {}
        for mode in modes:
            for n in args.best_of if mode in N_MODES else [DEFAULT_BEST_OF]:
                result = evaluate(task, mode, prompts, policy=policy, n=n, seed=seed, batch_size=args.batch_size,
                                  cost_threshold=args.cost_threshold, preference=args.preference,
                                  beta=args.resample_beta)
                write_generations(out / f"generations-{result.label}.jsonl", result.records)
                summaries[result.label] = result.summary
                write_summary(out / "summary.json", summaries)  # after each mode, so an interruption keeps them
    except USER_ERRORS as err:
        print(f"tokenalign eval: {err}", file=sys.stderr)
        return 2
    print(summary_markdown(summaries))
    print(f"generations and summary.json written to {out}")
    return 0


def _check_args(args: argparse.Namespace, modes: list[str]) -> None:
    """Fail before loading anything: unknown modes, agent modes without an agent, counts below 1."""
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise EvalError(f"unknown mode(s) {unknown}; choose from {', '.join(MODES)}")
    if args.agent is None and any(m in AGENT_MODES for m in modes):
        raise EvalError(f"modes {[m for m in modes if m in AGENT_MODES]} decode with an agent: pass --agent RUN_DIR")
    counts = {"--num-prompts": [1 if args.num_prompts is None else args.num_prompts],
              "--batch-size": [args.batch_size], "--best-of": args.best_of}
    for flag, values in counts.items():
        if min(values) < 1:
            raise EvalError(f"{flag} must be >= 1, got {min(values)}")


def _default_out(agent: str | None, config: TrainConfig) -> Path:
    if agent and Path(agent).is_dir():
        return Path(agent) / "eval"
    return Path(config.run.runs_dir) / f"eval-{time.strftime('%Y%m%d-%H%M%S')}"


def add_arena_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `tokenalign arena`."""
    parser.add_argument("red", help="reference generations file (e.g. generations-base.jsonl)")
    parser.add_argument("blue", help="challenger generations file (e.g. generations-agent-sample.jsonl)")
    parser.add_argument("--cost-threshold", type=float, default=DEFAULT_COST_THRESHOLD,
                        help=f"cost ≤ this is safe (default {DEFAULT_COST_THRESHOLD}; safe-rlhf's arena uses 0)")
    parser.add_argument("--out", default=None,
                        help="output directory (default: <blue's directory>/arena-<blue>-vs-<red>)")


def run_arena_command(args: argparse.Namespace) -> int:
    """`tokenalign arena`: write arena.md, arena_summary.csv, arena.csv; print the markdown."""
    red_path, blue_path = Path(args.red), Path(args.blue)
    red_name, blue_name = (p.stem.removeprefix("generations-") for p in (red_path, blue_path))
    if red_name == blue_name:
        red_name, blue_name = f"{red_path.parent.name}/{red_name}", f"{blue_path.parent.name}/{blue_name}"
    try:
        result = compare(read_generations(red_path), read_generations(blue_path), red_name=red_name,
                         blue_name=blue_name, cost_threshold=args.cost_threshold)
        out = Path(args.out) if args.out else blue_path.parent / f"arena-{blue_name}-vs-{red_name}".replace("/", "_")
        paths = write_arena(result, out)
    except USER_ERRORS as err:
        print(f"tokenalign arena: {err}", file=sys.stderr)
        return 2
    print(arena_markdown(result))
    print(f"written: {', '.join(str(p) for p in paths.values())}")
    return 0
