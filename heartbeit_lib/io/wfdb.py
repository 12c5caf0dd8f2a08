"""WFDB reader (PhysioNet records, PTB-XL, PhysioNet/CinC Challenge ``.mat`` records): the thin public
:func:`read_wfdb`; the header and signal-file parsing live in :mod:`heartbeit_lib.io._wfdb_format`."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ._wfdb_format import FMT_INVALID, load_mat, norm_sex, parse_dx, read_dat_files, read_wfdb_header
from .errors import (ChecksumError, EmptyFileError, LeadMismatchError, MissingLeadError, MissingSignalFileError,
                     NonFiniteError, UnitsError, UnsupportedFormatError)
from .leads import canonical_lead
from .record import ECGRecord, parse_number, units_factor, validate_signal

#: Header gains of the PhysioNet/CinC Challenge 2020 release known to be wrong, applied by
#: ``read_wfdb(gain="auto")`` to ``.mat`` records only: (record-name regex, header adu/mV,
#: corrected adu/mV, why). The same kind of data was re-issued in 2021 with 1000/mV, and the raw
#: values are microvolts: with the header gain Georgia-2020 amplitudes come out 4.88x too small
#: (+-0.2-0.5 mV), PTB-XL-2020 ones 5x too large (+-7-12 mV) and PTB-2020 (``S``-prefixed, 1000 Hz)
#: ones 2000x too small (flat: rejected).
CINC2020_GAIN_FIXES: tuple[tuple[str, float, float, str], ...] = (
    (r".*", 4880.0, 1000.0, "Georgia, CinC 2020 release (4880/mV; 2021 release: 1000/mV)"),
    (r"HR\d+", 200.0, 1000.0, "PTB-XL, CinC 2020 release (200/mV; PTB-XL and CinC 2021: 1000/mV)"),
    (r"S\d+", 2_000_000.0, 1000.0, "PTB, CinC 2020 release (2,000,000/mV on microvolt values; CinC 2021: 1000/mV)"),
)


def read_wfdb(
    path: str | os.PathLike,
    *,
    gain: str = "auto",
    derive: bool = True,
    verify_checksum: bool = True,
) -> ECGRecord:
    """Read a WFDB record (``.hea`` + ``.dat`` or CinC-style ``.mat``) into microvolts.

    Parameters
    ----------
    path : the record base (``.../00001_hr``) or any of its ``.hea``/``.dat``/``.mat`` files.
    gain : ``"header"`` trusts the header gains; ``"auto"`` (default) also applies
        :data:`CINC2020_GAIN_FIXES` to ``.mat`` records (recorded in ``meta["gain_fix"]``).
    derive : derive III, aVR, aVL, aVF from I and II when missing.
    verify_checksum : compare each signal's first sample and 16-bit checksum with the header
        (when the header gives them) -> :class:`ChecksumError`.

    Notes
    -----
    ``.dat`` signals in formats 16/61/80/24/32 are decoded with numpy, other formats through
    ``wfdb.rdrecord(physical=False)``; ``.mat`` signals through ``scipy.io.loadmat`` (shape and
    dtype checked against the header; wfdb would read the bytes of any ``.mat`` after the byte
    offset as int16). Physical value ``(digital - baseline) / gain`` in the header units (mV,
    uV, V; none = mV per the WFDB spec) times the factor to microvolts, the same arithmetic as
    ``wfdb.rdrecord(...).p_signal``. WFDB invalid-sample markers become NaN and are rejected.
    Channels that are not standard leads are dropped (``meta["dropped_channels"]``).
    """
    if gain not in ("auto", "header"):
        raise ValueError(f"gain must be 'auto' or 'header', got {gain!r}")
    info = read_wfdb_header(path)
    hea, sigs, flags = info["header_path"], info["signals"], info["flags"]
    files, digital = _read_digital(info)
    if verify_checksum and np.array_equal(digital, np.round(digital)):
        _verify_checksums(hea, sigs, digital)
    gains, gain_fix = _gains(info, files, gain)
    x, names, dropped, row_units = _to_microvolts(info, digital, gains)
    meta: dict[str, Any] = {
        "source": "wfdb",
        "record_id": info["base"].name,
        "patient_id": None,
        "site": None,
        "acquisition_time": info["acquisition_time"],
        "source_path": str(hea),
        "header_units": sorted(set(row_units)),
        "header_gain": sorted({s["gain"] for s in sigs}),
        "gain_fix": gain_fix,
        "signal_file": files[0] if len(files) == 1 else files,
        "comments": info["comments"],
        "age": parse_number(info["fields"].get("Age")),
        "sex": norm_sex(info["fields"].get("Sex")),
        # CinC Challenge labels: SNOMED codes (or phase-1 text labels); None = no "#Dx" line.
        "dx": parse_dx(info["fields"].get("Dx")),
        "dropped_channels": dropped,
        "flags": flags,
    }
    return validate_signal(hea, x, info["fs"], names, meta, derive=derive)


def _read_digital(info: dict[str, Any]) -> tuple[list[str], np.ndarray]:
    """The record's signal file names and digital samples ``(n_sig, samples)`` float64, after checking
    that the files exist, are one ``.mat`` or ``.dat`` files, and hold finite, non-empty signals."""
    hea, sigs, n_sig, sig_len = info["header_path"], info["signals"], info["n_sig"], info["sig_len"]
    if sig_len == 0:
        raise EmptyFileError(hea, "header declares 0 samples")
    files = list(dict.fromkeys(s["file"] for s in sigs))
    for fname in files:
        if not (hea.parent / fname).exists():
            raise MissingSignalFileError(hea, f"signal file {fname!r} named in the header does not exist")
    is_mat = [f.lower().endswith(".mat") for f in files]
    if any(is_mat) and (len(files) > 1 or any(s["spf"] != 1 for s in sigs)):
        raise UnsupportedFormatError(hea, f"a .mat signal file must hold all signals, one sample per frame ({files})")
    if all(is_mat):
        digital = load_mat(hea.parent / files[0], hea, n_sig, sig_len).astype(np.float64)
    else:
        digital = read_dat_files(info, info["flags"])
    if not np.isfinite(digital).all():
        bad = [sigs[i]["name"] for i in range(n_sig) if not np.isfinite(digital[i]).all()]
        raise NonFiniteError(hea, f"NaN/inf in the signal file, lead(s) {bad}")
    if digital.shape[1] == 0:
        raise EmptyFileError(hea, "signal file holds 0 samples")
    return files, digital


def _verify_checksums(hea: Path, sigs: list[dict[str, Any]], digital: np.ndarray) -> None:
    """Compare each signal's first sample and 16-bit checksum with the header, when it gives them."""
    for i, s in enumerate(sigs):
        d = digital[i].astype(np.int64)
        if s["initval"] is not None and int(d[0]) != s["initval"]:
            raise ChecksumError(hea, f"signal {s['name']}: first sample {int(d[0])} != header initial value {s['initval']}")
        if s["checksum"] is not None and (int(d.sum()) - s["checksum"]) % 65536:  # written signed or unsigned
            cs = (int(d.sum()) + 32768) % 65536 - 32768
            raise ChecksumError(hea, f"signal {s['name']}: 16-bit checksum {cs} != header checksum {s['checksum']}")


def _gains(info: dict[str, Any], files: list[str], gain: str) -> tuple[list[float | None], dict | None]:
    """Per-signal ADC gains (adu/mV) and the :data:`CINC2020_GAIN_FIXES` entry applied (or None)."""
    gains = [s["gain"] for s in info["signals"]]
    if gain == "auto" and all(f.lower().endswith(".mat") for f in files) and len(set(gains)) == 1 and gains[0] is not None:
        for pattern, bad_gain, good_gain, why in CINC2020_GAIN_FIXES:
            if gains[0] == bad_gain and re.fullmatch(pattern, info["base"].name):
                info["flags"].append(f"header gain {bad_gain:g}/mV replaced by {good_gain:g}/mV: {why}")
                return [good_gain] * info["n_sig"], {"header_gain": bad_gain, "gain": good_gain, "why": why}
    return gains, None


def _to_microvolts(info: dict[str, Any], digital: np.ndarray, gains: list[float | None]
                   ) -> tuple[np.ndarray, list[str], list[str], list[str]]:
    """Physical signal ``(leads, samples)`` in microvolts of the standard-lead channels.

    ``(digital - baseline) / gain`` in the header units times the factor to microvolts; WFDB
    invalid-sample markers become NaN. Returns the signal, its canonical lead names, the dropped
    (non-lead) channel names and the header unit of each kept row.
    """
    hea, sigs, flags = info["header_path"], info["signals"], info["flags"]
    names_raw = [s["name"] for s in sigs]
    rows, names, dropped, row_units = [], [], [], []
    for i, s in enumerate(sigs):
        g = gains[i]
        if g is None or not math.isfinite(g) or g == 0:
            raise UnitsError(hea, f"signal {names_raw[i] or i}: ADC gain {s['gain']!r} (missing or 0 = uncalibrated in WFDB)")
        u = s["units"]
        if not u:
            u = "mV"  # WFDB default physical unit
            flags.append(f"signal {names_raw[i]}: no units in header, WFDB default mV assumed")
        factor = units_factor(hea, u, f"signal {names_raw[i] or i}")
        x = digital[i]
        invalid = FMT_INVALID.get(s["fmt"])
        if invalid is not None and (x == invalid).any():
            x = np.where(x == invalid, np.nan, x)  # WFDB invalid-sample marker (wfdb gives NaN)
        name = canonical_lead(names_raw[i])
        if name is None:
            dropped.append(names_raw[i])
            continue
        with np.errstate(over="ignore"):  # inf from an absurd gain is rejected by validate_signal
            rows.append((x - s["baseline"]) / g * factor)
        names.append(name)
        row_units.append(u)
    if not rows:
        raise MissingLeadError(hea, f"no standard lead among signal names {names_raw}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise LeadMismatchError(hea, f"duplicated lead(s) {dup} in signal names {names_raw}")
    return np.stack(rows), names, dropped, row_units
