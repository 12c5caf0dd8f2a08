"""ECG readers: one record type for GE MUSE XML, WFDB (PhysioNet, PTB-XL, CinC) and numpy arrays.

Every reader returns an :class:`ECGRecord`:

* ``signal``: float32 array ``(leads, samples)`` in **microvolts**,
* ``fs``: sampling rate in Hz,
* ``leads``: canonical upper-case lead names in the fixed order
  ``I, II, III, AVR, AVL, AVF, V1, ..., V6`` (only the leads present),
* ``meta``: dict that always holds ``record_id``, ``patient_id``, ``site``, ``acquisition_time``
  (ISO 8601 string or None), ``source_path``, ``source`` (``"muse"``, ``"wfdb"``, ``"numpy"``) and
  ``flags`` (list of warnings that did not warrant a rejection), plus source-specific fields.

Every malformed input raises a subclass of :class:`ECGReadError` (a :class:`ValueError`) whose
message is ``"<file>: <reason>"``; readers never return a record that failed a check and never
let a bare third-party exception escape.

Checks shared by all readers (:func:`validate_signal`):

* the signal is 2-D with one row per lead name, has at least one sample, names are unique;
* ``fs`` is finite and positive (WFDB's silent 250 Hz default for a missing rate is refused);
* every value is finite (WFDB "invalid sample" markers count as non-finite);
* leads I and II are present (the limb leads III, aVR, aVL, aVF are derived from them when
  missing: ``III = II - I``, ``aVR = -(I + II)/2``, ``aVL = I - II/2``, ``aVF = II - I/2``);
* not flat: a lead is *flat* when its peak-to-peak range is below :data:`FLAT_PTP_UV` (10 uV, two
  quantisation steps of a 4.88 uV/bit MUSE export and far below any real QRS, which spans
  hundreds of uV). All leads flat -> :class:`FlatLineError`; some leads flat -> their names are
  listed in ``meta["flat_leads"]`` and the record is returned.
"""

from __future__ import annotations

import ast
import base64
import binascii
import datetime as _dt
import math
import os
import re
import shutil
import tempfile
import zlib
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence
from xml.etree.ElementTree import Element, ParseError

import numpy as np
import pandas as pd

__all__ = [
    "CANONICAL_LEADS",
    "FLAT_PTP_UV",
    "CINC2020_GAIN_FIXES",
    "ECGRecord",
    "ECGReadError",
    "MissingFileError",
    "UnreadableFileError",
    "MissingSignalFileError",
    "EmptyFileError",
    "UnsupportedFormatError",
    "NotXMLError",
    "UnsafeXMLError",
    "WrongRootError",
    "MissingWaveformError",
    "Base64Error",
    "ChecksumError",
    "LeadMismatchError",
    "MissingLeadError",
    "NonFiniteError",
    "FlatLineError",
    "HeaderSyntaxError",
    "HeaderSignalMismatchError",
    "UnknownSamplingRateError",
    "UnitsError",
    "MetadataError",
    "canonical_lead",
    "derive_limb_leads",
    "validate_signal",
    "from_numpy",
    "read_ecg",
    "read_muse",
    "read_wfdb",
    "read_wfdb_header",
    "read_numpy_table",
    "load_ptbxl",
    "load_scp_statements",
    "ptbxl_superclasses",
    "load_cinc",
    "load_dx_mapping",
    "cinc_database",
]

#: Canonical lead names, in the order every :class:`ECGRecord` uses.
CANONICAL_LEADS: tuple[str, ...] = (
    "I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6",
)
_LEAD_ORDER = {name: i for i, name in enumerate(CANONICAL_LEADS)}
_DERIVABLE = ("III", "AVR", "AVL", "AVF")
# Other spellings seen in the wild (Italian/French D1-D3 for the Einthoven leads).
_LEAD_ALIASES = {"D1": "I", "D2": "II", "D3": "III", "DI": "I", "DII": "II", "DIII": "III"}

#: A lead whose peak-to-peak range is below this many microvolts is "flat".
FLAT_PTP_UV: float = 10.0

# Physical unit -> factor to microvolts (WFDB units are free text; MUSE uses MICROVOLTS).
_UNIT_TO_UV = {
    "uv": 1.0, "µv": 1.0, "μv": 1.0, "microvolt": 1.0, "microvolts": 1.0,
    "mv": 1e3, "millivolt": 1e3, "millivolts": 1e3,
    "v": 1e6, "volt": 1e6, "volts": 1e6,
    "nv": 1e-3, "nanovolt": 1e-3, "nanovolts": 1e-3,
}


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
class ECGReadError(ValueError):
    """An ECG file (or array) could not be read. ``.path`` names the file, ``.reason`` says why.

    Subclasses name the kind of problem; ``str(err)`` is ``"<path>: <reason>"``. Picklable (the
    cohort builder sends them between processes).
    """

    def __init__(self, path: Any, reason: str):
        self.path = str(path)
        self.reason = str(reason)
        self.message = f"{self.path}: {self.reason}"
        super().__init__(self.message)

    def __str__(self) -> str:  # OSError subclasses below would otherwise format "[Errno ...]"
        return self.message

    def __reduce__(self):
        return (type(self), (self.path, self.reason))


class MissingFileError(ECGReadError, FileNotFoundError):
    """The file does not exist (also a :class:`FileNotFoundError`)."""


class UnreadableFileError(ECGReadError):
    """The file exists but cannot be read (permissions, a directory, ...)."""


class MissingSignalFileError(MissingFileError):
    """A WFDB header names a signal file (``.dat``/``.mat``) that does not exist."""


class EmptyFileError(ECGReadError):
    """The file is empty, or an XML document without a root element, or holds no samples."""


class UnsupportedFormatError(ECGReadError):
    """Not a format this module reads (unknown suffix, multi-segment WFDB, not a MATLAB file...)."""


class NotXMLError(ECGReadError):
    """The ``.xml`` file is not well-formed XML."""


class UnsafeXMLError(ECGReadError):
    """defusedxml refused the document (entity declarations: XML bomb, external entities)."""


class WrongRootError(ECGReadError):
    """Well-formed XML whose root element is not ``<RestingECG>`` (e.g. GE CardioSoft)."""


class MissingWaveformError(ECGReadError):
    """No waveform of the requested type, no ``<LeadData>``, or no signal array in a ``.mat``."""


class Base64Error(ECGReadError):
    """``WaveFormData`` is missing, not base64, truncated, or has an odd byte count."""


class ChecksumError(ECGReadError):
    """A stored checksum (MUSE ``LeadDataCRC32``, WFDB checksum / first value) does not match."""


class LeadMismatchError(ECGReadError):
    """Lead count or per-lead sample count inconsistent, duplicated lead names."""


class MissingLeadError(ECGReadError):
    """Lead I or II (needed for the derived limb leads) is absent."""


class NonFiniteError(ECGReadError):
    """NaN, inf or WFDB invalid-sample markers in the signal."""


class FlatLineError(ECGReadError):
    """Every lead is flat (peak-to-peak below :data:`FLAT_PTP_UV`)."""


class HeaderSyntaxError(ECGReadError):
    """A WFDB header that cannot be parsed (garbage, binary, missing fields)."""


class HeaderSignalMismatchError(ECGReadError):
    """The signal file does not hold what the header declares (short ``.dat``, wrong ``.mat`` shape)."""


class UnknownSamplingRateError(ECGReadError):
    """Sampling rate missing, not a number, zero, negative or non-finite."""


class UnitsError(ECGReadError):
    """Unknown amplitude units, or a zero / missing / non-finite gain."""


class MetadataError(ECGReadError):
    """A metadata table is missing columns, unparsable, or does not match its signal array."""


# --------------------------------------------------------------------------------------------
# Record type and shared validation
# --------------------------------------------------------------------------------------------
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


def canonical_lead(name: Any) -> str | None:
    """Canonical upper-case lead name (``'aVR'``, ``'avr'``, ``'Lead II'``, ``'v1'`` -> ``AVR``, ``II``,
    ``V1``), or None for a channel that is not one of the 12 standard leads (``'MLII'``, ``'Resp'``)."""
    s = re.sub(r"[\s_]+", "", str(name)).upper()
    if s.startswith("LEAD") and len(s) > 4:
        s = s[4:]
    if s in _LEAD_ORDER:
        return s
    return _LEAD_ALIASES.get(s)


def derive_limb_leads(signal: np.ndarray, leads: Sequence[str]) -> tuple[np.ndarray, tuple[str, ...], list[str]]:
    """Append the limb leads III, aVR, aVL, aVF that are missing, computed from I and II.

    ``III = II - I``, ``aVR = -(I + II)/2``, ``aVL = I - II/2``, ``aVF = II - I/2`` (Einthoven's law
    and Goldberger's augmented leads, same units in and out).

    Parameters
    ----------
    signal : (L, T) array in any amplitude unit.
    leads : L canonical names; must contain I and II.

    Returns
    -------
    signal : (L + k, T) float64, leads : tuple of names, derived : list of the k names added.
    """
    from heartbeit_lib.signals import derive_limb_leads as limb_leads  # deferred: signals imports scipy.signal

    leads = tuple(leads)
    x = np.asarray(signal, dtype=np.float64)
    derived = [n for n in _DERIVABLE if n not in leads]
    if not derived:
        return x, leads, []
    limb = limb_leads(x[leads.index("I")], x[leads.index("II")])
    extra = np.stack([getattr(limb, n) for n in derived])
    return np.concatenate([x, extra]), leads + tuple(derived), derived


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
    if any(n not in _LEAD_ORDER for n in leads):
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
    x = x.astype(np.float64, copy=False)
    finite = np.isfinite(x)
    if not finite.all():
        bad = {leads[i]: int((~finite[i]).sum()) for i in range(len(leads)) if not finite[i].all()}
        raise NonFiniteError(path, f"non-finite samples (NaN/inf/invalid marker) per lead: {bad}")
    missing = [n for n in ("I", "II") if n not in leads]
    if missing:
        raise MissingLeadError(path, f"lead(s) {missing} missing (present: {list(leads)})")
    derived: list[str] = []
    if derive:
        x, leads, derived = derive_limb_leads(x, leads)
    ptp = np.ptp(x, axis=1)
    flat = [n for n, p in zip(leads, ptp) if p < flat_ptp_uv]
    if len(flat) == len(leads):
        raise FlatLineError(
            path, f"all {len(leads)} leads are flat (peak-to-peak < {flat_ptp_uv:g} uV; max {ptp.max():.3g} uV)"
        )
    order = sorted(range(len(leads)), key=lambda i: _LEAD_ORDER[leads[i]])
    x = np.ascontiguousarray(x[order], dtype=np.float32)
    leads = tuple(leads[i] for i in order)
    for key in ("record_id", "patient_id", "site", "acquisition_time", "source_path"):
        meta.setdefault(key, None)
    meta.setdefault("flags", [])
    meta["derived_leads"] = derived
    meta["flat_leads"] = [n for n in CANONICAL_LEADS if n in flat]
    return ECGRecord(signal=x, fs=fs, leads=leads, meta=meta)


def _units_factor(path: Any, units: Any, what: str) -> float:
    key = str(units).strip().lower()
    if key not in _UNIT_TO_UV:
        raise UnitsError(path, f"{what}: unknown amplitude units {units!r} (known: mV, uV, V, nV)")
    return _UNIT_TO_UV[key]


def _read_bytes(path: Path, what: str = "file") -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise MissingFileError(path, f"{what} does not exist") from None
    except OSError as e:
        raise UnreadableFileError(path, f"cannot read {what}: {e.strerror or e}") from None
    if not data.strip():
        raise EmptyFileError(path, f"{what} is empty ({len(data)} bytes)")
    return data


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
    factor = _units_factor(path, units, "units argument")
    meta = {"source": "numpy", **dict(meta or {})}
    meta.setdefault("source_path", path)
    return validate_signal(path, x.astype(np.float64) * factor if factor != 1.0 else x, fs, names, meta, derive=derive)


# --------------------------------------------------------------------------------------------
# GE MUSE RestingECG XML
# --------------------------------------------------------------------------------------------
def _local(tag: Any) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _child(el: Element | None, name: str) -> Element | None:
    if el is None:
        return None
    for c in el:
        if _local(c.tag) == name:
            return c
    return None


def _children(el: Element | None, name: str) -> list[Element]:
    return [] if el is None else [c for c in el if _local(c.tag) == name]


def _text(el: Element | None, name: str) -> str | None:
    c = _child(el, name)
    if c is None or c.text is None:
        return None
    t = c.text.strip()
    return t or None


def _muse_statements(block: Element | None) -> list[str]:
    """Statement lines of a MUSE ``<Diagnosis>``: ``StmtText``s concatenated up to one flagged
    ``ENDSLINE`` (a statement with 0, 1 or 2 ``StmtFlag``s)."""
    lines: list[str] = []
    current: list[str] = []
    for stmt in _children(block, "DiagnosisStatement"):
        text = _text(stmt, "StmtText")
        if text:
            current.append(text)
        flags = {(f.text or "").strip().upper() for f in _children(stmt, "StmtFlag")}
        if "ENDSLINE" in flags and current:
            lines.append(re.sub(r"\s+,", ",", " ".join(current)))
            current = []
    if current:
        lines.append(re.sub(r"\s+,", ",", " ".join(current)))
    return lines


def _muse_datetime(date: str | None, time: str | None) -> str | None:
    """MUSE ``MM-DD-YYYY`` + ``HH:MM:SS`` -> ISO 8601, None when absent or unparsable."""
    if not date:
        return None
    for fmt in ("%m-%d-%Y", "%Y-%m-%d", "%m/%d/%Y"):
        try:
            d = _dt.datetime.strptime(date, fmt)
            break
        except ValueError:
            continue
    else:
        return None
    if time:
        try:
            t = _dt.datetime.strptime(time, "%H:%M:%S").time()
            return _dt.datetime.combine(d.date(), t).isoformat()
        except ValueError:
            pass
    return d.date().isoformat()


def _parse_number(text: str | None) -> float | None:
    try:
        v = float(text) if text is not None else None
    except ValueError:
        return None
    return v if v is not None and math.isfinite(v) else None


def _parse_xml(path: Path, data: bytes) -> Element:
    import defusedxml.ElementTree as DET
    from defusedxml import DefusedXmlException

    try:
        return DET.fromstring(data, forbid_dtd=False, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as e:
        raise UnsafeXMLError(path, f"defusedxml refused the document: {type(e).__name__} ({e})") from None
    except ParseError as e:
        prolog_free = re.sub(rb"<\?.*?\?>|<!--.*?-->|<!DOCTYPE[^>]*>", b"", data, flags=re.S)
        if not prolog_free.strip():  # only a declaration / DOCTYPE / comments
            raise EmptyFileError(path, f"XML document has no root element ({e})") from None
        raise NotXMLError(path, f"not well-formed XML: {e}") from None
    except (ValueError, UnicodeDecodeError, LookupError) as e:  # e.g. unknown encoding declaration
        raise NotXMLError(path, f"cannot parse as XML: {type(e).__name__}: {e}") from None


def read_muse(
    path: str | os.PathLike,
    *,
    waveform: str = "Rhythm",
    derive: bool = True,
    verify_crc: bool = True,
    expected_duration_s: float | None = 10.0,
) -> ECGRecord:
    """Read a GE MUSE ``RestingECG`` XML export.

    Decodes the base64 little-endian int16 ``WaveFormData`` of every ``LeadData`` of the chosen
    ``<Waveform>``, scales by ``LeadAmplitudeUnitsPerBit`` (``LeadAmplitudeUnits`` MICROVOLTS or
    MILLIVOLTS), takes the rate from ``SampleBase * 10**SampleExponent`` and derives III, aVR, aVL,
    aVF from I and II (MUSE stores 8 leads). Parsed with defusedxml (entity declarations refused).

    Parameters
    ----------
    path : ``.xml`` file.
    waveform : ``"Rhythm"`` (10 s strip) or ``"Median"`` (median beat).
    derive : derive the missing limb leads.
    verify_crc : check ``LeadDataCRC32`` (zlib CRC-32 of the decoded bytes) when present.
    expected_duration_s : add a flag to ``meta["flags"]`` when samples / fs differs from this
        (Rhythm only). ``SampleBase`` is trusted over the sample count; None disables the flag.

    Returns
    -------
    ECGRecord with ``signal`` (12, T) float32 microvolts and ``meta`` holding ``patient_id``,
    ``age``, ``sex``, ``site`` (``SiteName`` else ``Site``), ``acquisition_time``, ``diagnosis``
    (statement lines), ``diagnosis_text``, ``original_diagnosis``, ``measurements``, filters.
    """
    path = Path(path)
    data = _read_bytes(path, "MUSE XML file")
    root = _parse_xml(path, data)
    if _local(root.tag) != "RestingECG":
        raise WrongRootError(path, f"root element is <{_local(root.tag)}>, not <RestingECG> (not a GE MUSE resting ECG)")
    waves = _children(root, "Waveform")
    found = [(_text(w, "WaveformType") or "?") for w in waves]
    wave = next((w for w in waves if (_text(w, "WaveformType") or "").lower() == waveform.lower()), None)
    if wave is None:
        raise MissingWaveformError(path, f"no <Waveform> with WaveformType {waveform!r} (found {found})")

    base_txt, exp_txt = _text(wave, "SampleBase"), _text(wave, "SampleExponent")
    base = _parse_number(base_txt)
    try:
        exponent = int(exp_txt) if exp_txt is not None else 0
    except ValueError:
        raise UnknownSamplingRateError(path, f"SampleExponent {exp_txt!r} is not an integer") from None
    if base is None or base <= 0:
        raise UnknownSamplingRateError(path, f"{waveform} SampleBase {base_txt!r} is missing, not a number or <= 0")
    fs = base * 10.0**exponent

    lead_blocks = _children(wave, "LeadData")
    if not lead_blocks:
        raise MissingWaveformError(path, f"{waveform} waveform has no <LeadData>")
    declared = _text(wave, "NumberofLeads")
    if declared is not None and declared.isdigit() and int(declared) != len(lead_blocks):
        raise LeadMismatchError(path, f"NumberofLeads says {declared} but the {waveform} waveform has {len(lead_blocks)} <LeadData>")

    rows: list[np.ndarray] = []
    names: list[str] = []
    dropped: list[str] = []
    flags: list[str] = []
    units_per_bit: set[float] = set()
    for k, ld in enumerate(lead_blocks):
        raw_id = _text(ld, "LeadID")
        if raw_id is None:
            raise LeadMismatchError(path, f"<LeadData> #{k} has no LeadID")
        name = canonical_lead(raw_id)
        label = f"lead {raw_id}"
        upb_txt = _text(ld, "LeadAmplitudeUnitsPerBit")
        upb = _parse_number(upb_txt)
        if upb is None or upb <= 0:
            raise UnitsError(path, f"{label}: LeadAmplitudeUnitsPerBit {upb_txt!r} is missing, not a number or <= 0")
        unit_txt = _text(ld, "LeadAmplitudeUnits")
        if unit_txt is None:
            flags.append(f"{label}: no LeadAmplitudeUnits, assumed MICROVOLTS")
            unit_txt = "MICROVOLTS"
        factor = _units_factor(path, unit_txt, label)
        size = _text(ld, "LeadSampleSize")
        if size is not None and size != "2":
            raise UnsupportedFormatError(path, f"{label}: LeadSampleSize {size} (only 2-byte int16 samples are defined)")
        b64 = _text(ld, "WaveFormData")
        if not b64:
            raise Base64Error(path, f"{label}: WaveFormData is missing or empty")
        b64 = "".join(b64.split())  # base64 is wrapped over many lines, LF or CRLF
        if len(b64) % 4:
            raise Base64Error(path, f"{label}: truncated base64 ({len(b64)} characters is not a multiple of 4)")
        try:
            raw = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError) as e:
            raise Base64Error(path, f"{label}: invalid base64 ({e})") from None
        if len(raw) % 2:
            raise Base64Error(path, f"{label}: odd byte count {len(raw)} (int16 samples need an even number)")
        n = len(raw) // 2
        for tag, expect in (("LeadSampleCountTotal", n), ("LeadByteCountTotal", len(raw))):
            t = _text(ld, tag)
            if t is not None and t.isdigit() and int(t) != expect:
                raise Base64Error(path, f"{label}: decoded {len(raw)} bytes = {n} samples but {tag} says {t} (truncated or padded data)")
        crc_txt = _text(ld, "LeadDataCRC32")
        if verify_crc and crc_txt is not None and crc_txt.isdigit():
            crc = zlib.crc32(raw)
            if crc != int(crc_txt):
                raise ChecksumError(path, f"{label}: CRC-32 of the decoded data is {crc}, LeadDataCRC32 says {crc_txt}")
        if name is None:
            dropped.append(raw_id)
            continue
        if name in names:
            raise LeadMismatchError(path, f"lead {name} appears twice in the {waveform} waveform")
        rows.append(np.frombuffer(raw, dtype="<i2").astype(np.float64) * (upb * factor))
        names.append(name)
        units_per_bit.add(upb * factor)
    lengths = {nm: len(r) for nm, r in zip(names, rows)}
    if len(set(lengths.values())) > 1:
        raise LeadMismatchError(path, f"leads have different sample counts: {lengths}")
    if not rows:
        raise MissingLeadError(path, f"no standard lead among LeadIDs {dropped}")

    demo = _child(root, "PatientDemographics")
    test = _child(root, "TestDemographics")
    age = _parse_number(_text(demo, "PatientAge"))
    gender = _text(demo, "Gender")
    meas_el = _child(root, "RestingECGMeasurements")
    measurements = {_local(c.tag): _parse_number(c.text.strip() if c.text else None) for c in (meas_el if meas_el is not None else [])}
    measurements = {k: v for k, v in measurements.items() if v is not None}
    n_samples = len(rows[0])
    if waveform.lower() == "rhythm" and expected_duration_s is not None:
        dur = n_samples / fs
        if abs(dur - expected_duration_s) > 1e-6:
            flags.append(f"LeadSampleCountTotal {n_samples} / SampleBase {fs:g} Hz = {dur:g} s, not {expected_duration_s:g} s")
    ecg_base = measurements.get("ECGSampleBase")
    if ecg_base and abs(ecg_base - fs) > 1e-9:
        flags.append(f"RestingECGMeasurements/ECGSampleBase {ecg_base:g} differs from SampleBase {fs:g}")
    diagnosis = _muse_statements(_child(root, "Diagnosis"))
    meta: dict[str, Any] = {
        "source": "muse",
        "record_id": path.stem,
        "patient_id": _text(demo, "PatientID"),
        "site": _text(test, "SiteName") or _text(test, "Site"),
        "site_code": _text(test, "Site"),
        "location": _text(test, "LocationName") or _text(test, "Location"),
        "acquisition_time": _muse_datetime(_text(test, "AcquisitionDate"), _text(test, "AcquisitionTime")),
        "acquisition_device": _text(test, "AcquisitionDevice"),
        "source_path": str(path),
        "muse_version": _text(_child(root, "MuseInfo"), "MuseVersion"),
        "waveform": _text(wave, "WaveformType"),
        "age": age,
        "age_units": _text(demo, "AgeUnits"),
        "sex": {"MALE": "M", "FEMALE": "F"}.get((gender or "").upper()),
        "diagnosis": diagnosis,
        "diagnosis_text": "\n".join(diagnosis),
        "original_diagnosis": _muse_statements(_child(root, "OriginalDiagnosis")),
        "measurements": measurements,
        "filters": {
            "highpass": _text(wave, "HighPassFilter"),
            "lowpass": _text(wave, "LowPassFilter"),
            "ac": _text(wave, "ACFilter"),
        },
        "units_per_bit_uv": sorted(units_per_bit),
        "dropped_channels": dropped,
        "flags": flags,
    }
    return validate_signal(path, np.stack(rows), fs, names, meta, derive=derive)


# --------------------------------------------------------------------------------------------
# WFDB (PhysioNet records, PTB-XL, PhysioNet/CinC Challenge .mat records)
# --------------------------------------------------------------------------------------------
_WFDB_SUFFIXES = (".hea", ".dat", ".mat")
#: Every signal-file format code of the WFDB specification.
_WFDB_FORMATS = {"8", "16", "24", "32", "61", "80", "160", "212", "310", "311", "508", "516", "524"}
# Formats decoded here with numpy: code -> (numpy dtype, offset added to the raw value).
_FAST_FORMATS = {"16": ("<i2", 0), "61": (">i2", 0), "80": ("u1", -128), "32": ("<i4", 0), "24": (None, 0)}
# Bytes per sample of the formats whose file size can be predicted.
_FMT_BYTES = {"8": 1.0, "80": 1.0, "16": 2.0, "61": 2.0, "160": 2.0, "24": 3.0, "32": 4.0, "212": 1.5, "310": 4 / 3, "311": 4 / 3}
# Digital value that marks an invalid sample (WFDB convention; wfdb.rdrecord maps it to NaN).
_FMT_INVALID = {"80": -(2**7), "310": -(2**9), "311": -(2**9), "212": -(2**11), "16": -(2**15),
                "61": -(2**15), "160": -(2**15), "24": -(2**23), "32": -(2**31)}

#: Header gains of the PhysioNet/CinC Challenge 2020 release known to be wrong, applied by
#: ``read_wfdb(gain="auto")`` to ``.mat`` records only: (record-name regex, header adu/mV,
#: corrected adu/mV, why). The same kind of data was re-issued in 2021 with 1000/mV, and the raw
#: values are microvolts: with the header gain Georgia-2020 amplitudes come out 4.88x too small
#: (+-0.2-0.5 mV) and PTB-XL-2020 ones 5x too large (+-7-12 mV).
CINC2020_GAIN_FIXES: tuple[tuple[str, float, float, str], ...] = (
    (r".*", 4880.0, 1000.0, "Georgia, CinC 2020 release (4880/mV; 2021 release: 1000/mV)"),
    (r"HR\d+", 200.0, 1000.0, "PTB-XL, CinC 2020 release (200/mV; PTB-XL and CinC 2021: 1000/mV)"),
)

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def _wfdb_base(path: Path) -> Path:
    return path.with_suffix("") if path.suffix.lower() in _WFDB_SUFFIXES else path


def _comment_fields(comments: Iterable[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for c in comments:
        m = re.match(r"^\s*([A-Za-z][A-Za-z0-9_ ]*?)\s*:\s*(.*?)\s*$", c)
        if m and m.group(1) not in out:
            out[m.group(1)] = m.group(2)
    return out


def _norm_sex(s: str | None) -> str | None:
    if not s:
        return None
    s = s.strip().lower()
    return "M" if s in ("m", "male") else "F" if s in ("f", "female") else None


def _parse_dx(value: str | None) -> list[str] | None:
    """``#Dx:`` items in order, empty items and duplicates dropped; None when the line is absent."""
    if value is None:
        return None
    out: list[str] = []
    for item in value.split(","):
        item = item.strip()
        if item and item not in out:
            out.append(item)
    return out


def _wfdb_datetime(tokens: Sequence[str]) -> str | None:
    """Base time/date of a record line -> ISO 8601. WFDB writes ``HH:MM:SS DD/MM/YYYY``; the CinC
    headers write ``DD-Mon-YYYY HH:MM:SS`` (date first), which wfdb 4.3 mis-parses, so parse here."""
    date = time = None
    for tok in tokens:
        if time is None and re.fullmatch(r"\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?", tok):
            parts = [float(p) for p in tok.split(":")] + [0.0]
            try:
                time = _dt.time(int(parts[0]), int(parts[1]), int(parts[2]))
            except ValueError:
                return None
        elif date is None:
            for fmt in ("%d/%m/%Y", "%d-%b-%Y"):
                try:
                    date = _dt.datetime.strptime(tok, fmt).date()
                    break
                except ValueError:
                    continue
    if date is None:
        return None
    return _dt.datetime.combine(date, time or _dt.time(0, 0)).isoformat()


def _parse_signal_line(hea: Path, k: int, line: str) -> dict[str, Any]:
    """One WFDB signal line: ``file fmt[xspf][:skew][+offset] [gain[(baseline)][/units] [adcres
    [adczero [initval [checksum [blocksize [description]]]]]]]``."""
    tok = line.split()
    where = f"signal line {k + 1} {line!r}"
    if len(tok) < 2:
        raise HeaderSyntaxError(hea, f"{where}: needs at least a file name and a format")
    m = re.fullmatch(r"(\d+)(?:x(\d+))?(?::(\d+))?(?:\+(\d+))?", tok[1])
    if not m:
        raise HeaderSyntaxError(hea, f"{where}: format {tok[1]!r} is not WFDB syntax")
    if m.group(1) not in _WFDB_FORMATS:
        raise UnsupportedFormatError(hea, f"{where}: {m.group(1)!r} is not a WFDB signal format")
    sig: dict[str, Any] = {
        "file": tok[0], "fmt": m.group(1), "spf": int(m.group(2) or 1), "skew": int(m.group(3) or 0),
        "offset": int(m.group(4) or 0), "gain": None, "baseline": None, "units": None, "adczero": 0,
        "initval": None, "checksum": None, "name": " ".join(tok[8:]) if len(tok) > 8 else "",
    }
    if len(tok) > 2:
        g = re.fullmatch(rf"({_NUM})(?:\(([-+]?\d+)\))?(?:/(\S+))?", tok[2])
        if not g:
            raise HeaderSyntaxError(hea, f"{where}: gain {tok[2]!r} is not 'gain(baseline)/units'")
        sig["gain"] = float(g.group(1))
        sig["baseline"] = int(g.group(2)) if g.group(2) is not None else None
        sig["units"] = g.group(3)
    for i, key in ((3, "adcres"), (4, "adczero"), (5, "initval"), (6, "checksum"), (7, "blocksize")):
        if len(tok) > i:
            if not re.fullmatch(r"[-+]?\d+", tok[i]):
                raise HeaderSyntaxError(hea, f"{where}: {key} {tok[i]!r} is not an integer")
            sig[key] = int(tok[i])
    if sig["baseline"] is None:
        sig["baseline"] = sig["adczero"]  # WFDB: baseline defaults to the ADC zero
    return sig


def read_wfdb_header(path: str | os.PathLike) -> dict[str, Any]:
    """Parse and check a WFDB header (``.hea``) without reading the signal.

    A strict parser of the WFDB header syntax (wfdb 4.3's parser costs ~15 ms per header under
    pandas 3 - more than reading the signal - and accepts things we must refuse). Refuses a
    missing sampling rate (WFDB would silently assume 250 Hz), a signal-line count that
    disagrees with the record line, multi-segment records; repairs the one quirk of the CinC
    Georgia headers (``E07500.mat`` as the record name on line 1), noting it in ``flags``.

    Returns
    -------
    dict with ``header_path``, ``base`` (record path without extension), ``record_name``,
    ``n_sig``, ``fs`` (Hz), ``sig_len`` (None when absent), ``acquisition_time``, ``signals``
    (one dict per signal line: ``file``, ``fmt``, ``spf``, ``skew``, ``offset``, ``gain``,
    ``baseline``, ``units``, ``initval``, ``checksum``, ``name``), ``comments``, ``fields``
    (``Key: value`` comments), ``flags``, ``fixed_text`` (repaired header text, or None).
    """
    path = Path(path)
    base = _wfdb_base(path)
    hea = base.with_name(base.name + ".hea")
    if not hea.exists():
        raise MissingFileError(hea, "WFDB header (.hea) does not exist")
    text = _read_bytes(hea, "WFDB header").decode("latin-1")
    if re.search(r"[\x00-\x08\x0e-\x1f\x7f]", text):
        raise HeaderSyntaxError(hea, "binary bytes in the header: not a WFDB text header")
    lines = text.splitlines()
    spec_idx = [i for i, ln in enumerate(lines) if ln.strip() and not ln.strip().startswith("#")]
    comments = [ln.strip().lstrip("#").strip() for ln in lines if ln.strip().startswith("#")]
    if not spec_idx:
        raise HeaderSyntaxError(hea, "no record line (only comments)")
    record_line = lines[spec_idx[0]].split("#")[0].strip()
    tokens = record_line.split()
    flags: list[str] = []
    fixed_text = None
    m = re.fullmatch(r"([^/]+)\.(mat|dat|hea)", tokens[0], flags=re.I)
    if m:
        flags.append(f"record name {tokens[0]!r} on line 1 carried a file suffix (stripped)")
        tokens[0] = m.group(1)
        lines[spec_idx[0]] = " ".join(tokens)
        fixed_text = "\n".join(lines) + "\n"
    if "/" in tokens[0]:
        raise UnsupportedFormatError(hea, f"multi-segment record {tokens[0]!r} is not supported")
    if len(tokens) < 2 or not tokens[1].isdigit():
        raise HeaderSyntaxError(hea, f"record line {record_line!r} has no signal count (expected 'name n_sig fs n_samples ...')")
    n_sig = int(tokens[1])
    if n_sig == 0:
        raise MissingWaveformError(hea, "header declares 0 signals")
    if len(tokens) < 3:
        raise UnknownSamplingRateError(hea, f"record line {record_line!r} gives no sampling frequency (WFDB would silently assume 250 Hz)")
    fs_m = re.fullmatch(rf"({_NUM})(/{_NUM})?(\(.*\))?", tokens[2])
    if not fs_m:
        raise UnknownSamplingRateError(hea, f"sampling frequency {tokens[2]!r} on the record line is not a number")
    fs = float(fs_m.group(1))
    if not math.isfinite(fs) or fs <= 0:
        raise UnknownSamplingRateError(hea, f"sampling frequency {tokens[2]!r} Hz must be finite and > 0")
    sig_len = None
    if len(tokens) > 3:
        if not tokens[3].isdigit():
            raise HeaderSyntaxError(hea, f"number of samples {tokens[3]!r} on the record line is not an integer")
        sig_len = int(tokens[3])
    if len(spec_idx) - 1 != n_sig:
        raise LeadMismatchError(hea, f"record line declares {n_sig} signals but {len(spec_idx) - 1} signal lines follow")
    signals = [_parse_signal_line(hea, k, lines[i].strip()) for k, i in enumerate(spec_idx[1:])]
    return {
        "header_path": hea, "base": base, "record_name": tokens[0], "n_sig": n_sig, "fs": fs, "sig_len": sig_len,
        "acquisition_time": _wfdb_datetime(tokens[4:]), "signals": signals, "comments": comments,
        "fields": _comment_fields(comments), "flags": flags, "fixed_text": fixed_text,
    }


def _load_mat(mat: Path, hea: Path, n_sig: int, sig_len: int | None) -> np.ndarray:
    """Signal array ``(n_sig, sig_len)`` from a MATLAB file (CinC: variable ``val``, int16)."""
    import scipy.io

    if mat.stat().st_size == 0:
        raise EmptyFileError(mat, f"signal file is empty (named in {hea.name})")
    try:
        scipy.io.matlab.matfile_version(str(mat))
    except Exception as e:
        raise UnsupportedFormatError(mat, f"not a MATLAB file ({type(e).__name__}: {e}); named in {hea.name}") from None
    try:
        content = scipy.io.loadmat(str(mat))
    except Exception as e:
        raise HeaderSignalMismatchError(mat, f"corrupt or truncated MATLAB file ({type(e).__name__}: {e}); named in {hea.name}") from None
    arrays = {k: v for k, v in content.items() if not k.startswith("__") and isinstance(v, np.ndarray)}
    if "val" in arrays:
        arr = arrays["val"]
    elif len(arrays) == 1:
        arr = next(iter(arrays.values()))
    else:
        raise MissingWaveformError(mat, f"no 'val' signal array (variables: {sorted(arrays)}); named in {hea.name}")
    if arr.ndim != 2 or arr.dtype.kind not in "iuf":
        raise HeaderSignalMismatchError(mat, f"signal array has shape {arr.shape} dtype {arr.dtype}, expected 2-D numeric; named in {hea.name}")
    if arr.shape[0] != n_sig or (sig_len is not None and arr.shape[1] != sig_len):
        raise HeaderSignalMismatchError(
            mat, f"holds an array of shape {arr.shape} but header {hea.name} declares {n_sig} signals x {sig_len} samples"
        )
    return arr


def _read_dat_files(info: dict[str, Any], flags: list[str]) -> np.ndarray:
    """Digital samples ``(n_sig, sig_len)`` float64 of a ``.dat`` record.

    Formats 16, 61, 80, 24, 32 with one sample per frame and no skew are decoded with numpy
    (frame-interleaved samples after the byte offset); anything else goes to
    ``wfdb.rdrecord(physical=False)``.
    """
    hea, sigs, n_sig, sig_len = info["header_path"], info["signals"], info["n_sig"], info["sig_len"]
    per_file: dict[str, list[int]] = {}
    for i, s in enumerate(sigs):
        per_file.setdefault(s["file"], []).append(i)
    for fname, idx in per_file.items():
        if len({sigs[i]["fmt"] for i in idx}) > 1 or len({sigs[i]["offset"] for i in idx}) > 1:
            raise HeaderSyntaxError(hea, f"signals stored in {fname} disagree on format or byte offset")
        f = hea.parent / fname
        size = f.stat().st_size
        if size == 0:
            raise EmptyFileError(f, f"signal file is empty (named in {hea.name})")
        fmt, offset = sigs[idx[0]]["fmt"], sigs[idx[0]]["offset"]
        if sig_len is not None and fmt in _FMT_BYTES:
            spf = sum(sigs[i]["spf"] for i in idx)
            expected = offset + math.ceil(sig_len * spf * _FMT_BYTES[fmt])
            if size < expected:
                raise HeaderSignalMismatchError(
                    f, f"holds {size} bytes but header {hea.name} declares {len(idx)} signals x {sig_len} samples "
                    f"in format {fmt} ({expected} bytes): short signal file"
                )
            if size > expected:
                flags.append(f"{fname}: {size - expected} bytes beyond what the header declares")
    fast = all(s["fmt"] in _FAST_FORMATS and s["spf"] == 1 and s["skew"] == 0 for s in sigs)
    if fast:
        out = np.empty((n_sig, 0), dtype=np.float64)
        for fname, idx in per_file.items():
            fmt, offset = sigs[idx[0]]["fmt"], sigs[idx[0]]["offset"]
            raw = (hea.parent / fname).read_bytes()[offset:]
            width = int(_FMT_BYTES[fmt])
            n_frames = len(raw) // (width * len(idx)) if sig_len is None else sig_len
            raw = raw[: n_frames * width * len(idx)]
            if fmt == "24":
                b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
                v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
                v = np.where(v >= 2**23, v - 2**24, v)
            else:
                dtype, shift = _FAST_FORMATS[fmt]
                v = np.frombuffer(raw, dtype=dtype).astype(np.int64) + shift
            block = v.reshape(n_frames, len(idx)).T.astype(np.float64)
            if out.shape[1] == 0:
                out = np.empty((n_sig, n_frames), dtype=np.float64)
            elif block.shape[1] != out.shape[1]:
                raise HeaderSignalMismatchError(hea, f"signal files hold different numbers of samples ({block.shape[1]} vs {out.shape[1]})")
            out[idx] = block
        return out
    import wfdb  # exotic formats (212, 310, 311, 8, 160, FLAC), multi-frame or skewed signals

    try:
        if info["fixed_text"] is None:
            r = wfdb.rdrecord(str(info["base"]), physical=False)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / hea.name).write_text(info["fixed_text"], encoding="latin-1")
                for fname in per_file:
                    try:
                        os.symlink((hea.parent / fname).resolve(), Path(tmp) / fname)
                    except OSError:
                        shutil.copyfile(hea.parent / fname, Path(tmp) / fname)
                r = wfdb.rdrecord(str(Path(tmp) / info["base"].name), physical=False)
    except Exception as e:  # wfdb raises ValueError, IndexError, its own errors...
        raise HeaderSignalMismatchError(hea, f"wfdb could not read the signal: {type(e).__name__}: {e}") from None
    if r.d_signal is None or r.d_signal.shape[1] != n_sig:
        raise HeaderSignalMismatchError(hea, f"wfdb returned no signal or the wrong number of signals for {n_sig} declared")
    return np.asarray(r.d_signal, dtype=np.float64).T


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
    hea, base, sigs, flags = info["header_path"], info["base"], info["signals"], info["flags"]
    n_sig, sig_len = info["n_sig"], info["sig_len"]
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
        digital = _load_mat(hea.parent / files[0], hea, n_sig, sig_len).astype(np.float64)
    else:
        digital = _read_dat_files(info, flags)
    names_raw = [s["name"] for s in sigs]
    if not np.isfinite(digital).all():
        bad = [names_raw[i] for i in range(n_sig) if not np.isfinite(digital[i]).all()]
        raise NonFiniteError(hea, f"NaN/inf in the signal file, lead(s) {bad}")
    if digital.shape[1] == 0:
        raise EmptyFileError(hea, "signal file holds 0 samples")

    if verify_checksum and np.array_equal(digital, np.round(digital)):
        for i, s in enumerate(sigs):
            d = digital[i].astype(np.int64)
            if s["initval"] is not None and int(d[0]) != s["initval"]:
                raise ChecksumError(hea, f"signal {names_raw[i]}: first sample {int(d[0])} != header initial value {s['initval']}")
            if s["checksum"] is not None and (int(d.sum()) - s["checksum"]) % 65536:  # written signed or unsigned
                cs = (int(d.sum()) + 32768) % 65536 - 32768
                raise ChecksumError(hea, f"signal {names_raw[i]}: 16-bit checksum {cs} != header checksum {s['checksum']}")

    gains = [s["gain"] for s in sigs]
    gain_fix = None
    if gain == "auto" and all(is_mat) and len(set(gains)) == 1 and gains[0] is not None:
        for pattern, bad_gain, good_gain, why in CINC2020_GAIN_FIXES:
            if gains[0] == bad_gain and re.fullmatch(pattern, base.name):
                gain_fix = {"header_gain": bad_gain, "gain": good_gain, "why": why}
                gains = [good_gain] * n_sig
                flags.append(f"header gain {bad_gain:g}/mV replaced by {good_gain:g}/mV: {why}")
                break

    rows, names, dropped, row_units = [], [], [], []
    for i, s in enumerate(sigs):
        g = gains[i]
        if g is None or not math.isfinite(g) or g == 0:
            raise UnitsError(hea, f"signal {names_raw[i] or i}: ADC gain {s['gain']!r} (missing or 0 = uncalibrated in WFDB)")
        u = s["units"]
        if not u:
            u = "mV"  # WFDB default physical unit
            flags.append(f"signal {names_raw[i]}: no units in header, WFDB default mV assumed")
        factor = _units_factor(hea, u, f"signal {names_raw[i] or i}")
        x = digital[i]
        invalid = _FMT_INVALID.get(s["fmt"])
        if invalid is not None and (x == invalid).any():
            x = np.where(x == invalid, np.nan, x)  # WFDB invalid-sample marker (wfdb gives NaN)
        name = canonical_lead(names_raw[i])
        if name is None:
            dropped.append(names_raw[i])
            continue
        rows.append((x - s["baseline"]) / g * factor)
        names.append(name)
        row_units.append(u)
    if not rows:
        raise MissingLeadError(hea, f"no standard lead among signal names {names_raw}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise LeadMismatchError(hea, f"duplicated lead(s) {dup} in signal names {names_raw}")

    fields = info["fields"]
    meta: dict[str, Any] = {
        "source": "wfdb",
        "record_id": base.name,
        "patient_id": None,
        "site": None,
        "acquisition_time": info["acquisition_time"],
        "source_path": str(hea),
        "header_units": sorted(set(row_units)),
        "header_gain": sorted({s["gain"] for s in sigs}),
        "gain_fix": gain_fix,
        "signal_file": files[0] if len(files) == 1 else files,
        "comments": info["comments"],
        "age": _parse_number(fields.get("Age")),
        "sex": _norm_sex(fields.get("Sex")),
        # CinC Challenge labels: SNOMED codes (or phase-1 text labels); None = no "#Dx" line.
        "dx": _parse_dx(fields.get("Dx")),
        "dropped_channels": dropped,
        "flags": flags,
    }
    return validate_signal(hea, np.stack(rows), info["fs"], names, meta, derive=derive)

# --------------------------------------------------------------------------------------------
# Dispatch and numpy tables
# --------------------------------------------------------------------------------------------
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
    if suffix in _WFDB_SUFFIXES:
        return read_wfdb(path, **kw)
    if path.with_name(path.name + ".hea").exists():
        return read_wfdb(path, **kw)
    if suffix == ".npy":
        if "fs" not in kw or "leads" not in kw:
            raise UnsupportedFormatError(path, "a .npy ECG needs fs= and leads= keyword arguments")
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
    data = _read_bytes(table_csv, "metadata table")
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


# --------------------------------------------------------------------------------------------
# PTB-XL
# --------------------------------------------------------------------------------------------
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
    data = _read_bytes(csv, "PTB-XL database table")
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
    return pd.read_csv(BytesIO(_read_bytes(csv, "scp_statements table")), index_col=0)


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


# --------------------------------------------------------------------------------------------
# PhysioNet/CinC Challenge 2020/2021
# --------------------------------------------------------------------------------------------
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
        age = _parse_number(fields.get("Age"))
        row["age"] = age if age is not None else np.nan
        row["sex"] = _norm_sex(fields.get("Sex"))
        if "Dx" in fields:
            items = _parse_dx(fields["Dx"]) or []
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
