"""notebooks/05_wasserstein.ipynb runs headlessly (papermill) on a tiny cohort and 20 shared ImageNet images.

Oracle for the written metrics: recomputing the averages outside the notebook from the saved
sample list (the manifest rows re-rendered with ``render.render_ecg``, the listed image files
re-read), equal to 1e-9.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from heartbeit_lib import cohorts
from heartbeit_lib import render
from heartbeit_lib.analysis import wasserstein as W
from heartbeit_lib.pipeline import runs
from heartbeit_lib.pipeline import wasserstein as stage


def _tiny_cohort(run_dir, n=20, seed=0):
    """n synthetic 8-lead ECGs (float32 microvolts, 500 Hz, 5 s): R-like spikes on a wandering baseline."""
    rng = np.random.default_rng(seed)
    t = np.arange(2500) / 500.0
    x = np.empty((n, 8, 2500), np.float32)
    for i in range(n):
        beats = np.arange(rng.uniform(0.1, 0.6), 5.0, 60.0 / rng.uniform(50, 110))
        qrs = np.exp(-((t[:, None] - beats[None]) / 0.012) ** 2).sum(1)
        gain = rng.uniform(300, 1500, 8)[:, None]
        x[i] = gain * qrs[None] + 80 * np.sin(2 * np.pi * 0.3 * t + rng.uniform(0, 6, 8)[:, None]) \
            + rng.normal(0, 15, (8, 2500))
    meta = pd.DataFrame({"record_id": [f"r{i:03d}" for i in range(n)],
                         "patient_id": [f"p{i // 2:03d}" for i in range(n)],
                         "site": "A", "label": rng.integers(0, 2, n)})
    return cohorts.build_store_from_arrays(run_dir, x, meta, seed=seed)


@pytest.mark.notebooks
@pytest.mark.shared
def test_notebook_05_runs_and_writes_the_three_averages(tmp_path, shared_data):
    store = _tiny_cohort(tmp_path / "01_preprocess" / "tiny")
    image_dir = shared_data / "imagenet-samples"
    with pytest.raises(W.WassersteinInputError, match="n_ecg: need 1 <= n <= 20"):
        W.sample_ecg_images(store, 21, seed=0)
    # 25 requested from a 20-ECG store: allow_fewer takes all 20 and says so in metrics.json
    params = dict(cohort_run=str(store.root), image_dir=str(image_dir), n_ecg=25, allow_fewer=True,
                  n_natural=20, seed=1,
                  n_boot=50, spatial=True, n_spatial=4, spatial_size=16, n_projections=16,
                  out_root=str(tmp_path), run_id="tiny")
    run_dir = tmp_path / "05_wasserstein" / "tiny"
    runs.execute_notebook("05_wasserstein", params, run_dir, html=False)

    assert runs.is_complete(run_dir)
    m = json.loads((run_dir / "metrics.json").read_text())
    for key in ("ecg_ecg", "imagenet_imagenet", "ecg_imagenet"):
        assert m[f"pixel_{key}_ci_low"] <= m[f"pixel_{key}_mean"] <= m[f"pixel_{key}_ci_high"]
    # the paper's ordering: rendered ECGs are alike, natural images differ, and the two kinds differ most
    assert m["pixel_ecg_ecg_mean"] < m["pixel_imagenet_imagenet_mean"] < m["pixel_ecg_imagenet_mean"]
    assert m["n_ecg_used"] == 20 and m["n_natural_used"] == 20 and m["pixel_ecg_ecg_n_pairs"] == 400
    assert m["pixel_ecg_imagenet_paper"] == 128.44

    # recompute outside the notebook from the saved sample list
    samples = pd.read_csv(run_dir / "samples.csv")
    rows = samples.loc[samples["set"] == "ECG", "row"].to_numpy()
    files = samples.loc[samples["set"] == "ImageNet", "file"].tolist()
    assert len(rows) == 20 and len(set(files)) == 20
    ecg = render.render_ecg(store.signals(rows), size=224)
    nat = np.stack([W.load_grey_image(image_dir / f) for f in files])
    mats = W.paper_distance_matrices(ecg, nat)
    assert abs(m["pixel_ecg_ecg_mean"] - W.pair_mean(mats["ECG-ECG"], True, True)) < 1e-9
    assert abs(m["pixel_imagenet_imagenet_mean"] - W.pair_mean(mats["ImageNet-ImageNet"], True, True)) < 1e-9
    assert abs(m["pixel_ecg_imagenet_mean"] - mats["ECG-ImageNet"].mean()) < 1e-9

    spatial = pd.read_csv(run_dir / "spatial_summary.csv")
    assert sorted(spatial["method"].unique()) == ["emd", "sliced"] and len(spatial) == 6
    assert m["spatial_emd_ecg_imagenet_mean"] > 0
    for f in ("supp_fig9_wasserstein.png", "pair_histograms.png", "spatial_emd_histograms.png",
              "config.yaml", "run.json", "05_wasserstein.ipynb"):
        assert (run_dir / f).stat().st_size > 0, f
    info = json.loads((run_dir / "run.json").read_text())
    assert any(k.startswith("natural_images") for k in info["data_hashes"])

    # the stage contract: stage.run does the notebook's steps, so it writes the same metrics.json
    cfg = stage.WassersteinConfig.from_dict({**params, "run_id": "tiny-run"})
    assert stage.run(cfg, runs.start_run("05_wasserstein", cfg)) == m
