"""The `tokenalign` command line: `train`, `eval`, `arena`, `generate`, `fit-scorer`, `make-preferences`.

Every subcommand takes `--config FILE` and dotted `key=value` overrides of the typed run config
(tokenalign/config.py), e.g. `tokenalign train learner.name=ppo_lagrangian rollout.num_actors=4`.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from tokenalign.buffers.errors import ShardUnavailableError
from tokenalign.cluster.ray_cluster import ClusterResourceError
from tokenalign.config import TrainConfig, load_config
from tokenalign.core.parsing import ConfigError
from tokenalign.run.checkpoints import CheckpointError
from tokenalign.run.run_lock import RunLockedError


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML run config (default: the embedded demo)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. learner.name=ppo")


def cmd_generate(args: argparse.Namespace, config: TrainConfig) -> int:
    """Decode prompts with an agent (sampled: the agent is a text distribution) and print scored responses."""
    from tokenalign.agents.policy import AcceptRejectPolicy
    from tokenalign.data.prompts import load_prompts
    from tokenalign.envs.task import DecodingTask
    from tokenalign.eval.agent_source import load_agent
    from tokenalign.eval.evaluate import evaluate
    from tokenalign.lm.loader import pick_device

    prompts = args.prompt or load_prompts(config.data.test, prompt_field=config.data.prompt_field,
                                          seed=config.data.seed)[: args.num_prompts]
    task = DecodingTask.build(model=config.lm.path, prompts=prompts, scorers=config.reward,
                              sampling=config.engine.sampling, max_new_tokens=config.engine.max_new_tokens,
                              candidate_block=config.engine.candidate_block,
                              candidate_state=config.engine.candidate_state, device=pick_device(args.device),
                              dtype=config.lm.dtype)
    if args.agent:
        policy = load_agent(args.agent, state_size=task.state_size, device=task.engine.device, beta=args.beta)
    else:
        torch.manual_seed(config.run.seed)
        policy = AcceptRejectPolicy(state_size=task.state_size).eval()
    result = evaluate(task, "sample", task.prompts, policy=policy, seed=config.run.seed,
                      batch_size=config.rollout.episodes_per_batch, preference=args.preference)
    for record in result.records:
        print(f"{record.prompt!r} → {record.response!r}  (reward {record.final:.3f}, cost {record.cost:.3f})")
    summary = {k: result.summary[k] for k in ("n", "reward", "cost", "kl_per_response", "distinct_2", "perplexity")}
    print(json.dumps({"agent": args.agent or "untrained (decodes as the base LM)", **summary}, indent=2))
    return 0


def cmd_train(args: argparse.Namespace, config: TrainConfig) -> int:
    """Train an agent (the embedded demo with no arguments); `--resume RUN_DIR` continues a run."""
    import logging
    from pathlib import Path

    from tokenalign.run.trainer import LearnerDiedError, Trainer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.resume:
        if args.config:
            print("tokenalign: --resume continues with the run's saved config; drop --config", file=sys.stderr)
            return 2
        trainer = Trainer.from_run_dir(Path(args.resume), args.overrides)
    else:
        trainer = Trainer.new_run(config)
    print(f"run directory: {trainer.run_dir}", flush=True)
    try:
        summary = trainer.run()
    except LearnerDiedError as err:
        print(f"tokenalign train: {err}", file=sys.stderr)
        return 1
    if summary:  # reward beside KL to the base LM, diversity and perplexity: a reward alone proves nothing
        from tokenalign.eval.report import summary_markdown

        print(summary_markdown(summary))
    print(f"report: {trainer.run_dir / 'report.md'}")
    return 0


def cmd_fit_scorer(args: argparse.Namespace) -> int:
    """Fit a reward, cost or token head over a frozen LM's states (tokenalign/workflows/fit_head.py); print its report."""
    from tokenalign.workflows.fit_head import fit_head, load_fit_config

    try:
        config = load_fit_config(args.overrides)
    except ConfigError as err:
        print(f"tokenalign fit-scorer: {err}", file=sys.stderr)
        return 2
    result = fit_head(config)
    print(json.dumps({"head": str(result.out), "train_pairs": result.train_pairs, "eval_pairs": result.eval_pairs,
                      **{k: round(v, 4) for k, v in result.metrics.items()}, "seconds": round(result.seconds, 1)},
                     indent=2))
    print(f"score with it: reward.scorers=[\"head:{result.out}\"] (role=cost for a cost head)")
    return 0


def cmd_make_preferences(args: argparse.Namespace) -> int:
    """Sample and gold-label a demo preference set (tokenalign/workflows/demo_preferences.py); print its report as JSON."""
    import dataclasses
    from pathlib import Path

    from tokenalign.envs.candidates import SamplingConfig
    from tokenalign.workflows.demo_preferences import make_demo_preferences

    try:
        report = make_demo_preferences(
            pairs=args.pairs, out=Path(args.out), seed=args.seed, model=args.model, prompts=args.prompts,
            max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
            sampling=SamplingConfig(top_k=args.top_k, top_p=args.top_p, temperature=args.temperature))
    except (FileNotFoundError, ValueError) as err:
        print(f"tokenalign make-preferences: {err}", file=sys.stderr)
        return 1
    print(json.dumps(dataclasses.asdict(report), indent=2))
    return 0


def _add_make_preferences_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pairs", type=int, required=True, help="preference pairs to write (ties are resampled)")
    parser.add_argument("--out", required=True, help="JSONL file to write (a .meta.json report goes beside it)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling and of the revision spans")
    parser.add_argument("--model", default="builtin:tiny", help="the LM to sample from")
    parser.add_argument("--prompts", default="builtin:demo-train", help="prompt source spec, cycled in order")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="longest response in tokens")
    parser.add_argument("--top-k", type=int, default=40, help="sampling top-k (the demo engine's)")
    parser.add_argument("--top-p", type=float, default=0.95, help="sampling top-p (the demo engine's)")
    parser.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (the demo engine's)")
    parser.add_argument("--batch-size", type=int, default=256,
                        help="sequences per forward; it changes which draw each row gets, so it is part of the seed")


def main(argv: list[str] | None = None) -> int:
    from tokenalign.eval.commands import (
        add_arena_arguments,
        add_eval_arguments,
        add_preference_argument,
        run_arena_command,
        run_eval_command,
    )

    parser = argparse.ArgumentParser(prog="tokenalign", description="Token-level accept/reject alignment of a frozen LLM.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train an agent with Ray actors (no arguments: the embedded demo)")
    _add_config_args(train)
    train.add_argument("--resume", default=None, metavar="RUN_DIR",
                       help="continue the run in RUN_DIR from its last checkpoint (overrides: objective.* and run length only)")
    gen = sub.add_parser("generate", help="decode held-out prompts with an agent and score them")
    _add_config_args(gen)
    gen.add_argument("--agent", default=None, help="run directory or checkpoint of a trained agent (default: untrained)")
    gen.add_argument("--prompt", action="append", help="a prompt to decode (repeatable); default: held-out prompts")
    gen.add_argument("--num-prompts", type=int, default=8, help="held-out prompts to decode without --prompt")
    gen.add_argument("--device", default="auto", help="torch device of the LM and agent (auto = cuda if present)")
    add_preference_argument(gen)
    evaluate = sub.add_parser("eval", help="decode held-out prompts in baseline and agent modes; score and summarise")
    _add_config_args(evaluate)
    add_eval_arguments(evaluate)
    add_arena_arguments(sub.add_parser("arena", help="two generations files head to head: win/tie/loss, safety table"))
    fit = sub.add_parser("fit-scorer", help="fit a reward, cost or token head on a frozen LM's states from preference pairs")
    fit.add_argument("overrides", nargs="*", metavar="key=value",
                     help="FitConfig fields, e.g. kind=reward data=builtin:demo-prefs out=runs/heads/reward")
    _add_make_preferences_arguments(sub.add_parser(
        "make-preferences", help="sample preference pairs from the LM, labelled by the demo's gold scorers"))
    args = parser.parse_args(argv)
    if args.command == "arena":  # compares two result files; takes no run config
        return run_arena_command(args)
    if args.command == "make-preferences":  # its own settings only; takes no run config
        return cmd_make_preferences(args)
    if args.command == "fit-scorer":  # its own config (workflows/fit_head.py FitConfig), not a run config
        try:
            return cmd_fit_scorer(args)
        except (FileNotFoundError, FileExistsError, ValueError) as err:
            print(f"tokenalign fit-scorer: {err}", file=sys.stderr)
            return 1
    config_path = args.config
    if config_path is None and getattr(args, "agent", None):
        # An agent is evaluated with its own run's LM, scorers and data, not the demo's.
        from tokenalign.eval.agent_source import run_config

        config_path = run_config(args.agent)
        if config_path is not None:
            print(f"tokenalign {args.command}: using the agent's run config {config_path} (--config to override)",
                  file=sys.stderr)
    try:
        config = load_config(config_path, args.overrides)
    except ConfigError as err:
        print(f"tokenalign: {err}", file=sys.stderr)
        return 2
    try:
        return {"generate": cmd_generate, "train": cmd_train, "eval": run_eval_command}[args.command](args, config)
    except (FileNotFoundError, ValueError, TimeoutError, ClusterResourceError, CheckpointError, ShardUnavailableError,
            RunLockedError) as err:
        print(f"tokenalign {args.command}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
