"""The decoding engine's KV cache: preallocated slots written in place, so a token step copies no layer.

A transformers `DynamicCache` concatenates every layer's keys and values on each forward: a full copy
of the cache per token step, O(T²) over a response. The engine also crops its candidate slots after
every forward. `SlotCache` keeps each layer in a buffer with spare capacity (grown by doubling, so the
copies amortise to O(1) per slot): a forward writes its new slots in place and attention reads a view
of the filled prefix; a crop only moves the fill mark. It keeps every slot, like a full DynamicCache
(a rolling sliding-window cache would drop the slots the engine's masks and restarts index).
"""
from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer


class SlotLayer(DynamicLayer):
    """One layer's keys and values in a (B, heads, capacity, head_dim) buffer, filled up to `length`."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.length = 0
        self._keys: torch.Tensor | None = None
        self._values: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self._keys = key_states.new_empty(*key_states.shape[:2], 0, key_states.shape[3])
        self._values = value_states.new_empty(*value_states.shape[:2], 0, value_states.shape[3])
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self._keys.shape[-2]:
            self._grow(max(end, 2 * self._keys.shape[-2], 16))
        self._keys[:, :, self.length:end] = key_states
        self._values[:, :, self.length:end] = value_states
        self.length = end
        self._expose()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes the negative number of slots to remove, got {tokens_to_remove}")
        if self.is_initialized:
            self.length = max(0, self.length + tokens_to_remove)
            self._expose()

    def drop_front(self, slots: int) -> None:
        """Forget the first `slots` slots of every row (no row attends to them any more)."""
        if self.is_initialized and slots:
            self._keys, self._values = self._keys[:, :, slots:], self._values[:, :, slots:]
            self.length -= slots
            self._expose()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self._keys, self._values = self._keys[indices], self._values[indices]
            self._expose()

    def reset(self) -> None:
        self.length = 0
        self._keys = self._values = None
        super().reset()

    def _grow(self, capacity: int) -> None:
        shape = (*self._keys.shape[:2], capacity, self._keys.shape[3])
        keys, values = self._keys.new_empty(shape), self._values.new_empty(shape)
        keys[:, :, : self.length] = self._keys[:, :, : self.length]
        values[:, :, : self.length] = self._values[:, :, : self.length]
        self._keys, self._values = keys, values

    def _expose(self) -> None:
        self.keys = self._keys[:, :, : self.length]
        self.values = self._values[:, :, : self.length]


class SlotCache(DynamicCache):
    """A DynamicCache (what the models expect) whose layers are `SlotLayer`s."""

    def __init__(self) -> None:
        Cache.__init__(self, layer_class_to_replicate=SlotLayer)

    def drop_front(self, slots: int) -> None:
        for layer in self.layers:
            layer.drop_front(slots)
