"""notebooks/04_metrics.ipynb runs headlessly (papermill) on a fake 03_finetune sweep.

The sweep follows the cross-team contract (``make_fake_sweep`` in conftest.py): task ``hcm`` with
internal test and external splits, the paper's four models x five fractions, plus one incomplete run
folder that must be skipped. Oracles: scikit-learn's ``roc_auc_score`` / ``average_precision_score`` on
the fixture's best-epoch predictions (1e-12) for ``metrics.json`` and ``results.csv``; the fixture's own
sizes for the saved bootstrap indices; regular expressions for the table cells.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from conftest import FRACTIONS, MODELS, make_fake_sweep
from sklearn.metrics import average_precision_score, roc_auc_score

from heartbeit_lib.analysis import metrics
from heartbeit_lib.pipeline import metrics as stage
from heartbeit_lib.pipeline import runs

SIZES = (60, 150, 120)  # val, test, external


@pytest.mark.notebooks
def test_notebook_04_tables_figures_report(tmp_path):
    sweep = make_fake_sweep(tmp_path / "03_finetune", tasks={"hcm": (SIZES, 0.39)})
    params = dict(finetune_root=str(sweep), n_boot=100, seed=0, figure_dpi=40, out_root=str(tmp_path), run_id="t")
    run_dir = tmp_path / "04_metrics" / "t"
    runs.execute_notebook("04_metrics", params, run_dir, html=False)

    assert runs.is_complete(run_dir)
    m = json.loads((run_dir / "metrics.json").read_text())
    assert (m["n_runs"], m["n_incomplete"]) == (20, 1)
    assert m["models"] == list(MODELS) and m["fractions"] == list(FRACTIONS)
    assert m["n_boot"] == 100 and m["min_n_boot_valid"] == 100 and m["auprc_method"] == "ap"
    assert m["max_abs_diff_reported_auroc"] < 1e-12
    assert len(m["results"]) == 4 * 5 * 2 and len(m["differences"]) == 3 * 5 * 2

    # recompute every point estimate from the run folders (oracle: sklearn at the best epoch)
    res = pd.read_csv(run_dir / "tables" / "results.csv")
    for _, r in res.iterrows():
        best = json.loads((sweep / f"hcm-{r.model}-f{r.fraction!r}-s0" / "metrics.json").read_text())["best_epoch"]
        p = pd.read_parquet(sweep / f"hcm-{r.model}-f{r.fraction!r}-s0" / "predictions.parquet")
        p = p[(p.epoch == best) & (p.split == r.split)]
        assert abs(r.auroc - roc_auc_score(p.label, p.score)) < 1e-12
        assert abs(r.auprc - average_precision_score(p.label, p.score)) < 1e-12
        assert r.auroc_lo <= r.auroc <= r.auroc_hi and r.n == SIZES[1 if r.split == "test" else 2]

    # one saved set of resamples per task and split, keyed by the (sorted) record ids
    idx = np.load(run_dir / "bootstrap" / "hcm-test.npy")
    assert idx.shape == (100, SIZES[1])
    ids = sorted(f"hcm-test-{i:05d}" for i in range(SIZES[1]))
    np.testing.assert_array_equal(metrics.load_bootstrap_indices(run_dir / "bootstrap", "hcm-test", ids), idx)

    md = (run_dir / "tables" / "table2_auroc.md").read_text().splitlines()
    rows = [line for line in md if line.startswith("| HCM")]
    assert len(rows) == 8  # 2 splits x 4 models
    cell = re.compile(r"^(\*\*)?\d\.\d\d \(\d\.\d\d - \d\.\d\d\)(\*\*)?$")
    cells = [c.strip() for line in rows for c in line.strip("|").split("|")[3:]]
    assert len(cells) == 40 and all(cell.match(c) for c in cells)
    assert sum(c.startswith("**") for c in cells) >= 10  # at least one best model per split and fraction
    for name in ("table1", "table2_auroc", "table3_auprc"):
        assert (run_dir / "tables" / f"{name}.html").read_text().count("<table") == 1
    figs = sorted(p.name for p in (run_dir / "figures").glob("*.png"))
    assert figs == ["fraction_hcm_external.png", "fraction_hcm_test.png", "roc_pr_hcm_external.png",
                    "roc_pr_hcm_test.png"]
    report = (run_dir / "report.html").read_text()
    assert report.count("data:image/png;base64,") == 4 and "Table 3. AUPRC" in report
    assert "1 incomplete run folder(s) skipped" in report

    # the stage contract: stage.run does the notebook's steps, so it writes the same metrics.json and tables
    cfg = stage.MetricsConfig.from_dict({**params, "run_id": "t-run"})
    assert json.loads(json.dumps(stage.run(cfg, runs.start_run("04_metrics", cfg)), default=float)) == m
    for name in ("results.csv", "differences.csv", "seed_differences.csv", "table2_auroc.md"):
        got = (tmp_path / "04_metrics" / "t-run" / "tables" / name).read_text()
        assert got == (run_dir / "tables" / name).read_text(), name
    assert sorted(p.name for p in (tmp_path / "04_metrics" / "t-run" / "figures").glob("*.png")) == figs
