"""The reward–KL frontier on the demo task: agents at several KL coefficients β against best-of-N sampling.

    python benchmarks/reward_kl.py           # 3 seeds × 4 β, 100 held-out prompts, best-of-N for N = 1 … 64
    python benchmarks/reward_kl.py --quick   # 1 seed, 2 β, 300 episodes, 20 prompts: a check that it runs

A reward number alone proves nothing: an agent can buy reward with text the base LM would never write.
So every point carries its KL per response to the base LM's sampling distribution q, and the text's
distinct-2 and base-LM perplexity, and it is compared with best-of-N (Stiennon et al. 2020's baseline) at
equal KL and at equal decode compute.

  * agents   one agent per (candidate-state mode, β, seed), trained with the demo's learner and reward for
             the same number of episodes, the KL to the base LM in its objective with weight β
             (learner.params.kl_coef); each decodes the held-out prompts, in its mode, as the text
             distribution it is (sampled actions). Its KL per response is measured while decoding (Σ of the
             decisions' Bernoulli KLs to π_ref). Lookahead agents see the LM's state of context + candidate
             (a forward token per candidate looked at), context agents what the step's forward gave.
  * value    with --value-betas, one value-guided head per seed (learner value_guided, context mode: Q_θ(s, c)
             regressed on every candidate's one-step reward and the response's return), decoded at each β of
             the list: π ∝ q·exp(Q_θ/β), β dialled at decode time with no retraining.
  * best-of-N a pool of 64 base samples per prompt and seed, scored once; best-of-N keeps the highest
             reward among the pool's first N. Its KL is at most log N − (N − 1)/N (the analytic bound,
             Stiennon et al. 2020; Beirami et al. 2024); the estimate log N + (N − 1)·log F̂(r*) uses the
             empirical CDF F̂ of the reward over the pool's other samples (N ≤ 32), which ties and
             high-probability responses pull below the bound.
  * compute  LM forward tokens per generated token (candidate states included for agents; N samples for
             best-of-N).

Reward and cost are plotted against √KL per response (Gao et al. 2022's axis), mean ± SE over seeds.
Results: benchmarks/results/reward_kl[_quick].{json,md,png}.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_runs import budget_overrides, command, held_out_task, machine, mean_se, parse_args, train  # noqa: E402

from tokenalign.eval.agent_source import load_agent  # noqa: E402
from tokenalign.eval.evaluate import evaluate  # noqa: E402
from tokenalign.eval.forward_tokens import ForwardTokenCounter  # noqa: E402
from tokenalign.eval.metrics import best_of_kl_bound, distinct_n  # noqa: E402
from tokenalign.eval.perplexity import response_perplexity  # noqa: E402
from tokenalign.eval.sampler import sample_responses  # noqa: E402

QUICK = {"seeds": 1, "betas": "0.05,0.3", "episodes": 300, "eval_prompts": 20, "pool": 16}
BEST_OF = (1, 2, 4, 8, 16, 32, 64)


@dataclass
class Args:
    """Reward–KL frontier settings."""

    seeds: int = 3
    """Seeds (0, 1, ...): each trains one agent per β and draws one best-of-N pool."""
    betas: str = "0.03,0.1,0.3,1.0"
    """Comma-separated KL coefficients β (learner.params.kl_coef), one agent each."""
    learner: str = "ppo"
    """Learner of every agent (the demo's)."""
    params: str = "{episodes_per_update: 32, actor_lr: 0.001, critic_lr: 0.001}"
    """learner.params of every agent (the demo's), kl_coef added per agent."""
    overrides: str = ""
    """Extra config overrides of every agent's training and of the evaluation engine, space-separated."""
    candidate_states: str = "lookahead,context"
    """Comma-separated candidate-state modes (engine.candidate_state): agents are trained in each (empty: none)."""
    value_betas: str = ""
    """Comma-separated β at which one value-guided head per seed decodes (empty: no value-guided agent)."""
    value_params: str = "{}"
    """learner.params of the value-guided head (learner value_guided)."""
    episodes: int = 2000
    """Episodes each agent is trained on (the equal training budget; one reward per episode is the signal)."""
    eval_prompts: int = 100
    """Held-out prompts every method decodes."""
    pool: int = 64
    """Base samples per prompt; best-of-N for every N in 1, 2, 4, … up to it."""
    eval_batch_size: int = 32
    """Sequences decoded together during evaluation."""
    quick: bool = False
    """1 seed, 2 β, 300 episodes, 20 prompts, N ≤ 16: writes reward_kl_quick.*."""
    render: str = ""
    """A results JSON of this script: write its markdown and plot again beside it, running nothing."""
    out_dir: str = "benchmarks/results"
    """Where the results go."""
    runs_dir: str = "runs/reward_kl"
    """Parent of the training runs' directories."""


def text_row(token_ids: list[list[int]], reward: np.ndarray, cost: np.ndarray, perplexity: np.ndarray,
             eos: int | None) -> dict[str, float]:
    texts = [t[:-1] if t and t[-1] == eos else t for t in token_ids]
    return {"reward": float(np.mean(reward)), "cost": float(np.mean(cost)), "distinct_2": distinct_n(texts, 2),
            "perplexity": float(np.mean(perplexity))}


def best_of_n_rows(task, *, seed: int, pool: int, batch_size: int) -> dict[str, dict[str, float]]:
    """Best-of-N for N = 1, 2, 4, … ≤ pool from one pool of base samples per prompt."""
    import torch

    engine, prompts = task.engine, task.prompts
    rows = [p for p in prompts for _ in range(pool)]
    generator = torch.Generator(device=engine.device).manual_seed(seed)
    ids: list[list[int]] = []
    with ForwardTokenCounter(model=engine.model) as counter:
        for lo in range(0, len(rows), batch_size):
            ids += sample_responses(engine, [p.text for p in rows[lo: lo + batch_size]], generator=generator)
    per_token = counter.total / sum(len(t) for t in ids)
    scores = task.score(rows, [engine.tokenizer.decode(t, skip_special_tokens=True) for t in ids])
    final = scores.final.reshape(len(prompts), pool)
    out = {}
    for n in (n for n in BEST_OF if n <= pool):
        pick = final[:, :n].argmax(axis=1) + np.arange(len(prompts)) * pool
        chosen = [ids[i] for i in pick]
        ppl = response_perplexity(engine.model, engine.encode([p.text for p in prompts]), chosen,
                                  pad_token_id=engine.pad_token_id, batch_size=batch_size)
        row = text_row(chosen, scores.final[pick], scores.cost[pick], ppl, engine.eos_token_id)
        row["kl_bound"] = best_of_kl_bound(n)
        if n <= pool // 2:
            rest = final[:, n:]  # the pool's other samples: an empirical CDF independent of the chosen one
            cdf = ((rest <= final.reshape(-1)[pick][:, None]).sum(axis=1) + 0.5) / (rest.shape[1] + 1)
            row["kl_estimate"] = float(np.mean(math.log(n) + (n - 1) * np.log(cdf)))
        row["forward_tokens_per_token"] = n * per_token
        out[str(n)] = row
    return out


def agent_row(task, policy, *, seed: int, batch_size: int) -> dict[str, Any]:
    result = evaluate(task, "sample", task.prompts, policy=policy, seed=seed, batch_size=batch_size)
    s = result.summary
    return {"reward": s["reward"]["mean"], "cost": s["cost"]["mean"], "distinct_2": s["distinct_2"],
            "perplexity": s["perplexity"]["mean"], "kl": s["kl_per_response"]["mean"],
            "kl_sampled": s["kl_per_response_sampled"]["mean"], "forward_tokens_per_token": s["lm_forward_tokens_per_token"],
            "sample": [r.response for r in result.records[:3]]}


def aggregate(values: list[dict[str, Any]]) -> dict[str, list[float]]:
    keys = [k for k, v in values[0].items() if isinstance(v, float)]
    return {k: list(mean_se([v[k] for v in values])) for k in keys}


def main() -> None:
    args = parse_args(Args, __doc__, QUICK)
    if args.render:
        path = Path(args.render)
        data = json.loads(path.read_text())
        recorded = {k: v for k, v in data["args"].items() if k in {f.name for f in fields(Args)}}
        data["command"] = command("reward_kl.py", Args(**recorded), QUICK)  # quoted for a shell
        path.with_suffix(".md").write_text(markdown(data))
        plot(data, path.with_suffix(".png"))
        return
    name = "reward_kl_quick" if args.quick else "reward_kl"
    betas = [float(b) for b in args.betas.split(",")]
    modes = [m for m in args.candidate_states.split(",") if m]
    value_betas = [float(b) for b in args.value_betas.split(",") if b]
    runs_dir = Path(args.runs_dir) / time.strftime("%Y%m%d-%H%M%S")
    # the agents' engine settings, one engine per candidate-state mode (base sampling is the same in each)
    tasks = {mode: held_out_task([*args.overrides.split(), f"engine.candidate_state={mode}"], args.eval_prompts)[1]
             for mode in {*modes, *(["context"] if value_betas else [])}}
    task = next(iter(tasks.values()))
    data: dict[str, Any] = {"command": command("reward_kl.py", args, QUICK), "args": asdict(args),
                            "machine": machine(), "seeds": []}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    for seed in range(args.seeds):
        row: dict[str, Any] = {"seed": seed, "agents": {}, "best_of": {}}
        base = evaluate(task, "base", task.prompts, seed=seed, batch_size=args.eval_batch_size).summary
        row["base"] = {"reward": base["reward"]["mean"], "cost": base["cost"]["mean"], "distinct_2": base["distinct_2"],
                       "perplexity": base["perplexity"]["mean"],
                       "forward_tokens_per_token": base["lm_forward_tokens_per_token"]}
        print(f"[{(time.monotonic() - start) / 60:5.1f} min] seed {seed}: best-of-N pool", flush=True)
        row["best_of"] = best_of_n_rows(task, seed=seed, pool=args.pool, batch_size=args.eval_batch_size)
        for mode in modes:
            for beta in betas:
                key = agent_key(mode, beta)
                print(f"[{(time.monotonic() - start) / 60:5.1f} min] seed {seed}: agent {key}", flush=True)
                run_dir, training = train([*budget_overrides(learner=args.learner, decisions=None, seed=seed,
                                                             runs_dir=runs_dir, name=f"{mode}-beta{beta}"),
                                           f"run.total_episodes={args.episodes}",
                                           f"learner.params={args.params}", f"learner.params.kl_coef={beta}",
                                           *args.overrides.split(), f"engine.candidate_state={mode}"])
                policy = load_agent(run_dir, state_size=tasks[mode].state_size)
                row["agents"][key] = {**agent_row(tasks[mode], policy, seed=seed, batch_size=args.eval_batch_size),
                                      "decisions": training["decisions"], "train_minutes": training["minutes"]}
        if value_betas:
            print(f"[{(time.monotonic() - start) / 60:5.1f} min] seed {seed}: value-guided head", flush=True)
            run_dir, training = train([*budget_overrides(learner="value_guided", decisions=None, seed=seed,
                                                         runs_dir=runs_dir, name="value"),
                                       f"run.total_episodes={args.episodes}", f"learner.params={args.value_params}",
                                       *args.overrides.split(), "engine.candidate_state=context"])
            head = load_agent(run_dir, state_size=tasks["context"].state_size)
            for beta in value_betas:
                head.beta = beta
                row["agents"][f"value β={beta}"] = {
                    **agent_row(tasks["context"], head, seed=seed, batch_size=args.eval_batch_size),
                    "decisions": training["decisions"], "train_minutes": training["minutes"]}
        data["seeds"].append(row)
        (out / f"{name}.json").write_text(json.dumps(data, indent=1))  # after each seed, so a stop keeps them
    data["summary"] = {
        "base": aggregate([s["base"] for s in data["seeds"]]),
        "agents": {k: aggregate([s["agents"][k] for s in data["seeds"]]) for k in data["seeds"][0]["agents"]},
        "best_of": {n: aggregate([s["best_of"][n] for s in data["seeds"]]) for n in data["seeds"][0]["best_of"]},
    }
    (out / f"{name}.json").write_text(json.dumps(data, indent=1))
    (out / f"{name}.md").write_text(markdown(data))
    plot(data, out / f"{name}.png")
    print(markdown(data))


def agent_key(mode: str, beta: float) -> str:
    """An agent's name in the results: its candidate-state mode and β."""
    return f"{mode} β={beta}"


def fmt(cell: list[float], digits: int = 3) -> str:
    return f"{cell[0]:.{digits}f} ± {cell[1]:.{digits}f}"


def markdown(data: dict[str, Any]) -> str:
    s, args = data["summary"], data["args"]
    kinds = [*([f"{args['learner']} agents"] if args["candidate_states"] else []),
             *(["a value-guided head"] if args.get("value_betas") else [])]
    lines = [f"# Reward–KL frontier on the demo task ({' and '.join(kinds)} vs best-of-N)", "",
             f"`{data['command']}` — {args['seeds']} seed(s), {args['eval_prompts']} held-out prompts, "
             f"{args['episodes']:,} training episodes per agent; mean ± SE over seeds. KL per response to the base "
             "LM's sampling distribution in nats (agents: measured while decoding; best-of-N: the analytic bound, "
             "and an estimate from the pool's empirical reward CDF). Compute: LM forward tokens per generated token, padding "
             "included; × base: against base sampling decoded in the same batches (agents), or against best-of-1 from the "
             "same pool (best-of-N), so batching does not enter the comparison."
             + (" The value-guided head decodes in context mode (candidate states from the step's one forward)."
                if args.get("value_betas") else ""),
             "", "| method | reward | cost | KL / response | √KL | distinct-2 | base-LM ppl | compute | × base |",
             "|---|---|---|---|---|---|---|---|---|"]
    b, relative = s["base"], relative_compute(s)
    lines.append(f"| base sampling | {fmt(b['reward'])} | {fmt(b['cost'])} | 0 | 0 | {fmt(b['distinct_2'])} | "
                 f"{fmt(b['perplexity'], 1)} | {b['forward_tokens_per_token'][0]:.2f} | 1 |")
    for key, a in s["agents"].items():
        lines.append(f"| agent {key} | {fmt(a['reward'])} | {fmt(a['cost'])} | {fmt(a['kl'], 2)} | "
                     f"{math.sqrt(max(a['kl'][0], 0)):.2f} | {fmt(a['distinct_2'])} | {fmt(a['perplexity'], 1)} | "
                     f"{a['forward_tokens_per_token'][0]:.2f} | {relative[key]:.2f} |")
    for n, r in s["best_of"].items():
        estimate = f" (est. {r['kl_estimate'][0]:.2f})" if "kl_estimate" in r else ""
        lines.append(f"| best-of-{n} | {fmt(r['reward'])} | {fmt(r['cost'])} | ≤ {r['kl_bound'][0]:.2f}{estimate} | "
                     f"{math.sqrt(r['kl_bound'][0]):.2f} | {fmt(r['distinct_2'])} | {fmt(r['perplexity'], 1)} | "
                     f"{r['forward_tokens_per_token'][0]:.2f} | {relative[n]:.2f} |")
    lines += ["", "## Agents against best-of-N", ""]
    lines += comparisons(s)
    return "\n".join(lines) + "\n"


def comparisons(s: dict[str, Any], relative: dict[str, float] | None = None) -> list[str]:
    """For each agent: best-of-N at its KL and at its decode compute (the largest N within each), and who wins.

    Best-of-N is only measured up to the pool size, so "at its KL" means the largest N whose bound is within
    the agent's KL: where the agent spends more KL than that, best-of-N could spend more too. `relative`: each row's
    compute × one base sample's (default: relative_compute). A reward win
    whose text loses a fifth of best-of-N's distinct-2 or more is a loss.
    """
    out, relative = [], relative or relative_compute(s)
    bon = {int(n): r for n, r in s["best_of"].items()}
    largest = max(bon)
    for key, a in s["agents"].items():
        kl = a["kl"][0]
        at_kl = max((n for n, r in bon.items() if r["kl_bound"][0] <= kl), default=1)
        at_compute = max((n for n in bon if relative[str(n)] <= relative[key] * (1 + 1e-6)), default=1)
        for label, n in (("at its KL", at_kl), ("at its compute", at_compute)):
            r = bon[n]
            gap = a["reward"][0] - r["reward"][0]
            se = math.hypot(a["reward"][1], r["reward"][1])
            verdict = "wins" if gap > 2 * se else "loses" if gap < -2 * se else "ties"
            degenerate = a["distinct_2"][0] < 0.8 * r["distinct_2"][0]
            if verdict == "wins" and degenerate:
                verdict = "wins on reward with degenerate text: a loss"
            note = ""
            if label == "at its KL" and n == largest and r["kl_bound"][0] < kl:
                note = f" (the agent spends {kl / r['kl_bound'][0]:.1f}× best-of-{n}'s KL bound; larger N were not measured)"
            out.append(f"- {key} {label}: best-of-{n}{note} — reward {a['reward'][0]:.3f} vs {r['reward'][0]:.3f} "
                       f"(Δ {gap:+.3f} ± {se:.3f}): the agent **{verdict}**; distinct-2 {a['distinct_2'][0]:.3f} vs "
                       f"{r['distinct_2'][0]:.3f}.")
    return out


def relative_compute(s: dict[str, Any]) -> dict[str, float]:
    """Each agent's and best-of-N's compute as a multiple of one base sample's, each measured as it was decoded:
    an agent against base sampling in the same batches, best-of-N against best-of-1 from the same pool."""
    base, one = s["base"]["forward_tokens_per_token"][0], s["best_of"]["1"]["forward_tokens_per_token"][0]
    return {**{k: a["forward_tokens_per_token"][0] / base for k, a in s["agents"].items()},
            **{n: r["forward_tokens_per_token"][0] / one for n, r in s["best_of"].items()}}


def plot(data: dict[str, Any], path: Path) -> None:
    """Reward and cost against √KL, and reward against compute (× one base sample's)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, relative = data["summary"], relative_compute(data["summary"])
    ns = sorted(s["best_of"], key=int)
    families = [m for m in data["args"]["candidate_states"].split(",") if m]
    families += ["value"] if data["args"].get("value_betas") else []
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    for ax, key, x_of in ((axes[0], "reward", "kl"), (axes[1], "cost", "kl"), (axes[2], "reward", "compute")):
        def x(name: str, row: dict[str, Any], bound: bool = False, x_of: str = x_of) -> float:
            if x_of == "compute":
                return relative[name]
            return math.sqrt(max(row["kl_bound" if bound else "kl"][0], 0))

        bx = [x(n, s["best_of"][n], bound=True) for n in ns]
        ax.errorbar(bx, [s["best_of"][n][key][0] for n in ns], yerr=[s["best_of"][n][key][1] for n in ns], fmt="^:",
                    color="C3", label="best-of-N" + (" (KL bound)" if x_of == "kl" else ""))
        for n, xi in zip(ns, bx):
            ax.annotate(f"N={n}", (xi, s["best_of"][n][key][0]), textcoords="offset points", xytext=(3, -10), fontsize=7)
        if x_of == "kl":
            est = [n for n in ns if "kl_estimate" in s["best_of"][n]]
            ax.plot([math.sqrt(max(s["best_of"][n]["kl_estimate"][0], 0)) for n in est],
                    [s["best_of"][n][key][0] for n in est], "^", mfc="none", color="C3", label="best-of-N (KL estimate)")
        for i, mode in enumerate(families):
            agents = {k: a for k, a in s["agents"].items() if k.startswith(f"{mode} ")}
            xerr = [a["kl"][1] / (2 * math.sqrt(max(a["kl"][0], 1e-9))) for a in agents.values()] if x_of == "kl" else None
            ax.errorbar([x(k, a) for k, a in agents.items()], [a[key][0] for a in agents.values()], xerr=xerr,
                        yerr=[a[key][1] for a in agents.values()], fmt="o-", color=f"C{i}",
                        label="value-guided (β at decode time)" if mode == "value" else
                        f"{data['args']['learner']} agents, {mode} (β)")
            for k, a in agents.items():
                ax.annotate(k.split(" ", 1)[1], (x(k, a), a[key][0]), textcoords="offset points", xytext=(3, 4), fontsize=7)
        ax.axhline(s["base"][key][0], color="grey", lw=0.8, ls="--", label="base sampling")
        if x_of == "compute":
            ax.set_xscale("log", base=2)
            ax.set_xlabel("LM forward tokens per token, × one base sample's")
        else:
            ax.set_xlabel("√(KL per response to the base LM, nats)")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Reward–KL and reward–compute frontiers on the demo task (mean ± SE over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
