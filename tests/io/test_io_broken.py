"""The malformed-ECG corpus (``tests/data/broken/``): every file raises its specific error.

Oracle: ``broken/EXPECTED.csv`` (written by ``tests/data/make_broken.py`` next to the files it
mutates from real MUSE / PTB-XL / CinC cuts) names, for each entry file, the exact
:class:`heartbeit_lib.io.ECGReadError` subclass and a substring of its reason. The seeds in
``broken/ok/`` must read cleanly, so each failure is caused by its one mutation; a seeded
byte-level fuzz of the seeds checks that nothing but ``ECGReadError`` ever escapes.
"""

from __future__ import annotations

import csv
import importlib.util
import pickle
from pathlib import Path

import numpy as np
import pytest

from heartbeit_lib import io

BROKEN = Path(__file__).resolve().parents[1] / "data" / "broken"
OK = BROKEN / "ok"
with open(BROKEN / "EXPECTED.csv", newline="") as _f:
    EXPECTED = list(csv.DictReader(_f))


def test_corpus_is_large_and_covers_the_issue_list():
    assert len(EXPECTED) >= 25
    kinds = {row["error"] for row in EXPECTED}
    # The issue's list: not XML, wrong root, missing/truncated base64, odd byte count, lead count,
    # sample count, missing I/II, NaN/inf, flat line, header/signal mismatch, unknown rate, empty.
    required = {"NotXMLError", "WrongRootError", "MissingWaveformError", "Base64Error", "LeadMismatchError",
                "MissingLeadError", "NonFiniteError", "FlatLineError", "HeaderSignalMismatchError",
                "UnknownSamplingRateError", "EmptyFileError", "UnsafeXMLError", "MissingSignalFileError",
                "HeaderSyntaxError", "UnsupportedFormatError", "ChecksumError", "UnitsError",
                "AmplitudeError", "UnsafePathError", "FileTooLargeError"}  # issue 16
    assert required <= kinds, required - kinds
    for name in kinds:  # every class named in EXPECTED exists and is an ECGReadError
        assert issubclass(getattr(io, name), io.ECGReadError)


def test_every_file_in_the_corpus_is_listed():
    entries = {row["file"] for row in EXPECTED}
    for f in BROKEN.iterdir():
        if f.is_dir() or f.name in ("EXPECTED.csv", "README.md"):
            continue
        companion = f.suffix in (".dat", ".mat") and f.with_suffix(".hea").name in entries
        assert f.name in entries or companion, f"{f.name} is in the corpus but not in EXPECTED.csv"
        # slow_*: the worst cases of issue 16 need size to be slow on a quadratic parser
        limit = 250_000 if f.name.startswith("slow_") else 10_000
        assert f.stat().st_size <= limit, f"{f.name} is larger than {limit} bytes"


@pytest.mark.parametrize("row", EXPECTED, ids=[r["file"] for r in EXPECTED])
def test_broken_file_raises_its_specific_error(row):
    path = BROKEN / row["file"]
    expected = getattr(io, row["error"])
    with pytest.raises(io.ECGReadError) as info:
        io.read_ecg(path)
    err = info.value
    assert type(err) is expected, f"{type(err).__name__} != {row['error']}: {err}"
    assert isinstance(err, ValueError)
    assert row["file"] in str(err), "message must name the file"
    assert row["reason_contains"] in err.reason
    assert str(err) == f"{err.path}: {err.reason}"
    clone = pickle.loads(pickle.dumps(err))  # crosses process boundaries in the cohort builder
    assert type(clone) is expected and clone.path == err.path and clone.reason == err.reason


@pytest.mark.parametrize("name", ["muse_mini.xml", "wfdb_mini.hea", "mat_mini.hea"])
def test_seeds_read_cleanly(name):
    rec = io.read_ecg(OK / name)
    assert rec.leads == io.CANONICAL_LEADS
    assert rec.signal.dtype == np.float32 and np.isfinite(rec.signal).all()
    assert rec.meta["flat_leads"] == []


def test_seed_wfdb_files_match_wfdb_rdrecord():
    """Oracle: wfdb.rdrecord(...).p_signal * 1000 (mV -> uV), atol 1e-3 uV."""
    wfdb = pytest.importorskip("wfdb")
    for name in ("wfdb_mini", "mat_mini"):
        ref = wfdb.rdrecord(str(OK / name))
        rec = io.read_ecg(OK / f"{name}.hea")
        for i, sig_name in enumerate(ref.sig_name):
            ours = rec.lead(sig_name).astype(np.float64)
            np.testing.assert_allclose(ours, ref.p_signal[:, i] * 1000.0, rtol=0, atol=1e-3)


def _fuzz(data: bytes, rng: np.random.Generator) -> bytes:
    kind = rng.integers(4)
    b = bytearray(data)
    if kind == 0:  # truncate
        return bytes(b[: int(rng.integers(0, len(b)))])
    if kind == 1:  # overwrite a run with random bytes
        i = int(rng.integers(0, len(b)))
        b[i : i + 8] = rng.integers(0, 256, 8, dtype=np.uint8).tobytes()
        return bytes(b)
    if kind == 2:  # flip one bit
        i = int(rng.integers(0, len(b)))
        b[i] ^= 1 << int(rng.integers(8))
        return bytes(b)
    i, j = sorted(rng.integers(0, len(b), 2))  # delete a span
    return bytes(b[:i] + b[j:])


def test_fuzzed_seeds_never_raise_anything_but_ECGReadError(tmp_path):
    """Seeded byte-level fuzz: each variant either reads (finite float32 uV) or raises ECGReadError."""
    rng = np.random.default_rng(12345)
    outcomes = {"ok": 0, "rejected": 0}
    cases = [("muse_mini.xml", "muse_mini.xml"), ("wfdb_mini.hea", "wfdb_mini.hea"), ("wfdb_mini.dat", "wfdb_mini.hea"),
             ("mat_mini.hea", "mat_mini.hea"), ("mat_mini.mat", "mat_mini.hea")]
    for k in range(150):
        target, entry = cases[k % len(cases)]
        d = tmp_path / f"case{k}"
        d.mkdir()
        for f in OK.iterdir():
            data = f.read_bytes()
            (d / f.name).write_bytes(_fuzz(data, rng) if f.name == target else data)
        try:
            rec = io.read_ecg(d / entry)
        except io.ECGReadError as e:
            assert entry in str(e) or target in str(e)
            outcomes["rejected"] += 1
        else:
            assert rec.signal.dtype == np.float32 and np.isfinite(rec.signal).all()
            outcomes["ok"] += 1
    assert outcomes["rejected"] > 50  # most corruptions must be caught (CRC, checksums, syntax)


@pytest.mark.shared
def test_corpus_is_reproducible_from_the_real_files(shared_data, tmp_path):
    """The committed corpus is exactly what make_broken.py produces from ../shared/data."""
    spec = importlib.util.spec_from_file_location("make_broken", BROKEN.parent / "make_broken.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    expected = mod.build(tmp_path / "broken", shared_data)
    assert [list(e) for e in expected] == [[r["file"], r["error"], r["reason_contains"]] for r in EXPECTED]
    for f in (tmp_path / "broken").rglob("*"):
        if f.is_file():
            committed = BROKEN / f.relative_to(tmp_path / "broken")
            assert committed.read_bytes() == f.read_bytes(), f"{committed} differs from a fresh build"
