"""Typed configs: frozen dataclasses checked against plain YAML/JSON data.

Every plugin (dataset, model, recipe, attack, defense) declares a frozen dataclass ``Config`` whose defaults
are the paper's values.  :func:`parse` turns a mapping into that dataclass and fails with a
:class:`ConfigError` that names the key path, the bad value and the closest valid name, before anything runs.
:func:`to_plain` goes the other way (the canonical, JSON-able form used in cache keys and the database).

The resolution order, written once here and nowhere else:
    dataclass defaults  <  plugin ``per_dataset`` overlay  <  profile overlay  <  sweep entry  <  ``--set``
(the sweep and profile layers are merged in :mod:`bench.sweep`; this module applies the per-dataset layer).
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
import types
import typing
from typing import Any, Iterable, Literal, Mapping, get_args, get_origin

import yaml


class ConfigError(ValueError):
    """Bad user input. ``str(err)`` is one line: ``<file>: <key path>: <what is wrong>; <what is valid>``."""

    def __init__(self, path: str, message: str, file: str | None = None):
        self.path, self.message, self.file = path, message, file
        super().__init__(self._render())

    def _render(self) -> str:
        where = f"{self.file}: " if self.file else ""
        return f"{where}{self.path}: {self.message}" if self.path else f"{where}{self.message}"

    def with_file(self, file: str) -> "ConfigError":
        return ConfigError(self.path, self.message, file)

    def under(self, prefix: str) -> "ConfigError":
        path = f"{prefix}.{self.path}" if self.path and not self.path.startswith("[") else f"{prefix}{self.path}"
        return ConfigError(path, self.message, self.file)


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's float rule: ``1e-4``, ``1E+9`` and ``5e3`` are floats (YAML 1.1, which
    PyYAML implements, wants a dot, so ``1e-4`` became the string '1e-4')."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def load_yaml(text: str, file: str | None = None) -> Any:
    """The one YAML reader of sweep files, profiles, ``--set``/``--only`` values, report specs and claims files.

    Raises:
        ConfigError: a syntax error, as one line naming the file, line and column.
    """
    try:
        return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError("", f"not valid YAML: {where}{err.problem or err.context}", file) from None
    except yaml.YAMLError as err:
        raise ConfigError("", f"not valid YAML: {str(err).splitlines()[0]}", file) from None


def closest(name: str, valid: Iterable[str]) -> str:
    """A ``did you mean`` suffix naming the nearest valid name (or listing the valid ones)."""
    valid = sorted(valid)
    match = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.5)
    if match:
        return f"did you mean '{match[0]}'?"
    shown = ", ".join(valid[:12]) + (", ..." if len(valid) > 12 else "")
    return f"valid: {shown}" if valid else "nothing is valid here"


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin in (tuple, list):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin in (dict, Mapping):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def is_sequence_type(tp: Any) -> bool:
    """True when a field's type is a tuple/list (so a YAML list is its value, not a sweep axis)."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(is_sequence_type(a) for a in get_args(tp) if a is not type(None))
    return origin in (tuple, list) or tp in (tuple, list)


def coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it in canonical form (lists become tuples)."""
    origin = get_origin(tp)
    bad = ConfigError(path, f"expected {_type_name(tp)}, got {value!r}")
    if tp is Any:
        return value
    if origin is Literal:
        if value in get_args(tp):
            return value
        valid = " | ".join(map(str, get_args(tp)))
        raise ConfigError(path, f"{value!r} is not allowed; {closest(str(value), map(str, get_args(tp)))} "
                                f"(valid: {valid})")
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, path)
            except ConfigError as err:
                errors.append(err)
        if len(errors) == 1:
            raise errors[0]
        raise bad
    if origin in (tuple, list) or tp in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise bad
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis or len(args) == 1:
            return tuple(coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        if args:
            if len(args) != len(value):
                raise ConfigError(path, f"expected {len(args)} items, got {len(value)}")
            return tuple(coerce(v, a, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        return tuple(value)
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise bad
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if dataclasses.is_dataclass(tp):
        return parse(tp, value, path)
    if isinstance(value, tp):
        return value
    raise bad


def fields_of(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def hints_of(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def parse(cls: type, data: Mapping[str, Any] | None, path: str = "", ignore: Iterable[str] = ("name",)) -> Any:
    """Build the frozen dataclass ``cls`` from ``data``, checking every key and type.

    Args:
        cls: a dataclass whose fields have defaults (the paper's values).
        data: the user's mapping; keys in ``ignore`` (the plugin ``name``) are skipped.
        path: the key path of ``data`` in its file, for error messages (``grid.defense[2]``).
    Raises:
        ConfigError: unknown key (with the closest field name), wrong type, or missing required field.
    """
    data = dict(data or {})
    for key in ignore:
        data.pop(key, None)
    fields, hints = fields_of(cls), hints_of(cls)
    kwargs = {}
    for key, value in data.items():
        sub = f"{path}.{key}" if path else key
        if key not in fields:
            raise ConfigError(sub, f"unknown key; {closest(key, fields)}")
        kwargs[key] = coerce(value, hints[key], sub)
    try:
        return cls(**kwargs)
    except TypeError as err:  # a field without default was not given
        missing = [f for f, fd in fields.items() if f not in kwargs and fd.default is dataclasses.MISSING
                   and fd.default_factory is dataclasses.MISSING]
        raise ConfigError(path or cls.__name__, f"missing required key(s): {', '.join(missing)}") from err
    except ValueError as err:  # __post_init__ validation
        raise ConfigError(path or cls.__name__, str(err)) from err


def to_plain(obj: Any) -> Any:
    """The canonical JSON-able form: dataclasses to dicts, tuples to lists, sorted keys at hashing time."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, float) and obj.is_integer() and abs(obj) < 2**53:
        return obj  # keep floats as floats: 1.0 and 1 hash differently on purpose only through the schema
    return obj


def canonical_json(obj: Any) -> str:
    return json.dumps(to_plain(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)


def digest(obj: Any) -> str:
    """sha256 hex of the canonical JSON of ``obj`` (the cache-key primitive)."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def with_overrides(cfg: Any, overrides: Mapping[str, Any], path: str = "") -> Any:
    """A copy of the frozen ``cfg`` with ``overrides`` checked and applied (never mutates ``cfg``)."""
    if not overrides:
        return cfg
    merged = {**to_plain(cfg), **dict(overrides)}
    return parse(type(cfg), merged, path, ignore=())


def defaults_of(cls: type) -> dict[str, Any]:
    """Field name -> (type name, default) for ``bench plugins``."""
    out = {}
    hints = hints_of(cls)
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "<required>"
        out[f.name] = (_type_name(hints[f.name]), to_plain(default))
    return out


def field_help(cls: type) -> dict[str, str]:
    """Per-field help text from ``field(metadata={'help': ...})``, used by ``bench plugins``."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}
