"""Sweep runner: the full models x 5 fractions grid on a tiny configuration, resuming, failures.

The grid runs in-process (``executor="inprocess"``: the notebook's steps without a kernel);
``tests/pipeline/test_notebook_03.py`` runs a combination through papermill. Oracles: the cohort store's
saved splits (every run must have scored exactly the store's val/test/external records and trained
on the store's nested fraction subsets) and the run folders' own ``run.json``/``metrics.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import submitit
import torch
import yaml

from conftest import write_fake_run
from heartbeit_lib import cohorts
from heartbeit_lib.pipeline import finetune
from heartbeit_lib.pipeline import metrics
from heartbeit_lib.models import registry as models
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


@pytest.mark.slow
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


@pytest.mark.slow
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
    assert [s for _, s, _ in sweep.status(spec)] == ["done", "failed", "done", "missing"]
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


@pytest.mark.parametrize("name", ["paper", "cpu_tiny", "paper_slurm"])
def test_shipped_sweep_files_load(name):
    spec = sweep.load_sweep(runs.PARAMETERS_DIR / "sweeps" / f"{name}.yaml")
    assert sorted(spec.grid["fraction"]) == FRACTIONS
    if name == "paper":
        assert {"heartbeit", "vit_b16", "efficientnet_b4", "resnet152"} <= set(spec.grid["model"])
        assert spec.params.get("epochs", 30) == 30


@pytest.mark.parametrize("path", sorted((runs.PARAMETERS_DIR / "sweeps").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_sweep_file_validates(path):
    """Every combination of every sweep file is a valid 03 configuration (load_sweep validates them all)."""
    spec = sweep.load_sweep(path)
    assert spec.combinations()


# ---------------------------------------------------------------- executors, claims, status (issues 15, 17.7)


def _wait_for(predicate, timeout_s: float = 120.0, what: str = ""):
    t0 = time.time()
    while not predicate():
        assert time.time() - t0 < timeout_s, f"timed out waiting for {what}"
        time.sleep(0.1)


def _kill_lock_holders(lock: Path) -> None:
    """SIGKILL every process holding a flock on ``lock`` (from /proc/locks). submitit's cancel sends SIGINT, which a
    job started from a long pytest session can inherit as ignored; the test means "the job's process died"."""
    ino = os.stat(lock).st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        parts = line.split()
        if len(parts) > 5 and parts[5].rsplit(":", 1)[-1] == str(ino) and parts[4] != str(os.getpid()):
            try:
                os.kill(int(parts[4]), signal.SIGKILL)
            except (ProcessLookupError, PermissionError, ValueError):
                pass


def _state(spec, rid):
    return {r: s for r, s, _ in sweep.status(spec)}[rid]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_local_parallel_sweep_kill_one_job_and_rerun_submits_only_it(grid_root, tmp_path):
    """Real subprocesses (submitit's LocalExecutor). Oracle: the state records, locks and run folders."""
    out = tmp_path / "out"
    shutil.copytree(grid_root / "01_preprocess", out / "01_preprocess")
    path = write_sweep(tmp_path / "par.yaml", out, ["resnet152_scratch", "vit_b16_scratch"], [1.0],
                       extra_params={"cache_images": True}, per_model={"vit_b16_scratch": {"epochs": 25}})
    spec = dataclasses.replace(sweep.load_sweep(path), runner="inline")
    fast, slow = (spec.run_id(c) for c in spec.combinations())
    assert [s for _, s, _ in sweep.status(spec)] == ["missing", "missing"]

    # submit the slow combination alone, watch it go queued -> running, then kill its process
    ex = submitit.LocalExecutor(folder=spec.logs)
    ex.update_parameters(timeout_min=10, gpus_per_node=0)
    job = ex.submit(sweep.ComboJob(spec, spec.combinations()[1], "inline", threads=1))
    sweep._record_submitted(spec, spec.combinations()[1], job, "local_parallel")
    assert _state(spec, slow) in ("queued", "running")
    _wait_for(lambda: (spec.run_dir(spec.combinations()[1]) / "resume.pt").is_file(), what="the first epoch")
    assert _state(spec, slow) == "running"
    job.cancel()  # SIGINT: a job started from a long pytest session can inherit it as ignored and run to the end,
    _kill_lock_holders(spec.state_dir / f"{slow}.lock")  # so kill the lock holder now, before it can finish
    _wait_for(job.done, what="the killed job")
    _wait_for(lambda: _state(spec, slow) == "failed", 60,
              f"the lock to be released (status: {sweep.status_lines(spec)}, record: {sweep.read_record(spec, slow)})")
    lines = sweep.status_lines(spec)
    assert lines[0].startswith(f"missing   {fast}") and lines[1].startswith(f"failed    {slow}")
    assert f"log={job.paths.stdout}" in lines[1] and "error=" in lines[1]
    assert (spec.run_dir(spec.combinations()[1]) / "resume.pt").is_file()  # its last finished epoch

    first = sweep.local_parallel_sweep(spec, parallel=2)  # runs the missing one and resumes the failed one
    assert first.ok and sorted(first.ran) == sorted([fast, slow])
    assert [s for _, s, _ in sweep.status(spec)] == ["done", "done"]
    log = runs.read_jsonl(spec.run_dir(spec.combinations()[1]) / "log.jsonl")
    assert [r["epoch"] for r in log] == list(range(1, 26))  # resumed: every epoch once
    assert not (spec.run_dir(spec.combinations()[1]) / "resume.pt").exists()

    # remove one finished run: a re-run submits only it
    shutil.rmtree(spec.run_dir(spec.combinations()[0]))
    again = sweep.local_parallel_sweep(spec, parallel=2)
    assert again.ran == [fast] and again.skipped == [slow]


def _sweep_in_subprocess(path: str) -> subprocess.Popen:
    code = ("import json, sys, torch; torch.set_num_threads(1); from heartbeit_lib.pipeline import sweep; "
            "s = sweep.run_sweep(sweep.load_sweep(sys.argv[1]), 'inline', progress=False, "
            "executor_kw={'figure': False}); print('RESULT' + json.dumps(s.to_dict()))")
    return subprocess.Popen([sys.executable, "-c", code, path], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_sweeps_started_at_once_never_run_a_combination_twice(grid_root, tmp_path):
    """Issue 17 item 7. Oracle: each sweep's own summary (ran / busy / skipped) and the run folders."""
    out = tmp_path / "out"
    shutil.copytree(grid_root / "01_preprocess", out / "01_preprocess")
    path = write_sweep(tmp_path / "twice.yaml", out, ["resnet152_scratch", "vit_b16_scratch"], [0.5, 1.0],
                       extra_params={"epochs": 3})
    procs = [_sweep_in_subprocess(str(path)) for _ in range(2)]
    results = []
    for p in procs:
        stdout, _ = p.communicate(timeout=500)
        assert p.returncode == 0, stdout
        results.append(json.loads(next(ln for ln in stdout.splitlines() if ln.startswith("RESULT"))[6:]))
    a, b = (set(r["ran"]) for r in results)
    spec = sweep.load_sweep(path)
    every = {spec.run_id(c) for c in spec.combinations()}
    assert not (a & b) and a | b == every  # each combination ran in exactly one sweep
    for r in results:  # the other sweep's combinations were seen as running elsewhere or already complete
        assert set(r["busy"]) | set(r["skipped"]) == every - set(r["ran"]) and not r["failed"]
    for combo in spec.combinations():
        d = spec.run_dir(combo)
        assert sweep.is_done(d)
        assert len(runs.read_jsonl(d / "log.jsonl")) == 3  # one training, never restarted or interleaved


def test_slurm_sweep_sbatch_script_carries_the_resources(tmp_path, monkeypatch):
    """Oracle: the text of the sbatch file submitit would submit (written without a cluster)."""
    path = write_sweep(tmp_path / "slurm.yaml", tmp_path / "o", ["resnet152_scratch", "vit_b16_scratch"], [0.1, 1.0])
    data = yaml.safe_load(path.read_text())
    data.update(executor="slurm", array_parallelism=3, resources={
        "default": {"partition": "gpu", "gpus": 1, "cpus": 8, "mem_gb": 64, "time_min": 240, "account": "lab",
                    "constraint": "a100", "setup": ["source .venv/bin/activate"], "sbatch": {"qos": "high"}},
        "vit": {"time_min": 480, "mem_gb": 96}})
    path.write_text(yaml.safe_dump(data))
    spec = sweep.load_sweep(path)
    assert spec.executor == "slurm"
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))  # pretend srun exists
    texts = {}
    for model in ("resnet152_scratch", "vit_b16_scratch"):
        ex = sweep.slurm_executor(spec, model)
        ex.parameters["map_count"] = 5  # as submitit sets it for a 5-job array
        texts[model] = ex._make_submission_file_text(ex._submitit_command_str, "uid")
    for text in texts.values():
        for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=8",
                     "#SBATCH --account=lab", "#SBATCH --constraint=a100", "#SBATCH --qos=high",
                     "#SBATCH --array=0-4%3", "source .venv/bin/activate", "--signal=USR2@120"):
            assert line in text, line
    assert "#SBATCH --time=240" in texts["resnet152_scratch"] and "#SBATCH --mem=64GB" in texts["resnet152_scratch"]
    assert "#SBATCH --time=480" in texts["vit_b16_scratch"] and "#SBATCH --mem=96GB" in texts["vit_b16_scratch"]
    data["resources"]["vit"]["gpu"] = 2
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(sweep.SweepError, match="gpu"):
        sweep.load_sweep(path)


def test_lr_grid_is_chosen_on_validation_never_on_test(tmp_path):
    """Issue 18 section 4. Oracle: hand-written metrics.json files where the test AUROC prefers another rate."""
    path = write_sweep(tmp_path / "lr.yaml", tmp_path / "o", ["resnet152_scratch", "vit_b16_scratch"], [0.1],
                       seeds=(0, 1))
    data = yaml.safe_load(path.read_text())
    data["lr"] = {"default": [1e-3], "vit": [1e-4, 3e-4, 1e-3]}
    path.write_text(yaml.safe_dump(data))
    spec = sweep.load_sweep(path)
    ids = [spec.run_id(c) for c in spec.combinations()]
    assert ids == ["toy-resnet152_scratch-f0.1-s0-lr0.001", "toy-resnet152_scratch-f0.1-s1-lr0.001",
                   "toy-vit_b16_scratch-f0.1-s0-lr0.0001", "toy-vit_b16_scratch-f0.1-s0-lr0.0003",
                   "toy-vit_b16_scratch-f0.1-s0-lr0.001", "toy-vit_b16_scratch-f0.1-s1-lr0.0001",
                   "toy-vit_b16_scratch-f0.1-s1-lr0.0003", "toy-vit_b16_scratch-f0.1-s1-lr0.001"]
    p = spec.params_for(spec.combinations()[2])
    assert p["lr"] == 1e-4 and p["lr_start"] == pytest.approx(3e-5)  # the paper's lr_start / lr ratio
    # (val, test) AUROC per run: for vit seed 0 validation prefers 3e-4 while test would prefer 1e-3
    scores = {ids[0]: (0.7, 0.7), ids[1]: (0.6, 0.6), ids[2]: (0.60, 0.90), ids[3]: (0.80, 0.50),
              ids[4]: (0.75, 0.95), ids[5]: (0.7, 0.7), ids[6]: (0.7, 0.8)}  # ids[7] never finished
    for combo in spec.combinations():
        rid = spec.run_id(combo)
        if rid in scores:
            d = spec.run_dir(combo)
            d.mkdir(parents=True)
            (d / "run.json").write_text(json.dumps({"finished": "2026-01-01T00:00:00"}))
            (d / "metrics.json").write_text(json.dumps({"val_auroc": scores[rid][0], "test_auroc": scores[rid][1]}))
    table = sweep.choose_lr(spec)
    chosen = dict(zip(table.run_id[table.chosen], table.lr[table.chosen]))
    assert chosen == {ids[0]: 1e-3, ids[1]: 1e-3, ids[3]: 3e-4}  # vit seed 1 has an unfinished run: no choice
    assert table.loc[table.run_id.isin(ids[5:]), "chosen_lr"].isna().all()
    read = metrics.read_lr_choice(tmp_path / "o" / "03_finetune" / "lr-choice-lr.csv")
    assert sorted(read.run_id[read.chosen]) == sorted(chosen)
    data["params"]["lr"] = 1e-3  # a fixed rate and a grid at once is ambiguous
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(sweep.SweepError, match="lr"):
        sweep.load_sweep(path)


@pytest.mark.slow
def test_finetune_resume_continues_exactly_where_it_stopped(grid_root, tmp_path, monkeypatch):
    """Oracle: the same run uninterrupted; log rows (all but timings), predictions and best weights must match
    exactly (CPU, single thread: deterministic)."""
    out = tmp_path / "o"
    base = dict(task=TASK, model="resnet152_scratch", fraction=1.0, epochs=4, image_size=32, model_size="micro",
                batch_size=16, device="cpu", cohort_run=str(grid_root / "01_preprocess" / TASK), out_root=str(out))
    whole = finetune.run_finetune(finetune.FinetuneConfig(**base, run_id="whole"), figure=False)
    real, calls = finetune.engine.train_one_epoch, []

    def dies_in_epoch_3(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("preempted")
        return real(*a, **k)

    monkeypatch.setattr(finetune.engine, "train_one_epoch", dies_in_epoch_3)
    cfg = finetune.FinetuneConfig(**base, run_id="cut", resume=True)
    with pytest.raises(KeyboardInterrupt):
        finetune.run_finetune(cfg, figure=False)
    assert [r["epoch"] for r in runs.read_jsonl(out / "03_finetune" / "cut" / "log.jsonl")] == [1, 2]
    monkeypatch.setattr(finetune.engine, "train_one_epoch", real)
    resumed = finetune.run_finetune(cfg, figure=False)
    drop = ("epoch_time_s",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed.log] == \
        [{k: v for k, v in r.items() if k not in drop} for r in whole.log]
    pa = pd.read_parquet(out / "03_finetune" / "whole" / "predictions.parquet")
    pb = pd.read_parquet(out / "03_finetune" / "cut" / "predictions.parquet")
    pd.testing.assert_frame_equal(pa, pb)
    wa, wb = (torch.load(out / "03_finetune" / r / "model_best.pt", weights_only=True) for r in ("whole", "cut"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not (out / "03_finetune" / "cut" / "resume.pt").exists()


@pytest.mark.slow
def test_metrics_keeps_only_the_validation_chosen_rate(tmp_path):
    """04 over an lr grid: without lr_choice two runs of one cell are an error naming them; with the table of
    choose-lr only the chosen run of each cell is read. Oracle: the run folders written here."""

    root = tmp_path / "03_finetune"
    dirs = []
    for lr in (1e-4, 1e-3):
        d = write_fake_run(root, "mi", "vit_b16_scratch", 0.1, seed=0)
        dirs.append(d.rename(d.with_name(f"{d.name}-lr{lr}")))
    with pytest.raises(metrics.RunFolderError, match="lr_choice"):
        metrics.list_runs(root)
    choice = pd.DataFrame({"task": "mi", "model": "vit_b16_scratch", "fraction": 0.1, "seed": 0, "lr": [1e-4, 1e-3],
                           "run_id": [d.name for d in dirs], "val_auroc": [0.8, 0.7], "chosen": [True, False],
                           "chosen_lr": 1e-4})
    choice.to_csv(tmp_path / "lr-choice-x.csv", index=False)
    table = metrics.list_runs(root, [tmp_path / "lr-choice-x.csv"])
    assert table.run_dir.tolist() == [str(dirs[0])]
    preds = metrics.collect_runs(root, lr_choice=[tmp_path / "lr-choice-x.csv"])
    assert set(preds.run_dir) == {str(dirs[0])}
    with pytest.raises(metrics.RunFolderError, match="does not exist"):
        metrics.list_runs(root, [tmp_path / "missing.csv"])


def test_lr_grid_and_resources_take_a_signal_family(tmp_path):
    """Signal models (not image-registry specs) get their lr grid and Slurm resources by the family key `signal`.
    Oracle: the grid written here."""
    path = write_sweep(tmp_path / "sig.yaml", tmp_path / "o", ["stmem_scratch", "xresnet1d101", "vit_b16_scratch"],
                       [1.0], per_model={"xresnet1d101": {"model_size": None}})
    data = yaml.safe_load(path.read_text())
    data["lr"] = {"default": [1e-3], "signal": [3e-4, 1e-3]}
    data["resources"] = {"signal": {"time_min": 30}}
    path.write_text(yaml.safe_dump(data))
    spec = sweep.load_sweep(path)
    assert [(c["model"], c["lr"]) for c in spec.combinations()] == [
        ("stmem_scratch", 3e-4), ("stmem_scratch", 1e-3), ("xresnet1d101", 3e-4), ("xresnet1d101", 1e-3),
        ("vit_b16_scratch", 1e-3)]
    assert models.sweep_family("inception1d") == "signal" and models.sweep_family("vit_b16") == "vit"


# ---------------------------------------------------------------- part of a sweep, another out_root (issue 26)


def test_only_keeps_the_matching_combinations_of_any_grid_key(tmp_path, capsys):
    """Oracle: the full grid's combinations filtered by hand (itertools order kept); bad keys/values are named."""
    out = tmp_path / "o"
    f = write_sweep(tmp_path / "s.yaml", out, ["resnet152_scratch", "xresnet1d101"], [0.1, 1.0], seeds=(0, 1, 2),
                    per_model={"xresnet1d101": {"model_size": None}})
    full = sweep.load_sweep(f).combinations()
    part = sweep.load_sweep(f, only=["model=xresnet1d101", "seed=0,2", "fraction=1"]).combinations()
    assert part == [c for c in full if c["model"] == "xresnet1d101" and c["seed"] in (0, 2) and c["fraction"] == 1.0]
    assert len(part) == 2
    assert sweep.load_sweep(f, only=["seed=1", "seed=2"]).combinations() == [c for c in full if c["seed"] in (1, 2)]
    for bad, match in ((["modle=xresnet1d101"], "'modle' is not a grid key.*model"), (["seed=7"], "'7' is not among seed"),
                       (["seed"], "KEY=VALUE")):
        with pytest.raises(sweep.SweepError, match=match):
            sweep.load_sweep(f, only=bad)
    assert sweep.main([str(f), "--dry-run", "--only", "model=xresnet1d101", "seed=0", "fraction=1.0"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("missing")]
    assert [ln.split()[1] for ln in lines] == ["toy-xresnet1d101-f1.0-s0"]


def test_only_selects_learning_rates_and_out_root_moves_relative_run_paths(tmp_path):
    f = tmp_path / "lr.yaml"
    f.write_text(yaml.safe_dump({"name": "lr", "out_root": "outputs",
                                 "grid": {"task": [TASK], "model": ["resnet152_scratch", "heartbeit"],
                                          "fraction": [1.0], "seed": [0]},
                                 "lr": [1.0e-4, 1.0e-3],
                                 "params": {"cohort_run": "outputs/01_preprocess/{task}", "epochs": 1,
                                            "pretrain_run": "outputs/02_pretrain/pt", "model_size": "micro"},
                                 "per_model": {"resnet152_scratch": {"pretrain_run": None},
                                               "heartbeit": {"pretrain_run": "runs/02_pretrain/other"}}}))
    spec = sweep.load_sweep(f, out_root=str(tmp_path / "elsewhere"), only=["lr=1e-3", "model=heartbeit"])
    (combo,) = spec.combinations()
    assert combo["lr"] == 1e-3 and spec.run_dir(combo) == tmp_path / "elsewhere" / "03_finetune" / (
        "toy-heartbeit-f1.0-s0-lr0.001")
    p = spec.params_for(combo)
    assert p["cohort_run"] == str(tmp_path / "elsewhere" / "01_preprocess" / TASK)
    assert p["pretrain_run"] == str(tmp_path / "elsewhere" / "02_pretrain" / "other")
    assert sweep.move_run_paths({"cohort_run": "/abs/01_preprocess/x", "pretrain_run": None, "lr": 1e-3,
                                 "weights": "outputs/02_pretrain/w.pt"}, "o") == {
        "cohort_run": "/abs/01_preprocess/x", "pretrain_run": None, "lr": 1e-3, "weights": "outputs/02_pretrain/w.pt"}
    same = sweep.load_sweep(f)  # without --out-root nothing moves
    assert same.params["cohort_run"] == "outputs/01_preprocess/{task}"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_local_parallel_keeps_two_warm_jobs_for_four_combinations(grid_root, tmp_path):
    """Issue 26: each local_parallel job process runs several combinations (Python, torch and the image cache start
    once). Oracle: the pid each combination recorded while running (state records), and the run folders."""
    out = tmp_path / "out"
    shutil.copytree(grid_root / "01_preprocess", out / "01_preprocess")
    path = write_sweep(tmp_path / "warm.yaml", out, ["resnet152_scratch", "vit_b16_scratch"], [0.5, 1.0],
                       extra_params={"cache_images": True})
    spec = dataclasses.replace(sweep.load_sweep(path), runner="inline")
    res = sweep.local_parallel_sweep(spec, parallel=2)
    rids = [spec.run_id(c) for c in spec.combinations()]
    assert res.ok and sorted(res.ran) == sorted(rids) and len(rids) == 4
    pids = {sweep.read_record(spec, r)["pid"] for r in rids}
    assert len(pids) <= 2  # four combinations, at most two processes: the jobs stayed warm
    assert all(runs.is_complete(spec.run_dir(c)) for c in spec.combinations())


@pytest.mark.parametrize("jobs,n_gpu,visible,cpus,want", [
    (2, 2, "3,7", 16, [("3", 8), ("7", 8)]),               # inherited list: entries, not physical 0 and 1
    (3, 2, " 3, 7 ", 16, [("3", 5), ("7", 5), ("3", 5)]),  # more jobs than GPUs: round robin
    (2, 2, None, 16, [("0", 8), ("1", 8)]),                # nothing inherited: indices
    (2, 1, "GPU-aa,GPU-bb", 4, [("GPU-aa", 2), ("GPU-aa", 2)]),  # device_count wins over the list's length
    (2, 0, "", 3, [(None, 1), (None, 1)]),                 # CPU: threads split, floor, at least 1
    (4, 0, None, 2, [(None, 1)] * 4),
])
def test_job_slots_map_jobs_to_inherited_devices_and_split_threads(jobs, n_gpu, visible, cpus, want):
    assert sweep.job_slots(jobs, n_gpu, visible, cpus) == want


def test_job_slots_reject_bad_counts():
    with pytest.raises(sweep.SweepError, match="cpus"):
        sweep.job_slots(2, 0, None, 0)
    with pytest.raises(sweep.SweepError, match="jobs"):
        sweep.job_slots(-1, 0, None, 2)


def test_local_parallel_jobs_get_the_inherited_gpus_and_a_share_of_the_cores(tmp_path, monkeypatch):
    """Faked: 2 visible GPUs from an inherited CUDA_VISIBLE_DEVICES=5,2 and 12 CPUs; a stand-in submitit executor
    records what each job would run with (oracle: the job objects and the executor's parameters)."""
    path = write_sweep(tmp_path / "gpu.yaml", tmp_path / "out", ["resnet152_scratch"], [0.5, 1.0])
    spec = sweep.load_sweep(path)
    submitted, params = [], {}

    class Job:
        def __init__(self, fn):
            self.fn, self.job_id = fn, str(len(submitted))
            self.paths = type("P", (), {"stdout": tmp_path / "o", "stderr": tmp_path / "e"})()

        def done(self):
            return True

        def exception(self):
            return None

        def result(self):
            return {spec.run_id(c): "ran" for c in spec.combinations()}

    class Executor:
        def __init__(self, folder):
            pass

        def update_parameters(self, **kw):
            params.update(kw)

        def submit(self, fn):
            submitted.append(fn)
            return Job(fn)

    monkeypatch.setattr(sweep.submitit, "LocalExecutor", Executor)
    monkeypatch.setattr(sweep.torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(sweep, "_cpu_count", lambda: 12)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,2")
    res = sweep.local_parallel_sweep(spec)
    assert res.ok and len(res.ran) == 2
    assert [(j.cuda_device, j.threads) for j in submitted] == [("5", 6), ("2", 6)]
    assert params["gpus_per_node"] == 0  # submitit would export physical indices 0 and 1

    # the job sets its entry in its own process before anything starts CUDA
    monkeypatch.setattr(sweep, "run_combination", lambda *a, **k: "ran")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # what submitit's controller gives a job without GPUs
    assert set(submitted[1]().values()) == {"ran"} and os.environ["CUDA_VISIBLE_DEVICES"] == "2"
