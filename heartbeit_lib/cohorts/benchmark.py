"""The PTB-XL benchmark's label sets (Strodthoff et al., IEEE JBHI 2021; code ``helme/ecg_ptbxl_benchmarking``).

:func:`benchmark_labels` reproduces ``utils.compute_label_aggregations`` + ``utils.select_data`` of that code with
``min_samples=0`` (its setting for every published table):

- ``all``: every statement of ``scp_codes``, whatever its likelihood (71 classes in v1.0.1);
- ``diagnostic``: statements with ``scp_statements.diagnostic == 1`` (44);
- ``subdiagnostic``: their ``diagnostic_subclass`` (23); ``superdiagnostic``: their ``diagnostic_class`` (5:
  NORM, MI, STTC, CD, HYP); a NaN class is dropped;
- ``form``: statements with ``form == 1`` (19); ``rhythm``: statements with ``rhythm == 1`` (12).

Every likelihood counts (0 = unknown included). A record keeps only classes seen at least once (``min_samples``
0: every class that occurs), and records with no class of the task are dropped. Classes are sorted
(``sklearn.preprocessing.MultiLabelBinarizer``'s order), so column ``j`` is the benchmark's output ``j``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from heartbeit_lib.io.errors import MetadataError
from heartbeit_lib.io.ptbxl import parse_scp_codes

from .errors import TaskError

BENCHMARK_TASKS = ("all", "diagnostic", "subdiagnostic", "superdiagnostic", "form", "rhythm")


def _parse_scp(value: object, database_csv: object, ecg_id: object) -> dict:
    """One ``scp_codes`` cell (``"{'NORM': 100.0, 'SR': 0.0}"``) as a dict of statement -> likelihood
    (:func:`heartbeit_lib.io.ptbxl.parse_scp_codes`, its error as a :class:`TaskError` naming the record)."""
    try:
        return parse_scp_codes(value, database_csv, f"ecg_id {ecg_id}")
    except MetadataError as e:
        raise TaskError(str(e)) from None


def _class_map(task: str, statements: pd.DataFrame) -> dict[str, str] | None:
    """statement -> class of ``task`` (None for ``all``: every statement is its own class)."""
    if task == "all":
        return None
    if task in ("form", "rhythm"):
        return {str(k): str(k) for k in statements.index[statements[task] == 1.0]}
    diag = statements[statements["diagnostic"] == 1.0]
    if task == "diagnostic":
        return {str(k): str(k) for k in diag.index}
    column = {"subdiagnostic": "diagnostic_subclass", "superdiagnostic": "diagnostic_class"}[task]
    return {str(k): str(c) for k, c in diag[column].items() if str(c) != "nan"}  # a NaN class is dropped


def _aggregate(codes: dict, mapping: dict[str, str] | None) -> set[str]:
    """Classes of one record (before the ``min_samples`` filter)."""
    if mapping is None:
        return set(codes)
    return {mapping[k] for k in codes if k in mapping}


def benchmark_labels(database_csv: str | os.PathLike, task: str,
                     scp_statements_csv: str | os.PathLike | None = None) -> pd.DataFrame:
    """The PTB-XL benchmark's multi-hot labels of ``task``.

    Parameters
    ----------
    database_csv : ``ptbxl_database.csv`` (columns ``ecg_id``, ``scp_codes``).
    task : one of :data:`BENCHMARK_TASKS`.
    scp_statements_csv : the statement table; default ``scp_statements.csv`` beside ``database_csv``.

    Returns
    -------
    DataFrame indexed by ``ecg_id`` (int64, the table's order), one int64 0/1 column per class (the class name,
    sorted), only the records with at least one class of the task.

    Raises
    ------
    TaskError : unknown task (the message lists the six), a missing file or column, an unparsable ``scp_codes``.
    """
    if task not in BENCHMARK_TASKS:
        raise TaskError(f"benchmark task {task!r} is not one of {list(BENCHMARK_TASKS)}")
    database_csv = Path(database_csv)
    statements_csv = Path(scp_statements_csv) if scp_statements_csv else database_csv.parent / "scp_statements.csv"
    for p in (database_csv, statements_csv):
        if not p.is_file():
            raise TaskError(f"benchmark_labels: {p} is not a file")
    db = pd.read_csv(database_csv, usecols=lambda c: c in ("ecg_id", "scp_codes"))
    statements = pd.read_csv(statements_csv, index_col=0)
    need = {"ecg_id", "scp_codes"} - set(db.columns)
    need_st = {"diagnostic", "form", "rhythm", "diagnostic_class", "diagnostic_subclass"} - set(statements.columns)
    if need or need_st:
        raise TaskError(f"benchmark_labels: missing column(s) {sorted(need)} in {database_csv} / "
                        f"{sorted(need_st)} in {statements_csv}")
    mapping = _class_map(task, statements)
    sets = [_aggregate(_parse_scp(v, database_csv, e), mapping)
            for e, v in zip(db["ecg_id"], db["scp_codes"])]
    classes = sorted(set().union(*sets)) if sets else []  # min_samples 0: every class seen at least once
    keep = np.array([len(s) > 0 for s in sets], bool)
    y = np.array([[c in s for c in classes] for s, k in zip(sets, keep) if k], dtype=np.int64).reshape(-1, len(classes))
    out = pd.DataFrame(y, columns=classes, index=pd.Index(db["ecg_id"].to_numpy(np.int64)[keep], name="ecg_id"))
    return out
