"""Turn finished episodes and their scores into the buffer's Arrow decision records.

Nothing is concluded here: each decision row carries what the rollout observed (the behaviour
log-probability, π_ref's accept logit, the decision's log-ratio and KL to π_ref, MARA's shaping penalty)
and its episode's raw scores, baseline scores and preference weights. The learner's Objective
turns them into rewards and costs. Episodes the agent made no decision in are skipped: they hold
nothing to learn from.
"""
from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from tokenalign.buffers.layout import RecordLayout, make_record_batch
from tokenalign.envs.episode import Episode
from tokenalign.rewards.combine import CombinedScores


def new_episode_ids(n: int) -> np.ndarray:
    """Random 63-bit ids: unique across actors, machines and actor restarts without coordination."""
    return np.array([secrets.randbits(63) for _ in range(n)], dtype=np.int64)


def accepts_to_end(action: np.ndarray, done: np.ndarray) -> np.ndarray:
    """Accepts in [i, end of i's episode) for each decision i of whole episodes: postback's γ exponent."""
    action, done = np.asarray(action), np.asarray(done, dtype=bool)
    if not len(action):
        return np.zeros(0, np.int32)
    ends = np.flatnonzero(done)
    episode = np.concatenate(([0], np.cumsum(done[:-1]))).astype(np.int64)
    accepts_from = np.cumsum((action == 1)[::-1])[::-1]
    return (accepts_from - accepts_from[ends][episode]).astype(np.int32)


def next_in_episode(values: np.ndarray, done: np.ndarray) -> np.ndarray:
    """values[i + 1] for each decision i of whole episodes, 0 on each episode's last (the chain's next_state rule)."""
    shifted = np.zeros_like(values)
    shifted[:-1] = values[1:]
    shifted[np.asarray(done, dtype=bool)] = 0
    return shifted


def place_token_rewards(episode: Episode, per_token: np.ndarray) -> np.ndarray:
    """Each token's reward on the decision after which it was emitted, as (num_decisions,) float32.

    That is the token's own step-ending decision, or, for a token emitted without a decision (the last
    candidate left), the latest decision before it; tokens before the episode's first decision go to that
    first decision. So the rewards' sum is kept, and each lands where the agent's action caused it.
    """
    out = np.zeros(episode.num_decisions, np.float32)
    if episode.num_decisions:
        acted = np.searchsorted(episode.token_index, np.arange(len(per_token)), side="right") - 1
        np.add.at(out, np.maximum(acted, 0), np.asarray(per_token, np.float32))
    return out


def one_step_scores(episodes: Sequence[Episode], prompts: Sequence[str], *, tokenizer: Any,
                    score: Callable[[list[str], list[str]], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Candidate rows' one-step scores, concatenated over `episodes`: (rows, scorers) each scorer's raw score of
    the response so far plus the row's candidate, and of the response so far. `score(prompts, responses)` gives
    (scorers, n) raw scores (`RewardCombiner.raw_scores`); every distinct text is scored once."""
    texts: dict[tuple[int, tuple[int, ...]], int] = {}
    step_keys, prefix_keys = [], []
    for i, episode in enumerate(episodes):
        for t, token in zip(episode.token_index.tolist(), episode.token.tolist()):
            prefix = tuple(episode.response_tokens[:t])
            step_keys.append(texts.setdefault((i, (*prefix, token)), len(texts)))
            prefix_keys.append(texts.setdefault((i, prefix), len(texts)))
    if not texts:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    keys = list(texts)
    raw = score([prompts[i] for i, _ in keys], [tokenizer.decode(list(ids), skip_special_tokens=True) for _, ids in keys])
    raw = np.asarray(raw, np.float32).T
    return raw[step_keys], raw[prefix_keys]


def episodes_to_records(
    episodes: Sequence[Episode],
    scores: CombinedScores,
    *,
    layout: RecordLayout,
    prompt_ids: Sequence[int],
    policy_version: int,
    preference: np.ndarray | None = None,
    step_scores: np.ndarray | None = None,
    prefix_scores: np.ndarray | None = None,
) -> pa.RecordBatch | None:
    """One record batch with the decisions of every episode that has any, in episode order.

    `preference` holds each episode's weights w, shape (len(episodes), layout.preference_dim); the per-token
    rewards of token heads (`scores.token_reward`) are placed on decisions by `place_token_rewards`. Candidate
    rows carry `step_scores` and `prefix_scores` (`one_step_scores`, rows of every episode in order).
    """
    keep = [i for i, e in enumerate(episodes) if e.num_decisions > 0]
    if not keep:
        return None
    missing = [name for name in layout.scorers if name not in scores.raw]
    if missing:
        raise ValueError(f"the scores lack scorers {missing} of the buffer's layout {list(layout.scorers)}")
    lengths = np.array([episodes[i].num_decisions for i in keep])
    n = int(lengths.sum())
    done = np.zeros(n, dtype=bool)
    done[np.cumsum(lengths) - 1] = True
    action = np.concatenate([episodes[i].action for i in keep])
    emit = np.concatenate([episodes[i].emit for i in keep])
    base_logit = np.concatenate([episodes[i].base_logit for i in keep])

    def per_row(values: dict[str, np.ndarray]) -> np.ndarray:
        return np.repeat(np.stack([values[name][keep] for name in layout.scorers], axis=1), lengths, axis=0)

    if preference is None:
        preference = np.zeros((len(episodes), layout.preference_dim), np.float32)
    if layout.candidate_rows and (step_scores is None or prefix_scores is None or len(step_scores) != n):
        raise ValueError(f"candidate rows need one-step scores for each of their {n} rows; compute them with one_step_scores")
    return make_record_batch(
        layout=layout,
        episode_id=np.repeat(new_episode_ids(len(keep)), lengths),
        step=np.concatenate([np.arange(m) for m in lengths]),
        state=np.concatenate([episodes[i].state for i in keep]),
        action=action,
        done=done,
        logp=np.concatenate([episodes[i].logp for i in keep]),
        policy_version=np.full(n, policy_version),
        prompt_id=np.repeat(np.asarray(prompt_ids, dtype=np.int64)[keep], lengths),
        rank=np.concatenate([episodes[i].rank for i in keep]),
        emit=emit,
        base_logit=base_logit,
        next_base_logit=next_in_episode(base_logit, done),
        log_ratio=np.concatenate([episodes[i].log_ratio for i in keep]),
        decision_kl=np.concatenate([episodes[i].decision_kl for i in keep]),
        episode_decisions=np.repeat(lengths, lengths),
        mara_kl_penalty=np.concatenate([episodes[i].mara_kl_penalty for i in keep]),
        token_reward=(None if scores.token_reward is None else
                      np.concatenate([place_token_rewards(episodes[i], scores.token_reward[i]) for i in keep])),
        accepts_to_end=accepts_to_end(action, done),
        response_tokens=np.repeat([len(episodes[i].response_tokens) for i in keep], lengths),
        scores=per_row(scores.raw),
        baseline_scores=per_row(scores.baseline_raw),
        preference=np.repeat(np.asarray(preference, dtype=np.float32)[keep], lengths, axis=0),
        step_scores=step_scores,
        prefix_scores=prefix_scores,
    )
