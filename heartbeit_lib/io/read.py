"""One entry point for any ECG file: :func:`read_ecg` picks the reader from the file name."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ._wfdb_format import WFDB_SUFFIXES
from .arrays import from_numpy
from .errors import MissingFileError, UnsupportedFormatError
from .muse import read_muse
from .record import ECGRecord, open_regular
from .wfdb import read_wfdb


def read_ecg(path: str | os.PathLike, **kw: Any) -> ECGRecord:
    """Read one ECG, choosing the reader from the file name.

    ``.xml`` -> :func:`read_muse`; ``.hea`` / ``.dat`` / ``.mat`` or an extensionless WFDB
    record base (``records500/00000/00001_hr``) -> :func:`read_wfdb`; ``.npy`` -> a ``(leads,
    samples)`` array through :func:`from_numpy` (needs ``fs=`` and ``leads=``). Keyword arguments
    go to that reader. Anything else raises :class:`UnsupportedFormatError`.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".xml":
        return read_muse(path, **kw)
    if suffix in WFDB_SUFFIXES:
        return read_wfdb(path, **kw)
    if path.with_name(path.name + ".hea").exists():
        return read_wfdb(path, **kw)
    if suffix == ".npy":
        if "fs" not in kw or "leads" not in kw:
            raise UnsupportedFormatError(path, "a .npy ECG needs fs= and leads= keyword arguments")
        os.close(open_regular(path, ".npy array"))  # a FIFO or a directory: a typed error, never a hang
        try:
            arr = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise MissingFileError(path, "file does not exist") from None
        except (OSError, ValueError) as e:
            raise UnsupportedFormatError(path, f"not a readable .npy array: {e}") from None
        kw.setdefault("meta", {"record_id": path.stem})
        return from_numpy(arr, path=str(path), **kw)
    if not path.exists():
        raise MissingFileError(path, "file does not exist (nor a WFDB header next to it)")
    raise UnsupportedFormatError(path, f"unknown ECG file type {suffix or '(no suffix)'!r}; expected .xml, .hea, .dat, .mat or .npy")
