"""``benchmarks/ab_predict.py`` runs 07 end to end for two checkouts and writes the paired ratio. Oracle: its own
JSON (every round scored by both, the median of the rounds' ratios, recomputed here exactly); no timing is asserted
(speed is the benchmark's business, not a test's)."""

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "ab_predict.py"


def test_a_folder_that_is_not_a_checkout_is_refused(tmp_path):
    res = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), str(REPO), "--reps", "1"],  # no import of torch
                         capture_output=True, text=True)
    assert res.returncode == 2 and "not a checkout of this repository" in res.stderr


@pytest.mark.slow
@pytest.mark.shared
def test_two_checkouts_are_scored_round_by_round(shared_data, tmp_path):
    out = tmp_path / "ab.json"
    res = subprocess.run([sys.executable, str(SCRIPT), str(REPO), str(REPO), "--n", "3", "--reps", "1",
                          "--workers-b", "1", "--out", str(out)], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(out.read_text())
    assert got["n"] == 3 and got["workers"] == {"a": "default", "b": "1"} and len(got["rounds"]) == 1
    for r in got["rounds"]:
        assert r["a"]["ecg_per_s"] > 0 and r["b"]["ecg_per_s"] > 0
        assert r["ratio"] == r["b"]["ecg_per_s"] / r["a"]["ecg_per_s"]
    assert got["median_ratio_b_over_a"] == statistics.median(r["ratio"] for r in got["rounds"])
