"""Typed, frozen config dataclasses: fields coerced to and checked against their annotations.

Shared by the stage configs of :mod:`heartbeit_lib.pipeline` and by data definitions outside it
(:class:`heartbeit_lib.cohorts.TaskConfig`), which must not import the pipeline.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Mapping


class ConfigError(ValueError):
    """A notebook/config parameter is unknown, has the wrong type or an invalid value."""


class UnknownParameterError(ConfigError):
    """A parameter name that the notebook/config does not define (e.g. a typo)."""


_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off", "none", ""}


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """Coerce ``value`` to the annotated type ``tp`` or raise :class:`ConfigError`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(name, value, a)
            except ConfigError as e:  # try the next member of the union
                errors.append(str(e))
        raise ConfigError(f"parameter {name!r}: {value!r} matches none of {tp}: {errors}")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"parameter {name!r}: expected a list, got {type(value).__name__} {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        out = [_coerce(f"{name}[{i}]", v, inner) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"parameter {name!r}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"parameter {name!r}: expected a boolean, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"parameter {name!r}: expected an int, got boolean {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"parameter {name!r}: expected an int, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"parameter {name!r}: expected a float, got boolean {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"parameter {name!r}: expected a float, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise ConfigError(f"parameter {name!r}: expected a string, got {value!r}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"parameter {name!r}: cannot coerce {value!r} to {tp}")


@dataclasses.dataclass(frozen=True)
class TypedConfig:
    """Frozen dataclass base whose fields are coerced to and checked against their annotations.

    Subclasses may define ``choices: ClassVar[dict[str, tuple]]`` to restrict string fields
    and ``validate(self)`` for cross-field checks (raise :class:`ConfigError`).
    """

    choices: typing.ClassVar[dict[str, tuple]] = {}

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = _coerce(f.name, getattr(self, f.name), hints[f.name])
            allowed = self.choices.get(f.name)
            if allowed is not None and value not in allowed:
                raise ConfigError(f"parameter {f.name!r}: {value!r} is not one of {list(allowed)}")
            object.__setattr__(self, f.name, value)
        self.validate()

    def validate(self) -> None:  # pragma: no cover - default: nothing to check
        """Cross-field checks; override in subclasses."""

    @classmethod
    def from_dict(cls, params: Mapping[str, Any]):
        """Build from a mapping, rejecting names that are not fields."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - names)
        if unknown:
            raise UnknownParameterError(
                f"{cls.__name__}: unknown parameter(s) {unknown}; valid names are {sorted(names)}"
            )
        return cls(**params)

    def to_dict(self) -> dict:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _plain(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    return v
