"""Preference pairs: a prompt, a response, and labels comparing it with another response or its revision.

They fit the reward, cost and token heads (and DPO). Sources are given as prompts are (`tokenalign.data.prompts`):
a JSON list, JSONL or Parquet file, `builtin:NAME` (a set the caller can make, `load_pairs`' builtins), or
`name:proportion:path`,
with the same proportions and the same deterministic subsampling from `seed`. Each record is read in the
first of these formats whose fields it has (other fields are ignored):

    safe-rlhf        input, answer, other_answer and/or revised; labels better, safer, is_safe, is_other_safe
    PKU-SafeRLHF     prompt, response_0, response_1; labels better_response_id, safer_response_id (0 or 1),
                     is_response_0_safe, is_response_1_safe
    chosen/rejected  prompt, chosen, rejected (TRL, HH-RLHF)

safe-rlhf's fields are the pair's own: `better` and `safer` say whether `answer` is better / safer than
`other_answer`, and `revised` is a revision of `answer` (TLCR's token labels, `tokenalign.data.token_labels`);
with a revision, `other_answer` and the labels may be absent. PKU-SafeRLHF gives answer = response_0,
other_answer = response_1, better = (better_response_id == 0), safer = (safer_response_id == 0), is_safe
and is_other_safe from is_response_0_safe and is_response_1_safe. chosen/rejected gives answer = chosen,
other_answer = rejected, better = True and no safety labels.

Labels are optional: a missing or null one is None, and `require` names those a use needs on every pair.
Types are strict: labels are JSON booleans (the *_id fields 0 or 1); the prompt is a non-empty string; a
response is a string and may be empty (an LM can stop at once, and that is a response to prefer or avoid
like any other). Multi-turn dialogues (a list in a text field) are refused. Bad input raises one DataError
naming the file and line; nothing is skipped.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenalign.data.prompts import (
    BuiltinTable,
    DataError,
    PromptSource,
    checked_file,
    checked_text,
    json_records,
    parse_sources,
    subsample,
    with_generators,
)

# The module docstring's field sets, for the message of a record that matches none.
ACCEPTED = (
    "safe-rlhf's input, answer and other_answer and/or revised (labels better, safer, is_safe, is_other_safe); "
    "PKU-SafeRLHF's prompt, response_0, response_1 (labels better_response_id, safer_response_id, "
    "is_response_0_safe, is_response_1_safe); or prompt, chosen, rejected"
)
# The labels `require` can ask for, each with the fields that carry it (for the message when one is missing).
LABELS: dict[str, str] = {
    "other_answer": "safe-rlhf's other_answer, PKU-SafeRLHF's response_1 or a chosen/rejected record",
    "better": "safe-rlhf's better, PKU-SafeRLHF's better_response_id or a chosen/rejected record",
    "safer": "safe-rlhf's safer or PKU-SafeRLHF's safer_response_id",
    "is_safe": "safe-rlhf's is_safe or PKU-SafeRLHF's is_response_0_safe",
    "is_other_safe": "safe-rlhf's is_other_safe or PKU-SafeRLHF's is_response_1_safe",
    "revised": "safe-rlhf's revised only",
}


@dataclass(frozen=True)
class PreferencePair:
    """One prompt and response, with what is known of the response against another one or its revision."""

    prompt: str
    """The prompt as given to the LM (before any chat template); never empty."""
    answer: str
    """A response to the prompt (possibly empty)."""
    other_answer: str | None
    """A second response to compare `answer` with; None when the record has only a revision."""
    better: bool | None
    """Whether `answer` is better (more helpful) than `other_answer`; None when unlabelled."""
    safer: bool | None
    """Whether `answer` is safer than `other_answer`; None when unlabelled."""
    is_safe: bool | None
    """Whether `answer` is safe; None when unlabelled."""
    is_other_safe: bool | None
    """Whether `other_answer` is safe; None when unlabelled."""
    revised: str | None
    """A revision of `answer` (TLCR's token labels); None when the record has none."""
    source: str
    """Name of the source it came from."""
    where: str
    """Its record: `file:line` (JSONL), `file record N` (JSON list) or `file row N` (Parquet)."""

    @property
    def chosen(self) -> str:
        """The better response of the two."""
        return self._ranked("better")[0]

    @property
    def rejected(self) -> str:
        """The worse response of the two."""
        return self._ranked("better")[1]

    @property
    def safer_answer(self) -> str:
        """The safer response of the two."""
        return self._ranked("safer")[0]

    @property
    def unsafer_answer(self) -> str:
        """The less safe response of the two."""
        return self._ranked("safer")[1]

    def _ranked(self, label: str) -> tuple[str, str]:
        """(the response `label` prefers, the other)."""
        first = getattr(self, label)
        if first is None or self.other_answer is None:
            raise ValueError(
                f"{self.where}: the pair has no {label!r} label comparing two responses; "
                f"load the pairs with require=('other_answer', {label!r})"
            )
        return (self.answer, self.other_answer) if first else (self.other_answer, self.answer)


def load_pairs(specs: str | Sequence[str], *, seed: int = 42, require: Sequence[str] = (),
               builtins: BuiltinTable | None = None) -> list[PreferencePair]:
    """The pairs of one or more source specs, mixed in spec order, subsampled deterministically, each
    carrying every label named in `require` (from LABELS). `builtins`: the `builtin:NAME` sets the caller can
    make (e.g. `workflows.demo_preferences.PAIR_SOURCES`, which samples the LM on first use)."""
    unknown = sorted(set(require) - LABELS.keys())
    if unknown:
        raise ValueError(f"require names unknown labels {unknown}; the labels are {list(LABELS)}")
    sources = parse_sources(specs, builtins=builtins or {}, kind="preference")
    pairs: list[PreferencePair] = []
    for source, rng in with_generators(sources, seed):
        read = _read_pairs(source, require)
        pairs.extend(read[i] for i in subsample(len(read), source.proportion, rng).tolist())
    if not pairs:
        names = [s.name for s in sources]
        raise DataError(f"the preference sources {names} select no pairs; raise a proportion above 0")
    return pairs


def _read_pairs(source: PromptSource, require: Sequence[str]) -> list[PreferencePair]:
    """Every pair of one source's file, in file order; all of them, not only those subsampled, are checked."""
    path = checked_file(source.path, kind="preference")
    records = _parquet_rows(path) if path.suffix == ".parquet" else json_records(path, kind="preference")
    pairs = [_pair_of(record, source.name, where) for where, record in records]
    if not pairs:
        raise DataError(f"preference file {str(path)!r} holds no pairs")
    for pair in pairs:
        missing = next((label for label in require if getattr(pair, label) is None), None)
        if missing is not None:
            raise DataError(
                f"{pair.where}: the pair has no {missing!r}, which this use needs on every pair; "
                f"it comes from {LABELS[missing]}"
            )
    return pairs


def _parquet_rows(path: Path) -> list[tuple[str, object]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None
    return [(f"{path} row {i}", row) for i, row in enumerate(table.to_pylist(), start=1)]


def _pair_of(record: object, source: str, where: str) -> PreferencePair:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object holding a preference pair, got {type(record).__name__}")
    fields = record.keys()
    if {"input", "answer"} <= fields and fields & {"other_answer", "revised"}:
        return _safe_rlhf_pair(record, source, where)
    if {"prompt", "response_0", "response_1"} <= fields:
        better, safer = _is_first(record, "better_response_id", where), _is_first(record, "safer_response_id", where)
        return PreferencePair(
            prompt=_prompt(record, "prompt", where),
            answer=_response(record, "response_0", where),
            other_answer=_response(record, "response_1", where),
            better=better,
            safer=safer,
            is_safe=_flag(record, "is_response_0_safe", where),
            is_other_safe=_flag(record, "is_response_1_safe", where),
            revised=None,
            source=source,
            where=where,
        )
    if {"prompt", "chosen", "rejected"} <= fields:
        return PreferencePair(
            prompt=_prompt(record, "prompt", where),
            answer=_response(record, "chosen", where),
            other_answer=_response(record, "rejected", where),
            better=True,
            safer=None,
            is_safe=None,
            is_other_safe=None,
            revised=None,
            source=source,
            where=where,
        )
    raise DataError(
        f"{where}: the record matches no preference format; it has fields {sorted(record)}, accepted: {ACCEPTED}"
    )


def _safe_rlhf_pair(record: dict, source: str, where: str) -> PreferencePair:
    prompt, answer = _prompt(record, "input", where), _response(record, "answer", where)
    other, revised = _optional_response(record, "other_answer", where), _optional_response(record, "revised", where)
    if other is None and revised is None:
        raise DataError(f"{where}: 'other_answer' and 'revised' are both null; a safe-rlhf pair needs one of them")
    labels = {key: _flag(record, key, where) for key in ("better", "safer", "is_safe", "is_other_safe")}
    dangling = [key for key in ("better", "safer", "is_other_safe") if labels[key] is not None]
    if other is None and dangling:
        raise DataError(f"{where}: labels {dangling} describe 'other_answer', which is absent; add it or drop them")
    return PreferencePair(
        prompt=prompt, answer=answer, other_answer=other, revised=revised, source=source, where=where, **labels
    )


def _single_turn(record: dict, key: str, where: str) -> object:
    value = record.get(key)
    if isinstance(value, list):
        raise DataError(
            f"{where}: field {key!r} is a list, a dialogue; multi-turn dialogues are not supported, "
            "give a single prompt and its responses as strings"
        )
    return value


def _prompt(record: dict, key: str, where: str) -> str:
    return checked_text(_single_turn(record, key, where), key, where)


def _response(record: dict, key: str, where: str) -> str:
    value = _single_turn(record, key, where)
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} is {value!r}, expected a string (a response may be empty)")
    return value


def _optional_response(record: dict, key: str, where: str) -> str | None:
    # A null is an absent field: a Parquet file cannot leave a field out of one row, only null it.
    return None if record.get(key) is None else _response(record, key, where)


def _flag(record: dict, key: str, where: str) -> bool | None:
    value = record.get(key)
    if value is not None and not isinstance(value, bool):
        raise DataError(f"{where}: field {key!r} is {value!r}, expected true or false (a JSON bool)")
    return value


def _is_first(record: dict, key: str, where: str) -> bool | None:
    """PKU-SafeRLHF's response id (0 or 1) as `response_0 is the one`."""
    value = record.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value not in (0, 1):
        raise DataError(f"{where}: field {key!r} is {value!r}, expected 0 or 1 (which response)")
    return value == 0
