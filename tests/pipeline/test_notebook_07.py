"""notebooks/07_predict.ipynb through papermill on two tiny trained runs and a folder of WFDB records.

Oracles: the run folder contract (config.yaml, run.json with a finish time and the training runs' provenance,
metrics.json, the executed notebook and its HTML), every input either a prediction or a reject (6 + 2 = 8 files
written), the threshold recorded from the validation split, one PNG per picture.
"""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import torch
from conftest import REPO_ROOT, predict_runs, write_wfdb_folder

from heartbeit_lib.pipeline import runs

pytestmark = pytest.mark.notebooks
NB = runs.NOTEBOOKS_DIR / "07_predict.ipynb"


def test_notebook_runs_headlessly(tmp_path):
    torch.set_num_threads(1)
    ft = predict_runs(tmp_path)
    raw = tmp_path / "raw"
    write_wfdb_folder(raw)
    for ext in (".hea", ".mat"):
        shutil.copy(REPO_ROOT / "tests" / "data" / "broken" / f"mat_nan{ext}", raw)
    run_dir = tmp_path / "07_predict" / "t"
    params = {"finetune_runs": [str(p) for p in ft], "data_root": str(raw), "source": "wfdb",
              "labels": str(raw / "labels.csv"), "n_pictures": 2, "n_boot": 50, "device": "cpu",
              "out_root": str(tmp_path), "run_id": "t"}
    runs.execute_notebook(NB, params, run_dir)
    for f in ("config.yaml", "run.json", "metrics.json", "predictions.csv", "rejects.csv", "threshold.json",
              "validation.csv", "reliability.png", "pictures.pdf", "07_predict.ipynb", "07_predict.html"):
        assert (run_dir / f).is_file(), f
    assert runs.is_complete(run_dir)
    pred, rej = pd.read_csv(run_dir / "predictions.csv"), pd.read_csv(run_dir / "rejects.csv")
    assert len(pred) == 6 and list(rej["file"]) == ["mat_nan.hea"]
    assert json.loads((run_dir / "threshold.json").read_text())["split"] == "val"
    assert len(list((run_dir / "pictures").glob("*.png"))) == 2
    run = json.loads((run_dir / "run.json").read_text())
    assert len(run["training_runs"]) == 2 and run["training_runs"][0]["best_epoch"] == 1
