"""The learner comparison's report: seeds aggregated, decisions to a reward target, a markdown table, plots.

Reads what benchmarks/compare_algorithms.py measured ({"runs": [...], "baselines": [...], ...}) and writes
<name>.json (with an "aggregate" section), <name>.md, <name>_curves.png and <name>_pareto.png. Run it alone
to rebuild the report from a saved JSON:

    python benchmarks/compare_report.py benchmarks/results/compare_algorithms.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

EVAL_METRICS = ("reward", "cost", "cost_success", "perplexity", "length", "distinct_2", "lm_forward_tokens_per_token",
                "seconds_per_token")
"""Evaluation figures reported per method (each a per-seed mean, then mean ± SE over seeds)."""
SMOOTHING_EPISODES = 128
"""Episodes the training reward is averaged over before it is compared with the target."""
CURVE_POINTS = 20


def mean_se(values: list[float]) -> dict[str, float]:
    """{"mean", "se", "n"} over seeds (se 0 for one seed)."""
    x = np.asarray(values, dtype=np.float64)
    se = float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0
    return {"mean": float(x.mean()), "se": se, "n": int(len(x))}


def _value(summary: dict[str, Any], metric: str) -> float:
    value = summary[metric]
    return float(value["mean"] if isinstance(value, dict) else value)


def decisions_to_target(curve: dict[str, list[float]], target: float) -> float | None:
    """Decisions collected when the training reward, averaged over the last SMOOTHING_EPISODES, first reaches target."""
    episodes = np.asarray(curve["batch_episodes"])
    weighted = np.cumsum(np.asarray(curve["reward"]) * episodes)
    counts = np.cumsum(episodes)
    for i in range(len(episodes)):
        j = int(np.searchsorted(counts, counts[i] - SMOOTHING_EPISODES, side="right"))  # first batch in the window
        if counts[i] < SMOOTHING_EPISODES:
            continue
        window = (weighted[i] - (weighted[j - 1] if j else 0.0)) / (counts[i] - (counts[j - 1] if j else 0.0))
        if window >= target:
            return float(curve["decisions"][i])
    return None


def binned_curve(curve: dict[str, list[float]], key: str, edges: np.ndarray) -> np.ndarray:
    """The episode-weighted mean of `key` over the rollout batches whose decisions fall in each bin (nan if none)."""
    x, y, w = (np.asarray(curve[k]) for k in ("decisions", key, "batch_episodes"))
    bins = np.clip(np.digitize(x, edges) - 1, 0, len(edges) - 2)
    total = np.bincount(bins, weights=y * w, minlength=len(edges) - 1)
    count = np.bincount(bins, weights=w, minlength=len(edges) - 1)
    with np.errstate(invalid="ignore"):
        return total / count


def aggregate(data: dict[str, Any]) -> dict[str, Any]:
    """Per method, every figure as mean ± SE over seeds; the reward target and the curves on one grid."""
    args = data["args"]
    methods: dict[str, dict[str, Any]] = {}
    for row in data["baselines"]:
        methods.setdefault(row["method"], {"kind": "baseline", "n": row["n"], "evals": []})["evals"].append(row["eval"])
    for run in data["runs"]:
        methods.setdefault(run["learner"], {"kind": "learner", "runs": [], "evals": []})
        methods[run["learner"]]["runs"].append(run)
        methods[run["learner"]]["evals"].append(run["eval"])
    target_method = f"best-of-{args['target_best_of']}"
    target = mean_se([_value(e, "reward") for e in methods[target_method]["evals"]])["mean"] if target_method in methods else None
    edges = np.linspace(0, args["decisions"], CURVE_POINTS + 1)
    out: dict[str, Any] = {"target": {"method": target_method, "reward": target}, "grid": edges.tolist(), "methods": {}}
    for name, method in methods.items():
        row: dict[str, Any] = {"kind": method["kind"]}
        row.update({metric: mean_se([_value(e, metric) for e in method["evals"]]) for metric in EVAL_METRICS})
        if method["kind"] == "baseline":
            row["best_of"] = method["n"]
        else:
            runs = method["runs"]
            row["train_minutes"] = mean_se([r["train_minutes"] for r in runs])
            row["decisions"] = mean_se([r["decisions"] for r in runs])
            reached = [d for d in (decisions_to_target(r["curve"], target) for r in runs) if d is not None] if target is not None else []
            row["decisions_to_target"] = {**(mean_se(reached) if reached else {"mean": None, "se": None}),
                                          "reached": len(reached), "runs": len(runs)}
            row["curve"] = {key: [binned_curve(r["curve"], key, edges).tolist() for r in runs] for key in ("reward", "cost")}
        out["methods"][name] = row
    return out


def _fmt(stat: dict[str, float], digits: int = 3) -> str:
    return "–" if stat.get("mean") is None else f"{stat['mean']:.{digits}f} ± {stat['se']:.{digits}f}"


def _gap(a: dict[str, float], b: dict[str, float]) -> str:
    """a − b with its size in standard errors of the difference."""
    gap, se = a["mean"] - b["mean"], float(np.hypot(a["se"], b["se"]))
    return f"{gap:+.3f}" + (f", {gap / se:+.1f} SE" if se > 0 else "")


def verdict(agg: dict[str, Any], cost_limit: float) -> list[str]:
    """Plain sentences: who wins on reward, by how much, at what cost, and where agents lose to best-of-N."""
    methods = agg["methods"]
    learners = sorted((n for n, m in methods.items() if m["kind"] == "learner"), key=lambda n: -methods[n]["reward"]["mean"])
    baselines = sorted((n for n, m in methods.items() if m["kind"] == "baseline"), key=lambda n: methods[n].get("best_of", 1))
    if not learners:
        return []
    best = methods[learners[0]]
    lines = [f"- **{learners[0]}** has the highest held-out reward, {_fmt(best['reward'])}, at cost {_fmt(best['cost'])} "
             f"(P(cost ≤ {cost_limit:g}) = {_fmt(best['cost_success'], 2)}), after {_fmt(best['train_minutes'], 1)} "
             "minutes of training."]
    if len(learners) > 1:
        runner_up = methods[learners[1]]
        lines.append(f"- Its margin over the runner-up **{learners[1]}** ({_fmt(runner_up['reward'])}) is "
                     f"{_gap(best['reward'], runner_up['reward'])}.")
    safest = min(learners, key=lambda n: methods[n]["cost"]["mean"])
    lines.append(f"- Lowest cost among the learners: **{safest}**, {_fmt(methods[safest]['cost'])} "
                 f"(reward {_fmt(methods[safest]['reward'])}).")
    for name in learners:
        m = methods[name]
        compute = f"the agent {m['lm_forward_tokens_per_token']['mean']:.1f}"
        above = [n for n in baselines if methods[n]["reward"]["mean"] > m["reward"]["mean"]]
        if above:
            first = methods[above[0]]
            lines.append(f"- **{name}** ({_fmt(m['reward'])}) is outscored by **{above[0]}** ({_fmt(first['reward'])}; "
                         f"gap {_gap(first['reward'], m['reward'])}), which costs "
                         f"{first['lm_forward_tokens_per_token']['mean']:.1f} LM forward tokens per generated token, "
                         f"{compute}.")
        else:
            top = methods[baselines[-1]]
            lines.append(f"- **{name}** ({_fmt(m['reward'])}) outscores every baseline, {baselines[-1]} included "
                         f"({_fmt(top['reward'])}; gap {_gap(m['reward'], top['reward'])}), which costs "
                         f"{top['lm_forward_tokens_per_token']['mean']:.1f} LM forward tokens per generated token, "
                         f"{compute}.")
    lines.append(_text_quality(methods, learners, baselines))
    return lines


def _text_quality(methods: dict[str, Any], learners: list[str], baselines: list[str]) -> str:
    """Where the agents stand against the baselines on diversity and on the base LM's perplexity."""
    def span(names: list[str], metric: str, digits: int) -> str:
        values = [methods[n][metric]["mean"] for n in names]
        return f"{min(values):.{digits}f}–{max(values):.{digits}f}"

    return (f"- Text: the learners' distinct-2 is {span(learners, 'distinct_2', 2)} against "
            f"{span(baselines, 'distinct_2', 2)} for the baselines, and the base LM's perplexity of their responses "
            f"{span(learners, 'perplexity', 1)} against {span(baselines, 'perplexity', 1)}: read the generations "
            "before trusting a reward gain.")


def markdown(data: dict[str, Any], agg: dict[str, Any], name: str) -> str:
    args = data["args"]
    methods = agg["methods"]
    target = agg["target"]
    lines = [
        "# Learner comparison on the demo task", "",
        f"Made by `{data['command']}` on {data['machine']['cores']} CPU cores, no GPU, in "
        f"{data.get('wall_minutes', float('nan')):.0f} minutes. Every learner trains on the demo task (bundled tiny LM, "
        f"reward = 2 × VADER, cost = profanity probability) for {args['decisions']:,} agent decisions, "
        f"{args['seeds']} seeds each; each trained agent (sampled, as the text distribution it is) and each baseline is evaluated "
        f"on the first {args['eval_prompts']} held-out prompts. Figures are mean ± standard error over seeds. "
        f"cost_success is P(cost ≤ {args['cost_limit']:g}), the Lagrangian learners' threshold. "
        "LM fwd/token: LM forward tokens per generated token (decode compute)."
        + (f" Config overrides of every training run: `{' '.join(data['overrides'])}`." if data.get("overrides") else ""),
        "",
        "| method | reward | cost | cost_success | perplexity | distinct-2 | LM fwd/token | s/token (ms) | train min | "
        f"decisions to reward {target['reward'] if target['reward'] is None else round(target['reward'], 3)} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ordered = [n for n in methods if methods[n]["kind"] == "learner"] + sorted(
        (n for n in methods if methods[n]["kind"] == "baseline"), key=lambda n: methods[n]["best_of"])
    for n in ordered:
        m = methods[n]
        learner = m["kind"] == "learner"
        reach = m.get("decisions_to_target", {})
        reach_text = "–" if not learner else (
            f"{reach['mean']:,.0f} ± {reach['se']:,.0f} ({reach['reached']}/{reach['runs']})" if reach["reached"]
            else f"not reached (0/{reach['runs']})")
        ms = {k: m["seconds_per_token"][k] * 1e3 for k in ("mean", "se")}
        lines.append(f"| {n} | {_fmt(m['reward'])} | {_fmt(m['cost'])} | {_fmt(m['cost_success'], 2)} | "
                     f"{_fmt(m['perplexity'], 1)} | {_fmt(m['distinct_2'], 2)} | {_fmt(m['lm_forward_tokens_per_token'], 2)} | "
                     f"{_fmt(ms, 2)} | {_fmt(m['train_minutes'], 2) if learner else '–'} | {reach_text} |")
    lines += [
        "", f"Reward target: the held-out reward of {target['method']}; reached when the training reward averaged "
        f"over the last {SMOOTHING_EPISODES} episodes first gets there (the count of seeds that reached it in brackets). "
        "Training rewards are sampled by the stochastic agent on training prompts, the evaluation is greedy on "
        "held-out ones.", "", "## Verdict", "", *verdict(agg, args["cost_limit"]), "",
        "Learner settings (each paper's defaults, rollout sizes scaled alike to the demo): "
        + "; ".join(f"{k}: {v}" for k, v in data["learner_params"].items()) + ".", "",
        f"![learning curves]({name}_curves.png)", "", f"![reward against cost]({name}_pareto.png)", "",
    ]
    return "\n".join(lines)


def _band(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error over seeds (rows) of each bin, skipping seeds with no batch there (nan)."""
    seen = ~np.isnan(values)
    count = seen.sum(axis=0)
    filled = np.where(seen, values, 0.0)
    mean = np.divide(filled.sum(axis=0), count, out=np.full(values.shape[1], np.nan), where=count > 0)
    squares = np.where(seen, (values - mean) ** 2, 0.0).sum(axis=0)
    var = np.divide(squares, count - 1, out=np.zeros(values.shape[1]), where=count > 1)
    return mean, np.sqrt(var / np.maximum(count, 1))


def plot_curves(agg: dict[str, Any], path: Path) -> None:
    edges = np.asarray(agg["grid"])
    centres = (edges[:-1] + edges[1:]) / 2
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, m in agg["methods"].items():
        if m["kind"] != "learner":
            continue
        for ax, key in zip(axes, ("reward", "cost")):
            mean, se = _band(np.asarray(m["curve"][key], dtype=np.float64))
            ax.plot(centres, mean, label=name)
            ax.fill_between(centres, mean - se, mean + se, alpha=0.25)
    target = agg["target"]["reward"]
    if target is not None:
        axes[0].axhline(target, color="grey", linestyle="--", linewidth=1, label=agg["target"]["method"] + " (held-out)")
    for ax, key in zip(axes, ("training reward (2 × VADER)", "training cost (profanity)")):
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x / 1000:g}k"))
        ax.set_xlabel("agent decisions")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Learning curves: mean ± SE over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_pareto(agg: dict[str, Any], path: Path) -> None:
    methods = agg["methods"]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    baselines = sorted((n for n in methods if methods[n]["kind"] == "baseline"), key=lambda n: methods[n]["best_of"])
    xs = [methods[n]["cost"]["mean"] for n in baselines]
    ys = [methods[n]["reward"]["mean"] for n in baselines]
    ax.plot(xs, ys, "k--", marker="s", markersize=4, linewidth=1, label="base / best-of-N")
    for n, x, y in zip(baselines, xs, ys):
        ax.annotate(n.replace("best-of-", "N="), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    for n, m in methods.items():
        if m["kind"] == "learner":
            ax.errorbar(m["cost"]["mean"], m["reward"]["mean"], xerr=m["cost"]["se"], yerr=m["reward"]["se"], fmt="o",
                        capsize=3, label=n)
    ax.set_xlabel("held-out cost (lower is safer)")
    ax.set_ylabel("held-out reward")
    ax.set_title("Reward against cost (mean ± SE over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(data: dict[str, Any], out: Path, name: str) -> str:
    """Aggregate, then write <name>.json, <name>.md and the two plots into `out`; returns the markdown."""
    agg = aggregate(data)
    data = {**data, "aggregate": agg}
    (out / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n")
    plot_curves(agg, out / f"{name}_curves.png")
    plot_pareto(agg, out / f"{name}_pareto.png")
    text = markdown(data, agg, name)
    (out / f"{name}.md").write_text(text)
    return text


if __name__ == "__main__":
    source = Path(sys.argv[1])
    print(write_report(json.loads(source.read_text()), source.parent, source.stem))
