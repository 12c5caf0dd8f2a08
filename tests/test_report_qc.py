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
