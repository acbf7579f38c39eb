"""Pareto evaluation of preference-conditioned alignment (RiC) on a two-objective demo task.

    python benchmarks/pareto.py            # 3 seeds, 30k decisions per trained agent, 100 held-out prompts
    python benchmarks/pareto.py --quick    # 1 seed, 4k decisions, 20 prompts: a check that it runs

The two objectives, both available offline and both scored on the response alone:
  * `vader`: VADER compound sentiment in [−1, 1] (more positive is better);
  * `distinct`: lexical diversity, distinct word bigrams over max(bigrams, 8), in [0, 1].
They conflict on this LM: the cheapest way to raise VADER is to repeat positive phrases, which is what
every agent trained on VADER alone learned (compare_algorithms: distinct-2 0.04 against 0.48 for base
sampling), and that is exactly what `distinct` penalises.

Methods, each evaluated on the same held-out prompts with the same seed, over RiC's grid w₁ ∈ {0, 0.1, …, 1}
(w = (w₁, 1 − w₁) on (vader, distinct)):
  * conditioned  ONE preference-conditioned agent (objective=preference: w drawn per episode from RiC's
                 grid, the agent sees [state ; w]), decoded at every w of the grid;
  * morlhf       one unconditioned agent per weight w₁ ∈ {0, 0.5, 1} (objective=preference with fixed weights),
                 each trained with about the conditioned agent's decision budget (so 3× in total);
  * soups        rewarded soups: the parameters of MORLHF's two extreme agents interpolated, θ = w₁·θ_vader +
                 (1 − w₁)·θ_distinct, at every w of the grid (no training of its own);
  * best-of-N    N base samples per prompt reranked by Σ_i w_i·ẑ_i (ẑ: z-scores over the samples), every w.
Every agent is evaluated twice: as a text distribution (its actions sampled by the rollout's own decode
loop: the main figures) and as MARA evaluates (serial first-accept with a greedy agent: "@serial"). Each
point is the mean raw (vader, distinct) over the prompts; fronts are averaged over seeds (± SE). The
hypervolume is of each method's non-dominated points in that plane with the reference point (−1, 0), the
worst value each objective can take, computed per seed and reported as mean ± SE.

Results: benchmarks/results/pareto[_quick].{json,md,png}.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_runs import (  # noqa: E402
    AGENT_MODES,
    budget_overrides,
    command,
    decode,
    held_out_task,
    machine,
    mean_se,
    parse_args,
    train,
)

from tokenalign.agents.policy import AcceptRejectPolicy  # noqa: E402
from tokenalign.envs.task import DecodingTask  # noqa: E402
from tokenalign.eval.agent_source import find_checkpoint, load_agent  # noqa: E402
from tokenalign.eval.metrics import distinct_n  # noqa: E402
from tokenalign.eval.perplexity import response_perplexity  # noqa: E402
from tokenalign.eval.sampler import sample_responses  # noqa: E402

SCORERS = "reward.scorers=[vader, distinct]"

OBJECTIVES = ("vader", "distinct")
REFERENCE = (-1.0, 0.0)
"""Hypervolume reference point: the worst value of each objective (VADER compound −1, no distinct bigram)."""
GRID = [round(w, 1) for w in np.linspace(0.0, 1.0, 11)]  # RiC
QUICK = {"seeds": 1, "decisions": 4000, "conditioned_decisions": 3800, "eval_prompts": 20, "best_of": 4}


@dataclass
class Args:
    """Pareto benchmark settings."""

    seeds: int = 3
    """Seeds (0, 1, ...): each trains every agent and redraws every sample."""
    decisions: int = 30_000
    """Agent decisions each MORLHF agent collects (three agents: 3× this in total)."""
    conditioned_decisions: int = 28_500
    """Agent decisions of the one conditioned agent: under 1/3 of MORLHF's total even after each run's last
    rollout overshoots its budget."""
    learner: str = "ppo"
    """Learner of every agent (PPO reached best-of-4's reward fastest in compare_algorithms)."""
    morlhf_weights: str = "0,0.5,1"
    """w₁ of the MORLHF agents (at least the two extremes, which rewarded soups interpolate)."""
    eval_prompts: int = 100
    """Held-out prompts every point is evaluated on."""
    best_of: int = 16
    """N of the best-of-N baseline."""
    eval_batch_size: int = 32
    """Sequences decoded together during evaluation."""
    quick: bool = False
    """1 seed, 4k decisions, 20 prompts, N = 4: writes pareto_quick.*."""
    out_dir: str = "benchmarks/results"
    """Where the results go."""
    runs_dir: str = "runs/pareto"
    """Parent of the training runs' directories."""


def point(result) -> dict[str, Any]:
    """One evaluation as a front point: mean raw objectives plus the text-quality figures."""
    means = {k: float(np.mean([r.scores[k] for r in result.records])) for k in OBJECTIVES}
    s = result.summary
    return {**means, "distinct_2": s["distinct_2"], "perplexity": s["perplexity"]["mean"]}


def soup(a: dict[str, Any], b: dict[str, Any], w: float, state_size: int) -> AcceptRejectPolicy:
    """Rewarded soups: θ = w·θ_a + (1 − w)·θ_b of two agents of one architecture."""
    mixed = {k: w * a["state_dict"][k].float() + (1 - w) * b["state_dict"][k].float() for k in a["state_dict"]}
    return AcceptRejectPolicy.from_policy_state({**a, "state_dict": mixed}, state_size=state_size).eval()


def best_of_n_front(task: DecodingTask, prompts, n: int, seed: int, batch_size: int) -> list[dict[str, Any]]:
    """Best-of-N at every w of the grid from ONE set of N samples per prompt (same draws for every w)."""
    engine = task.engine
    generator = torch.Generator(device=engine.device).manual_seed(seed)
    rows = [p for p in prompts for _ in range(n)]
    ids: list[list[int]] = []
    for lo in range(0, len(rows), batch_size):
        ids += sample_responses(engine, [p.text for p in rows[lo: lo + batch_size]], greedy=False, generator=generator)
    texts = [engine.tokenizer.decode(t, skip_special_tokens=True) for t in ids]
    raw = task.score(rows, texts).raw
    values = np.stack([raw[k] for k in OBJECTIVES], axis=1).astype(np.float64)
    z = (values - values.mean(0)) / np.maximum(values.std(0), 1e-6)
    encoded = engine.encode([p.text for p in prompts])
    front = []
    for w in GRID:
        picked = (z @ [w, 1 - w]).reshape(len(prompts), n).argmax(1) + np.arange(len(prompts)) * n
        kept = [ids[i] for i in picked]
        ppl = response_perplexity(engine.model, encoded, kept, pad_token_id=engine.pad_token_id, batch_size=batch_size)
        front.append({"w": w, **{k: float(values[picked, j].mean()) for j, k in enumerate(OBJECTIVES)},
                      "distinct_2": distinct_n(kept, 2), "perplexity": float(np.mean(ppl))})
    return front


def fronts_of(row: dict[str, Any]) -> list[str]:
    """The result keys of a seed's row that hold fronts."""
    return [k for k, v in row.items() if isinstance(v, list)]


def hypervolume(points: list[tuple[float, float]], reference: tuple[float, float] = REFERENCE) -> float:
    """Area dominated by `points` (both objectives maximised) and bounded below by `reference`."""
    area, best_y = 0.0, reference[1]
    for x, y in sorted(points, reverse=True):
        if y > best_y and x > reference[0]:
            area += (x - reference[0]) * (y - best_y)
            best_y = y
    return area


def main() -> None:
    args = parse_args(Args, __doc__, QUICK)
    name = "pareto_quick" if args.quick else "pareto"
    runs_dir = Path(args.runs_dir) / time.strftime("%Y%m%d-%H%M%S")
    _, task = held_out_task([SCORERS], args.eval_prompts)
    data: dict[str, Any] = {"command": command("pareto.py", args, QUICK), "args": asdict(args), "objectives": OBJECTIVES,
                            "reference_point": REFERENCE, "grid": GRID, "machine": machine(), "seeds": []}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    morlhf_w = [float(w) for w in args.morlhf_weights.split(",")]

    def log(message: str) -> None:
        print(f"[{(time.monotonic() - start) / 60:5.1f} min] {message}", flush=True)

    def evaluate_agent(row: dict[str, Any], method: str, policy, seed: int, w: float, conditioned: bool) -> None:
        for suffix, mode in AGENT_MODES.items():
            result = decode(task, policy, mode, seed=seed, batch_size=args.eval_batch_size,
                            preference=[w, 1 - w] if conditioned else None)
            row.setdefault(method + suffix, []).append({"w": w, **point(result)})

    def overrides(seed: int, run_name: str, decisions: int) -> list[str]:
        return [SCORERS, "objective.name=preference", *budget_overrides(
            learner=args.learner, decisions=decisions, seed=seed, runs_dir=runs_dir, name=run_name)]

    for seed in range(args.seeds):
        row: dict[str, Any] = {"seed": seed, "training": {}}
        log(f"seed {seed}: conditioned agent")
        run_dir, training = train(overrides(seed, "conditioned", args.conditioned_decisions))
        row["training"]["conditioned"] = training["decisions"]
        agent = load_agent(run_dir, state_size=task.state_size)
        for w in GRID:
            evaluate_agent(row, "conditioned", agent, seed, w, conditioned=True)
        states = {}
        for w in morlhf_w:
            log(f"seed {seed}: MORLHF agent w1={w}")
            run_dir, training = train(overrides(seed, f"morlhf-{w}", args.decisions)
                                      + [f"objective.params.weights=[{w}, {1 - w}]"])
            row["training"][f"morlhf_{w}"] = training["decisions"]
            states[w] = torch.load(find_checkpoint(run_dir), map_location="cpu", weights_only=True)
            evaluate_agent(row, "morlhf", load_agent(run_dir, state_size=task.state_size), seed, w, conditioned=False)
        log(f"seed {seed}: rewarded soups and best-of-{args.best_of}")
        hi, lo = states[max(morlhf_w)], states[min(morlhf_w)]
        for w in GRID:
            evaluate_agent(row, "soups", soup(hi, lo, w, task.state_size), seed, w, conditioned=False)
        row["best_of_n"] = best_of_n_front(task, task.prompts, args.best_of, seed, args.eval_batch_size)
        row["hypervolume"] = {m: hypervolume([(p["vader"], p["distinct"]) for p in row[m]]) for m in fronts_of(row)}
        data["seeds"].append(row)
        data["wall_minutes"] = (time.monotonic() - start) / 60
        (out / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n")
    print(write_report(data, out, name))



def write_report(data: dict[str, Any], out: Path, name: str) -> str:
    """The markdown table (hypervolume, budget, per-method front summaries) and the fronts PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = data["seeds"]
    labels = {"conditioned": "one conditioned agent (RiC)", "morlhf": "MORLHF (one agent per weight)",
              "soups": "rewarded soups"}
    methods = {f"{m}{suffix}": f"{label}{', greedy serial' if suffix else ''}"
               for suffix in AGENT_MODES for m, label in labels.items()}
    methods["best_of_n"] = f"best-of-{data['args']['best_of']}"
    morlhf_budget = np.mean([sum(v for k, v in s["training"].items() if k.startswith("morlhf")) for s in seeds])
    budget = {m: morlhf_budget for m in methods if not m.startswith(("conditioned", "best_of_n"))}
    budget.update({m: np.mean([s["training"]["conditioned"] for s in seeds]) for m in methods if m.startswith("conditioned")})
    hv = {m: mean_se([s["hypervolume"][m] for s in seeds]) for m in methods}
    lines = ["# Pareto fronts: vader (sentiment) vs distinct (lexical diversity)", "",
             f"`{data['command']}` — {len(seeds)} seed(s), {data['wall_minutes']:.1f} min on "
             f"{data['machine']['cores']} CPU cores. Hypervolume reference point {tuple(data['reference_point'])}.", "",
             "| method | hypervolume (mean ± SE) | training decisions | points | vader range | distinct range | "
             "distinct-2 range | base-LM perplexity range |", "|---|---:|---:|---:|---|---|---|---|"]
    for m, label in methods.items():
        pts = [p for s in seeds for p in s[m]]
        rng = {k: (min(p[k] for p in pts), max(p[k] for p in pts)) for k in ("vader", "distinct", "distinct_2", "perplexity")}
        spent = f"{budget[m]:,.0f}" if m in budget else "0 (sampling)"
        lines.append(f"| {label} | {hv[m][0]:.3f} ± {hv[m][1]:.3f} | {spent} | {len(seeds[0][m])} | "
                     + " | ".join(f"{a:.3f} – {b:.3f}" if k != "perplexity" else f"{a:.1f} – {b:.1f}"
                                  for k, (a, b) in rng.items()) + " |")
    for suffix, mode in AGENT_MODES.items():
        c, m = f"conditioned{suffix}", f"morlhf{suffix}"
        lines += ["", f"Conditioned / MORLHF hypervolume ({mode} decoding): {hv[c][0] / hv[m][0]:.2f} at "
                  f"{budget[c] / budget[m]:.2f} of MORLHF's training decisions."]
    lines += ["", "Per-w points, sampled decoding (mean over seeds):", "",
              "| w₁ (vader) | conditioned vader / distinct / distinct-2 / ppl | soups vader / distinct / distinct-2 / ppl "
              "| best-of-N vader / distinct / distinct-2 / ppl |", "|---:|---|---|---|"]
    for i, w in enumerate(data["grid"]):
        cells = []
        for m in ("conditioned", "soups", "best_of_n"):
            avg = {k: np.mean([s[m][i][k] for s in seeds]) for k in ("vader", "distinct", "distinct_2", "perplexity")}
            cells.append(f"{avg['vader']:.3f} / {avg['distinct']:.3f} / {avg['distinct_2']:.3f} / {avg['perplexity']:.1f}")
        lines.append(f"| {w:.1f} | " + " | ".join(cells) + " |")
    lines += ["", "MORLHF agents:", "", "| w₁ | vader | distinct | distinct-2 | ppl |", "|---:|---:|---:|---:|---:|"]
    for j, p in enumerate(seeds[0]["morlhf"]):
        avg = {k: np.mean([s["morlhf"][j][k] for s in seeds]) for k in ("vader", "distinct", "distinct_2", "perplexity")}
        lines.append(f"| {p['w']:.1f} | {avg['vader']:.3f} | {avg['distinct']:.3f} | {avg['distinct_2']:.3f} | "
                     f"{avg['perplexity']:.1f} |")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")

    fig, ax = plt.subplots(figsize=(6.5, 5))
    styles = {"conditioned": ("C0", "o-"), "soups": ("C2", "s--"), "best_of_n": ("C3", "^:"), "morlhf": ("C1", "D")}
    for m, (color, style) in styles.items():
        xs = np.array([[p["vader"] for p in s[m]] for s in seeds])
        ys = np.array([[p["distinct"] for p in s[m]] for s in seeds])
        se = lambda a: a.std(0, ddof=1) / np.sqrt(len(a)) if len(a) > 1 else np.zeros(a.shape[1])  # noqa: E731
        ax.errorbar(xs.mean(0), ys.mean(0), xerr=se(xs), yerr=se(ys), fmt=style, color=color, label=methods[m],
                    markersize=5, capsize=2, linewidth=1.2, markeredgecolor="black" if m == "morlhf" else None)
    ax.set_xlabel("vader (sentiment, higher = more positive)")
    ax.set_ylabel("distinct (lexical diversity)")
    ax.set_title("Fronts over w₁ ∈ {0, 0.1, …, 1} (mean ± SE over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=110)
    plt.close(fig)
    return "\n".join(lines)


if __name__ == "__main__":
    torch.set_num_threads(os.cpu_count() or 1)
    main()
