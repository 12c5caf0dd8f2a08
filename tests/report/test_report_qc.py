"""Tests for heartbeit_lib.report.qc (Table 1 of notebook 01); oracle: counts by hand."""

from __future__ import annotations

import pandas as pd
import pytest

from heartbeit_lib.report import qc


def test_table1_hand_counted():
    m = pd.DataFrame({"patient_hash": ["a", "a", "b", "c", "d", "d", "e"],
                      "split": ["train", "train", "train", "test", "test", "test", "external"],
                      "label": [1, 0, 0, 1, 1, -1, 0]})
    t = qc.table1(m)
    assert list(t.index) == ["train", "test", "external", "total"]
    assert t.loc["train"].tolist() == [3, 2, 1, 0, pytest.approx(33.33)]
    assert t.loc["test"].tolist() == [3, 2, 2, 1, 100.0]  # prevalence over labelled ECGs only
    assert t.loc["total", "ecgs"] == 7 and t.loc["total", "patients"] == 5 and t.loc["total", "positives"] == 3
    md = qc.to_markdown(t)
    assert md.splitlines()[0].startswith("| split | ecgs | patients |") and md.count("\n") == 6


def test_clipping_and_fraction_table_of_a_store(tmp_path, make_toy_store):
    """Oracles: render.clip_fractions over all signals at once (clipping read in batches of 7 must agree);
    store.indices for the per-fraction counts (validation shrinks with the fraction, nested)."""
    import numpy as np

    from heartbeit_lib import render

    store = make_toy_store(tmp_path, n=720)  # a validation split above the floor of 50 ECGs per class
    sig = store.signals(np.arange(len(store)))
    sig[::5, 3] *= 6.0  # every fifth ECG: V2 scaled beyond the default +-4 mV
    want = render.clip_fractions(sig, (-4.0, 4.0))
    store.signals = lambda rows: sig[np.asarray(rows)]
    got = qc.clipping(store, batch=7)
    assert got["clip_ylim_mv"] == [-4.0, 4.0] and want["clipped_ecg_fraction"] > 0.1
    assert got["clipped_lead_fraction"] == pytest.approx(want["clipped_lead_fraction"], abs=1e-12)
    assert got["clipped_ecg_fraction"] == pytest.approx(want["clipped_ecg_fraction"], abs=1e-12)
    t = qc.fraction_table(store)
    for f, row in t.iterrows():
        assert row["train_ecgs"] == len(store.indices("train", f)) and row["val_ecgs"] == len(store.indices("val", f))
    assert (t["val_ecgs"] <= t["val_full_ecgs"]).all() and t["val_ecgs"].is_monotonic_increasing
    assert t["val_ecgs"].iloc[0] < t["val_full_ecgs"].iloc[0]
