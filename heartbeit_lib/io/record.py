"""The record type every reader returns and the checks every reader shares (:func:`validate_signal`)."""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import (AmplitudeError, EmptyFileError, FileTooLargeError, FlatLineError, LeadMismatchError, MissingFileError, MissingLeadError,
                     NonFiniteError, UnitsError, UnknownSamplingRateError, UnreadableFileError,
                     UnsupportedFormatError)
from .leads import CANONICAL_LEADS, LEAD_ORDER, append_limb_leads, canonical_lead

#: A lead whose peak-to-peak range is below this many microvolts is "flat".
FLAT_PTP_UV: float = 10.0
#: Accepted sampling rates, Hz: below 50 Hz no QRS is resolved (the lowest rate in use is PTB-XL's
#: 100 Hz), above 10 kHz is beyond any ECG recorder (PTB: 1 kHz). Outside, resampling to the store
#: rate would also allocate absurd arrays (0.0001 Hz -> 25e9 samples).
FS_MIN_HZ: float = 50.0
FS_MAX_HZ: float = 10_000.0
#: Largest accepted |sample| after scaling, microvolts (50 mV): a body-surface ECG spans a few mV
#: and int16 at the usual 1000 adu/mV saturates at 32.8 mV, so more is a wrong gain or unit.
MAX_ABS_UV: float = 50_000.0
#: Size caps of the text formats (a typed error beyond them): MUSE exports are 0.1-1 MB, WFDB
#: headers a few kB with lines under 200 characters.
MAX_XML_BYTES: int = 16 * 2**20
MAX_HEADER_BYTES: int = 2**20
MAX_LINE_CHARS: int = 4096
#: Signal caps (typed errors beyond them, checked from the header and the file size before reading): at most
#: 64 signals per record (12 leads and a few extra channels) and 16 million samples over all signals (a 30-min
#: 12-lead Holter-style CinC record at 257 Hz is 5.6 million), so a record never allocates more than 128 MB of
#: float64 nor reads more bytes than its header declares.
MAX_SIGNALS: int = 64
MAX_TOTAL_SAMPLES: int = 16_000_000


# Physical unit -> factor to microvolts (WFDB units are free text; MUSE uses MICROVOLTS).
_UNIT_TO_UV = {
    "uv": 1.0, "µv": 1.0, "μv": 1.0, "microvolt": 1.0, "microvolts": 1.0,
    "mv": 1e3, "millivolt": 1e3, "millivolts": 1e3,
    "v": 1e6, "volt": 1e6, "volts": 1e6,
    "nv": 1e-3, "nanovolt": 1e-3, "nanovolts": 1e-3,
}


@dataclass(frozen=True, eq=False)
class ECGRecord:
    """One ECG.

    Attributes
    ----------
    signal : np.ndarray
        ``(leads, samples)`` float32, microvolts.
    fs : float
        Sampling rate in Hz.
    leads : tuple of str
        Canonical names (:data:`CANONICAL_LEADS` order), one per row of ``signal``.
    meta : dict
        ``record_id``, ``patient_id``, ``site``, ``acquisition_time``, ``source_path``,
        ``source``, ``flags`` and source-specific fields (MUSE diagnosis, CinC ``dx`` ...).
    """

    signal: np.ndarray
    fs: float
    leads: tuple[str, ...]
    meta: dict = field(default_factory=dict)

    @property
    def n_samples(self) -> int:
        return int(self.signal.shape[1])

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.fs

    def lead(self, name: str) -> np.ndarray:
        """Samples ``(samples,)`` of one lead (any spelling, e.g. ``"aVR"``), microvolts."""
        canon = canonical_lead(name)
        if canon not in self.leads:
            raise MissingLeadError(self.meta.get("source_path", "<record>"), f"lead {name!r} not in {self.leads}")
        return self.signal[self.leads.index(canon)]

    def select(self, leads: Sequence[str] = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")) -> np.ndarray:
        """``(len(leads), samples)`` float32 microvolts in the requested order."""
        return np.stack([self.lead(n) for n in leads])


def validate_signal(
    path: Any,
    signal: np.ndarray,
    fs: Any,
    leads: Sequence[Any],
    meta: Mapping[str, Any] | None = None,
    *,
    derive: bool = True,
    flat_ptp_uv: float = FLAT_PTP_UV,
) -> ECGRecord:
    """Check a decoded signal and wrap it in an :class:`ECGRecord` (shared by every reader).

    Parameters
    ----------
    path : file (or description) named in errors.
    signal : (L, T) array, microvolts.
    fs : sampling rate, Hz.
    leads : L lead names, already canonical (use :func:`canonical_lead`).
    meta : metadata; the standard keys are added when absent.
    derive : add III, aVR, aVL, aVF from I and II when missing.
    flat_ptp_uv : flat-lead threshold (peak-to-peak, microvolts).

    Raises
    ------
    UnsupportedFormatError, LeadMismatchError, EmptyFileError, UnknownSamplingRateError,
    NonFiniteError, MissingLeadError, FlatLineError
    """
    meta = dict(meta or {})
    x = np.asarray(signal)
    leads = tuple(leads)
    if x.dtype.kind not in "iuf":
        raise UnsupportedFormatError(path, f"signal dtype {x.dtype} is not numeric")
    if x.ndim != 2:
        raise LeadMismatchError(path, f"signal must be 2-D (leads, samples), got shape {x.shape}")
    if x.shape[0] != len(leads):
        hint = " (transposed? expected (leads, samples))" if x.shape[1] == len(leads) else ""
        raise LeadMismatchError(path, f"{x.shape[0]} signal rows but {len(leads)} lead names {leads}{hint}")
    if any(n not in LEAD_ORDER for n in leads):
        raise LeadMismatchError(path, f"lead names {leads} are not canonical {CANONICAL_LEADS}")
    dup = sorted({n for n in leads if leads.count(n) > 1})
    if dup:
        raise LeadMismatchError(path, f"duplicated lead(s) {dup}")
    if x.shape[1] == 0:
        raise EmptyFileError(path, "signal has 0 samples")
    try:
        fs = float(fs)
    except (TypeError, ValueError):
        raise UnknownSamplingRateError(path, f"sampling rate {fs!r} is not a number") from None
    if not math.isfinite(fs) or fs <= 0:
        raise UnknownSamplingRateError(path, f"sampling rate {fs!r} Hz must be finite and > 0")
    if not FS_MIN_HZ <= fs <= FS_MAX_HZ:
        raise UnknownSamplingRateError(path, f"sampling rate {fs:g} Hz outside {FS_MIN_HZ:g}-{FS_MAX_HZ:g} Hz")
    x = x.astype(np.float64, copy=False)
    finite = np.isfinite(x)
    if not finite.all():
        bad = {leads[i]: int((~finite[i]).sum()) for i in range(len(leads)) if not finite[i].all()}
        raise NonFiniteError(path, f"non-finite samples (NaN/inf/invalid marker) per lead: {bad}")
    peak = np.abs(x).max(axis=1)
    if (peak > MAX_ABS_UV).any():
        bad = {leads[i]: f"{peak[i]:.3g} uV" for i in range(len(leads)) if peak[i] > MAX_ABS_UV}
        raise AmplitudeError(path, f"samples beyond +-{MAX_ABS_UV / 1000:g} mV (wrong gain or units?): {bad}")
    missing = [n for n in ("I", "II") if n not in leads]
    if missing:
        raise MissingLeadError(path, f"lead(s) {missing} missing (present: {list(leads)})")
    derived: list[str] = []
    if derive:
        x, leads, derived = append_limb_leads(x, leads)
    ptp = np.ptp(x, axis=1)
    flat = [n for n, p in zip(leads, ptp) if p < flat_ptp_uv]
    if len(flat) == len(leads):
        raise FlatLineError(
            path, f"all {len(leads)} leads are flat (peak-to-peak < {flat_ptp_uv:g} uV; max {ptp.max():.3g} uV)"
        )
    order = sorted(range(len(leads)), key=lambda i: LEAD_ORDER[leads[i]])
    x = np.ascontiguousarray(x[order], dtype=np.float32)
    if not np.isfinite(x).all():  # cannot happen within MAX_ABS_UV; checked after the cast anyway
        raise NonFiniteError(path, "non-finite samples after the float32 cast")
    leads = tuple(leads[i] for i in order)
    for key in ("record_id", "patient_id", "site", "acquisition_time", "source_path"):
        meta.setdefault(key, None)
    meta.setdefault("flags", [])
    meta["derived_leads"] = derived
    meta["flat_leads"] = [n for n in CANONICAL_LEADS if n in flat]
    return ECGRecord(signal=x, fs=fs, leads=leads, meta=meta)


def units_factor(path: Any, units: Any, what: str) -> float:
    key = str(units).strip().lower()
    if key not in _UNIT_TO_UV:
        raise UnitsError(path, f"{what}: unknown amplitude units {units!r} (known: mV, uV, V, nV)")
    return _UNIT_TO_UV[key]


def excerpt(text: Any, n: int = 16) -> str:
    """At most ``n`` characters of file content for an error message, escaped (``repr``: no newline or control
    character reaches a log or a CSV) and marked when cut. Messages never quote more of a file than this."""
    text = str(text)
    return repr(text[:n]) + ("..." if len(text) > n else "")


def open_regular(path: Path, what: str = "file") -> int:
    """A read-only descriptor of ``path`` if it is a regular file (a symlink to one is followed): opened
    non-blocking, so a FIFO never hangs, and checked on the descriptor (no race with a swap). Directories,
    FIFOs, devices (``/dev/zero``) and sockets raise :class:`UnreadableFileError`; the caller closes it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise MissingFileError(path, f"{what} does not exist") from None
    except OSError as e:
        raise UnreadableFileError(path, f"cannot read {what}: {e.strerror or e}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file (a FIFO, device or socket)"
        raise UnreadableFileError(path, f"cannot read {what}: is {kind}")
    return fd


def read_bytes(path: Path, what: str = "file", max_bytes: int | None = None) -> bytes:
    """The bytes of the regular file ``path`` (:func:`open_regular`); typed errors when missing, unreadable,
    not a regular file, empty or over ``max_bytes`` (checked on the open file before reading, so a huge file
    is never loaded)."""
    fd = open_regular(path, what)
    try:
        with os.fdopen(fd, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if max_bytes is not None and size > max_bytes:
                raise FileTooLargeError(path, f"{what} holds {size} bytes, over the cap of {max_bytes}")
            data = f.read() if max_bytes is None else f.read(max_bytes + 1)
        if max_bytes is not None and len(data) > max_bytes:  # grew meanwhile
            raise FileTooLargeError(path, f"{what} is over the cap of {max_bytes} bytes")
    except OSError as e:
        raise UnreadableFileError(path, f"cannot read {what}: {e.strerror or e}") from None
    if not data.strip():
        raise EmptyFileError(path, f"{what} is empty ({len(data)} bytes)")
    return data


def parse_number(text: str | None) -> float | None:
    """``float(text)`` when finite, else None (for optional metadata such as an age)."""
    if text is not None and len(text) > 64:  # no number is that long; float() of a huge token is slow
        return None
    try:
        v = float(text) if text is not None else None
    except ValueError:
        return None
    return v if v is not None and math.isfinite(v) else None
