"""BatchMemory: host memory that sampled states are written into, reused once the batch holding it is dropped.

A batch of 1024 states and successors at 4096-d is 16 MB. Freshly allocated, its pages fault on first write
(4096 faults of a few µs each), which costs more than the copy, and whether malloc hands back warm pages
depends on everything else the process allocated meanwhile. A learner drops each batch before it samples
the next, so a few blocks serve every batch. A block is lent as a numpy view, and lent again only once
that view is gone: every tensor made from it (and every slice of those) keeps it alive through their
shared storage, so nothing still referenced is ever overwritten.
"""
from __future__ import annotations

import weakref

import numpy as np
import torch

BLOCKS = 4  # a learner holds one batch, or two with a prefetch; a caller keeping more gets fresh memory for the rest
_NUMPY_DTYPES = {torch.float16: np.float16, torch.float32: np.float32}  # the state dtypes (buffer.state_dtype)


class BatchMemory:
    """A few reusable blocks of `width`-wide rows; see the module docstring."""

    def __init__(self, *, width: int) -> None:
        self.width = width
        self._blocks: list[tuple[np.ndarray, weakref.ref]] = []  # each block and the view it last lent

    def lend(self, rows: int, dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised (rows, width) tensor over a free block, or over a new one."""
        kind = np.dtype(_NUMPY_DTYPES[dtype])
        free = [i for i, (block, lent) in enumerate(self._blocks) if block.dtype == kind and len(block) >= rows
                and lent() is None]
        if free:
            block = self._blocks.pop(free[0])[0]
        else:
            # A shard's share of a batch varies from draw to draw: room to spare lets the next one fit.
            block = np.empty((rows + rows // 8, self.width), kind)
            self._blocks = self._blocks[-(BLOCKS - 1):]  # the least recently lent block is left to its holder
        view = block[:rows]
        self._blocks.append((block, weakref.ref(view)))
        return torch.from_numpy(view)

    def gather_pairs(
        self, source: torch.Tensor, positions: np.ndarray, successors: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows `positions` and rows `successors` of the (n, width) `source`, as two tensors in one block."""
        out = self.lend(2 * len(positions), source.dtype)
        state, next_state = out[: len(positions)], out[len(positions):]
        # index_select gathers rows faster than numpy's fancy indexing, and into memory we choose.
        torch.index_select(source, 0, torch.from_numpy(positions), out=state)
        torch.index_select(source, 0, torch.from_numpy(successors), out=next_state)
        return state, next_state
