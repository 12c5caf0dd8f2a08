"""Fine-tuning tasks (``parameters/tasks/<name>.yaml``, :class:`TaskConfig`, :func:`load_task`) and
their label rules."""

from __future__ import annotations

import ast
import dataclasses
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import yaml

from heartbeit_lib.config import ConfigError, TypedConfig, UnknownParameterError

from .errors import TaskError

TASKS_DIR = Path(__file__).resolve().parents[2] / "parameters" / "tasks"
SPLIT_METHODS = ("group_shuffle", "ptbxl_folds", "none")
LABEL_RULES = ("ptbxl_scp", "ptbxl_benchmark", "csv_label", "csv_threshold", "given", "none")
DEFAULT_FRACTIONS = (0.01, 0.1, 0.25, 0.5, 1.0)


@dataclasses.dataclass(frozen=True)
class TaskConfig(TypedConfig):
    """A labelled (or unlabelled) task over a data source, read from ``parameters/tasks/<name>.yaml``.

    Label rules (``label_rule``)
        ``ptbxl_scp``: positive when ``scp_codes`` holds a diagnostic statement
        (``scp_statements.diagnostic == 1``) whose ``diagnostic_class`` is in ``scp_classes`` with
        likelihood >= ``scp_min_likelihood`` (0 = any, as the PTB-XL benchmark) and not listed in
        ``scp_exclude`` (codes, or prefixes ending in ``*``: ``INJ*``), and, when
        ``infarction_stadia`` is not empty, ``infarction_stadium1`` or ``infarction_stadium2`` is one
        of them. ``require_diagnostic``: records with no diagnostic statement at all (no diagnostic
        superclass) get label -1 (``unassigned``: neither trained nor evaluated), as the PTB-XL benchmark.
        ``ptbxl_benchmark``: a **multi-label** task, the PTB-XL benchmark's label set ``benchmark_task`` (all,
        diagnostic, subdiagnostic, superdiagnostic, form, rhythm; :func:`heartbeit_lib.cohorts.benchmark_labels`):
        one 0/1 column ``label:<class>`` per class in the manifest, ``label`` 1 for records with at least one
        class and -1 (unassigned) for the others. ``csv_label``: 0/1 column ``label_column`` of the labels CSV. ``csv_threshold``:
        positive when ``value_column`` compares to ``threshold`` by ``positive_if`` (``le`` = <=).
        ``given``: labels supplied with the data (demo, in-memory arrays). ``none``: unlabelled (-1).
    Splits (``split``)
        ``group_shuffle``: sklearn ``GroupShuffleSplit`` on patients (``test_size``), then again on the
        remaining patients for validation (``val_size`` of them); ``ptbxl_folds``: ``strat_fold`` in
        ``train_folds`` / ``val_folds`` / ``test_folds``; ``none``: every row ``unassigned``.
        Rows of ``external_site`` become ``external`` in every method.
    """

    name: str = ""
    description: str = ""
    source: str = "any"  # the data source the label rule is written for
    label_rule: str = "given"
    positive_name: str = "positive"  # what label 1 means, for tables and plots
    # ptbxl_scp
    scp_classes: tuple[str, ...] = ()
    scp_min_likelihood: float = 0.0
    scp_exclude: tuple[str, ...] = ()  # statements that do not count; "INJ*" = every code starting with INJ
    require_diagnostic: bool = False  # records without any diagnostic statement -> label -1 (dropped)
    infarction_stadia: tuple[str, ...] = ()
    benchmark_task: str = ""  # ptbxl_benchmark: all | diagnostic | subdiagnostic | superdiagnostic | form | rhythm
    # labels CSV (muse / wfdb): column names
    id_column: str = "ecg_id"
    patient_column: str = "patient_id"
    site_column: str = "site"
    file_column: str = ""  # relative path of the record; empty -> <data_root>/<ecg id>.<ext>
    label_column: str = "label"
    value_column: str = ""
    threshold: float = 40.0
    positive_if: str = "le"
    # splits
    split: str = "group_shuffle"
    test_size: float = 0.2
    val_size: float = 0.1
    external_site: str = ""
    train_folds: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8)
    val_folds: tuple[int, ...] = (9,)
    test_folds: tuple[int, ...] = (10,)
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS

    choices: ClassVar[dict[str, tuple]] = {
        "source": ("any", "ptbxl", "muse", "wfdb", "demo"),
        "label_rule": LABEL_RULES,
        "positive_if": ("le", "lt", "ge", "gt"),
        "split": SPLIT_METHODS,
    }

    def validate(self) -> None:
        where = f"task {self.name!r}"
        if self.label_rule == "ptbxl_scp" and not self.scp_classes:
            raise TaskError(f"{where}: label_rule ptbxl_scp needs scp_classes (e.g. [MI])")
        if self.label_rule == "ptbxl_benchmark":
            from .benchmark import BENCHMARK_TASKS
            if self.benchmark_task not in BENCHMARK_TASKS:
                raise TaskError(f"{where}: label_rule ptbxl_benchmark needs benchmark_task in "
                                f"{list(BENCHMARK_TASKS)}, got {self.benchmark_task!r}")
        if self.label_rule == "csv_threshold" and not self.value_column:
            raise TaskError(f"{where}: label_rule csv_threshold needs value_column (e.g. lvef)")
        if not 0.0 < self.test_size < 1.0:
            raise TaskError(f"{where}: test_size must be in (0, 1), got {self.test_size}")
        if not 0.0 <= self.val_size < 1.0:
            raise TaskError(f"{where}: val_size must be in [0, 1), got {self.val_size}")
        if not self.fractions or any(not 0.0 < f <= 1.0 for f in self.fractions):
            raise TaskError(f"{where}: fractions must lie in (0, 1], got {list(self.fractions)}")
        folds = [*self.train_folds, *self.val_folds, *self.test_folds]
        if len(set(folds)) != len(folds):
            raise TaskError(f"{where}: train/val/test folds overlap: {folds}")

    @property
    def labelled(self) -> bool:
        return self.label_rule != "none"

    @property
    def multilabel(self) -> bool:
        """True for the PTB-XL benchmark's multi-label tasks (one 0/1 column per class)."""
        return self.label_rule == "ptbxl_benchmark"

    def with_overrides(self, **overrides: Any) -> "TaskConfig":
        """A copy with the given fields replaced (``None`` or ``""`` values are ignored)."""
        kw = {k: v for k, v in overrides.items() if v is not None and v != ""}
        return dataclasses.replace(self, **kw) if kw else self


def task_names() -> list[str]:
    """Names of the tasks defined in ``parameters/tasks/*.yaml``."""
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def load_task(name_or_path: "str | os.PathLike | TaskConfig", **overrides: Any) -> TaskConfig:
    """Load a task by name (``parameters/tasks/<name>.yaml``) or from a YAML path.

    Unknown keys raise :class:`TaskError` (a typo like ``extrenal_site`` must not silently
    fall back to the default). ``overrides`` replace fields; ``None``/``""`` values are ignored,
    so a notebook can pass ``split=cfg.split`` with ``""`` meaning "the task's default".
    """
    if isinstance(name_or_path, TaskConfig):
        return name_or_path.with_overrides(**overrides)
    p = Path(name_or_path)
    if p.suffix not in (".yaml", ".yml"):
        p = TASKS_DIR / f"{name_or_path}.yaml"
        if not p.exists():
            raise TaskError(f"task {str(name_or_path)!r}: no file {p}; known tasks: {task_names()}")
    if not p.exists():
        raise TaskError(f"task file {p} does not exist")
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict):
        raise TaskError(f"task file {p}: must hold a mapping, got {type(data).__name__}")
    if "name" in data and data["name"] != p.stem:
        raise TaskError(f"task file {p}: name {data['name']!r} differs from the file name {p.stem!r}")
    data = {"name": p.stem, **data}
    try:
        cfg = TaskConfig.from_dict(data)
    except UnknownParameterError as e:
        raise TaskError(f"task file {p}: {e}") from None
    except ConfigError as e:
        raise TaskError(f"task file {p}: {e}") from None
    return cfg.with_overrides(**overrides)


def ptbxl_labels(db: pd.DataFrame, statements: pd.DataFrame, task: TaskConfig) -> np.ndarray:
    """0/1 labels of PTB-XL rows under a ``ptbxl_scp`` task.

    Parameters
    ----------
    db : DataFrame
        ``ptbxl_database.csv`` rows; ``scp_codes`` as dicts (statement -> likelihood 0-100) or their
        string form; ``infarction_stadium1/2`` columns (used when ``task.infarction_stadia``).
    statements : DataFrame
        ``scp_statements.csv`` indexed by statement code (``diagnostic``, ``diagnostic_class``).
    task : TaskConfig
        ``scp_classes``, ``scp_min_likelihood``, ``scp_exclude``, ``require_diagnostic``, ``infarction_stadia``.

    Returns
    -------
    ndarray int64 (len(db),): 1, 0, or -1 (no diagnostic statement, with ``require_diagnostic``)
    """
    diag = statements[(statements["diagnostic"] == 1) & statements["diagnostic_class"].isin(task.scp_classes)]
    prefixes = tuple(e[:-1] for e in task.scp_exclude if e.endswith("*"))
    codes = {c for c in diag.index if c not in task.scp_exclude and not (prefixes and str(c).startswith(prefixes))}
    scp = db["scp_codes"].map(lambda v: ast.literal_eval(v) if isinstance(v, str) else v)
    pos = scp.map(lambda d: any(k in codes and float(lik) >= task.scp_min_likelihood for k, lik in d.items()))
    pos = np.array(pos.to_numpy(bool))  # a writable copy (pandas may hand out a read-only view)
    if task.infarction_stadia:
        stadia = set(task.infarction_stadia)
        cols = [c for c in ("infarction_stadium1", "infarction_stadium2") if c in db.columns]
        if not cols:
            raise TaskError(f"task {task.name!r}: infarction_stadia given but the table has no "
                            "infarction_stadium1/2 columns")
        acute = np.zeros(len(db), bool)
        for c in cols:
            acute |= db[c].isin(stadia).to_numpy(bool)
        pos = pos & acute
    out = pos.astype(np.int64)
    if task.require_diagnostic:
        any_diag = set(statements.index[statements["diagnostic"] == 1])
        out[~scp.map(lambda d: any(k in any_diag for k in d)).to_numpy(bool)] = -1
    return out


def threshold_labels(values: pd.Series, task: TaskConfig) -> np.ndarray:
    """0/1 labels from a numeric column (e.g. LVEF %), -1 where the value is missing.

    ``positive_if='le'`` with ``threshold=40`` gives label 1 for LVEF <= 40 %.
    """
    v = pd.to_numeric(values, errors="coerce").to_numpy(float)
    op = {"le": np.less_equal, "lt": np.less, "ge": np.greater_equal, "gt": np.greater}[task.positive_if]
    with np.errstate(invalid="ignore"):
        lab = op(v, task.threshold).astype(np.int64)
    lab[~np.isfinite(v)] = -1
    return lab


# ====================================================================== patient hashes
