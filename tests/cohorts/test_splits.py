"""Patient-disjoint splits, nested stratified training fractions and Table 1.

Oracles: ``sklearn.model_selection.GroupShuffleSplit`` called directly (same seed and sizes);
hand-counted Table 1; set inclusion for nesting; ``ceil(f * n_class)`` for fraction sizes.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import GroupShuffleSplit

from heartbeit_lib import cohorts


def _manifest(n_patients: int = 120, seed: int = 0, sites=("A", "B", "C"), prevalence: float = 0.25) -> pd.DataFrame:
    """A manifest-like table: 1-4 ECGs per patient, one site per patient, labels per ECG."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, n_patients)
    pid = np.repeat(np.arange(n_patients), sizes)
    rng.shuffle(pid)  # patients' ECGs interleaved, as in a real export
    n = len(pid)
    return pd.DataFrame({"record_id": [f"r{i}" for i in range(n)],
                         "patient_hash": [f"h{p:05d}" for p in pid],
                         "site": np.array(sites)[pid % len(sites)],
                         "label": (rng.random(n) < prevalence).astype(np.int64),
                         "strat_fold": pid % 10 + 1})


def _with_splits(m: pd.DataFrame, task: cohorts.TaskConfig, seed: int = 0) -> pd.DataFrame:
    m = m.copy()
    m["split"] = cohorts.assign_splits(m, task, seed)
    m["train_rank"] = cohorts.train_ranks(m, seed)
    return m


def _assert_patient_disjoint(m: pd.DataFrame) -> None:
    used = m[m["split"] != "unassigned"]
    per_patient = used.groupby("patient_hash")["split"].nunique()
    assert per_patient.max() == 1, "a patient crosses train/val/test/external"


def test_group_shuffle_matches_sklearn_and_is_patient_disjoint():
    m = _manifest()
    task = cohorts.load_task("custom")  # group_shuffle, test 0.2, val 0.1, no external site
    s = _with_splits(m, task, seed=7)
    _assert_patient_disjoint(s)
    assert set(s["split"]) == {"train", "val", "test"}
    # oracle: sklearn on patient codes in order of first appearance, same seed
    codes = pd.factorize(m["patient_hash"], sort=False)[0]
    pool, test = next(GroupShuffleSplit(n_splits=1, test_size=0.2, random_state=7).split(m, groups=codes))
    np.testing.assert_array_equal(np.flatnonzero(s["split"] == "test"), np.sort(test))
    pool = np.sort(pool)
    tr, va = next(GroupShuffleSplit(n_splits=1, test_size=0.1, random_state=7).split(pool, groups=codes[pool]))
    np.testing.assert_array_equal(np.flatnonzero(s["split"] == "val"), np.sort(pool[va]))
    # 20 % of patients in test (sklearn rounds up), 10 % of the rest in val
    n_pat = m["patient_hash"].nunique()
    assert s.loc[s["split"] == "test", "patient_hash"].nunique() == math.ceil(0.2 * n_pat)


def test_external_site_and_patients_seen_there():
    m = _manifest()
    # one patient of site A also has an ECG at the external site C
    a_patient = m.loc[m["site"] == "A", "patient_hash"].iloc[0]
    extra = m.iloc[[0]].assign(record_id="extra", patient_hash=a_patient, site="C")
    m = pd.concat([m, extra], ignore_index=True)
    task = cohorts.load_task("custom", external_site="C")
    s = _with_splits(m, task)
    _assert_patient_disjoint(s)
    assert (s.loc[s["site"] == "C", "split"] == "external").all()
    assert (s.loc[s["site"] != "C", "split"] != "external").all()
    # that patient's internal ECGs are held back, not used for training or internal test
    assert set(s.loc[(s["patient_hash"] == a_patient) & (s["site"] == "A"), "split"]) == {"unassigned"}


def test_unlabelled_rows_are_unassigned_in_labelled_tasks():
    m = _manifest()
    m.loc[m.index[:15], "label"] = -1
    s = _with_splits(m, cohorts.load_task("custom"))
    assert set(s.loc[s["label"] == -1, "split"]) == {"unassigned"}
    assert (s.loc[s["label"] >= 0, "split"] != "unassigned").all()
    s2 = _with_splits(m, cohorts.load_task("unlabelled"))
    assert set(s2["split"]) == {"unassigned"}


def test_ptbxl_folds():
    m = _manifest()
    s = _with_splits(m, cohorts.load_task("mi"))
    f = m["strat_fold"]
    assert (s.loc[f <= 8, "split"] == "train").all()
    assert (s.loc[f == 9, "split"] == "val").all() and (s.loc[f == 10, "split"] == "test").all()
    with pytest.raises(cohorts.SplitError, match="strat_fold"):
        cohorts.assign_splits(m.drop(columns="strat_fold"), cohorts.load_task("mi"), 0)
    # a patient in two splits (folds that are not patient-wise) is caught when the store is merged
    bad = s.copy()
    counts = bad["patient_hash"].value_counts()
    rows = np.flatnonzero(bad["patient_hash"] == counts.index[0])  # a patient with >= 2 ECGs
    assert counts.iloc[0] >= 2
    bad.loc[rows[0], "split"], bad.loc[rows[1], "split"] = "train", "test"
    with pytest.raises(cohorts.SplitError, match="cross splits"):
        cohorts.check_disjoint(bad)


def test_training_fractions_nested_stratified_and_at_least_one_per_class():
    m = _manifest(n_patients=400, prevalence=0.1)
    s = _with_splits(m, cohorts.load_task("custom"), seed=0)
    train = s["split"] == "train"
    n_c = s.loc[train, "label"].value_counts()
    prev = n_c.get(1, 0) / n_c.sum()
    prev_set = None
    for f in (0.01, 0.1, 0.25, 0.5, 1.0):
        mask = cohorts.fraction_mask(s, f)
        assert (~mask | train).all()  # only training rows
        sub = s.loc[mask, "label"].value_counts()
        for c in (0, 1):  # oracle: ceil(f * n_class) rows of every class, so >= 1 of each
            assert sub.get(c, 0) == math.ceil(f * n_c[c] - 1e-9) >= 1
        # stratification: prevalence of the subset within one row of the training prevalence
        assert abs(sub.get(1, 0) / sub.sum() - prev) <= 1.0 / sub.sum()
        rows = set(np.flatnonzero(mask))
        if prev_set is not None:
            assert prev_set <= rows  # nested: the smaller fraction is inside the larger one
        prev_set = rows
    assert prev_set == set(np.flatnonzero(train))


def test_fraction_size_float_robust():
    assert cohorts.fraction_size(30, 0.1) == 3  # 0.1 * 30 == 3.0000000000000004
    assert cohorts.fraction_size(100, 0.01) == 1 and cohorts.fraction_size(3, 0.01) == 1
    assert cohorts.fraction_size(7, 1.0) == 7
    with pytest.raises(cohorts.CohortError):
        cohorts.fraction_size(10, 0.0)


@pytest.mark.slow
def test_splits_identical_across_builds_and_salts(tmp_path):
    rng = np.random.default_rng(1)
    n = 80
    x = rng.normal(0, 100, (n, 8, 2500)).astype(np.float32)
    meta = pd.DataFrame({"record_id": [f"e{i}" for i in range(n)], "patient_id": [f"pt{i // 3}" for i in range(n)],
                         "site": [("A", "B", "C", "D")[(i // 3) % 4] for i in range(n)], "label": (rng.random(n) < 0.3).astype(int)})
    task = cohorts.load_task("custom", external_site="D")
    a = cohorts.build_store_from_arrays(tmp_path / "a", x, meta, task=task, seed=0, shard_size=16, salt="one")
    b = cohorts.build_store_from_arrays(tmp_path / "b", x, meta, task=task, seed=0, shard_size=16, salt="two")
    assert not set(a.manifest["patient_hash"]) & set(b.manifest["patient_hash"])  # other salt, other hashes
    cols = ["record_id", "split", "train_rank"]
    pd.testing.assert_frame_equal(a.manifest[cols], b.manifest[cols])  # same patients in every split
    for f in (0.1, 0.5, 1.0):
        np.testing.assert_array_equal(a.indices("train", f), b.indices("train", f))
    assert set(a.manifest["split"]) == {"train", "val", "test", "external"}
    for st in (a, b):
        _assert_patient_disjoint(st.manifest)
        assert set(st.manifest.loc[st.manifest["site"] == "D", "split"]) == {"external"}
    # indices(): sorted int64, fractions only for train
    idx = a.indices("test")
    assert idx.dtype == np.int64 and (np.diff(idx) > 0).all()
    with pytest.raises(cohorts.CohortError):
        a.indices("test", 0.5)
    with pytest.raises(cohorts.CohortError):
        a.indices("training")
    c = cohorts.build_store_from_arrays(tmp_path / "c", x, meta, task=task, seed=1, shard_size=16, salt="one")
    assert not a.manifest["split"].equals(c.manifest["split"])  # the seed does matter


def test_validation_shrinks_with_the_fraction_nested_stratified_with_a_floor_per_class():
    """Issue 18 s.3: the fraction-f validation set. Oracle: max(ceil(f * n_class), min(n_class, floor)) rows of
    each class (hand rule; floor 50 since issue 24), set inclusion for nesting, training ranks unchanged by ranking
    validation."""
    from heartbeit_lib.cohorts.splits import VAL_MIN_PER_CLASS as floor

    m = _manifest(n_patients=600, prevalence=0.1)
    s = _with_splits(m, cohorts.load_task("custom"), seed=0)
    val = s["split"] == "val"
    n_c = s.loc[val, "label"].value_counts()
    assert n_c[1] > 5  # enough positives that the 1 % set hits the floor and the 50 % set does not
    prev_set, sizes = None, []
    for f in (0.01, 0.1, 0.5, 1.0):
        mask = cohorts.fraction_mask(s, f, "val")
        assert (~mask | val).all()  # only validation rows (patient-disjoint from train by construction)
        sub = s.loc[mask, "label"].value_counts()
        for c in (0, 1):
            assert sub.get(c, 0) == max(math.ceil(f * n_c[c] - 1e-9), min(n_c[c], floor))
        rows = set(np.flatnonzero(mask))
        assert prev_set is None or prev_set <= rows  # nested
        prev_set = rows
        sizes.append(len(rows))
    assert sizes[0] <= sizes[1] <= sizes[2] <= sizes[3] == val.sum() and sizes[0] < sizes[3]  # shrinks with f
    # ranking validation did not move the training ranks (the old single-rng rule, recomputed here)
    rng, is_train, lab = np.random.default_rng(0), (s["split"] == "train").to_numpy(), s["label"].to_numpy()
    for c in np.unique(lab[is_train]):
        rows = np.flatnonzero(is_train & (lab == c))
        np.testing.assert_array_equal(s["train_rank"].to_numpy()[rows], rng.permutation(len(rows)))
    with pytest.raises(cohorts.CohortError, match="fraction subsets"):
        cohorts.fraction_mask(s, 0.5, "test")


def test_store_validation_fraction_few_positives_keeps_all(tmp_path):
    """A store whose validation split has fewer than 5 positives: every fraction keeps them all."""
    rng = np.random.default_rng(3)
    n = 1200  # negatives of validation above the floor of 50 (issue 24), so the fractions do shrink it
    meta = pd.DataFrame({"record_id": [f"e{i}" for i in range(n)], "patient_id": [f"pt{i}" for i in range(n)],
                         "site": "A", "label": (np.arange(n) % 40 == 0).astype(int)})  # 30 positives in all
    st = cohorts.build_store_from_arrays(tmp_path / "s", rng.normal(0, 100, (n, 8, 2500)).astype(np.float32), meta,
                                         task=cohorts.load_task("custom"), seed=0, shard_size=64)
    full = st.indices("val")
    pos_full = int(st.labels(full).sum())
    assert 0 < pos_full < 5
    for f in (0.1, 0.5):
        v = st.indices("val", f)
        assert set(v) <= set(full) and int(st.labels(v).sum()) == pos_full and len(v) < len(full)


def test_matched_validation_floor_is_50_ecgs_per_class():
    """Issue 24 item 2: a shrunken validation set keeps max(ceil(f * n_c), min(n_c, 50)) ECGs of each class c, so
    a small fraction still ranks epochs on >= 50 positives and 50 negatives (all of a class that has fewer).
    Oracle: the counts by hand from that rule."""
    from heartbeit_lib.cohorts.splits import VAL_MIN_PER_CLASS, fraction_mask

    assert VAL_MIN_PER_CLASS == 50
    lab = np.r_[np.ones(80), np.zeros(300), np.full(12, 2)].astype(np.int64)  # a class of 12: all of it
    rank = np.r_[np.arange(80), np.arange(300), np.arange(12)]
    man = pd.DataFrame({"split": "val", "label": lab, "train_rank": rank})
    for f, want in ((0.01, (50, 50, 12)), (0.1, (50, 50, 12)), (0.5, (50, 150, 12)), (1.0, (80, 300, 12))):
        m = fraction_mask(man, f, "val")
        assert tuple(int((m & (lab == c)).sum()) for c in (1, 0, 2)) == want, f
