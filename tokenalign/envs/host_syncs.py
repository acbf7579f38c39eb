"""Count the host reads of device values (device-to-host syncs on an accelerator) a piece of code makes.

On a GPU each read of a device value (`bool(t)`, `int(t)`, `.item()`, `.tolist()`, `nonzero`, boolean
indexing, `.cpu()`) waits for every queued kernel, so the decode loop's reads bound its speed. The same
reads happen on a CPU, where they cost nothing, so counting them there (a torch function mode sees
every tensor operation) checks the GPU path's discipline without a GPU.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

_READS = frozenset({"__bool__", "__int__", "__float__", "__index__", "item", "tolist", "nonzero", "cpu",
                    "masked_select", "unique"})


class HostSyncCounter(TorchFunctionMode):
    """Within `with HostSyncCounter() as syncs:`, `syncs.total` counts host reads, `syncs.by_op` per operation."""

    def __init__(self) -> None:
        super().__init__()
        self.by_op: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.by_op.values())

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = getattr(func, "__name__", "")
        if name in _READS or (name == "__getitem__" and _bool_index(args[1])):
            self.by_op[name] += 1
        return func(*args, **(kwargs or {}))


def _bool_index(index: Any) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts)
