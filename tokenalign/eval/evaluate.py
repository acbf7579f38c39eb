"""Decode held-out prompts in one mode, score every response, and summarise.

Modes:
    base        sampling with the LLM alone (the engine's top-k / top-p / temperature)
    greedy      the LLM's argmax at every step
    best-of-n   n samples per prompt, keep the one with the highest combined reward (MARA's BON baseline)
    sample      the agent as what it is, a text distribution: its actions sampled by the rollout actors' own
                decode loop (envs/rollout.py), labelled agent-sample; the default agent mode
    serial      the same loop with the agent's more probable action at each decision (MARA's serial mode)
    resample    n agent samples per prompt, one kept by self-normalised weights ∝ exp(R/β − ℓ) (eval/resample.py),
                labelled agent-resample-<n>; its KL is reported as the bound log n + E[ℓ]
    resample-best
                n agent samples per prompt, the highest reward kept: agent-best-of-<n>, the same bound
    top1, random, max_prob
                MARA's other proxy strategies with a greedy agent (tokenalign.eval.proxy), labelled agent-<strategy>

Every agent mode, training included, emits the last candidate of a step when all others are rejected
(tokenalign.envs.engine.DecodingEngine.settle).

Every random draw comes from one generator seeded with `seed`, so the same seed, prompts and batch size
give the same responses. Compute is measured as LM forward tokens (tokenalign.eval.forward_tokens).
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tokenalign.data.prompts import Prompt
from tokenalign.envs.engine import DecodingEngine
from tokenalign.envs.policies import AcceptPolicy, conditioned, on_device
from tokenalign.envs.rollout import generate_episodes
from tokenalign.envs.task import DecodingTask
from tokenalign.eval.errors import EvalError
from tokenalign.eval.forward_tokens import ForwardTokenCounter
from tokenalign.eval.metrics import DEFAULT_COST_THRESHOLD, best_of_kl_bound, summarize
from tokenalign.eval.perplexity import response_perplexity
from tokenalign.eval.proxy import STRATEGIES, proxy_decode
from tokenalign.eval.records import Generation
from tokenalign.eval.resample import importance_pick, resample_kl_bound
from tokenalign.eval.sampler import sample_responses

RESAMPLE_MODES: tuple[str, ...] = ("resample", "resample-best")
"""Agent modes that keep one of n agent samples per prompt."""
AGENT_MODES: tuple[str, ...] = ("sample", "serial", *RESAMPLE_MODES, *STRATEGIES)
MODES: tuple[str, ...] = ("base", "greedy", "best-of-n", *AGENT_MODES)
N_MODES: tuple[str, ...] = ("best-of-n", *RESAMPLE_MODES)
"""Modes that decode n samples per prompt and keep one."""
DEFAULT_BEST_OF = 10  # MARA eval_executor.py --N
AGENT_LOOP_MODES: tuple[str, ...] = ("sample", "serial", *RESAMPLE_MODES)
"""Agent modes decoded by the rollout actors' loop, which measures each response's KL to the base LM."""
Divergences = dict[str, float | None]
"""A response's log_ratio, kl and exact_kl (tokenalign.eval.records.Generation)."""
Decoder = Callable[[list[str]], tuple[list[list[int]], list[Divergences] | None]]
"""Texts → (generated token ids, each response's divergences from the base LM, or None where not measured)."""


@dataclass
class EvalResult:
    """One mode's per-prompt generations and their summary."""

    label: str
    """The mode's label: base, greedy, best-of-<n> or agent-<strategy>."""
    records: list[Generation]
    """One record per prompt, in prompt order."""
    summary: dict[str, Any]
    """Summary statistics (tokenalign.eval.metrics)."""


def mode_label(mode: str, n: int = DEFAULT_BEST_OF) -> str:
    """The name a mode goes by in files and summaries."""
    labels = {"best-of-n": f"best-of-{n}", "resample": f"agent-resample-{n}", "resample-best": f"agent-best-of-{n}"}
    if mode in labels:
        return labels[mode]
    return f"agent-{mode}" if mode in AGENT_MODES else mode


def evaluate(
    task: DecodingTask,
    mode: str,
    prompts: Sequence[Prompt],
    *,
    policy: AcceptPolicy | None = None,
    n: int = DEFAULT_BEST_OF,
    seed: int = 0,
    batch_size: int = 16,
    cost_threshold: float = DEFAULT_COST_THRESHOLD,
    preference: Sequence[float] | None = None,
    beta: float | None = None,
) -> EvalResult:
    """Decode `prompts` in `mode` with `task`'s LM and settings, score them with `task`'s reward.

    A preference-conditioned agent decodes with the weights `preference` (RiC: the user picks w). `beta` is the
    temperature of `resample`'s weights (None: the value-guided agent's own β).
    """
    _check_arguments(task, mode, prompts, policy=policy, n=n, batch_size=batch_size)
    if mode == "resample":
        beta = _resample_beta(policy, beta)
    engine = task.engine
    label = mode_label(mode, n)
    samples = n if mode in N_MODES else 1
    rows = [p for p in prompts for _ in range(samples)]
    generator = torch.Generator(device=engine.device).manual_seed(seed)
    decode = _decoder(task, mode, policy, generator, preference)

    token_ids: list[list[int]] = []
    divergences: list[Divergences] = []
    seconds = np.empty(len(rows))
    with ForwardTokenCounter(model=engine.model) as counter:
        for lo in range(0, len(rows), batch_size):
            chunk = rows[lo: lo + batch_size]
            start = time.perf_counter()
            ids, measured = decode([p.text for p in chunk])
            token_ids += ids
            divergences += measured if measured is not None and mode != "best-of-n" else [{}] * len(ids)
            seconds[lo: lo + len(chunk)] = (time.perf_counter() - start) / len(chunk)
    responses = [engine.tokenizer.decode(ids, skip_special_tokens=True) for ids in token_ids]
    scores = task.score(rows, responses)

    # Best-of-n keeps each prompt's highest final reward (the first on ties, as MARA's max scan); resample draws.
    final = scores.final.reshape(len(prompts), samples)
    if mode == "resample":
        log_ratio = np.array([d["log_ratio"] for d in divergences]).reshape(len(prompts), samples)
        pick = importance_pick(final, log_ratio, beta=beta, generator=generator)
    else:
        pick = final.argmax(axis=1)
    keep = pick + np.arange(len(prompts)) * samples
    if mode in RESAMPLE_MODES:  # the kept text is not π_a's: only its log-ratio (for the bound) describes it
        divergences = [{"log_ratio": d["log_ratio"]} for d in divergences]
    kept_ids = [token_ids[i] for i in keep]
    perplexity = response_perplexity(engine.model, engine.encode([p.text for p in prompts]), kept_ids,
                                      pad_token_id=engine.pad_token_id, batch_size=batch_size)
    decode_s = seconds.reshape(len(prompts), samples).sum(axis=1)
    records = [
        Generation(mode=label, prompt_id=p.id, prompt=p.text, response=responses[i], token_ids=kept_ids[j],
                   scores={name: float(raw[i]) for name, raw in scores.raw.items()}, final=float(scores.final[i]),
                   reward=float(scores.reward[i]), cost=float(scores.cost[i]), perplexity=float(perplexity[j]),
                   decode_s=float(decode_s[j]), **divergences[i])
        for j, (p, i) in enumerate(zip(prompts, keep.tolist()))
    ]
    summary = summarize(records, mode=label, cost_threshold=cost_threshold, forward_tokens=counter.total,
                        eos_token_id=engine.eos_token_id, seed=seed)
    if mode in AGENT_MODES:  # what the agent's compute (lm_forward_tokens_per_token) was spent on
        summary["candidate_state"] = engine.config.candidate_state
    if mode == "best-of-n":  # the analytic bound on best-of-N's KL to the base LM (Stiennon et al. 2020)
        summary["kl_per_response_bound"] = best_of_kl_bound(n)
    if mode in RESAMPLE_MODES:
        summary["kl_per_response_bound"] = resample_kl_bound(n, [r.log_ratio for r in records])
        summary["samples_per_prompt"] = n
        if mode == "resample":
            summary["resample_beta"] = beta
    return EvalResult(label=label, records=records, summary=summary)


def _decoder(task: DecodingTask, mode: str, policy: AcceptPolicy | None, generator: torch.Generator,
             preference: Sequence[float] | None) -> Decoder:
    engine = task.engine
    if mode in ("base", "best-of-n", "greedy"):
        def lm_alone(texts: list[str]) -> tuple[list[list[int]], list[Divergences] | None]:
            ids = sample_responses(engine, texts, greedy=mode == "greedy", generator=generator)
            exact = {"log_ratio": 0.0, "kl": 0.0, "exact_kl": 0.0}  # sampling q itself: log q/q = 0
            return ids, None if mode == "greedy" else [exact] * len(ids)

        return lm_alone
    try:
        agent = conditioned(on_device(policy, engine.device), preference)
    except ValueError as err:
        raise EvalError(str(err)) from None
    if mode in AGENT_LOOP_MODES:
        def agent_loop(texts: list[str]) -> tuple[list[list[int]], list[Divergences]]:
            episodes = generate_episodes(engine, agent, texts, generator=generator, greedy=mode == "serial")
            return ([e.response_tokens for e in episodes],
                    [{"log_ratio": float(e.log_ratio.astype(np.float64).sum()), "kl": e.kl, "exact_kl": e.exact_kl}
                     for e in episodes])

        return agent_loop
    # The all-candidate strategies need every candidate's state at each step; the LM is shared, not copied.
    engine = DecodingEngine(model=engine.model, tokenizer=engine.tokenizer,
                            config=dataclasses.replace(engine.config, candidate_block=0))
    return lambda texts: (proxy_decode(engine, agent.accept_logit, texts, strategy=mode, generator=generator), None)


def _resample_beta(policy: AcceptPolicy | None, beta: float | None) -> float:
    beta = getattr(policy, "beta", None) if beta is None else beta
    if beta is None or not beta > 0:
        raise EvalError(f"mode 'resample' keeps one of n draws by π_ref·exp(R/β)/π_agent: pass a β > 0 (eval --resample-beta)"
                        f" for an agent without one of its own (got {beta})")
    return float(beta)


def _check_arguments(task: DecodingTask, mode: str, prompts: Sequence[Prompt], *, policy: AcceptPolicy | None,
                     n: int, batch_size: int) -> None:
    if mode not in MODES:
        raise EvalError(f"unknown evaluation mode {mode!r}; choose from {', '.join(MODES)}")
    if not prompts:
        raise EvalError("no prompts to evaluate; pass a non-empty prompt set (e.g. load_prompts('builtin:demo-test'))")
    if n < 1 or batch_size < 1:
        raise EvalError(f"n (best-of) and batch_size must be >= 1, got n={n}, batch_size={batch_size}")
    if mode in AGENT_MODES:
        if policy is None:
            raise EvalError(f"mode {mode!r} decodes with an agent: pass policy= (e.g. load_agent(run_dir, ...))")
        agent_size = getattr(policy, "state_size", task.state_size)
        if agent_size != task.state_size:
            raise EvalError(
                f"agent input size {agent_size} does not match this engine's candidate states of size "
                f"{task.state_size}: the agent was trained on another LM or candidate_state; evaluate it with its "
                "run's config (lm.path, engine.candidate_state) or pass an agent trained for this one"
            )
