"""A reward the demo's defaults were never tuned on, as a user would write it (`python:long_words:score`):
the share of a response's words that have seven letters or more. Used by benchmarks/results/unseen_reward/."""
from __future__ import annotations

import re

WORD = re.compile(r"[A-Za-z]+")


def score(prompts: list[str], responses: list[str]) -> list[float]:
    """Per response, the fraction of its words with ≥ 7 letters (0 for a response without words)."""
    shares = []
    for response in responses:
        words = WORD.findall(response)
        shares.append(sum(len(w) >= 7 for w in words) / len(words) if words else 0.0)
    return shares
