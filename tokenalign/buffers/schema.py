"""The one Arrow schema for decisions that move between rollout actors, the buffer and learners.

A record batch holds the decisions of one or more *whole* episodes, in order. Within an episode the
decisions form a chain (DESIGN.md, "Decision chain"): the state after decision t is the state of
decision t+1, so each hidden state is stored once and `next_state` is assembled at sampling time.
States are stored as float16 (half the bytes; the agent's LayerNorm makes fp16 rounding harmless).

Records cross process and machine boundaries only as Arrow IPC streams, never pickles: a buffer that
someone else can write to must not be able to run code in the learner.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pyarrow as pa
import torch

SCHEMA_VERSION = "1"

_SCALAR_COLUMNS: dict[str, pa.DataType] = {
    "episode_id": pa.int64(),
    "step": pa.int32(),
    "action": pa.int8(),
    "reward": pa.float32(),
    "cost": pa.float32(),
    "done": pa.bool_(),
    "logp": pa.float32(),
    "policy_version": pa.int32(),
    "prompt_id": pa.int64(),
}


class RecordSchemaError(ValueError):
    """A record batch does not match the decision schema; nothing of it was written."""


def decision_schema(hidden_size: int) -> pa.Schema:
    """The decision schema for an LM whose last hidden state has `hidden_size` features."""
    if hidden_size <= 0:
        raise ValueError(f"hidden_size must be positive, got {hidden_size}")
    columns = [pa.field(name, dtype, nullable=False) for name, dtype in _SCALAR_COLUMNS.items()]
    columns.insert(2, pa.field("state", pa.list_(pa.float16(), hidden_size), nullable=False))
    return pa.schema(columns, metadata={"tokenalign.schema_version": SCHEMA_VERSION})


def validate_record_batch(batch: pa.RecordBatch, *, hidden_size: int) -> None:
    """Raise RecordSchemaError naming the first mismatch between `batch` and the decision schema."""
    expected = decision_schema(hidden_size)
    got = {f.name: f.type for f in batch.schema}
    for field in expected:
        if field.name not in got:
            raise RecordSchemaError(
                f"record batch lacks column {field.name!r}; build batches with tokenalign.buffers.schema.make_record_batch"
            )
        if got[field.name] != field.type:
            if field.name == "state" and pa.types.is_fixed_size_list(got["state"]):
                raise RecordSchemaError(
                    f"record batch has state size {got['state'].list_size}, the buffer holds states of size {hidden_size}: "
                    "the rollout LM's hidden size must match the buffer's (check the model path and buffer.hidden_size)"
                )
            raise RecordSchemaError(f"record batch column {field.name!r} has type {got[field.name]}, expected {field.type}")
    extra = set(got) - set(expected.names)
    if extra:
        raise RecordSchemaError(f"record batch has unknown columns {sorted(extra)}; the decision schema is {expected.names}")


def make_record_batch(
    *,
    episode_id: np.ndarray,
    step: np.ndarray,
    state: np.ndarray,
    action: np.ndarray,
    reward: np.ndarray,
    cost: np.ndarray,
    done: np.ndarray,
    logp: np.ndarray,
    policy_version: np.ndarray,
    prompt_id: np.ndarray,
) -> pa.RecordBatch:
    """Build a decision record batch from per-decision arrays; `state` is (n, hidden) and becomes float16."""
    state = np.ascontiguousarray(state, dtype=np.float16)
    if state.ndim != 2:
        raise RecordSchemaError(f"state must be a 2-D array (decisions, hidden), got shape {state.shape}")
    n, hidden_size = state.shape
    schema = decision_schema(hidden_size)
    scalars = dict(
        episode_id=episode_id, step=step, action=action, reward=reward, cost=cost, done=done, logp=logp,
        policy_version=policy_version, prompt_id=prompt_id,
    )
    arrays = {}
    for name, values in scalars.items():
        values = np.asarray(values)
        if values.shape != (n,):
            raise RecordSchemaError(f"column {name!r} has shape {values.shape}, expected ({n},) to match state")
        arrays[name] = pa.array(values.astype(_SCALAR_COLUMNS[name].to_pandas_dtype(), copy=False))
    arrays["state"] = pa.FixedSizeListArray.from_arrays(pa.array(state.reshape(-1)), hidden_size)
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


@dataclass
class Transitions:
    """A sampled batch of decisions as torch tensors: what every learner's `update` consumes.

    Rows are transitions (s, a, r, c, s', d). For on-policy data, rows are whole episodes in step order,
    so `episode_id` and `done` delimit the chains that GAE and RLOO need.
    """

    state: torch.Tensor
    """(B, hidden) hidden state of the candidate being decided: float16 as the buffer hands it over (buffer.state_dtype),
    float32 after `to(device)`."""
    action: torch.Tensor
    """(B,) int64, 1 = accept, 0 = reject."""
    reward: torch.Tensor
    """(B,) float32 per-decision reward (final sequence reward on the episode's last decision)."""
    cost: torch.Tensor
    """(B,) float32 per-decision cost (sequence cost on the episode's last decision)."""
    next_state: torch.Tensor
    """(B, hidden) state of the next decision in the chain (zeros where done), dtype as `state`."""
    done: torch.Tensor
    """(B,) float32, 1.0 on the episode's last decision."""
    logp: torch.Tensor
    """(B,) float32 log-probability of `action` under the behaviour policy."""
    episode_id: torch.Tensor
    """(B,) int64 episode identifier."""
    step: torch.Tensor
    """(B,) int64 decision index within its episode."""
    prompt_id: torch.Tensor
    """(B,) int64 prompt identifier (RLOO groups the k episodes of one prompt by it)."""
    policy_version: torch.Tensor
    """(B,) int64 version of the agent weights that took the decision."""

    def __len__(self) -> int:
        return int(self.action.shape[0])

    def to(self, device: torch.device | str) -> "Transitions":
        """Move every tensor to `device`; states handed over as float16 (buffer.state_dtype) become float32 there."""
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self)}
        moved["state"], moved["next_state"] = moved["state"].float(), moved["next_state"].float()
        return Transitions(**moved)
