"""GE MUSE RestingECG XML reader (:func:`read_muse`), parsed with defusedxml."""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import os
import re
import zlib
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import Element, ParseError, TreeBuilder

import defusedxml.ElementTree as DET
import numpy as np
from defusedxml import DefusedXmlException

from .errors import (Base64Error, ChecksumError, EmptyFileError, LeadMismatchError, MissingLeadError,
                     MissingWaveformError, NotXMLError, UnitsError, UnknownSamplingRateError, UnsafeXMLError,
                     UnsupportedFormatError, WrongRootError)
from .leads import canonical_lead
from .record import (FS_MAX_HZ, FS_MIN_HZ, MAX_XML_BYTES, ECGRecord, parse_number, read_bytes, units_factor,
                     validate_signal)


#: A Rhythm strip longer than this many times ``expected_duration_s`` is refused (its SampleBase is
#: wrong: 50 Hz for a 500 Hz strip gives 100 s); shorter disagreements are only flagged.
MAX_DURATION_FACTOR: int = 4
_ASCII_SPACE = bytes(c for c in range(128) if chr(c).isspace())  # what str.split() drops from ASCII text
# an XML declaration (first bytes of the document) naming an encoding that reads ASCII bytes as ASCII
_ASCII_COMPATIBLE_DECL = re.compile(
    rb"<\?xml\s[^>]*?encoding\s*=\s*[\"'](?:iso-8859-1|iso8859-1|latin-?1|us-ascii|ascii|utf-?8|windows-1252|cp1252)[\"']",
    re.IGNORECASE)


def _local(tag: Any) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _fields(el: Element | None) -> dict[str, Element]:
    """Local tag name -> the first child of that name, in one pass over the children of ``el`` (``{}`` for None):
    the dozen fields read from one element cost one walk, not one walk each."""
    out: dict[str, Element] = {}
    if el is not None:
        for c in el:
            out.setdefault(_local(c.tag), c)
    return out


def _children(el: Element | None, name: str) -> list[Element]:
    return [] if el is None else [c for c in el if _local(c.tag) == name]


def _text(fields: dict[str, Element], name: str) -> str | None:
    """Stripped text of the field ``name`` of a :func:`_fields` mapping; None when absent or blank."""
    c = fields.get(name)
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
        text = _text(_fields(stmt), "StmtText")
        if text:
            current.append(text)
        flags = {(f.text or "").strip().upper() for f in _children(stmt, "StmtFlag")}
        if "ENDSLINE" in flags and current:
            lines.append(_tight_commas(" ".join(current)))
            current = []
    if current:
        lines.append(_tight_commas(" ".join(current)))
    return lines


def _tight_commas(text: str) -> str:
    """Whitespace before each comma removed (``re.sub(r"\\s+,", ",", text)`` without its quadratic
    backtracking on long runs of spaces)."""
    parts = text.split(",")
    return ",".join([p.rstrip() for p in parts[:-1]] + parts[-1:])


def _only_prolog(data: bytes) -> bool:
    """True when ``data`` holds nothing but whitespace, ``<?...?>``, comments and a DOCTYPE (no root
    element). A forward scan: linear in ``len(data)``, unlike a lazy regex over a long run of ``<?``."""
    i, n = 0, len(data)
    while True:
        while i < n and data[i:i + 1].isspace():
            i += 1
        if i >= n:
            return True
        for start, end in ((b"<?", b"?>"), (b"<!--", b"-->"), (b"<!DOCTYPE", b">")):
            if data.startswith(start, i):
                j = data.find(end, i + len(start))
                if j < 0:
                    return False
                i = j + len(end)
                break
        else:
            return False


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


def defused_fromstring(data: bytes) -> Element:
    """``defusedxml.ElementTree.fromstring(data, forbid_dtd=False, forbid_entities=True, forbid_external=True)``
    with the element events handed from expat straight to the C ``TreeBuilder``.

    defusedxml parses with the pure-Python ``XMLParser``, whose ``_start`` / ``_end`` run as Python code for each
    of a MUSE file's ~700 elements: 2.5 ms of a file's 3.6 ms read (10 shared MUSE files, one core). Here the
    same defusedxml parser (its entity, external-reference and undefined-entity handlers, its errors) is fed the
    document, only its expat start/end handlers are the C builder's own methods (attributes as a dict, the form
    ``TreeBuilder.start`` takes): 1.4 ms. The one difference: a namespaced tag reads ``uri}local`` instead of
    ``{uri}local`` (this reader matches local names only, :func:`_local`). Tested equal to defusedxml's tree.
    """
    builder = TreeBuilder()
    # MUSE declares ISO-8859-1, which expat converts to UTF-8 byte by byte; a document of ASCII bytes (no NUL)
    # declaring an ASCII-compatible single-byte encoding reads the same as UTF-8, which expat takes as it is:
    # the same tree, 15 % less parsing (0.2 ms of a file's 1.4 ms, the shared MUSE files)
    ascii_utf8 = data.isascii() and b"\x00" not in data and _ASCII_COMPATIBLE_DECL.match(data) is not None
    parser = DET.DefusedXMLParser(target=builder, encoding="utf-8" if ascii_utf8 else None, forbid_dtd=False,
                                  forbid_entities=True, forbid_external=True)
    expat = parser.parser
    expat.ordered_attributes = False
    expat.StartElementHandler = builder.start
    expat.EndElementHandler = builder.end
    parser.feed(data)
    return parser.close()


def _parse_xml(path: Path, data: bytes) -> Element:
    try:
        return defused_fromstring(data)
    except DefusedXmlException as e:
        raise UnsafeXMLError(path, f"defusedxml refused the document: {type(e).__name__} ({e})") from None
    except ParseError as e:
        if _only_prolog(data):  # only a declaration / DOCTYPE / comments
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
        A strip over :data:`MAX_DURATION_FACTOR` times this long raises UnknownSamplingRateError.

    Bounds (a typed error beyond them): ``SampleBase * 10**SampleExponent`` within 50-10,000 Hz
    (exponent within -6..6, checked before the power); file size up to 16 MiB; ``NumberofLeads``,
    ``LeadSampleCountTotal``, ``LeadByteCountTotal`` and ``LeadDataCRC32``, when present, must parse
    (an unparsable one is an error, never a skipped check); samples within +-50 mV after scaling
    (:func:`~heartbeit_lib.io.record.validate_signal`).

    Returns
    -------
    ECGRecord with ``signal`` (12, T) float32 microvolts and ``meta`` holding ``patient_id``,
    ``age``, ``sex``, ``site`` (``SiteName`` else ``Site``), ``acquisition_time``, ``diagnosis``
    (statement lines), ``diagnosis_text``, ``original_diagnosis``, ``measurements``, filters.
    """
    path = Path(path)
    root = _parse_xml(path, read_bytes(path, "MUSE XML file", MAX_XML_BYTES))
    if _local(root.tag) != "RestingECG":
        raise WrongRootError(path, f"root element is <{_local(root.tag)}>, not <RestingECG> (not a GE MUSE resting ECG)")
    wave = _find_waveform(path, root, waveform)
    wave_fields = _fields(wave)
    fs = _sample_rate(path, wave_fields, waveform)
    lead_blocks = _children(wave, "LeadData")
    if not lead_blocks:
        raise MissingWaveformError(path, f"{waveform} waveform has no <LeadData>")
    declared = _text(wave_fields, "NumberofLeads")
    if declared is not None and not _is_uint(declared):
        raise LeadMismatchError(path, f"NumberofLeads {_short(declared)!r} is not a non-negative integer")
    if declared is not None and int(declared) != len(lead_blocks):
        raise LeadMismatchError(path, f"NumberofLeads says {declared} but the {waveform} waveform has {len(lead_blocks)} <LeadData>")

    rows: list[np.ndarray] = []  # int16 samples of each kept lead
    scale: list[float] = []  # its microvolts per bit
    names: list[str] = []
    dropped: list[str] = []
    flags: list[str] = []
    for k, ld in enumerate(lead_blocks):
        raw_id, uv_per_bit, samples = _decode_lead(path, ld, k, flags, verify_crc)
        name = canonical_lead(raw_id)
        if name is None:
            dropped.append(raw_id)
            continue
        if name in names:
            raise LeadMismatchError(path, f"lead {name} appears twice in the {waveform} waveform")
        rows.append(samples)
        scale.append(uv_per_bit)
        names.append(name)
    lengths = {nm: len(r) for nm, r in zip(names, rows)}
    if len(set(lengths.values())) > 1:
        raise LeadMismatchError(path, f"leads have different sample counts: {lengths}")
    if not rows:
        raise MissingLeadError(path, f"no standard lead among LeadIDs {dropped}")
    with np.errstate(over="ignore"):  # inf from an absurd units-per-bit is rejected by validate_signal
        signal = np.stack(rows).astype(np.float64) * np.array(scale)[:, None]  # all leads scaled in one call

    meta = _muse_meta(path, root, wave_fields, fs, len(rows[0]), expected_duration_s, flags)
    meta.update(units_per_bit_uv=sorted(set(scale)), dropped_channels=dropped, flags=flags)
    return validate_signal(path, signal, fs, names, meta, derive=derive)


def _find_waveform(path: Path, root: Element, waveform: str) -> Element:
    """The ``<Waveform>`` whose ``WaveformType`` is ``waveform`` (case-insensitive)."""
    waves = _children(root, "Waveform")
    types = [_text(_fields(w), "WaveformType") for w in waves]
    found = [t or "?" for t in types]
    wave = next((w for w, t in zip(waves, types) if (t or "").lower() == waveform.lower()), None)
    if wave is None:
        raise MissingWaveformError(path, f"no <Waveform> with WaveformType {waveform!r} (found {found})")
    return wave


def _sample_rate(path: Path, wave: dict[str, Element], waveform: str) -> float:
    """``SampleBase * 10**SampleExponent`` Hz (``wave``: the :func:`_fields` of the ``<Waveform>``), within :data:`FS_MIN_HZ` - :data:`FS_MAX_HZ`
    (the exponent is checked before the power: 10.0**400 would raise OverflowError)."""
    base_txt, exp_txt = _text(wave, "SampleBase"), _text(wave, "SampleExponent")
    base = parse_number(base_txt)
    exp_ok = exp_txt is None or re.fullmatch(r"[+-]?[0-9]{1,3}", exp_txt) is not None  # not "+-1", "--1"
    if not exp_ok:
        raise UnknownSamplingRateError(path, f"SampleExponent {exp_txt[:40]!r} is not a small integer")
    exponent = int(exp_txt) if exp_txt is not None else 0
    if base is None or base <= 0:
        raise UnknownSamplingRateError(path, f"{waveform} SampleBase {_short(base_txt)!r} is missing, not a number or <= 0")
    if not -6 <= exponent <= 6:
        raise UnknownSamplingRateError(path, f"SampleExponent {exponent} outside -6..6")
    fs = base * 10.0**exponent
    if not FS_MIN_HZ <= fs <= FS_MAX_HZ:
        raise UnknownSamplingRateError(
            path, f"{waveform} SampleBase {base:g} x 10^{exponent} = {fs:g} Hz outside {FS_MIN_HZ:g}-{FS_MAX_HZ:g} Hz")
    return fs


def _short(text: str | None, n: int = 40) -> str | None:
    """``text`` cut to ``n`` characters for an error message (a hostile field may be megabytes)."""
    return text if text is None or len(text) <= n else text[:n] + "..."


def _decode_lead(path: Path, ld: Element, k: int, flags: list[str], verify_crc: bool
                 ) -> tuple[str, float, np.ndarray]:
    """``(LeadID, microvolts per bit, int16 samples (T,))`` of ``<LeadData>`` number ``k``, after checking
    its units, sample size, base64, declared counts and CRC-32 (one flat list of checks)."""
    fields = _fields(ld)
    raw_id = _text(fields, "LeadID")
    if raw_id is None:
        raise LeadMismatchError(path, f"<LeadData> #{k} has no LeadID")
    label = f"lead {raw_id}"
    upb_txt = _text(fields, "LeadAmplitudeUnitsPerBit")
    upb = parse_number(upb_txt)
    if upb is None or upb <= 0:
        raise UnitsError(path, f"{label}: LeadAmplitudeUnitsPerBit {_short(upb_txt)!r} is missing, not a number or <= 0")
    unit_txt = _text(fields, "LeadAmplitudeUnits")
    if unit_txt is None:
        flags.append(f"{label}: no LeadAmplitudeUnits, assumed MICROVOLTS")
        unit_txt = "MICROVOLTS"
    factor = units_factor(path, unit_txt, label)
    size = _text(fields, "LeadSampleSize")
    if size is not None and size != "2":
        raise UnsupportedFormatError(path, f"{label}: LeadSampleSize {size} (only 2-byte int16 samples are defined)")
    b64 = _text(fields, "WaveFormData")
    if not b64:
        raise Base64Error(path, f"{label}: WaveFormData is missing or empty")
    # base64 is wrapped over many lines, LF or CRLF: ASCII text loses what str.split() drops from it in one C call
    b64 = b64.encode("ascii").translate(None, _ASCII_SPACE) if b64.isascii() else "".join(b64.split())
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
        t = _text(fields, tag)
        if t is not None and not _is_uint(t):  # an unparsable count is an error, not a skipped check
            raise Base64Error(path, f"{label}: {tag} {_short(t)!r} is not a non-negative integer")
        if t is not None and int(t) != expect:
            raise Base64Error(path, f"{label}: decoded {len(raw)} bytes = {n} samples but {tag} says {t} (truncated or padded data)")
    crc_txt = _text(fields, "LeadDataCRC32")
    if crc_txt is not None and not (_is_uint(crc_txt) and int(crc_txt) < 2**32):
        raise ChecksumError(path, f"{label}: LeadDataCRC32 {_short(crc_txt)!r} is not a 32-bit unsigned integer")
    if verify_crc and crc_txt is not None:
        crc = zlib.crc32(raw)
        if crc != int(crc_txt):
            raise ChecksumError(path, f"{label}: CRC-32 of the decoded data is {crc}, LeadDataCRC32 says {crc_txt}")
    return raw_id, upb * factor, np.frombuffer(raw, dtype="<i2")


def _is_uint(text: str) -> bool:
    """ASCII digits only, at most 20 of them (``str.isdigit`` also accepts e.g. superscripts)."""
    return text.isascii() and text.isdigit() and len(text) <= 20


def _muse_meta(path: Path, root: Element, wave: dict[str, Element], fs: float, n_samples: int,
               expected_duration_s: float | None, flags: list[str]) -> dict[str, Any]:
    """Demographics, acquisition, diagnosis, measurements and filters of the record (``wave``: the
    :func:`_fields` of its ``<Waveform>``); appends the duration / sample-rate disagreements to ``flags``."""
    top = _fields(root)
    demo = _fields(top.get("PatientDemographics"))
    test = _fields(top.get("TestDemographics"))
    gender = _text(demo, "Gender")
    meas_el = top.get("RestingECGMeasurements")
    measurements = {_local(c.tag): parse_number(c.text.strip() if c.text else None) for c in (meas_el if meas_el is not None else [])}
    measurements = {k: v for k, v in measurements.items() if v is not None}
    waveform = _text(wave, "WaveformType") or ""
    if waveform.lower() == "rhythm" and expected_duration_s is not None:
        dur = n_samples / fs
        if dur > MAX_DURATION_FACTOR * expected_duration_s:  # a wrong SampleBase, not a long strip
            raise UnknownSamplingRateError(
                path, f"LeadSampleCountTotal {n_samples} / SampleBase {fs:g} Hz = {dur:g} s, over "
                      f"{MAX_DURATION_FACTOR}x the {expected_duration_s:g} s of a Rhythm strip (wrong SampleBase?)")
        if abs(dur - expected_duration_s) > 1e-6:
            flags.append(f"LeadSampleCountTotal {n_samples} / SampleBase {fs:g} Hz = {dur:g} s, not {expected_duration_s:g} s")
    ecg_base = measurements.get("ECGSampleBase")
    if ecg_base and abs(ecg_base - fs) > 1e-9:
        flags.append(f"RestingECGMeasurements/ECGSampleBase {ecg_base:g} differs from SampleBase {fs:g}")
    diagnosis = _muse_statements(top.get("Diagnosis"))
    return {
        "source": "muse",
        "record_id": path.stem,
        "patient_id": _text(demo, "PatientID"),
        "site": _text(test, "SiteName") or _text(test, "Site"),
        "site_code": _text(test, "Site"),
        "location": _text(test, "LocationName") or _text(test, "Location"),
        "acquisition_time": _muse_datetime(_text(test, "AcquisitionDate"), _text(test, "AcquisitionTime")),
        "acquisition_device": _text(test, "AcquisitionDevice"),
        "source_path": str(path),
        "muse_version": _text(_fields(top.get("MuseInfo")), "MuseVersion"),
        "waveform": _text(wave, "WaveformType"),
        "age": parse_number(_text(demo, "PatientAge")),
        "age_units": _text(demo, "AgeUnits"),
        "sex": {"MALE": "M", "FEMALE": "F"}.get((gender or "").upper()),
        "diagnosis": diagnosis,
        "diagnosis_text": "\n".join(diagnosis),
        "original_diagnosis": _muse_statements(top.get("OriginalDiagnosis")),
        "measurements": measurements,
        "filters": {
            "highpass": _text(wave, "HighPassFilter"),
            "lowpass": _text(wave, "LowPassFilter"),
            "ac": _text(wave, "ACFilter"),
        },
    }
