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
from heartbeit_lib.classify import registry as models
from heartbeit_lib.classify.signal_data import SignalDatasetFactory
from heartbeit_lib.mim import stmem
from heartbeit_lib.pipeline import finetune, pretrain, pretrain_signal, runs

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
