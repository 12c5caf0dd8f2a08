"""notebooks/01_preprocess.ipynb run headlessly with papermill; assertions on the metrics.json it writes.

Oracles: the input counts we pass (demo) and the PTB-XL subset counts in ../shared/data/ptbxl/README.md
(840 records, 315 MI; strat_fold 1-8: 674 records / 248 MI, fold 9: 89 / 29, fold 10: 77 / 38).
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from heartbeit_lib import cohorts
from heartbeit_lib.pipeline import preprocess, runs

pytestmark = pytest.mark.notebooks


def _check_run(run_dir, metrics) -> None:
    assert metrics["n_inputs"] == metrics["n_stored"] + metrics["n_rejected"]
    assert sum(metrics[f"n_{s}"] for s in cohorts.SPLITS) == metrics["n_stored"]
    for name in ("config.yaml", "run.json", "table1.csv", "table1.md", "qc_raw_vs_filtered.png",
                 "rejects.csv", "rejects.parquet", "manifest.parquet", "01_preprocess.ipynb"):
        assert (run_dir / name).exists(), name
    info = json.loads((run_dir / "run.json").read_text())
    assert info["finished"] and info["data_hashes"]
    assert runs.is_complete(run_dir)
    store = cohorts.CohortStore(run_dir)
    assert len(store) == metrics["n_stored"]
    t1 = pd.read_csv(run_dir / "table1.csv", index_col=0)
    assert t1.loc["total", "ecgs"] == metrics["n_stored"]
    assert len(pd.read_csv(run_dir / "rejects.csv")) == metrics["n_rejected"]


def test_demo_cohort(tmp_path):
    run_dir = tmp_path / "01_preprocess" / "demo"
    params = {"source": "demo", "task": "demo", "n_demo": 40, "n_demo_unlabelled": 6, "seed": 0,
              "workers": 1, "shard_size": 16, "progress": False, "out_root": str(tmp_path), "run_id": "demo"}
    runs.execute_notebook("01_preprocess", params, run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["n_inputs"] == 46 and metrics["task"] == "demo"
    _check_run(run_dir, metrics)
    assert (run_dir / "01_preprocess.html").exists()
    m = cohorts.CohortStore(run_dir).manifest
    # every unlabelled demo ECG is stored and kept out of the labelled splits
    assert (m["label"] == -1).sum() == 6 and (m.loc[m["label"] == -1, "split"] == "unassigned").all()
    assert set(m.loc[m["site"] == "site_c", "split"]) <= {"external", "unassigned"}
    assert metrics["n_train"] > 0 and metrics["n_test"] > 0
    # the executed notebook must not show raw patient ids (P00000...) anywhere
    assert "P0000" not in (run_dir / "01_preprocess.ipynb").read_text()

    # the stage contract: preprocess.run does the notebook's steps, so it writes the same metrics.json and tables
    cfg = preprocess.PreprocessConfig.from_dict({**params, "run_id": "demo-run"})
    assert preprocess.run(cfg, runs.start_run("01_preprocess", cfg)) == metrics
    for name in ("table1.csv", "table1_fractions.csv", "rejects.csv"):
        assert (tmp_path / "01_preprocess" / "demo-run" / name).read_text() == (run_dir / name).read_text(), name
    assert (tmp_path / "01_preprocess" / "demo-run" / preprocess.QC_FIGURE).stat().st_size > 0


@pytest.mark.shared
def test_ptbxl_subset_mi(ptbxl_root, tmp_path):
    run_dir = tmp_path / "01_preprocess" / "ptbxl"
    params = {"source": "ptbxl", "data_root": str(ptbxl_root), "ptbxl_database": "ptbxl_database_100hz.csv",
              "task": "mi", "workers": 1, "shard_size": 256, "progress": False, "n_qc": 2,
              "out_root": str(tmp_path), "run_id": "ptbxl"}
    runs.execute_notebook("01_preprocess", params, run_dir, html=False)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    _check_run(run_dir, metrics)
    assert metrics["n_inputs"] == 840 and metrics["n_rejected"] == 0  # every shipped record reads (README)
    assert metrics["n_positive"] == 315 and metrics["n_patients"] == 676
    assert (metrics["n_train"], metrics["n_val"], metrics["n_test"]) == (674, 89, 77)
    assert (metrics["n_train_positive"], metrics["n_val_positive"], metrics["n_test_positive"]) == (248, 29, 38)
    store = cohorts.CohortStore(run_dir)
    assert store.manifest["fs_source"].eq(100).all()
