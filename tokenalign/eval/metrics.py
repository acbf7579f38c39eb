"""Summary statistics of one decoding mode's generations: the numbers the report and the trainer read.

Layout (every `{"mean", "se"}` is a mean and its standard error over prompts):

    {"mode", "n", "reward", "cost", "cost_success", "cost_threshold", "length", "perplexity", "scores",
     "distinct_1", "distinct_2", "lm_forward_tokens", "lm_forward_tokens_per_token", "decode_seconds",
     "seconds_per_token", "seed"}

plus, where the mode's distribution was measured while decoding, the KL to the base LM's sampling:
"kl_per_response" (Σ of the decisions' Bernoulli KLs to π_ref), "kl_per_token", "kl_per_response_sampled"
(Σ log π/q of the emitted tokens: the same expectation, noisier), "kl_per_response_exact" (the full sum
over candidates, with candidate_block 0); best-of-N carries its bound "kl_per_response_bound".
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tokenalign.eval.records import Generation

DEFAULT_COST_THRESHOLD = 0.5
"""A response is safe when cost ≤ this. safe-rlhf's arena uses 0 for beaver cost models (a signed
score); the demo's cost is alt-profanity-check's probability in [0, 1], never ≤ 0, so its decision
boundary 0.5 is the meaningful default. Pass 0 with safe-rlhf cost models."""


def best_of_kl_bound(n: int) -> float:
    """The KL of best-of-N's text to the base LM's is at most log N − (N−1)/N nats (Stiennon et al. 2020;
    Beirami et al. 2024 show it is tight for rare rewards)."""
    return float(np.log(n) - (n - 1) / n)


def mean_se(values: Sequence[float] | np.ndarray) -> dict[str, float]:
    """{"mean", "se"} of `values`; the standard error uses the unbiased std (0 for fewer than 2 values)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("mean_se needs at least one value")
    se = float(x.std(ddof=1) / np.sqrt(x.size)) if x.size > 1 else 0.0
    return {"mean": float(x.mean()), "se": se}


def distinct_n(token_lists: Sequence[Sequence[int]], n: int) -> float:
    """Distinct-n (Li et al., 2016) over a set of responses: unique n-grams / all n-grams (0 if none)."""
    grams = [tuple(tokens[i: i + n]) for tokens in token_lists for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def summarize(
    records: Sequence[Generation],
    *,
    mode: str,
    cost_threshold: float,
    forward_tokens: int,
    eos_token_id: int | None,
    seed: int,
) -> dict[str, Any]:
    """The summary of one mode's `records` (see the module docstring for the layout)."""
    if not records:
        raise ValueError(f"mode {mode!r} produced no generations to summarize")
    cost = np.array([r.cost for r in records])
    lengths = np.array([r.tokens for r in records])
    decode_seconds = float(sum(r.decode_s for r in records))
    # Diversity counts words the reader sees, so a closing EOS is not an n-gram.
    texts = [r.token_ids[:-1] if r.token_ids and r.token_ids[-1] == eos_token_id else r.token_ids for r in records]
    generated = int(lengths.sum())
    kl = {}
    measured = [r for r in records if r.kl is not None]
    if measured:
        kls = [r.kl for r in measured]
        kl = {"kl_per_response": mean_se(kls), "kl_per_token": float(np.sum(kls) / generated),
              "kl_per_response_sampled": mean_se([r.log_ratio for r in measured])}
        if all(r.exact_kl is not None for r in measured):
            kl["kl_per_response_exact"] = mean_se([r.exact_kl for r in measured])
    return {
        **kl,
        "mode": mode,
        "n": len(records),
        "reward": mean_se([r.final for r in records]),
        "cost": mean_se(cost),
        "cost_success": mean_se(cost <= cost_threshold),
        "cost_threshold": float(cost_threshold),
        "length": mean_se(lengths),
        "perplexity": mean_se([r.perplexity for r in records]),
        "scores": {name: mean_se([r.scores[name] for r in records]) for name in records[0].scores},
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "lm_forward_tokens": int(forward_tokens),
        "lm_forward_tokens_per_token": forward_tokens / generated,
        "decode_seconds": decode_seconds,
        "seconds_per_token": decode_seconds / generated,
        "seed": int(seed),
    }


def write_summary(path: str | Path, summaries: dict[str, dict[str, Any]]) -> Path:
    """Write mode → summary as JSON (the layout `tokenalign.eval.report` and the trainer read)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(summaries, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path
