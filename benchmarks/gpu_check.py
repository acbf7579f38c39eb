"""One-command check of the GPU path, end to end, in under ten minutes on one GPU.

On a 1B+ Llama-shaped LM with random weights (Llama-3.2-1B's body: 16 layers of width 2048, GQA 32/8 heads;
the bundled tokenizer's 8,192-token vocabulary, so no hub is needed), in `lm.dtype: auto` (bf16):
  1. the engine against `model.generate` sampling with the same top-k / top-p / temperature, tokens/s at
     batch 1, 8 and 32, with an untrained agent (it decodes exactly as base sampling: an agent near the
     base LM), the attention implementation used, and the engine's host reads per forward;
  2. learner updates/s (SAC and PPO, batches of 1,024 decisions at the LM's width) on the GPU;
  3. a short training with two rollout actors on the GPU (they share it: 0.4 GPU each, the learner 0.2),
     checking that the actors decoded with published weights (policy_version > 0).
Targets (issue 16): engine ≥ 0.8× generate at batch 8; ≤ 2 host reads per forward.

    python benchmarks/gpu_check.py             # GPU machine: writes benchmarks/results/gpu_check.{json,md}
    python benchmarks/gpu_check.py --dry-run   # the same steps at toy sizes on the CPU (about a minute)
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from learner_throughput import measure as learner_updates
from learner_throughput import synthetic_batch
from transformers import LlamaConfig, LlamaForCausalLM

from tokenalign.agents.policy import AcceptRejectPolicy
from tokenalign.config import load_config
from tokenalign.envs.engine import DecodingEngine, EngineConfig
from tokenalign.envs.host_syncs import HostSyncCounter
from tokenalign.envs.rollout import generate_episodes
from tokenalign.lm.loader import load_lm
from tokenalign.run.trainer import Trainer

RESULTS = Path(__file__).resolve().parent / "results"
PROMPTS = ["The secret of life is", "A man walks into a bar and", "Never trust a computer", "In the beginning",
           "Love is", "The best thing about Mondays", "My grandmother used to say", "If at first you don't"]
SAMPLING = {"top_k": 40, "top_p": 0.95, "temperature": 0.8}  # MARA train script, the engine's defaults
TARGETS = {"engine_vs_generate_b8": 0.8, "host_reads_per_forward": 2.0}


@dataclass
class Args:
    """GPU check settings (the defaults are the GPU run; --dry-run shrinks them for a CPU)."""

    dry_run: bool = False
    """Toy sizes on the CPU: checks that every step runs, measures nothing worth reporting."""
    out: str = str(RESULTS)
    """Directory for gpu_check.json / gpu_check.md."""
    hidden_size: int = 2048  # Llama-3.2-1B
    """LM width."""
    layers: int = 16  # Llama-3.2-1B
    """LM depth."""
    heads: int = 32  # Llama-3.2-1B
    """Attention heads."""
    kv_heads: int = 8  # Llama-3.2-1B
    """Key/value heads (grouped-query attention)."""
    intermediate_size: int = 8192  # Llama-3.2-1B
    """MLP width."""
    batches: tuple[int, ...] = (1, 8, 32)
    """Engine and generate batch sizes."""
    max_new_tokens: int = 128
    """Tokens per response in the throughput runs."""
    repeats: int = 3
    """Timed repeats per method and batch (methods alternate within a repeat; the totals are compared)."""
    learner_batch: int = 1024  # MARA train script
    """Decisions per learner update."""
    train_episodes: int = 256
    """Episodes of the short training."""
    train_tokens: int = 48
    """max_new_tokens of the short training."""
    learners: tuple[str, ...] = field(default=("sac", "ppo"))
    """Learners whose updates/s are measured."""


DRY_RUN = dict(hidden_size=64, layers=2, heads=4, kv_heads=2, intermediate_size=128, batches=(1, 4), max_new_tokens=12,
               repeats=1, learner_batch=256, train_episodes=16, train_tokens=8)


def random_llama(args: Args, model_dir: Path) -> None:
    """A Llama of the asked shape with random weights and the bundled tokenizer, saved as a local HF directory."""
    _, tokenizer = load_lm("builtin:tiny")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=args.hidden_size, num_hidden_layers=args.layers,
                         num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                         intermediate_size=args.intermediate_size, max_position_embeddings=2048,
                         bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def engine_tokens(engine: DecodingEngine, prompts: list[str], seed: int) -> int:
    policy = AcceptRejectPolicy(state_size=engine.state_size).to(engine.device).eval()
    generator = torch.Generator(device=engine.device).manual_seed(seed)
    episodes = generate_episodes(engine, policy, prompts, generator=generator)
    return sum(len(e.response_tokens) for e in episodes)


@torch.no_grad()
def generate_tokens(model, tokenizer, prompts: list[str], max_new_tokens: int, seed: int) -> int:
    torch.manual_seed(seed)
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    out = model.generate(**enc, do_sample=True, **SAMPLING, max_new_tokens=max_new_tokens,
                         pad_token_id=tokenizer.pad_token_id)
    new = out[:, enc.input_ids.shape[1]:].tolist()
    eos = tokenizer.eos_token_id
    return sum(row.index(eos) + 1 if eos in row else len(row) for row in new)


def throughput(args: Args, model, tokenizer) -> dict[str, Any]:
    """Engine and generate tokens/s per batch size (methods alternate; totals over the repeats)."""
    device = model.device
    engine = DecodingEngine(model=model, tokenizer=tokenizer, config=EngineConfig(max_new_tokens=args.max_new_tokens))
    rows = []
    for batch in args.batches:
        prompts = (PROMPTS * (batch // len(PROMPTS) + 1))[:batch]
        methods = {"engine": lambda s, prompts=prompts: engine_tokens(engine, prompts, s),
                   "generate": lambda s, prompts=prompts: generate_tokens(model, tokenizer, prompts, args.max_new_tokens, s)}
        for method in methods.values():  # warm-up (kernels, allocator)
            method(0)
        totals = {name: [0.0, 0] for name in methods}
        for repeat in range(args.repeats):
            for name, method in methods.items():
                synchronize(device)
                start = time.perf_counter()
                tokens = method(repeat + 1)
                synchronize(device)
                totals[name][0] += time.perf_counter() - start
                totals[name][1] += tokens
        rate = {name: tokens / seconds for name, (seconds, tokens) in totals.items()}
        rows.append({"batch": batch, "engine_tokens_per_s": rate["engine"], "generate_tokens_per_s": rate["generate"],
                     "engine_vs_generate": rate["engine"] / rate["generate"]})
    return {"rows": rows, "attention": model.config._attn_implementation, **host_reads(model, tokenizer, args)}


def host_reads(model, tokenizer, args: Args) -> dict[str, Any]:
    """Host reads per forward of one engine batch of 8 on the accelerator path (dense rows, also in a dry run),
    counted by a torch function mode outside the timing."""
    engine = DecodingEngine(model=model, tokenizer=tokenizer, dense_rows=True,
                            config=EngineConfig(max_new_tokens=args.max_new_tokens))
    with HostSyncCounter() as reads:
        tokens = engine_tokens(engine, PROMPTS, 0)
    return {"host_reads": reads.total, "forwards": engine.forwards, "forced_rounds": engine.forced_rounds,
            "host_reads_per_forward": reads.total / engine.forwards, "host_reads_by_op": dict(reads.by_op),
            "tokens_counted": tokens}


def learner_rates(args: Args, device: str) -> list[dict[str, Any]]:
    batch = synthetic_batch(rows=args.learner_batch, hidden_size=args.hidden_size, episode_length=64, seed=0)
    return [learner_updates(name, batch, state_size=args.hidden_size, device=device, warmup=3, repeats=20)
            for name in args.learners]


def short_training(args: Args, model_dir: Path, runs_dir: Path, gpu: bool) -> dict[str, Any]:
    overrides = [f"lm.path={model_dir}", f"engine.max_new_tokens={args.train_tokens}",
                 f"run.total_episodes={args.train_episodes}", "run.max_minutes=4", "run.eval_prompts=8",
                 "run.wandb_mode=disabled", f"run.runs_dir={runs_dir}", "run.name=gpu-check",
                 "rollout.num_actors=2", f"rollout.gpus_per_actor={0.4 if gpu else 0}",
                 f"learner.num_gpus={0.2 if gpu else 0}", "rollout.episodes_per_batch=16"]
    start = time.perf_counter()
    trainer = Trainer.new_run(load_config(None, overrides))
    summary = trainer.run()
    seconds = time.perf_counter() - start
    training = json.loads((trainer.run_dir / "training.json").read_text())
    metrics = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"seconds": seconds, "episodes": training["episodes"], "updates": training["updates"],
            "episodes_per_s": training["episodes"] / seconds,
            "max_policy_version_decoded": max(m.get("rollout/policy_version", -1) for m in metrics),
            "agent": {k: summary["agent"][k] for k in ("reward", "cost", "kl_per_response", "distinct_2")},
            "overrides": overrides}


def markdown(report: dict[str, Any]) -> str:
    t = report["throughput"]
    lines = [f"# GPU check ({report['device']})", "", f"Command: `{report['command']}`", "",
             f"Model: random Llama, {report['parameters'] / 1e9:.2f}B parameters, {report['dtype']}, "
             f"attention `{t['attention']}`.", "",
             "| batch | engine tokens/s | generate tokens/s | engine / generate |", "|---|---|---|---|"]
    lines += [f"| {r['batch']} | {r['engine_tokens_per_s']:.1f} | {r['generate_tokens_per_s']:.1f} | "
              f"{r['engine_vs_generate']:.2f} |" for r in t["rows"]]
    lines += ["", f"Host reads per forward: {t['host_reads_per_forward']:.2f} ({t['host_reads']} over {t['forwards']} "
              f"forwards and {t['forced_rounds']} forced emissions, batch 8; target ≤ {TARGETS['host_reads_per_forward']:g}).",
              "",
              "| learner | updates/s | decisions/s |", "|---|---|---|"]
    lines += [f"| {r['learner']} | {r['updates_per_s']:.1f} | {r['samples_per_s']:.0f} |" for r in report["learners"]]
    tr = report["training"]
    lines += ["", f"Short training: {tr['episodes']} episodes in {tr['seconds']:.0f} s ({tr['episodes_per_s']:.1f}/s), "
              f"{tr['updates']} updates, actors decoded policy version up to {tr['max_policy_version_decoded']:g}; "
              f"agent reward {tr['agent']['reward']['mean']:.3f}, KL/response {tr['agent']['kl_per_response']['mean']:.3f}, "
              f"distinct-2 {tr['agent']['distinct_2']:.3f}.", "", "Targets: " + ", ".join(
                  f"{k} {'met' if v else 'NOT met'}" for k, v in report["targets_met"].items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU: checks that every step runs")
    parser.add_argument("--out", default=None, help="results directory (default benchmarks/results; a temp dir with --dry-run)")
    ns = parser.parse_args(argv)
    args = Args(dry_run=ns.dry_run, **(DRY_RUN if ns.dry_run else {}))
    device = torch.device("cpu" if ns.dry_run or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not ns.dry_run:
        parser.error("no CUDA device: this check measures a GPU machine; run it with --dry-run on a CPU")
    out = Path(ns.out) if ns.out else (Path(tempfile.mkdtemp(prefix="gpu-check-")) if ns.dry_run else RESULTS)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        model_dir = Path(scratch) / "random-llama"
        random_llama(args, model_dir)
        model, tokenizer = load_lm(str(model_dir), device=device)  # lm.dtype auto: bf16 on the GPU
        report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
                  "command": "python benchmarks/gpu_check.py" + (" --dry-run" if ns.dry_run else ""),
                  "args": {f.name: getattr(args, f.name) for f in fields(args)},
                  "parameters": sum(p.numel() for p in model.parameters()), "dtype": str(model.dtype),
                  "throughput": throughput(args, model, tokenizer)}
        del model
        report["learners"] = learner_rates(args, device.type)
        report["training"] = short_training(args, model_dir, Path(scratch) / "runs", gpu=device.type == "cuda")
    b8 = [r for r in report["throughput"]["rows"] if r["batch"] == 8]
    report["targets_met"] = {
        "engine ≥ 0.8× generate at batch 8": bool(b8) and b8[0]["engine_vs_generate"] >= TARGETS["engine_vs_generate_b8"],
        "≤ 2 host reads per forward": report["throughput"]["host_reads_per_forward"] <= TARGETS["host_reads_per_forward"],
    }
    out.mkdir(parents=True, exist_ok=True)
    name = "gpu_check_dry_run" if ns.dry_run else "gpu_check"
    (out / f"{name}.json").write_text(json.dumps(report, indent=2, default=str))
    (out / f"{name}.md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
