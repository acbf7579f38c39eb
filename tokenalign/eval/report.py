"""End-of-run report of a training run: `write_report(run_dir)`.

Reads `run_dir/metrics.jsonl` (one JSON object per logging interval: time_s, episodes, updates,
rollout/reward, rollout/cost, learner/...) and `run_dir/summary.json` (mode → {"reward": {"mean", "se"},
"cost": {...}, "n", ...}, as tokenalign.eval.metrics writes it), and writes `report.md` with the
evaluation table, what it means, and the final learner metrics, plus `reward.png` and `cost.png`
(rollout reward and cost against episodes, raw and smoothed). Inputs are all read and checked before
anything is written, so a bad file costs nothing already there.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from tokenalign.eval.errors import EvalError  # noqa: E402
from tokenalign.eval.metrics import best_of_kl_bound  # noqa: E402

SMOOTHING = 0.6
"""Weight of the past in the plotted exponential moving average (TensorBoard's default slider)."""
REFERENCE = "base"
"""The mode every other mode is compared with: sampling with the LLM alone."""
BEST_OF = re.compile(r"best[-_]of[-_]\d+")
"""Labels of best-of-N modes (evaluate's best-of-4, or best_of_4)."""
_REQUIRED = ("time_s", "episodes", "updates")
BAR_BEST_OF, BAR_KL_OF, BAR_DISTINCT, BAR_PERPLEXITY, BAR_FORWARD_TOKENS = 4, 16, 0.9, 1.3, 3.0
"""What makes an agent worth training over best-of-N (the value-guided issue): best-of-4's reward beaten by
> 2 SE within best-of-16's KL bound, distinct-2 ≥ 0.9× and perplexity ≤ 1.3× base sampling's, ≤ 3 LM
forward tokens per generated token (best-of-4 spends ~5.5)."""


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The logged lines of a metrics.jsonl, each checked for the keys the report needs."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: `tokenalign train` writes it as the run goes; "
                                "pass the run directory of a run that logged at least once")
    lines = []
    for lineno, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except json.JSONDecodeError as err:
            raise EvalError(f"{path}:{lineno}: malformed JSON ({err.msg} at column {err.colno})") from None
        missing = [k for k in _REQUIRED if k not in line] if isinstance(line, dict) else list(_REQUIRED)
        if missing:
            raise EvalError(f"{path}:{lineno}: missing {missing}; every metrics line needs {list(_REQUIRED)}")
        lines.append(line)
    if not lines:
        raise EvalError(f"{path} is empty: the run has not logged yet")
    return lines


def read_summary(path: Path) -> dict[str, dict[str, Any]]:
    """mode → summary from summary.json; {} when the run was not evaluated."""
    if not path.is_file():
        return {}
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise EvalError(f"{path}: malformed JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(summary, dict) or not all(isinstance(s, dict) for s in summary.values()):
        raise EvalError(f"{path}: expected a JSON object of mode → summary; write it with tokenalign.eval")
    bad = [mode for mode, s in summary.items() if not {"reward", "cost", "n"} <= set(s)]
    if bad:
        raise EvalError(f"{path}: modes {bad} lack reward/cost/n; write it with tokenalign.eval (mode → summary)")
    return summary


def _mean_se(stat: Any, digits: int = 3) -> str:
    return f"{stat['mean']:.{digits}f} ± {stat['se']:.{digits}f}" if isinstance(stat, dict) else "—"


def _number(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) else "—"


def summary_markdown(summary: dict[str, dict[str, Any]]) -> str:
    """The evaluation summary as a markdown table, one row per mode (— where a mode lacks a statistic)."""
    header = ["mode", "n", "reward", "cost", "cost success", "KL / response", "length", "perplexity", "distinct-2",
              "LM tokens / token", "s / token"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for mode, s in summary.items():
        lines.append(" | ".join([
            f"| {mode}" + (f" ({s['candidate_state']})" if "candidate_state" in s else ""), str(s["n"]), _mean_se(s["reward"]), _mean_se(s["cost"]), _mean_se(s.get("cost_success")),
            _kl(s), _mean_se(s.get("length"), 1), _mean_se(s.get("perplexity"), 1), _number(s.get("distinct_2"), ".3f"),
            _number(s.get("lm_forward_tokens_per_token"), ".1f"), _number(s.get("seconds_per_token"), ".2e"),
        ]) + " |")
    return "\n".join(lines) + "\n"


def _kl(s: dict[str, Any]) -> str:
    """The mode's KL per response to the base LM: measured (mean ± SE), best-of-N's bound (≤), or —."""
    if isinstance(s.get("kl_per_response"), dict):
        return _mean_se(s["kl_per_response"], 2)
    return f"≤ {s['kl_per_response_bound']:.2f}" if isinstance(s.get("kl_per_response_bound"), float) else "—"


def _versus(stat: dict[str, float], ref: dict[str, float]) -> tuple[float, float]:
    """Difference of two means and its standard error (the two samples taken as independent)."""
    return stat["mean"] - ref["mean"], math.hypot(stat["se"], ref["se"])


def _compare(s: dict[str, Any], ref: dict[str, Any]) -> str:
    """How `s` fares against `ref` on reward and cost (beyond 2 SE = a difference), and at what compute."""
    parts = []
    for key, higher_is_better in (("reward", True), ("cost", False)):
        d, se = _versus(s[key], ref[key])
        if abs(d) <= 2 * se:
            parts.append(f"{key} indistinguishable ({d:+.3f} ± {se:.3f})")
        else:
            parts.append(f"{key} {'better' if (d > 0) == higher_is_better else 'worse'} by {abs(d):.3f} ± {se:.3f}")
    if isinstance(s.get("kl_per_response"), dict):
        parts.append(f"at KL {s['kl_per_response']['mean']:.2f} nats per response against {_kl(ref)}")
    compute = s.get("lm_forward_tokens_per_token"), ref.get("lm_forward_tokens_per_token")
    if all(isinstance(x, (int, float)) and x > 0 for x in compute):
        parts.append(f"at {compute[0] / compute[1]:.1f}× the LM forward tokens per generated token")
    return ", ".join(parts)


def _warnings(mode: str, s: dict[str, Any], ref: dict[str, Any]) -> list[str]:
    """Signs of reward hacking against the reference: collapsed diversity, or text the LM finds unlikely."""
    found = []
    if isinstance(s.get("distinct_2"), float) and isinstance(ref.get("distinct_2"), float) \
            and s["distinct_2"] < 0.5 * ref["distinct_2"]:
        found.append(f"**{mode}** repeats itself: distinct-2 {s['distinct_2']:.3f} vs {ref['distinct_2']:.3f} for "
                     f"{REFERENCE}; read its generations for a phrase the scorers over-reward.")
    if isinstance(s.get("perplexity"), dict) and isinstance(ref.get("perplexity"), dict) \
            and s["perplexity"]["mean"] > 2 * ref["perplexity"]["mean"]:
        found.append(f"**{mode}** writes text the base LM finds unlikely: perplexity {s['perplexity']['mean']:.1f} "
                     f"vs {ref['perplexity']['mean']:.1f} for {REFERENCE}; check it for reward hacking.")
    return found


def interpretation(summary: dict[str, dict[str, Any]]) -> list[str]:
    """Plain sentences: the best mode, each mode against base sampling (with signs of reward hacking), and
    each agent mode against best-of-N."""
    if not summary:
        return ["The run was not evaluated (no summary.json): run `tokenalign eval` on its directory."]
    best = max(summary, key=lambda m: summary[m]["reward"]["mean"])
    sentences = [f"Highest mean reward: **{best}** ({_mean_se(summary[best]['reward'])})."]
    if REFERENCE in summary:
        for mode, s in summary.items():
            if mode != REFERENCE:
                sentences += [f"**{mode}** vs {REFERENCE}: {_compare(s, summary[REFERENCE])}.",
                              *_warnings(mode, s, summary[REFERENCE])]
    best_of = [m for m in summary if BEST_OF.fullmatch(m)]
    agents = [m for m in summary if m.startswith("agent")]
    sentences += [f"**{agent}** vs {m}: {_compare(summary[agent], summary[m])}." for agent in agents for m in best_of]
    return sentences + [line for agent in agents if (line := the_bar(agent, summary))]


def the_bar(agent: str, summary: dict[str, dict[str, Any]]) -> str | None:
    """One sentence: each of the bar's comparisons (`BAR_*`) for `agent`, met or not; None without the base and
    best-of-4 rows it compares with, or without the agent's measured KL."""
    s, base = summary[agent], summary.get(REFERENCE)
    best = next((summary[m] for m in (f"best-of-{BAR_BEST_OF}", f"best_of_{BAR_BEST_OF}") if m in summary), None)
    if base is None or best is None or not isinstance(s.get("kl_per_response"), dict):
        return None
    d, se = _versus(s["reward"], best["reward"])
    kl, kl_bound = s["kl_per_response"]["mean"], best_of_kl_bound(BAR_KL_OF)
    checks = [(d > 2 * se, f"reward {d:+.3f} over best-of-{BAR_BEST_OF}'s (2 SE = {2 * se:.3f})"),
              (kl <= kl_bound, f"KL {kl:.2f} nats per response (best-of-{BAR_KL_OF}'s bound {kl_bound:.2f})")]
    for key, limit, better in (("distinct_2", BAR_DISTINCT, "≥"), ("perplexity", BAR_PERPLEXITY, "≤")):
        mine, ref = (x[key]["mean"] if isinstance(x.get(key), dict) else x.get(key) for x in (s, base))
        if isinstance(mine, float) and isinstance(ref, float) and ref > 0:
            ratio = mine / ref
            checks.append((ratio >= limit if better == "≥" else ratio <= limit,
                           f"{key.replace('_', '-')} {ratio:.2f}× base sampling's (bar {better} {limit})"))
    tokens = s.get("lm_forward_tokens_per_token")
    if isinstance(tokens, (int, float)):
        checks.append((tokens <= BAR_FORWARD_TOKENS, f"{tokens:.1f} LM forward tokens per token (bar ≤ {BAR_FORWARD_TOKENS:g})"))
    verdict = "clears" if all(ok for ok, _ in checks) else "does not clear"
    return (f"**{agent}** {verdict} the bar for training over best-of-N: "
            + "; ".join(f"{text} {'✓' if ok else '✗'}" for ok, text in checks) + ".")


def _rollout_curve(lines: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(episodes, values) of `rollout/<key>`, one point per rollout: learner lines repeat the last rollout's
    numbers at the same episode count, and lines before the first rollout have none."""
    points: dict[float, float] = {}
    for line in lines:
        value = line.get(f"rollout/{key}")
        if value is not None and line["episodes"] not in points:
            points[line["episodes"]] = value
    return np.array(list(points), dtype=np.float64), np.array(list(points.values()), dtype=np.float64)


def _ema(values: np.ndarray, weight: float) -> np.ndarray:
    """Debiased exponential moving average (TensorBoard's smoothing)."""
    out, acc = np.empty_like(values), 0.0
    for i, v in enumerate(values):
        acc = weight * acc + (1 - weight) * v
        out[i] = acc / (1 - weight ** (i + 1))
    return out


def plot_curve(lines: list[dict[str, Any]], key: str, path: Path, *, summary: dict[str, dict[str, Any]],
               title: str) -> None:
    """Rollout `key` ("reward" or "cost") against episodes, raw and smoothed, with evaluation levels dashed."""
    episodes, values = _rollout_curve(lines, key)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot(episodes, values, color="tab:blue", alpha=0.3, linewidth=1, label="rollout (per log interval)")
    ax.plot(episodes, _ema(values, SMOOTHING), color="tab:blue", linewidth=2, label=f"smoothed (EMA {SMOOTHING})")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"][1:]
    for (mode, s), color in zip(summary.items(), colors * 4):
        ax.axhline(s[key]["mean"], color=color, linestyle="--", linewidth=1, label=f"held-out eval: {mode}")
    ax.set(xlabel="episodes", ylabel=f"mean {key} per episode", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def _learner_table(lines: list[dict[str, Any]]) -> list[str]:
    """Each learner/... key's last logged value (learners log only when they update), as markdown rows."""
    final: dict[str, Any] = {}
    for line in lines:
        final.update({k: v for k, v in line.items() if k.startswith("learner/") and v is not None})
    if not final:
        return ["No learner metrics were logged."]
    rows = [f"| {k} | {v:.6g} |" if isinstance(v, (int, float)) else f"| {k} | {v} |" for k, v in sorted(final.items())]
    return ["| metric | value |", "|---|---|", *rows]


def _training_paragraph(lines: list[dict[str, Any]]) -> str:
    last = lines[-1]
    text = (f"{last['episodes']} episodes and {last['updates']} learner updates in {last['time_s']:.0f} s "
            f"({last['episodes'] / max(last['time_s'], 1e-9):.2f} episodes/s).")
    smoothed = _ema(_rollout_curve(lines, "reward")[1], SMOOTHING)
    if smoothed.size:
        text += f" Smoothed rollout reward went from {smoothed[0]:.3f} to {smoothed[-1]:.3f}."
    else:
        text += " No rollout reward was logged."
    return text


def write_report(run_dir: Path) -> None:
    """Write report.md, reward.png and cost.png into `run_dir` from its metrics.jsonl and summary.json."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {str(run_dir)!r} does not exist; pass the directory a "
                                "`tokenalign train` run wrote (runs/<name>-<time>)")
    lines = read_metrics(run_dir / "metrics.jsonl")
    summary = read_summary(run_dir / "summary.json")
    plot_curve(lines, "reward", run_dir / "reward.png", summary=summary, title=f"{run_dir.name}: rollout reward")
    plot_curve(lines, "cost", run_dir / "cost.png", summary=summary, title=f"{run_dir.name}: rollout cost")
    text = [
        f"# Run report: {run_dir.name}", "",
        "## Training", "", _training_paragraph(lines), "",
        "![rollout reward](reward.png)", "", "![rollout cost](cost.png)", "",
        "## Evaluation on held-out prompts", "",
        "Reward is the combined reward (MARA's final); cost success is P(cost ≤ threshold); perplexity is the "
        "base LM's, of the response given the prompt (reward rising with perplexity signals reward hacking); "
        "LM tokens / token is the LM compute per generated token. ± is one standard error.", "",
        *([summary_markdown(summary)] if summary else []), *(f"- {x}" for x in interpretation(summary)), "",
        "## Final learner metrics", "", *_learner_table(lines),
    ]
    tmp = run_dir / "report.md.tmp"
    tmp.write_text("\n".join(text) + "\n", encoding="utf-8")
    tmp.replace(run_dir / "report.md")
