"""Reward over-optimisation on the demo (Gao et al. 2022): reward heads fitted on 100 / 1,000 / 10,000
gold-labelled pairs are the proxies agents optimise; the gold scorer (VADER, which labelled the pairs)
judges them. Beside them, best-of-N reranked by the same proxy, and TLCR's per-token rewards from a token
head against the sequence reward of the largest reward head.

    python benchmarks/overoptimisation.py            # the committed results (about 40 minutes on 2 cores)
    python benchmarks/overoptimisation.py --kl-coef 0.3   # the same heads, agents nearer the base LM
    python benchmarks/overoptimisation.py --quick    # a smoke run

Data: the demo preference set (tokenalign/workflows/demo_preferences.py): two base-LM samples per demo prompt,
`better` by VADER, ties dropped, revisions for the token head. Each head holds out a ninth of its pairs
(fit-scorer's eval_fraction 0.1 of N/0.9). Agents: PPO as the demo trains it, at β = `kl_coef`, with the
proxy head as the only reward and VADER recorded at ×0 (so its training curve is logged, not optimised).
Each proxy enters at unit standard deviation over base samples (its scale, measured on seed 0's pool), so
β means the same for all. Every agent and best-of-N row carries gold and proxy reward (the proxy unscaled,
as the head scores), KL per response to the base LM, distinct-2 and the base LM's perplexity; mean ± SE over
seeds (heads are fitted once, seed 0; agents and the base pool per seed).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from bench_runs import best_of_pool, budget_overrides, command, held_out_task, machine, mean_se, parse_args, train

from tokenalign.eval.agent_source import load_agent
from tokenalign.eval.evaluate import evaluate
from tokenalign.workflows.demo_preferences import ensure_demo_preferences
from tokenalign.workflows.fit_head import FitConfig, fit_head

GOLD = "vader"


@dataclass
class Args:
    """Flags of the benchmark (defaults: the committed run)."""

    pairs: str = "100,1000,10000"
    """Training pairs of each proxy reward head."""
    seeds: int = 3
    """Agent and best-of-N seeds."""
    episodes: int = 800
    """Training episodes per agent."""
    kl_coef: float = 0.03
    """β of the agents: low enough that they move several nats, where over-optimisation shows."""
    eval_prompts: int = 60
    """Held-out prompts every agent and best-of-N row is measured on."""
    pool: int = 64
    """Base samples per prompt for best-of-N (N = 1, 2, 4, …, pool)."""
    eval_batch_size: int = 64
    """Prompts per decoding batch in evaluation."""
    runs_dir: str = "runs/bench-overoptimisation"
    """Where heads, data and training runs go."""
    out_dir: str = "benchmarks/results"
    """Where the JSON, markdown and PNG go."""
    quick: bool = False
    """A smoke run: tiny sizes."""


QUICK = {"pairs": "50,100", "seeds": 1, "episodes": 64, "eval_prompts": 8, "pool": 4}


def fit(kind: str, data: Path, n: int, out: Path) -> dict[str, Any]:
    """A head of `kind` fitted on n pairs of `data` (plus a ninth held out), or the one already there."""
    if not (out / "fit_report.json").is_file():
        fit_head(FitConfig(kind=kind, data=[f"demo:{math.ceil(n / 0.9)}/-1:{data}"], out=str(out), pooling="mean",
                           epochs=30 if n < 1000 else 20 if n < 10000 else 10, wandb_mode="disabled", seed=0))
    return json.loads((out / "fit_report.json").read_text())


def proxy_name(label: str) -> str:
    return f"proxy-{label}"


def scorer_specs(heads: dict[str, Path], scale: dict[str, float] | None = None) -> list[str]:
    """Every head as a named scorer (×its unit-std scale, or ×1), and VADER recorded at ×0."""
    return [f"head:{path},name={proxy_name(label)},multiplier={(scale or {}).get(label, 1.0)!r}"
            for label, path in heads.items()] + [f"{GOLD},multiplier=0"]


def curve(run_dir: Path) -> list[tuple[float, float]]:
    """(decisions so far, gold reward of that round's training episodes) from a run's metrics.jsonl."""
    points = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        if f"rollout/score/{GOLD}" in m:
            points.append((m["decisions"], m[f"rollout/score/{GOLD}"]))
    return points


def main() -> None:
    args = parse_args(Args, __doc__, QUICK)
    name = "overoptimisation_quick" if args.quick else "overoptimisation"
    if args.kl_coef != Args.kl_coef:  # another β is another frontier point of the same heads: its own files
        name += f"_beta{args.kl_coef:g}"
    sizes = [int(n) for n in args.pairs.split(",")]
    root = Path(args.runs_dir)
    data_file = ensure_demo_preferences(pairs=math.ceil(max(sizes) / 0.9) + 8, seed=0)
    start = time.monotonic()

    def say(text: str) -> None:
        print(f"[{(time.monotonic() - start) / 60:5.1f} min] {text}", flush=True)

    heads = {str(n): root / "heads" / f"reward-{n}" for n in sizes}
    heads["token"] = root / "heads" / f"token-{max(sizes)}"
    source = f"$TOKENALIGN_CACHE/{data_file.name} (tokenalign.workflows.demo_preferences.ensure_demo_preferences)"
    data: dict[str, Any] = {"command": command("overoptimisation.py", args, QUICK), "args": asdict(args),
                            "machine": machine(), "data": source, "heads": {}, "scale": {}, "seeds": []}
    for label, out in heads.items():
        say(f"fitting the {label} head")
        kind, n = ("token", max(sizes)) if label == "token" else ("reward", int(label))
        data["heads"][label] = fit(kind, data_file, n, out)["metrics"]

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    engine = ["shaping.postback=false", "engine.candidate_block=4"]
    runs_dir = root / "runs" / time.strftime("%Y%m%d-%H%M%S")
    _, task = held_out_task([f"reward.scorers={json.dumps(scorer_specs(heads))}", *engine], args.eval_prompts)
    eos = task.engine.eos_token_id
    for seed in range(args.seeds):
        row: dict[str, Any] = {"seed": seed, "agents": {}, "best_of": {}, "curves": {}}
        say(f"seed {seed}: a pool of {args.pool} base samples per prompt, scored by every proxy")
        pool = evaluate(task, "base", [p for p in task.prompts for _ in range(args.pool)], seed=seed,
                        batch_size=args.eval_batch_size)
        if not data["scale"]:  # each proxy at unit std over base samples, so that β means the same for all of them
            data["scale"] = {label: 1.0 / float(np.std([r.scores[proxy_name(label)] for r in pool.records]))
                             for label in heads}
        # each lambda binds its label's proxy name as a default
        row["best_of"] = {label: best_of_pool(pool.records, prompts=len(task.prompts), pool=args.pool, eos=eos,
                                              rank_by=lambda r, name=proxy_name(label): r.scores[name],  # noqa: B008
                                              report={"proxy": lambda r, name=proxy_name(label): r.scores[name],  # noqa: B008
                                                      "gold": lambda r: r.scores[GOLD]})
                          for label in heads if label != "token"}
        for label, head in heads.items():
            say(f"seed {seed}: agent on the {label} head")
            own = scorer_specs({label: head}, data["scale"])
            run_dir, training = train([*budget_overrides(learner="ppo", decisions=None, seed=seed, runs_dir=runs_dir,
                                                         name=f"head-{label}"),
                                       f"run.total_episodes={args.episodes}",
                                       "learner.params={episodes_per_update: 32, actor_lr: 0.001, critic_lr: 0.001}",
                                       f"learner.params.kl_coef={args.kl_coef}", f"reward.scorers={json.dumps(own)}",
                                       *engine])
            result = evaluate(task, "sample", task.prompts, policy=load_agent(run_dir, state_size=task.state_size),
                              seed=seed, batch_size=args.eval_batch_size)
            row["agents"][label] = {
                "proxy": float(np.mean([r.scores[proxy_name(label)] for r in result.records])),
                "gold": float(np.mean([r.scores[GOLD] for r in result.records])),
                "kl": result.summary["kl_per_response"]["mean"], "distinct_2": result.summary["distinct_2"],
                "perplexity": result.summary["perplexity"]["mean"], "decisions": float(training["decisions"]),
                "train_minutes": float(training["minutes"]), "sample": [r.response for r in result.records[:3]]}
            row["curves"][label] = curve(run_dir)
        data["seeds"].append(row)
        (out_dir / f"{name}.json").write_text(json.dumps(data, indent=1))  # after each seed: a stop keeps them
    data["summary"] = summarise(data, sizes)
    (out_dir / f"{name}.json").write_text(json.dumps(data, indent=1))
    (out_dir / f"{name}.md").write_text(markdown(data, sizes))
    plot(data, sizes, out_dir / f"{name}.png")
    print(markdown(data, sizes))


def aggregate(rows: list[dict[str, Any]]) -> dict[str, list[float]]:
    return {k: list(mean_se([r[k] for r in rows])) for k, v in rows[0].items() if isinstance(v, float)}


def decisions_to_reach(points: list[tuple[float, float]], target: float, window: int = 3) -> float | None:
    """Decisions at which the gold reward's running mean over `window` rounds first reaches `target`."""
    gold = np.array([g for _, g in points])
    for i in range(window - 1, len(points)):
        if gold[i - window + 1: i + 1].mean() >= target:
            return points[i][0]
    return None


def summarise(data: dict[str, Any], sizes: list[int]) -> dict[str, Any]:
    labels = [str(n) for n in sizes] + ["token"]
    seeds = data["seeds"]
    summary: dict[str, Any] = {
        "agents": {k: aggregate([s["agents"][k] for s in seeds]) for k in labels},
        "best_of": {k: {n: aggregate([s["best_of"][k][n] for s in seeds]) for n in seeds[0]["best_of"][k]}
                    for k in labels if k != "token"},
    }
    # TLCR vs the sequence reward: decisions the token agent needs to reach the sequence agent's final gold reward
    sequence = str(max(sizes))
    reach = []
    for s in seeds:
        final = float(np.mean([g for _, g in s["curves"][sequence][-3:]]))
        reach.append({"target": final, "sequence": decisions_to_reach(s["curves"][sequence], final),
                      "token": decisions_to_reach(s["curves"]["token"], final)})
    summary["token_vs_sequence"] = reach
    return summary


def fmt(cell: list[float], digits: int = 3) -> str:
    return f"{cell[0]:.{digits}f} ± {cell[1]:.{digits}f}"


def markdown(data: dict[str, Any], sizes: list[int]) -> str:
    s = data["summary"]
    lines = [
        "# Reward over-optimisation on the demo: reward heads as proxies, VADER as gold", "",
        f"`{data['command']}` — {len(data['seeds'])} seed(s), {data['args']['eval_prompts']} held-out prompts, "
        f"{data['args']['episodes']} PPO episodes per agent at β={data['args']['kl_coef']}; mean ± SE over seeds. "
        "Proxy: the head's score (a Bradley–Terry logit); gold: VADER compound (it labelled the pairs). KL per response "
        "to the base LM in nats (agents: measured while decoding; best-of-N: the analytic bound log N − (N−1)/N).", "",
        "## The heads (held-out accuracy)", "",
        "| head | pairs fitted | held-out pair accuracy | token accuracy |", "|---|---|---|---|",
    ]
    for n in sizes:
        lines.append(f"| reward | {n} | {data['heads'][str(n)]['eval_pair_accuracy']:.3f} | |")
    t = data["heads"]["token"]
    lines += [f"| token (TLCR) | {max(sizes)} | {t['eval_pair_accuracy']:.3f} | {t['eval_token_accuracy']:.3f} |", "",
              "## Agents and best-of-N", "",
              "| proxy | method | proxy reward | gold reward | KL / response | √KL | distinct-2 | base-LM ppl |",
              "|---|---|---|---|---|---|---|---|"]
    for label in [str(n) for n in sizes] + ["token"]:
        a = s["agents"][label]
        what = f"{label} pairs" if label != "token" else "token head"
        lines.append(f"| {what} | agent | {fmt(a['proxy'])} | {fmt(a['gold'])} | {fmt(a['kl'], 2)} | "
                     f"{math.sqrt(max(a['kl'][0], 0)):.2f} | {fmt(a['distinct_2'])} | {fmt(a['perplexity'], 1)} |")
        for n, b in s["best_of"].get(label, {}).items():
            lines.append(f"| {what} | best-of-{n} | {fmt(b['proxy'])} | {fmt(b['gold'])} | ≤ {b['kl'][0]:.2f} | "
                         f"{math.sqrt(b['kl'][0]):.2f} | {fmt(b['distinct_2'])} | {fmt(b['perplexity'], 1)} |")
    lines += ["", "## TLCR's per-token reward against the sequence reward", "",
              f"Decisions each agent needed until its training episodes' gold reward (running mean of 3 rounds) reached "
              f"the {max(sizes)}-pair sequence agent's final gold reward, per seed:", ""]
    for seed, r in enumerate(s["token_vs_sequence"]):
        token = "never, within the budget" if r["token"] is None else f"{r['token']:.0f}"
        lines.append(f"- seed {seed}: target {r['target']:.3f}; sequence agent {r['sequence']:.0f} decisions; "
                     f"token agent {token}")
    return "\n".join(lines) + "\n"


def plot(data: dict[str, Any], sizes: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = data["summary"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, n in enumerate(sizes):
        label, colour = str(n), colours[k]
        for ax, key in ((axes[0], "gold"), (axes[1], "proxy")):
            bo = s["best_of"][label]
            x = [math.sqrt(b["kl"][0]) for b in bo.values()]
            ax.plot(x, [b[key][0] for b in bo.values()], "--", color=colour, alpha=0.7, label=f"best-of-N, {n}-pair proxy")
            a = s["agents"][label]
            ax.errorbar([math.sqrt(max(a["kl"][0], 0))], [a[key][0]], yerr=[a[key][1]], fmt="o", color=colour,
                        label=f"agent, {n}-pair proxy")
    a = s["agents"]["token"]
    axes[0].errorbar([math.sqrt(max(a["kl"][0], 0))], [a["gold"][0]], yerr=[a["gold"][1]], fmt="s", color="black",
                     label="agent, token head")
    for ax, title in ((axes[0], "gold reward (VADER)"), (axes[1], "proxy reward (head score)")):
        ax.set_xlabel("√KL per response (nats^½)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    sequence = str(max(sizes))
    for label, style in ((sequence, "-"), ("token", ":")):
        for seed in data["seeds"]:
            pts = seed["curves"][label]
            axes[2].plot([d for d, _ in pts], [g for _, g in pts], style, alpha=0.7,
                         label=f"{'token head (TLCR)' if label == 'token' else f'{label}-pair reward head'}, seed {seed['seed']}")
    axes[2].set_xlabel("decisions")
    axes[2].set_title("gold reward of training episodes")
    axes[2].legend(fontsize=7)
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
