"""The algorithm comparison's report (compare_algorithms.py): means over seeds, one table, the verdicts against
best-of-N at equal KL and at equal compute, and one figure (the reward–KL frontier with best-of-N's curve, and
reward against forward tokens per token)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import reward_kl
from reward_kl import aggregate as over_seeds
from reward_kl import fmt

GOAL_BUDGET = 16
"""The goal beyond the bar: a row above best-of-N's curve at every compute budget up to best-of-16's."""


def relative_compute(s: dict[str, Any]) -> dict[str, float]:
    """Each row's compute as a multiple of one base sample's (reward_kl.relative_compute), a resampling row charged
    K × its agent's: decoded as K copies of each prompt side by side, its measured forward tokens per token omit
    the prompt padding its agent pays when it decodes one response per prompt, as base sampling does."""
    relative = reward_kl.relative_compute(s)
    for key in s["agents"]:
        if " K=" in key:
            relative[key] = int(key.rsplit("K=", 1)[1]) * relative[key.rsplit(" ", 2)[0]]
    return relative


def aggregate(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± SE over seeds of every row (a row missing from a seed, e.g. an interrupted one, over the rest)."""
    keys = list(dict.fromkeys(k for s in seeds for k in s["agents"]))
    return {"base": over_seeds([s["base"] for s in seeds]),
            "agents": {k: over_seeds([s["agents"][k] for s in seeds if k in s["agents"]]) for k in keys},
            "best_of": {n: over_seeds([s["best_of"][n] for s in seeds]) for n in seeds[0]["best_of"]}}


def equal_compute(s: dict[str, Any]) -> list[dict[str, Any]]:
    """Per best-of-N with N ≤ GOAL_BUDGET: the highest-reward row within its compute, and whether it beats it
    (a gap over 2 SE; distinct-2 under 0.8× best-of-N's is no win)."""
    relative, out = relative_compute(s), []
    for n, bon in sorted(s["best_of"].items(), key=lambda item: int(item[0])):
        if int(n) > GOAL_BUDGET:
            continue
        within = {k: a for k, a in s["agents"].items() if relative[k] <= int(n) * (1 + 1e-6)}
        if not within:
            out.append({"n": int(n), "row": None, "wins": False})
            continue
        key, row = max(within.items(), key=lambda item: item[1]["reward"][0])
        gap = row["reward"][0] - bon["reward"][0]
        se = math.hypot(row["reward"][1], bon["reward"][1])
        wins = gap > 2 * se and row["distinct_2"][0] >= 0.8 * bon["distinct_2"][0]
        out.append({"n": int(n), "row": key, "gap": gap, "se": se, "wins": wins})
    return out


def markdown(data: dict[str, Any]) -> str:
    s, args = data["summary"], data["args"]
    relative = relative_compute(s)
    lines = [
        f"# Algorithm comparison on the demo task ({data['lm']}): every learner and resampling against best-of-N", "",
        f"`{data['command']}` — {args['seeds']} seed(s), {args['eval_prompts']} held-out prompts, every training loop "
        f"{args['minutes']:g} minutes in context mode, on "
        f"{data['machine']['cores']} CPU cores; {data.get('wall_minutes', 0):.0f} minutes in all. Mean ± SE over seeds. "
        "KL per response to the base LM in nats: measured while decoding for agents; for best-of-N the bound "
        "log N − (N−1)/N, for resampling rows log K + E[log π_agent/π_ref] (marked ≤). Compute: LM forward tokens per "
        "generated token as measured, and × one base sample's (agents against base sampling in the same batches, "
        "best-of-N against best-of-1 of its pool, a resampling row K × its agent's: its measured count is lowered by "
        "decoding K copies of each prompt side by side). Train: wall-clock minutes of each training run, startup and offline data "
        "preparation (distillation's base samples, DPO's pair forcing) included.", "",
        "| method | reward | cost | KL / response | distinct-2 | base-LM ppl | fwd tokens / token | × base | train min |",
        "|---|---|---|---|---|---|---|---|---|"]
    b = s["base"]
    lines.append(f"| base sampling | {fmt(b['reward'])} | {fmt(b['cost'])} | 0 | {fmt(b['distinct_2'])} | "
                 f"{fmt(b['perplexity'], 1)} | {b['forward_tokens_per_token'][0]:.2f} | 1 | — |")
    for key, a in s["agents"].items():
        bound = "≤ " if a["kl_is_bound"][0] > 0 else ""
        lines.append(f"| {key} | {fmt(a['reward'])} | {fmt(a['cost'])} | {bound}{fmt(a['kl'], 2)} | "
                     f"{fmt(a['distinct_2'])} | {fmt(a['perplexity'], 1)} | {a['forward_tokens_per_token'][0]:.2f} | "
                     f"{relative[key]:.2f} | {a['train_minutes'][0]:.2f} |")
    for n, r in s["best_of"].items():
        lines.append(f"| best-of-{n} | {fmt(r['reward'])} | {fmt(r['cost'])} | ≤ {r['kl_bound'][0]:.2f} | "
                     f"{fmt(r['distinct_2'])} | {fmt(r['perplexity'], 1)} | {r['forward_tokens_per_token'][0]:.2f} | "
                     f"{relative[n]:.2f} | 0 |")
    lines += ["", f"## At equal compute (best-of-N for N ≤ {GOAL_BUDGET}: the best row within its compute)", ""]
    for c in equal_compute(s):
        bon = s["best_of"][str(c["n"])]["reward"][0]
        if c["row"] is None:
            lines.append(f"- best-of-{c['n']} ({bon:.3f}): no row within its compute.")
            continue
        verdict = "**above** best-of-N's curve" if c["wins"] else "not above it"
        lines.append(f"- best-of-{c['n']} ({bon:.3f}): {c['row']}, Δ {c['gap']:+.3f} ± {c['se']:.3f}: {verdict}.")
    goal = all(c["wins"] for c in equal_compute(s))
    lines += ["", f"Goal beyond the bar (a row above best-of-N's curve at every budget ≤ best-of-{GOAL_BUDGET}'s): "
              f"**{'reached' if goal else 'not reached'}**.", "", "## Each row against best-of-N at its KL and at its compute",
              ""]
    lines += reward_kl.comparisons(s, relative)
    return "\n".join(lines) + "\n"


def plot(data: dict[str, Any], path: Path) -> None:
    """Reward against √KL (best-of-N's curve, each family's levels joined, resampling rows apart) and against
    compute (× one base sample's)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, relative = data["summary"], relative_compute(data["summary"])
    ns = sorted(s["best_of"], key=int)
    families: dict[str, list[str]] = {}
    for key in s["agents"]:
        group = key.split(" ")[0] + (" (resampled)" if " K=" in key else "")
        families.setdefault(group, []).append(key)
    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    for ax, x_of in ((axes[0], "kl"), (axes[1], "compute")):
        def x(name: str, row: dict[str, Any], x_of: str = x_of) -> float:
            if x_of == "compute":
                return relative[name]
            return math.sqrt(max((row["kl_bound"] if "kl_bound" in row else row["kl"])[0], 0.0))

        ax.errorbar([x(n, s["best_of"][n]) for n in ns], [s["best_of"][n]["reward"][0] for n in ns],
                    yerr=[s["best_of"][n]["reward"][1] for n in ns], fmt="^-", color="black", label="best-of-N")
        for n in ns:
            ax.annotate(f"N={n}", (x(n, s["best_of"][n]), s["best_of"][n]["reward"][0]), textcoords="offset points",
                        xytext=(3, -10), fontsize=7)
        for i, (group, keys) in enumerate(families.items()):
            ax.errorbar([x(k, s["agents"][k]) for k in keys], [s["agents"][k]["reward"][0] for k in keys],
                        yerr=[s["agents"][k]["reward"][1] for k in keys], fmt="s--" if "resampled" in group else "o-",
                        color=plt.cm.tab20(i % 20), label=group)
        ax.axhline(s["base"]["reward"][0], color="grey", lw=0.8, ls=":", label="base sampling")
        if x_of == "compute":
            ax.set_xscale("log", base=2)
            ax.set_xlabel("LM forward tokens per generated token, × one base sample's")
        else:
            ax.set_xlabel("√(KL per response to the base LM, nats) — bounds for best-of-N and resampling")
        ax.set_ylabel("reward")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Every method against best-of-N on the demo task, {data['lm']} (mean ± SE over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_report(data: dict[str, Any], out: Path, name: str) -> str:
    """Write <name>.md and <name>.png under `out`; returns the markdown."""
    text = markdown(data)
    (out / f"{name}.md").write_text(text)
    plot(data, out / f"{name}.png")
    return text
