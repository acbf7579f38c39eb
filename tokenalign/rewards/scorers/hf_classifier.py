"""Any local `AutoModelForSequenceClassification` as a scorer: one label's logit or probability."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch

from tokenalign.rewards.base import ScorerError
from tokenalign.rewards.factory import ScorerConfig
from tokenalign.rewards.hf_common import HFOptions, HFScorerBase
from tokenalign.rewards.registry import SCORERS

Output = Literal["logit", "prob"]


@dataclass(frozen=True)
class HFClassifierOptions(HFOptions):
    """Options of the `hf-classifier` scorer."""

    label: int | str | None = None
    """The label (index or name) to read; may be unset only for single-output models."""
    output: Output = "logit"
    """The label's raw logit (as MARA reads reward models) or its probability."""


@SCORERS.register("hf-classifier", config=HFClassifierOptions)
class HFClassifierScorer(HFScorerBase):
    """Scores `template.format(prompt=..., response=...)` with a sequence classifier.

    `output="logit"` returns the chosen label's logit; `"prob"` its softmax probability over the labels
    (a sigmoid for single-logit and multi-label models, whose labels are not exclusive).
    """

    path_example: ClassVar[str | None] = "/models/sentiment"

    def __init__(
        self,
        *,
        path: str | Path,
        name: str | None = None,
        label: int | str | None = None,
        output: Output = "logit",
        template: str = "{response}",
        batch_size: int = 16,
        device: str = "auto",
        dtype: str = "auto",
        max_length: int | None = None,
    ) -> None:
        if output not in ("logit", "prob"):
            raise ScorerError(f"hf-classifier output {output!r} is unknown; use 'logit' or 'prob'")
        super().__init__(
            name=name or f"hf-classifier:{Path(path).name}", kind="hf-classifier", path=path, template=template,
            batch_size=batch_size, device=device, dtype=dtype, max_length=max_length,
        )
        from transformers import AutoModelForSequenceClassification

        try:
            model, info = AutoModelForSequenceClassification.from_pretrained(
                self.path, local_files_only=True, dtype=self.dtype, device_map=self.device, output_loading_info=True
            )
        except (OSError, ValueError) as err:
            raise ScorerError(f"cannot load a sequence classifier from {str(self.path)!r} ({err})") from err
        if info["missing_keys"]:
            raise ScorerError(
                f"{str(self.path)!r} lacks weights {sorted(info['missing_keys'])[:5]} of a sequence classifier; "
                "it would score with randomly initialised layers. Point hf-classifier at a trained classifier directory"
            )
        if model.config.pad_token_id is None:
            # Decoder classifiers pool at the last non-pad token and refuse batches without a pad id.
            model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model = model.eval().requires_grad_(False)
        self.label_index = resolve_label(label, id2label=dict(model.config.id2label), path=self.path)
        self.output = output
        self._sigmoid = model.config.num_labels == 1 or model.config.problem_type == "multi_label_classification"

    @classmethod
    def from_config(cls, config: ScorerConfig) -> HFClassifierScorer:
        options: HFClassifierOptions = config.options
        return cls(path=config.path, name=config.resolved_name, label=options.label, output=options.output,
                   **options.hf_kwargs())

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
        if self.output == "logit":
            return logits[:, self.label_index]
        probs = torch.sigmoid(logits) if self._sigmoid else torch.softmax(logits, dim=-1)
        return probs[:, self.label_index]


def resolve_label(label: int | str | None, *, id2label: dict[int, str], path: Path) -> int:
    """The logit index that `label` (an index, a label name, or None for single-output models) names."""
    labels = ", ".join(f"{i}={name}" for i, name in sorted(id2label.items()))
    if label is None:
        if len(id2label) == 1:
            return 0
        raise ScorerError(f"the classifier at {str(path)!r} has labels {labels}; choose one with label=<index or name>")
    if isinstance(label, str) and not label.lstrip("-").isdigit():
        for index, name in id2label.items():
            if name == label:
                return int(index)
        raise ScorerError(f"label {label!r} is not among the classifier's labels {labels} ({str(path)!r})")
    index = int(label)
    if not 0 <= index < len(id2label):
        raise ScorerError(f"label index {index} is out of range for the classifier's labels {labels} ({str(path)!r})")
    return index
