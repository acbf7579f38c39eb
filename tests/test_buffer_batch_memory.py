"""BatchMemory: gathered rows land in reused blocks, and a block still referenced is never lent again."""
from __future__ import annotations

import numpy as np
import torch

from tokenalign.buffers.batch_memory import BLOCKS, BatchMemory

SOURCE = torch.arange(40, dtype=torch.float16).view(10, 4)


def test_rows_and_successors_are_gathered() -> None:
    state, next_state = BatchMemory(width=4).gather_pairs(SOURCE, np.array([1, 7]), np.array([2, 9]))
    assert torch.equal(state, SOURCE[[1, 7]]) and torch.equal(next_state, SOURCE[[2, 9]])


def test_a_dropped_batch_block_is_reused_and_a_held_one_never() -> None:
    memory = BatchMemory(width=4)
    first, _ = memory.gather_pairs(SOURCE, np.array([1, 2]), np.array([3, 4]))
    kept = first[:1]  # a view keeps the block referenced
    address = first.data_ptr()
    del first, _
    second, _ = memory.gather_pairs(SOURCE, np.array([5, 6]), np.array([7, 8]))
    assert second.data_ptr() != address and torch.equal(kept, SOURCE[[1]])
    del kept
    third, _ = memory.gather_pairs(SOURCE, np.array([0]), np.array([9]))
    assert third.data_ptr() == address  # the first block, free again, serves a smaller batch


def test_callers_that_keep_every_batch_get_fresh_memory_and_the_pool_stays_bounded() -> None:
    memory = BatchMemory(width=4)
    kept = [memory.gather_pairs(SOURCE, np.array([i]), np.array([i + 1])) for i in range(BLOCKS + 3)]
    assert len({state.data_ptr() for state, _ in kept}) == BLOCKS + 3
    assert len(memory._blocks) == BLOCKS
    assert all(torch.equal(state, SOURCE[[i]]) for i, (state, _) in enumerate(kept))
