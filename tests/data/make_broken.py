"""Build the malformed-ECG corpus in ``tests/data/broken/`` by mutating small cuts of real files.

Run from the repository root (needs ``../shared/data``)::

    .venv/bin/python tests/data/make_broken.py            # (re)writes tests/data/broken/
    .venv/bin/python tests/data/make_broken.py --out DIR  # writes elsewhere (the test does this
                                                          # and compares byte for byte)

Seeds (``broken/ok/``, each must read cleanly) are real data cut to a short window so that every
file stays a few kB:

* ``ok/muse_mini.xml``: ``muse/easyrecg_muse_ecg1.xml`` (MIT, rickeycarter/easyRecg), patient
  demographics, site/acquisition fields and diagnosis kept, other blocks dropped, Median waveform dropped, every Rhythm lead cut to
  :data:`MUSE_WINDOW` samples around the largest lead-II deflection, optional ``LeadData`` fields
  (:data:`DROP_LEAD_FIELDS`) dropped; ``LeadSampleCountTotal``,
  ``LeadByteCountTotal`` and ``LeadDataCRC32`` recomputed.
* ``ok/wfdb_mini.hea/.dat``: PTB-XL ``records100/00000/00001_lr`` (CC BY 4.0), first
  :data:`WFDB_WINDOW` samples, format 16, header length/initial values/checksums recomputed.
* ``ok/mat_mini.hea/.mat``: CinC ``records/A5432`` (CPSC 2018 via the 2020 Challenge, CC BY 4.0),
  first :data:`WFDB_WINDOW` samples written as a MATLAB-v4 int16 ``val`` array, header in the
  Challenge layout (``16+24``).

Every broken file changes one thing of a seed (or is a classic hostile input: XML bomb, XXE,
binary junk). ``broken/EXPECTED.csv`` lists, per entry file, the :mod:`heartbeit_lib.io` error
class ``read_ecg`` must raise and a substring its reason must contain. Deterministic: no
randomness except a seeded generator for the junk bytes.
"""

from __future__ import annotations

import argparse
import base64
import csv
import io as _io
import zlib
from pathlib import Path
from typing import Callable
from xml.etree import ElementTree as ET

import numpy as np
import scipy.io

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SHARED = REPO.parent / "shared" / "data"
MUSE_WINDOW = 80  # samples at 500 Hz (0.16 s): one QRS complex
WFDB_WINDOW = 100  # samples (1 s of the 100 Hz PTB-XL record, 0.2 s of the 500 Hz CinC one)
PROLOG = '<?xml version="1.0" encoding="ISO-8859-1"?>\n<!DOCTYPE RestingECG SYSTEM "restecg.dtd">\n'
# Optional LeadData fields dropped from the seed to keep files small (the reader ignores them).
DROP_LEAD_FIELDS = ("LeadTimeOffset", "LeadHighLimit", "LeadLowLimit", "LeadOffsetFirstSample", "FirstSampleBaseline",
                    "LeadOff", "BaselineSway")
KEEP_BLOCKS = ("MuseInfo", "PatientDemographics", "TestDemographics", "Diagnosis", "Waveform")
KEEP_TEST_FIELDS = ("DataType", "Site", "SiteName", "AcquisitionDevice", "Location", "LocationName", "AcquisitionTime",
                    "AcquisitionDate")


# ------------------------------------------------------------------------------------ MUSE ----
def _b64_wrapped(raw: bytes) -> str:
    s = base64.b64encode(raw).decode("ascii")
    return "\n" + "\n".join(s[i : i + 76] for i in range(0, len(s), 76)) + "\n"


def _set_lead_bytes(lead: ET.Element, raw: bytes) -> None:
    """Store raw bytes in a LeadData with consistent counts and CRC (as MUSE writes them)."""
    lead.find("WaveFormData").text = _b64_wrapped(raw)
    lead.find("LeadByteCountTotal").text = str(len(raw))
    lead.find("LeadSampleCountTotal").text = str(len(raw) // 2)
    lead.find("LeadDataCRC32").text = str(zlib.crc32(raw))


def _lead_bytes(lead: ET.Element) -> bytes:
    return base64.b64decode("".join(lead.find("WaveFormData").text.split()))


def muse_seed(shared: Path) -> ET.Element:
    src = shared / "muse" / "easyrecg_muse_ecg1.xml"
    root = ET.fromstring(src.read_bytes())  # trusted real file (checked by defusedxml in the tests)
    for child in list(root):
        if child.tag not in KEEP_BLOCKS:
            root.remove(child)
    test = root.find("TestDemographics")
    for child in list(test):
        if child.tag not in KEEP_TEST_FIELDS:
            test.remove(child)
    for wave in root.findall("Waveform"):
        if wave.findtext("WaveformType") != "Rhythm":
            root.remove(wave)
    wave = root.find("Waveform")
    leads = wave.findall("LeadData")
    lead_ii = np.frombuffer(_lead_bytes(leads[1]), "<i2")
    centre = int(np.argmax(np.abs(lead_ii[:2500] - np.median(lead_ii[:2500]))))
    start = max(0, centre - MUSE_WINDOW // 2)
    for lead in leads:
        for tag in DROP_LEAD_FIELDS:
            for el in lead.findall(tag):
                lead.remove(el)
        x = np.frombuffer(_lead_bytes(lead), "<i2")[start : start + MUSE_WINDOW]
        _set_lead_bytes(lead, x.astype("<i2").tobytes())
    return root


def muse_text(root: ET.Element) -> str:
    root = _copy(root)
    ET.indent(root, space="   ")
    for wfd in root.iter("WaveFormData"):  # keep base64 wrapping after indent
        if wfd.text and wfd.text.strip():
            wfd.text = "\n" + "\n".join(wfd.text.split()) + "\n         "
    return PROLOG + ET.tostring(root, encoding="unicode") + "\n"


def _copy(root: ET.Element) -> ET.Element:
    return ET.fromstring(ET.tostring(root))


def _lead(root: ET.Element, lead_id: str) -> ET.Element:
    for lead in root.find("Waveform").findall("LeadData"):
        if lead.findtext("LeadID") == lead_id:
            return lead
    raise KeyError(lead_id)


def _remove_lead(root: ET.Element, lead_id: str) -> None:
    wave = root.find("Waveform")
    wave.remove(_lead(root, lead_id))
    wave.find("NumberofLeads").text = str(len(wave.findall("LeadData")))


def muse_mutations() -> dict[str, tuple[str, str, Callable[[ET.Element], ET.Element | str | bytes]]]:
    """name -> (error class, reason substring, mutation of a copy of the seed tree)."""

    def tree(fn):
        def run(root):
            fn(root)
            return root
        return run

    def b64_of(lead_id, fn):
        def run(root):
            wfd = _lead(root, lead_id).find("WaveFormData")
            wfd.text = fn("".join(wfd.text.split()))
            return root
        return run

    def set_text(path, value):
        def run(root):
            root.find(path).text = value
            return root
        return run

    def drop(path):
        def run(root):
            el = root.find(path)
            parent = root.find(path.rsplit("/", 1)[0]) if "/" in path else root
            parent.remove(el)
            return root
        return run

    def odd_bytes(root):
        lead = _lead(root, "II")
        _set_lead_bytes(lead, _lead_bytes(lead) + b"\x07")
        return root

    def short_v3(root):
        lead = _lead(root, "V3")
        _set_lead_bytes(lead, _lead_bytes(lead)[: 2 * (MUSE_WINDOW - 20)])
        return root

    def flat(root):
        for lead in root.find("Waveform").findall("LeadData"):
            _set_lead_bytes(lead, np.zeros(MUSE_WINDOW, "<i2").tobytes())
        return root

    def bad_crc(root):
        lead = _lead(root, "V5")
        lead.find("LeadDataCRC32").text = str((int(lead.findtext("LeadDataCRC32")) + 1) % 2**32)
        return root

    def no_leaddata(root):
        wave = root.find("Waveform")
        for lead in wave.findall("LeadData"):
            wave.remove(lead)
        return root

    def wrong_root(root):
        return muse_text(root).replace("<RestingECG>", "<CardiologyXML>").replace("</RestingECG>", "</CardiologyXML>")

    def truncated(root):
        text = muse_text(root)
        return text[: int(len(text) * 0.6)]

    def bomb(root):
        ents = ['<!ENTITY lol0 "lol">'] + [f'<!ENTITY lol{i} "{("&lol%d;" % (i - 1)) * 10}">' for i in range(1, 10)]
        doctype = "<!DOCTYPE RestingECG [\n " + "\n ".join(ents) + "\n]>\n"
        body = muse_text(root).split("\n", 2)[2].replace("<PatientID>JAX01234</PatientID>", "<PatientID>&lol9;</PatientID>")
        return '<?xml version="1.0" encoding="ISO-8859-1"?>\n' + doctype + body

    def xxe(root):
        doctype = '<!DOCTYPE RestingECG [\n <!ENTITY xxe SYSTEM "file:///etc/passwd">\n]>\n'
        body = muse_text(root).split("\n", 2)[2].replace("<PatientID>JAX01234</PatientID>", "<PatientID>&xxe;</PatientID>")
        return '<?xml version="1.0" encoding="ISO-8859-1"?>\n' + doctype + body

    def upb(lead_id, value):
        return tree(lambda r: setattr(_lead(r, lead_id).find("LeadAmplitudeUnitsPerBit"), "text", value))

    def lead_field(lead_id, tag, value):
        return tree(lambda r: setattr(_lead(r, lead_id).find(tag), "text", value))

    def prolog_flood(_root):  # malformed XML: the old prolog-stripping regex was quadratic (50,000 "<?": > 10 s)
        return PROLOG + "<RestingECG>" + "<?" * 50_000

    def junk(_root):
        return np.random.default_rng(20240).integers(0, 256, 3000, dtype=np.uint8).tobytes()

    return {
        "muse_not_xml.xml": ("NotXMLError", "not well-formed", lambda r: "GE MUSE export failed; this is a plain-text error note, not XML.\n"),
        "muse_binary_junk.xml": ("NotXMLError", "not well-formed", junk),
        "muse_truncated_xml.xml": ("NotXMLError", "not well-formed", truncated),
        "muse_empty.xml": ("EmptyFileError", "is empty", lambda r: b""),
        "muse_declaration_only.xml": ("EmptyFileError", "no root element", lambda r: PROLOG),
        "muse_wrong_root.xml": ("WrongRootError", "<CardiologyXML>", wrong_root),
        "muse_no_rhythm.xml": ("MissingWaveformError", "WaveformType 'Rhythm'", set_text("Waveform/WaveformType", "Median")),
        "muse_no_waveform.xml": ("MissingWaveformError", "WaveformType 'Rhythm'", drop("Waveform")),
        "muse_no_leaddata.xml": ("MissingWaveformError", "no <LeadData>", no_leaddata),
        "muse_empty_waveformdata.xml": ("Base64Error", "missing or empty", b64_of("II", lambda s: "")),
        "muse_no_waveformdata_element.xml": ("Base64Error", "missing or empty", tree(lambda r: _lead(r, "V1").remove(_lead(r, "V1").find("WaveFormData")))),
        "muse_truncated_base64.xml": ("Base64Error", "truncated base64", b64_of("II", lambda s: s[:-3])),
        "muse_truncated_base64_aligned.xml": ("Base64Error", "truncated or padded", b64_of("II", lambda s: s[:-8])),
        "muse_invalid_base64.xml": ("Base64Error", "invalid base64", b64_of("I", lambda s: s[:40] + "!*@#" + s[44:])),
        "muse_odd_byte_count.xml": ("Base64Error", "odd byte count", odd_bytes),
        "muse_crc_mismatch.xml": ("ChecksumError", "LeadDataCRC32", bad_crc),
        "muse_lead_count_mismatch.xml": ("LeadMismatchError", "NumberofLeads says 9", set_text("Waveform/NumberofLeads", "9")),
        "muse_sample_count_mismatch.xml": ("LeadMismatchError", "different sample counts", short_v3),
        "muse_duplicate_lead.xml": ("LeadMismatchError", "appears twice", tree(lambda r: setattr(_lead(r, "V2").find("LeadID"), "text", "V1"))),
        "muse_no_leadid.xml": ("LeadMismatchError", "has no LeadID", tree(lambda r: _lead(r, "V4").remove(_lead(r, "V4").find("LeadID")))),
        "muse_missing_lead_I.xml": ("MissingLeadError", "['I']", tree(lambda r: _remove_lead(r, "I"))),
        "muse_missing_lead_II.xml": ("MissingLeadError", "['II']", tree(lambda r: _remove_lead(r, "II"))),
        "muse_flat_line.xml": ("FlatLineError", "all 12 leads are flat", flat),
        "muse_samplebase_zero.xml": ("UnknownSamplingRateError", "SampleBase '0'", set_text("Waveform/SampleBase", "0")),
        "muse_samplebase_text.xml": ("UnknownSamplingRateError", "SampleBase 'five hundred'", set_text("Waveform/SampleBase", "five hundred")),
        "muse_samplebase_missing.xml": ("UnknownSamplingRateError", "SampleBase None", drop("Waveform/SampleBase")),
        "muse_unknown_units.xml": ("UnitsError", "FURLONGS", tree(lambda r: setattr(_lead(r, "V6").find("LeadAmplitudeUnits"), "text", "FURLONGS"))),
        "muse_zero_units_per_bit.xml": ("UnitsError", "LeadAmplitudeUnitsPerBit '0'", tree(lambda r: setattr(_lead(r, "I").find("LeadAmplitudeUnitsPerBit"), "text", "0"))),
        "muse_xml_bomb.xml": ("UnsafeXMLError", "EntitiesForbidden", bomb),
        "muse_xxe.xml": ("UnsafeXMLError", "EntitiesForbidden", xxe),
        # issue 16: absurd values, unparsable fields, slow paths
        "muse_exponent_400.xml": ("UnknownSamplingRateError", "SampleExponent 400 outside", set_text("Waveform/SampleExponent", "400")),
        "muse_exponent_minus400.xml": ("UnknownSamplingRateError", "SampleExponent -400 outside", set_text("Waveform/SampleExponent", "-400")),
        "muse_exponent_text.xml": ("UnknownSamplingRateError", "not a small integer", set_text("Waveform/SampleExponent", "x1")),
        "muse_samplebase_tiny.xml": ("UnknownSamplingRateError", "outside 50-10000 Hz", set_text("Waveform/SampleBase", "0.0001")),
        "muse_samplebase_half.xml": ("UnknownSamplingRateError", "outside 50-10000 Hz", set_text("Waveform/SampleBase", "0.5")),
        "muse_samplebase_huge.xml": ("UnknownSamplingRateError", "outside 50-10000 Hz", set_text("Waveform/SampleBase", "1e308")),
        "muse_samplebase_denormal.xml": ("UnknownSamplingRateError", "outside 50-10000 Hz", set_text("Waveform/SampleBase", "1e-320")),
        "muse_units_per_bit_1e300.xml": ("AmplitudeError", "beyond +-50 mV", upb("II", "1e300")),
        "muse_units_per_bit_1e18.xml": ("AmplitudeError", "beyond +-50 mV", upb("V2", "1e18")),
        "muse_units_per_bit_1e308.xml": ("NonFiniteError", "non-finite", upb("I", "1e308")),
        "muse_sample_count_minus1.xml": ("Base64Error", "LeadSampleCountTotal '-1' is not", lead_field("V1", "LeadSampleCountTotal", "-1")),
        "muse_sample_count_text.xml": ("Base64Error", "LeadSampleCountTotal 'abc' is not", lead_field("V1", "LeadSampleCountTotal", "abc")),
        "muse_byte_count_text.xml": ("Base64Error", "LeadByteCountTotal 'abc' is not", lead_field("V1", "LeadByteCountTotal", "abc")),
        "muse_crc_minus1.xml": ("ChecksumError", "LeadDataCRC32 '-1' is not", lead_field("V3", "LeadDataCRC32", "-1")),
        "muse_crc_text.xml": ("ChecksumError", "LeadDataCRC32 'abc' is not", lead_field("V3", "LeadDataCRC32", "abc")),
        "muse_lead_count_text.xml": ("LeadMismatchError", "NumberofLeads 'eight' is not", set_text("Waveform/NumberofLeads", "eight")),
        "slow_muse_prolog_flood.xml": ("NotXMLError", "not well-formed", prolog_flood),
    }


def muse_ok_mutations() -> dict[str, Callable[[ET.Element], ET.Element]]:
    """name -> mutation of the seed that must still read cleanly (written to ``ok/``; slow on the old code)."""

    def diagnosis_spaces(root):  # "re.sub(r'\\s+,', ...)" over 100,000 spaces took 8.4 s
        root.find("Diagnosis").find("DiagnosisStatement").find("StmtText").text = "Sinus rhythm" + " " * 100_000 + "x"
        return root

    return {"slow_muse_diagnosis_spaces.xml": diagnosis_spaces}


# ------------------------------------------------------------------------------------ WFDB ----
def _checksum(d: np.ndarray) -> int:
    return (int(d.astype(np.int64).sum()) + 32768) % 65536 - 32768


def wfdb_header(name: str, fs: str, n: int, d: np.ndarray, sig_names, *, file=None, gain="1000.0(0)/mV", fmt="16",
                record_line: str | None = None, comments=()) -> str:
    """Header text in the PTB-XL layout, checksums/initial values computed from ``d`` (L, T)."""
    file = file or f"{name}.dat"
    lines = [record_line if record_line is not None else f"{name} {d.shape[0]} {fs} {n}"]
    for i, s in enumerate(sig_names):
        lines.append(f"{file} {fmt} {gain} 16 0 {int(d[i, 0])} {_checksum(d[i])} 0 {s}")
    lines += [f"#{c}" for c in comments]
    return "\n".join(lines) + "\n"


PTB_NAMES = ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"]
CINC_NAMES = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]


def wfdb_seed(shared: Path) -> np.ndarray:
    """(12, WFDB_WINDOW) int16 digital samples of PTB-XL 00001_lr (format 16, interleaved)."""
    raw = np.fromfile(shared / "ptbxl" / "records100" / "00000" / "00001_lr.dat", dtype="<i2")
    return raw.reshape(-1, 12)[:WFDB_WINDOW].T.copy()


def mat_seed(shared: Path) -> np.ndarray:
    return scipy.io.loadmat(str(shared / "cinc" / "records" / "A5432.mat"))["val"][:, :WFDB_WINDOW].astype(np.int16)


def _mat_bytes(arrays: dict) -> bytes:
    buf = _io.BytesIO()
    scipy.io.savemat(buf, arrays, format="4")
    return buf.getvalue()


def _dat(d: np.ndarray) -> bytes:
    return d.T.astype("<i2").tobytes()


def cinc_header(name: str, d: np.ndarray, *, n_sig=None, n=None, gain="1000/mV", fs=500) -> str:
    n_sig = d.shape[0] if n_sig is None else n_sig
    n = d.shape[1] if n is None else n
    lines = [f"{name} {n_sig} {fs} {n} 12-May-2020 12:33:59"]
    for i, s in enumerate(CINC_NAMES[:n_sig]):
        row = d[i] if i < d.shape[0] else d[0]
        lines.append(f"{name}.mat 16+24 {gain} 16 0 {int(row[0])} {_checksum(row)} 0 {s}")
    lines += ["#Age: 38", "#Sex: Female", "#Dx: 284470004", "#Rx: Unknown", "#Hx: Unknown", "#Sx: Unknown"]
    return "\n".join(lines) + "\n"


def wfdb_entries(d: np.ndarray, m: np.ndarray) -> dict[str, tuple[str, str, dict[str, bytes]]]:
    """name -> (error, reason substring, {file name: bytes}); the entry file is ``name``."""
    n = d.shape[1]
    out: dict[str, tuple[str, str, dict[str, bytes]]] = {}

    def rec(stem, err, why, header, dat=None, ext=".dat"):
        files = {f"{stem}.hea": header.encode("ascii") if isinstance(header, str) else header}
        if dat is not None:
            files[f"{stem}{ext}"] = dat
        out[f"{stem}.hea"] = (err, why, files)

    hdr = lambda stem, **kw: wfdb_header(stem, kw.pop("fs", "100"), kw.pop("n", n), kw.pop("d", d), kw.pop("names", PTB_NAMES), **kw)
    rec("wfdb_short_dat", "HeaderSignalMismatchError", "short signal file", hdr("wfdb_short_dat"), _dat(d[:, : n // 2]))
    rec("wfdb_missing_dat", "MissingSignalFileError", "does not exist", hdr("wfdb_missing_dat"))
    rec("wfdb_empty_dat", "EmptyFileError", "signal file is empty", hdr("wfdb_empty_dat"), b"")
    rec("wfdb_garbage", "HeaderSyntaxError", "no signal count",
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit.\nSed do eiusmod tempor incididunt.\n")
    rec("wfdb_binary", "HeaderSyntaxError", "binary bytes",
        np.random.default_rng(7).integers(0, 256, 600, dtype=np.uint8).tobytes())
    rec("wfdb_empty", "EmptyFileError", "is empty", b"")
    rec("wfdb_comments_only", "HeaderSyntaxError", "no record line", "# Age: 56\n# Sex: F\n")
    rec("wfdb_fs_zero", "UnknownSamplingRateError", "must be finite and > 0",
        hdr("wfdb_fs_zero", fs="0"), _dat(d))
    rec("wfdb_fs_missing", "UnknownSamplingRateError", "gives no sampling frequency",
        hdr("wfdb_fs_missing", record_line="wfdb_fs_missing 12"), _dat(d))
    rec("wfdb_fs_text", "UnknownSamplingRateError", "is not a number", hdr("wfdb_fs_text", fs="fast"), _dat(d))
    rec("wfdb_signal_lines_mismatch", "LeadMismatchError", "declares 12 signals but 11",
        "\n".join(hdr("wfdb_signal_lines_mismatch").splitlines()[:-1]) + "\n", _dat(d))
    names_no_ii = ["I", "EKG", *PTB_NAMES[2:]]
    rec("wfdb_missing_lead_II", "MissingLeadError", "['II']", hdr("wfdb_missing_lead_II", names=names_no_ii), _dat(d))
    rec("wfdb_duplicate_lead", "LeadMismatchError", "duplicated lead",
        hdr("wfdb_duplicate_lead", names=[*PTB_NAMES[:7], "V1", *PTB_NAMES[8:]]), _dat(d))
    zeros = np.zeros_like(d)
    rec("wfdb_flat_line", "FlatLineError", "all 12 leads are flat", hdr("wfdb_flat_line", d=zeros), _dat(zeros))
    bad = d.copy()
    bad[0, 10:20] = -32768  # WFDB invalid-sample marker in format 16
    rec("wfdb_invalid_samples", "NonFiniteError", "non-finite", hdr("wfdb_invalid_samples", d=bad), _dat(bad))
    rec("wfdb_unknown_units", "UnitsError", "furlong", hdr("wfdb_unknown_units", gain="1000.0(0)/furlong"), _dat(d))
    rec("wfdb_gain_zero", "UnitsError", "uncalibrated", hdr("wfdb_gain_zero", gain="0(0)/mV"), _dat(d))
    rec("wfdb_gain_syntax", "HeaderSyntaxError", "is not 'gain(baseline)/units'", hdr("wfdb_gain_syntax", gain="big/mV"), _dat(d))
    rec("wfdb_bad_format", "UnsupportedFormatError", "is not a WFDB signal format", hdr("wfdb_bad_format", fmt="99"), _dat(d))
    rec("wfdb_multisegment", "UnsupportedFormatError", "multi-segment",
        hdr("wfdb_multisegment", record_line=f"wfdb_multisegment/2 12 100 {n}"), _dat(d))
    text = hdr("wfdb_checksum").splitlines()
    parts = text[3].split()
    parts[6] = str(int(parts[6]) + 1)
    text[3] = " ".join(parts)
    rec("wfdb_checksum", "ChecksumError", "checksum", "\n".join(text) + "\n", _dat(d))

    mrec = lambda stem, err, why, header, mat: rec(stem, err, why, header, mat, ext=".mat")
    nan = m.astype(np.float32)
    nan[3, 5:9] = np.nan
    mrec("mat_nan", "NonFiniteError", "NaN/inf", cinc_header("mat_nan", m), _mat_bytes({"val": nan}))
    inf = m.astype(np.float32)
    inf[1, 50] = np.inf
    mrec("mat_inf", "NonFiniteError", "NaN/inf", cinc_header("mat_inf", m), _mat_bytes({"val": inf}))
    mrec("mat_too_few_leads", "HeaderSignalMismatchError", "declares 12 signals",
         cinc_header("mat_too_few_leads", m), _mat_bytes({"val": m[:11]}))
    mrec("mat_short", "HeaderSignalMismatchError", f"declares 12 signals x {m.shape[1]} samples",
         cinc_header("mat_short", m), _mat_bytes({"val": m[:, : m.shape[1] // 2]}))
    mrec("mat_no_val", "MissingWaveformError", "no 'val' signal array",
         cinc_header("mat_no_val", m), _mat_bytes({"a": m, "b": m}))
    mrec("mat_not_mat", "UnsupportedFormatError", "not a MATLAB file", cinc_header("mat_not_mat", m),
         b"MATLAB? no: a text file saved with a .mat suffix\n")
    mrec("mat_truncated", "HeaderSignalMismatchError", "corrupt or truncated",
         cinc_header("mat_truncated", m), _mat_bytes({"val": m})[: 24 + m.size])
    mrec("mat_empty", "EmptyFileError", "signal file is empty", cinc_header("mat_empty", m), b"")
    g = cinc_header("mat_missing", m).replace("mat_missing 12", "mat_missing.mat 12", 1)  # Georgia-style line 1
    rec("mat_missing", "MissingSignalFileError", "'mat_missing.mat'", g)

    # issue 16: absurd rates and gains, paths outside the folder, slow tokens
    for stem, fs in (("wfdb_fs_denormal", "1e-320"), ("wfdb_fs_huge", "1e308"), ("wfdb_fs_tiny", "0.5")):
        rec(stem, "UnknownSamplingRateError", "outside 50-10000 Hz", hdr(stem, fs=fs), _dat(d))
    rec("wfdb_fs_4000_digits", "UnknownSamplingRateError", "is not a number", hdr("wfdb_fs_4000_digits", fs="1" * 4000 + "x"), _dat(d))
    rec("wfdb_gain_tiny", "AmplitudeError", "beyond +-50 mV", hdr("wfdb_gain_tiny", gain="1e-300(0)/mV"), _dat(d))
    rec("wfdb_gain_300_digits", "HeaderSyntaxError", "over 40 characters", hdr("wfdb_gain_300_digits", gain="9" * 300 + "x(0)/mV"), _dat(d))
    rec("wfdb_abs_path", "UnsafePathError", "outside the header's folder", hdr("wfdb_abs_path", file="/etc/passwd"))
    rec("wfdb_dotdot_path", "UnsafePathError", "outside the header's folder", hdr("wfdb_dotdot_path", file="../../elsewhere/file.bin"))
    rec("slow_wfdb_fs_20000_digits", "FileTooLargeError", "over the cap of 4096", hdr("slow_wfdb_fs_20000_digits", fs="1" * 20_000 + "x"), _dat(d))
    rec("slow_wfdb_gain_20000_digits", "FileTooLargeError", "over the cap of 4096",
        hdr("slow_wfdb_gain_20000_digits", gain="9" * 20_000 + "x(0)/mV"), _dat(d))
    rec("slow_wfdb_age_spaces", "FileTooLargeError", "over the cap of 4096",
        hdr("slow_wfdb_age_spaces", comments=["Age: x" + " " * 100_000 + "y"]), _dat(d))
    return out


# ---------------------------------------------------------------------------------- driver ----
def build(out: Path, shared: Path = SHARED) -> list[tuple[str, str, str]]:
    """Write seeds (``out/ok/``), broken files and ``EXPECTED.csv``; return the expectations."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "ok").mkdir(exist_ok=True)
    seed = muse_seed(shared)
    (out / "ok" / "muse_mini.xml").write_text(muse_text(seed), encoding="latin-1", newline="\n")
    d, m = wfdb_seed(shared), mat_seed(shared)
    (out / "ok" / "wfdb_mini.hea").write_text(wfdb_header("wfdb_mini", "100", d.shape[1], d, PTB_NAMES), newline="\n")
    (out / "ok" / "wfdb_mini.dat").write_bytes(_dat(d))
    (out / "ok" / "mat_mini.hea").write_text(cinc_header("mat_mini", m), newline="\n")
    (out / "ok" / "mat_mini.mat").write_bytes(_mat_bytes({"val": m}))

    expected = []
    for name, (err, why, fn) in muse_mutations().items():
        result = fn(_copy(seed))
        if isinstance(result, ET.Element):
            result = muse_text(result)
        data = result.encode("latin-1") if isinstance(result, str) else result
        (out / name).write_bytes(data)
        expected.append((name, err, why))
    for name, (err, why, files) in wfdb_entries(d, m).items():
        for fname, data in files.items():
            (out / fname).write_bytes(data)
        expected.append((name, err, why))
    for name, fn in muse_ok_mutations().items():
        (out / "ok" / name).write_text(muse_text(fn(_copy(seed))), encoding="latin-1", newline="\n")
    # CinC 2020 release of PTB (S-prefixed, 1000 Hz): 2,000,000 adu/mV declared on microvolt values
    (out / "ok" / "S0001.hea").write_text(cinc_header("S0001", m, gain="2000000/mV", fs=1000), newline="\n")
    (out / "ok" / "S0001.mat").write_bytes(_mat_bytes({"val": m}))
    (out / "misc_unknown_suffix.edf").write_bytes(b"0       X X X X                                \n")
    expected.append(("misc_unknown_suffix.edf", "UnsupportedFormatError", "unknown ECG file type"))
    with open(out / "EXPECTED.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["file", "error", "reason_contains"])
        w.writerows(expected)
    return expected


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "broken")
    ap.add_argument("--shared", type=Path, default=SHARED)
    args = ap.parse_args()
    exp = build(args.out, args.shared)
    print(f"wrote {len(exp)} broken inputs + seeds to {args.out}")


if __name__ == "__main__":
    main()
