"""Compute cost as the LM sees it: token positions fed through the transformer body.

Counted with a forward pre-hook on `model.base_model`, which both the engine (candidate queries,
committed tokens) and plain sampling go through, so every decoding mode is measured the same way.
Padding positions count: the LM computes them, so they are part of what a mode costs at its batch size.
"""
from __future__ import annotations

from types import TracebackType
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel


class ForwardTokenCounter:
    """Context manager: `total` is the number of token positions the LM's body processed while active."""

    def __init__(self, *, model: PreTrainedModel) -> None:
        self.body: nn.Module = model.base_model
        self.total = 0
        self._handle: torch.utils.hooks.RemovableHandle | None = None

    def __enter__(self) -> ForwardTokenCounter:
        self._handle = self.body.register_forward_pre_hook(self._count, with_kwargs=True)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _count(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is not None:
            self.total += int(input_ids.numel())
        else:
            self.total += int(kwargs["inputs_embeds"].shape[:2].numel())
