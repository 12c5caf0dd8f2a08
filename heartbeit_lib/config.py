"""Typed, frozen config dataclasses: fields coerced to and checked against their annotations.

A stage's Config is the one declaration of its notebook's parameters: each field is one line
``name: type = literal  # comment`` and the notebook's ``parameters`` cell is those lines verbatim
(``heartbeit_lib.pipeline.runs.parameters_cell``; ``make params`` writes the cells). Shared by the stage
configs of :mod:`heartbeit_lib.pipeline` and by data definitions outside it
(:class:`heartbeit_lib.cohorts.TaskConfig`), which must not import the pipeline.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml


class ConfigError(ValueError):
    """A notebook/config parameter is unknown, has the wrong type or an invalid value."""


class UnknownParameterError(ConfigError):
    """A parameter name that the notebook/config does not define (e.g. a typo)."""


class RunConfigError(ConfigError):
    """A run folder's ``config.yaml`` is missing, not YAML or not a mapping (the message names the file)."""


def read_run_config(run_dir: str | os.PathLike, cls: type | None = None) -> Any:
    """The resolved parameters a run saved in ``<run_dir>/config.yaml`` (``runs.start_run`` writes it): the one
    reader of that file for every stage.

    Returns a dict (runs made by older code may lack newer keys: callers choose their defaults), or with ``cls``
    a :class:`TypedConfig` built from it (unknown names and bad types raise). Raises :class:`RunConfigError`
    naming the file when it is missing, not YAML or not a mapping.
    """
    from heartbeit_lib.safety import RunFileError, read_yaml_mapping  # safety imports this module

    path = Path(run_dir) / "config.yaml"
    if not path.exists() and not path.is_symlink():
        raise RunConfigError(f"{path}: no such file (not a run folder)")
    try:  # a run folder handed over is an input: regular file, size cap, plain YAML without aliases, a mapping
        data = read_yaml_mapping(path)
    except RunFileError as e:
        raise RunConfigError(str(e)) from None
    return cls.from_dict(data) if cls is not None else data


_TRUE = {"true", "yes", "y", "on", "1"}
_FALSE = {"false", "no", "n", "off", "0"}


def _coerce_scalar(name: str, value: Any, tp: type) -> Any:
    """``value`` as ``tp`` (bool, int, float, str or a class); strings from ``papermill -p`` are parsed."""
    if tp is bool and isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE  # -p flag false arrives as the string "false"
    if tp in (int, float) and isinstance(value, str):
        try:
            value = tp(value)
        except ValueError:
            pass
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if tp is str and isinstance(value, (int, float, os.PathLike)) and not isinstance(value, bool):
        return os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    if tp is Any or (isinstance(value, tp) and not (tp in (int, float) and isinstance(value, bool))):
        return value
    raise ConfigError(f"parameter {name!r}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """Coerce ``value`` to the annotation ``tp`` (scalars, ``X | None``, ``tuple[X, ...]``, ``list[X]``,
    ``dict``) or raise :class:`ConfigError`. ``None`` is only accepted where the type allows it."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        members = [a for a in args if a is not type(None)]
        for a in members:
            try:
                return _coerce(name, value, a)
            except ConfigError:
                continue
        raise ConfigError(f"parameter {name!r}: {value!r} is not a {tp}")
    if origin in (list, tuple):
        if isinstance(value, str) and value.lstrip().startswith("["):
            value = yaml.safe_load(value)  # `-p splits "[val, test]"`: a YAML flow list
        elif isinstance(value, str) and "," not in value:
            value = [value]  # `-p splits test`: one item
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"parameter {name!r}: expected a list (a YAML list, e.g. [a, b]), got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(f"{name}[{i}]", v, inner) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"parameter {name!r}: expected a mapping, got {value!r}")
        return dict(value)
    return _coerce_scalar(name, value, tp)


@dataclasses.dataclass(frozen=True)
class TypedConfig:
    """Frozen dataclass base whose fields are coerced to and checked against their annotations.

    A stage's Config is the one declaration of its notebook's parameters: each field is one line
    ``name: type = literal  # comment`` and the notebook's ``parameters`` cell is those lines verbatim
    (:func:`parameters_cell`; ``make params`` writes the cells, ``tests/pipeline/test_parameters.py`` checks them).
    ``None`` means "auto"; list-valued parameters are tuples here and YAML lists in parameter files.
    Subclasses may define ``choices: ClassVar[dict[str, tuple]]`` to restrict fields and ``validate(self)``
    for cross-field checks (raise :class:`ConfigError`); ``path_components`` names the fields that become a
    folder or file name (default ``run_id``), refused unless they are one plain name.
    """

    choices: typing.ClassVar[dict[str, tuple]] = {}
    # fields whose value becomes one folder or file name: must be one plain name (safety.safe_component)
    path_components: typing.ClassVar[tuple[str, ...]] = ("run_id",)

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = _coerce(f.name, getattr(self, f.name), hints[f.name])
            allowed = self.choices.get(f.name)
            if allowed is not None and value not in allowed:
                raise ConfigError(f"parameter {f.name!r}: {value!r} is not one of {list(allowed)}")
            object.__setattr__(self, f.name, value)
        from heartbeit_lib.safety import safe_component  # safety imports this module
        for name in self.path_components:
            if getattr(self, name, None):
                safe_component(f"parameter {name!r}", getattr(self, name))
        self.validate()

    def validate(self) -> None:
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
