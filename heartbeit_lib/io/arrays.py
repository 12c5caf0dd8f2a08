"""ECGs held as numpy arrays: one ``(leads, samples)`` array (:func:`from_numpy`) or an ``(N, leads,
samples)`` ``.npy`` plus an N-row CSV table (:func:`read_numpy_table`)."""

from __future__ import annotations

import math
import os
from io import BytesIO
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .errors import (ECGReadError, LeadMismatchError, MetadataError, MissingFileError, UnknownSamplingRateError,
                     UnsupportedFormatError)
from .leads import CANONICAL_LEADS, canonical_lead
from .record import ECGRecord, read_bytes, units_factor, validate_signal


def from_numpy(
    signal: Any,
    fs: float,
    leads: Sequence[str],
    meta: Mapping[str, Any] | None = None,
    *,
    units: str = "uV",
    derive: bool = True,
    path: str = "<array>",
) -> ECGRecord:
    """Validate a plain array and wrap it in an :class:`ECGRecord`.

    Parameters
    ----------
    signal : (L, T) array in ``units`` (default microvolts).
    fs : sampling rate, Hz.
    leads : L lead names in any spelling (``'aVR'``, ``'v1'``); all must be standard leads.
    meta : optional metadata (``record_id``, ``patient_id``, ``site``, ...).
    units : amplitude unit of ``signal`` (``"uV"``, ``"mV"``, ``"V"``).
    derive : add III, aVR, aVL, aVF from I and II when missing.
    path : name used in error messages.
    """
    x = np.asarray(signal)
    names = [canonical_lead(n) for n in leads]
    unknown = [n for n, c in zip(leads, names) if c is None]
    if unknown:
        raise LeadMismatchError(path, f"unknown lead names {unknown}; expected any of {CANONICAL_LEADS}")
    if x.dtype.kind not in "iuf":
        raise UnsupportedFormatError(path, f"signal dtype {x.dtype} is not numeric")
    factor = units_factor(path, units, "units argument")
    meta = {"source": "numpy", **dict(meta or {})}
    meta.setdefault("source_path", path)
    return validate_signal(path, x.astype(np.float64) * factor if factor != 1.0 else x, fs, names, meta, derive=derive)


def read_numpy_table(
    npy_path: str | os.PathLike,
    table_csv: str | os.PathLike,
    *,
    fs: float | None = None,
    leads: Sequence[str] = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6"),
    units: str = "uV",
    derive: bool = True,
    on_error: str = "raise",
) -> tuple[list[ECGRecord], pd.DataFrame]:
    """Read ECGs stored as one ``(N, leads, samples)`` ``.npy`` array plus an N-row CSV table.

    Parameters
    ----------
    npy_path : ``.npy`` file, array ``(N, L, T)`` in ``units``; memory-mapped.
    table_csv : CSV with N rows in the same order; columns ``record_id``, ``patient_id``,
        ``site``, ``acquisition_time`` are copied into ``meta`` when present, others too. An
        ``fs`` column overrides the ``fs`` argument row by row.
    fs : sampling rate in Hz (required unless the table has ``fs``).
    leads : the L lead names, in array order.
    units : amplitude unit of the array.
    on_error : ``"raise"`` (first bad row raises) or ``"skip"`` (bad rows go to the rejects table).

    Returns
    -------
    records : list of :class:`ECGRecord` for the rows that passed.
    rejects : DataFrame with columns ``row``, ``record_id``, ``error``, ``reason`` (empty with
        ``on_error="raise"``).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    npy_path, table_csv = Path(npy_path), Path(table_csv)
    if not npy_path.exists():
        raise MissingFileError(npy_path, "array file does not exist")
    try:
        arr = np.load(npy_path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UnsupportedFormatError(npy_path, f"not a readable .npy array: {e}") from None
    if arr.ndim != 3:
        raise LeadMismatchError(npy_path, f"expected an (N, leads, samples) array, got shape {arr.shape}")
    data = read_bytes(table_csv, "metadata table")
    try:
        table = pd.read_csv(BytesIO(data), dtype={"record_id": str, "patient_id": str, "site": str})
    except Exception as e:
        raise MetadataError(table_csv, f"cannot parse the table: {type(e).__name__}: {e}") from None
    if len(table) != arr.shape[0]:
        raise MetadataError(table_csv, f"{len(table)} table rows but {npy_path.name} holds {arr.shape[0]} ECGs")
    if fs is None and "fs" not in table.columns:
        raise UnknownSamplingRateError(table_csv, "no fs argument and no 'fs' column in the table")
    records, rejects = [], []
    for i, row in enumerate(table.to_dict("records")):
        meta = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        meta["record_id"] = meta.get("record_id") or f"{npy_path.stem}_{i}"
        meta["source_path"] = f"{npy_path}[{i}]"
        meta["row"] = i
        row_fs = meta.pop("fs", None) if "fs" in meta else None
        try:
            records.append(
                from_numpy(arr[i], row_fs if row_fs is not None else fs, leads, meta, units=units, derive=derive,
                           path=f"{npy_path}[{i}]")
            )
        except ECGReadError as e:
            if on_error == "raise":
                raise
            rejects.append({"row": i, "record_id": meta["record_id"], "error": type(e).__name__, "reason": e.reason})
    return records, pd.DataFrame(rejects, columns=["row", "record_id", "error", "reason"])
