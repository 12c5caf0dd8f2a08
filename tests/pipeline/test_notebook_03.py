"""notebooks/03_finetune.ipynb through papermill: the users' command and the sweep CLI.

Oracles: the run folder contract (config.yaml, run.json with a finish time, log.jsonl,
predictions.parquet, metrics.json, model_best.pt, learning_curves.png, the executed notebook and
its HTML) and the defaults the notebook documents (cohort_run = <out_root>/01_preprocess/<task>,
pretrain_run = the latest complete 02_pretrain run, image_size = the checkpoint's).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml

from heartbeit_lib.pipeline import finetune, runs

pytestmark = pytest.mark.notebooks
NB = runs.NOTEBOOKS_DIR / "03_finetune.ipynb"
TASK = "toy"  # the task of the conftest toy store
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def nb_root(tmp_path_factory, make_toy_store, fake_pretrain_checkpoint):
    root = tmp_path_factory.mktemp("nb03")
    make_toy_store(root)
    run = root / "02_pretrain" / "cpu"
    fake_pretrain_checkpoint(run / "checkpoints" / "last.pt", size="micro", img_size=32)
    (run / "run.json").write_text(json.dumps({"finished": "2024-01-01T00:00:00+00:00"}))
    return root


def _check_run_folder(d, n_epochs, extra=()):
    for f in ("config.yaml", "run.json", "log.jsonl", "predictions.parquet", "metrics.json", "model_best.pt",
              "learning_curves.png", *extra):
        assert (d / f).is_file(), f
    assert runs.is_complete(d)
    assert len(runs.read_jsonl(d / "log.jsonl")) == n_epochs
    assert set(pd.read_parquet(d / "predictions.parquet").epoch) == set(range(1, n_epochs + 1))
    m = json.loads((d / "metrics.json").read_text())
    assert 1 <= m["best_epoch"] <= n_epochs and m["select_on"] == "val"
    return m


def test_users_command_with_defaults(nb_root):
    """``papermill notebooks/03_finetune.ipynb out.ipynb -p task <task> -p fraction 0.1``."""
    out = nb_root / "out.ipynb"
    r = subprocess.run([sys.executable, "-m", "papermill", str(NB), str(out), "-p", "task", TASK,
                        "-p", "fraction", "0.1", "-p", "out_root", str(nb_root), "-p", "epochs", "2",
                        "-p", "device", "cpu"], capture_output=True, text=True, env=ENV, cwd=runs.REPO_ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert out.is_file()  # papermill writes the executed notebook where the user asked
    d = nb_root / "03_finetune" / f"{TASK}-heartbeit-f0.1-s0"
    m = _check_run_folder(d, 2)
    assert m["model"] == "heartbeit" and m["normalize_mean"] == [0.9] * 3  # the checkpoint's normalisation
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    assert cfg["cohort_run"] == str(nb_root / "01_preprocess" / TASK)
    assert cfg["pretrain_run"] == str(nb_root / "02_pretrain" / "cpu") and cfg["image_size"] == 32

    # the stage contract: finetune.run does the notebook's steps after its config cell, so from the same resolved
    # config (and 1 thread, as the notebook's kernel here) it writes the same metrics.json
    cfg = finetune.FinetuneConfig.from_dict({**cfg, "run_id": "contract"})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        got = finetune.run(cfg, runs.start_run("03_finetune", cfg))
    finally:
        torch.set_num_threads(threads)
    timing = {"train_time_s"}
    assert {k: v for k, v in json.loads(json.dumps(got)).items() if k not in timing} == \
        {k: v for k, v in m.items() if k not in timing}
    _check_run_folder(nb_root / "03_finetune" / "contract", 2)


def test_sweep_cli_runs_the_notebook_with_html(nb_root, tmp_path):
    spec = {"name": "nb", "out_root": str(tmp_path),
            "grid": {"task": [TASK], "model": ["efficientnet_b4_scratch"], "fraction": [0.5], "seed": [3]},
            "params": {"cohort_run": str(nb_root / "01_preprocess" / "{task}"), "model_size": "micro",
                       "image_size": 32, "epochs": 1, "device": "cpu"}}
    path = tmp_path / "nb.yaml"
    path.write_text(yaml.safe_dump(spec))
    r = subprocess.run([sys.executable, "-m", "heartbeit_lib.pipeline.sweep", str(path), "--no-progress"],
                       capture_output=True, text=True, env=ENV, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "1 ran" in r.stdout
    d = tmp_path / "03_finetune" / f"{TASK}-efficientnet_b4_scratch-f0.5-s3"
    _check_run_folder(d, 1, extra=("03_finetune.ipynb", "03_finetune.html"))
    assert (d / "03_finetune.html").stat().st_size > 10_000

