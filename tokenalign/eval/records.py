"""One evaluated response per prompt, and its JSONL form (the generations file the arena compares)."""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

from tokenalign.eval.errors import EvalError


@dataclass
class Generation:
    """The response a decoding mode gave to one prompt, with its scores and what it cost."""

    mode: str
    """Label of the decoding mode (base, greedy, best-of-4, agent-sample, agent-serial, ...)."""
    prompt_id: int
    """Stable prompt id (tokenalign.data.prompts.prompt_id): how the arena matches two files."""
    prompt: str
    """The prompt text."""
    response: str
    """The decoded response (special tokens removed)."""
    token_ids: list[int]
    """The generated token ids, EOS included when the response ended with it."""
    scores: dict[str, float]
    """Each scorer's raw score, by scorer name."""
    final: float
    """MARA's combined reward (every scorer weighted, minus the baseline): the `reward` of summaries."""
    reward: float
    """The reward-role part of the combined reward (what Lagrangian learners maximise)."""
    cost: float
    """Sum of the cost-role raw scores (higher = less safe)."""
    perplexity: float
    """The base LM's perplexity of the response given the prompt (temperature 1, no top-k/top-p)."""
    decode_s: float
    """Decoding wall time spent on this prompt (its share of each batch; all N samples for best-of-N)."""
    log_ratio: float | None = None
    """Σ over the response's tokens of log π(token) − log q(token), the decoding distribution against the base
    LM's warped sampling distribution q, measured while decoding: its mean over prompts estimates the KL per
    response. 0 for base sampling; None where not measured (the base LM's greedy decoding, MARA's proxy
    modes, best-of-N, whose KL the summary bounds instead)."""
    kl: float | None = None
    """Σ over the response's decisions of KL(π(·|s) ‖ π_ref(·|s)): the same expectation as `log_ratio` (the
    KL per response) with a lower variance (Rao–Blackwellised over each decision's action). None as log_ratio."""
    exact_kl: float | None = None
    """Σ over the response's tokens of the exact KL of each step's token distribution to q (the full sum over
    the candidates), where every step's candidates were computed; else None."""

    @property
    def tokens(self) -> int:
        """Response length in LM tokens."""
        return len(self.token_ids)


_FIELDS = tuple(f.name for f in fields(Generation))
_REQUIRED = tuple(f.name for f in fields(Generation) if f.default is MISSING)  # files written before the KLs lack them


def write_generations(path: str | Path, records: Iterable[Generation]) -> Path:
    """Write `records` as JSONL (one object per line, plus the derived `tokens` count); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({**asdict(r), "tokens": r.tokens}, ensure_ascii=False) for r in records]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tmp.replace(path)
    return path


def read_generations(path: str | Path) -> list[Generation]:
    """The records of a generations JSONL file; a missing file or a malformed line is one EvalError."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"generations file {str(path)!r} does not exist; write one with `tokenalign eval`")
    records = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as err:
            raise EvalError(f"{path}:{lineno}: malformed JSON ({err.msg} at column {err.colno})") from None
        missing = [name for name in _REQUIRED if name not in data] if isinstance(data, dict) else list(_REQUIRED)
        if missing:
            raise EvalError(
                f"{path}:{lineno}: not a generation record, missing {missing}; use a file written by `tokenalign eval`"
            )
        records.append(Generation(**{name: data[name] for name in _FIELDS if name in data}))
    if not records:
        raise EvalError(f"generations file {str(path)!r} holds no records")
    return records
