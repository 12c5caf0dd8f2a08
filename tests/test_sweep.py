"""Sweep runner: the full models x 5 fractions grid on a tiny configuration, resuming, failures.

The grid runs in-process (``executor="inprocess"``: the notebook's steps without a kernel);
``tests/test_notebook_03.py`` runs a combination through papermill. Oracles: the cohort store's
saved splits (every run must have scored exactly the store's val/test/external records and trained
on the store's nested fraction subsets) and the run folders' own ``run.json``/``metrics.json``.
"""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import torch
import yaml

from heartbeit_lib import cohorts
from heartbeit_lib.pipeline import finetune
from heartbeit_lib.classify import registry as models
from heartbeit_lib.pipeline import runs
from heartbeit_lib.pipeline import sweep

TASK = "toy"  # the task of the conftest toy store
FRACTIONS = [0.01, 0.1, 0.25, 0.5, 1.0]
IMAGENET = ("vit_b16", "beit_b16", "efficientnet_b4", "resnet152")


def write_weights(folder):
    """A 1000-class micro state dict per ImageNet model (stand-ins for the published files)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in IMAGENET:
        torch.manual_seed(0)
        m = models.create_model(f"{name}_scratch", size="micro", img_size=32, num_classes=1000)
        out[name] = folder / f"{name}_micro.pth"
        torch.save(m.state_dict(), out[name])
    return out


def write_sweep(path, out_root, models_, fractions, extra_params=None, per_model=None, seeds=(0,)):
    spec = {"name": path.stem, "out_root": str(out_root),
            "grid": {"task": [TASK], "model": list(models_), "fraction": list(fractions), "seed": list(seeds)},
            "params": {"cohort_run": str(out_root / "01_preprocess" / "{task}"), "epochs": 1, "image_size": 32,
                       "model_size": "micro", "batch_size": 16, "device": "cpu", **(extra_params or {})},
            "per_model": per_model or {}}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def grid_root(tmp_path_factory, make_toy_store, fake_pretrain_checkpoint):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("sweep")
    make_toy_store(root)
    fake_pretrain_checkpoint(root / "02_pretrain" / "tiny" / "checkpoints" / "last.pt", size="micro", img_size=32)
    return root


def test_full_grid_of_models_and_fractions_runs_to_completion(grid_root):
    weights = write_weights(grid_root / "weights")
    all_models = ["heartbeit"] + [m for n in IMAGENET for m in (n, f"{n}_scratch")]
    assert sorted(all_models) == models.list_models()
    path = write_sweep(grid_root / "grid.yaml", grid_root, all_models, FRACTIONS,
                       extra_params={"pretrain_run": str(grid_root / "02_pretrain" / "tiny"), "cache_images": True},
                       per_model={n: {"weights": str(w)} for n, w in weights.items()})
    spec = sweep.load_sweep(path)
    # figure=False: the learning-curve plot is the largest cost of a 1-epoch micro run and does not
    # depend on the model (test_finetune / test_notebook_03 check it); images rendered once per split
    summary = sweep.run_sweep(spec, executor="inprocess", progress=False, executor_kw={"figure": False})
    assert summary.failed == {} and len(summary.ran) == len(all_models) * len(FRACTIONS) == 45
    assert json.loads(summary.path.read_text())["ran"] == summary.ran

    store = cohorts.CohortStore(grid_root / "01_preprocess" / TASK)
    eval_records = {s: set(store.manifest.record_id.iloc[store.indices(s)]) for s in finetune.EVAL_SPLITS}
    train_sha = {}
    for combo in spec.combinations():
        d = spec.run_dir(combo)
        assert runs.is_complete(d)
        m = json.loads((d / "metrics.json").read_text())
        assert m["best_epoch"] == 1 and m["select_on"] == "val" and "test_auroc" in m and "val_auprc" in m
        pred = pd.read_parquet(d / "predictions.parquet")
        for s in finetune.EVAL_SPLITS:  # every model scored exactly the store's patients in every split
            want = eval_records[s] if s != "val" else set(  # validation shrinks with the fraction (matched)
                store.manifest.record_id.iloc[store.indices("val", combo["fraction"])])
            assert set(pred.record_id[pred.split == s]) == want, (d.name, s)
        # every model trained on the same ECGs at a given fraction
        train_sha.setdefault(combo["fraction"], set()).add(m["train_records_sha256"])
        expected = store.manifest.record_id.iloc[store.indices("train", combo["fraction"])]
        assert m["train_records_sha256"] == finetune.records_sha256(expected)
    assert all(len(v) == 1 for v in train_sha.values()) and len(train_sha) == 5
    # the paper's fraction grid gives strictly growing, nested training sets
    sizes = [json.loads((spec.run_dir({"task": TASK, "model": "heartbeit", "fraction": f, "seed": 0})
                         / "metrics.json").read_text())["n_train"] for f in FRACTIONS]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]

    again = sweep.run_sweep(spec, executor="inprocess", progress=False)  # everything complete: all skipped
    assert again.ran == [] and len(again.skipped) == 45


def test_resume_runs_only_missing_combinations_and_failures_do_not_stop(grid_root, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(grid_root / "01_preprocess", out / "01_preprocess")
    path = write_sweep(tmp_path / "small.yaml", out, ["resnet152_scratch", "vit_b16_scratch"], [0.5, 1.0])
    spec = sweep.load_sweep(path)
    calls = []

    def counting(spec_, params, run_dir, **kw):
        calls.append(run_dir.name)
        sweep.inprocess_executor(spec_, params, run_dir, **kw)

    first = sweep.run_sweep(spec, executor=counting, progress=False)
    assert len(first.ran) == 4 and len(calls) == 4
    dirs = [spec.run_dir(c) for c in spec.combinations()]
    # simulate a crash: one run killed mid-training (no finish time, no metrics), one never started
    info = json.loads((dirs[1] / "run.json").read_text())
    info["finished"] = None
    (dirs[1] / "run.json").write_text(json.dumps(info))
    (dirs[1] / "metrics.json").unlink()
    (dirs[1] / "stale.tmp").write_text("half-written")
    shutil.rmtree(dirs[3])
    assert [s for _, s in sweep.status(spec)] == ["complete", "partial", "complete", "missing"]
    calls.clear()
    second = sweep.run_sweep(spec, executor=counting, progress=False)
    assert sorted(calls) == sorted([dirs[1].name, dirs[3].name]) == sorted(second.ran)
    assert sorted(second.skipped) == sorted([dirs[0].name, dirs[2].name])
    assert not (dirs[1] / "stale.tmp").exists()  # the half-written folder was redone from scratch

    # a failing combination is recorded, the others still run, and the CLI exits 1
    bad = write_sweep(tmp_path / "bad.yaml", out, ["resnet152", "vit_b16_scratch"], [0.25],
                      per_model={"resnet152": {"weights": str(tmp_path / "missing.pth")}})
    spec_bad = sweep.load_sweep(bad)
    res = sweep.run_sweep(spec_bad, executor="inprocess", progress=False)
    assert list(res.failed) == ["toy-resnet152-f0.25-s0"] and "WeightsNotFoundError" in res.failed["toy-resnet152-f0.25-s0"]
    assert "missing.pth" in res.failed["toy-resnet152-f0.25-s0"]
    assert res.ran == ["toy-vit_b16_scratch-f0.25-s0"]
    assert sweep.main([str(bad), "--in-process", "--no-progress"]) == 1  # the failure is retried, fails again


def test_sweep_files_are_validated_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "o"
    ok = write_sweep(tmp_path / "ok.yaml", out, ["resnet152_scratch"], [0.1])
    spec = sweep.load_sweep(ok)
    assert spec.params_for(spec.combinations()[0])["cohort_run"] == str(out / "01_preprocess" / TASK)
    assert spec.run_dir(spec.combinations()[0]) == out.resolve() / "03_finetune" / "toy-resnet152_scratch-f0.1-s0"
    for kw, match in ((dict(extra_params={"epoch": 3}), "unknown notebook parameter"),
                      (dict(extra_params={"select_on": "external"}), "select_on"),
                      (dict(per_model={"resnet152_scratch": {"fracton": 1}}), "fracton")):
        with pytest.raises(sweep.SweepError, match=match):
            sweep.load_sweep(write_sweep(tmp_path / "x.yaml", out, ["resnet152_scratch"], [0.1], **kw))
    with pytest.raises(sweep.SweepError, match="fraction"):
        sweep.load_sweep(write_sweep(tmp_path / "x.yaml", out, ["resnet152_scratch"], [0.1, 2.0]))
    (tmp_path / "y.yaml").write_text("grid: {task: [a], model: [resnet152]}\n")
    with pytest.raises(sweep.SweepError, match="missing.*fraction"):
        sweep.load_sweep(tmp_path / "y.yaml")
    assert sweep.main([str(ok), "--dry-run"]) == 0
    assert "missing   toy-resnet152_scratch-f0.1-s0" in capsys.readouterr().out
    assert not (out / "03_finetune").exists()  # a dry run writes nothing


@pytest.mark.parametrize("name", ["paper", "cpu_tiny"])
def test_shipped_sweep_files_load(name):
    spec = sweep.load_sweep(runs.PARAMETERS_DIR / "sweeps" / f"{name}.yaml")
    assert sorted(spec.grid["fraction"]) == FRACTIONS
    if name == "paper":
        assert {"heartbeit", "vit_b16", "efficientnet_b4", "resnet152"} <= set(spec.grid["model"])
        assert spec.params.get("epochs", 30) == 30
