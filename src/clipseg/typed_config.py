"""The one typed config loader: YAML files (with ``base:`` inheritance) into nested dataclasses.

Training runs, evaluation configs, protocol options and model specs are all built here, so that every unknown key
and every value of the wrong type is an error naming its dotted path (``optim.lr``, ``models[1].threshold``).

An experiment file may start from another one and list only what differs::

    base: rd64-pc-plus.yaml     # relative to this file's folder, which it may not leave
    name: rd16-pc-plus
    model: {preset: rd16}

Mappings merge key by key; lists and other values replace the base's.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from .fileio import MAX_CONFIG_BYTES, read_limited_text
from .messages import first_line

BASE_KEY = "base"


def expand_home(value: Any) -> Any:
    """``~/data`` -> ``/home/me/data``; other values unchanged."""
    return os.path.expanduser(value) if isinstance(value, str) else value


HomePath = Annotated[str, expand_home]
"""A path string whose leading ``~`` is expanded."""


def read_yaml(path: str | os.PathLike, *, what: str = "config") -> dict[str, Any]:
    """The mapping a YAML config file describes, with its ``base:`` chain merged in."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return _resolve(path, ())


def _resolve(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    try:
        # A regular UTF-8 file of bounded size: a FIFO or /dev/zero named as a config must not hang the run.
        data = yaml.safe_load(read_limited_text(path, MAX_CONFIG_BYTES, "YAML config"))
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({first_line(error)})") from None
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    data = dict(data)
    if BASE_KEY not in data:
        return data
    base = _base_path(path, data.pop(BASE_KEY))
    seen = chain + (path.resolve(),)
    if base.resolve() in seen:
        names = " -> ".join(p.name for p in seen + (base,))
        raise ValueError(f"{path}: base: the configs inherit from each other in a cycle ({names})")
    return merge(_resolve(base, seen), data)


def _base_path(path: Path, name: Any) -> Path:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{path}: base: expected the file name of another config, got {name!r}")
    folder = path.parent.resolve()
    base = path.parent / name
    if Path(name).is_absolute() or not base.resolve().is_relative_to(folder):
        raise ValueError(f"{path}: base: {name!r} must be a file in {path.parent} (no absolute paths, no '..')")
    if not base.is_file():
        raise FileNotFoundError(f"{path}: base: {name!r} not found ({base})")
    return base


def merge(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `changes` applied: nested mappings merge key by key, anything else is replaced."""
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def build(cls: type, data: Any, key: str = "") -> Any:
    """The dataclass `cls` from a mapping, each value converted to its declared type.

    Raises:
        ValueError: naming the dotted key of an unknown key, a missing required key or a value of the wrong type.
    """
    if not isinstance(data, Mapping):
        where = f"{key}: expected" if key else "expected"
        raise ValueError(f"{where} a mapping of {cls.__name__} settings, got {data!r}")
    prefix = f"{key}." if key else ""
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown config key {prefix + unknown[0]!r} (known: {', '.join(sorted(fields))})")
    missing = [
        name
        for name, f in fields.items()
        if name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ValueError(f"missing required config key {prefix + missing[0]!r}")
    values = {name: coerce(value, hints[name], prefix + name) for name, value in data.items()}
    return cls(**values)


def coerce(value: Any, hint: Any, key: str) -> Any:
    """`value` converted to the type `hint`, or a ValueError naming `key`."""
    if dataclasses.is_dataclass(hint):
        return build(hint, value, key)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        value = coerce(value, args[0], key)
        for convert in hint.__metadata__:
            value = convert(value)
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return coerce(value, option, key)
            except ValueError as error:
                errors.append(error)
        raise errors[0]
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{key}: expected one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and Ellipsis not in args:
            if len(value) != len(args):
                raise ValueError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(coerce(v, a, f"{key}[{k}]") for k, (v, a) in enumerate(zip(value, args)))
        return origin(coerce(v, args[0], f"{key}[{k}]") for k, v in enumerate(value))
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ValueError(f"{key}: expected a mapping, got {value!r}")
        key_type, value_type = args or (Any, Any)
        return {
            coerce(k, key_type, key): coerce(copy.deepcopy(v), value_type, f"{key}.{k}") for k, v in value.items()
        }
    return _scalar(value, hint, key)


def _scalar(value: Any, hint: Any, key: str) -> Any:
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        # YAML 1.1 reads "1e-3" (no dot) as a string, so numeric strings are accepted for floats.
        if isinstance(value, bool):
            raise ValueError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key}: expected a number, got {value!r}") from None
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise TypeError(f"{key}: unsupported config type {hint!r}")


def parse_override(override: str) -> tuple[str, Any]:
    """``"optim.lr=3e-4"`` -> ``("optim.lr", "3e-4")``; the value is parsed as YAML (lists, null, true)."""
    key, separator, text = override.partition("=")
    key = key.strip()
    if not separator or not key:
        raise ValueError(f"override {override!r} must look like section.key=value (e.g. optim.lr=3e-4)")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as error:
        raise ValueError(f"override {override!r}: the value is not valid YAML ({error.problem})") from None
    return key, value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str], *, fixed_depth: int = 2) -> None:
    """Set ``key.path=value`` overrides in a nested dict; keys down to `fixed_depth` levels must exist already
    (deeper ones may be new keys of a free-form mapping such as ``model.architecture``)."""
    for override in overrides:
        key, value = parse_override(override)
        parts = key.split(".")
        node = data
        for depth, part in enumerate(parts[:-1]):
            if part not in node and depth >= fixed_depth:
                node[part] = {}
            if not isinstance(node.get(part), dict):
                raise ValueError(f"unknown config key {key!r}")
            node = node[part]
        if len(parts) <= fixed_depth and parts[-1] not in node:
            raise ValueError(f"unknown config key {key!r}")
        node[parts[-1]] = value


def plain(value: Any) -> Any:
    """Nested mappings and sequences as plain dicts and lists (YAML/JSON-serialisable)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
