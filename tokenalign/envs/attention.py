"""The engine's attention masks: which cached and fed slots each query sees, as the additive masks an HF forward
takes (one 4D mask, or one per layer type for LMs with sliding-window layers)."""
from __future__ import annotations

import torch


def attention_mask(allowed: torch.Tensor, query_pos: torch.Tensor, key_pos: torch.Tensor, *, dtype: torch.dtype,
                   sliding_window: int | None) -> torch.Tensor | dict[str, torch.Tensor]:
    """The forward's additive mask from `allowed` (B, Q, K) with the queries' and keys' positions: one 4D mask for
    every layer, or with `sliding_window` one per layer type, the sliding one also hiding keys `sliding_window` or
    more positions behind the query (as HF's sliding mask does)."""
    full = _additive(allowed, dtype)
    if sliding_window is None:
        return full
    near = (query_pos.unsqueeze(2) - key_pos.unsqueeze(1)) < sliding_window
    return {"full_attention": full, "sliding_attention": _additive(allowed & near, dtype)}


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, Q, K) additive attention mask: 0 where `allowed` (B, Q, K), the dtype's minimum elsewhere."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min).unsqueeze(1)
