"""07_predict (heartbeit_lib.pipeline.predict) on tiny trained runs: scores, ensemble, threshold, rejects, errors, CLI.

Oracles: the 03_finetune run's own ``predictions.parquet`` (scores of the same model on the same stored ECGs, to
1e-5), ``numpy.mean`` for the ensemble, scikit-learn's ``roc_curve`` / ``roc_auc_score`` for the threshold and the
AUROC, ``hashlib.sha256`` for the salted patient hashes, the number of inputs written for the rejects accounting.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO_ROOT, predict_runs, write_wfdb_folder
from sklearn.metrics import roc_auc_score, roc_curve

from heartbeit_lib import render
from heartbeit_lib.analysis import calibration
from heartbeit_lib.classify.checkpoint import FinetuneRunError
from heartbeit_lib.cohorts import CohortStore
from heartbeit_lib.pipeline import predict, runs

BROKEN = REPO_ROOT / "tests" / "data" / "broken"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two tiny trained runs (seeds 0, 1) on a preprocessed toy store, and a WFDB folder of 6 readable records,
    their labels and 2 broken records."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("predict")
    ft = predict_runs(root)
    raw = root / "raw"
    write_wfdb_folder(raw)
    for name in ("mat_nan", "mat_truncated"):
        for ext in (".hea", ".mat"):
            shutil.copy(BROKEN / f"{name}{ext}", raw)
    return root, ft, raw


def cfg_for(world, **kw) -> predict.PredictConfig:
    root, ft, raw = world
    base = dict(finetune_runs=(str(ft[0]),), data_root=str(raw), source="wfdb", labels=str(raw / "labels.csv"),
                out_root=str(root), device="cpu", pictures="none", n_boot=50)
    if "cohort_run" in kw:
        base.pop("data_root"), base.pop("labels")
    return predict.PredictConfig(**{**base, **kw})


def best_scores(run_dir, split: str) -> pd.DataFrame:
    pred = pd.read_parquet(run_dir / "predictions.parquet")
    best = json.loads((run_dir / "metrics.json").read_text())["best_epoch"]
    return pred[(pred["split"] == split) & (pred["epoch"] == best)].set_index("record_id")


@pytest.mark.slow
def test_scores_on_the_training_store_reproduce_the_run(world):
    root, ft, _ = world
    cfg = cfg_for(world, cohort_run=str(root / "01_preprocess" / "toypp"), split="test", run_id="internal")
    predict.run(cfg)
    pred = pd.read_csv(root / "07_predict" / "internal" / "predictions.csv", dtype={"record_id": str})
    ref = best_scores(ft[0], "test").loc[pred["record_id"]]
    np.testing.assert_allclose(pred["score"], ref["score"], atol=1e-5)
    np.testing.assert_array_equal(pred["label"], ref["label"])


@pytest.mark.slow
def test_ensemble_averages_member_probabilities(world):
    root, ft, _ = world
    cfg = cfg_for(world, finetune_runs=tuple(map(str, ft)), cohort_run=str(root / "01_preprocess" / "toypp"),
                  split="test", run_id="ens")
    predict.run(cfg)
    pred = pd.read_csv(root / "07_predict" / "ens" / "predictions.csv", dtype={"record_id": str})
    cols = [f"score_{p.name}" for p in ft]
    np.testing.assert_allclose(pred["score"], pred[cols].mean(axis=1), rtol=0, atol=1e-12)
    for c, run_dir in zip(cols, ft):
        np.testing.assert_allclose(pred[c], best_scores(run_dir, "test").loc[pred["record_id"], "score"], atol=1e-5)
    assert not np.allclose(pred[cols[0]], pred[cols[1]])  # two different models, so the mean is not trivial


def test_threshold_is_chosen_on_validation_not_on_the_scored_data(world, tmp_path):
    """A run whose validation scores put Youden's threshold at 0.6 while the scored ECGs would put it at 0.3."""
    _, ft, _ = world
    fake = tmp_path / "fake-run"
    shutil.copytree(ft[0], fake)
    val_y, val_p = np.array([0, 0, 0, 1, 1, 1]), np.array([0.1, 0.3, 0.5, 0.6, 0.7, 0.8])
    ext_y, ext_p = np.array([0, 0, 1, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    best = json.loads((fake / "metrics.json").read_text())["best_epoch"]
    pd.DataFrame({"record_id": [f"v{i}" for i in range(6)], "patient_hash": "p", "split": "val", "epoch": best,
                  "label": val_y, "score": val_p}).to_parquet(fake / "predictions.parquet", index=False)
    member = predict.Member(fake, fake.name, None, None, {}, {"best_epoch": best}, None)
    thr = predict.operating_threshold([member], cfg_for(world))
    fpr, tpr, t = roc_curve(val_y, val_p)  # oracle: sklearn, Youden's J on the validation split
    assert thr.value == pytest.approx(t[np.argmax(tpr - fpr)]) == 0.6 and thr.split == "val"
    fpr, tpr, t = roc_curve(ext_y, ext_p)
    assert t[np.argmax(tpr - fpr)] == pytest.approx(0.3) != thr.value  # the scored data would have chosen 0.3
    sens = predict.operating_threshold([member], cfg_for(world, threshold_method="sensitivity", target_sensitivity=1.0))
    assert sens.value == 0.6  # the highest threshold keeping every validation positive


@pytest.mark.slow
def test_raw_files_rejects_labels_salt_and_validation(world):
    root, ft, raw = world
    salt = root / "salt.txt"
    salt.write_text("pepper\n")
    salt.chmod(0o600)
    cfg = cfg_for(world, finetune_runs=tuple(map(str, ft)), salt_file=str(salt), run_id="raw", pictures="top",
                  n_pictures=2, recalibrate="platt")
    res = predict.run(cfg)
    out = root / "07_predict" / "raw"
    pred = pd.read_csv(out / "predictions.csv", dtype={"record_id": str})
    rej = pd.read_csv(out / "rejects.csv")
    n_inputs = len(list(raw.glob("*.hea")))
    assert n_inputs == 8 and len(pred) + len(rej) == n_inputs == res["n_inputs"]
    assert sorted(rej["file"]) == ["mat_nan.hea", "mat_truncated.hea"] and rej["error_class"].str.len().min() > 0
    assert list(pred.columns[:5]) == ["record_id", "path", "patient_hash", "label", "score"]
    assert set(pred["path"]) == {f"ecg{i:03d}.hea" for i in range(6)}
    expect = [hashlib.sha256(f"pepper\0record:{r}".encode()).hexdigest() for r in pred["record_id"]]
    assert list(pred["patient_hash"]) == expect  # no patient id in the files: each record is its own patient
    labels = pd.read_csv(raw / "labels.csv", dtype={"record_id": str}).set_index("record_id")
    np.testing.assert_array_equal(pred["label"], labels.loc[pred["record_id"], "label"])
    thr = json.loads((out / "threshold.json").read_text())
    assert thr["split"] == "val"
    np.testing.assert_array_equal(pred["decision"], (pred["score"] >= thr["value"]).astype(int))
    table = pd.read_csv(out / "validation.csv")
    # another salt ("pepper") than the training store's: whether the patients overlap cannot be checked (issue 24)
    ext = table[table["data"] == "scored ECGs (overlap with training unverified)"].iloc[0]
    assert ext["auroc"] == pytest.approx(roc_auc_score(pred["label"], pred["score"]))
    assert ext["brier"] == pytest.approx(np.mean((pred["score"] - pred["label"]) ** 2))
    assert any(table["data"].str.startswith("internal")) and table["data"].str.contains("platt on val").sum() == 2
    raw_rows = table.set_index("data")
    for name in table["data"][table["data"].str.contains("platt")]:  # decisions stay those of the raw scores
        base = raw_rows.loc[name.split(", ")[0]]
        assert raw_rows.loc[name, ["sensitivity", "specificity"]].tolist() == base[["sensitivity", "specificity"]].tolist()
        assert raw_rows.loc[name, "brier"] != base["brier"]
    assert len(list((out / "pictures").glob("*.png"))) == 2
    assert len(re.findall(rb"/Type\s*/Page\b", (out / "pictures.pdf").read_bytes())) == 2
    run = json.loads((out / "run.json").read_text())
    assert run["finished"] and [t["run_dir"] for t in run["training_runs"]] == [str(p) for p in ft]
    assert all(len(t["sha256"]["model_best.pt"]) == 64 for t in run["training_runs"])


@pytest.mark.slow
def test_recalibration_is_never_evaluated_on_its_fitting_split(world):
    root, ft, _ = world
    cfg = cfg_for(world, cohort_run=str(root / "01_preprocess" / "toypp"), split="external", recalibrate="isotonic",
                  recalibrate_on="test", run_id="recal")
    predict.run(cfg)
    table = pd.read_csv(root / "07_predict" / "recal" / "validation.csv")
    recal = table[table["data"].str.contains("isotonic on test")]
    assert list(recal["data"]) == ["external (scored ECGs), isotonic on test"]  # not the internal test row


def test_forced_rendering_mismatch_names_both_values(world):
    with pytest.raises(predict.MismatchError, match=r"64.*32"):
        predict.load_ensemble(cfg_for(world, image_size=64))
    with pytest.raises(predict.MismatchError, match=r"grid4x2.*stack8"):
        predict.load_ensemble(cfg_for(world, layout="grid4x2"))


def test_cohort_store_preprocessed_otherwise_is_a_mismatch(world, tmp_path):
    root, _, _ = world
    other = tmp_path / "other"
    shutil.copytree(root / "01_preprocess" / "toypp", other)
    info = json.loads((other / "store.json").read_text())
    info["preprocess_kw"]["median_kernel"] = 5
    (other / "store.json").write_text(json.dumps(info))
    _, rendering = predict.load_ensemble(cfg_for(world))
    with pytest.raises(predict.MismatchError, match=r"median_kernel.: 5.*median_kernel.: 3"):
        predict.prepare_inputs(cfg_for(world, cohort_run=str(other)), tmp_path, rendering)


def test_members_trained_differently_cannot_be_averaged(world, tmp_path):
    _, ft, _ = world
    other = tmp_path / "other-run"
    shutil.copytree(ft[1], other)
    rec = json.loads((other / "model.json").read_text())
    (other / "model.json").write_text(json.dumps({**rec, "layout": "grid4x2"}))
    cfg = yaml.safe_load((other / "config.yaml").read_text())
    (other / "config.yaml").write_text(yaml.safe_dump({**cfg, "layout": "grid4x2"}))
    with pytest.raises(predict.MismatchError, match=r"layout.*stack8.*grid4x2"):
        predict.load_ensemble(cfg_for(world, finetune_runs=(str(ft[0]), str(other))))
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))  # model.json says grid4x2, config.yaml stack8
    with pytest.raises(predict.MismatchError, match=r"model.json records layout 'grid4x2' but config.yaml 'stack8'"):
        predict.load_ensemble(cfg_for(world, finetune_runs=(str(other),)))


@pytest.mark.parametrize("damage", ["unfinished", "no_weights", "missing_key", "not_a_folder"])
def test_bad_finetune_runs_name_the_file(world, tmp_path, damage):
    _, ft, _ = world
    run = tmp_path / "run"
    shutil.copytree(ft[0], run)
    if damage == "unfinished":
        (run / "run.json").write_text(json.dumps({"notebook": "03_finetune", "finished": None}))
        match = "run.json"
    elif damage == "no_weights":
        (run / "model_best.pt").unlink()
        match = "model_best.pt"
    elif damage == "missing_key":
        sd = torch.load(run / "model_best.pt", weights_only=True)
        torch.save({k: v for k, v in sd.items() if k != "head.weight"}, run / "model_best.pt")
        match = r"model_best.pt.*head.weight"
    else:
        run = tmp_path / "nothing"
        match = "is not a folder"
    with pytest.raises(FinetuneRunError, match=match):
        predict.load_ensemble(cfg_for(world, finetune_runs=(str(run),)))


def test_config_errors():
    with pytest.raises(predict.PredictError, match="exactly one"):
        predict.PredictConfig(finetune_runs=("x",), cohort_run="a", data_root="b")
    with pytest.raises(predict.PredictError, match="target_sensitivity"):
        predict.PredictConfig(finetune_runs=("x",), data_root="b", threshold_method="sensitivity")
    with pytest.raises(predict.PredictError, match="ylim_mv"):
        predict.PredictConfig(finetune_runs=("x",), data_root="b", ylim_mv=(1.0,))


@pytest.mark.slow
def test_cli_writes_the_files(world):
    root, ft, raw = world
    out = root / "cli"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "heartbeit_lib.predict", "-p", "finetune_runs", str(ft[0]),
                          "-p", "data_root", str(raw), "-p", "source", "wfdb", "-p", "run_id", "cli",
                          "-p", "out_root", str(out), "-p", "device", "cpu", "-p", "n_pictures", "1"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    run_dir = out / "07_predict" / "cli"
    pred = pd.read_csv(run_dir / "predictions.csv")
    rej = pd.read_csv(run_dir / "rejects.csv")
    assert len(pred) == 6 and len(rej) == 2 and (pred["label"] == -1).all()  # no labels CSV given
    assert (run_dir / "run.json").is_file() and len(list((run_dir / "pictures").glob("*.png"))) == 1
    assert list(pd.read_csv(run_dir / "validation.csv")["data"]) == ["internal (training runs' test split)"]
    assert not (run_dir / "cohort" / "salt.txt").exists()  # the per-user default salt, never in the run folder


# ---------------------------------------------------------------- signal models (issue 26: 07 scores every model)


@pytest.fixture(scope="module")
def signal_world(world):
    """The image runs of ``world`` plus one 1-epoch xresnet1d101 and one micro stmem_scratch run on the same store."""
    from conftest import tiny_run

    root, ft, raw = world
    store = str(root / "01_preprocess" / "toypp")
    sig = []
    for model, size in (("xresnet1d101", None), ("stmem_scratch", "micro")):
        tiny_run(root, model, task="toypp", model_size=size, cohort_run=store)
        sig.append(root / "03_finetune" / f"toypp-{model}-f1.0-s0")
    return root, ft, sig, raw


@pytest.mark.slow
@pytest.mark.parametrize("k", [0, 1])
def test_signal_run_scores_reproduce_the_run(signal_world, k):
    """Oracle: the signal run's own predictions.parquet (same model, same stored ECGs, its 100 Hz input), 1e-5."""
    root, ft, sig, raw = signal_world
    cfg = cfg_for((root, ft, raw), finetune_runs=(str(sig[k]),),
                  cohort_run=str(root / "01_preprocess" / "toypp"), split="test", run_id=f"sig{k}")
    predict.run(cfg)
    pred = pd.read_csv(root / "07_predict" / f"sig{k}" / "predictions.csv", dtype={"record_id": str})
    ref = best_scores(sig[k], "test").loc[pred["record_id"]]
    np.testing.assert_allclose(pred["score"], ref["score"], atol=1e-5)


@pytest.mark.slow
def test_mixed_family_ensemble_on_raw_files_with_lead_time_saliency(signal_world):
    """An image and two signal models averaged on raw WFDB files; the pictures carry the signal models' lead x time
    maps drawn into the image model's layout (constant down each lead's band: a map of lead and time only)."""
    root, ft, sig, raw = signal_world
    w = (root, ft, raw)
    runs_ = (str(ft[0]), *map(str, sig))
    cfg = cfg_for(w, finetune_runs=runs_, run_id="mixed", pictures="top", n_pictures=2, saliency_method="gradcam")
    predict.run(cfg)
    out = root / "07_predict" / "mixed"
    pred = pd.read_csv(out / "predictions.csv", dtype={"record_id": str})
    cols = [f"score_{Path(r).name}" for r in runs_]
    np.testing.assert_allclose(pred["score"], pred[cols].mean(axis=1), rtol=0, atol=1e-12)
    assert len(pred) == 6 and len(list((out / "pictures").glob("*.png"))) == 2
    members, rendering = predict.load_ensemble(cfg_for(w, finetune_runs=tuple(map(str, sig))))
    assert [m.family for m in members] == ["signal", "signal"] and rendering.image_size is None
    store = CohortStore(out / "cohort")
    s = store.signals(np.arange(2))
    grey = predict.render_images(s, rendering)
    assert grey.shape == (2, predict.PICTURE_SIZE, predict.PICTURE_SIZE)
    maps = predict.member_maps(members[:1], s, grey, rendering, "ig")
    geo = render.layout_geometry("stack8", grey.shape[1:], s.shape[-1])
    y0, y1 = geo["bands"][geo["panels"][0]["band"]]
    assert maps.max() > 0 and np.all(maps[:, y0:y1] == maps[:, y0:y0 + 1])  # rows of one band: one lead's map
    bands = [maps[:, geo["bands"][p["band"]][0]] for p in geo["panels"]]
    assert not all(np.allclose(b, bands[0]) for b in bands[1:])  # integrated gradients differ between leads
    assert predict.signal_method(members[0], "gradcam") == "gradcam" and predict.signal_method(members[1], "gradcam") == "ig"


@pytest.mark.slow
def test_signal_only_ensemble_refuses_image_parameters(signal_world):
    root, ft, sig, raw = signal_world
    with pytest.raises(predict.MismatchError, match="signal model"):
        predict.load_ensemble(cfg_for((root, ft, raw), finetune_runs=(str(sig[0]),), image_size=32))


@pytest.mark.slow
def test_a_failed_run_leaves_no_finished_looking_folder(world):
    """A run that fails after scoring (an unknown picture id) leaves the earlier run of that id as it was, and only
    a hidden ``.partial`` folder whose run.json records the error and no finish time."""
    root, _, _ = world
    ok = cfg_for(world, run_id="again")
    predict.run(ok)
    final = root / "07_predict" / "again"
    before = (final / "predictions.csv").read_bytes()
    with pytest.raises(predict.PredictError, match="picture_ids"):
        predict.run(dataclasses.replace(ok, pictures="ids", picture_ids=("no-such-record",)))
    assert (final / "predictions.csv").read_bytes() == before and json.loads((final / "run.json").read_text())["finished"]
    info = json.loads((root / "07_predict" / ".again.partial" / "run.json").read_text())
    assert info["finished"] is None and info["failed"].startswith("PredictError") and "no-such-record" in info["failed"]
    predict.run(ok)  # the same id runs again: the stale .partial folder is replaced, the run renamed into place
    assert not (root / "07_predict" / ".again.partial").exists() and runs.is_complete(final)


# ---------------------------------------------------------------- threshold uncertainty and operating points


def _fake_val_run(ft0, tmp_path, y, p):
    fake = tmp_path / "fake-run"
    shutil.copytree(ft0, fake)
    best = json.loads((fake / "metrics.json").read_text())["best_epoch"]
    pd.DataFrame({"record_id": [f"v{i}" for i in range(len(y))], "patient_hash": "p", "split": "val", "epoch": best,
                  "label": y, "score": p}).to_parquet(fake / "predictions.parquet", index=False)
    return predict.Member(fake, fake.name, None, None, {}, {"best_epoch": best}, None)


@pytest.mark.parametrize("n_pos", [10, 60])
def test_threshold_report_interval_and_small_validation_warning(world, tmp_path, n_pos):
    """The interval is calibration.threshold_interval on the validation scores (tested against sklearn in
    test_calibration); the warning comes exactly when validation holds fewer than 50 positives."""
    _, ft, _ = world
    rng = np.random.default_rng(n_pos)
    y = np.r_[np.ones(n_pos), np.zeros(80)].astype(int)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.15), 0, 1).round(3)
    member = _fake_val_run(ft[0], tmp_path, y, p)
    cfg = cfg_for(world, n_boot=100)
    thr = predict.operating_threshold([member], cfg)
    if n_pos < predict.MIN_VAL_POSITIVES:
        with pytest.warns(UserWarning, match=f"{n_pos} validation positives"):
            rep = predict.threshold_report([member], thr, cfg)
        assert "bootstrap interval" in rep["warning"]
    else:
        rep = predict.threshold_report([member], thr, cfg)
        assert rep["warning"] is None
    assert (rep["n_val"], rep["n_val_positives"]) == (len(y), n_pos)
    want = calibration.threshold_interval(y, p, thr, n_boot=100, seed=cfg.seed)
    assert rep["interval"] == dataclasses.asdict(want) and want.value_lo <= thr.value <= want.value_hi
    assert want.value_hi > want.value_lo  # a threshold chosen on 90-140 records moves between resamples


def test_operating_points_on_validation_and_scored_ecgs(world):
    """Each row: the validation threshold for the target (sensitivity/specificity reached on validation), and its
    rates on the labelled scored ECGs recomputed with numpy from predictions.csv; threshold.json carries the report."""
    root, ft, _ = world
    cfg = cfg_for(world, finetune_runs=tuple(map(str, ft)), run_id="points", threshold_method="specificity",
                  target_specificity=0.9)
    with pytest.warns(UserWarning, match="validation positives"):
        res = predict.run(cfg)
    out = root / "07_predict" / "points"
    pts = pd.read_csv(out / "operating_points.csv")
    pred = pd.read_csv(out / "predictions.csv")
    assert list(pts["target"]) == ["sensitivity"] * 3 + ["specificity"] * 3
    ok = pts[pts["note"].isna()]
    assert len(ok) >= 3
    for _, r in ok.iterrows():
        assert r[f"val_{r['target']}"] >= r["value"] - 1e-12
        called = pred["score"] >= r["threshold"]
        assert r["scored_sensitivity"] == pytest.approx(called[pred["label"] == 1].mean(), nan_ok=True)
        assert r["scored_specificity"] == pytest.approx((~called)[pred["label"] == 0].mean(), nan_ok=True)
    thr = json.loads((out / "threshold.json").read_text())
    assert thr["method"] == "specificity" and thr["specificity"] >= 0.9 and thr["target_specificity"] == 0.9
    assert thr["interval"]["n_used"] > 0 and thr["warning"] and res["threshold"]["warning"] == thr["warning"]


@pytest.mark.shared
@pytest.mark.parametrize("workers", [1, 2])
def test_prepare_and_score_equals_prepare_inputs_then_score(world, shared_data, tmp_path, monkeypatch, workers):
    """run()'s and the notebook's path (the store built shard by shard in forked reader processes, the stored ECGs
    scored here as their shards come in) against the two steps it joins, prepare_inputs then score, on 21 real MUSE
    files and 2 rejects (a CardioSoft XML and a CRC mismatch) in the first two shards, so chunks straddle shards.
    Oracle: prepare_inputs + score; tolerance: none (the same signals, rows, rejects and probabilities bit for bit;
    only the store's shard size differs)."""
    from heartbeit_lib.pipeline.predict import scores

    monkeypatch.setattr(scores, "CHUNK", 8)  # 3 chunks of 8 stored ECGs (2 rejects between)
    monkeypatch.setattr(scores, "SHARD", 5)  # 5 shards of 5 inputs: chunks straddle shards
    root, ft, _ = world
    folder = tmp_path / "muse"
    folder.mkdir()
    files = sorted((shared_data / "muse").glob("*.xml"))
    for i in range(21):
        shutil.copy(files[i % len(files)], folder / f"{i:03d}_{files[i % len(files)].name}")
    shutil.copy(shared_data / "muse" / "not_muse" / "gecardiosoft_deepecg_dummy_ecg.xml", folder / "003a_cardiosoft.xml")
    shutil.copy(BROKEN / "muse_crc_mismatch.xml", folder / "010a_crc.xml")
    cfg = cfg_for(world, finetune_runs=tuple(map(str, ft)), data_root=str(folder), source="muse", labels=None,
                  workers=workers)
    members, rendering = predict.load_ensemble(cfg)
    ref_inputs = predict.prepare_inputs(dataclasses.replace(cfg, workers=1), tmp_path / "two_calls", rendering)
    ref = predict.score(members, ref_inputs, rendering, cfg.batch_size)
    threads = torch.get_num_threads()
    inputs, got = predict.prepare_and_score(cfg, tmp_path / "overlapped", members, rendering)
    assert torch.get_num_threads() == threads  # fewer while the readers ran (the reference used them all), restored

    assert got.shape == ref.shape == (2, 21) and inputs.store.info["shard_size"] == 5 != ref_inputs.store.info["shard_size"]
    np.testing.assert_array_equal(got, ref)
    pd.testing.assert_frame_equal(inputs.rejects, ref_inputs.rejects)
    assert sorted(inputs.rejects["error_class"]) == ["ChecksumError", "WrongRootError"]
    assert inputs.n_inputs == ref_inputs.n_inputs == 23 and np.array_equal(inputs.rows, ref_inputs.rows)
    layout = ["shard", "offset"]
    pd.testing.assert_frame_equal(inputs.store.manifest.drop(columns=layout),
                                  ref_inputs.store.manifest.drop(columns=layout))
    np.testing.assert_array_equal(inputs.store.signals(inputs.rows), ref_inputs.store.signals(ref_inputs.rows))
    info, ref_info = ({k: v for k, v in s.info.items() if k not in ("shard_size", "n_shards")}
                      for s in (inputs.store, ref_inputs.store))
    assert info == ref_info and info["salt_file"]  # merge_store records the salt file as build_store does
