"""Cohort store: storage, accounting, rejects, resumability, hashing, tasks and sources.

Oracles: stored signals are compared with ``x.astype(np.float16)`` (exact) or with a direct call of
``signals.preprocess`` (exact after the same float16 cast); resumed builds with the bytes of an
uninterrupted build; PTB-XL label counts with ``../shared/data/ptbxl/README.md``.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from heartbeit_lib import cohorts
from heartbeit_lib.pipeline import preprocess

OUT_LEADS = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")


def _meta(n: int, seed: int = 0, per_patient: int = 2, n_sites: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"record_id": [f"ecg{i:04d}" for i in range(n)],
                         "patient_id": [f"MRN-{1000 + i // per_patient}" for i in range(n)],
                         "site": [f"site{i % n_sites}" for i in range(n)],
                         "label": (rng.random(n) < 0.3).astype(np.int64)})


def _stored(n: int, seed: int = 0) -> np.ndarray:
    """Already-preprocessed signals (N, 8, 2500) microvolts."""
    return np.random.default_rng(seed).normal(0, 300, (n, 8, 2500)).astype(np.float32)


def _raw(n: int, seed: int = 0, samples: int = 5000) -> np.ndarray:
    """Raw 500 Hz signals (N, 8, samples) microvolts: a 1.2 Hz 'beat' + baseline wander + noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 500.0
    x = 800 * np.sin(2 * np.pi * 1.2 * t) + 300 * np.sin(2 * np.pi * 0.2 * t)
    return (x[None, None] + rng.normal(0, 30, (n, 8, samples))).astype(np.float32)


def _files(run_dir: Path) -> dict[str, bytes]:
    """Every output file of a store (not the salt or build spec), relative path -> bytes."""
    out = {}
    for p in sorted(run_dir.rglob("*")):
        if p.is_file() and p.name not in ("salt.txt",):
            out[str(p.relative_to(run_dir))] = p.read_bytes()
    return out


class CrashingReader(cohorts.ArrayReader):
    """Interrupts the build (KeyboardInterrupt: a 'kill') on one record, after earlier shards were written;
    any Exception of one file would be a reject, see test_cohorts_hostile.py."""

    def __init__(self, x, crash_on: str):
        super().__init__(x, 500, OUT_LEADS)
        self.crash_on = crash_on

    def __call__(self, source_path):
        if source_path == self.crash_on:
            raise KeyboardInterrupt("simulated kill")
        return super().__call__(source_path)


# ---------------------------------------------------------------- storage


@pytest.mark.slow
def test_signals_roundtrip_float16_and_manifest_contract(tmp_path):
    x, meta = _stored(23), _meta(23)
    store = cohorts.build_store_from_arrays(tmp_path, x, meta, seed=0, shard_size=5, salt="s")
    assert len(store) == 23 and store.task == "custom"
    m = store.manifest
    assert isinstance(m.index, pd.RangeIndex) and list(m.index) == list(range(23))
    for c in ("record_id", "patient_hash", "site", "label", "split", "shard", "offset", "source_path"):
        assert c in m.columns
    assert m["record_id"].tolist() == meta["record_id"].tolist()  # store order = input order
    assert set(m["split"]) <= set(cohorts.SPLITS)
    assert m["label"].dtype == np.int64 and m["shard"].max() == 4
    assert store.task_config == cohorts.load_task("custom")
    idx = np.array([22, 0, 7, 7, 13, 5])  # across shards, unsorted, with a duplicate
    got = store.signals(idx)
    assert got.dtype == np.float32 and got.shape == (6, 8, 2500)
    # oracle: float16 rounding of the input, exactly (auto mode stores (N, 8, 2500) as given)
    np.testing.assert_array_equal(got, x[idx].astype(np.float16).astype(np.float32))
    assert store.signals(np.array([], np.int64)).shape == (0, 8, 2500)
    with pytest.raises(IndexError):
        store.signals([23])
    assert (tmp_path / "store" / "shard-00000.npy").exists()
    assert np.load(tmp_path / "store" / "shard-00000.npy").dtype == np.float16


def test_preprocess_path_equals_signals_preprocess(tmp_path):
    from heartbeit_lib import signals

    x, meta = _raw(6), _meta(6)
    store = cohorts.build_store_from_arrays(tmp_path, x, meta, preprocess=True, shard_size=4, salt="s")
    ref = signals.preprocess(x, 500, OUT_LEADS).astype(np.float16).astype(np.float32)  # oracle
    np.testing.assert_array_equal(store.signals(np.arange(6)), ref)
    # the band-pass removed the 0.2 Hz wander: stored mean over 5 s is near 0 (raw mean is not)
    assert np.abs(store.signals([0]).mean(axis=-1)).max() < 30


def test_every_input_accounted_and_rejects_have_reasons(tmp_path):
    x, meta = _raw(12, samples=5000), _meta(12)
    x[2, 0, 100] = np.nan                   # signals.NonFiniteSignalError
    x[5] *= 1e5                             # beyond float16 after filtering -> AmplitudeRangeError
    inputs = meta.copy()
    inputs.insert(0, "source_path", [cohorts.ArrayReader.path(i) for i in range(12)])
    inputs["reject"] = ""
    inputs.loc[9, "reject"] = "lvef column is empty"  # a row without a usable label
    store = cohorts.build_store(inputs, cohorts.ArrayReader(x, 500, OUT_LEADS), tmp_path, task_cfg="custom",
                                seed=0, shard_size=5, workers=1, preprocess_kw={}, salt="s", progress=False)
    rej = store.rejects
    assert len(inputs) == len(store) + len(rej)
    assert dict(zip(rej["record_id"], rej["error_type"])) == {
        "ecg0002": "NonFiniteSignalError", "ecg0005": "AmplitudeRangeError", "ecg0009": "LabelError"}
    assert all(r.startswith("array[") for r in rej["reason"])  # every reason names the input
    assert "65504" in rej.set_index("record_id").loc["ecg0005", "reason"]
    csv = pd.read_csv(tmp_path / "rejects.csv")
    assert csv["record_id"].tolist() == rej["record_id"].tolist()
    assert not set(rej["record_id"]) & set(store.manifest["record_id"])


def test_float16_boundary_is_rejected_not_clipped(tmp_path):
    x, meta = _stored(4), _meta(4, per_patient=1)
    x[0, 3, 10] = 65504.0      # largest float16: stored exactly
    x[1, 2, 20] = -65600.0     # beyond: rejected
    store = cohorts.build_store_from_arrays(tmp_path, x, meta, salt="s")
    assert store.manifest["record_id"].tolist() == ["ecg0000", "ecg0002", "ecg0003"]
    assert store.signals([0])[0, 3, 10] == 65504.0
    assert store.rejects["error_type"].tolist() == ["AmplitudeRangeError"]


def test_interrupts_propagate(tmp_path):
    x, meta = _stored(4), _meta(4)
    inputs = meta.assign(source_path=[cohorts.ArrayReader.path(i) for i in range(4)])
    with pytest.raises(KeyboardInterrupt, match="simulated kill"):
        cohorts.build_store(inputs, CrashingReader(x, "array[1]"), tmp_path, preprocess_kw=None,
                            salt="s", progress=False)


# ---------------------------------------------------------------- hashing


def test_no_raw_patient_ids_anywhere(tmp_path):
    x, meta = _stored(10), _meta(10)
    store = cohorts.build_store_from_arrays(tmp_path, x, meta)
    assert not (tmp_path / "salt.txt").exists()  # the salt is kept outside the run folder
    salt_file = cohorts.default_salt_path()
    salt = salt_file.read_text().strip()
    assert len(salt) == 32  # 128 random bits, created once in the per-user file
    assert json.loads((tmp_path / "store.json").read_text())["salt_file"] == str(salt_file)  # path, not content
    exp = [hashlib.sha256(f"{salt}\0{p}".encode()).hexdigest() for p in meta["patient_id"]]
    assert store.manifest["patient_hash"].tolist() == exp
    for p in tmp_path.rglob("*"):
        if p.is_file():
            blob = p.read_bytes()
            assert b"MRN-" not in blob, f"raw patient id leaked into {p}"
    assert "patient_id" not in store.manifest.columns


def test_salt_file_and_missing_patient_ids(tmp_path):
    salt_file = tmp_path / "salt.secret"
    salt_file.write_text("pepper\n")
    salt_file.chmod(0o600)  # a salt file must be private (issue 27)
    x, meta = _stored(4), _meta(4)
    meta.loc[1, "patient_id"] = None  # no id anywhere -> the record is its own patient
    inputs = meta.assign(source_path=[cohorts.ArrayReader.path(i) for i in range(4)])
    store = cohorts.build_store(inputs, cohorts.ArrayReader(x, 500, OUT_LEADS), tmp_path / "run",
                                preprocess_kw=None, salt_file=salt_file, progress=False)
    assert not (tmp_path / "run" / "salt.txt").exists()
    m = store.manifest
    assert m.loc[0, "patient_hash"] == hashlib.sha256(b"pepper\0MRN-1000").hexdigest()
    assert m.loc[1, "patient_hash"] == hashlib.sha256(b"pepper\0record:ecg0001").hexdigest()
    assert m["patient_source"].tolist() == ["input", "record_id", "input", "input"]


# ---------------------------------------------------------------- resumability


@pytest.mark.slow
def test_killed_build_resumes_byte_identical(tmp_path):
    x, meta = _raw(20), _meta(20)
    x[3, 1, :] = np.inf  # a reject inside a finished shard
    inputs = meta.assign(source_path=[cohorts.ArrayReader.path(i) for i in range(20)])
    kw = dict(task_cfg="custom", seed=3, shard_size=4, preprocess_kw={}, salt="fixed", progress=False)
    full = tmp_path / "full"
    cohorts.build_store(inputs, cohorts.ArrayReader(x, 500, OUT_LEADS), full, **kw)

    part = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):  # "killed" while reading shard 2 (records 8-11)
        cohorts.build_store(inputs, CrashingReader(x, "array[9]"), part, **kw)
    done = sorted(p.name for p in (part / "store").glob("shard-*.npy"))
    assert done == ["shard-00000.npy", "shard-00001.npy"] and not (part / "manifest.parquet").exists()
    with pytest.raises(cohorts.StoreError):
        cohorts.CohortStore(part)  # an unfinished build cannot be opened
    mtime = (part / "store" / "shard-00000.npy").stat().st_mtime_ns
    stale = part / "store" / "shard-00002.npy.tmp-12345"  # a write cut short by the kill
    stale.write_bytes(b"half a shard")
    cohorts.build_store(inputs, cohorts.ArrayReader(x, 500, OUT_LEADS), part, **kw)
    assert (part / "store" / "shard-00000.npy").stat().st_mtime_ns == mtime  # not redone
    assert not stale.exists()
    assert _files(part) == _files(full)

    # a shard lost after the build (e.g. a deleted file) is redone, same bytes again
    (part / "store" / "shard-00003.npy").unlink()
    mtime = (part / "store" / "shard-00001.npy").stat().st_mtime_ns
    cohorts.build_store(inputs, cohorts.ArrayReader(x, 500, OUT_LEADS), part, **kw)
    assert (part / "store" / "shard-00001.npy").stat().st_mtime_ns == mtime
    assert _files(part) == _files(full)


def test_resume_with_other_parameters_is_refused(tmp_path):
    x, meta = _stored(6), _meta(6)
    cohorts.build_store_from_arrays(tmp_path, x, meta, seed=0, salt="s")
    with pytest.raises(cohorts.StoreError, match="other inputs or parameters"):
        cohorts.build_store_from_arrays(tmp_path, x, meta, seed=1, salt="s")


@pytest.mark.slow
def test_process_pool_gives_the_same_bytes(tmp_path):
    x, meta = _raw(12), _meta(12)
    inputs = meta.assign(source_path=[cohorts.ArrayReader.path(i) for i in range(12)])
    kw = dict(seed=0, shard_size=4, preprocess_kw={}, salt="s", progress=False)
    cohorts.build_store(inputs, cohorts.ArrayReader(x, 500, OUT_LEADS), tmp_path / "a", workers=1, **kw)
    pool_reader = cohorts.ArrayReader(x, 500, OUT_LEADS, in_process=False)  # picklable, sent to workers
    cohorts.build_store(inputs, pool_reader, tmp_path / "b", workers=2, **kw)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")


@pytest.mark.slow
def test_store_pickles_without_memmaps(tmp_path):
    store = cohorts.build_store_from_arrays(tmp_path, _stored(4), _meta(4, per_patient=1), salt="s")
    before = store.signals([1])
    clone = pickle.loads(pickle.dumps(store))  # e.g. DataLoader workers with spawn
    assert clone._shards == {}
    np.testing.assert_array_equal(clone.signals([1]), before)


def test_duplicate_record_ids_rejected(tmp_path):
    meta = _meta(3)
    meta.loc[2, "record_id"] = "ecg0000"
    with pytest.raises(cohorts.CohortError, match="duplicate record_id"):
        cohorts.build_store_from_arrays(tmp_path, _stored(3), meta)


# ---------------------------------------------------------------- tasks


def test_all_tasks_load_and_unknown_keys_are_rejected(tmp_path):
    names = cohorts.task_names()
    assert {"mi", "stemi", "lvef", "hcm", "demo", "custom", "unlabelled"} <= set(names)
    for n in names:
        assert cohorts.load_task(n).name == n
    bad = tmp_path / "typo.yaml"
    bad.write_text("label_rule: given\nextrenal_site: B\n")
    with pytest.raises(cohorts.TaskError, match="extrenal_site"):
        cohorts.load_task(bad)
    bad.write_text("split: random\n")
    with pytest.raises(cohorts.TaskError, match="split"):
        cohorts.load_task(bad)
    with pytest.raises(cohorts.TaskError, match="no file"):
        cohorts.load_task("nonexistent_task")
    assert cohorts.load_task("mi", split="group_shuffle").split == "group_shuffle"
    assert cohorts.load_task("mi", split="").split == "ptbxl_folds"  # "" = the task's own


def test_threshold_labels_lvef():
    t = cohorts.load_task("lvef")
    got = cohorts.threshold_labels(pd.Series([35, 40, 40.5, None, "n/a", 60]), t)
    np.testing.assert_array_equal(got, [1, 1, 0, -1, -1, 0])  # LVEF <= 40 % is positive


@pytest.mark.shared
def test_ptbxl_label_counts_match_readme(ptbxl_root):
    """Oracle: the counts in ../shared/data/ptbxl/README.md (MI 315/840 and 56/150; acute 149 and 1)."""
    st = pd.read_csv(ptbxl_root / "scp_statements.csv", index_col=0)
    for csv, n_mi, n_acute in (("ptbxl_database_100hz.csv", 315, 149), ("ptbxl_database.csv", 56, 1)):
        db = pd.read_csv(ptbxl_root / csv)
        assert cohorts.ptbxl_labels(db, st, cohorts.load_task("mi")).sum() == n_mi
        assert cohorts.ptbxl_labels(db, st, cohorts.load_task("stemi")).sum() == n_acute


@pytest.mark.shared
def test_ptbxl_auto_rate_checks_files_on_disk(ptbxl_root, tmp_path):
    """rate=None picks 500 Hz only when every 500 Hz header is on disk: a copy holding only ``records100`` (what
    ``ptbxl_full.py`` writes) reads its 100 Hz files instead of rejecting every row. Oracle: the files present."""
    src = cohorts.ptbxl_source(ptbxl_root, cohorts.load_task("mi"), "ptbxl_database.csv")
    assert src.inputs["source_path"].str.contains("records500").all()  # both rates on disk: 500
    for name in ("ptbxl_database.csv", "scp_statements.csv"):
        (tmp_path / name).write_bytes((ptbxl_root / name).read_bytes())
    for f in pd.read_csv(ptbxl_root / "ptbxl_database.csv")["filename_lr"]:  # 100 Hz files only, no records500
        for ext in (".hea", ".dat"):
            (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ptbxl_root / f"{f}{ext}", tmp_path / f"{f}{ext}")
    src = cohorts.ptbxl_source(tmp_path, cohorts.load_task("mi"), "ptbxl_database.csv")
    assert src.inputs["source_path"].str.contains("/records100/").all()
    assert (src.inputs["reject"] == "").all()


@pytest.mark.slow
@pytest.mark.shared
def test_ptbxl_store_500hz(ptbxl_root, tmp_path):
    src = cohorts.ptbxl_source(ptbxl_root, cohorts.load_task("mi"), "ptbxl_database.csv")
    assert len(src.inputs) == 150 and src.inputs["source_path"].str.contains("records500").all()
    store = cohorts.build_store(src.inputs, src.reader, tmp_path, task_cfg="mi", shard_size=64, workers=1,
                                preprocess_kw={}, salt="s", progress=False)
    assert len(store) + len(store.rejects) == 150
    m = store.manifest
    # README strat_fold table: folds 1-8 hold 104 records (37 MI), fold 9 29 (12), fold 10 17 (7)
    stored = m.groupby("split")["label"].agg(["size", "sum"])
    rej_ids = set(store.rejects["record_id"])
    db = pd.read_csv(ptbxl_root / "ptbxl_database.csv")
    db = db[~db["ecg_id"].astype(str).isin(rej_ids)]
    for split, folds in (("train", range(1, 9)), ("val", [9]), ("test", [10])):
        assert stored.loc[split, "size"] == db["strat_fold"].isin(folds).sum()
    assert m["fs_source"].eq(500).all() and "strat_fold" in m.columns


@pytest.mark.shared
def test_muse_source_lvef_with_missing_and_unlabelled_rows(shared_data, tmp_path):
    muse = shared_data / "muse"
    xmls = sorted(p.stem for p in muse.glob("*.xml"))
    assert len(xmls) == 10
    rows = [{"ecg_id": s, "patient_id": f"PATIENT-77{i // 2}", "site": "siteA" if i < 8 else "site5",
             "lvef": 30 + 5 * i} for i, s in enumerate(xmls)]
    rows.append({"ecg_id": "not_there", "patient_id": "PATIENT-779", "site": "siteA", "lvef": 55})
    rows.append({"ecg_id": xmls[0] + "_copy", "patient_id": "PATIENT-7710", "site": "siteA", "lvef": None})
    labels = tmp_path / "labels.csv"
    pd.DataFrame(rows).to_csv(labels, index=False)
    task = cohorts.load_task("lvef", val_size=0.0, test_size=0.25)
    src = cohorts.muse_source(muse, task, str(labels))
    store = cohorts.build_store(src.inputs, src.reader, tmp_path / "run", task_cfg=task, preprocess_kw={},
                                salt="s", workers=1, progress=False)
    rej = store.rejects.set_index("record_id")
    assert len(store) + len(rej) == 12
    assert rej.loc["not_there", "error_type"] == "MissingFileError"
    assert rej.loc[xmls[0] + "_copy", "error_type"] == "LabelError"
    m = store.manifest.set_index("record_id")
    assert m.loc[xmls[0], "label"] == 1 and m.loc[xmls[9], "label"] == 0  # lvef 30 -> 1, 75 -> 0
    assert set(m.loc[m["site"] == "site5", "split"]) == {"external"}
    assert "lvef" in m.columns and np.isfinite(m["lvef"]).all()
    assert b"PATIENT-77" not in (tmp_path / "run" / "manifest.parquet").read_bytes()


@pytest.mark.shared
def test_batched_preprocessing_equals_one_call_per_record(shared_data, tmp_path):
    """The build preprocesses the records of one rate, lead set and length together (what 07 scores); each stored ECG
    equals the record preprocessed alone. Oracle: one ``signals.preprocess`` call per file (the paper's settings) on
    the 10 shared MUSE files (500 Hz) and 3 PTB-XL records (100 Hz: a second batch), cast to float16 as the store
    keeps them; tolerance: none."""
    from heartbeit_lib import io, signals

    paths = sorted((shared_data / "muse").glob("*.xml")) + sorted((shared_data / "ptbxl" / "records100").rglob("*_lr.hea"))[:3]
    inputs = pd.DataFrame({"source_path": [str(p) for p in paths], "record_id": [f"r{i:02d}" for i in range(len(paths))]})
    kw = preprocess.PreprocessConfig().preprocess_kw()
    store = cohorts.build_store(inputs, io.read_ecg, tmp_path, task_cfg="unlabelled", preprocess_kw=kw, salt="s",
                                workers=1, progress=False)
    assert len(store) == 13 and sorted(set(store.manifest["fs_source"])) == [100.0, 500.0]
    for i, p in enumerate(paths):
        rec = io.read_ecg(p)
        alone = signals.preprocess(rec.signal, rec.fs, list(rec.leads), **kw)[0].astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(store.signals([i])[0], alone)


@pytest.mark.shared
def test_wfdb_folder_unlabelled(shared_data, tmp_path):
    root = shared_data / "cinc" / "records"
    src = cohorts.wfdb_source(root, cohorts.load_task("unlabelled"))
    assert len(src.inputs) == 25
    store = cohorts.build_store(src.inputs, src.reader, tmp_path, task_cfg="unlabelled", preprocess_kw={},
                                salt="s", workers=1, progress=False)
    assert len(store) + len(store.rejects) == 25
    assert set(store.manifest["split"]) == {"unassigned"} and (store.manifest["label"] == -1).all()
    assert len(preprocess.data_hashes(src)) == 1  # one combined hash over the .hea + .mat files


@pytest.mark.slow
def test_pretraining_mix_copies_only_training_ecgs_plus_synthetic(tmp_path):
    """The mix holds the cohort's train ECGs (bit-identical, oracle: the source store) and the
    synthetic ECGs (oracle: synthetic.generate_ecgs + signals.preprocess), never val/test ECGs."""
    from heartbeit_lib import signals
    from heartbeit_lib.cohorts import synthetic

    x, meta = _stored(30), _meta(30)
    src = cohorts.build_store_from_arrays(tmp_path / "src", x, meta, seed=0, shard_size=8, salt="s")
    train = src.indices("train")
    assert 0 < len(train) < 30
    mix = cohorts.build_pretraining_mix(tmp_path / "src", tmp_path / "mix", n_synthetic=3, synthetic_seed=5)
    m = mix.manifest
    assert len(mix) == len(train) + 3 and mix.task == "unlabelled" and (m["label"] == -1).all()
    sm = src.manifest.iloc[train]
    assert m["record_id"].tolist()[: len(train)] == [f"{s}_{r}" for s, r in zip(sm["site"], sm["record_id"])]
    assert m["record_id"].tolist()[len(train):] == ["df000000", "df000001", "df000002"]
    np.testing.assert_array_equal(mix.signals(np.arange(len(train))), src.signals(train))
    ref = signals.preprocess(synthetic.generate_ecgs(3, seed=5), synthetic.DEEPFAKE_FS, synthetic.DEEPFAKE_LEADS)
    np.testing.assert_array_equal(mix.signals(np.arange(len(train), len(mix))),
                                  ref.astype(np.float16).astype(np.float32))
    with pytest.raises(cohorts.CohortError, match="no ECGs"):
        cohorts.build_pretraining_mix(tmp_path / "src", tmp_path / "none", splits=())


@pytest.mark.slow
def test_pretraining_mix_drops_the_evaluation_patients_of_every_named_cohort(tmp_path):
    """Two cohorts of one archive split differently (PTB-XL mi on folds, stemi on a random patient split): the mix
    built from the first's train ECGs must hold no ECG of a val/test/external patient of the second, and a cohort
    with another salt is refused. Oracle: the two manifests written here."""
    x, meta = _stored(40), _meta(40)
    a = cohorts.build_store_from_arrays(tmp_path / "a", x, meta, seed=0, shard_size=8, salt="s")
    b = cohorts.build_store_from_arrays(tmp_path / "b", x, meta, seed=1, shard_size=8, salt="s")
    ma, mb = a.manifest, b.manifest
    eval_b = set(mb.patient_hash[mb.split.isin(["val", "test", "external"])])
    train_a = ma[ma.split == "train"]
    leak = train_a.patient_hash.isin(eval_b)
    assert leak.any() and (~leak).any()  # the fixture has both kinds, else the test proves nothing
    mix = cohorts.build_pretraining_mix(tmp_path / "a", tmp_path / "mix", exclude_patients_of=[tmp_path / "b"])
    kept = sorted(mix.manifest.record_id)
    assert kept == sorted(f"{s}_{r}" for s, r in zip(train_a.site[~leak], train_a.record_id[~leak]))
    info = json.loads((tmp_path / "mix" / "mix.json").read_text())
    assert info["eval_patient_ecgs_dropped"][str(tmp_path / "b")] == int(leak.sum())
    plain = cohorts.build_pretraining_mix(tmp_path / "a", tmp_path / "plain")  # the old rule: the leak is back
    assert len(plain) == len(train_a)
    cohorts.build_store_from_arrays(tmp_path / "c", x, meta, seed=1, shard_size=8, salt="other")
    with pytest.raises(cohorts.CohortError, match="salt"):
        cohorts.build_pretraining_mix(tmp_path / "a", tmp_path / "bad", exclude_patients_of=[tmp_path / "c"])


def test_task_variants_mi_diagnostic_stemi_noinj_stemi_lik50():
    """Issue 18 s.7 task files on a hand-made table. Oracle: labels by hand from each file's stated rule."""
    stm = pd.DataFrame({"diagnostic": [1, 1, 1, 0], "diagnostic_class": ["MI", "MI", "NORM", None]},
                       index=["IMI", "INJAS", "NORM", "SR"])
    db = pd.DataFrame({"scp_codes": ["{'IMI': 100}", "{'INJAS': 50}", "{'IMI': 15}", "{'NORM': 100}", "{'SR': 0}",
                                     "{'IMI': 0, 'INJAS': 100}"],
                       "infarction_stadium1": ["Stadium I"] * 6, "infarction_stadium2": [None] * 6})
    want = {"mi": [1, 1, 1, 0, 0, 1], "mi_diagnostic": [1, 1, 1, 0, -1, 1], "stemi": [1, 1, 1, 0, 0, 1],
            "stemi_noinj": [1, 0, 1, 0, 0, 1], "stemi_lik50": [1, 1, 0, 0, 0, 1]}
    for name, labels in want.items():
        np.testing.assert_array_equal(cohorts.ptbxl_labels(db, stm, cohorts.load_task(name)), labels, err_msg=name)
