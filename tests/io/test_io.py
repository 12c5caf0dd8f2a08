"""ECG readers (heartbeit_lib.io): record type, shared validation, MUSE, WFDB, CinC, PTB-XL, numpy.

Oracles, each named where used:
* MUSE: an independent decode in this file (regex over the raw XML text, ``base64`` +
  ``np.frombuffer('<i2') * 4.88``), the first raw samples listed in ``muse/MANIFEST.csv``;
  exact (float32 rounding).
* WFDB: ``wfdb.rdrecord(...).p_signal * 1000`` (mV -> uV), atol 1e-3 uV plus one float32 ulp.
* Lead derivation: Einthoven / Goldberger identities; on real 12-lead data the stored limb leads
  agree with I and II to the quantisation step (<= 4 uV).
* Counts: ``ptbxl/README.md`` (150 / 840 records, superclass counts), ``cinc/MANIFEST.csv``.
"""

from __future__ import annotations

import base64
import csv
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from heartbeit_lib import io

OK = Path(__file__).resolve().parents[1] / "data" / "broken" / "ok"
LEADS8 = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")


def _ecg(rng: np.random.Generator, n_leads: int = 8, n: int = 500) -> np.ndarray:
    """(n_leads, n) float64 microvolts: a 1 Hz, 800 uV wave plus noise."""
    t = np.arange(n) / 500.0
    return 800.0 * np.sin(2 * np.pi * t)[None] * rng.uniform(0.5, 1.5, (n_leads, 1)) + rng.normal(0, 20, (n_leads, n))


# ----------------------------------------------------------------------------- unit tests ----
@pytest.mark.parametrize(
    "raw, canon",
    [("aVR", "AVR"), ("avr", "AVR"), ("AVR", "AVR"), ("aVl", "AVL"), ("avF", "AVF"), ("v1", "V1"), ("V6", "V6"),
     ("i", "I"), ("ii", "II"), ("III", "III"), ("Lead II", "II"), ("D1", "I"), (" V3 ", "V3"), ("MLII", None),
     ("Resp", None), ("-aVR", None), ("V7", None)],
)
def test_canonical_lead(raw, canon):
    assert io.canonical_lead(raw) == canon


def test_append_limb_leads_identities():
    """Oracle: III = II - I, aVR = -(I+II)/2, aVL = I - II/2, aVF = II - I/2; and Einthoven's
    I + III = II, Goldberger's aVR + aVL + aVF = 0 (float64, 1e-9 uV)."""
    rng = np.random.default_rng(0)
    x = _ecg(rng)
    sig, leads, derived = io.append_limb_leads(x, LEADS8)
    assert derived == ["III", "AVR", "AVL", "AVF"] and leads == LEADS8 + ("III", "AVR", "AVL", "AVF")
    L = dict(zip(leads, sig))
    np.testing.assert_allclose(L["III"], x[1] - x[0], atol=1e-9)
    np.testing.assert_allclose(L["AVR"], -(x[0] + x[1]) / 2, atol=1e-9)
    np.testing.assert_allclose(L["AVL"], x[0] - x[1] / 2, atol=1e-9)
    np.testing.assert_allclose(L["AVF"], x[1] - x[0] / 2, atol=1e-9)
    np.testing.assert_allclose(L["I"] + L["III"], L["II"], atol=1e-9)
    np.testing.assert_allclose(L["AVR"] + L["AVL"] + L["AVF"], 0.0, atol=1e-9)


def test_from_numpy_orders_converts_and_derives():
    rng = np.random.default_rng(1)
    x_mv = _ecg(rng)[::-1] / 1000.0  # leads given in reverse order, in millivolts
    rec = io.from_numpy(x_mv, 500, list(reversed(["I", "ii", "v1", "V2", "v3", "V4", "v5", "V6"])), {"record_id": "a"}, units="mV")
    assert rec.leads == io.CANONICAL_LEADS and rec.signal.dtype == np.float32 and rec.fs == 500.0
    np.testing.assert_allclose(rec.lead("I"), x_mv[-1] * 1000.0, rtol=1e-6)
    np.testing.assert_allclose(rec.lead("avf"), (x_mv[-2] - x_mv[-1] / 2) * 1000.0, rtol=1e-5, atol=1e-3)
    assert rec.meta["derived_leads"] == ["III", "AVR", "AVL", "AVF"] and rec.meta["record_id"] == "a"
    assert rec.select(LEADS8).shape == (8, 500) and rec.duration_s == 1.0
    for key in ("record_id", "patient_id", "site", "acquisition_time", "source_path", "flags"):
        assert key in rec.meta
    with pytest.raises(io.MissingLeadError):
        io.from_numpy(x_mv, 500, LEADS8, units="mV", derive=False).lead("III")


@pytest.mark.parametrize(
    "mutate, leads, fs, error, reason",
    [
        (lambda x: x.T, LEADS8, 500, io.LeadMismatchError, "transposed"),
        (lambda x: x[:7], LEADS8, 500, io.LeadMismatchError, "7 signal rows but 8 lead names"),
        (lambda x: x[0], LEADS8, 500, io.LeadMismatchError, "2-D"),
        (lambda x: x, ("I", "II", "V1", "V1", "V3", "V4", "V5", "V6"), 500, io.LeadMismatchError, "duplicated"),
        (lambda x: x, ("I", "II", "V1", "V2", "V3", "V4", "V5", "X"), 500, io.LeadMismatchError, "unknown lead names"),
        (lambda x: x[:, :0], LEADS8, 500, io.EmptyFileError, "0 samples"),
        (lambda x: np.where(np.arange(x.shape[1]) == 3, np.nan, x), LEADS8, 500, io.NonFiniteError, "non-finite"),
        (lambda x: np.where(np.arange(x.shape[1]) == 3, np.inf, x), LEADS8, 500, io.NonFiniteError, "non-finite"),
        (lambda x: x[1:], LEADS8[1:], 500, io.MissingLeadError, "['I']"),
        (lambda x: np.delete(x, 1, 0), LEADS8[:1] + LEADS8[2:], 500, io.MissingLeadError, "['II']"),
        (lambda x: np.zeros_like(x) + 5.0, LEADS8, 500, io.FlatLineError, "all 12 leads are flat"),
        (lambda x: x, LEADS8, 0, io.UnknownSamplingRateError, "> 0"),
        (lambda x: x, LEADS8, -500, io.UnknownSamplingRateError, "> 0"),
        (lambda x: x, LEADS8, float("nan"), io.UnknownSamplingRateError, "> 0"),
        (lambda x: x, LEADS8, "fast", io.UnknownSamplingRateError, "not a number"),
        (lambda x: x.astype(object), LEADS8, 500, io.UnsupportedFormatError, "not numeric"),
    ],
)
def test_from_numpy_validation(mutate, leads, fs, error, reason):
    x = mutate(_ecg(np.random.default_rng(2)))
    with pytest.raises(error) as info:
        io.from_numpy(x, fs, leads, path="array-under-test")
    assert type(info.value) is error and reason in info.value.reason
    assert "array-under-test" in str(info.value)


def test_flat_threshold_is_peak_to_peak_10_uV():
    """A lead is flat below FLAT_PTP_UV peak-to-peak; all flat -> FlatLineError, some -> meta."""
    assert io.FLAT_PTP_UV == 10.0
    ramp = np.linspace(0.0, 1.0, 200)
    below = np.tile(ramp * 9.9, (8, 1))
    with pytest.raises(io.FlatLineError):
        io.from_numpy(below, 500, LEADS8)
    just_above = below.copy()
    just_above[0] = ramp * 10.1
    rec = io.from_numpy(just_above, 500, LEADS8, derive=False)
    assert rec.meta["flat_leads"] == ["II", "V1", "V2", "V3", "V4", "V5", "V6"]


def test_errors_carry_path_reason_and_stay_value_errors():
    err = io.MissingFileError("/x/y.xml", "file does not exist")
    assert isinstance(err, io.ECGReadError) and isinstance(err, ValueError) and isinstance(err, FileNotFoundError)
    assert str(err) == "/x/y.xml: file does not exist" and err.path == "/x/y.xml" and err.reason == "file does not exist"


def test_read_ecg_dispatch(tmp_path):
    rng = np.random.default_rng(3)
    with pytest.raises(io.MissingFileError) as info:
        io.read_ecg(tmp_path / "nope.xml")
    assert "nope.xml" in str(info.value) and isinstance(info.value, FileNotFoundError)
    with pytest.raises(io.MissingFileError):
        io.read_ecg(tmp_path / "nope")
    np.save(tmp_path / "one.npy", _ecg(rng).astype(np.float32))
    rec = io.read_ecg(tmp_path / "one.npy", fs=500, leads=LEADS8)
    assert rec.meta["record_id"] == "one" and rec.signal.shape == (12, 500)
    with pytest.raises(io.UnsupportedFormatError, match="fs= and leads="):
        io.read_ecg(tmp_path / "one.npy")
    (tmp_path / "x.npy").write_bytes(b"not numpy")
    with pytest.raises(io.UnsupportedFormatError, match="x.npy"):
        io.read_ecg(tmp_path / "x.npy", fs=500, leads=LEADS8)
    # extensionless WFDB base, .hea, .dat all reach the WFDB reader
    for f in OK.glob("wfdb_mini.*"):
        shutil.copy(f, tmp_path / f.name)
    a, b, c = (io.read_ecg(tmp_path / n) for n in ("wfdb_mini", "wfdb_mini.hea", "wfdb_mini.dat"))
    assert np.array_equal(a.signal, b.signal) and np.array_equal(a.signal, c.signal)


def test_read_numpy_table(tmp_path):
    rng = np.random.default_rng(4)
    x = np.stack([_ecg(rng) for _ in range(4)]).astype(np.float32)
    x[2, 3, 10] = np.nan
    np.save(tmp_path / "x.npy", x)
    table = pd.DataFrame({"record_id": ["a", "b", "c", "d"], "patient_id": ["p1", "p1", "p2", "p3"],
                          "site": ["s1", "s1", "s2", "s2"], "label": [0, 1, 0, 1]})
    table.to_csv(tmp_path / "t.csv", index=False)
    records, rejects = io.read_numpy_table(tmp_path / "x.npy", tmp_path / "t.csv", fs=500, on_error="skip")
    assert [r.meta["record_id"] for r in records] == ["a", "b", "d"]
    assert records[0].meta["patient_id"] == "p1" and records[2].meta["site"] == "s2" and records[1].meta["label"] == 1
    np.testing.assert_array_equal(records[2].lead("V1"), x[3, 2])
    assert rejects.to_dict("records") == [{"row": 2, "record_id": "c", "error": "NonFiniteError", "reason": rejects.reason[0]}]
    assert "V2" in rejects.reason[0]
    assert rejects.reason[0].startswith("non-finite samples") and "{'V2': 1}" in rejects.reason[0]
    with pytest.raises(io.NonFiniteError, match=r"x\.npy\[2\]"):
        io.read_numpy_table(tmp_path / "x.npy", tmp_path / "t.csv", fs=500)
    table.iloc[:3].to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(io.MetadataError, match="3 table rows but x.npy holds 4"):
        io.read_numpy_table(tmp_path / "x.npy", tmp_path / "short.csv", fs=500)
    with pytest.raises(io.UnknownSamplingRateError, match="no 'fs' column"):
        io.read_numpy_table(tmp_path / "x.npy", tmp_path / "t.csv")
    table.assign(fs=[500, 500, 500, 250]).to_csv(tmp_path / "fs.csv", index=False)
    records, _ = io.read_numpy_table(tmp_path / "x.npy", tmp_path / "fs.csv", on_error="skip")
    assert [r.fs for r in records] == [500.0, 500.0, 250.0]


def _independent_muse_decode(path: Path, waveform: str) -> dict[str, np.ndarray]:
    """Oracle: decode LeadData by regex over the raw text (no XML parser), int16 LE * units/bit."""
    text = path.read_text(encoding="latin-1")
    block = next(b for b in text.split("<Waveform>")[1:] if f"<WaveformType>{waveform}</WaveformType>" in b)
    out = {}
    for lead in re.findall(r"<LeadData>(.*?)</LeadData>", block, flags=re.S):
        lead_id = re.search(r"<LeadID>(.*?)</LeadID>", lead).group(1)
        upb = float(re.search(r"<LeadAmplitudeUnitsPerBit>(.*?)</LeadAmplitudeUnitsPerBit>", lead).group(1))
        b64 = re.sub(r"\s", "", re.search(r"<WaveFormData>(.*?)</WaveFormData>", lead, flags=re.S).group(1))
        out[lead_id] = np.frombuffer(base64.b64decode(b64), dtype="<i2").astype(np.float64) * upb
    return out


def _check_limb_identities(rec: io.ECGRecord, atol: float) -> None:
    L = {n: rec.lead(n).astype(np.float64) for n in ("I", "II", "III", "AVR", "AVL", "AVF")}
    np.testing.assert_allclose(L["III"], L["II"] - L["I"], atol=atol)
    np.testing.assert_allclose(L["AVR"], -(L["I"] + L["II"]) / 2, atol=atol)
    np.testing.assert_allclose(L["AVL"], L["I"] - L["II"] / 2, atol=atol)
    np.testing.assert_allclose(L["AVF"], L["II"] - L["I"] / 2, atol=atol)


def test_muse_mini_seed_decodes_and_reads_metadata():
    path = OK / "muse_mini.xml"
    rec = io.read_ecg(path)
    ref = _independent_muse_decode(path, "Rhythm")
    assert set(ref) == set(LEADS8)
    for name, x in ref.items():
        np.testing.assert_allclose(rec.lead(name), x, rtol=1e-6, atol=1e-4)
    _check_limb_identities(rec, atol=1e-3)
    m = rec.meta
    assert (m["patient_id"], m["site"], m["acquisition_time"], m["sex"], m["age"]) == (
        "JAX01234", "Research", "2021-05-10T13:15:18", "M", 60.0)
    assert m["diagnosis"][:2] == ["Statement Text(22)", "Statement Text(1684)"] and m["source"] == "muse"
    assert m["derived_leads"] == ["III", "AVR", "AVL", "AVF"]
    assert any("0.16 s, not 10 s" in f for f in m["flags"])  # the seed is a 0.16 s cut
    with pytest.raises(io.MissingWaveformError, match="'Median'"):
        io.read_ecg(path, waveform="Median")


@pytest.mark.parametrize("space", ["\r\n", "\t", "  \n ", "\u00a0", "\u2003\r\n"])
def test_muse_base64_wrapping_whitespace_is_dropped(tmp_path, space):
    """WaveFormData wrapped with ASCII or non-ASCII white space (every character ``str.split()`` drops) reads as
    the unwrapped file. Oracle: the seed's own record (bit for bit); only the wrapping differs."""
    path = OK / "muse_mini.xml"
    text = path.read_text(encoding="latin-1").replace('encoding="ISO-8859-1"', 'encoding="UTF-8"')
    wrapped = re.sub(r"(<WaveFormData>)(.*?)(</WaveFormData>)",
                     lambda m: m[1] + space.join(re.findall(".{1,7}", re.sub(r"\s", "", m[2]))) + space + m[3],
                     text, flags=re.S)
    assert wrapped != text
    (tmp_path / "wrapped.xml").write_text(wrapped, encoding="utf-8")
    ref, rec = io.read_ecg(path), io.read_ecg(tmp_path / "wrapped.xml")
    np.testing.assert_array_equal(rec.signal, ref.signal)
    assert rec.leads == ref.leads


def test_wfdb_exotic_format_goes_through_wfdb_and_matches(tmp_path):
    """Format 212 (not decoded here) is read by wfdb.rdrecord; units uV and lower-case names.
    Oracle: wfdb.rdrecord(...).p_signal (uV) and the written digital values."""
    wfdb = pytest.importorskip("wfdb")
    rng = np.random.default_rng(5)
    d = np.clip(np.round(_ecg(rng, 12, 300)), -2000, 2000).astype(np.int64).T  # (T, 12) digital
    names = ["i", "ii", "iii", "avr", "avl", "avf", "v1", "v2", "v3", "v4", "v5", "v6"]
    wfdb.wrsamp("rec212", fs=257, units=["uV"] * 12, sig_name=names, d_signal=d, fmt=["212"] * 12,
                adc_gain=[2.0] * 12, baseline=[10] * 12, write_dir=str(tmp_path))
    rec = io.read_ecg(tmp_path / "rec212.hea")
    ref = wfdb.rdrecord(str(tmp_path / "rec212"))
    assert rec.fs == 257.0 and rec.leads == io.CANONICAL_LEADS and rec.meta["header_units"] == ["uV"]
    for i, n in enumerate(names):
        np.testing.assert_allclose(rec.lead(n), ref.p_signal[:, i], rtol=1e-6, atol=1e-3)
        np.testing.assert_allclose(rec.lead(n), (d[:, i] - 10) / 2.0, rtol=1e-6, atol=1e-3)


# ------------------------------------------------------------------------- real data: MUSE ----
def _muse_manifest(shared: Path) -> list[dict]:
    with open(shared / "muse" / "MANIFEST.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.shared
def test_muse_real_files_match_independent_decode(shared_data):
    rows = [r for r in _muse_manifest(shared_data) if r["root"] == "RestingECG"]
    assert len(rows) == 20  # 10 files x (Median, Rhythm)
    for row in rows:
        path = shared_data / "muse" / row["file"]
        rec = io.read_ecg(path, waveform=row["waveform"])
        n = int(row["samples_per_lead"])
        assert rec.signal.shape == (12, n) and rec.fs == float(row["sample_base"])
        ref = _independent_muse_decode(path, row["waveform"])
        assert list(ref) == row["lead_ids"].split()
        for name, x in ref.items():
            np.testing.assert_allclose(rec.lead(name), x, rtol=1e-6, atol=1e-4)
        first5 = np.array([int(v) for v in row["lead0_first5"].split()]) * float(row["units_per_bit"])
        np.testing.assert_allclose(rec.lead("I")[:5], first5, rtol=1e-6)
        _check_limb_identities(rec, atol=1e-3)
        if row["waveform"] == "Rhythm":
            ptp = np.ptp(rec.signal, axis=1)  # sane microvolt amplitudes: a few hundred to a few thousand
            assert ptp.min() > 100 and ptp.max() < 8000, (row["file"], ptp)
            assert rec.meta["flags"] == []


@pytest.mark.shared
def test_muse_metadata_variants(shared_data):
    muse = shared_data / "muse"
    egm = io.read_ecg(muse / "egm_muse-sinus.scrubbed.xml")
    assert egm.meta["diagnosis"][1] == "Anterior infarct, age undetermined"  # two StmtTexts, one ENDSLINE
    assert egm.meta["site"] == "UNIVERSITY OF HOSPITAL" and egm.meta["acquisition_time"] == "2023-04-29T22:41:16"
    assert egm.meta["age"] == 43.0 and egm.meta["muse_version"] == "9.0.10.18530"
    phi = io.read_ecg(muse / "musephi_muse_ecg1.xml")
    assert "When compared with ECG of 10-MAY-2021 14:14," in phi.meta["diagnosis"]
    easy = io.read_ecg(muse / "easyrecg_muse_ecg1.xml")
    np.testing.assert_array_equal(phi.signal, easy.signal)  # same waveforms (identical CRCs)
    intro = io.read_ecg(muse / "introecg_MUSE_20200923_093504_79000_example.scrubbed.xml")  # CRLF file
    assert intro.meta["diagnosis"] != intro.meta["original_diagnosis"]
    brave = io.read_ecg(muse / "braveheart_example1.xml")  # demographics blocks cut out
    assert brave.meta["patient_id"] is None and brave.meta["site"] is None and brave.meta["diagnosis"] == []


@pytest.mark.shared
def test_muse_rejects_cardiosoft_xml(shared_data):
    path = shared_data / "muse" / "not_muse" / "gecardiosoft_deepecg_dummy_ecg.xml"
    with pytest.raises(io.WrongRootError) as info:
        io.read_ecg(path)
    assert "gecardiosoft_deepecg_dummy_ecg.xml" in str(info.value) and "<CardiologyXML>" in info.value.reason


@pytest.mark.shared
def test_muse_samplebase_is_trusted_and_odd_durations_flagged(shared_data, tmp_path):
    """Rule: the rate is SampleBase; samples / SampleBase != 10 s adds a flag (not an error)."""
    for name in ("easyrecg_muse_ecg2.xml", "introecg_MUSE_20200923_093504_79000_example.scrubbed.xml"):
        text = (shared_data / "muse" / name).read_bytes()
        parts = text.split(b"<WaveformType>Rhythm</WaveformType>")
        parts[1] = parts[1].replace(b"<SampleBase>500</SampleBase>", b"<SampleBase>250</SampleBase>", 1)
        (tmp_path / name).write_bytes(b"<WaveformType>Rhythm</WaveformType>".join(parts))
        rec = io.read_ecg(tmp_path / name)
        assert rec.fs == 250.0 and rec.n_samples == 5000
        assert any("20 s, not 10 s" in f for f in rec.meta["flags"])
        assert any("ECGSampleBase 500 differs from SampleBase 250" in f for f in rec.meta["flags"])


# ------------------------------------------------------------------------- real data: CinC ----
def _wfdb_reference(wfdb, base: Path, tmp: Path):
    """wfdb.rdrecord on the record; Georgia headers (``E07500.mat`` on line 1) are first fixed as
    cinc/README.md describes (strip ``.mat`` from the first token) in a temporary copy."""
    first = base.with_suffix(".hea").read_text().splitlines()[0].split()[0]
    if not first.endswith(".mat"):
        return wfdb.rdrecord(str(base))
    lines = base.with_suffix(".hea").read_text().splitlines()
    lines[0] = lines[0].replace(first, first[:-4], 1)
    (tmp / f"{base.name}.hea").write_text("\n".join(lines) + "\n")
    os.symlink(base.with_suffix(".mat"), tmp / f"{base.name}.mat")
    return wfdb.rdrecord(str(tmp / base.name))


@pytest.mark.slow
@pytest.mark.shared
def test_cinc_every_record_reads_or_raises_typed(shared_data, tmp_path):
    """Oracle: wfdb.rdrecord p_signal * 1000 with the header gains (gain="header"); atol 1e-3 uV
    plus one float32 ulp. Stored limb leads obey the identities to the quantisation step."""
    wfdb = pytest.importorskip("wfdb")
    headers = sorted((shared_data / "cinc").rglob("*.hea"))
    assert len(headers) == 31
    outcome = {}
    for k, hea in enumerate(headers):
        try:
            rec = io.read_ecg(hea, gain="header")
        except io.ECGReadError as e:
            outcome[hea.stem] = type(e).__name__
            assert hea.name in str(e)
            continue
        outcome[hea.stem] = "ok"
        d = tmp_path / str(k)
        d.mkdir()
        ref = _wfdb_reference(wfdb, hea.with_suffix(""), d)
        for i, n in enumerate(ref.sig_name):
            np.testing.assert_allclose(rec.lead(n), ref.p_signal[:, i] * 1000.0, rtol=2**-23, atol=1e-3)
        _check_limb_identities(io.read_ecg(hea), atol=4.0)
    assert outcome.pop("I0001") == "MissingSignalFileError"  # header-only INCART record
    assert set(outcome.values()) == {"ok"} and len(outcome) == 30


@pytest.mark.shared
def test_cinc_gain_policy_on_both_georgia_releases_and_ptbxl(shared_data):
    """gain="auto" replaces the CinC-2020 Georgia 4880/mV and PTB-XL 200/mV header gains by 1000/mV.
    Oracle: exact ratio to gain="header", and amplitude agreement with the 2021 releases of the
    same databases (median of per-record 99th-percentile |x| within a factor 1.6) where trusting
    the header leaves them 4.88x / 5x apart."""
    rec_dir = shared_data / "cinc" / "records"

    def amp(names, gain):
        return float(np.median([np.percentile(np.abs(io.read_ecg(rec_dir / f"{n}.hea", gain=gain).signal), 99) for n in names]))

    g2020, g2021 = ["E00015"], ["E07500", "E07504", "E07509", "E07514", "E07516"]
    p2020, p2021 = ["HR00599", "HR20715"], ["HR06000", "HR06002", "HR06003"]
    auto = io.read_ecg(rec_dir / "E00015.hea")
    header = io.read_ecg(rec_dir / "E00015.hea", gain="header")
    np.testing.assert_allclose(auto.signal, header.signal * 4.88, rtol=1e-6)
    assert auto.meta["gain_fix"]["header_gain"] == 4880.0 and header.meta["gain_fix"] is None
    np.testing.assert_allclose(io.read_ecg(rec_dir / "HR00599.hea").signal,
                               io.read_ecg(rec_dir / "HR00599.hea", gain="header").signal / 5.0, rtol=1e-6)
    for old, new, factor in ((g2020, g2021, 4.88), (p2020, p2021, 1 / 5.0)):
        ratio = amp(old, "auto") / amp(new, "auto")
        assert 1 / 1.6 < ratio < 1.6, ratio
        raw_ratio = amp(old, "header") / amp(new, "header")
        assert abs(math.log(raw_ratio / ratio) - math.log(1 / factor)) < 1e-6
    assert io.read_ecg(rec_dir / "E07500.hea").meta["gain_fix"] is None  # 2021 headers untouched


@pytest.mark.shared
def test_load_cinc_matches_manifest(shared_data):
    df = io.load_cinc(shared_data / "cinc")
    with open(shared_data / "cinc" / "MANIFEST.csv", newline="") as f:
        manifest = {r["record"]: r for r in csv.DictReader(f)}
    assert len(df) == 31 and set(df.index) == set(manifest)
    for rid, m in manifest.items():
        row = df.loc[rid]
        assert row.error is None
        assert (row.fs, row.n_leads, row.n_samples) == (float(m["fs"]), int(m["n_sig"]), int(m["sig_len"]))
        assert (math.isnan(row.age) and m["age"] == "NaN") or row.age == float(m["age"])
        assert row.sex == m["sex"][0].upper()
        assert row.has_signal == (rid != "I0001")
        if m["dx_abbrev"] and "?" not in m["dx_abbrev"]:
            assert row.dx_abbrev == list(dict.fromkeys(m["dx_abbrev"].split())), rid  # duplicates dropped
    assert df.loc["JS20005", "dx"] == ["284470004", "89792004", "427084000", "427172004"]  # empty item
    assert df.loc["JS20006", "dx_unmapped"] == ["251238007"]
    assert df.loc["E00015", "dx"] == ["251146004", "284470004"]  # duplicate code
    assert df.loc["A0043", "dx"] == ["164889003", "59118001"] and df.loc["A0043", "dx_kind"] == "text"
    assert df.loc["E00001", "dx_kind"] == "empty" and df.loc["ETEST", "dx_kind"] == "missing"
    assert df.loc["JS20000", "database"] == "Ningbo" and df.loc["Q0017", "duration_s"] == pytest.approx(57.868)
    assert df.loc["HR06000", "dx_scored"] == ["164934002", "426783006"]
    assert io.read_ecg(shared_data / "cinc" / "odd" / "third_party_modified" / "ETEST.hea").meta["dx"] is None


# ----------------------------------------------------------------------- real data: PTB-XL ----
@pytest.mark.shared
def test_load_ptbxl_counts_paths_and_scp_codes(ptbxl_root):
    df = io.load_ptbxl(ptbxl_root)
    assert len(df) == 150 and df.index.name == "ecg_id" and df.path.notna().all()
    assert df.loc[1, "scp_codes"] == {"NORM": 100.0, "LVOLT": 0.0, "SR": 0.0}
    assert all(isinstance(v, dict) for v in df.scp_codes)
    assert all(Path(p + ".hea").exists() and Path(p).is_absolute() and p.endswith("_hr") for p in df.path)
    big = io.load_ptbxl(ptbxl_root, sampling_rate=500, database="ptbxl_database_100hz.csv")
    assert len(big) == 840 and big.path.notna().sum() == 150  # rows without a 500 Hz file kept, path None
    lr = io.load_ptbxl(ptbxl_root, sampling_rate=100, database="ptbxl_database_100hz.csv")
    assert len(lr) == 840 and lr.path.notna().all() and lr.path.str.endswith("_lr").all()
    with pytest.raises(ValueError, match="sampling_rate"):
        io.load_ptbxl(ptbxl_root, sampling_rate=250)


@pytest.mark.shared
def test_ptbxl_superclasses_match_readme_counts(ptbxl_root):
    """Oracle: the superclass tables of ptbxl/README.md (multi-label, any likelihood)."""
    st = io.load_scp_statements(ptbxl_root)
    for db, counts, none in (("ptbxl_database.csv", dict(NORM=64, MI=56, STTC=37, CD=27, HYP=19), 5),
                             ("ptbxl_database_100hz.csv", dict(NORM=308, MI=315, STTC=213, CD=244, HYP=120), 7)):
        sc = io.ptbxl_superclasses(io.load_ptbxl(ptbxl_root, 100, db).scp_codes, st)
        assert {k: int(sum(k in s for s in sc)) for k in counts} == counts
        assert int((sc.str.len() == 0).sum()) == none


@pytest.mark.slow
@pytest.mark.shared
@pytest.mark.parametrize("rate, db, n", [(500, "ptbxl_database.csv", 150), (100, "ptbxl_database_100hz.csv", 840)])
def test_ptbxl_every_record_reads(ptbxl_root, rate, db, n):
    """All records read; 15 of them checked against wfdb.rdrecord p_signal * 1000 (atol 1e-3 uV);
    stored III = II - I to the quantisation step on every record."""
    wfdb = pytest.importorskip("wfdb")
    df = io.load_ptbxl(ptbxl_root, rate, db)
    assert len(df) == n
    check = set(df.index[:: max(1, n // 15)])
    for ecg_id, path in df.path.items():
        rec = io.read_ecg(path)
        assert rec.fs == rate and rec.signal.shape == (12, rate * 10) and rec.meta["derived_leads"] == []
        np.testing.assert_allclose(rec.lead("III"), rec.lead("II") - rec.lead("I"), atol=3.0)
        if ecg_id in check:
            ref = wfdb.rdrecord(path)
            for i, name in enumerate(ref.sig_name):
                np.testing.assert_allclose(rec.lead(name), ref.p_signal[:, i] * 1000.0, rtol=2**-23, atol=1e-3)


def _same_tree(a, b) -> None:
    """Element trees equal in tag (``{uri}local`` == ``uri}local``), attributes, text and tail, recursively."""
    def key(t):
        return t[1:] if t.startswith("{") else t
    assert key(a.tag) == key(b.tag)
    assert {key(k): v for k, v in a.attrib.items()} == {key(k): v for k, v in b.attrib.items()}
    assert (a.text, a.tail) == (b.text, b.tail)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        _same_tree(x, y)


def _defused_reference(data: bytes):
    import defusedxml.ElementTree as DET
    return DET.fromstring(data, forbid_dtd=False, forbid_entities=True, forbid_external=True)


NAMESPACED = (b'<?xml version="1.0"?>\n<!-- c --><r xmlns="urn:a" xmlns:b="urn:b" b:x="1" y="2">'
              b'<b:c z="&amp;3">t&#65;&lt;<d/>tail</b:c><?pi x?><e>\r\n  line\r\n</e></r>\n')


def test_muse_parser_builds_defusedxmls_tree():
    """``muse.defused_fromstring`` (expat events straight to the C TreeBuilder) builds the tree of
    ``defusedxml.ElementTree.fromstring`` (oracle; same flags): the seed, a namespaced document with attributes,
    character references, a PI, a comment and CRLF text, Latin-1 documents with and without non-ASCII bytes (read
    as UTF-8 when they are ASCII), and every shared MUSE XML file when present."""
    from heartbeit_lib.io.muse import defused_fromstring
    latin1 = '<?xml version="1.0" encoding="ISO-8859-1"?>\n<r a="\u00e9"><n>Jos\u00e9 M\u00fcller</n>\u00b5V</r>'
    docs = [(OK / "muse_mini.xml").read_bytes(), NAMESPACED, latin1.encode("latin-1"),
            latin1.encode("ascii", "xmlcharrefreplace"), latin1.replace("ISO-8859-1", "US-ASCII").encode("ascii", "xmlcharrefreplace")]
    shared = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "muse"
    docs += [p.read_bytes() for p in sorted(shared.rglob("*.xml"))]
    for data in docs:
        _same_tree(defused_fromstring(data), _defused_reference(data))


@pytest.mark.parametrize("doc, error", [
    (b'<!DOCTYPE r [<!ENTITY a "b">]><r>&a;</r>', "EntitiesForbidden"),
    (b'<!DOCTYPE r [<!ENTITY a SYSTEM "file:///etc/passwd">]><r>&a;</r>', "EntitiesForbidden"),
    (b'<!DOCTYPE r SYSTEM "http://example.invalid/x.dtd"><r>&undefined;</r>', "ParseError"),
    (b'<r>&undefined;</r>', "ParseError"),
    (b'<r><a></r>', "ParseError"),
    (b'<?xml version="1.0" encoding="bogus"?><r/>', "LookupError"),  # ASCII bytes, but no encoding to read them
    (b'<?xml version="1.0" encoding="UTF-16"?><r/>', "ParseError"),
    (b'<?xml version="1.0" encoding="latin-1"?><r>\x00</r>', "ParseError"),
])
def test_muse_parser_refuses_what_defusedxml_refuses(doc, error):
    """The same documents are refused with the same exception type as ``defusedxml.ElementTree.fromstring``
    (oracle): entity declarations, an undefined entity, malformed XML."""
    from heartbeit_lib.io.muse import defused_fromstring
    with pytest.raises(Exception) as ref:
        _defused_reference(doc)
    with pytest.raises(Exception) as got:
        defused_fromstring(doc)
    assert type(got.value) is type(ref.value) and type(ref.value).__name__ == error
    assert str(got.value) == str(ref.value)
