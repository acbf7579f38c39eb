"""The one Arrow schema for decisions that move between rollout actors, the buffer and learners.

A record batch holds the decisions of one or more *whole* episodes, in order. Within an episode the
decisions form a chain (DESIGN.md, "Decision chain"): the state after decision t is the state of
decision t+1, so each hidden state is stored once and `next_state` is assembled at sampling time.
States are stored as float16 (half the bytes; the agent's LayerNorm makes fp16 rounding harmless).

Records keep what was OBSERVED, never what was concluded: every scorer's raw score of the episode, the
behaviour log-probabilities, per-token signals and the episode's conditioning vector. No reward or cost
is stored; an Objective (tokenalign/objectives) turns these signals into per-decision rewards and costs
where the learner samples, so a run can change its objective without new rollouts. What a run's records
hold beyond the fixed columns (the scorer names, the preference size) is its `RecordLayout`, written
into every batch's schema metadata.

Records cross process and machine boundaries only as Arrow IPC streams, never pickles: a buffer that
someone else can write to must not be able to run code in the learner.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa

SCHEMA_VERSION = "3"
"""1: reward and cost concluded by the actors (before objectives); 2: raw observed signals; 3: π_ref's accept
logit and the KL terms of every decision (agents that start as the base LM)."""

_FIXED_COLUMNS: dict[str, pa.DataType] = {
    "episode_id": pa.int64(),
    "step": pa.int32(),
    "action": pa.int8(),
    "done": pa.bool_(),
    "logp": pa.float32(),
    "policy_version": pa.int32(),
    "prompt_id": pa.int64(),
    "rank": pa.int16(),
    "emit": pa.bool_(),
    "base_logit": pa.float32(),
    "next_base_logit": pa.float32(),
    "log_ratio": pa.float32(),
    "decision_kl": pa.float32(),
    "episode_decisions": pa.int32(),
    "token_reward": pa.float32(),
    "mara_kl_penalty": pa.float32(),
    "accepts_to_end": pa.int32(),
    "response_tokens": pa.int32(),
}
COLUMN_DOCS: dict[str, str] = {
    "episode_id": "random 63-bit id of the episode",
    "step": "decision index within the episode",
    "action": "1 = accept, 0 = reject",
    "done": "True on the episode's last decision",
    "logp": "the behaviour agent's log-probability of `action`",
    "policy_version": "version of the agent weights that decided",
    "prompt_id": "stable id of the prompt",
    "rank": "rank of the decided candidate among its step's candidates (0 = most probable)",
    "emit": "this decision ended its step: it accepted, or rejected the second-to-last candidate so that the last "
            "was emitted without a decision",
    "base_logit": "accept logit of π_ref, the accept/reject policy that decodes exactly as base sampling",
    "next_base_logit": "base_logit of the next decision of the episode (0 on its last)",
    "log_ratio": "log π(a) − log π_ref(a) of the action under the behaviour agent: summed over a token's decisions, "
                 "the token's log π/q",
    "decision_kl": "KL(π(·|s) ‖ π_ref(·|s)) of the behaviour agent's Bernoulli at the decision: summed over an "
                   "episode, an unbiased estimate of its response's KL to base sampling",
    "episode_decisions": "decisions the episode has",
    "token_reward": "token heads' Σ multiplier·r_t, on the decision after which each token was emitted (0 without one)",
    "mara_kl_penalty": "MARA's kl_div shaping penalty of the decision, before −kl_ctl (0 without MARA shaping)",
    "accepts_to_end": "accepts from this decision up to (not including) the episode's last one: postback's γ exponent",
    "response_tokens": "tokens the episode's response has",
}


class RecordSchemaError(ValueError):
    """A record batch does not match the decision schema; nothing of it was written."""


@dataclass(frozen=True)
class RecordLayout:
    """What a run's decision records hold: the size of a candidate state, the scorers' names, the conditioning size.

    Each scorer's raw score is a float32 column `score:<name>` (and, with an SFT baseline, the score of the
    base LM's greedy response to the prompt in `baseline:<name>`); the episode's preference weights are
    `pref:<i>`. Every row of an episode repeats them, so any sampled transition carries its episode's signals.

    With `candidate_rows` the rows are every candidate of every step that had a choice, not the decision chain
    (value-guided learners: `envs.episode.record_candidates`), and each carries its one-step scores: the raw
    score of the response so far plus the candidate (`step:<name>`) and of the response so far (`prefix:<name>`).
    """

    state_size: int
    """Size of a candidate state (the engine's `state_size`: the LM's hidden size in lookahead mode)."""
    scorers: tuple[str, ...] = ()
    """Scorer names, in the order of the run's reward config."""
    preference_dim: int = 0
    """Size of the per-episode preference vector w (0 = unconditioned agents)."""
    candidate_rows: bool = False
    """Rows are every candidate of every step with a choice, with one-step scores (value-guided learners)."""

    def __post_init__(self) -> None:
        if self.state_size <= 0:
            raise ValueError(f"state_size must be positive, got {self.state_size}")
        if self.preference_dim < 0:
            raise ValueError(f"preference_dim must be ≥ 0, got {self.preference_dim}")
        object.__setattr__(self, "scorers", tuple(self.scorers))
        if len(set(self.scorers)) != len(self.scorers):
            raise ValueError(f"scorer names must be unique, got {list(self.scorers)}")

    @property
    def score_columns(self) -> list[str]:
        return [f"score:{name}" for name in self.scorers]

    @property
    def baseline_columns(self) -> list[str]:
        return [f"baseline:{name}" for name in self.scorers]

    @property
    def preference_columns(self) -> list[str]:
        return [f"pref:{i}" for i in range(self.preference_dim)]

    @property
    def step_columns(self) -> list[str]:
        return [f"step:{name}" for name in self.scorers] if self.candidate_rows else []

    @property
    def prefix_columns(self) -> list[str]:
        return [f"prefix:{name}" for name in self.scorers] if self.candidate_rows else []

    @cached_property
    def scalar_types(self) -> dict[str, pa.DataType]:
        """Arrow type of every per-decision column except the state."""
        dynamic = (self.score_columns + self.baseline_columns + self.preference_columns + self.step_columns
                   + self.prefix_columns)
        return {**_FIXED_COLUMNS, **{name: pa.float32() for name in dynamic}}

    @cached_property
    def scalar_dtypes(self) -> dict[str, np.dtype]:
        """numpy dtype of every per-decision column except the state."""
        return {name: np.dtype(t.to_pandas_dtype()) for name, t in self.scalar_types.items()}

    def metadata(self) -> dict[str, str]:
        return {
            "tokenalign.schema_version": SCHEMA_VERSION,
            "tokenalign.scorers": json.dumps(list(self.scorers)),
            "tokenalign.preference_dim": str(self.preference_dim),
            "tokenalign.rows": "candidates" if self.candidate_rows else "decisions",
        }

    @cached_property
    def schema(self) -> pa.Schema:
        columns = [pa.field(name, dtype, nullable=False) for name, dtype in self.scalar_types.items()]
        columns.insert(2, pa.field("state", pa.list_(pa.float16(), self.state_size), nullable=False))
        return pa.schema(columns, metadata=self.metadata())


def check_version(metadata: dict[bytes, bytes] | None, *, what: str) -> None:
    """Refuse records of another schema version with the one message that says what to do."""
    version = (metadata or {}).get(b"tokenalign.schema_version", b"1").decode()
    if version != SCHEMA_VERSION:
        raise RecordSchemaError(
            f"{what} holds decision records of schema version {version}, this tokenalign writes and reads version "
            f"{SCHEMA_VERSION}: it was written by an older tokenalign. "
            "Start a new run (or give the buffer another buffer.namespace); the old buffer cannot be trained on"
        )


def validate_record_batch(batch: pa.RecordBatch, *, layout: RecordLayout) -> None:
    """Raise RecordSchemaError naming the first mismatch between `batch` and the layout's schema."""
    check_version(batch.schema.metadata, what="the record batch")
    expected = layout.schema
    got = {f.name: f.type for f in batch.schema}
    for field in expected:
        if field.name not in got:
            hint = ""
            if field.name.startswith(("score:", "baseline:", "pref:", "step:", "prefix:")):
                hint = (f" (the buffer's scorers are {list(layout.scorers)}, its preference size "
                        f"{layout.preference_dim}, its rows {'candidates' if layout.candidate_rows else 'decisions'}: "
                        "writers and learner must use the same reward, objective and learner config)")
            raise RecordSchemaError(
                f"record batch lacks column {field.name!r}{hint}; build batches with tokenalign.buffers.layout.make_record_batch"
            )
        if got[field.name] != field.type:
            if field.name == "state" and pa.types.is_fixed_size_list(got["state"]):
                raise RecordSchemaError(
                    f"record batch has state size {got['state'].list_size}, the buffer holds states of size "
                    f"{layout.state_size}: the rollout's candidate states must match the buffer's (check the model path and engine.candidate_state)"
                )
            raise RecordSchemaError(f"record batch column {field.name!r} has type {got[field.name]}, expected {field.type}")
    extra = set(got) - set(expected.names)
    if extra:
        raise RecordSchemaError(f"record batch has unknown columns {sorted(extra)}; the decision schema is {expected.names}")


def make_record_batch(
    *,
    layout: RecordLayout,
    state: np.ndarray,
    scores: np.ndarray,
    baseline_scores: np.ndarray | None = None,
    preference: np.ndarray | None = None,
    step_scores: np.ndarray | None = None,
    prefix_scores: np.ndarray | None = None,
    **columns: np.ndarray,
) -> pa.RecordBatch:
    """Build a decision record batch from per-decision arrays.

    `state` is (n, state_size) and becomes float16; `scores` and `baseline_scores` are (n, scorers) and
    `preference` (n, preference_dim), each row repeating its episode's values; with candidate rows
    `step_scores` and `prefix_scores` are (n, scorers); every other column of COLUMN_DOCS is an (n,) array
    (`token_reward` and `mara_kl_penalty` may be None or absent: zeros).
    """
    state = np.ascontiguousarray(state, dtype=np.float16)
    if state.ndim != 2 or state.shape[1] != layout.state_size:
        raise RecordSchemaError(f"state must have shape (decisions, {layout.state_size}), got {state.shape}")
    n = state.shape[0]
    for optional in ("token_reward", "mara_kl_penalty"):
        if columns.get(optional) is None:
            columns[optional] = np.zeros(n, np.float32)
    missing = sorted(set(_FIXED_COLUMNS) - set(columns))
    unknown = sorted(set(columns) - set(_FIXED_COLUMNS))
    if missing or unknown:
        raise RecordSchemaError(f"make_record_batch: missing columns {missing}, unknown columns {unknown}")
    wide = {"scores": (scores, layout.score_columns),
            "baseline_scores": (np.zeros((n, len(layout.scorers))) if baseline_scores is None else baseline_scores,
                                layout.baseline_columns),
            "preference": (np.zeros((n, 0)) if preference is None else preference, layout.preference_columns),
            "step_scores": (np.zeros((n, 0)) if step_scores is None else step_scores, layout.step_columns),
            "prefix_scores": (np.zeros((n, 0)) if prefix_scores is None else prefix_scores, layout.prefix_columns)}
    for what, (values, names) in wide.items():
        values = np.asarray(values, dtype=np.float32)
        if values.shape != (n, len(names)):
            raise RecordSchemaError(f"{what} has shape {values.shape}, expected ({n}, {len(names)}) for this layout")
        columns.update({name: values[:, i] for i, name in enumerate(names)})
    arrays = {}
    for name, dtype in layout.scalar_dtypes.items():
        values = np.asarray(columns[name])
        if values.shape != (n,):
            raise RecordSchemaError(f"column {name!r} has shape {values.shape}, expected ({n},) to match state")
        arrays[name] = pa.array(values.astype(dtype, copy=False))
    arrays["state"] = pa.FixedSizeListArray.from_arrays(pa.array(state.reshape(-1)), layout.state_size)
    schema = layout.schema
    return pa.RecordBatch.from_arrays([arrays[name] for name in schema.names], schema=schema)


def to_ipc(batch: pa.RecordBatch) -> bytes:
    """Serialize one record batch as an Arrow IPC stream (schema included, no pickle)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def from_ipc(payload: bytes) -> pa.RecordBatch:
    """Read one record batch back from an Arrow IPC stream; anything else is a RecordSchemaError."""
    try:
        table = pa.ipc.open_stream(pa.py_buffer(payload)).read_all()
    except (pa.ArrowInvalid, OSError) as err:
        raise RecordSchemaError(f"payload is not an Arrow IPC stream of decisions ({err}); refusing it") from err
    batches = table.to_batches()
    return batches[0] if len(batches) == 1 else table.combine_chunks().to_batches()[0]
