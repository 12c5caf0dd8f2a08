"""Fine-tuning: config, schedule, splits from the store, per-epoch artefacts, best-epoch selection.

Oracles: the cohort store's own ``indices`` (splits are read, never re-drawn), hand-built training
logs for the selection rule, ``sklearn.metrics.roc_auc_score`` for the logged AUROC (to 1e-12),
the identity AUROC(1 - y) = 1 - AUROC(y) for the flipped-test-label run, and a re-run of the saved
best weights against the stored predictions of that epoch (to 1e-6).
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from heartbeit_lib import cohorts
from heartbeit_lib.classify import checkpoint
from heartbeit_lib.pipeline import finetune
from heartbeit_lib.models import registry as models
from heartbeit_lib.pipeline import runs

TASK = "toy"


def tiny_cfg(out_root, **kw) -> finetune.FinetuneConfig:
    base = dict(task=TASK, model="resnet152_scratch", model_size="micro", epochs=1, batch_size=16,
                image_size=32, out_root=str(out_root), device="cpu", cache_images=True)
    base.update(kw)
    return finetune.FinetuneConfig(**base)


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory, make_toy_store):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ft")
    make_toy_store(root)
    return root


class FlippedTestLabels:
    """Duck-typed store: the wrapped store with the labels of the ``test`` split inverted."""

    def __init__(self, store):
        self._s, self.root, self.task = store, store.root, store.task
        m = store.manifest.copy()
        t = m["split"] == "test"
        m.loc[t, "label"] = 1 - m.loc[t, "label"]
        self.manifest = m

    def __len__(self):
        return len(self._s)

    def signals(self, idx):
        return self._s.signals(idx)

    def indices(self, split, fraction=1.0):
        return self._s.indices(split, fraction)


# ---------------------------------------------------------------- config


def test_config_defaults_and_validation(tmp_path):
    cfg = finetune.FinetuneConfig()
    assert (cfg.epochs, cfg.lr, cfg.lr_start, cfg.select_on, cfg.image_size) == (30, 1e-3, 3e-4, "val", None)
    assert cfg.run_id == "hcm-heartbeit-f1.0-s0"
    assert finetune.FinetuneConfig(task="mi", model="vit_b16", fraction="0.1", seed="2").run_id == "mi-vit_b16-f0.1-s2"
    assert finetune.FinetuneConfig(amp="false").amp is False  # papermill -p amp false arrives as a string
    for bad, match in ((dict(select_on="train"), "select_on"), (dict(fraction=0.0), "fraction"),
                       (dict(model="vit_b61"), "vit_b61"), (dict(lr_start=0.01), "lr_start"),
                       (dict(model="vit_b16", model_size="huge"), "model_size"), (dict(device="gpu"), "device")):
        with pytest.raises(ValueError, match=match):
            finetune.FinetuneConfig(**bad)
    with pytest.raises(runs.UnknownParameterError, match="fracton"):
        finetune.FinetuneConfig.from_dict({"fracton": 0.1})


def test_onecycle_goes_from_lr_start_to_lr():
    """Oracle: the paper's "OneCycle between 3e-4 and 1e-3" - first step 3e-4, peak 1e-3 at 30 %."""
    cfg = finetune.FinetuneConfig()
    opt, sched = finetune.make_optimizer(cfg, [torch.nn.Parameter(torch.zeros(1))], total_steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert isinstance(opt, torch.optim.Adam)
    assert lrs[0] == pytest.approx(3e-4, rel=1e-9)
    assert max(lrs) == pytest.approx(1e-3, rel=1e-6) and int(np.argmax(lrs)) in (29, 30)
    assert lrs[-1] < 1e-5


def test_missing_cohort_and_pretrain_runs_give_clear_errors(tmp_path, toy_root):
    with pytest.raises(finetune.CohortNotFoundError, match=r"01_preprocess.*-p task hcm"):
        finetune.resolve_inputs(finetune.FinetuneConfig(task="hcm", out_root=str(tmp_path)))
    with pytest.raises(finetune.CohortNotFoundError, match="nowhere"):
        finetune.resolve_inputs(finetune.FinetuneConfig(cohort_run=str(tmp_path / "nowhere")))
    (tmp_path / "half").mkdir()
    with pytest.raises(finetune.CohortNotFoundError, match="no manifest.parquet"):
        finetune.resolve_inputs(finetune.FinetuneConfig(cohort_run=str(tmp_path / "half")))
    cfg = finetune.resolve_inputs(tiny_cfg(toy_root))  # default cohort_run found and recorded
    assert cfg.cohort_run == str(toy_root / "01_preprocess" / TASK)
    assert finetune.resolve_inputs(tiny_cfg(toy_root, image_size=None)).image_size == 224  # the paper's size
    with pytest.raises(runs.ConfigError, match="resolve_inputs"):
        finetune.build_model(tiny_cfg(toy_root, image_size=None))
    with pytest.raises(finetune.PretrainRunNotFoundError, match="02_pretrain"):
        finetune.resolve_inputs(tiny_cfg(toy_root, model="heartbeit"))
    with pytest.raises(runs.ConfigError, match="holds task 'toy'"):
        finetune.open_store(dataclasses.replace(cfg, task="hcm"))


def test_heartbeit_size_and_image_size_come_from_the_checkpoint(tmp_path, toy_root, fake_pretrain_checkpoint):
    """config.yaml must name the architecture actually fine-tuned (the 04 report reads it)."""
    ck = tmp_path / "02_pretrain" / "pt" / "checkpoints" / "last.pt"
    ck.parent.mkdir(parents=True)
    fake_pretrain_checkpoint(ck, size="micro", img_size=48)
    cfg = finetune.resolve_inputs(tiny_cfg(toy_root, model="heartbeit", model_size=None, image_size=None,
                                           pretrain_run=str(ck.parents[1])))
    assert (cfg.model_size, cfg.image_size) == ("micro", 48)
    assert finetune.resolve_inputs(tiny_cfg(toy_root)).model_size == "micro"  # explicit sizes are kept


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_corrupt_pretrain_checkpoint_names_the_file(tmp_path, toy_root):
    ck = tmp_path / "02_pretrain" / "bad" / "checkpoints" / "last.pt"
    ck.parent.mkdir(parents=True)
    ck.write_bytes(b"\x80\x04garbage")
    with pytest.raises(models.CorruptWeightsError, match=str(ck)):  # read when resolving its amplitude range
        finetune.build_model(finetune.resolve_inputs(tiny_cfg(toy_root, model="heartbeit",
                                                              pretrain_run=str(ck.parents[1]))))


# ---------------------------------------------------------------- splits


def test_splits_come_from_the_store_and_fractions_are_nested(toy_root):
    store = cohorts.CohortStore(toy_root / "01_preprocess" / TASK)
    prev = None
    for f in (1.0, 0.5, 0.25, 0.1, 0.01):
        sp = finetune.make_splits(store, f, val_fraction="full")
        np.testing.assert_array_equal(sp["train"].indices, store.indices("train", f))
        for s in finetune.EVAL_SPLITS:  # with val_fraction full, evaluation splits never depend on the fraction
            np.testing.assert_array_equal(sp[s].indices, store.indices(s))
        matched = finetune.make_splits(store, f)  # default: validation is the stored fraction-f subset
        np.testing.assert_array_equal(matched["val"].indices, store.indices("val", f))
        assert len(matched["val"]) <= len(sp["val"]) and set(matched["val"].label) == {0, 1}
        assert set(sp["train"].label) == {0, 1}  # stratified: both classes even at 1 %
        if prev is not None:
            assert set(sp["train"].record_id) < prev  # nested, strictly smaller
        prev = set(sp["train"].record_id)
        pats = {s: set(sp[s].patient_hash) for s in sp}
        assert not pats["train"] & (pats["val"] | pats["test"] | pats["external"])  # patient-disjoint


def test_best_epoch_rule_reads_only_the_named_split():
    """A log where validation peaks at epoch 2 and test at epoch 4 (they disagree)."""
    log = [{"epoch": 1, "val_auroc": 0.70, "test_auroc": 0.60},
           {"epoch": 2, "val_auroc": 0.80, "test_auroc": 0.65},
           {"epoch": 3, "val_auroc": 0.80, "test_auroc": 0.70},  # ties on val: the later epoch wins (issue 24)
           {"epoch": 4, "val_auroc": float("nan"), "test_auroc": 0.90}]  # NaN never wins
    assert finetune.select_best_epoch(log) == 3
    assert finetune.select_best_epoch(log, "val") == 3
    assert finetune.select_best_epoch(log, "test") == 4
    # changing test scores cannot move the default choice
    assert finetune.select_best_epoch([dict(r, test_auroc=1 - r["test_auroc"]) for r in log]) == 3
    with pytest.raises(ValueError, match="select_on"):
        finetune.select_best_epoch(log, "external")
    with pytest.raises(ValueError, match="NaN in every epoch"):
        finetune.select_best_epoch([{"epoch": 1, "val_auroc": float("nan")}])


# ---------------------------------------------------------------- training


def _fit(root, store, **kw):
    cfg = tiny_cfg(root, **kw)
    cfg = finetune.resolve_inputs(cfg)
    run_dir = runs.start_run("03_finetune", cfg)
    model, norm = finetune.build_model(cfg)
    res = finetune.fit(cfg, model, store, finetune.make_splits(store, cfg.fraction), run_dir, normalization=norm)
    return cfg, res


@pytest.mark.slow
def test_fit_writes_per_epoch_artefacts_and_selects_on_val(toy_root):
    from sklearn.metrics import roc_auc_score

    store = cohorts.CohortStore(toy_root / "01_preprocess" / TASK)
    epochs = 5
    cfg, res = _fit(toy_root, store, epochs=epochs, seed=1, run_id="sel-val")
    d = res.run_dir
    log = runs.read_jsonl(d / "log.jsonl")
    assert [r["epoch"] for r in log] == list(range(1, epochs + 1))
    for r in log:
        assert {"train_loss", "lr", "val_auroc", "val_auprc", "test_auroc", "test_auprc",
                "external_auroc", "external_auprc"} <= set(r)
    pred = pd.read_parquet(d / "predictions.parquet")
    assert list(pred.columns) == ["record_id", "patient_hash", "split", "epoch", "label", "score"]
    assert all(pd.api.types.is_string_dtype(pred[c]) for c in ("record_id", "patient_hash", "split"))
    assert pred["epoch"].dtype == np.int64 and pred["label"].dtype == np.int64 and pred["score"].dtype == np.float64
    sp = finetune.make_splits(store, 1.0)
    assert len(pred) == epochs * sum(len(sp[s]) for s in finetune.EVAL_SPLITS)
    for r in log:  # logged metrics = sklearn on the saved predictions
        for s in finetune.EVAL_SPLITS:
            p = pred[(pred.epoch == r["epoch"]) & (pred.split == s)]
            assert list(p.record_id) == list(sp[s].record_id)
            assert r[f"{s}_auroc"] == pytest.approx(roc_auc_score(p.label, p.score), abs=1e-12)
    best = res.metrics["best_epoch"]
    assert best == finetune.select_best_epoch(log, "val")
    assert res.metrics["select_on"] == "val"
    assert res.metrics["test_auroc"] == pytest.approx(log[best - 1]["test_auroc"])

    # the saved weights are the chosen epoch's: re-scoring val reproduces that epoch's predictions
    model, norm = finetune.build_model(cfg)
    model.load_state_dict(finetune.load_best_weights(d))
    ds = finetune.default_dataset_factory(store, sp["val"].indices, cfg.image_size, cfg.layout)
    loader = torch.utils.data.DataLoader(ds, batch_size=64)
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in norm)
    score = finetune.predict(model, loader, mean, std, torch.device("cpu"))
    saved = pred[(pred.epoch == best) & (pred.split == "val")].score.to_numpy()
    np.testing.assert_allclose(score, saved, atol=1e-6)

    # deterministic given the seed: an identical second run logs identical losses and scores
    _, res2 = _fit(toy_root, store, epochs=epochs, seed=1, run_id="sel-val-again")
    assert [r["train_loss"] for r in res2.log] == [r["train_loss"] for r in log]
    pd.testing.assert_frame_equal(pd.read_parquet(res2.run_dir / "predictions.parquet"), pred)

    # flipping the test labels: the val-selected epoch does not move; select_on=test follows the test split
    flipped = FlippedTestLabels(store)
    _, res_f = _fit(toy_root, flipped, epochs=epochs, seed=1, run_id="sel-val-flipped")
    assert res_f.best_epoch == best
    for a, b in zip(res_f.log, log):
        assert a["val_auroc"] == b["val_auroc"]
        assert a["test_auroc"] == pytest.approx(1 - b["test_auroc"], abs=1e-12)
    _, res_t = _fit(toy_root, flipped, epochs=epochs, seed=1, select_on="test", run_id="sel-test-flipped")
    assert res_t.best_epoch == finetune.select_best_epoch(res_t.log, "test")
    assert res_t.metrics["test_auroc"] == max(r["test_auroc"] for r in res_t.log)
    assert res_t.best_epoch != best  # in this constructed case the two rules disagree
    assert res_t.metrics["test_auroc"] > res_f.metrics["test_auroc"]  # picking on test is optimistic


@pytest.mark.slow
def test_run_finetune_writes_a_complete_run_folder(toy_root):
    res = finetune.run_finetune(tiny_cfg(toy_root, model="vit_b16_scratch", fraction=0.25, epochs=2,
                                         cache_images=False))  # the default: rendered on the fly
    d = res.run_dir
    assert d.name == "toy-vit_b16_scratch-f0.25-s0" and d.parent.name == "03_finetune"
    assert runs.is_complete(d)
    for f in ("config.yaml", "run.json", "log.jsonl", "predictions.parquet", "metrics.json",
              "model_best.pt", "learning_curves.png"):
        assert (d / f).is_file(), f
    m = json.loads((d / "metrics.json").read_text())
    for k in ("best_epoch", "select_on", "val_auroc", "val_auprc", "test_auroc", "test_auprc",
              "external_auroc", "external_auprc"):
        assert k in m and (isinstance(m[k], str) or math.isfinite(m[k])), k
    assert m["n_train"] == len(cohorts.CohortStore(toy_root / "01_preprocess" / TASK).indices("train", 0.25))
    info = json.loads((d / "run.json").read_text())
    assert "split_train_records" in info["data_hashes"]
    import yaml

    assert yaml.safe_load((d / "config.yaml").read_text())["cohort_run"] == str(toy_root / "01_preprocess" / TASK)


@pytest.mark.slow
@pytest.mark.parametrize("record", [True, False], ids=["model.json", "config.yaml-only"])
def test_load_finetune_run_rebuilds_the_chosen_epoch(toy_root, tmp_path, record):
    """Oracle: the run's own predictions.parquet scores at the best epoch (written during training, before
    the rebuild); the rebuilt model scores the test split again. Tolerance 1e-6 (float32 forward, same CPU).
    ``record=False`` deletes model.json: a run folder from before it existed rebuilds from config.yaml."""
    cfg = tiny_cfg(tmp_path, model="vit_b16_scratch", epochs=2, cache_images=False,
                   cohort_run=str(toy_root / "01_preprocess" / TASK))
    res = finetune.run_finetune(cfg, figure=False)
    if not record:
        (res.run_dir / "model.json").unlink()
    model, info = checkpoint.load_finetune_run(res.run_dir)
    assert (info["model"], info["size"], info["image_size"], info["patch_size"]) == ("vit_b16_scratch", "micro", 32, 16)
    store = cohorts.CohortStore(toy_root / "01_preprocess" / TASK)
    # a transformer from scratch: the rendered training images' own statistics (issue 18), not 0.5 / 0.5
    assert info["normalize"] == finetune.scratch_normalization(finetune.resolve_inputs(cfg), store)
    assert info["normalize"] != (tuple(models.DEFAULT_MEAN), tuple(models.DEFAULT_STD))
    test = finetune.make_splits(store)["test"]
    loader = finetune.make_loader(finetune.default_dataset_factory(store, test.indices, 32, "stack8"), 64, False, 0, 0)
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in info["normalize"])
    score = finetune.predict(model, loader, mean, std, torch.device("cpu"))
    pred = pd.read_parquet(res.run_dir / "predictions.parquet")
    want = pred[(pred["split"] == "test") & (pred["epoch"] == res.best_epoch)]["score"].to_numpy()
    np.testing.assert_allclose(score, want, atol=1e-6)
    with pytest.raises(checkpoint.FinetuneRunError, match="no config.yaml; not a finished 03_finetune run"):
        checkpoint.load_finetune_run(tmp_path)


@pytest.mark.slow
def test_scratch_vit_fits_a_separable_rendered_set_with_image_statistics(tmp_path, smooth_ecgs):
    """Issue 18 s.4: a micro ViT from scratch fits a small separable rendered set (positives: +1.5 mV in V1-V4)
    to a training loss well below the prevalence loss when its inputs are normalised with the rendered
    images' own statistics (the default now); with the old mean = std = 0.5 it stays at the prevalence loss.
    Oracle: the prevalence loss -p log p - (1-p) log(1-p) of the training split. Measured (seeded, CPU): final
    loss 0.05 with image statistics, 0.59 with 0.5 / 0.5 (prevalence loss 0.59); thresholds 0.5x / 0.9x."""
    torch.set_num_threads(1)
    n = 64
    x = smooth_ecgs(n, 0)
    label = (np.arange(n) % 4 == 0).astype(int)
    x[label == 1, 2:6] += 1500.0
    meta = pd.DataFrame({"record_id": [f"r{i}" for i in range(n)], "patient_id": [f"p{i}" for i in range(n)],
                         "site": "A", "label": label})
    store = cohorts.build_store_from_arrays(tmp_path / "store", x, meta, seed=0,
                                            task=cohorts.TaskConfig(name="sep", val_size=0.2, test_size=0.2))
    cfg = finetune.resolve_inputs(finetune.FinetuneConfig(
        task="sep", model="vit_b16_scratch", model_size="micro", epochs=8, batch_size=8, image_size=112,
        out_root=str(tmp_path), cohort_run=str(store.root), device="cpu", cache_images=True))
    splits = finetune.make_splits(store, 1.0, cfg.val_fraction)
    p = splits["train"].prevalence
    prevalence_loss = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    final = {}
    for name, st in (("stats", store), ("half", None)):  # build_model without a store: the old 0.5 / 0.5
        model, norm = finetune.build_model(cfg, st)
        (tmp_path / name).mkdir()
        final[name] = finetune.fit(cfg, model, store, splits, tmp_path / name, normalization=norm).log[-1]["train_loss"]
        if name == "stats":
            assert 0.8 < norm[0][0] < 0.99 and 0.1 < norm[1][0] < 0.35  # mostly white images, not 0.5 / 0.5
    assert final["stats"] < 0.5 * prevalence_loss, (final, prevalence_loss)
    assert final["half"] > 0.9 * prevalence_loss, (final, prevalence_loss)  # the failure the statistics fix


def test_heartbeit_ylim_comes_from_the_checkpoint_and_a_mismatch_names_both(toy_root, tmp_path,
                                                                          fake_pretrain_checkpoint):
    """The amplitude range of a heartbeit run is its checkpoint's (a checkpoint without one: the old +-2 mV)."""
    ck = tmp_path / "02_pretrain" / "r" / "checkpoints" / "last.pt"
    obj = fake_pretrain_checkpoint(ck)
    cfg = finetune.resolve_inputs(tiny_cfg(toy_root, model="heartbeit", pretrain_run=str(ck.parents[1])))
    assert cfg.ylim_mv == (-2.0, 2.0)  # fixture predates the range: drawn at the old default
    obj["render"] = {"layout": "stack8", "ylim_mv": [-3.0, 3.0]}
    torch.save(obj, ck)
    cfg = finetune.resolve_inputs(tiny_cfg(toy_root, model="heartbeit", pretrain_run=str(ck.parents[1])))
    assert cfg.ylim_mv == (-3.0, 3.0)
    with pytest.raises(runs.ConfigError, match=r"\(-4.0, 4.0\).*\(-3.0, 3.0\)"):
        finetune.resolve_inputs(tiny_cfg(toy_root, model="heartbeit", pretrain_run=str(ck.parents[1]),
                                         ylim_mv=(-4.0, 4.0)))
    assert finetune.resolve_inputs(tiny_cfg(toy_root)).ylim_mv == (-4.0, 4.0)  # other models: the default


def test_layer_decay_scales_each_block_of_the_transformer():
    """Issue 18 s.4: layer_decay d gives the patch embedding lr x d^(L+1), block i lr x d^(L-i), the head lr; off (1)
    keeps one group. Oracle: the powers by hand for the micro BEiT (L = 2 blocks) and OneCycle's initial lr
    max_lr / div_factor."""
    cfg = finetune.FinetuneConfig(task="mi", model="beit_b16_scratch", model_size="micro", image_size=32,
                                  layer_decay=0.5, lr=1e-3, lr_start=3e-4)
    net = models.create_model("beit_b16_scratch", num_classes=2, size="micro", img_size=32)
    opt, _ = finetune.make_optimizer(cfg, finetune.optimizer_params(cfg, net), 10)
    scales = sorted({g["lr_scale"] for g in opt.param_groups})
    assert scales == [0.125, 0.25, 0.5, 1.0]
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(3e-4 * g["lr_scale"], rel=1e-9)
    head = [g for g in opt.param_groups if any(p is net.head.weight for p in g["params"])]
    assert head and head[0]["lr_scale"] == 1.0
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(net.parameters()))
    off = finetune.FinetuneConfig(task="mi", model="beit_b16_scratch", model_size="micro", image_size=32)
    assert len(finetune.make_optimizer(off, finetune.optimizer_params(off, net), 10)[0].param_groups) == 1
    with pytest.raises(runs.ConfigError, match="layer_decay"):
        finetune.FinetuneConfig(task="mi", model="resnet152_scratch", layer_decay=0.75)


def test_render_cache_is_the_renderer_once_per_store_and_setting(tmp_path, make_toy_store):
    """Issue 26: a sweep's jobs memory-map one uint8 rendering per store and setting. Oracle: render.render_ecg on
    the store's signals (exact); the second call maps the same file without rendering again; another setting gets
    its own file."""
    from heartbeit_lib import cohorts, render
    from heartbeit_lib.classify import data

    make_toy_store(tmp_path)
    store = cohorts.CohortStore(tmp_path / "01_preprocess" / "toy")
    imgs = data.render_cache(store, 32, "stack8", (-3.0, 3.0))
    want = render.render_ecg(store.signals(np.arange(len(store))), size=32, layout="stack8", ylim_mv=(-3.0, 3.0))
    assert imgs.dtype == np.uint8 and imgs.shape == (len(store), 32, 32) and np.array_equal(imgs, want)
    (f,) = (tmp_path / "01_preprocess" / "toy" / data.RENDER_CACHE).glob("*.npy")
    stamp = f.stat().st_mtime_ns
    assert np.array_equal(data.render_cache(store, 32, "stack8", (-3.0, 3.0)), want) and f.stat().st_mtime_ns == stamp
    data.render_cache(store, 32, "grid4x2", (-3.0, 3.0))
    assert len(list(f.parent.glob("*.npy"))) == 2
    ds = data.default_dataset_factory(store, np.array([3, 1]), 32, "stack8", (-3.0, 3.0), disk_cache=True)
    assert np.array_equal(torch.stack([x for x, _ in ds.__getitems__([0, 1])]).numpy(), want[[3, 1]])


def test_fp16_steps_read_nothing_back_with_the_fused_optimizer(host_reads):
    """Issue 25 item 10b: with fp16's GradScaler a non-fused Adam reads ``found_inf`` back every step (a host
    sync on CUDA); ``make_optimizer(fused=True)``, what ``fit`` asks for on CUDA, gets the inf check on the
    device.  Run on the CPU with ``GradScaler("cpu")``, 6 steps.  Oracles: the count of host reads (one per epoch:
    the mean loss at its end) and the default Adam's trajectory (weights to atol 1e-6, loss to rtol 1e-6)."""
    from heartbeit_lib.classify import engine
    cfg = finetune.FinetuneConfig()
    gen = torch.Generator().manual_seed(0)
    loader = [(torch.rand(8, 3, 4, 4, generator=gen), torch.randint(0, 2, (8,), generator=gen)) for _ in range(6)]
    mean, std = torch.full((1, 3, 1, 1), 0.5), torch.full((1, 3, 1, 1), 0.25)
    out = {}
    for fused in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 2))
        opt, sched = finetune.make_optimizer(cfg, model.parameters(), 6, fused=fused)
        host_reads.clear()
        loss = engine.train_one_epoch(model, loader, opt, sched, torch.amp.GradScaler("cpu"), mean, std,
                                      torch.device("cpu"))
        out[fused] = (loss, [p.detach().clone() for p in model.parameters()], len(host_reads))
    assert out[False][2] >= 6 and out[True][2] == 1
    assert out[True][0] == pytest.approx(out[False][0], rel=1e-6)
    for a, b in zip(out[True][1], out[False][1]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_a_run_is_the_same_whether_it_renders_the_image_cache_or_finds_it(toy_root, tmp_path):
    """A sweep in one process renders each split's images once (cache_images): the first run renders them, the
    next finds them. Building the cache drew from the global torch RNG after the run's seed was set, so the two
    runs' training randomness (drop path) differed. Oracle: the first run's log, equal to the second's exactly."""
    import importlib

    fit = importlib.import_module("heartbeit_lib.pipeline.finetune.fit")  # the package re-exports fit(), a function
    fit.IMAGE_CACHE.clear()
    logs = []
    for run_id in ("cache-miss", "cache-hit"):
        cfg = tiny_cfg(tmp_path, model="vit_b16_scratch", epochs=2, run_id=run_id,
                       cohort_run=str(toy_root / "01_preprocess" / TASK))
        logs.append([{k: v for k, v in r.items() if "sec" not in k and "time" not in k}
                     for r in finetune.run_finetune(cfg).log])
    assert len(fit.IMAGE_CACHE) > 0 and logs[0] == logs[1]
