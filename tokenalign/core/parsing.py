"""Typed configuration: plain data (YAML, dotted overrides, spec strings) → frozen dataclasses, parsed once.

    config = from_dict(EngineConfig, {"max_new_tokens": 32}, where="engine")

Every key and value is checked against the dataclass's fields and type hints on the way in; a mistake is
one ConfigError that names the dotted key. A type that parses in its own way (a scorer from its spec string,
a learner section whose params depend on its name) defines a classmethod `from_plain(data, *, where)`, which
`from_dict` and field coercion call instead; inside it, `build` assembles the dataclass from the remaining
fields. `to_dict` is the way back (a type may define `to_plain()` for its own form), YAML-ready.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """The configuration file or an override is invalid; the message names the key."""


def check_bounds(section: str, config: Any, **bounds: tuple[float, str]) -> None:
    """One ConfigError naming `section.field` for the first field below its (minimum, "≥" or ">") bound;
    None values (where a field allows None) pass."""
    for name, (minimum, relation) in bounds.items():
        value = getattr(config, name)
        if value is None:
            continue
        if value < minimum or (relation == ">" and value == minimum):
            raise ConfigError(f"{section}.{name} must be {relation} {minimum:g}, got {value!r}")


def from_dict(cls: type, data: Any, *, where: str = "") -> Any:
    """Dataclass `cls` from nested plain data, checking every key and type on the way (its `from_plain` if any)."""
    hook = getattr(cls, "from_plain", None)
    if hook is not None:
        return hook(data, where=where)
    return build(cls, data, where=where)


def build(cls: type, data: Any, *, where: str = "", **parsed: Any) -> Any:
    """Dataclass `cls` from the mapping `data`, each field coerced to its type hint; the fields in `parsed` are
    already typed (a `from_plain` hook parsed them) and are taken as they are. Missing fields keep their defaults."""
    data = mapping(data, where)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown key {join(where, unknown[0])!r}; {where or 'the config'} has keys: "
                          f"{', '.join(sorted(names))}")
    kwargs = {key: parsed[key] if key in parsed else coerce(hints[key], value, join(where, key))
              for key, value in data.items()}
    kwargs.update({key: value for key, value in parsed.items() if key not in data})
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        first = message.split(" ", 1)[0]
        if first in names:  # a dataclass's own check names its field first: name the dotted key instead
            raise ConfigError(join(where, message)) from err
        raise ConfigError(f"{where or 'config'}: {message}") from err


def mapping(data: Any, where: str) -> dict[str, Any]:
    """`data` if it is a mapping, else one ConfigError naming `where`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(data).__name__}")
    return data


def coerce(hint: Any, value: Any, where: str, *, from_text: bool = False) -> Any:
    """`value` as type `hint`, or one ConfigError naming `where`. `from_text`: the value comes from a spec string,
    where every value is text, so a string that spells a number fills an int or float field."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where=where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        candidates = [a for a in args if a is not type(None)]
        if from_text and isinstance(value, str) and str in candidates:
            return value
        errors = []
        for arg in candidates:
            try:
                return coerce(arg, value, where, from_text=from_text)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {hint}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return [coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if items and len(items) != len(value):
            raise ConfigError(f"{where} must have {len(items)} items, got {len(value)}")
        return tuple(coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(items, value))) if items \
            else tuple(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where} is {value!r}; choose one of {', '.join(map(repr, args))}")
        return value
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value!r} (null where the key allows no limit)")
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float) and isinstance(value, str) and (from_text or hint is float):
        # YAML 1.1 reads 1e-3 (no dot) as a string; a spec string holds only text.
        try:
            number = hint(value)
        except ValueError:
            raise ConfigError(f"{where} must be {hint.__name__}, got {value!r}") from None
        return coerce(hint, number, where)
    if hint in (int, float, str, bool) and not (isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        raise ConfigError(f"{where} must be {hint.__name__}, got {value!r}")
    return value


def join(where: str, key: str) -> str:
    """The dotted key of `key` inside `where`."""
    return f"{where}.{key}" if where else key


def to_dict(config: Any) -> Any:
    """Plain, YAML-ready data of a (nested) dataclass config: tuples become lists; a type's `to_plain()` is its form."""
    hook = getattr(config, "to_plain", None)
    if hook is not None:
        return hook()
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    if isinstance(config, dict):
        return {k: to_dict(v) for k, v in config.items()}
    return config


def changed_fields(config: Any) -> dict[str, Any]:
    """The fields of dataclass `config` that differ from its class's defaults, as plain data (a component's
    params in a saved config: what the user chose, not every default)."""
    defaults = type(config)()
    return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)
            if getattr(config, f.name) != getattr(defaults, f.name)}


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply one `dotted.key=value` override to nested config data; the value is parsed as YAML."""
    key, sep, raw = override.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {override!r} is not of the form dotted.key=value (e.g. learner.name=ppo)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {override!r}: the value is not valid YAML ({err})") from err
    node = data
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {'.'.join(parts[: i + 1])!r} is not a section")
        node = child
    node[parts[-1]] = value


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error on one line: where (line:column of the file) and what."""
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + (getattr(err, "problem", None) or str(err).splitlines()[0])
