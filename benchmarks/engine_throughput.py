"""Agent decoding throughput: the engine in both candidate-state modes and the agent in `generate`, against
plain `generate` sampling, side by side in one run.

Methods, at batch 1 and batch 8 (the same 8 prompts), each for 32 new tokens:
  generate     plain `model.generate` sampling (top-k 40, top-p 0.95, temperature 0.8)
  lookahead    the engine, MARA's states: a query token per candidate looked at
  context      the engine, context states: one LM forward per token, all candidates scored in one agent call
  processor    `generate` with tokenalign.hf.AgentLogitsProcessor (context states from generate's own forward)
  mara_loop    (bundled LM, batch 1) a MARA-style loop: a batch-1 forward per surviving candidate, cache copies
The engine's agents accept each candidate with a fixed probability: 0.2 (rejects like a trained agent) and
0.5; the processor's agent accepts with 0.2 (its cost does not depend on it). Each method also reports LM
forward tokens per generated token with the prompt's prefill excluded (padding counts: the LM computes it).
Methods alternate within each repeat so machine noise hits all alike; totals over the repeats.

    python benchmarks/engine_throughput.py                                  # bundled LM → engine_throughput.{json,md}
    python benchmarks/engine_throughput.py --model builtin:gemma3-270m --name engine_throughput_gemma270m
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import DynamicCache

from tokenalign.envs.candidates import SamplingConfig, propose
from tokenalign.envs.engine import DecodingEngine, EngineConfig
from tokenalign.envs.policies import ProbabilityPolicy
from tokenalign.envs.rollout import generate_episodes
from tokenalign.eval.forward_tokens import ForwardTokenCounter
from tokenalign.hf import AgentLogitsProcessor
from tokenalign.lm.loader import load_lm
from tokenalign.lm.prompt_ids import prompt_token_ids

RESULTS = Path(__file__).resolve().parent / "results"
PROMPTS = ["The secret of life is", "A man walks into a bar and", "Never trust a computer", "In the beginning",
           "Love is", "The best thing about Mondays", "My grandmother used to say", "If at first you don't"]
SAMPLING = SamplingConfig(top_k=40, top_p=0.95, temperature=0.8)


def fixed_agent(p: float) -> ProbabilityPolicy:
    return ProbabilityPolicy(lambda s: torch.full((s.shape[0],), p))


@torch.no_grad()
def run_engine(model, tokenizer, prompts, max_new_tokens, seed, *, mode: str, p: float) -> tuple[int, int]:
    engine = DecodingEngine(model=model, tokenizer=tokenizer,
                            config=EngineConfig(max_new_tokens=max_new_tokens, sampling=SAMPLING, candidate_state=mode))
    episodes = generate_episodes(engine, fixed_agent(p), prompts, generator=torch.Generator().manual_seed(seed))
    return sum(e.num_decisions for e in episodes), sum(len(e.response_tokens) for e in episodes)


def generated_tokens(new: torch.Tensor, eos: int) -> int:
    return sum(row.index(eos) + 1 if eos in row else len(row) for row in new.tolist())


@torch.no_grad()
def run_generate(model, tokenizer, prompts, max_new_tokens, seed, *, processor: AgentLogitsProcessor | None = None
                 ) -> tuple[int, int]:
    torch.manual_seed(seed)
    enc = tokenizer(prompts, return_tensors="pt", padding=True)  # the start tokens the engine's prompts carry too
    sampling = processor.generate_kwargs() if processor is not None else dict(
        do_sample=True, top_k=SAMPLING.top_k, top_p=SAMPLING.top_p, temperature=SAMPLING.temperature)
    out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sampling)
    return 0, generated_tokens(out[:, enc.input_ids.shape[1]:], tokenizer.eos_token_id)


@torch.no_grad()
def run_mara_loop(model, tokenizer, prompt, max_new_tokens, seed) -> tuple[int, int]:
    """Batch 1, one forward per surviving candidate (all of them, as the reference computes), cache copies."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.tensor([prompt_token_ids(tokenizer, prompt)])
    cache = DynamicCache(config=model.config)
    out = model(ids, cache=cache, use_cache=True)
    logits, decisions, tokens = out.logits[:, -1], 0, 0
    for _ in range(max_new_tokens):
        cands = propose(logits, SAMPLING)
        n = int(cands.count[0])
        caches, next_logits = [], []
        for rank in range(n):
            branch = copy.deepcopy(cache)
            step = model(cands.token_ids[:, rank: rank + 1], cache=branch, use_cache=True)
            caches.append(branch)
            next_logits.append(step.logits[:, -1])
        chosen = n - 1
        for rank in range(n - 1):
            decisions += 1
            if float(torch.rand(1, generator=gen)) < 0.5:  # the agent: accept with probability 0.5
                chosen = rank
                break
        token = int(cands.token_ids[0, chosen])
        cache, logits = caches[chosen], next_logits[chosen]
        tokens += 1
        if token == tokenizer.eos_token_id:
            break
    return decisions, tokens


def methods(model, tokenizer, max_new_tokens: int, *, mara_loop: bool,
            processor: AgentLogitsProcessor) -> dict[str, tuple[int, Callable[[int], tuple[int, int]]]]:
    """name → (batch size, run(seed) → (decisions, tokens))."""
    table: dict[str, tuple[int, Callable[[int], tuple[int, int]]]] = {}
    for b in (1, 8):
        prompts = PROMPTS[:b]
        table[f"generate_b{b}"] = (b, lambda s, x=prompts: run_generate(model, tokenizer, x, max_new_tokens, s))
        for mode in ("lookahead", "context"):
            for p in (0.2, 0.5):
                table[f"{mode}_p{p}_b{b}"] = (b, lambda s, x=prompts, m=mode, q=p: run_engine(
                    model, tokenizer, x, max_new_tokens, s, mode=m, p=q))
        table[f"processor_b{b}"] = (b, lambda s, x=prompts: run_generate(model, tokenizer, x, max_new_tokens, s,
                                                                         processor=processor))
    if mara_loop:
        table["mara_loop_b1"] = (1, lambda s: run_mara_loop(model, tokenizer, PROMPTS[0], max_new_tokens, s))
    return table


def measure(name: str, model, tokenizer, *, max_new_tokens: int, repeats: int, mara_loop: bool) -> list[dict]:
    processor = AgentLogitsProcessor(model=model, policy=fixed_agent(0.2), sampling=SAMPLING)
    table = methods(model, tokenizer, max_new_tokens, mara_loop=mara_loop, processor=processor)
    for _, run in table.values():  # warm-up
        run(0)
    totals = {m: dict(seconds=0.0, decisions=0, tokens=0, forward_tokens=0) for m in table}
    for r in range(repeats):
        for method, (b, run) in table.items():
            prefill = b * max(len(prompt_token_ids(tokenizer, p)) for p in PROMPTS[:b])
            with ForwardTokenCounter(model=model) as counter:
                start = time.perf_counter()
                decisions, tokens = run(r + 1)
                seconds = time.perf_counter() - start
            t = totals[method]
            t["seconds"] += seconds
            t["decisions"] += decisions
            t["tokens"] += tokens
            t["forward_tokens"] += counter.total - prefill
    processor.remove()
    return [dict(model=name, method=m, batch=table[m][0], **t, tokens_per_s=t["tokens"] / t["seconds"],
                 forward_tokens_per_token=t["forward_tokens"] / t["tokens"]) for m, t in totals.items()]


def ratios(rows: list[dict]) -> dict[str, float]:
    by = {r["method"]: r for r in rows}
    out = {}
    for b in (1, 8):
        plain = by[f"generate_b{b}"]["tokens_per_s"]
        for method in [m for m in by if m.endswith(f"_b{b}") and not m.startswith("generate")]:
            out[f"{method.removesuffix(f'_b{b}')}_vs_generate_b{b}"] = by[method]["tokens_per_s"] / plain
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:tiny", help="the LM to measure (builtin:tiny, builtin:gemma3-270m, a path)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="engine_throughput", help="results file name (without .json / .md)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, tokenizer = load_lm(args.model)
    rows = measure(args.model, model, tokenizer, max_new_tokens=args.max_new_tokens, repeats=args.repeats,
                   mara_loop=args.model == "builtin:tiny")
    result = dict(
        command=f"python benchmarks/engine_throughput.py --model {args.model} --max-new-tokens {args.max_new_tokens} "
                f"--repeats {args.repeats} --threads {args.threads} --name {args.name}",
        machine=dict(cpu=platform.processor() or platform.machine(), threads=args.threads, torch=torch.__version__),
        workload=dict(top_k=SAMPLING.top_k, top_p=SAMPLING.top_p, temperature=SAMPLING.temperature,
                      max_new_tokens=args.max_new_tokens, prompts=len(PROMPTS)),
        params=sum(p.numel() for p in model.parameters()), dtype=str(next(model.parameters()).dtype),
        rows=rows, ratios=ratios(rows),
        targets={"context_p*_vs_generate_b1/b8": ">= 0.9", "context forward_tokens_per_token": "<= 1.2",
                 "processor_vs_generate_b1/b8": ">= 0.85"},
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"# Agent decoding throughput: {args.model}", "",
        f"Command: `{result['command']}` (CPU, {args.threads} threads, torch {torch.__version__}, {result['dtype']}).",
        f"Workload: top-k {SAMPLING.top_k}, top-p {SAMPLING.top_p}, temperature {SAMPLING.temperature}, "
        f"{args.max_new_tokens} new tokens, {args.repeats} repeats; engine agents accept each candidate with a fixed p.",
        "LM forward tokens per generated token exclude the prompt's prefill.", "",
        "| method | batch | tokens/s | × generate | LM forward tokens / token | decisions | tokens | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        b = r["batch"]
        x = result["ratios"].get(f"{r['method'].removesuffix(f'_b{b}')}_vs_generate_b{b}", 1.0)
        lines.append(f"| {r['method']} | {b} | {r['tokens_per_s']:.1f} | {x:.2f}× | {r['forward_tokens_per_token']:.2f} | "
                     f"{r['decisions']} | {r['tokens']} | {r['seconds']:.2f} |")
    lines += ["", "Targets: context-mode decoding ≥ 0.9× generate's tokens/s at batch 1 and 8 with ≤ 1.2 LM forward "
              "tokens per generated token; the logits processor ≥ 0.85× plain generate."]
    (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
