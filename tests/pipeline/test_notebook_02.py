"""notebooks/02_pretrain.ipynb run headlessly with papermill on a tiny cohort store, for each modality.

Oracles: the configuration we pass (epochs, sizes), the checkpoint contract with fine-tuning
(``models.create_backbone`` loads ``backbone`` with every key matched) and, for the one modality step, the same
config run in-process through ``pretrain.run`` (the same metrics, timings aside).
"""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest
import torch

from heartbeit_lib import cohorts
from heartbeit_lib.models import registry as models
from heartbeit_lib.pipeline import pretrain
from heartbeit_lib.pipeline import runs

pytestmark = pytest.mark.notebooks


def _store(path, smooth_ecgs, n=24):
    meta = pd.DataFrame({"record_id": [f"r{i}" for i in range(n)], "patient_id": [f"p{i}" for i in range(n)],
                         "site": "a", "label": -1})
    return cohorts.build_store_from_arrays(path, smooth_ecgs(n), meta, task="unlabelled")


def test_notebook_parameters_match_config_and_yaml_files():
    declared = runs.notebook_parameters(runs.resolve_notebook("02_pretrain"))
    fields = {f.name for f in dataclasses.fields(pretrain.PretrainConfig)}
    assert set(declared) == fields
    files = sorted((runs.PARAMETERS_DIR / "02_pretrain").glob("*.yaml"))
    assert {f.stem for f in files} >= {"demo", "paper"}
    for f in files:
        params = runs.load_parameter_files(f)
        assert set(params) <= fields, f.name
        pretrain.PretrainConfig.from_dict(params)  # types and ranges valid


def test_tiny_pretraining_run(tmp_path, monkeypatch, smooth_ecgs):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel inherits it: no thread contention on small CPUs
    store = _store(tmp_path / "store", smooth_ecgs)
    run_dir = tmp_path / "02_pretrain" / "tiny"
    params = {"cohort_run": str(store.root), "model_size": "micro", "image_size": 32, "epochs": 2,
              "batch_size": 8, "num_masked": 2, "min_block": 1, "vocab_size": 16, "tokenizer_fit_images": 16,
              "warmup_epochs": 1.0, "lr": 1e-3, "device": "cpu", "progress": False, "save_every": 1,
              "val_fraction": 0.2, "threads": 1, "out_root": str(tmp_path), "run_id": "tiny"}
    runs.execute_notebook("02_pretrain", params, run_dir, html=False)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs_done"] == 2 and metrics["n_train"] + metrics["n_val"] == 24
    assert 0 <= metrics["final_val_acc"] <= 1 and "baseline_majority_acc" in metrics
    assert metrics["tokenizer_codes_used"] >= 2
    for name in ("config.yaml", "run.json", "log.jsonl", "pretrain_curve.png", "examples.png",
                 "tokenizer.pt", "tokenizer_report.json", "checkpoints/last.pt", "checkpoints/epoch-0002.pt",
                 "02_pretrain.ipynb"):
        assert (run_dir / name).exists(), name
    assert len(runs.read_jsonl(run_dir / "log.jsonl")) == 2
    assert runs.is_complete(run_dir)
    assert list((store.root / "tokens").glob("*.npy"))  # token cache next to the store
    ck = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    bb = models.create_backbone(ck["backbone_config"]["size"], ck["backbone_config"]["img_size"])
    res = bb.load_state_dict(ck["backbone"], strict=True)
    assert not res.missing_keys and not res.unexpected_keys


def test_tiny_signal_pretraining_run(tmp_path, monkeypatch, smooth_ecgs):
    """The signal story through the same notebook: only ``modality`` differs, the run folder holds ST-MEM's files."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    store = _store(tmp_path / "store", smooth_ecgs)
    run_dir = tmp_path / "02_pretrain" / "sig"
    params = {"cohort_run": str(store.root), "modality": "signal", "model_size": "micro", "epochs": 2,
              "batch_size": 8, "warmup_epochs": 1.0, "drop_path": 0.0, "device": "cpu", "progress": False,
              "save_every": 1, "val_fraction": 0.2, "threads": 1, "out_root": str(tmp_path), "run_id": "sig"}
    runs.execute_notebook("02_pretrain", params, run_dir, html=False)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["modality"] == "signal" and metrics["epochs_done"] == 2
    assert metrics["n_train"] + metrics["n_val"] == 24
    for name in ("pretrain_curve.png", "pretraining_rows.npy", "checkpoints/last.pt", "02_pretrain.ipynb"):
        assert (run_dir / name).exists(), name
    assert not (run_dir / "tokenizer_report.json").exists()  # no image step ran
    ck = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert ck["modality"] == "signal" and ck["epoch"] == 2
    # the notebook's modality step is pretrain.run: the same config in-process gives the same metrics
    cfg = pretrain.PretrainConfig.from_dict({**params, "run_id": "sig-run"})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        got = pretrain.run(cfg, runs.start_run("02_pretrain", cfg), device="cpu")
    finally:
        torch.set_num_threads(threads)
    timing = {"train_time_s", "ecgs_per_s_last_epoch"}
    assert {k: v for k, v in json.loads(json.dumps(got)).items() if k not in timing} == \
        {k: v for k, v in metrics.items() if k not in timing}
