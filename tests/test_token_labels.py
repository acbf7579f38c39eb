"""TLCR's token labels from a Levenshtein alignment, on pairs whose labels are derived by hand."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from tokenalign.data.token_labels import revision_labels


def labels(original: Sequence[int], revised: Sequence[int]) -> tuple[list[float], list[float]]:
    p_original, p_revised = revision_labels(original, revised)
    assert p_original.dtype == np.float32 and p_revised.dtype == np.float32
    assert p_original.shape == (len(original),) and p_revised.shape == (len(revised),)
    return p_original.tolist(), p_revised.tolist()


def test_an_unchanged_response_says_nothing_either_way():
    assert labels([3, 1, 4, 1, 5], [3, 1, 4, 1, 5]) == ([0.5] * 5, [0.5] * 5)


def test_a_replaced_token_is_negative_and_its_replacement_positive():
    assert labels([1, 2, 3, 4], [1, 2, 9, 4]) == ([0.5, 0.5, 0.0, 0.5], [0.5, 0.5, 1.0, 0.5])


def test_pure_insertion_and_pure_deletion():
    assert labels([1, 3], [1, 2, 3]) == ([0.5, 0.5], [0.5, 1.0, 0.5])
    assert labels([1, 2, 3], [1, 3]) == ([0.5, 0.0, 0.5], [0.5, 0.5])
    assert labels([1, 2], [1, 2, 7, 8]) == ([0.5, 0.5], [0.5, 0.5, 1.0, 1.0])


def test_empty_sides():
    assert labels([], [4, 5]) == ([], [1.0, 1.0])
    assert labels([4, 5], []) == ([0.0, 0.0], [])
    assert labels([], []) == ([], [])


def test_of_the_least_edit_alignments_the_one_keeping_most_tokens_wins():
    # [1, 2] → [2, 3] is 2 edits as two substitutions or as delete 1, keep 2, insert 3: the kept 2 is no edit.
    assert labels([1, 2], [2, 3]) == ([0.0, 0.5], [0.5, 1.0])
    # [2, 2, 0, 1, 2] → [0, 1, 1, 0, 2]: 4 edits at least, whether as 4 substitutions keeping the last 2 only,
    # or as deleting both leading 2s and inserting a 1 and a 0 while keeping 0, 1 and 2. The latter is taken;
    # which of the revision's two 1s is kept is the backtrace's tie (below): the second.
    assert labels([2, 2, 0, 1, 2], [0, 1, 1, 0, 2]) == ([0.0, 0.0, 0.5, 0.5, 0.5], [0.5, 1.0, 0.5, 1.0, 0.5])


def test_remaining_ties_go_to_deletion_then_insertion_from_the_ends():
    # [0, 1, 0] → [1, 0, 1]: delete the first 0 and append 1, or delete the last 0 and prepend 1 (2 edits,
    # no substitution either way). From the ends, deletion comes first: the original's last 0 is deleted.
    assert labels([0, 1, 0], [1, 0, 1]) == ([0.5, 0.5, 0.0], [1.0, 0.5, 0.5])
    # A repeat inserted next to its twin: the match is taken from the end, so the first of the two is new.
    assert labels([5, 7], [5, 7, 7]) == ([0.5, 0.5], [0.5, 1.0, 0.5])


def test_a_mixed_edit_and_array_inputs():
    # keep 10, replace 11 or 12 by 20 and delete the other, keep 13, append 21: 3 edits, one substitution.
    original, revised = np.array([10, 11, 12, 13]), np.array([10, 20, 13, 21])
    assert labels(original, revised) == ([0.5, 0.0, 0.0, 0.5], [0.5, 1.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="original must be a 1-D sequence of token ids, got shape \\(1, 2\\)"):
        revision_labels([[1, 2]], [1])
