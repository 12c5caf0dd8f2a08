"""PTB-XL metadata: the database table (:func:`load_ptbxl`), SCP statements and diagnostic superclasses."""

from __future__ import annotations

import ast
import os
from io import BytesIO
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from .errors import MetadataError
from .record import read_bytes


def load_ptbxl(root: str | os.PathLike, sampling_rate: int = 500, database: str = "ptbxl_database.csv") -> pd.DataFrame:
    """PTB-XL metadata, one row per record (index ``ecg_id``).

    Parameters
    ----------
    root : PTB-XL folder (holding ``ptbxl_database.csv``, ``scp_statements.csv``, ``records100/``,
        ``records500/``).
    sampling_rate : 500 (``filename_hr``, ``records500``) or 100 (``filename_lr``).
    database : CSV name under ``root`` (the shared subset also ships ``ptbxl_database_100hz.csv``,
        whose ``filename_hr`` is empty for records without a 500 Hz file).

    Returns
    -------
    DataFrame with every PTB-XL column, ``scp_codes`` parsed to ``dict`` (statement ->
    likelihood %), and ``path``: absolute record path without extension for ``sampling_rate``
    (pass it to :func:`read_ecg`). Rows whose file name for that rate is empty are **kept** with
    ``path = None``; the caller decides (``df[df.path.notna()]``). Paths are not checked on disk.
    """
    if sampling_rate not in (100, 500):
        raise ValueError(f"sampling_rate must be 100 or 500 Hz, got {sampling_rate!r}")
    root = Path(root).resolve()
    csv = root / database
    data = read_bytes(csv, "PTB-XL database table")
    try:
        df = pd.read_csv(BytesIO(data), index_col="ecg_id")
    except Exception as e:
        raise MetadataError(csv, f"cannot read the table: {type(e).__name__}: {e}") from None
    col = "filename_hr" if sampling_rate == 500 else "filename_lr"
    missing = [c for c in ("scp_codes", col) if c not in df.columns]
    if missing:
        raise MetadataError(csv, f"missing column(s) {missing}")

    def parse(v: Any, ecg_id: Any) -> dict:
        try:
            d = ast.literal_eval(v)
        except (ValueError, SyntaxError) as e:
            raise MetadataError(csv, f"ecg_id {ecg_id}: scp_codes {v!r} is not a dict literal ({e})") from None
        if not isinstance(d, dict):
            raise MetadataError(csv, f"ecg_id {ecg_id}: scp_codes {v!r} is not a dict")
        return d

    df["scp_codes"] = [parse(v, i) for i, v in zip(df.index, df["scp_codes"])]
    df["path"] = [str(root / f) if isinstance(f, str) and f.strip() else None for f in df[col]]
    return df


def load_scp_statements(root: str | os.PathLike) -> pd.DataFrame:
    """PTB-XL ``scp_statements.csv`` indexed by statement code (``diagnostic``, ``diagnostic_class``...)."""
    csv = Path(root) / "scp_statements.csv"
    return pd.read_csv(BytesIO(read_bytes(csv, "scp_statements table")), index_col=0)


def ptbxl_superclasses(scp_codes: pd.Series, statements: pd.DataFrame, min_likelihood: float = 0.0) -> pd.Series:
    """Diagnostic superclasses (NORM, MI, STTC, CD, HYP) of each record, sorted lists.

    A statement counts when it is diagnostic (``statements.diagnostic == 1``) and its likelihood
    is ``>= min_likelihood`` (default 0: every listed statement, as the PTB-XL benchmark of
    Strodthoff et al. aggregates). Records without one get ``[]``.
    """
    diag = statements[statements["diagnostic"] == 1]["diagnostic_class"].dropna().to_dict()

    def classes(codes: Mapping[str, float]) -> list[str]:
        return sorted({diag[k] for k, v in codes.items() if k in diag and float(v) >= min_likelihood})

    return scp_codes.apply(classes)
