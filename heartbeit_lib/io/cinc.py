"""PhysioNet/CinC Challenge 2020/2021: record tables from the WFDB headers (:func:`load_cinc`), the
SNOMED CT dx mapping and each record's source database."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._wfdb_format import norm_sex, parse_dx, read_wfdb_header
from .errors import ECGReadError, MetadataError, MissingFileError
from .record import parse_number


_CINC_PREFIXES = (("HR", "PTB-XL"), ("JS", "Ningbo/Chapman-Shaoxing"), ("A", "CPSC"), ("Q", "CPSC-Extra"),
                  ("I", "INCART"), ("S", "PTB"), ("E", "Georgia"))


def cinc_database(record_id: str) -> str | None:
    """Source database of a Challenge record from its name prefix (``JS`` >= 10647 is Ningbo)."""
    for prefix, name in _CINC_PREFIXES:
        if record_id.upper().startswith(prefix):
            if prefix == "JS":
                m = re.match(r"JS(\d+)", record_id.upper())
                if m:
                    return "Ningbo" if int(m.group(1)) >= 10647 else "Chapman-Shaoxing"
            return name
    return None


def load_dx_mapping(root: str | os.PathLike) -> pd.DataFrame:
    """SNOMED CT mapping of the Challenge: index ``code`` (str), columns ``dx``, ``abbreviation``,
    ``scored`` (bool), ``table`` (file it came from).

    Reads ``dx_mapping_scored.csv`` / ``dx_mapping_unscored.csv`` in ``root`` (2021, column
    ``SNOMEDCTCode``) and, for codes absent there, ``root/mappings_2020/`` (column
    ``SNOMED CT Code``).
    """
    root = Path(root)
    frames = []
    for folder in (root, root / "mappings_2020"):
        for kind in ("scored", "unscored"):
            f = folder / f"dx_mapping_{kind}.csv"
            if not f.exists():
                continue
            t = pd.read_csv(f, dtype=str)
            code_col = next((c for c in t.columns if re.sub(r"\s", "", c).lower() == "snomedctcode"), None)
            if code_col is None:
                raise MetadataError(f, f"no SNOMED code column in {list(t.columns)}")
            frames.append(pd.DataFrame({
                "code": t[code_col].str.strip(), "dx": t["Dx"], "abbreviation": t["Abbreviation"],
                "scored": kind == "scored", "table": str(f.relative_to(root)),
            }))
    if not frames:
        raise MissingFileError(root / "dx_mapping_scored.csv", "no Challenge dx mapping tables found")
    out = pd.concat(frames, ignore_index=True).drop_duplicates("code", keep="first")
    return out.set_index("code")


def load_cinc(root: str | os.PathLike, mapping_root: str | os.PathLike | None = None) -> pd.DataFrame:
    """Headers of every Challenge record under ``root`` (searched recursively), one row each.

    Reads headers only (fast); read the signal with ``read_ecg(row.path)``. Dx items are SNOMED
    codes, or - in the phase-1 2020 headers - text abbreviations (``RBBB``, ``AF``) mapped to
    codes through the mapping tables' ``Abbreviation`` column.

    Returns
    -------
    DataFrame indexed by ``record_id`` with ``path`` (absolute, no extension), ``database``,
    ``fs``, ``n_leads``, ``n_samples``, ``duration_s``, ``age`` (float, NaN when unknown), ``sex``
    (M/F/None), ``dx_raw`` (str, None when no ``#Dx`` line), ``dx`` (list of SNOMED code str),
    ``dx_abbrev``, ``dx_scored`` (codes scored by the Challenge), ``dx_unmapped`` (items in no
    table), ``dx_kind`` (``snomed``/``text``/``empty``/``missing``), ``has_signal`` (signal file
    present) and ``error`` (reason the header was rejected, else None).
    """
    root = Path(root).resolve()
    mapping = load_dx_mapping(mapping_root if mapping_root is not None else root)
    by_abbrev = {str(a).upper(): c for c, a in mapping["abbreviation"].items()}
    rows = []
    for hea in sorted(root.rglob("*.hea")):
        rid = hea.stem
        row: dict[str, Any] = {"record_id": rid, "path": str(hea.with_suffix("")), "database": cinc_database(rid),
                               "fs": np.nan, "n_leads": np.nan, "n_samples": np.nan, "duration_s": np.nan,
                               "age": np.nan, "sex": None, "dx_raw": None, "dx": [], "dx_abbrev": [], "dx_scored": [],
                               "dx_unmapped": [], "dx_kind": "missing", "has_signal": False, "error": None}
        try:
            info = read_wfdb_header(hea)
        except ECGReadError as e:
            row["error"] = f"{type(e).__name__}: {e.reason}"
            rows.append(row)
            continue
        fields = info["fields"]
        row.update(fs=info["fs"], n_leads=info["n_sig"], n_samples=info["sig_len"],
                   duration_s=(info["sig_len"] / info["fs"]) if info["sig_len"] else np.nan,
                   has_signal=all((hea.parent / s["file"]).exists() for s in info["signals"]))
        age = parse_number(fields.get("Age"))
        row["age"] = age if age is not None else np.nan
        row["sex"] = norm_sex(fields.get("Sex"))
        if "Dx" in fields:
            items = parse_dx(fields["Dx"]) or []
            row["dx_raw"] = fields["Dx"]
            codes, unmapped, text = [], [], False
            for item in items:
                if item.isdigit():
                    code = item
                elif item.upper() in by_abbrev:
                    code, text = by_abbrev[item.upper()], True
                else:
                    unmapped.append(item)
                    continue
                if code not in mapping.index:
                    unmapped.append(item)
                if code not in codes:
                    codes.append(code)
            row["dx"] = codes
            row["dx_abbrev"] = [mapping.at[c, "abbreviation"] if c in mapping.index else None for c in codes]
            row["dx_scored"] = [c for c in codes if c in mapping.index and bool(mapping.at[c, "scored"])]
            row["dx_unmapped"] = unmapped
            row["dx_kind"] = "empty" if not items else "text" if text else "snomed"
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    return df.set_index("record_id")
