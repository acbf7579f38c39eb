"""safe-rlhf ("beaver") score models as scorers: a transformer backbone plus a linear score head.

The checkpoint layout is beaver-7b-v1.0-reward / -cost's: safetensors holding the backbone under its
base-model prefix (`model.*` for Llama), `score_head.*` = Linear(hidden, score_dim, bias=score_bias),
and optionally the normalizer's `normalizer.mean` / `normalizer.var` buffers. The score is the head's
output at the last non-pad token ("end_scores"), dimension 0. Higher cost means less safe.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from tokenalign.rewards.base import ScorerError
from tokenalign.rewards.factory import ScorerConfig
from tokenalign.rewards.hf_common import HFOptions, HFScorerBase
from tokenalign.rewards.registry import SCORERS

if TYPE_CHECKING:
    from transformers import PretrainedConfig

BEAVER_TEMPLATE = "BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:{response}"
"""The input format beaver score models were trained on (safe-rlhf's PROMPT_BEGIN/USER/ASSISTANT)."""

# safe-rlhf's normalize function per config.score_type; the epsilon is its Normalizer's default.
_NORMALIZE_FUNCTION = {"reward": "affine", "cost": "scale", "critic": "identity"}
_NORMALIZE_EPS = 1e-8


@SCORERS.register("safe-rlhf-score", config=HFOptions)
class SafeRLHFScorer(HFScorerBase):
    """end_scores[:, 0] of a beaver-layout score model, from a local directory."""

    path_example: ClassVar[str | None] = "/models/beaver-7b-v1.0-cost"

    def __init__(
        self,
        *,
        path: str | Path,
        name: str | None = None,
        template: str = BEAVER_TEMPLATE,
        batch_size: int = 16,
        device: str = "auto",
        dtype: str = "auto",
        max_length: int | None = None,
    ) -> None:
        super().__init__(
            name=name or f"safe-rlhf-score:{Path(path).name}", kind="safe-rlhf-score", path=path, template=template,
            batch_size=batch_size, device=device, dtype=dtype, max_length=max_length,
        )
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(self.path, local_files_only=True)
        self.normalize_function = _NORMALIZE_FUNCTION.get(getattr(config, "score_type", "reward"))
        if self.normalize_function is None:
            raise ScorerError(f"{str(self.path)!r} config score_type must be one of {sorted(_NORMALIZE_FUNCTION)}")
        self.do_normalize = bool(getattr(config, "do_normalize", False))
        score_dim = int(getattr(config, "score_dim", 1))
        extra = _read_extra_tensors(self.path, prefixes=("score_head.", "normalizer."))
        self.norm_mean = _normalizer_stat(extra, config, "mean", default=0.0, score_dim=score_dim).to(self.device)
        self.norm_var = _normalizer_stat(extra, config, "var", default=1.0, score_dim=score_dim).to(self.device)
        # safe-rlhf before v0.0.2 (beaver-7b-v1.0's era) named score_bias `bias`; with neither, trust the weights.
        score_bias = getattr(config, "score_bias", getattr(config, "bias", "score_head.bias" in extra))
        self.score_head = nn.Linear(config.hidden_size, score_dim, bias=bool(score_bias))
        head_state = {k.removeprefix("score_head."): v for k, v in extra.items() if k.startswith("score_head.")}
        try:
            self.score_head.load_state_dict(head_state)
        except RuntimeError as err:
            raise ScorerError(
                f"{str(self.path)!r} has no score head matching its config (score_dim={score_dim}, "
                f"score_bias={self.score_head.bias is not None}): {err}. Is this a safe-rlhf score model?"
            ) from err
        self.score_head.to(device=self.device, dtype=self.dtype).requires_grad_(False)
        self.backbone = _load_backbone(self.path, config, self.dtype, self.device).eval().requires_grad_(False)

    @classmethod
    def from_config(cls, config: ScorerConfig) -> SafeRLHFScorer:
        return cls(path=config.path, name=config.resolved_name, **config.options.hf_kwargs())

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        last = attention_mask.shape[1] - 1 - attention_mask.flip(1).argmax(dim=1)
        end_hidden = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        end_scores = self.score_head(end_hidden).float()
        if self.do_normalize:
            end_scores = self._normalize(end_scores)
        return end_scores[:, 0]

    def _normalize(self, scores: torch.Tensor) -> torch.Tensor:
        std = self.norm_var.sqrt()
        if self.normalize_function == "affine":
            return (scores - self.norm_mean) / (std + _NORMALIZE_EPS)
        if self.normalize_function == "scale":
            return scores / (std + _NORMALIZE_EPS)
        return scores


def _load_backbone(model_dir: Path, config: PretrainedConfig, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """The AutoModel backbone for `config`, its weights read from the checkpoint's base-model prefix."""
    from transformers import AutoModel

    try:
        base_class = AutoModel._model_mapping[type(config)]
    except KeyError as err:
        raise ScorerError(
            f"{str(model_dir)!r} has model_type {config.model_type!r}, which has no AutoModel backbone"
        ) from err
    # The score head and normalizer are read by us, so the backbone should not report them as unexpected.
    backbone_class = type(
        base_class.__name__, (base_class,), {"_keys_to_ignore_on_load_unexpected": [r"^score_head\.", r"^normalizer\."]}
    )
    try:
        backbone, info = backbone_class.from_pretrained(
            model_dir, config=config, local_files_only=True, dtype=dtype, device_map=device, output_loading_info=True
        )
    except (OSError, ValueError) as err:
        raise ScorerError(f"cannot load the score model's backbone from {str(model_dir)!r} ({err})") from err
    if info["missing_keys"]:
        raise ScorerError(
            f"{str(model_dir)!r} lacks backbone weights {sorted(info['missing_keys'])[:5]}; a safe-rlhf score model "
            f"stores them under the {base_class.base_model_prefix!r} prefix next to score_head.*"
        )
    return backbone


def _read_extra_tensors(model_dir: Path, *, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The checkpoint tensors whose names start with one of `prefixes`, from single or sharded safetensors."""
    from safetensors import safe_open

    index_file = model_dir / "model.safetensors.index.json"
    if index_file.is_file():
        weight_map: dict[str, str] = json.loads(index_file.read_text())["weight_map"]
    elif (model_dir / "model.safetensors").is_file():
        with safe_open(model_dir / "model.safetensors", framework="pt") as f:
            weight_map = dict.fromkeys(f.keys(), "model.safetensors")
    else:
        raise ScorerError(
            f"{str(model_dir)!r} has no model.safetensors or model.safetensors.index.json; safe-rlhf-score reads "
            "safetensors only (convert .bin weights with save_pretrained(..., safe_serialization=True))"
        )
    tensors: dict[str, torch.Tensor] = {}
    wanted = sorted(k for k in weight_map if k.startswith(prefixes))
    for shard in sorted({weight_map[k] for k in wanted}):
        with safe_open(model_dir / shard, framework="pt") as f:
            tensors.update({k: f.get_tensor(k) for k in wanted if weight_map[k] == shard})
    return tensors


def _normalizer_stat(
    extra: dict[str, torch.Tensor], config: PretrainedConfig, stat: str, *, default: float, score_dim: int
) -> torch.Tensor:
    """The normalizer's saved buffer if the checkpoint has it, else the config's value, else `default`."""
    value = extra.get(f"normalizer.{stat}")
    if value is None:
        from_config = getattr(config, stat, None)
        value = torch.full((score_dim,), default) if from_config is None else torch.as_tensor(from_config)
    return value.float().reshape(score_dim)
