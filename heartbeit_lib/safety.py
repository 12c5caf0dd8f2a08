"""Checks on values that become file names, shell text or spreadsheet cells (the hostile-input rules).

- :func:`safe_component`: a run id, task or sweep name that becomes one path component is one plain name
  (letters, digits, ``_ . + = -``; no ``/``, no ``..``, not hidden, at most :data:`MAX_COMPONENT` characters).
- :func:`inside`: a path that must stay under a root, checked after resolving symlinks and ``..``.
- :func:`remove_tree`: ``shutil.rmtree`` only of a folder strictly inside a given root, never a symlink.
- :func:`no_control`: text that reaches a Slurm script or a log line holds no control character (a newline in
  an ``#SBATCH`` comment line ends the comment: the rest of the value runs as a command when the job starts).
- :func:`check_sbatch`: every SlurmExecutor parameter typed and in its character set (see the function).
- :func:`csv_safe`: a table whose text cells cannot start a spreadsheet formula (``= + - @``, tab, CR), the one
  helper every CSV this project writes goes through (:func:`write_csv`).

Imports only :mod:`heartbeit_lib.config` (for :class:`ConfigError`), so any layer above ``io`` may use it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import unicodedata
from pathlib import Path
from typing import Any, Mapping

from heartbeit_lib.config import ConfigError

MAX_COMPONENT = 200  # characters; NAME_MAX is 255 bytes and ".lock" / ".json" / "-lr0.001" are appended
_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+=-]*")
_SLURM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.,:+=-]*")  # job name, partition(s), account, qos
_SLURM_CONSTRAINT = re.compile(r"[A-Za-z0-9_.,:+=&|!()\[\]*-]+")  # sbatch --constraint feature expressions
_SBATCH_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


class UnsafeValueError(ConfigError):
    """A value that would leave its folder, inject text into a script, or is otherwise refused; names the key."""


def _has_control(text: str) -> bool:
    """Any C0/C1 control character (newline, CR, NUL, ESC, ...) or a Unicode line/paragraph separator."""
    return any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in text)


def no_control(key: str, value: Any) -> str:
    """``value`` as text with no control character, or :class:`UnsafeValueError` naming ``key``."""
    text = os.fspath(value) if isinstance(value, os.PathLike) else value
    if not isinstance(text, str):
        raise UnsafeValueError(f"{key}: expected text, got {type(value).__name__} {value!r}")
    if _has_control(text):
        raise UnsafeValueError(f"{key}: {text!r} holds a control character (newline, CR, NUL, ...)")
    return text


def safe_component(key: str, value: Any) -> str:
    """``value`` if it is one safe path component, else :class:`UnsafeValueError` naming ``key``.

    Safe: 1-200 characters from ``A-Z a-z 0-9 _ . + = -``, starting with a letter or digit (so never ``.``,
    ``..``, a hidden name or an option-like ``-x``), no ``..`` anywhere, no ``/`` (so never absolute)."""
    text = no_control(key, value)
    if not (_COMPONENT.fullmatch(text) and ".." not in text and len(text) <= MAX_COMPONENT):
        raise UnsafeValueError(f"{key}: {text!r} is not a plain name (1-{MAX_COMPONENT} characters from "
                               "A-Z a-z 0-9 _ . + = -, starting with a letter or digit, no '..'): it becomes a "
                               "folder or file name")
    return text


def inside(key: str, path: str | os.PathLike, root: str | os.PathLike) -> Path:
    """``path`` resolved (symlinks, ``..``), if it lies strictly inside ``root`` (resolved too); else
    :class:`UnsafeValueError` naming ``key``."""
    p, r = Path(path).resolve(), Path(root).resolve()
    if p == r or r not in p.parents:
        raise UnsafeValueError(f"{key}: {path} resolves to {p}, outside {r}")
    return p


def remove_tree(path: str | os.PathLike, root: str | os.PathLike) -> None:
    """``shutil.rmtree(path)`` for a real folder (not a symlink) strictly inside ``root`` after resolution;
    anything else raises :class:`UnsafeValueError` and nothing is deleted."""
    path = Path(path)
    if path.is_symlink():
        raise UnsafeValueError(f"refusing to delete {path}: a symlink (to {os.readlink(path)})")
    inside(f"refusing to delete {path}", path, root)
    shutil.rmtree(path)


def file_name_from(text: Any, default: str = "file", max_chars: int = 100) -> str:
    """A file name made from free text (a record id): characters outside ``A-Z a-z 0-9 _ . -`` become ``_``;
    longer than ``max_chars`` -> its first 80 characters, ``-`` and 12 hex digits of its sha256 (distinct
    ids stay distinct; a 250-character record id no longer fails with "file name too long")."""
    text = str(text)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or default
    if len(name) > max_chars:
        name = f"{name[:80]}-{hashlib.sha256(text.encode('utf-8', 'surrogateescape')).hexdigest()[:12]}"
    return name


# ---------------------------------------------------------------- files of run folders (inputs too)

MAX_RUN_FILE_BYTES = 4 * 2**20  # config.yaml / model.json / metrics.json of a run are a few kB


class RunFileError(ConfigError):
    """A run folder's JSON / YAML file that is not what a run writes (names the file and, where known, the key)."""


def _read_small_text(path: Path, max_bytes: int) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise RunFileError(f"{path}: does not exist") from None
    except OSError as e:
        raise RunFileError(f"{path}: cannot open ({e.strerror or e})") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise RunFileError(f"{path}: not a regular file")
        if st.st_size > max_bytes:
            raise RunFileError(f"{path}: {st.st_size} bytes, over the cap of {max_bytes}")
        data = f.read(max_bytes + 1)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise RunFileError(f"{path}: not UTF-8 text") from None


def read_json_mapping(path: str | os.PathLike, max_bytes: int = MAX_RUN_FILE_BYTES) -> dict:
    """A run folder's JSON file that must hold an object: a regular file of at most ``max_bytes``, valid JSON
    (NaN / Infinity refused), an object; else :class:`RunFileError` naming the file."""
    path = Path(path)
    text = _read_small_text(path, max_bytes)

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        data = json.loads(text, parse_constant=no_constant)
    except (ValueError, RecursionError) as e:
        raise RunFileError(f"{path}: not JSON ({str(e)[:80]})") from None
    if not isinstance(data, dict):
        raise RunFileError(f"{path}: holds a JSON {type(data).__name__}, not an object")
    return data


def read_yaml_mapping(path: str | os.PathLike, max_bytes: int = MAX_RUN_FILE_BYTES) -> dict:
    """A run folder's YAML file (``config.yaml``) that must hold a mapping: a regular file of at most ``max_bytes``,
    plain YAML (``yaml.safe_load``: ``!!python/...`` tags refused) without anchors or aliases (an alias bomb
    expands to gigabytes once walked; :func:`yaml.safe_dump` of a config never writes one); empty -> ``{}``.
    Anything else raises :class:`RunFileError` naming the file."""
    import yaml

    path = Path(path)
    text = _read_small_text(path, max_bytes)
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                raise RunFileError(f"{path}: YAML anchors/aliases are refused (a config never has them)")
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RunFileError(f"{path}: not valid YAML ({str(e).splitlines()[0][:100]})") from None
    except RecursionError:
        raise RunFileError(f"{path}: nested too deeply") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RunFileError(f"{path}: holds a {type(data).__name__}, not a mapping")
    return data


# ---------------------------------------------------------------- Slurm scripts

_INT_KEYS = {"nodes", "ntasks_per_node", "gpus_per_node", "cpus_per_task", "time", "array_parallelism",
             "signal_delay_s", "tasks_per_node", "timeout_min"}
_NAME_KEYS = {"job_name", "partition", "account", "qos"}


def check_sbatch(params: Mapping[str, Any], folder: str | os.PathLike, where: str,
                 names: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Every SlurmExecutor parameter that reaches the sbatch script, checked; returns ``params`` unchanged.

    - counts and minutes (``nodes``, ``gpus_per_node``, ``cpus_per_task``, ``time``, ...): ints >= 0 (not
      strings, not booleans);
    - ``mem``: ``<positive number>GB``;
    - names (``job_name``, ``partition``, ``account``, ``qos``): letters, digits and ``_ . , : + = -``;
      ``constraint``: those plus ``& | ! ( ) [ ] *``;
    - ``additional_parameters`` (any other sbatch option): option names ``[A-Za-z][A-Za-z0-9_-]*``, values
      scalars without control characters (submitit shell-quotes them);
    - ``setup``: shell lines run before the job (by design: they are commands), one line each, no control
      characters;
    - ``folder`` (the log folder, written into ``--output``): no control characters.

    Raises :class:`UnsafeValueError` naming ``where`` and the key (as the user wrote it: ``names`` maps
    SlurmExecutor parameters to the user's option names).
    """
    no_control(f"{where}: log folder (log_dir)", folder)
    for key, value in params.items():
        name = f"{where}: {(names or {}).get(key, key)}"
        if key in _INT_KEYS:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UnsafeValueError(f"{name}: expected a whole number >= 0, got {value!r}")
        elif key == "mem":
            if not re.fullmatch(r"[0-9]+(\.[0-9]+)?GB", str(value)) or float(str(value)[:-2]) <= 0:
                raise UnsafeValueError(f"{name}: expected a positive number of GB, got {value!r}")
        elif key in _NAME_KEYS or key == "constraint":
            pattern = _SLURM_CONSTRAINT if key == "constraint" else _SLURM_NAME
            text = no_control(name, value)
            if not pattern.fullmatch(text) or len(text) > 200:
                raise UnsafeValueError(f"{name}: {text!r} is not a Slurm name (letters, digits, _ . , : + = -)")
        elif key == "additional_parameters":
            if not isinstance(value, Mapping):
                raise UnsafeValueError(f"{name}: expected a mapping option -> value, got {value!r}")
            for opt, v in value.items():
                if not isinstance(opt, str) or not _SBATCH_KEY.fullmatch(opt):
                    raise UnsafeValueError(f"{name}: option name {opt!r} is not [A-Za-z][A-Za-z0-9_-]*")
                if isinstance(v, bool) and v:
                    continue  # a bare flag (#SBATCH --exclusive)
                if not isinstance(v, (str, int, float)) or isinstance(v, bool):
                    raise UnsafeValueError(f"{name}.{opt}: expected text or a number, got {v!r}")
                no_control(f"{name}.{opt}", str(v))
        elif key == "setup":
            if not isinstance(value, (list, tuple)):
                raise UnsafeValueError(f"{name}: expected a list of shell lines, got {value!r}")
            for i, line in enumerate(value):
                no_control(f"{name}[{i}]", line)
        else:
            no_control(name, str(value))
    return dict(params)


# ---------------------------------------------------------------- spreadsheets

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A text cell that a spreadsheet would read as a formula (starts with ``= + - @``, tab or CR) prefixed with
    ``'`` (OWASP's CSV-injection advice); numbers and other values unchanged (``-0.5`` stays a number)."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def csv_safe(df):
    """A copy of the DataFrame ``df`` with every text cell (and column name) passed through :func:`csv_cell`."""
    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object or str(out[col].dtype) in ("string", "str"):
            out[col] = out[col].map(csv_cell)
    out.columns = [csv_cell(c) for c in out.columns]
    return out


def write_csv(df, path: str | os.PathLike, **kw: Any) -> None:
    """``df.to_csv(path, **kw)`` with formula-like text cells neutralised (:func:`csv_safe`)."""
    csv_safe(df).to_csv(path, **kw)
