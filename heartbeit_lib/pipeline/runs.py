"""Run folders, typed notebook configs, provenance and the papermill runner.

Every notebook follows the same shape::

    # cell tagged "parameters": literals only
    task: str = "mi"          # task name in parameters/tasks/
    fraction: float = 1.0     # training fraction
    ...
    # next cell
    from heartbeit_lib.pipeline import runs
    from heartbeit_lib.classify import finetune
    cfg = runs.config_from_globals(finetune.FinetuneConfig, globals())
    run_dir = runs.start_run("03_finetune", cfg)

``config_from_globals`` rejects names that are not fields of the config (papermill only
*warns* about unknown ``-p`` names, so a typo like ``-p fracton 0.1`` would silently run the
default) and coerces/validates the types of the fields (``-p flag false`` arrives as the
string ``"false"``).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
PARAMETERS_DIR = REPO_ROOT / "parameters"


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


_IPYTHON_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}


def config_from_globals(cls: type[TypedConfig], namespace: Mapping[str, Any]) -> TypedConfig:
    """Build ``cls`` from a notebook's globals after its parameters (and injected) cells.

    Every public, non-module, non-callable global must be a field of ``cls``: anything else was
    injected by papermill under a name the notebook does not know, which is an error here.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    params, unknown = {}, []
    for k, v in namespace.items():
        if k.startswith("_") or k in _IPYTHON_NAMES:
            continue
        if isinstance(v, types.ModuleType) or callable(v):
            continue
        if k in names:
            params[k] = v
        else:
            unknown.append(k)
    if unknown:
        raise UnknownParameterError(
            f"unknown notebook parameter(s) {sorted(unknown)} for {cls.__name__}; "
            f"valid names are {sorted(names)}"
        )
    return cls(**params)


# ---------------------------------------------------------------- provenance


def git_commit(repo: Path = REPO_ROOT) -> str:
    """Commit hash of the working tree (suffix ``-dirty`` with uncommitted changes), or ``unknown``."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                              text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except Exception:
        return "unknown"


def package_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("heartbeit_lib", "torch", "torchvision", "timm", "numpy", "scipy", "pandas",
                 "scikit-learn", "wfdb", "pot", "grad-cam", "papermill"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_files(paths, root: str | os.PathLike | None = None) -> dict[str, str]:
    """sha256 of each file, keyed by its path relative to ``root`` when given."""
    out = {}
    for p in sorted(map(Path, paths)):
        key = str(p.relative_to(root)) if root is not None else str(p)
        out[key] = file_sha256(p)
    return out


def combined_hash(hashes: Mapping[str, str]) -> str:
    """One sha256 over a mapping of name -> hash (order independent)."""
    h = hashlib.sha256()
    for k in sorted(hashes):
        h.update(f"{k}\0{hashes[k]}\n".encode())
    return h.hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def default_run_id(cfg: TypedConfig | None = None) -> str:
    """Timestamp run id ``YYYYmmdd-HHMMSS`` (UTC)."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")


def start_run(notebook: str, cfg: TypedConfig, run_id: str = "", out_root: str | os.PathLike = "") -> Path:
    """Create ``<out_root>/<notebook>/<run_id>/`` and write ``config.yaml`` and ``run.json``.

    ``out_root`` defaults to ``cfg.out_root`` if the config has one, else ``outputs``
    (relative paths are taken from the current directory, which is the notebook folder's parent
    when run through :func:`execute_notebook`).
    """
    out_root = out_root or getattr(cfg, "out_root", "") or str(REPO_ROOT / "outputs")
    run_id = run_id or getattr(cfg, "run_id", "") or default_run_id(cfg)
    run_dir = Path(out_root) / notebook / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "config.yaml", "w") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
    info = {
        "notebook": notebook,
        "run_id": run_id,
        "git_commit": git_commit(),
        "versions": package_versions(),
        "host": platform.node(),
        "argv": sys.argv,
        "started": _now(),
        "finished": None,
        "data_hashes": {},
    }
    _write_json(run_dir / "run.json", info)
    return run_dir


def finish_run(run_dir: str | os.PathLike, metrics: Mapping[str, Any] | None = None,
               data_hashes: Mapping[str, str] | None = None) -> Path:
    """Record end time, data hashes and ``metrics.json`` in a run folder (marks it complete)."""
    run_dir = Path(run_dir)
    info = json.loads((run_dir / "run.json").read_text())
    info["finished"] = _now()
    if data_hashes:
        info["data_hashes"].update(dict(data_hashes))
    _write_json(run_dir / "run.json", info)
    if metrics is not None:
        _write_json(run_dir / "metrics.json", dict(metrics))
    return run_dir


def is_complete(run_dir: str | os.PathLike) -> bool:
    """True when ``run.json`` exists and records a finish time."""
    p = Path(run_dir) / "run.json"
    if not p.exists():
        return False
    try:
        return json.loads(p.read_text()).get("finished") is not None
    except json.JSONDecodeError:
        return False


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def _write_json(path: Path, obj: Any) -> None:
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (numpy scalars/arrays allowed)."""
    _write_json(Path(path), obj)


def append_jsonl(path: str | os.PathLike, obj: Mapping[str, Any]) -> None:
    """Append one JSON line (e.g. one epoch of a training log)."""
    with open(path, "a") as f:
        f.write(json.dumps(dict(obj), default=_json_default) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------- papermill runner


def load_parameter_files(*files: str | os.PathLike) -> dict[str, Any]:
    """Layer YAML parameter files (a later file wins), like ``papermill -f a.yaml -f b.yaml``."""
    params: dict[str, Any] = {}
    for f in files:
        data = yaml.safe_load(Path(f).read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{f}: parameter file must hold a mapping, got {type(data).__name__}")
        params.update(data)
    return params


def notebook_parameters(notebook: str | os.PathLike) -> dict[str, dict]:
    """Parameters declared in the notebook's ``parameters`` cell (papermill's inspection)."""
    import papermill

    return papermill.inspect_notebook(str(notebook))


def check_parameters(notebook: str | os.PathLike, params: Mapping[str, Any]) -> None:
    """Raise :class:`UnknownParameterError` for names the notebook does not declare."""
    declared = notebook_parameters(notebook)
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise UnknownParameterError(
            f"{Path(notebook).name}: unknown parameter(s) {unknown}; declared: {sorted(declared)}"
        )


def resolve_notebook(name: str) -> Path:
    """``'03_finetune'`` or a path -> the notebook path."""
    p = Path(name)
    if p.suffix == ".ipynb" and p.exists():
        return p
    cands = sorted(NOTEBOOKS_DIR.glob(f"{name}*.ipynb"))
    if len(cands) != 1:
        raise ConfigError(f"notebook {name!r}: expected one match in {NOTEBOOKS_DIR}, found {cands}")
    return cands[0]


def execute_notebook(notebook: str | os.PathLike, params: Mapping[str, Any], run_dir: str | os.PathLike,
                     html: bool = True, kernel_name: str = "python3", progress_bar: bool = False,
                     cwd: str | os.PathLike | None = None) -> Path:
    """Run a notebook with papermill into ``run_dir`` (created first) and render it to HTML.

    The notebook must write its artifacts into the same ``run_dir`` (pass ``out_root`` and
    ``run_id`` parameters so it does). Unknown parameters raise before anything runs.
    Returns the executed notebook path (``<run_dir>/<name>.ipynb``).
    """
    import papermill

    notebook = resolve_notebook(str(notebook))
    check_parameters(notebook, params)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    out_nb = run_dir / notebook.name
    papermill.execute_notebook(str(notebook), str(out_nb), parameters=dict(params),
                               kernel_name=kernel_name, progress_bar=progress_bar,
                               cwd=str(cwd or REPO_ROOT))
    if html:
        notebook_to_html(out_nb)
    return out_nb


def notebook_to_html(nb_path: str | os.PathLike) -> Path:
    """Render an executed notebook to HTML next to it."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(nb_path), as_version=4)
    body, _ = HTMLExporter().from_notebook_node(nb)
    out = Path(nb_path).with_suffix(".html")
    out.write_text(body)
    return out
