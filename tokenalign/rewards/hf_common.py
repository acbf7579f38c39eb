"""What the Hugging Face scorer kinds share: local-only loading, device/dtype choice, batched scoring.

Only local directories are read (`local_files_only=True`): a scorer never reaches the hub, so a typo in
a path fails fast here instead of starting a download on a GPU node.
"""
from __future__ import annotations

import string
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from tokenalign.lm.loader import DTYPES
from tokenalign.rewards.base import ScorerError
from tokenalign.rewards.scorer_base import ScorerBase

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase



@dataclass(frozen=True)
class HFOptions:
    """Options every Hugging Face scorer kind takes."""

    template: str | None = None
    """Input text with {prompt} and {response}; unset = the kind's own ({response}, or beaver's template)."""
    batch_size: int = 16
    """Texts per forward; a memory knob, not an algorithm setting (MARA scores one at a time)."""
    device: str = "auto"
    """Torch device; auto = CUDA when present, else CPU."""
    dtype: str = "auto"
    """float32, float16 or bfloat16; auto = float16 on GPU (as MARA loads score models), float32 on CPU."""
    max_length: int | None = None
    """Truncate inputs to this many tokens; unset = no truncation (as MARA's beaver scoring)."""

    def hf_kwargs(self) -> dict[str, object]:
        """The keyword arguments of HFScorerBase these options set (template only when given)."""
        kwargs: dict[str, object] = dict(batch_size=self.batch_size, device=self.device, dtype=self.dtype,
                                         max_length=self.max_length)
        return kwargs if self.template is None else {**kwargs, "template": self.template}


def resolve_device(device: str) -> torch.device:
    """`auto` is the first CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ScorerError(f"scorer device {device!r} is not a torch device; use auto, cpu, cuda or cuda:N") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ScorerError(f"scorer device {device!r} asks for CUDA, which this machine lacks; use device=cpu or auto")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` is float16 on GPU (MARA loads its score models in fp16) and float32 on CPU."""
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ScorerError(f"scorer dtype {dtype!r} is unknown; use auto or one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def require_model_dir(path: str | Path | None, *, kind: str) -> Path:
    """The local model directory `path`, or a ScorerError saying what to pass instead."""
    if not path:
        raise ScorerError(f"scorer kind {kind!r} needs a path to a local model directory, e.g. '{kind}:/models/my-rm'")
    model_dir = Path(path).expanduser()
    if not (model_dir / "config.json").is_file():
        what = "does not exist" if not model_dir.exists() else "has no config.json"
        raise ScorerError(
            f"{kind} scorer path {str(model_dir)!r} {what}; point it at a local directory saved with save_pretrained "
            "(scorers never download from the hub)"
        )
    return model_dir


def check_template(template: str) -> str:
    """`template` if it formats from {prompt} and {response} and uses {response}; else a ScorerError."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as err:
        raise ScorerError(
            f"scorer template {template!r} is not a format string ({err}); write literal braces as {{{{ }}}}"
        ) from err
    unknown = fields - {"prompt", "response"}
    if unknown or "response" not in fields:
        raise ScorerError(
            f"scorer template {template!r} uses fields {sorted(fields)}; "
            "it must contain {response} and may contain {prompt}"
        )
    return template


def load_tokenizer(model_dir: Path) -> PreTrainedTokenizerBase:
    """The directory's tokenizer, right-padded, with a pad token (the EOS token when it has none)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ScorerError(
            f"cannot load a tokenizer from {str(model_dir)!r} ({err}); save one there with save_pretrained"
        ) from err
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ScorerError(
                f"the tokenizer in {str(model_dir)!r} has neither a pad nor an EOS token; add a pad token to it"
            )
        tokenizer.pad_token = tokenizer.eos_token
    # Real tokens first: end-of-sequence pooling and absolute position embeddings then see every
    # sequence exactly as they would unpadded, so batching cannot change a score.
    tokenizer.padding_side = "right"
    return tokenizer


class HFScorerBase(ScorerBase):
    """Formats texts from a template, tokenizes them in minibatches and calls `_forward` on each."""

    def __init__(
        self,
        *,
        name: str,
        kind: str,
        path: str | Path | None,
        template: str,
        batch_size: int,
        device: str,
        dtype: str,
        max_length: int | None,
    ) -> None:
        super().__init__(name=name)
        if batch_size < 1:
            raise ScorerError(f"scorer {name!r} batch_size must be at least 1, got {batch_size}")
        self.path = require_model_dir(path, kind=kind)
        self.template = check_template(template)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.batch_size = batch_size
        self.max_length = max_length
        self.tokenizer = load_tokenizer(self.path)

    @abstractmethod
    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Scores, shape (b,), of one right-padded minibatch."""

    def _score(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        texts = [self.template.format(prompt=p, response=r) for p, r in zip(prompts, responses)]
        # Minibatches of similar lengths pad little: score in length order, return in the callers' order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        texts = [texts[i] for i in order]
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[start : start + self.batch_size],
                padding=True,
                truncation=self.max_length is not None,
                max_length=self.max_length,
                return_tensors="pt",
            )
            with torch.inference_mode():
                scores = self._forward(batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device))
            chunks.append(scores.float().cpu())
        scores = np.empty(len(texts), dtype=np.float32)
        scores[order] = torch.cat(chunks).numpy()
        return scores
