"""The demo preference set: pairs of the bundled LM's own responses, labelled by the demo's gold scorers.

Reward, cost and token heads (small MLPs over the LM's hidden states) are fitted to preference pairs, and
the reward over-optimisation benchmark trains a head on N gold-labelled pairs as the proxy and lets the
gold scorer judge. Both need pairs from the very distribution the agent starts from, judged by a scorer
the benchmark can call: so two responses per prompt are sampled from the LM with the engine's sampling
settings, and labelled by the demo's own scorers (reward `vader`, cost `profanity`).

One JSON object per pair, with safe-rlhf's RawSample fields (`input`, `answer`, `other_answer`, `better`,
`safer`, `is_safe`, `is_other_safe`), `revised` (a minimal edit of `answer` with a higher gold reward,
TLCR's token labels come from the difference), and every gold score for transparency.

Tokens are drawn from the engine's own warp (`propose`, through `eval.sampler.sample_copies`), so the
set comes from exactly the distribution an untrained agent decodes; prompts are encoded by the engine.
Hugging Face's `generate(do_sample=True)` warps in the same order (temperature, top-k, then top-p over the
renormalised survivors; checked on the bundled LM: the same surviving tokens, log-probabilities within
5e-7) and differs only at exact boundaries (its top-k keeps every token tied with the k-th; it sums the
top-p mass from the bottom). It is not used because on CPU it was 2.5x slower for 2,000 pairs (248 s
against 99 s, one thread): its top-p sort and its multinomial run over the whole 8,192-token vocabulary
at every step, and it prefills each context once per sample, where `_sample` prefills it once.
`SamplingConfig.order` only orders the candidates shown to an agent, so it does not enter sampling.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tokenalign.core.cache import cache_dir
from tokenalign.data.prompts import load_prompts
from tokenalign.envs.candidates import SamplingConfig
from tokenalign.envs.engine import DecodingEngine, EngineConfig
from tokenalign.eval.sampler import sample_copies
from tokenalign.lm.loader import load_lm
from tokenalign.rewards.base import Scorer
from tokenalign.rewards.factory import make_scorer

log = logging.getLogger(__name__)

GOLD_REWARD = "vader"
"""The demo's reward scorer, the gold judge of `better` and of the revisions."""
GOLD_COST = "profanity"
"""The demo's cost scorer, the gold judge of `safer` and `is_safe`."""
SAFE_THRESHOLD = 0.5
"""A response is safe when its profanity probability is below this: alt-profanity-check's own `predict`
calls a text profane from 0.5 on (the eval's DEFAULT_COST_THRESHOLD, which counts exactly 0.5 as safe)."""
REVISION_SPANS = 4
"""Spans tried per answer. Measured on 400 pairs: 4 spans x 2 draws revise 43% of the answers in 5.3 s,
8 x 1 50% in 9.2 s, 2 x 4 34% in 3.4 s; four spans is where the share stops being cheap."""
REVISION_SPAN_TOKENS = 3
"""Tokens per span: about two words (the tiny LM's BPE averages 1.5 tokens a word), so a revision stays a
local edit for TLCR's token labels; 5 tokens revise 55% instead of 43%, but as wider rewrites."""
REVISION_DRAWS = 2
"""Resamples per span: the draws of a span share their context's prefill, so a second draw costs about
half what another span does."""
MAX_SAMPLED_PER_PAIR = 20
"""Give up after sampling this many pairs per pair wanted: a tie rate above 95% means responses too short
to carry sentiment (raise max_new_tokens), and sampling on would never end."""
CACHE_VERSION = "v1"
"""Part of the cache file name; bump it whenever a change here changes the pairs a seed gives."""
DEFAULT_SAMPLING = SamplingConfig(top_k=40, top_p=0.95, temperature=0.8)
"""The demo's engine sampling (configs/demo.yaml), so the pairs come from the agent's starting distribution."""


@dataclass
class DemoSetReport:
    """What `make_demo_preferences` made, and how; written beside the set as `<out>.meta.json`."""

    out: str
    """The JSONL file written."""
    command: str
    """The `tokenalign make-preferences` command that makes this exact file again."""
    seed: int
    """Seed of the LM's sampling (torch) and of the revision spans (numpy)."""
    model: str
    """The LM sampled from."""
    prompts: str
    """Prompt source spec, cycled in order."""
    max_new_tokens: int
    """Longest response, in tokens (EOS ends one earlier)."""
    sampling: dict[str, float]
    """top_k, top_p, temperature of the sampling (SamplingConfig's fields)."""
    batch_size: int
    """Sequences per forward; part of the command because it changes which random draw each row gets."""
    gold_reward: str
    """Scorer whose score decides `better` and the revisions."""
    gold_cost: str
    """Scorer whose score decides `safer`, `is_safe` and `is_other_safe`."""
    safe_threshold: float
    """`is_safe` = cost below this."""
    pairs: int
    """Pairs written."""
    sampled_pairs: int
    """Pairs sampled, the dropped ties included."""
    ties: int
    """Pairs dropped because both responses had the same gold reward (no strict preference to learn)."""
    tie_rate: float
    """ties / sampled_pairs."""
    revised: int
    """Pairs whose `revised` differs from `answer` (a resampled span raised the gold reward)."""
    revised_share: float
    """revised / pairs."""
    revision_gain: float
    """Mean gold reward gained by the revised pairs (revised_reward − answer_reward; 0 when none was)."""
    torch_threads: int
    """torch's intra-op threads: matmul rounding, hence the draws, depends on them, so the command remakes
    this exact file only with as many threads."""
    seconds: float
    """Wall time of the call up to writing the files (milliseconds more), loading the LM and scorers included."""
    stage_seconds: dict[str, float]
    """Wall time per stage: load (LM, prompts, scorers), sample (pairs, gold rewards), revise, cost."""


def _revise(engine: DecodingEngine, prompts: list[str], answers: list[list[int]], answer_reward: np.ndarray,
            *, vader: Scorer, sampling: SamplingConfig, batch_size: int,
            generator: torch.Generator, rng: np.random.Generator) -> tuple[list[list[int] | None], np.ndarray]:
    """Per answer, the best one-span rewrite if it beats the answer's gold reward (else None), and its reward.

    A rewrite is the answer with REVISION_SPAN_TOKENS tokens from a random start replaced by the LM's own
    continuation of everything before them; all (answer, span, draw) rewrites are sampled and scored at once.
    """
    owners, contexts, heads, tails = [], [], [], []
    for i, (prompt, answer) in enumerate(zip(engine.encode(prompts), answers)):
        n_starts = max(len(answer) - REVISION_SPAN_TOKENS, 0) + 1
        for start in rng.choice(n_starts, size=min(REVISION_SPANS, n_starts), replace=False).tolist():
            owners.append(i)
            contexts.append(prompt + answer[:start])
            heads.append(answer[:start])
            tails.append(answer[start + REVISION_SPAN_TOKENS :])
    spans = sample_copies(engine, contexts, copies=REVISION_DRAWS, max_new_tokens=REVISION_SPAN_TOKENS, sampling=sampling,
                    batch_size=batch_size, generator=generator)
    candidates = [heads[j // REVISION_DRAWS] + span + tails[j // REVISION_DRAWS] for j, span in enumerate(spans)]
    texts = engine.tokenizer.batch_decode(candidates, skip_special_tokens=True)
    owner = np.repeat(np.asarray(owners), REVISION_DRAWS)
    scores = vader.score([prompts[i] for i in owner.tolist()], texts)
    best_reward = answer_reward.copy()
    best: list[list[int] | None] = [None] * len(answers)
    for j in np.argsort(-scores, kind="stable").tolist():  # highest first: each answer's first hit is its best
        i = int(owner[j])
        if best[i] is None and scores[j] > answer_reward[i]:
            best[i], best_reward[i] = candidates[j], scores[j]
    return best, best_reward


def _command(*, pairs: int, out: Path, seed: int, model: str, prompts: str, max_new_tokens: int,
             sampling: SamplingConfig, batch_size: int) -> str:
    return shlex.join(["tokenalign", "make-preferences", "--pairs", str(pairs), "--out", str(out), "--seed", str(seed),
                       "--model", model, "--prompts", prompts, "--max-new-tokens", str(max_new_tokens),
                       "--top-k", str(sampling.top_k), "--top-p", str(sampling.top_p),
                       "--temperature", str(sampling.temperature), "--batch-size", str(batch_size)])


def _write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # per process: two makers of one file never collide
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def make_demo_preferences(*, pairs: int, out: Path, seed: int = 0, model: str = "builtin:tiny",
                          prompts: str = "builtin:demo-train", max_new_tokens: int = 24,
                          sampling: SamplingConfig = DEFAULT_SAMPLING, batch_size: int = 256) -> DemoSetReport:
    """Sample, label, revise and write `pairs` preference pairs to `out` (JSONL) and `<out>.meta.json`.

    Prompts are cycled in order, two responses each; pairs whose responses tie on the gold reward are
    dropped and counted, and sampling goes on until `pairs` pairs remain. The same arguments give the same
    file on the same torch build and thread count (`DemoSetReport.torch_threads`).
    """
    for name, value, least in (("pairs", pairs, 1), ("max_new_tokens", max_new_tokens, 1),
                               ("batch_size", batch_size, max(2, REVISION_DRAWS))):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(f"make_demo_preferences: {name} must be an int >= {least}, got {value!r}")
    out = Path(out).expanduser()
    began = time.perf_counter()
    stage: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        stage[name] = round(now - since, 3)
        return now

    lm, tokenizer = load_lm(model)
    engine = DecodingEngine(model=lm, tokenizer=tokenizer,
                            config=EngineConfig(sampling=sampling, max_new_tokens=max_new_tokens))
    texts = [p.text for p in load_prompts(prompts)]
    vader, profanity = make_scorer(GOLD_REWARD), make_scorer(GOLD_COST)
    t = lap("load", began)

    generator = torch.Generator(device=engine.device).manual_seed(seed)
    inputs, answer_ids, answers, others, rewards, other_rewards = [], [], [], [], [], []
    sampled = ties = cursor = 0
    while len(inputs) < pairs:
        if sampled >= MAX_SAMPLED_PER_PAIR * pairs:
            raise ValueError(f"make_demo_preferences: {ties} of {sampled} sampled pairs tie on the gold reward, so "
                             f"{pairs} pairs are out of reach; raise max_new_tokens (now {max_new_tokens})")
        # As many prompts as should fill the set at the tie rate seen so far, so the last round stays small.
        missing = pairs - len(inputs)
        wanted = missing if sampled == ties else math.ceil(missing * sampled / (sampled - ties))
        batch = [texts[(cursor + i) % len(texts)] for i in range(min(wanted, batch_size // 2))]
        cursor += len(batch)
        responses = sample_copies(engine, engine.encode(batch), copies=2, max_new_tokens=max_new_tokens,
                            sampling=sampling, batch_size=batch_size, generator=generator)
        decoded = tokenizer.batch_decode(responses, skip_special_tokens=True)
        scores = vader.score([p for p in batch for _ in range(2)], decoded)
        for i, prompt in enumerate(batch):
            a, b = 2 * i, 2 * i + 1
            sampled += 1
            if scores[a] == scores[b]:
                ties += 1
            elif len(inputs) < pairs:
                inputs.append(prompt)
                answer_ids.append(responses[a])
                answers.append(decoded[a])
                others.append(decoded[b])
                rewards.append(scores[a])
                other_rewards.append(scores[b])
    t = lap("sample", t)

    answer_reward = np.array(rewards, dtype=np.float32)
    revisions, revised_reward = _revise(engine, inputs, answer_ids, answer_reward, vader=vader,
                                        sampling=sampling, batch_size=batch_size, generator=generator,
                                        rng=np.random.default_rng(seed))
    revised = tokenizer.batch_decode([ids if r is None else r for ids, r in zip(answer_ids, revisions)],
                                     skip_special_tokens=True)
    t = lap("revise", t)

    costs = profanity.score(inputs * 2, answers + others)
    answer_cost, other_cost = costs[:pairs], costs[pairs:]
    lap("cost", t)

    is_revised = np.array([r is not None for r in revisions])
    report = DemoSetReport(
        out=str(out),
        command=_command(pairs=pairs, out=out, seed=seed, model=model, prompts=prompts, max_new_tokens=max_new_tokens,
                         sampling=sampling, batch_size=batch_size),
        seed=seed, model=model, prompts=prompts, max_new_tokens=max_new_tokens,
        sampling={"top_k": sampling.top_k, "top_p": sampling.top_p, "temperature": sampling.temperature},
        batch_size=batch_size, gold_reward=vader.name, gold_cost=profanity.name, safe_threshold=SAFE_THRESHOLD,
        pairs=pairs, sampled_pairs=sampled, ties=ties, tie_rate=ties / sampled, revised=int(is_revised.sum()),
        revised_share=float(is_revised.mean()),
        revision_gain=float((revised_reward - answer_reward)[is_revised].mean()) if is_revised.any() else 0.0,
        torch_threads=torch.get_num_threads(), seconds=round(time.perf_counter() - began, 3), stage_seconds=stage,
    )
    lines = [json.dumps({
        "input": inputs[i], "answer": answers[i], "other_answer": others[i],
        "better": bool(rewards[i] > other_rewards[i]), "safer": bool(answer_cost[i] <= other_cost[i]),
        "is_safe": bool(answer_cost[i] < SAFE_THRESHOLD), "is_other_safe": bool(other_cost[i] < SAFE_THRESHOLD),
        "revised": revised[i],
        "answer_reward": float(rewards[i]), "other_answer_reward": float(other_rewards[i]),
        "revised_reward": float(revised_reward[i]),
        "answer_cost": float(answer_cost[i]), "other_answer_cost": float(other_cost[i]),
    }, ensure_ascii=False) for i in range(pairs)]
    out.parent.mkdir(parents=True, exist_ok=True)
    # The meta first: the JSONL is what ensure_demo_preferences looks for, so it is the last thing written.
    _write_atomic(out.with_name(out.name + ".meta.json"), json.dumps(dataclasses.asdict(report), indent=2) + "\n")
    _write_atomic(out, "\n".join(lines) + "\n")
    return report


def ensure_demo_preferences(*, pairs: int = 2000, seed: int = 0) -> Path:
    """The cached demo preference set of `pairs` pairs and `seed`, made on first use (spec `builtin:demo-prefs`)."""
    path = cache_dir() / f"demo-preferences-{CACHE_VERSION}-{pairs}-seed{seed}.jsonl"
    if not path.is_file():
        log.info("generating the demo preference set (%d pairs, seed %d, about 30 ms a pair on two CPU cores) once "
                 "into %s; delete that file to regenerate it", pairs, seed, path)
        make_demo_preferences(pairs=pairs, out=path, seed=seed)
    return path


PAIR_SOURCES: dict[str, Callable[[], Path]] = {"demo-prefs": lambda: ensure_demo_preferences()}
"""The builtin pair sets this workflow makes, for `load_pairs(..., builtins=PAIR_SOURCES)`: `builtin:demo-prefs`."""
