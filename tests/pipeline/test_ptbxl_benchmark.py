"""The PTB-XL benchmark path: a 12-lead, 10-s, 100-Hz raw store of a multi-label task, the benchmark's training
protocol pieces (standardiser, crops, max-aggregated windows, fastai's one cycle) and multi-label fine-tuning.

Oracles: wfdb.rdsamp (stored signals), sklearn StandardScaler (the standardiser), sklearn roc_auc_score
(macro AUROC), the benchmark's TimeseriesDatasetCrops window rule (written out), closed-form one-cycle values.
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import wfdb
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from heartbeit_lib import cohorts
from heartbeit_lib.classify import engine
from heartbeit_lib.classify.data import make_splits
from heartbeit_lib.classify.signal_data import StoreSignalDataset, fit_standardizer, prepare_signals, window_starts
from heartbeit_lib.pipeline import finetune, preprocess

N_RECORDS = 140  # of the shared subset (100 Hz): 60 training, 40 validation, 40 test records (every superclass in each)


@pytest.fixture(scope="module")
def subset_root(shared_data, tmp_path_factory):
    """A PTB-XL root with the first N_RECORDS records of the shared subset whose folds cover 1-8, 9 and 10, and one
    row whose file is missing on disk (a reject)."""
    src = shared_data / "ptbxl"
    db = pd.read_csv(src / "ptbxl_database_100hz.csv")
    db = pd.concat([db[db.strat_fold <= 8].head(N_RECORDS - 80), db[db.strat_fold == 9].head(40),
                    db[db.strat_fold == 10].head(40)])
    root = tmp_path_factory.mktemp("ptbxl")
    for f in db.filename_lr.iloc[1:]:  # the first row's files are not copied: a record listed but missing
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        for ext in (".hea", ".dat"):
            shutil.copyfile(src / (f + ext), root / (f + ext))
    db.to_csv(root / "ptbxl_database.csv", index=False)
    shutil.copyfile(src / "scp_statements.csv", root / "scp_statements.csv")
    return root, db


@pytest.fixture(scope="module")
def store(subset_root, tmp_path_factory):
    root, _ = subset_root
    cfg = preprocess.PreprocessConfig(source="ptbxl", data_root=str(root), ptbxl_rate=100,
                                      task="ptbxl_superdiagnostic", store_leads="twelve", store_fs=100, seconds=10.0,
                                      filtering=False, workers=1, progress=False)
    run_dir = tmp_path_factory.mktemp("store")
    source = preprocess.make_source(cfg)
    return preprocess.build_from_config(cfg, run_dir, source)


def test_store_holds_the_raw_12_lead_10_s_records(store, subset_root):
    root, db = subset_root
    assert store.shape == (12, 1000) and store.fs == 100.0 and not store.paper_layout
    assert store.lead_names == ("I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6")
    assert len(db) == len(store.manifest) + len(store.rejects) and len(store.rejects) == 1
    assert str(db.ecg_id.iloc[0]) in store.rejects.record_id.tolist()
    row = store.manifest.iloc[3]
    rec = db.set_index("ecg_id").loc[int(row.ecg_id)]
    x, _ = wfdb.rdsamp(str(root / rec.filename_lr))  # (1000, 12) millivolts
    got = store.signals([3])[0]
    # float16 microvolts: spacing <= 0.5 uV below 1 mV, 8 uV below 16 mV (the records stay under 16 mV)
    np.testing.assert_allclose(got, x.T * 1000.0, atol=8.0, rtol=1e-3)


def test_store_labels_are_the_benchmarks(store, subset_root):
    root, db = subset_root
    y = cohorts.benchmark_labels(root / "ptbxl_database.csv", "superdiagnostic")
    assert store.classes == list(y.columns)
    m = store.manifest.set_index(store.manifest.ecg_id.astype(int))
    kept = m.index[m.label == 1]
    assert set(kept) == set(y.index) - {int(db.ecg_id.iloc[0])}
    np.testing.assert_array_equal(m.loc[kept, [f"label:{c}" for c in store.classes]].to_numpy(), y.loc[kept].to_numpy())
    assert (m.loc[m.label == -1, "split"] == "unassigned").all()
    assert set(m.loc[m.split == "test", "strat_fold"]) == {10} and set(m.loc[m.split == "val", "strat_fold"]) == {9}


def test_fractions_are_nested_and_keep_every_stratum(store):
    m = store.manifest
    small, big = set(store.indices("train", 0.1)), set(store.indices("train", 0.5))
    assert small <= big <= set(store.indices("train"))
    train = m[m.split == "train"]
    assert set(m.loc[sorted(small), "stratum"]) == set(train.stratum)  # every rarest-class stratum is present
    # the stratum is the rarest positive class of the row
    y = train[[f"label:{c}" for c in store.classes]].to_numpy()
    counts = (m[m.label == 1][[f"label:{c}" for c in store.classes]].to_numpy() == 1).sum(0)
    for row, s in zip(y, train.stratum):
        assert row[s] == 1 and counts[s] == counts[row == 1].min()


def test_standardiser_equals_sklearn(store):
    idx = store.indices("train")
    mean, std = fit_standardizer(store, idx, 100.0, chunk=7)
    x = prepare_signals(store.signals(idx), 100.0, 100.0)
    ss = StandardScaler().fit(x.astype(np.float64).reshape(-1, 1))
    assert mean == pytest.approx(ss.mean_[0], rel=1e-9, abs=1e-12)
    assert std == pytest.approx(ss.scale_[0], rel=1e-9)


def test_streamed_dataset_equals_the_in_memory_preparation(store):
    idx = store.indices("train")[:9]
    y = store.label_matrix(idx).astype(np.float32)
    ds = StoreSignalDataset(store, idx, y, 100.0, crop_samples=250, seed=3)
    ds.set_epoch(2)
    full = prepare_signals(store.signals(idx), 100.0, 100.0)
    for k, (x, t) in enumerate(ds.__getitems__(list(range(len(idx))))):
        start = np.random.default_rng((3, 2, k)).integers(0, 1000 - 250 + 1)
        np.testing.assert_array_equal(x.numpy(), full[k, :, start:start + 250])
        np.testing.assert_array_equal(t.numpy(), y[k])


def test_windows_follow_the_benchmark_and_take_the_max():
    # TimeseriesDatasetCrops(chunk_length=250, stride=125, min_chunk_length=250) over 1000 samples: starts 0..750
    starts = [s for s in range(0, 1000, 125) if min(s + 250, 1000) - s >= 250]
    assert window_starts(1000, 250) == starts == [0, 125, 250, 375, 500, 625, 750]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv1d(12, 5, 9), torch.nn.AdaptiveAvgPool1d(1), torch.nn.Flatten()).eval()
    x = torch.randn(4, 12, 1000)
    loader = [(x, torch.zeros(4, 5))]
    zero, one = torch.zeros(1, 1, 1), torch.ones(1, 1, 1)
    got = engine.predict(model, loader, zero, one, torch.device("cpu"), multilabel=True,
                         windows=engine.Windows(250, "max"))
    with torch.no_grad():
        want = torch.stack([torch.sigmoid(model(x[..., s:s + 250])) for s in starts]).amax(0)
    np.testing.assert_allclose(got, want.double().numpy(), rtol=1e-6)


def test_one_cycle_is_fastais(tmp_path):
    cfg = finetune.FinetuneConfig(task="ptbxl_superdiagnostic", model="xresnet1d101", lr=0.01, lr_start=0.0004,
                                  weight_decay=0.01, optimizer="adamw", adam_beta2=0.99, cohort_run=str(tmp_path),
                                  pretrain_run=None)
    p = torch.nn.Parameter(torch.zeros(3))
    opt, sched = finetune.make_optimizer(cfg, [p], 100)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["betas"] == (0.95, 0.99)
    assert opt.param_groups[0]["weight_decay"] == 0.01 and opt.param_groups[0]["lr"] == pytest.approx(0.01 / 25)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert max(lrs) == pytest.approx(0.01) and int(np.argmax(lrs)) == 29  # 30 % warm-up
    assert lrs[-1] == pytest.approx(0.01 / 25 / 1e4, rel=1e-3)  # the last batch runs at lr / 25 / 1e4


@pytest.mark.slow
def test_multilabel_finetune_writes_per_class_predictions(store, tmp_path):
    cfg = finetune.FinetuneConfig(task="ptbxl_superdiagnostic", model="xresnet1d101", epochs=2, batch_size=16,
                                  lr=0.01, lr_start=0.0004, weight_decay=0.01, optimizer="adamw", adam_beta2=0.99,
                                  crop_seconds=2.5, window_aggregate="max", standardize=True, select_on="last",
                                  val_fraction="full", eval_every=2, cohort_run=str(store.root),
                                  out_root=str(tmp_path), device="cpu")
    res = finetune.run_finetune(cfg, store=store, figure=False)
    run = res.run_dir
    pred = pd.read_parquet(run / "predictions.parquet")
    assert sorted(pred.epoch.unique()) == [2]  # eval_every 2 of 2 epochs: only the last is scored
    classes = store.classes
    test = pred[pred.split == "test"]
    y = test[[f"label:{c}" for c in classes]].to_numpy()
    p = test[[f"score:{c}" for c in classes]].to_numpy()
    assert ((p > 0) & (p < 1)).all()
    assert res.metrics["test_auroc"] == pytest.approx(roc_auc_score(y, p, average="macro"), abs=1e-12)
    assert res.metrics["best_epoch"] == 2 and res.metrics["classes"] == classes
    for j, c in enumerate(classes):
        assert res.metrics["test_auroc_per_class"][c] == pytest.approx(roc_auc_score(y[:, j], p[:, j]), abs=1e-12)
    import json
    rec = json.loads((run / "model.json").read_text())
    assert rec["classes"] == classes and rec["multilabel"] and rec["num_classes"] == len(classes)
    assert rec["in_chans"] == 12 and rec["window_aggregate"] == "max" and rec["crop_seconds"] == 2.5
    assert rec["normalize_std"][0] > 0 and len(rec["normalize_mean"]) == 1


def test_image_models_refuse_a_benchmark_store(store, tmp_path):
    cfg = finetune.FinetuneConfig(task="ptbxl_superdiagnostic", model="vit_b16_scratch", model_size="micro",
                                  epochs=1, image_size=32, cohort_run=str(store.root), out_root=str(tmp_path),
                                  device="cpu")
    with pytest.raises(cohorts.SplitError, match=r"\(12, 1000\) signals at 100 Hz"):
        finetune.run_finetune(cfg, store=store, figure=False)


def test_a_class_without_positives_in_a_split_is_named(store):
    broken = cohorts.CohortStore(store.root)
    broken.manifest.loc[broken.manifest.split == "test", "label:HYP"] = 0
    with pytest.raises(cohorts.SplitError, match=r"\['HYP'\].*test split"):
        make_splits(broken, 1.0)


@pytest.mark.slow
def test_04_reports_macro_auroc_with_the_benchmarks_interval_and_paired_differences(store, tmp_path):
    from heartbeit_lib.pipeline import metrics as pm

    common = dict(task="ptbxl_superdiagnostic", epochs=1, batch_size=16, crop_seconds=2.5, window_aggregate="max",
                  standardize=True, select_on="last", val_fraction="full", cohort_run=str(store.root),
                  out_root=str(tmp_path), device="cpu")
    for model in ("xresnet1d101", "inception1d"):
        finetune.run_finetune(finetune.FinetuneConfig(model=model, **common), store=store, figure=False)
    preds = pm.collect_runs(tmp_path / "03_finetune")
    res, diffs = pm.evaluate_predictions(preds, n_boot=100, seed=0, reference_model="xresnet1d101",
                                         splits=("test",))
    classes = store.classes
    for _, r in res.iterrows():
        run = preds[(preds.model == r.model) & (preds.split == "test")].sort_values("record_id")
        y = run[[f"label:{c}" for c in classes]].to_numpy()
        p = run[[f"score:{c}" for c in classes]].to_numpy()
        assert r.auroc == pytest.approx(roc_auc_score(y, p, average="macro"), abs=1e-12)  # oracle: sklearn
        for j, c in enumerate(classes):
            assert r[f"auroc:{c}"] == pytest.approx(roc_auc_score(y[:, j], p[:, j]), abs=1e-12)
        assert r.auroc_p05 <= r.auroc_p95 and r.auroc_max_dev == pytest.approx(
            max(r.auroc_p95 - r.auroc, r.auroc - r.auroc_p05))
        assert r.auroc_benchmark == f"{round(r.auroc, 3):.3f}({int(r.auroc_max_dev * 1000):02d})"
        assert r.n_classes == len(classes) and 0 < r.n_boot_valid <= 100
    d = diffs.iloc[0]
    a, b = (res.set_index("model").loc[m, "auroc"] for m in ("xresnet1d101", "inception1d"))
    assert d.baseline == "inception1d" and d.auroc_diff == pytest.approx(a - b)


def test_01_reports_on_a_benchmark_store(store):
    from heartbeit_lib import io as hio
    from heartbeit_lib.report import qc

    t1 = qc.table1(store)
    m = store.manifest
    for c in store.classes:
        assert t1.loc["test", f"positives:{c}"] == int(((m.split == "test") & (m[f"label:{c}"] == 1)).sum())
    assert qc.clipping(store)["clipped_ecg_fraction"] is None  # images are not drawn from this store
    fig = qc.qc_figure(store, hio.read_ecg, n=1)
    line = fig.axes[0].lines[-1]  # the stored signal of the last lead: 10 s at 100 Hz
    assert len(line.get_xdata()) == 1000 and line.get_xdata()[-1] == pytest.approx(9.99)


@pytest.fixture(scope="module")
def paper_store(subset_root, tmp_path_factory):
    """The same records as a paper-layout store (8 leads, 5 s, 500 Hz, filtered) of the multi-label task."""
    root, _ = subset_root
    cfg = preprocess.PreprocessConfig(source="ptbxl", data_root=str(root), ptbxl_rate=100,
                                      task="ptbxl_superdiagnostic", workers=1, progress=False)
    return preprocess.build_from_config(cfg, tmp_path_factory.mktemp("paper_store"), preprocess.make_source(cfg))


def test_06_explains_one_named_class_of_a_multilabel_image_model(paper_store, tmp_path):
    from heartbeit_lib.analysis.saliency import SaliencyError
    from heartbeit_lib.pipeline import saliency as ps

    assert paper_store.paper_layout and paper_store.classes == ["CD", "HYP", "MI", "NORM", "STTC"]
    cfg = finetune.FinetuneConfig(task="ptbxl_superdiagnostic", model="vit_b16_scratch", model_size="micro",
                                  epochs=1, batch_size=16, image_size=32, cohort_run=str(paper_store.root),
                                  out_root=str(tmp_path), device="cpu")
    run = finetune.run_finetune(cfg, store=paper_store, figure=False).run_dir
    table = ps.find_finetune_runs([str(run)])
    with pytest.raises(SaliencyError, match=r"one of \['CD', 'HYP', 'MI', 'NORM', 'STTC'\]"):
        ps.compute(table, ps.SaliencyConfig(finetune_runs=[str(run)], n_examples=3, faithfulness=False))
    scfg = ps.SaliencyConfig(finetune_runs=[str(run)], class_name="MI", n_examples=3, n_faithfulness=2,
                             deletion_steps=2)
    res = ps.compute(table, scfg)
    rec = res.runs[0].records
    m = paper_store.manifest.set_index("record_id")
    assert (m.loc[rec.record_id, "label:MI"] == 1).all() and (rec.label == 1).all()  # positives of MI
    # oracle: the sigmoid of the MI logit (index 2) on the same rendered images
    from heartbeit_lib import render
    model, norm, _ = ps.load_finetune_model(run, torch.device("cpu"))
    grey = render.render_ecg(paper_store.signals(rec.row.to_numpy()), 32, "stack8")
    x = torch.from_numpy(grey).float().div(255.0)[:, None].expand(-1, 3, -1, -1)
    x = (x - torch.tensor(norm[0]).view(1, -1, 1, 1)) / torch.tensor(norm[1]).view(1, -1, 1, 1)
    with torch.no_grad():
        want = torch.sigmoid(model.eval()(x.float())[:, 2]).double().numpy()
    np.testing.assert_allclose(rec.prob.to_numpy(), want, rtol=1e-5)
    assert res.runs[0].maps["fullgrad"].shape[0] == 3 and len(res.faithfulness) > 0


def test_a_run_resumes_after_parameters_were_added_at_their_defaults(tmp_path):
    """resume.pt of a run started before a parameter existed (here eval_every) resumes when the new parameter is at
    its default, and is refused when it is not or when an old parameter changed."""
    cfg = finetune.FinetuneConfig(task="ptbxl_superdiagnostic", model="xresnet1d101", cohort_run=str(tmp_path),
                                  resume=True)
    model = torch.nn.Linear(2, 2)
    opt, sched = finetune.make_optimizer(cfg, model.parameters(), 10)
    loader = torch.utils.data.DataLoader(list(range(4)), generator=torch.Generator())
    finetune.save_resume_state(tmp_path, cfg, 1, [], None, float("-inf"), model, opt, sched,
                               torch.amp.GradScaler("cuda", enabled=False), loader)
    state = torch.load(tmp_path / finetune.RESUME_FILE, weights_only=True)
    del state["config"]["eval_every"]  # written by a version without the parameter
    torch.save(state, tmp_path / finetune.RESUME_FILE)
    assert finetune.load_resume_state(tmp_path, cfg)["epoch"] == 1
    import dataclasses
    with pytest.raises(finetune.runs.ConfigError, match="eval_every"):
        finetune.load_resume_state(tmp_path, dataclasses.replace(cfg, eval_every=5))
    with pytest.raises(finetune.runs.ConfigError, match=r"\['lr'\]"):
        finetune.load_resume_state(tmp_path, dataclasses.replace(cfg, lr=0.5))
