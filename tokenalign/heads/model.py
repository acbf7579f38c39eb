"""A score head: a small MLP over a frozen LM's last hidden states, saved as safetensors plus head.json.

The head never sees text, only the states of the LM it was fitted on, so it is only meaningful on that
LM: head.json names the LM (its path as given and a fingerprint of its weights) and its hidden size,
and `load_head` refuses any other LM with one message saying which LM the head reads.

Kinds:
    reward  one score per response, the state at its last token (Bradley–Terry)
    cost    one score per response, the state at its last token (safe-rlhf's cost model: > 0 = unsafe)
    token   a 2-way discriminator per response token, from the state after that token (TLCR)
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from tokenalign.agents.mlp import check_widths, mlp
from tokenalign.heads.states import Pooling

HeadKind = Literal["reward", "cost", "token"]
HEAD_KINDS: tuple[str, ...] = ("reward", "cost", "token")
HEAD_FILE, CONFIG_FILE = "head.safetensors", "head.json"
FORMAT = "tokenalign-head-1"


class HeadError(ValueError):
    """A head cannot be saved, loaded or used with the LM it was given; the message says which LM it reads."""


@dataclass(frozen=True)
class HeadConfig:
    """What head.json records: the head's kind and shape, and the LM whose states it reads."""

    kind: HeadKind
    """reward, cost or token."""
    lm: str
    """The LM the head was fitted on, as given (`builtin:tiny` or a local directory)."""
    lm_fingerprint: str
    """Digest of that LM's weights (`lm_fingerprint`): the same path holding another model is refused."""
    hidden_size: int
    """The LM's hidden size, the head's input width."""
    widths: tuple[int, ...] = (256,)
    """Hidden widths of the MLP."""
    pooling: Pooling = "last"
    """Reward and cost heads: read the state after the response's last token, or the mean of its tokens' states."""
    format: str = FORMAT
    """Layout version of head.json and head.safetensors."""

    @property
    def out_features(self) -> int:
        """1 score for reward and cost heads; TLCR's 2-way (negative, positive) logits for token heads."""
        return 2 if self.kind == "token" else 1


class ScoreHead(nn.Module):
    """LayerNorm over the LM state (scales differ between LMs and layers), then an MLP."""

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        if config.kind not in HEAD_KINDS:
            raise HeadError(f"head kind {config.kind!r} is unknown; use one of {', '.join(HEAD_KINDS)}")
        if config.pooling not in ("last", "mean"):
            raise HeadError(f"head pooling {config.pooling!r} is unknown; use 'last' or 'mean'")
        self.config = config
        self.norm = nn.LayerNorm(config.hidden_size)
        self.mlp = mlp(config.hidden_size, check_widths(config.widths, owner="head"), config.out_features)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """(..., H) states → (...,) scores, or (..., 2) token logits."""
        out = self.mlp(self.norm(states.to(self.norm.weight.dtype)))
        return out if self.config.kind == "token" else out.squeeze(-1)

    def token_reward(self, states: torch.Tensor, *, clip: float = 5.0) -> torch.Tensor:
        """TLCR's per-token reward r_t = 2·p_t(positive) − 1, clipped to ±`clip` (TLCR's ±5)."""
        p_pos = torch.softmax(self(states).float(), dim=-1)[..., 1]
        return (2 * p_pos - 1).clamp(-clip, clip)


def lm_fingerprint(model: nn.Module) -> str:
    """A short digest of an LM's parameter names, shapes and a sample of its values (cheap for a 7B: ≤ 64 KiB read)."""
    digest = hashlib.blake2b(digest_size=8)
    params = list(model.named_parameters())
    for name, param in params:
        digest.update(f"{name}:{tuple(param.shape)};".encode())
    for _, param in (params[0], params[-1]):
        digest.update(param.detach().flatten()[:4096].float().cpu().numpy().tobytes())
    return digest.hexdigest()


def save_head(head: ScoreHead, directory: str | Path) -> Path:
    """Write head.safetensors and head.json into `directory` (created); returns it."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}, str(directory / HEAD_FILE))
    (directory / CONFIG_FILE).write_text(json.dumps(asdict(head.config), indent=2) + "\n")
    return directory


def read_head_config(directory: str | Path) -> HeadConfig:
    """head.json of a saved head, or one HeadError saying what the path lacks."""
    directory = Path(directory).expanduser()
    config_file = directory / CONFIG_FILE
    if not config_file.is_file() or not (directory / HEAD_FILE).is_file():
        raise HeadError(f"{str(directory)!r} is not a saved head (it needs {CONFIG_FILE} and {HEAD_FILE}); "
                        "make one with `tokenalign fit-scorer`")
    try:
        data = json.loads(config_file.read_text())
        data["widths"] = tuple(data["widths"])
        config = HeadConfig(**data)
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise HeadError(f"{config_file} is not a head config ({err}); fit the head again") from None
    if config.format != FORMAT:
        raise HeadError(f"{config_file} has format {config.format!r}, this tokenalign reads {FORMAT!r}; fit the head again")
    return config


def load_head(directory: str | Path, *, lm: nn.Module, lm_name: str) -> ScoreHead:
    """The head saved in `directory`, checked to read `lm` (named `lm_name` in messages); eval mode, no gradients."""
    from safetensors.torch import load_file

    config = read_head_config(directory)
    hidden = int(lm.config.hidden_size)
    if hidden != config.hidden_size or lm_fingerprint(lm) != config.lm_fingerprint:
        what = (f"hidden size {hidden}, the head's is {config.hidden_size}" if hidden != config.hidden_size
                else "other weights than the head was fitted on")
        raise HeadError(f"the head in {str(directory)!r} reads the states of {config.lm!r}, but {lm_name!r} has {what}; "
                        f"score with lm.path={config.lm} or fit a head on {lm_name!r}")
    head = ScoreHead(config)
    head.load_state_dict(load_file(str(Path(directory).expanduser() / HEAD_FILE)))
    return head.eval().requires_grad_(False)
