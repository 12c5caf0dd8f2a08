"""The signal arm end to end: 03 fine-tuning of the 1-D models through the same engine and run folder,
ST-MEM pretraining (02, modality signal) and its checkpoint in the ``stmem`` classifier.

Oracles: the run's own ``predictions.parquet`` (a rebuilt model rescoring the test split, to 1e-6),
``classify.signal_data.prepare_signals`` for the inputs, the encoder's own ``state_dict`` keys for the
checkpoint contract (every key matched, tensors equal), and an uninterrupted run's log for resume (exact).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from heartbeit_lib import cohorts
from heartbeit_lib.classify import checkpoint
from heartbeit_lib.models import registry as models
from heartbeit_lib.classify.signal_data import SignalDatasetFactory
from heartbeit_lib.models import stmem
from heartbeit_lib.pipeline import finetune, pretrain, runs
from heartbeit_lib.pipeline.pretrain import signal as pretrain_signal

TASK = "toy"


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory, make_toy_store):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("sig")
    make_toy_store(root)
    return root


def signal_cfg(out_root, **kw) -> finetune.FinetuneConfig:
    base = dict(task=TASK, model="stmem_scratch", model_size="micro", epochs=2, batch_size=16, image_size=112,
                out_root=str(out_root), device="cpu", cache_images=True)
    base.update(kw)
    return finetune.FinetuneConfig(**base)


def _rescore(run_dir, store, best_epoch):
    model, info = checkpoint.load_finetune_run(run_dir)
    test = finetune.make_splits(store)["test"]
    ds = SignalDatasetFactory(info["signal_rate"])(store, test.indices)
    loader = finetune.make_loader(ds, 64, False, 0, 0)
    mean, std = (torch.tensor(v).view(1, -1, 1) for v in info["normalize"])
    score = finetune.predict(model, loader, mean, std, torch.device("cpu"))
    pred = pd.read_parquet(run_dir / "predictions.parquet")
    return score, pred[(pred["split"] == "test") & (pred["epoch"] == best_epoch)]["score"].to_numpy(), info


@pytest.mark.slow
@pytest.mark.parametrize("model,size", [("stmem_scratch", "micro"), ("inception1d", None)])
def test_signal_model_finetunes_through_the_same_run_folder(toy_root, model, size):
    """Same files as an image run; model.json records family/rate; the rebuilt model rescores the test split."""
    res = finetune.run_finetune(signal_cfg(toy_root, model=model, model_size=size, epochs=2), figure=False)
    d = res.run_dir
    assert runs.is_complete(d) and d.name == f"toy-{model}-f1.0-s0"
    for f in ("config.yaml", "log.jsonl", "predictions.parquet", "metrics.json", "model_best.pt", "model.json"):
        assert (d / f).is_file(), f
    rec = json.loads((d / "model.json").read_text())
    assert (rec["family"], rec["signal_rate"], rec["in_chans"], rec["image_size"]) == ("signal", 100.0, 8, None)
    store = cohorts.CohortStore(toy_root / "01_preprocess" / TASK)
    score, want, info = _rescore(d, store, res.best_epoch)
    assert info["family"] == "signal" and info["size"] == (size or "base")
    np.testing.assert_allclose(score, want, atol=1e-6)


def test_signal_inputs_are_prepared_store_signals(toy_root):
    """Oracle: prepare_signals on the store rows (no rendering, no image normalisation)."""
    store = cohorts.CohortStore(toy_root / "01_preprocess" / TASK)
    rows = store.indices("val")
    ds = SignalDatasetFactory(100)(store, rows, 224, "stack8")
    x, y = ds[0]
    assert x.shape == (8, 500) and y == store.labels(rows[:1])[0]
    from heartbeit_lib.classify.signal_data import prepare_signals
    np.testing.assert_array_equal(x.numpy(), prepare_signals(store.signals(rows[:1]))[0])


def test_config_accepts_signal_models_and_rejects_image_sizes():
    assert finetune.FinetuneConfig(model="xresnet1d101").signal_rate == 100
    with pytest.raises(runs.ConfigError, match="model_size"):
        finetune.FinetuneConfig(model="xresnet1d101", model_size="micro")
    with pytest.raises(ValueError, match="not registered"):
        finetune.FinetuneConfig(model="xresnet1d50")


# ---------------------------------------------------------------- ST-MEM pretraining (02, modality signal)


def pt_cfg(toy_root, **kw) -> pretrain.PretrainConfig:
    base = dict(cohort_run=str(toy_root / "01_preprocess" / TASK), modality="signal", model_size="micro", epochs=2,
                batch_size=16, warmup_epochs=0.5, drop_path=0.0, device="cpu", progress=False, threads=1,
                out_root=str(toy_root), save_every=1)
    base.update(kw)
    return pretrain.PretrainConfig(**base)


@pytest.mark.slow
def test_signal_pretraining_uses_the_image_rows_and_its_checkpoint_loads_into_stmem(toy_root):
    cfg = pt_cfg(toy_root, run_id="stmem_a")
    run_dir = runs.start_run("02_pretrain", cfg)
    store = cohorts.CohortStore(cfg.cohort_run)
    metrics = pretrain_signal.run(cfg, run_dir)
    rows = pretrain.split_rows(cfg, store)  # the image pretraining's rule
    ck = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert ck["modality"] == "signal" and ck["epoch"] == 2 and ck["n_train"] == len(rows["train"])
    np.testing.assert_array_equal(np.load(run_dir / "pretraining_rows.npy"), rows["train"])
    assert metrics["n_train"] == len(rows["train"]) and np.isfinite(metrics["final_train_loss"])
    # every backbone key matched: the classifier's encoder equals the checkpoint's backbone, key for key
    clf = models.create_model("stmem", num_classes=2, weights=run_dir)
    enc = clf.encoder.state_dict()
    assert set(enc) == set(ck["backbone"])
    for k, v in ck["backbone"].items():
        assert torch.equal(enc[k], v), k
    assert (run_dir / "pretrain_curve.png").is_file()
    # and 03 fine-tunes it, finding the run by its modality when pretrain_run is None
    res = finetune.run_finetune(signal_cfg(toy_root, model="stmem", model_size=None, epochs=1), figure=False)
    assert res.metrics["model"] == "stmem"
    assert json.loads((res.run_dir / "model.json").read_text())["size"] == "micro"


@pytest.mark.slow
def test_signal_pretraining_resumes_exactly(toy_root):
    """Oracle: the uninterrupted 2-epoch run's per-epoch losses (exact on CPU)."""
    full = pt_cfg(toy_root, run_id="stmem_full")
    pretrain_signal.run(full, runs.start_run("02_pretrain", full))
    want = [h["train_loss"] for h in runs.read_jsonl(toy_root / "02_pretrain" / "stmem_full" / "log.jsonl")]
    cut = pt_cfg(toy_root, run_id="stmem_cut")
    run_dir = runs.start_run("02_pretrain", cut)

    def kill(epoch, line):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain_signal.run(cut, run_dir, on_epoch_end=kill)
    pretrain_signal.run(cut, run_dir)
    got = [h["train_loss"] for h in runs.read_jsonl(run_dir / "log.jsonl")]
    assert got == want
    with pytest.raises(pretrain_signal.ResumeError, match="mask_ratio"):
        pretrain_signal.run(pt_cfg(toy_root, run_id="stmem_cut", mask_ratio=0.5), run_dir)


# ---------------------------------------------------------------- 04: families side by side


@pytest.mark.slow
def test_tables_and_figures_show_both_families(tmp_path):
    """Oracle: the family each run records (model.json) or the registry gives; line styles from FAMILY_STYLE."""
    from conftest import make_fake_sweep
    from heartbeit_lib.pipeline import metrics as pm
    from heartbeit_lib.report import figures, tables

    make_fake_sweep(tmp_path, tasks={"mi": ((80, 240, 0), 0.3)}, models=("heartbeit", "vit_b16_scratch",
                    "xresnet1d101", "stmem"), fractions=(0.1, 1.0), incomplete=0)
    preds = pm.collect_runs(tmp_path, splits=("test",))
    assert dict(preds.groupby("model")["family"].first()) == {"heartbeit": "image", "vit_b16_scratch": "image",
                                                              "xresnet1d101": "signal", "stmem": "signal"}
    results, diffs = pm.evaluate_predictions(preds, n_boot=20, splits=("test",))
    t = tables.metric_table(results, "auroc", splits=("test",))
    assert t.cells.index.names == ["task", "split", "family", "model"]
    fam = t.cells.index.get_level_values("family").tolist()
    assert fam == sorted(fam, key=lambda f: f == "signal") and set(fam) == {"image", "signal"}
    assert "ST-MEM" in t.cells.index.get_level_values("model")
    fig = figures.plot_fraction_panels(results, diffs, "mi", "test")
    styles = {ln.get_label(): ln.get_linestyle() for ln in fig.axes[0].get_lines()}
    assert styles["ST-MEM"] == "--" and styles["HeartBEiT"] == "-"
    fig = figures.plot_roc_pr(preds, "mi", "test")
    assert {ln.get_linestyle() for ln in fig.axes[0].get_lines() if ln.get_label().startswith("xresnet")} == {"--"}
    # image-only results keep the paper's layout
    img = results[results["family"] == "image"]
    assert tables.metric_table(img, "auroc", splits=("test",)).cells.index.names == ["task", "split", "model"]


# ---------------------------------------------------------------- 06: saliency of signal models


def marker_signals(smooth_ecgs, n: int = 96, lead: int = 5, t0: int = 100, width: int = 20):
    """ECG-like beats at 100 Hz (mV), the first 2.5 s; every other record positive with a +1 mV pulse on one
    lead (V4), samples t0..t0+width (0.2 s): a marker covering 1/8 x 20/250 = 1 % of lead x time."""
    from heartbeit_lib.classify.signal_data import prepare_signals
    x = np.ascontiguousarray(prepare_signals(smooth_ecgs(n, seed=3))[..., :250])
    y = np.arange(n) % 2
    x[y == 1, lead, t0:t0 + width] += 1.0
    return torch.from_numpy(x), torch.from_numpy(y)


@pytest.mark.slow
def test_signal_saliency_concentrates_on_the_planted_marker(smooth_ecgs):
    """A small inception1d (depth 3, 8 filters) trained 4 epochs learns the marker; integrated gradients and
    Grad-CAM put > 2x the marker's share of lead x time (Grad-CAM: of time, it has no lead axis) on it, and
    more than the untrained network. Oracle: the planted position."""
    from heartbeit_lib.analysis import saliency
    from heartbeit_lib.models.signal_models import Inception1d
    torch.set_num_threads(1)
    x, y = marker_signals(smooth_ecgs)
    torch.manual_seed(0)
    untrained = Inception1d(2, 8, depth=3, filters=8, bottleneck=8).eval()
    torch.manual_seed(0)
    model = Inception1d(2, 8, depth=3, filters=8, bottleneck=8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        model.train()
        for idx in torch.randperm(len(y), generator=g).split(32):
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    for bn in bns:  # re-estimate BatchNorm statistics over the training set (the running averages lag)
        bn.reset_running_stats()
        bn.momentum = None
    with torch.no_grad():
        model(x)
    model.eval()
    with torch.no_grad():
        p = torch.softmax(model(x), 1)[:, 1].numpy()
    assert p[y.numpy() == 1].mean() > 0.8 > 0.2 > p[y.numpy() == 0].mean()
    pos = x[y == 1][:8]
    for method, area in (("ig", 1 / 8 * 20 / 250), ("gradcam", 20 / 250)):
        def share(m):
            m = saliency.signal_saliency(m, pos, method, steps=8)
            return (m[:, 5, 100:120].sum((1,)) / m.sum((1, 2)) if method == "ig"
                    else m[:, 0, 100:120].sum(1) / m[:, 0].sum(1)).mean()
        got, control = share(model), share(untrained)
        assert got > 2 * area and got > control, (method, got / area, control / area)


@pytest.mark.slow
def test_06_explains_a_signal_run_with_the_same_shares(toy_root):
    """Oracle: shares sum to 1 per map over lead x segment; the area share of a lead is 1/8; overlay maps exist."""
    from heartbeit_lib.pipeline import saliency as ps
    res = finetune.run_finetune(signal_cfg(toy_root, model="inception1d", model_size=None, epochs=1, seed=7),
                                figure=False)
    table = ps.find_finetune_runs([str(res.run_dir)])
    assert table["family"].tolist() == ["signal"]
    cfg = ps.SaliencyConfig(finetune_runs=(str(res.run_dir),), method=("fullgrad", "gradcam"), n_examples=4,
                            device="cpu", faithfulness=True, split="test")
    out = ps.compute(table, cfg)
    att = out.attribution
    assert set(att["method"]) == {"ig", "gradcam"}
    per_map = att.groupby(["method", "record_id"])["share"].sum()
    np.testing.assert_allclose(per_map.to_numpy(), 1.0, atol=1e-9)
    lead_area = att.groupby(["method", "record_id", "lead"])["area_share"].sum()
    np.testing.assert_allclose(lead_area.to_numpy(), 1 / 8, atol=1e-9)
    assert any("fullgrad" in s for s in out.skipped) and any("faithfulness" in s for s in out.skipped)
    assert out.runs[0].maps["ig"].shape == (len(out.runs[0].records), 224, 224)
