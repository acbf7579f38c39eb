"""TLCR's token-level labels: which tokens of a response its revision removed, replaced or added.

TLCR (token-level continuous reward, Yoon et al. 2024) fits a 2-way token discriminator to responses and
their revisions. The two are aligned by a token-level Levenshtein alignment (unit costs for insertion,
deletion and substitution, 0 for a match); a token the revision deleted or replaced is negative
(p_pos = 0), a token it inserted or put in another's place is positive (p_pos = 1), and a token kept
as it was says nothing either way (p_pos = 0.5).

Several alignments can share the least number of edits. Of those, the one with the fewest
substitutions is taken: it keeps the most tokens as they were, so a token the revision kept is never
called replaced ([a, b] → [b, c] deletes a and inserts c around the kept b, p_pos [0, 0.5] and [0.5, 1],
rather than replacing both). The DP finds it exactly by costing a deletion or insertion K and a
substitution K + 1, with K above any possible number of substitutions: the least cost is then K times
the Levenshtein distance plus the fewest substitutions. Alignments still tied are told apart by the
backtrace, which walks from the ends of both sequences and takes the first least-cost step in the order
match or substitution, deletion, insertion ([x, y, x] → [y, x, y] deletes the last x and inserts the first
y; [x, y] → [x, y, y] marks the revision's first y as inserted).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def revision_labels(original: Sequence[int], revised: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(p_pos of each original token, p_pos of each revised token), float32 — soft targets for the 2-way
    discriminator."""
    a, b = _token_ids(original, "original"), _token_ids(revised, "revised")
    indel = len(a) + len(b) + 1  # K of the module docstring: above any number of substitutions
    substitution = np.where(a[:, None] != b[None, :], indel + 1, 0)
    cost, step = _costs(substitution, indel), substitution.tolist()
    p_original = np.full(len(a), 0.5, dtype=np.float32)
    p_revised = np.full(len(b), 0.5, dtype=np.float32)
    i, j = len(a), len(b)
    while i or j:  # ties: match or substitution, then deletion, then insertion (see the module docstring)
        if i and j and cost[i][j] == cost[i - 1][j - 1] + step[i - 1][j - 1]:
            if step[i - 1][j - 1]:
                p_original[i - 1], p_revised[j - 1] = 0.0, 1.0
            i, j = i - 1, j - 1
        elif i and cost[i][j] == cost[i - 1][j] + indel:
            p_original[i - 1] = 0.0
            i -= 1
        else:
            p_revised[j - 1] = 1.0
            j -= 1
    return p_original, p_revised


def _token_ids(tokens: Sequence[int], name: str) -> np.ndarray:
    ids = np.asarray(tokens)
    if ids.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of token ids, got shape {ids.shape}")
    return ids


def _costs(substitution: np.ndarray, indel: int) -> list[list[int]]:
    """The DP table of a and b: [i][j] is the least cost of aligning a[:i] with b[:j], a deletion or insertion
    costing `indel` and a[i] against b[j] costing substitution[i, j] (0 for a match)."""
    n, m = substitution.shape
    steps = np.arange(m + 1) * indel
    table = np.empty((n + 1, m + 1), dtype=np.int64)
    table[0] = steps
    for i in range(1, n + 1):
        above, row = table[i - 1], table[i]
        row[0] = i * indel
        np.minimum(above[1:] + indel, above[:-1] + substitution[i - 1], out=row[1:])
        # Insertions chain along the row, row[j] = min over k <= j of row[k] + (j - k)·indel: a running minimum.
        row[:] = np.minimum.accumulate(row - steps) + steps
    return table.tolist()
