"""How a chunk of decisions is laid out as two Arrow IPC values in Redis, and how we check a value is ours.

A chunk is stored as `meta` (the scalar columns, plus where the states start) and `states` (one column of
float16 states, and after the last one a row of zeros). Sampling reads the states value with GETRANGE at
`state_offset + row·row_bytes`; rows t and t + 1 are adjacent, so one range of two rows returns a state and
its chain successor, for every row alike (the zero row follows the last). A value is accepted only if
it parses as our Arrow IPC (meta) or its length and header digest match what the meta recorded (states);
nothing is ever unpickled.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from tokenalign.buffers.errors import ForeignValueError
from tokenalign.buffers.layout import (
    RecordLayout,
    RecordSchemaError,
    check_version,
    from_ipc,
    to_ipc,
    validate_record_batch,
)
from tokenalign.buffers.shard import Columns

# "hidden_size" is the stored format's name of the state width (kept so that older buffers still read)
_INFO = ("rows", "hidden_size", "state_offset", "states_len", "head_digest")


def layout_signature(layout: RecordLayout) -> str:
    """The layout as one string: writers of one namespace must all write the same one."""
    return json.dumps({"hidden_size": layout.state_size, "scorers": list(layout.scorers),
                       "preference_dim": layout.preference_dim})


def _meta_fields(layout: RecordLayout) -> list[pa.Field]:
    return [pa.field(name, dtype, nullable=False) for name, dtype in layout.scalar_types.items()]


@dataclass(frozen=True)
class ChunkMeta:
    """What a reader needs of a chunk: its scalar columns and where its state rows are."""

    scalars: dict[str, np.ndarray]
    """Column name → (rows,) array."""
    rows: int
    """Decisions in the chunk."""
    state_offset: int
    """Byte offset of row 0's state inside the states value."""
    states_len: int
    """Length in bytes of the states value."""
    head_digest: str
    """BLAKE2b digest of the states value's bytes before state_offset (its Arrow headers)."""


def refusal(key: str, why: str) -> ForeignValueError:
    """The one error for a value under our keys that we did not write: named, refused, never decoded."""
    return ForeignValueError(
        f"Redis key {key!r} holds a value this buffer did not write ({why}); it was refused, not decoded. "
        "Delete the key, or give this buffer its own buffer.namespace"
    )


def _digest(head: bytes) -> str:
    return hashlib.blake2b(head, digest_size=16).hexdigest()


def encode_chunk(columns: Columns, *, layout: RecordLayout) -> tuple[bytes, bytes]:
    """(meta, states) Arrow IPC values for one chunk."""
    rows, state_size = columns.state.shape
    flat = pa.array(np.concatenate([columns.state.reshape(-1), np.zeros(state_size, dtype=columns.state.dtype)]))
    states = to_ipc(pa.RecordBatch.from_arrays([pa.FixedSizeListArray.from_arrays(flat, state_size)], names=["state"]))
    # The reader hands back zero-copy slices of `buffer`, so an address difference is the byte offset of row 0.
    buffer = pa.py_buffer(states)
    data = pa.ipc.open_stream(buffer).read_next_batch().column(0).values.buffers()[1]
    offset = data.address - buffer.address
    if not 0 <= offset <= len(states) - (rows + 1) * state_size * 2:
        raise RuntimeError("Arrow copied the states while reading them back; cannot locate rows for GETRANGE")
    info = dict(
        rows=rows, hidden_size=state_size, state_offset=offset, states_len=len(states), head_digest=_digest(states[:offset])
    )
    fields = _meta_fields(layout)
    schema = pa.schema(fields, metadata={**layout.metadata(), **{f"tokenalign.{k}": str(v) for k, v in info.items()}})
    meta = pa.RecordBatch.from_arrays([pa.array(columns.scalars[f.name]) for f in fields], schema=schema)
    return to_ipc(meta), states


def decode_meta(payload: bytes | None, *, key: str, layout: RecordLayout) -> ChunkMeta:
    """Parse a meta value, refusing (ForeignValueError) anything that is not a chunk meta of this buffer."""
    try:
        batch = from_ipc(payload)
    except RecordSchemaError as err:
        raise refusal(key, str(err)) from None
    state_size = layout.state_size
    if b"tokenalign.hidden_size" in (batch.schema.metadata or {}):  # ours, but maybe of an older version
        check_version(batch.schema.metadata, what=f"Redis key {key!r}")
    metadata = {k.decode(): v.decode() for k, v in (batch.schema.metadata or {}).items()}
    try:
        info = {k: metadata[f"tokenalign.{k}"] for k in _INFO}
        ints = {k: int(info[k]) for k in _INFO if k != "head_digest"}
    except (KeyError, ValueError):
        raise refusal(key, "no chunk description in its Arrow metadata") from None
    if [f.name for f in batch.schema] != [f.name for f in _meta_fields(layout)] or batch.num_rows != ints["rows"]:
        raise refusal(key, f"its columns are {batch.schema.names}")
    if ints["hidden_size"] != state_size:
        raise ForeignValueError(
            f"Redis key {key!r} holds states of size {ints['hidden_size']}, this buffer's state_size is {state_size}: "
            "use the same LM as the writers, or another buffer.namespace"
        )
    scalars = {
        name: batch.column(name).to_numpy(zero_copy_only=False).astype(dtype, copy=False)
        for name, dtype in layout.scalar_dtypes.items()
    }
    return ChunkMeta(scalars, ints["rows"], ints["state_offset"], ints["states_len"], info["head_digest"])


def check_states(meta: ChunkMeta, *, key: str, length: int, head: bytes) -> None:
    """Refuse a states value whose length or Arrow headers differ from what its meta recorded."""
    if length != meta.states_len or _digest(head) != meta.head_digest:
        raise refusal(key, f"not the states written there: {length} bytes, expected {meta.states_len}")


def decode_episodes(payload: bytes, *, key: str, layout: RecordLayout) -> pa.RecordBatch:
    """Parse a queued record batch of whole episodes, refusing (ForeignValueError) anything else."""
    try:
        batch = from_ipc(payload)
        if b"tokenalign.schema_version" in (batch.schema.metadata or {}):
            check_version(batch.schema.metadata, what=f"Redis key {key!r}")
        validate_record_batch(batch, layout=layout)
    except RecordSchemaError as err:
        raise refusal(key, str(err)) from None
    return batch
