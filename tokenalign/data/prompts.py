"""Prompt datasets: JSON lists, JSONL and Parquet files, mixed from several sources with safe-rlhf's specs.

A source spec is one of

    path/to/prompts.jsonl          a file (.json list of objects, .jsonl, or .parquet), all of it
    builtin:demo-train             the shipped demo prompts (also builtin:demo-test)
    name:proportion:path           safe-rlhf's form; path may be a builtin: spec

with proportion a float (0.5 = half the file, 2 = twice over; 0 leaves the source out), `a/b`, `N/-1`
for exactly N prompts, `-1` for all of them, or empty for all. Subsampling follows safe-rlhf: whole
passes over the file, then the remainder drawn without replacement with a per-source generator spawned
from `seed`, so the same specs and seed always give the same prompts in the same order.

Each record's prompt is its `prompt` field, else its `instruction` field (MARA's data files), or the
field named explicitly. Bad input raises one DataError naming the file and line; nothing is skipped.
The specs, the JSON reading and the subsampling serve `tokenalign.data.pairs` (preference pairs) too.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from tokenalign.core.parsing import check_bounds

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets" / "prompts"
# builtin:NAME → its file, or a function returning the file, so that a builtin can be made on first use.
BuiltinTable = Mapping[str, Path | Callable[[], Path]]
BUILTIN_SOURCES: dict[str, Path] = {"demo-train": ASSETS_DIR / "train.jsonl", "demo-test": ASSETS_DIR / "test.jsonl"}
AUTO_FIELDS: tuple[str, ...] = ("prompt", "instruction")
FORMATS: tuple[str, ...] = (".json", ".jsonl", ".parquet")


class DataError(ValueError):
    """A source cannot be read as prompts (or preference pairs); the message names the file, line and fix."""


@dataclass(frozen=True)
class Prompt:
    """One prompt of a dataset."""

    id: int
    """Stable id (the buffer's prompt_id): a hash of the text, equal in every run, process and mixture."""
    text: str
    """The prompt as given to the LM (before any chat template)."""
    source: str
    """Name of the source it came from."""


@dataclass(frozen=True)
class PromptSource:
    """One parsed source spec."""

    name: str
    """Source name (the spec's name, the builtin's name, or the path as given)."""
    path: Path
    """The file to read."""
    proportion: float | Fraction = 1.0
    """Fraction of the file (float), or an exact count as safe-rlhf's Fraction(N, -1)."""


@dataclass(frozen=True)
class DataConfig:
    """Where the training and evaluation prompts come from."""

    train: list[str] = field(default_factory=lambda: ["builtin:demo-train"])
    """Source specs of the training prompts."""
    test: list[str] = field(default_factory=lambda: ["builtin:demo-test"])
    """Source specs of the evaluation prompts."""
    pairs: list[str] = field(default_factory=list)
    """Preference pair specs (tokenalign/data/pairs.py) for learners that learn from pairs (learner.name=dpo)."""
    prompt_field: str | None = None
    """Record field holding the prompt; unset = `prompt`, else `instruction`."""
    seed: int = 42
    """Seed of the subsampling (safe-rlhf's default seed)."""

    def __post_init__(self) -> None:
        check_bounds("data", self, seed=(0, "≥"))


def prompt_id(text: str) -> int:
    """A non-negative int64 id of `text` that every process computes alike (unlike Python's hash)."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF


def parse_source(spec: str, *, builtins: BuiltinTable = BUILTIN_SOURCES, kind: str = "prompt") -> PromptSource:
    """The PromptSource a spec string describes (see the module docstring); `kind` names the data in errors."""
    spec = spec.strip()
    if Path(spec).expanduser().is_file():
        return PromptSource(name=spec, path=Path(spec).expanduser())
    if spec.startswith("builtin:"):
        return _builtin(spec.removeprefix("builtin:"), builtins, kind)
    if spec.count(":") >= 2:
        name, proportion, path = spec.split(":", 2)
        if not name or not path:
            raise DataError(f"{kind} source {spec!r} must be name:proportion:path with a name and a path")
        file = (
            _builtin(path.removeprefix("builtin:"), builtins, kind).path
            if path.startswith("builtin:")
            else Path(path).expanduser()
        )
        return PromptSource(name=name, path=file, proportion=_parse_proportion(proportion, spec, kind))
    if ":" in spec:
        raise DataError(f"{kind} source {spec!r} is neither a file, builtin:NAME, nor name:proportion:path")
    raise DataError(
        f"{kind} file {spec!r} does not exist; give a .json, .jsonl or .parquet path"
        + (f" or builtin:{next(iter(builtins))}" if builtins else "")
    )


def parse_sources(
    specs: str | Sequence[str], *, builtins: BuiltinTable = BUILTIN_SOURCES, kind: str = "prompt"
) -> list[PromptSource]:
    """The sources of one or more specs, in spec order; their names must be unique."""
    sources = [parse_source(s, builtins=builtins, kind=kind) for s in ([specs] if isinstance(specs, str) else specs)]
    names = [s.name for s in sources]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(f"{kind} source names must be unique, {repeated} repeat; name them with name:proportion:path")
    return sources


def _builtin(name: str, builtins: BuiltinTable, kind: str) -> PromptSource:
    if name not in builtins:
        known = ", ".join(f"builtin:{n}" for n in builtins)
        raise DataError(f"unknown builtin {kind} set {name!r}; known: {known}")
    entry = builtins[name]
    path = entry() if callable(entry) else entry
    if callable(entry) and not path.is_file():
        raise DataError(f"builtin:{name} was to be made at {path}, but its maker left no file there")
    if not path.is_file():
        raise DataError(
            f"builtin:{name} should be shipped at {path} but is missing; "
            "reinstall tokenalign with its assets"
        )
    return PromptSource(name=name, path=path)


def _parse_proportion(text: str, spec: str, kind: str) -> float | Fraction:
    """safe-rlhf's proportion: a float, a/b, N/-1 (exactly N, as Fraction(N, -1)); plus -1 or empty for all."""
    text = text.strip()
    if not text or text == "-1":
        return 1.0
    left, slash, right = (part.strip() for part in text.partition("/"))
    exact = bool(slash) and right == "-1"
    try:
        value = float(int(left)) if exact else float(left) / float(right) if slash else float(left)
    except (ValueError, ZeroDivisionError):
        raise DataError(
            f"{kind} source {spec!r}: proportion {text!r} is not a float, a/b, N/-1 (exactly N) or -1 (all)"
        ) from None
    if not np.isfinite(value) or value < 0:
        raise DataError(f"{kind} source {spec!r}: proportion {text!r} must be a finite non-negative number")
    return Fraction(int(value), -1) if exact and value else value


def read_prompts(path: str | Path, *, prompt_field: str | None = None) -> list[str]:
    """Every prompt of one file, in file order."""
    path = checked_file(path, kind="prompt")
    if path.suffix == ".parquet":
        prompts = _read_parquet(path, prompt_field)
    else:
        prompts = [_prompt_of(record, prompt_field, where) for where, record in json_records(path, kind="prompt")]
    if not prompts:
        raise DataError(f"prompt file {str(path)!r} holds no prompts")
    return prompts


def checked_file(path: str | Path, *, kind: str) -> Path:
    """`path`, if it is an existing file in one of FORMATS."""
    path = Path(path).expanduser()
    if path.suffix not in FORMATS:
        raise DataError(f"{kind} file {str(path)!r} has suffix {path.suffix!r}; use one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise DataError(f"{kind} file {str(path)!r} does not exist")
    return path


def json_records(path: Path, *, kind: str) -> list[tuple[str, object]]:
    """(location, record) pairs of a JSON list or a JSONL file; location is `file:line` or `file record N`."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        records = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append((f"{path}:{lineno}", json.loads(line)))
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:{lineno}: malformed JSON line ({err.msg} at column {err.colno})") from None
        return records
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path}:{err.lineno}: malformed JSON ({err.msg} at column {err.colno}); "
            "a file with one object per line must be named .jsonl"
        ) from None
    if not isinstance(data, list):
        raise DataError(f"{path} holds a JSON {type(data).__name__}; a .json {kind} file must be a list of objects")
    return [(f"{path} record {i}", record) for i, record in enumerate(data, start=1)]


def _prompt_of(record: object, prompt_field: str | None, where: str) -> str:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object with a prompt field, got {type(record).__name__}")
    if prompt_field is not None:
        if prompt_field not in record:
            raise DataError(f"{where}: no field {prompt_field!r}; the record has fields {sorted(record)}")
        key = prompt_field
    else:
        key = next((k for k in AUTO_FIELDS if k in record), None)
        if key is None:
            raise DataError(
                f"{where}: no 'prompt' or 'instruction' field; the record has fields {sorted(record)} "
                "(name the right one with prompt_field)"
            )
    return checked_text(record[key], key, where)


def checked_text(value: object, key: str, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        shown = repr(value) if not isinstance(value, str) else "an empty string"
        raise DataError(f"{where}: field {key!r} is {shown}, expected a non-empty string")
    return value


def _read_parquet(path: Path, prompt_field: str | None) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        columns = pq.read_schema(path).names
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None
    key = prompt_field if prompt_field is not None else next((k for k in AUTO_FIELDS if k in columns), None)
    if key not in columns:
        wanted = repr(prompt_field) if prompt_field is not None else "'prompt' or 'instruction'"
        raise DataError(f"{path}: no column {wanted}; the file has columns {columns}")
    values = pq.read_table(path, columns=[key]).column(key).to_pylist()
    return [checked_text(value, key, f"{path} row {i}") for i, value in enumerate(values, start=1)]


def with_generators(sources: Sequence[PromptSource], seed: int) -> Iterator[tuple[PromptSource, np.random.Generator]]:
    """The sources that select anything, each with its own generator spawned from `seed`."""
    selected = [s for s in sources if s.proportion != 0]
    for source, seed_seq in zip(selected, np.random.SeedSequence(seed).spawn(len(selected))):
        yield source, np.random.default_rng(seed_seq)


def subsample(n: int, proportion: float | Fraction, rng: np.random.Generator) -> np.ndarray:
    """safe-rlhf's selection: whole passes over 0..n-1, then the rest drawn without replacement."""
    wanted = abs(int(proportion)) if isinstance(proportion, Fraction) else round(n * proportion)
    passes, rest = divmod(wanted, n)
    return np.concatenate([np.tile(np.arange(n), passes), rng.choice(n, size=rest, replace=False)]).astype(np.int64)


def load_prompts(specs: str | Sequence[str], *, prompt_field: str | None = None, seed: int = 42) -> list[Prompt]:
    """The prompts of one or more source specs, mixed in spec order and subsampled deterministically."""
    sources = parse_sources(specs)
    prompts: list[Prompt] = []
    for source, rng in with_generators(sources, seed):
        texts = read_prompts(source.path, prompt_field=prompt_field)
        chosen = subsample(len(texts), source.proportion, rng)
        prompts.extend(Prompt(id=prompt_id(texts[i]), text=texts[i], source=source.name) for i in chosen.tolist())
    if not prompts:
        raise DataError(f"the prompt sources {[s.name for s in sources]} select no prompts; raise a proportion above 0")
    return prompts
