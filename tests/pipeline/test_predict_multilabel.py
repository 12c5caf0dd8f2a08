"""07_predict on multi-label models (issue 23 item 2, issue 26): one score column per class.

A tiny synthetic multi-label store (3 classes: STE, NORM, ODD; 2 ECGs per patient, an external site) and two
1-epoch runs on it: a micro ViT (32-px images) and an xresnet1d101 trained as the PTB-XL benchmark protocol is
(2.5-s random crops, 2.5-s test windows every 1.25 s combined by max, standardised inputs), so 07 must apply the
same test-time windows and standardisation to reproduce its scores.

Oracles: each run's own ``predictions.parquet`` (``score:<class>`` of the same model on the same stored ECGs, to
1e-5); ``numpy.mean`` for the ensemble; scikit-learn's ``roc_curve`` (Youden's J on each class's validation labels
and scores) for the per-class thresholds and ``roc_auc_score`` for the per-class AUROC; the labels CSV written here.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import PREDICT_PREPROCESS, synth_ecgs, tiny_run, write_wfdb_folder
from sklearn.metrics import roc_auc_score, roc_curve

from heartbeit_lib import cohorts
from heartbeit_lib.cohorts import synthetic
from heartbeit_lib.cohorts.sources import add_label_matrix
from heartbeit_lib.pipeline import predict

CLASSES = ["NORM", "ODD", "STE"]
pytestmark = pytest.mark.slow


def _labels(n: int) -> np.ndarray:
    """(n, 3) 0/1: STE every other patient (2 ECGs each), NORM its complement, ODD every third patient."""
    ste = (np.arange(n) // 2) % 2
    return np.c_[1 - ste, ((np.arange(n) // 2) % 3 == 0).astype(int), ste].astype(np.int64)


@pytest.fixture(scope="module")
def ml_world(tmp_path_factory):
    """The multi-label store, an image run, a windowed signal run, and 6 WFDB records with a per-class labels CSV."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("predict_ml")
    n = 96
    x, _ = synth_ecgs(n, np.random.default_rng(0))
    y = _labels(n)
    x = synthetic.inject_st_elevation(x, np.where(y[:, 2] == 1, 300.0, 0.0))
    meta = pd.DataFrame({"record_id": [f"r{i:04d}" for i in range(n)], "patient_id": [f"p{i // 2}" for i in range(n)],
                         "site": ["A"] * (n - n // 6) + ["B"] * (n // 6), "label": 1})
    meta = add_label_matrix(meta, y, CLASSES)
    tc = cohorts.TaskConfig(name="toyml", external_site="B", val_size=0.25)
    store = cohorts.build_store_from_arrays(root / "01_preprocess" / "toyml", x, meta, task=tc, seed=0,
                                           preprocess=True, preprocess_kw=PREDICT_PREPROCESS)
    assert store.classes == CLASSES
    common = dict(task="toyml", cohort_run=str(store.root))
    tiny_run(root, "vit_b16_scratch", cache_images=False, **common)  # the in-memory image cache is binary-only
    tiny_run(root, "xresnet1d101", model_size=None, crop_seconds=2.5, window_aggregate="max", standardize=True, select_on="last",
             **common)
    runs_ = [root / "03_finetune" / f"toyml-{m}-f1.0-s0" for m in ("vit_b16_scratch", "xresnet1d101")]
    raw = root / "raw"
    write_wfdb_folder(raw)  # ecg000..ecg005, every other one with ST elevation
    yr = _labels(12)[::2]  # ste 0, 1, 0, 1, 0, 1 as the WFDB records
    pd.DataFrame({"record_id": [f"ecg{i:03d}" for i in range(6)], **dict(zip(CLASSES, yr.T))}).to_csv(
        raw / "labels_ml.csv", index=False)
    return root, store, runs_, raw


def _cfg(world, **kw) -> predict.PredictConfig:
    root, store, runs_, _ = world
    base = dict(finetune_runs=tuple(map(str, runs_)), cohort_run=str(store.root), split="test", out_root=str(root),
                device="cpu", pictures="none", n_boot=50)
    return predict.PredictConfig(**{**base, **kw})


def _best(run_dir, split: str) -> pd.DataFrame:
    pred = pd.read_parquet(run_dir / "predictions.parquet")
    best = json.loads((run_dir / "metrics.json").read_text())["best_epoch"]
    return pred[(pred["split"] == split) & (pred["epoch"] == best)].set_index("record_id")


@pytest.mark.parametrize("k", [0, 1])
def test_each_member_reproduces_its_runs_per_class_scores(ml_world, k):
    """Image model: sigmoid per class on the recorded rendering; signal model: 2.5-s windows combined by max on the
    standardised 100-Hz input, exactly as 03 scored them."""
    root, store, runs_, _ = ml_world
    members, _ = predict.load_ensemble(_cfg(ml_world, finetune_runs=(str(runs_[k]),)))
    m = members[0]
    assert m.classes == tuple(CLASSES) and m.multilabel
    assert (m.crop_seconds, m.window_aggregate) == ((None, "mean") if k == 0 else (2.5, "max"))
    predict.run(_cfg(ml_world, finetune_runs=(str(runs_[k]),), run_id=f"ml{k}"))
    pred = pd.read_csv(root / "07_predict" / f"ml{k}" / "predictions.csv", dtype={"record_id": str})
    ref = _best(runs_[k], "test").loc[pred["record_id"]]
    for c in CLASSES:
        np.testing.assert_allclose(pred[f"score:{c}"], ref[f"score:{c}"], atol=1e-5)
        np.testing.assert_array_equal(pred[f"label:{c}"], ref[f"label:{c}"])
    assert "score" not in pred.columns and "label" not in pred.columns


def test_ensemble_thresholds_validation_and_outputs_per_class(ml_world):
    root, store, runs_, _ = ml_world
    res = predict.run(_cfg(ml_world, split="external", run_id="ens", pictures="top", n_pictures=2))
    out = root / "07_predict" / "ens"
    pred = pd.read_csv(out / "predictions.csv", dtype={"record_id": str})
    thr = json.loads((out / "threshold.json").read_text())
    names = [p.name for p in runs_]
    vals = [_best(r, "val") for r in runs_]
    for c in CLASSES:
        member_cols = [f"score_{n}:{c}" for n in names]
        np.testing.assert_allclose(pred[f"score:{c}"], pred[member_cols].mean(axis=1), rtol=0, atol=1e-12)
        t = thr["classes"][c]
        # oracle: Youden's J on this class's validation labels and the members' mean score (sklearn roc_curve)
        yv = vals[0][f"label:{c}"]
        pv = np.mean([v.loc[yv.index, f"score:{c}"] for v in vals], axis=0)
        fpr, tpr, cut = roc_curve(yv, pv)  # cut[0] = inf (no ECG called positive) is not a threshold one can use
        assert t["value"] == pytest.approx(cut[1:][np.argmax((tpr - fpr)[1:])]) and t["split"] == "val"
        np.testing.assert_array_equal(pred[f"decision:{c}"], (pred[f"score:{c}"] >= t["value"]).astype(int))
        assert t["interval"]["n_used"] > 0 and t["n_val_positives"] == int((yv == 1).sum())
    assert thr["warning"] and all(c in thr["warning"] for c in CLASSES)  # every class has < 50 validation positives
    table = pd.read_csv(out / "validation.csv")
    assert list(table.columns[:2]) == ["class", "data"] and set(table["class"]) == set(CLASSES)
    for c in CLASSES:
        ext = table[(table["class"] == c) & ~table["data"].str.startswith("internal")].iloc[0]
        assert ext["auroc"] == pytest.approx(roc_auc_score(pred[f"label:{c}"], pred[f"score:{c}"]))
        assert ext["threshold"] == thr["classes"][c]["value"]
    ext_rows = table[~table["data"].str.startswith("internal")]
    assert res["macro_auroc"][ext_rows["data"].iloc[0]] == pytest.approx(ext_rows["auroc"].mean())
    pts = pd.read_csv(out / "operating_points.csv")
    assert list(pts["class"].unique()) == CLASSES and len(pts) == 6 * len(CLASSES)
    assert res["classes"] == CLASSES and set(res["n_positive_decisions"]) == set(CLASSES)
    assert len(list((out / "pictures").glob("*.png"))) == 2 and (out / "reliability.png").is_file()


def test_raw_files_with_a_per_class_labels_csv(ml_world):
    root, store, runs_, raw = ml_world
    cfg = dataclasses.replace(_cfg(ml_world, run_id="raw"), cohort_run=None, split=None, data_root=str(raw),
                              source="wfdb", labels=str(raw / "labels_ml.csv"))
    predict.run(cfg)
    pred = pd.read_csv(root / "07_predict" / "raw" / "predictions.csv", dtype={"record_id": str})
    want = pd.read_csv(raw / "labels_ml.csv", dtype={"record_id": str}).set_index("record_id").loc[pred["record_id"]]
    for c in CLASSES:
        np.testing.assert_array_equal(pred[f"label:{c}"], want[c])
    bad = raw.parent / "labels_bad.csv"
    pd.read_csv(raw / "labels_ml.csv").drop(columns="ODD").to_csv(bad, index=False)
    with pytest.raises(predict.PredictError, match=r"missing column\(s\) \['ODD'\]"):
        predict.run(dataclasses.replace(cfg, labels=str(bad), run_id="bad"))


def test_an_ensemble_of_other_classes_is_a_typed_error(ml_world, tmp_path):
    """Averaging is per class: runs of other classes (or a binary run) cannot be members of one ensemble."""
    _, _, runs_, _ = ml_world
    other = tmp_path / "other"
    shutil.copytree(runs_[0], other)
    rec = json.loads((other / "model.json").read_text())
    (other / "model.json").write_text(json.dumps({**rec, "classes": ["NORM", "STE", "ODD"]}))
    with pytest.raises(predict.MismatchError, match=r"ensemble classes: \['NORM', 'ODD', 'STE'\].*\['NORM', 'STE', "
                                                    r"'ODD'\].*same classes"):
        predict.load_ensemble(_cfg(ml_world, finetune_runs=(str(runs_[0]), str(other))))
    (other / "model.json").write_text(json.dumps({**rec, "classes": ["NORM", "ODD"]}))
    with pytest.raises(predict.FinetuneRunError, match="not 3 distinct class names"):
        predict.load_ensemble(_cfg(ml_world, finetune_runs=(str(other),)))
