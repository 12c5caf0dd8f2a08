"""PTB-XL metadata: the database table (:func:`load_ptbxl`), SCP statements and diagnostic superclasses."""

from __future__ import annotations

import ast
import math
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

    df["scp_codes"] = [parse_scp_codes(v, csv, f"ecg_id {i}") for i, v in zip(df.index, df["scp_codes"])]
    df["path"] = [str(root / f) if isinstance(f, str) and f.strip() else None for f in df[col]]
    return df


MAX_SCP_CHARS = 2000  # a PTB-XL scp_codes literal is under 100 characters


def parse_scp_codes(value: Any, path: Any = "<scp_codes>", where: str = "") -> dict[str, float]:
    """A PTB-XL ``scp_codes`` cell (``"{'IMI': 100.0, 'SR': 0.0}"``, or an already parsed dict) as a flat
    ``{code: likelihood}`` dict; anything else raises :class:`MetadataError` naming ``path`` and ``where``:
    over :data:`MAX_SCP_CHARS` characters, not a literal, nested or unhashable keys (``{[1]: 2}`` makes
    ``ast.literal_eval`` raise TypeError), deep nesting (RecursionError), keys that are not text or values
    that are not finite numbers. The message quotes at most 40 characters of the cell."""
    where = f"{where}: " if where else ""
    if isinstance(value, str):
        if len(value) > MAX_SCP_CHARS:
            raise MetadataError(path, f"{where}scp_codes of {len(value)} characters, over {MAX_SCP_CHARS}")
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
            raise MetadataError(path, f"{where}scp_codes {value[:40]!r} is not a dict literal "
                                      f"({type(e).__name__})") from None
    if not isinstance(value, dict):
        raise MetadataError(path, f"{where}scp_codes is a {type(value).__name__}, not a dict")
    out = {}
    for k, v in value.items():
        if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise MetadataError(path, f"{where}scp_codes entry {str(k)[:20]!r}: {str(v)[:20]!r} is not code: number")
        out[k] = float(v)
    return out


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
