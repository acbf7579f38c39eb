"""Engine throughput: the batched engine vs a MARA-style per-candidate loop vs plain sampling.

Side by side in one run, on the bundled tiny LM and on a randomly initialised ~90M-parameter GPT-2:
  (a) tokenalign's batched engine (one 4D-masked forward per step for all candidates of all rows),
  (b) a correct MARA-style loop: one batch-1 forward per surviving candidate on a copy of the prefix
      cache (copies avoid the in-place DynamicCache mutation that corrupts a naive loop),
  (c) plain `model.generate` sampling with the same top-k / top-p / temperature.
Workload: top_k 40, an agent that accepts each candidate with probability 0.5. Methods alternate
within each repeat so machine noise hits all of them alike; the best repeat of each is reported.

    python benchmarks/engine_throughput.py            # writes benchmarks/results/engine_throughput.{json,md}
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import torch
from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel

from tokenalign.envs.candidates import SamplingConfig, propose
from tokenalign.envs.engine import DecodingEngine, EngineConfig
from tokenalign.envs.rollout import generate_episodes
from tokenalign.lm.loader import load_lm
from tokenalign.lm.prompt_ids import prompt_token_ids

RESULTS = Path(__file__).resolve().parent / "results"
PROMPTS = ["The secret of life is", "A man walks into a bar and", "Never trust a computer", "In the beginning",
           "Love is", "The best thing about Mondays", "My grandmother used to say", "If at first you don't"]


@torch.no_grad()
def run_engine(model, tokenizer, prompts, max_new_tokens, seed) -> tuple[int, int]:
    engine = DecodingEngine(model=model, tokenizer=tokenizer, config=EngineConfig(max_new_tokens=max_new_tokens))
    gen = torch.Generator().manual_seed(seed)
    episodes = generate_episodes(engine, lambda s: torch.full((s.shape[0],), 0.5), prompts, generator=gen)
    return sum(e.num_decisions for e in episodes), sum(len(e.response_tokens) for e in episodes)


@torch.no_grad()
def run_mara_loop(model, tokenizer, prompt, max_new_tokens, seed) -> tuple[int, int]:
    """Batch 1, one forward per surviving candidate (all of them, as the reference computes), cache copies."""
    sampling = SamplingConfig()
    gen = torch.Generator().manual_seed(seed)
    ids = torch.tensor([prompt_token_ids(tokenizer, prompt)])
    cache = DynamicCache(config=model.config)
    out = model(ids, cache=cache, use_cache=True)
    logits, decisions, tokens = out.logits[:, -1], 0, 0
    for _ in range(max_new_tokens):
        cands = propose(logits, sampling)
        n = int(cands.count[0])
        states, caches, next_logits = [], [], []
        for rank in range(n):
            branch = copy.deepcopy(cache)
            step = model(cands.token_ids[:, rank: rank + 1], cache=branch, use_cache=True,
                         output_hidden_states=True)
            states.append(step.hidden_states[-1][:, -1])
            caches.append(branch)
            next_logits.append(step.logits[:, -1])
        chosen = n - 1
        if n > 1:
            for rank in range(n):
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


@torch.no_grad()
def run_generate(model, tokenizer, prompts, max_new_tokens, seed) -> tuple[int, int]:
    torch.manual_seed(seed)
    enc = tokenizer(prompts, return_tensors="pt", padding=True)  # the start tokens the engine's prompts carry too
    out = model.generate(**enc, do_sample=True, top_k=40, top_p=0.95, temperature=0.8, max_new_tokens=max_new_tokens,
                         pad_token_id=tokenizer.pad_token_id)
    new = out[:, enc.input_ids.shape[1]:]
    eos = tokenizer.eos_token_id
    tokens = 0
    for row in new.tolist():
        tokens += row.index(eos) + 1 if eos in row else len(row)
    return 0, tokens


def timed(fn, *args) -> tuple[float, int, int]:
    start = time.perf_counter()
    decisions, tokens = fn(*args)
    return time.perf_counter() - start, decisions, tokens


def measure(name, model, tokenizer, *, max_new_tokens: int, repeats: int) -> list[dict]:
    methods = {
        "engine_b1": lambda s: timed(run_engine, model, tokenizer, PROMPTS[:1], max_new_tokens, s),
        "mara_loop_b1": lambda s: timed(run_mara_loop, model, tokenizer, PROMPTS[0], max_new_tokens, s),
        "generate_b1": lambda s: timed(run_generate, model, tokenizer, PROMPTS[:1], max_new_tokens, s),
        "engine_b8": lambda s: timed(run_engine, model, tokenizer, PROMPTS, max_new_tokens, s),
        "generate_b8": lambda s: timed(run_generate, model, tokenizer, PROMPTS, max_new_tokens, s),
    }
    for fn in methods.values():  # warm-up
        fn(0)
    totals = {m: [0.0, 0, 0] for m in methods}
    for r in range(repeats):
        for method, fn in methods.items():
            seconds, decisions, tokens = fn(r + 1)
            totals[method][0] += seconds
            totals[method][1] += decisions
            totals[method][2] += tokens
    rows = []
    for method, (seconds, decisions, tokens) in totals.items():
        rows.append(dict(model=name, method=method, seconds=seconds, decisions=decisions, tokens=tokens,
                         decisions_per_s=decisions / seconds, tokens_per_s=tokens / seconds))
    return rows


def ninety_m_gpt2(vocab_size: int, eos: int) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab_size, n_positions=512, n_embd=768, n_layer=12, n_head=12,
                        eos_token_id=eos, bos_token_id=eos)
    return GPT2LMHeadModel(config).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:tiny", help="the small LM to measure beside the 90M GPT-2")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="engine_throughput", help="results file name (without .json / .md)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    tiny, tokenizer = load_lm(args.model)
    big = ninety_m_gpt2(len(tokenizer), tokenizer.eos_token_id)
    n_params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    rows = measure(args.model, tiny, tokenizer, max_new_tokens=args.max_new_tokens, repeats=args.repeats)
    rows += measure("gpt2-90M-random", big, tokenizer, max_new_tokens=args.max_new_tokens, repeats=args.repeats)

    by = {(r["model"], r["method"]): r for r in rows}
    ratios = {}
    for model in (args.model, "gpt2-90M-random"):
        ratios[model] = {
            "engine_vs_mara_loop_decisions_per_s_b1": by[(model, "engine_b1")]["decisions_per_s"] / by[(model, "mara_loop_b1")]["decisions_per_s"],
            "engine_vs_generate_tokens_per_s_b1": by[(model, "engine_b1")]["tokens_per_s"] / by[(model, "generate_b1")]["tokens_per_s"],
            "engine_vs_generate_tokens_per_s_b8": by[(model, "engine_b8")]["tokens_per_s"] / by[(model, "generate_b8")]["tokens_per_s"],
        }
    result = dict(
        command="python benchmarks/engine_throughput.py " + f"--model {args.model} --max-new-tokens {args.max_new_tokens} "
                f"--repeats {args.repeats} --threads {args.threads} --name {args.name}",
        machine=dict(cpu=platform.processor() or platform.machine(), threads=args.threads, torch=torch.__version__),
        workload=dict(top_k=40, top_p=0.95, temperature=0.8, accept_probability=0.5, max_new_tokens=args.max_new_tokens),
        params={args.model: n_params(tiny), "gpt2-90M-random": n_params(big)},
        rows=rows, ratios=ratios,
        targets={"engine_vs_mara_loop_decisions_per_s_b1": ">= 10 on both models",
                 "engine_vs_generate_tokens_per_s_b1": ">= 0.5 on the bundled model"},
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    lines = [
        "# Engine throughput", "", f"Command: `{result['command']}` (CPU, {args.threads} threads, torch {torch.__version__}).",
        "Workload: top-k 40, top-p 0.95, temperature 0.8, agent accepts each candidate with p = 0.5.", "",
        "| model | method | decisions/s | tokens/s | decisions | tokens | seconds |", "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['method']} | {r['decisions_per_s']:.1f} | {r['tokens_per_s']:.1f} | "
                     f"{r['decisions']} | {r['tokens']} | {r['seconds']:.2f} |")
    lines += ["", "| model | engine / MARA loop, decisions/s (b1) | engine / generate, tokens/s (b1) | engine / generate, tokens/s (b8) |",
              "|---|---:|---:|---:|"]
    for model, ratio in ratios.items():
        lines.append(f"| {model} | {ratio['engine_vs_mara_loop_decisions_per_s_b1']:.1f}× | "
                     f"{ratio['engine_vs_generate_tokens_per_s_b1']:.2f}× | {ratio['engine_vs_generate_tokens_per_s_b8']:.2f}× |")
    lines += ["", "Targets: engine ≥ 10× the MARA loop in decisions/s on both models; engine ≥ 0.5× generate in tokens/s "
              "on the bundled model (batch 1)."]
    (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
