"""notebooks/06_saliency.ipynb through papermill on a tiny synthetic cohort and two tiny fine-tuning runs.

Oracles: the run folder contract (config.yaml, run.json with a finish time, metrics.json, the executed
notebook and its HTML), one overlay PNG per (ECG, method) of the figures, attribution shares that sum
to 1 per (run, method, ECG), a random baseline in the faithfulness table, rollout skipped (and said so)
for the CNN only, and an ipywidgets view in the executed notebook.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from conftest import tiny_run, toy_store

from heartbeit_lib.pipeline import runs
from heartbeit_lib.pipeline import saliency as stage

pytestmark = pytest.mark.notebooks
NB = runs.NOTEBOOKS_DIR / "06_saliency.ipynb"


@pytest.fixture(scope="module")
def nb_root(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("nb06")
    toy_store(root)
    tiny_run(root, "efficientnet_b4_scratch", fraction=1.0)
    tiny_run(root, "vit_b16_scratch", fraction=0.5)
    return root


def test_notebook_runs_headlessly(nb_root):
    run_dir = nb_root / "06_saliency" / "t"
    params = {"finetune_runs": str(nb_root / "03_finetune"), "method": ["fullgrad", "gradcam", "rollout"], "n_examples": 3,
              "n_figures": 2, "n_faithfulness": 2, "deletion_steps": 4, "road": True, "road_percentiles": [50],
              "batch_size": 4, "device": "cpu", "out_root": str(nb_root), "run_id": "t"}
    out = runs.execute_notebook(NB, params, run_dir)
    for f in ("config.yaml", "run.json", "metrics.json", "attribution.png", "faithfulness.png", "records.csv",
              "attribution_long.csv", "attribution_lead.csv", "attribution_segment.csv", "faithfulness.csv",
              "06_saliency.html"):
        assert (run_dir / f).is_file(), f
    assert runs.is_complete(run_dir)
    # 2 ECGs x 3 methods (rollout drawn for the ViT only)
    assert len(list((run_dir / "overlays").glob("*.png"))) == 6

    long = pd.read_csv(run_dir / "attribution_long.csv")
    groups = long.groupby(["run", "method", "record_id"])["share"]
    ok = groups.apply(lambda s: abs(s.sum() - 1.0) < 1e-9 or s.isna().all())  # NaN: an all-zero map
    assert len(ok) == 3 * (2 + 3) and ok.all()
    assert long.loc[long["method"] == "fullgrad", "share"].notna().all()
    assert set(long["lead"]) == {"I", "II", "V1", "V2", "V3", "V4", "V5", "V6"}
    assert set(long["segment"]) == {"P", "QRS", "ST-T", "other"}
    rollout_models = set(long.loc[long["method"] == "rollout", "model"])
    assert rollout_models == {"vit_b16_scratch"}

    faith = pd.read_csv(run_dir / "faithfulness.csv")
    assert {"random", "fullgrad", "gradcam"} <= set(faith["method"])
    assert faith[["deletion_auc", "insertion_auc", "road_combined"]].notna().all().all()
    per_ecg = pd.read_csv(run_dir / "faithfulness_records.csv")
    assert per_ecg["prob_blank"].between(0, 1).all() and len(per_ecg) == 2 * (3 + 4)

    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["n_runs"] == 2 and m["methods"] == ["fullgrad", "gradcam", "rollout"]
    assert any("rollout" in s and "efficientnet" in s for s in m["skipped"])
    assert len(m["deletion_auc"]) == 2 * 3 + 1 * 1  # (fullgrad, gradcam, random) x 2 runs + rollout x 1
    # the stage contract: stage.run does the notebook's steps, so it writes the same metrics.json and tables
    cfg = stage.SaliencyConfig.from_dict({**params, "run_id": "t-run"})
    assert json.loads(json.dumps(stage.run(cfg, runs.start_run("06_saliency", cfg)), default=float)) == m
    pd.testing.assert_frame_equal(pd.read_csv(nb_root / "06_saliency" / "t-run" / "attribution_long.csv"), long)
    nb = json.loads(out.read_text())
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)

