"""What scoring costs a rollout: a head reading the policy LM's states against a second model's forward.

    python benchmarks/head_scoring_cost.py

Side by side in one process, interleaved over repetitions (the median is reported): decoding a batch of
demo prompts with an untrained agent (it samples as the base LM) and

    rollout only          no scoring
    head on policy states the engine keeps each emitted token's state; a reward head scores from them
    head on its own LM    the same head scoring the texts with a batched forward of its LM (here the same tiny LM)
    hf-classifier         a GPT-2 sequence classifier of the policy LM's size scoring the texts (the kind every
                          reward model so far needed)

The head's weights are freshly initialised: its cost does not depend on them. The criterion (issue 12):
the head on policy states adds at most 5% to rollout time.
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from bench_runs import command, machine, parse_args

from tokenalign.data.prompts import load_prompts
from tokenalign.envs.engine import DecodingEngine, EngineConfig
from tokenalign.envs.rollout import generate_episodes
from tokenalign.heads.model import HeadConfig, ScoreHead, lm_fingerprint, save_head
from tokenalign.heads.states import ResponseStates, response_length
from tokenalign.lm.loader import load_lm
from tokenalign.rewards import make_scorer


@dataclass
class Args:
    """Flags of the benchmark (defaults: the committed run)."""

    prompts: int = 64
    """Prompts per decoding batch (the demo's rollout batch is 16 per actor; larger batches amortise better)."""
    repeats: int = 7
    """Interleaved repetitions of every variant."""
    out_dir: str = "benchmarks/results"
    """Where the JSON and markdown go."""
    quick: bool = False
    """A smoke run."""


QUICK = {"prompts": 8, "repeats": 2}


def main() -> None:
    args = parse_args(Args, __doc__, QUICK)
    torch.set_num_threads(1)  # the demo's rollout actors run one torch thread each
    model, tokenizer = load_lm("builtin:tiny")
    engine = DecodingEngine(model=model, tokenizer=tokenizer, config=EngineConfig(max_new_tokens=24, candidate_block=4))
    prompts = [p.text for p in load_prompts("builtin:demo-test")[: args.prompts]]
    policy = lambda obs: torch.sigmoid(obs[:, -1])  # noqa: E731 — π_ref: accepts with its own probability
    work = Path(tempfile.mkdtemp(prefix="head-cost-"))
    torch.manual_seed(0)
    save_head(ScoreHead(HeadConfig(kind="reward", lm="builtin:tiny", lm_fingerprint=lm_fingerprint(model),
                                   hidden_size=model.config.hidden_size)), work / "head")
    on_states = make_scorer(f"head:{work / 'head'}")
    assert on_states.use_policy_lm(model, tokenizer, name="builtin:tiny")
    own_lm = make_scorer(f"head:{work / 'head'},device=cpu")
    from transformers import GPT2ForSequenceClassification

    classifier = GPT2ForSequenceClassification.from_pretrained(str(Path(model.name_or_path)), num_labels=1)
    classifier.config.pad_token_id = tokenizer.pad_token_id
    classifier.save_pretrained(work / "classifier")
    tokenizer.save_pretrained(work / "classifier")
    hf = make_scorer(f"hf-classifier:{work / 'classifier'},device=cpu,batch_size=64")

    def rollout(keep: bool, seed: int):
        return generate_episodes(engine, policy, prompts, generator=torch.Generator().manual_seed(seed),
                                 keep_token_states=keep)

    def states(episodes):
        return [ResponseStates(states=e.token_states, length=response_length(e.response_tokens, engine.eos_token_id))
                for e in episodes]

    variants = {
        "rollout only": lambda s: rollout(False, s),
        "head on policy states": lambda s: on_states.score_states(states(rollout(True, s))),
        "head on its own LM": lambda s: own_lm.score(prompts, [e.response for e in rollout(False, s)]),
        "hf-classifier": lambda s: hf.score(prompts, [e.response for e in rollout(False, s)]),
    }
    for run in variants.values():  # warm-up: first-call allocations and lazy loads
        run(0)
    seconds: dict[str, list[float]] = {k: [] for k in variants}
    for repeat in range(args.repeats):
        for label, run in variants.items():
            start = time.perf_counter()
            run(repeat + 1)  # the same seed for every variant of a repetition: the same episodes
            seconds[label].append(time.perf_counter() - start)
    base = statistics.median(seconds["rollout only"])
    rows = {k: {"median_s": statistics.median(v), "ms_per_response": 1000 * statistics.median(v) / len(prompts),
                "added_to_rollout": statistics.median(v) / base - 1} for k, v in seconds.items()}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = "head_scoring_cost_quick" if args.quick else "head_scoring_cost"
    data = {"command": command("head_scoring_cost.py", args, QUICK), "args": asdict(args), "machine": machine(),
            "seconds": seconds, "rows": rows}
    (out / f"{name}.json").write_text(json.dumps(data, indent=1))
    lines = ["# What scoring adds to a rollout: a head on the policy LM's states vs a second model's forward", "",
             f"`{data['command']}` — {len(prompts)} demo prompts per batch, 24 new tokens, one torch thread, median of "
             f"{args.repeats} interleaved repetitions.", "",
             "| variant | batch seconds | ms per response | added to rollout time |", "|---|---|---|---|"]
    for label, r in rows.items():
        lines.append(f"| {label} | {r['median_s']:.3f} | {r['ms_per_response']:.2f} | {100 * r['added_to_rollout']:+.1f}% |")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
