"""Hostile inputs of a cohort build (issue 16): one bad file never stops a build, one build per run
folder, a salt that is neither shared by accident nor kept next to the hashes.

Oracles: the accounting invariant ``len(inputs) == len(manifest) + len(rejects)`` with the exact
reject rows expected; the corpus files of ``tests/data/broken`` (their typed error); ``flock``
semantics (a second exclusive lock on the folder is refused); the salt file's bytes and mode.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from heartbeit_lib import cohorts, io
from heartbeit_lib.cohorts import ids

BROKEN = Path(__file__).resolve().parents[1] / "data" / "broken"
OUT_LEADS = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")


def _inputs(n: int) -> pd.DataFrame:
    return pd.DataFrame({"record_id": [f"ecg{i:02d}" for i in range(n)], "patient_id": [f"P{i}" for i in range(n)],
                         "site": "s", "label": 0, "source_path": [cohorts.ArrayReader.path(i) for i in range(n)]})


def _signals(n: int) -> np.ndarray:
    return np.random.default_rng(0).normal(0, 300, (n, 8, 2500)).astype(np.float32)


class FailingReader(cohorts.ArrayReader):
    """Raises an untyped exception for some records (what a reader bug or a huge allocation does)."""

    FAILURES = {"array[1]": MemoryError("Unable to allocate 1.46 TiB for an array with shape (25000000054,)"),
                "array[3]": OverflowError("(34, 'Numerical result out of range')"),
                "array[4]": ZeroDivisionError("float division by zero")}

    def __call__(self, source_path):
        if source_path in self.FAILURES:
            raise self.FAILURES[source_path]
        return super().__call__(source_path)


class DyingReader(cohorts.ArrayReader):
    """Kills its process on one record (a crash in native code, the OOM killer)."""

    def __call__(self, source_path):
        if source_path == "array[2]":
            os._exit(3)
        return super().__call__(source_path)


class SlowReader(cohorts.ArrayReader):
    """Signals ``started`` and waits for ``go`` on the first record (to hold a build open)."""

    def __init__(self, *a, started: threading.Event, go: threading.Event, **kw):
        super().__init__(*a, **kw)
        self.started, self.go = started, go

    def __call__(self, source_path):
        self.started.set()
        self.go.wait(30)
        return super().__call__(source_path)


def _accounted(store, n: int) -> None:
    assert len(store.manifest) + len(store.rejects) == n
    seen = sorted([*store.manifest["input_index"], *store.rejects["input_index"]])
    assert seen == list(range(n))


def test_untyped_per_file_failures_are_rejects_and_the_build_goes_on(tmp_path):
    store = cohorts.build_store(_inputs(6), FailingReader(_signals(6), 500, OUT_LEADS), tmp_path, preprocess_kw=None,
                                salt="s", shard_size=2, progress=False)
    _accounted(store, 6)
    r = store.rejects.set_index("record_id")
    assert r["error_type"].to_dict() == {"ecg01": "MemoryError", "ecg03": "OverflowError", "ecg04": "ZeroDivisionError"}
    assert (r["stage"] == "read").all() and r.loc["ecg01", "reason"].startswith("array[1]: Unable to allocate")
    assert store.manifest["record_id"].tolist() == ["ecg00", "ecg02", "ecg05"]


def test_hostile_muse_files_become_rejects_in_a_real_build(tmp_path):
    """SampleExponent 400 / -400 (OverflowError / ZeroDivisionError before) and SampleBase 0.0001 (a
    1.46 TiB allocation before) each aborted a build; now each is a typed reject."""
    names = ["muse_exponent_400.xml", "muse_exponent_minus400.xml", "muse_samplebase_tiny.xml",
             "muse_samplebase_half.xml", "muse_units_per_bit_1e300.xml", "muse_crc_text.xml"]
    inputs = pd.DataFrame({"record_id": [n[:-4] for n in names], "source_path": [str(BROKEN / n) for n in names],
                           "patient_id": "", "site": "s", "label": 0})
    store = cohorts.build_store(inputs, io.read_ecg, tmp_path, preprocess_kw={}, salt="s", workers=1, progress=False)
    _accounted(store, len(names))
    assert store.rejects["error_type"].tolist() == ["UnknownSamplingRateError"] * 4 + ["AmplitudeError", "ChecksumError"]
    assert all(n in reason for n, reason in zip(names, store.rejects["reason"]))


@pytest.mark.slow
def test_a_worker_that_dies_is_a_reject(tmp_path):
    """Spawned workers (workers=2, 3 shards): the record that kills its worker is found and rejected
    (WorkerDiedError), every other record is stored, the counts add up."""
    reader = DyingReader(_signals(6), 500, OUT_LEADS, in_process=False)
    store = cohorts.build_store(_inputs(6), reader, tmp_path, preprocess_kw=None, salt="s", shard_size=2,
                                workers=2, progress=False)
    _accounted(store, 6)
    assert store.rejects["record_id"].tolist() == ["ecg02"]
    assert store.rejects["error_type"].tolist() == ["WorkerDiedError"]
    assert "died" in store.rejects["reason"].iloc[0]


def test_a_second_build_of_the_same_folder_is_refused(tmp_path):
    started, go = threading.Event(), threading.Event()
    x = _signals(2)
    errors: list[BaseException] = []

    def first():
        try:
            cohorts.build_store(_inputs(2), SlowReader(x, 500, OUT_LEADS, started=started, go=go), tmp_path,
                                preprocess_kw=None, salt="s", progress=False)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=first)
    t.start()
    try:
        assert started.wait(30)
        with pytest.raises(cohorts.StoreError, match="another build of this run folder is running"):
            cohorts.build_store(_inputs(2), cohorts.ArrayReader(x, 500, OUT_LEADS), tmp_path, preprocess_kw=None,
                                salt="s", progress=False)
    finally:
        go.set()
        t.join(60)
    assert not errors
    store = cohorts.build_store(_inputs(2), cohorts.ArrayReader(x, 500, OUT_LEADS), tmp_path, preprocess_kw=None,
                                salt="s", progress=False)  # the lock was released: a re-run (resume) works
    _accounted(store, 2)


def test_default_salt_is_per_user_outside_the_run_folder_and_private(tmp_path):
    store = cohorts.build_store(_inputs(2), cohorts.ArrayReader(_signals(2), 500, OUT_LEADS), tmp_path / "run",
                                preprocess_kw=None, progress=False)
    salt_file = ids.default_salt_path()
    assert not salt_file.is_relative_to(tmp_path / "run")
    assert [p.name for p in (tmp_path / "run").iterdir() if "salt" in p.name] == []
    assert stat.S_IMODE(salt_file.stat().st_mode) == 0o600
    salt = salt_file.read_text().strip()
    info = json.loads((tmp_path / "run" / "store.json").read_text())
    assert info["salt_file"] == str(salt_file)
    for p in (tmp_path / "run").rglob("*"):  # the path is recorded, never the salt
        assert not p.is_file() or salt.encode() not in p.read_bytes(), p
    assert store.manifest["patient_hash"].iloc[0] == ids.hash_patient("P0", salt)


def test_default_salt_path_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(ids.SALT_ENV)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert ids.default_salt_path() == tmp_path / "xdg" / "heartbeit" / "salt"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert ids.default_salt_path() == tmp_path / "home" / ".local" / "share" / "heartbeit" / "salt"


def test_concurrent_salt_creation_agrees_on_one_salt(tmp_path):
    """16 threads create the default salt at once: O_EXCL lets one write it, the others read it; no
    shared temporary file (``salt.tmp`` crashed 3 of 19 concurrent builds before)."""
    out: list[str] = []
    barrier = threading.Barrier(16)

    def create():
        barrier.wait()
        out.append(ids.read_or_create_salt(tmp_path / "run"))

    threads = [threading.Thread(target=create) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 16 and len(set(out)) == 1 and len(out[0]) == 32
    assert ids.default_salt_path().read_text().strip() == out[0]
    assert list(ids.default_salt_path().parent.glob("*tmp*")) == []


def test_legacy_salt_in_the_run_folder_is_reused(tmp_path):
    (tmp_path / "salt.txt").write_text("legacy\n")
    (tmp_path / "salt.txt").chmod(0o600)
    assert ids.read_or_create_salt(tmp_path) == "legacy"
    assert ids.salt_path(tmp_path) == tmp_path / "salt.txt"
    assert not ids.default_salt_path().exists()


def test_shards_in_order_from_forked_readers_equal_build_store(tmp_path):
    """``build_shards_in_order`` (07's readers: forked workers, shards yielded in order as they are built) then
    ``merge_store``: every shard index once, in order, and the store of ``build_store`` in one process (oracle)
    byte for byte: signals, manifest, rejects (a reader failure included); ``while_reading`` runs once. A second
    call yields the built shards without reading (resumed)."""
    n, kw = 7, dict(preprocess_kw=None, salt="s", shard_size=2)
    reader = FailingReader(_signals(n), 500, OUT_LEADS, in_process=False)
    calls: list[int] = []
    got = list(cohorts.build_shards_in_order(_inputs(n), reader, tmp_path / "forked", workers=2,
                                             while_reading=lambda: calls.append(1), **kw))
    assert got == [0, 1, 2, 3] and calls == [1]  # while_reading: once
    store = cohorts.merge_store(_inputs(n), tmp_path / "forked", **kw)
    ref = cohorts.build_store(_inputs(n), reader, tmp_path / "ref", workers=1, progress=False, **kw)
    np.testing.assert_array_equal(store.signals(np.arange(len(store))), ref.signals(np.arange(len(ref))))
    pd.testing.assert_frame_equal(store.manifest, ref.manifest)
    pd.testing.assert_frame_equal(store.rejects.assign(reason=""), ref.rejects.assign(reason=""))
    assert list(store.rejects["record_id"]) == ["ecg01", "ecg03", "ecg04"]
    again = DyingReader(_signals(n), 500, OUT_LEADS, in_process=False)  # would kill a worker if it read anything
    assert list(cohorts.build_shards_in_order(_inputs(n), again, tmp_path / "forked", workers=2, **kw)) == [0, 1, 2, 3]
    pd.testing.assert_frame_equal(cohorts.merge_store(_inputs(n), tmp_path / "forked", **kw).rejects, store.rejects)


@pytest.mark.slow
def test_shards_in_order_survive_a_dying_reader(tmp_path):
    """A record that kills its forked worker: the remaining shards go to the spawn probe (as build_store), the
    record is a WorkerDiedError reject, every shard is yielded once and in order, the counts add up."""
    reader = DyingReader(_signals(6), 500, OUT_LEADS, in_process=False)
    kw = dict(preprocess_kw=None, salt="s", shard_size=2)
    assert list(cohorts.build_shards_in_order(_inputs(6), reader, tmp_path, workers=2, **kw)) == [0, 1, 2]
    store = cohorts.merge_store(_inputs(6), tmp_path, **kw)
    _accounted(store, 6)
    assert store.rejects["record_id"].tolist() == ["ecg02"]
    assert store.rejects["error_type"].tolist() == ["WorkerDiedError"]
