"""Notebook 03's training driver: :func:`fit` runs ``classify.engine``'s epoch and evaluation steps for
``cfg.epochs`` epochs with the paper's optimiser and OneCycle schedule, writes ``log.jsonl``,
``predictions.parquet``, ``model_best.pt`` and ``model.json``, and returns the chosen epoch's metrics."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from timm.optim import param_groups_layer_decay
from tqdm.auto import tqdm

from heartbeit_lib import cohorts, utils
from heartbeit_lib.classify import engine
from heartbeit_lib.classify.checkpoint import save_best_weights, write_model_record
from heartbeit_lib.classify.data import (EVAL_SPLITS, ImageCache, Split, SplitError, default_dataset_factory,
                                         make_loader, records_sha256)
from heartbeit_lib.classify.engine import select_best_epoch
from heartbeit_lib.classify.signal_data import SignalDatasetFactory, crop_length, prepared_length
from heartbeit_lib.models import registry as models
from heartbeit_lib.pipeline import runs
from heartbeit_lib.pipeline.finetune.config import FinetuneConfig
from heartbeit_lib.pipeline.finetune.inputs import _check_resolved, pretrain_overlap
from heartbeit_lib.pipeline.finetune.resume import (RESUME_FILE, load_resume_state, restore_resume_state,
                                                    save_resume_state)

# cache_images=True without an explicit cache: one per process, so an in-process sweep renders each split once
IMAGE_CACHE = ImageCache(max_items=16)
CUDA_EVAL_BATCH = 512  # evaluation batch on CUDA (no gradients: memory allows it); CPU keeps 2 x batch_size
CNN_FAMILIES = ("resnet", "efficientnet")  # channels_last + cudnn.benchmark on CUDA


@dataclasses.dataclass
class FitResult:
    best_epoch: int
    metrics: dict[str, Any]
    log: list[dict]
    data_hashes: dict[str, str]
    run_dir: Path



def resolve_device(device: str | None) -> torch.device:
    """``utils.resolve_device`` (``auto`` -> cuda when available, else cpu)."""
    return utils.resolve_device(device)


def optimizer_params(cfg: FinetuneConfig, model: nn.Module):
    """``model.parameters()``, or with ``layer_decay`` < 1 timm's layer-decay groups (``lr_scale`` =
    ``layer_decay ** (L + 1 - layer)`` over ``model.group_matcher()``: 0 = patch embedding, i + 1 = block i,
    L + 1 = final norm and head; 1-D parameters without weight decay)."""
    if cfg.layer_decay == 1.0:
        return model.parameters()
    return param_groups_layer_decay(model, cfg.weight_decay, no_weight_decay_list=model.no_weight_decay(),
                                    layer_decay=cfg.layer_decay)


def make_optimizer(cfg: FinetuneConfig, params, total_steps: int, fused: bool = False):
    """Adam (or AdamW: ``optimizer``) + OneCycleLR stepped once per batch: lr ``lr_start`` -> ``lr`` (after
    ``pct_start`` = 30 % of the steps) -> ``lr_start / 1e4`` (cosine), as the paper's "OneCycle between 3e-4 and
    1e-3"; groups with an ``lr_scale`` (:func:`optimizer_params`) follow the same cycle scaled. fastai's
    ``fit_one_cycle(lr)`` of the PTB-XL benchmark is ``optimizer=adamw, adam_beta2=0.99, lr_start=lr/25``.
    ``fused`` (:func:`fit` on CUDA): one kernel per step, and fp16's ``GradScaler`` hands it the inf check on the
    device instead of reading it back (``found_inf.item()``: a host sync every step with the other kinds)."""
    params = list(params)
    kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    opt = kind(params, lr=cfg.lr_start, betas=(0.9, cfg.adam_beta2), weight_decay=cfg.weight_decay,
               **({"fused": True} if fused else {}))
    scales = [g.get("lr_scale", 1.0) for g in opt.param_groups]
    max_lr = cfg.lr if all(x == 1.0 for x in scales) else [cfg.lr * x for x in scales]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=max(1, total_steps),
                                                div_factor=cfg.lr / cfg.lr_start)
    return opt, sched


def _loaders(cfg: FinetuneConfig, store, splits: Mapping[str, Split], factory: Callable,
             image_cache: ImageCache | None, eval_batch: int) -> tuple[Any, dict[str, Any]]:
    """(train loader, {eval split: loader}) with the split datasets rendered through ``factory`` (or the cache)."""
    def make_ds(split: Split, train: bool = False):
        kw: dict[str, Any] = {"targets": split.targets} if split.classes else {}
        if isinstance(factory, SignalDatasetFactory):
            kw["train"] = train  # random crops in training only
        if image_cache is None:
            return factory(store, split.indices, cfg.image_size, cfg.layout, **kw)
        if "train" in kw:
            raise SplitError("cache_images does not apply to signal datasets")
        return image_cache.dataset(factory, store, split, cfg.image_size, cfg.layout, cfg.num_workers,
                                   targets=kw.get("targets"))

    train = splits["train"]
    train_ds = make_ds(train, train=True)
    # BatchNorm cannot train on a last batch of one image: drop it (it comes back next epoch reshuffled)
    drop_last = len(train) % cfg.batch_size == 1 and len(train) > cfg.batch_size
    train_loader = make_loader(train_ds, cfg.batch_size, True, cfg.seed, cfg.num_workers, drop_last)
    eval_loaders = {s: make_loader(make_ds(splits[s]), eval_batch, False, 0, cfg.num_workers)
                    for s in EVAL_SPLITS if len(splits[s])}
    return train_loader, eval_loaders


def _summary(cfg: FinetuneConfig, log: list[dict], best_epoch: int, splits: Mapping[str, Split]) -> dict[str, Any]:
    """metrics.json fields of the chosen epoch, the split sizes and the paper's best-any-epoch test AUROC."""
    best = next(r for r in log if r["epoch"] == best_epoch)
    classes = splits["train"].classes
    metrics: dict[str, Any] = {"best_epoch": best_epoch, "select_on": cfg.select_on, "select_metric": "auroc",
                               "epochs": cfg.epochs, "task": cfg.task, "model": cfg.model,
                               "fraction": cfg.fraction, "seed": cfg.seed}
    for s in EVAL_SPLITS:
        metrics[f"{s}_auroc"], metrics[f"{s}_auprc"] = best[f"{s}_auroc"], best[f"{s}_auprc"]
    # the paper's reporting (best test AUROC over all epochs), for comparison only
    metrics["test_auroc_best_any_epoch"] = max((r["test_auroc"] for r in log if math.isfinite(r["test_auroc"])),
                                               default=float("nan"))
    for s in ("train",) + EVAL_SPLITS:
        metrics[f"n_{s}"] = len(splits[s])
        metrics[f"prevalence_{s}"] = splits[s].prevalence
    if classes:
        metrics.update(classes=list(classes), multilabel=True, auroc_average="macro")
    return metrics


def fit(cfg: FinetuneConfig, model: nn.Module, store, splits: Mapping[str, Split], run_dir: str | os.PathLike,
        normalization: tuple[Sequence[float], Sequence[float]] = (models.DEFAULT_MEAN, models.DEFAULT_STD),
        dataset_factory: Callable | None = None, progress: bool = False,
        image_cache: ImageCache | None = None) -> FitResult:
    """Train ``model`` for ``cfg.epochs`` epochs and write the per-epoch artefacts into ``run_dir``.

    Parameters
    ----------
    cfg : the run's config (epochs, batch_size, lr, lr_start, weight_decay, seed, device, amp, select_on).
    model : maps (B, 3, S, S) normalised images to (B, 2) logits, S = ``cfg.image_size``.
    store : the cohort store the ``splits`` index into.
    splits : from :func:`make_splits`.
    normalization : per-channel (mean, std) applied to the [0, 1] images on the device.
    dataset_factory : ``(store, indices, image_size, layout) -> Dataset`` of ``(image (3, S, S) float32
        in [0, 1], label int64)``; default ``render.RenderedECGDataset``.
    image_cache : where rendered splits are kept when ``cfg.cache_images`` (default :data:`IMAGE_CACHE`).

    Writes ``log.jsonl`` (one line per epoch), ``predictions.parquet`` (rewritten after every epoch
    with all epochs so far: record_id, patient_hash, split, epoch, label, score), ``model_best.pt``
    (state dict of the best epoch so far), ``model.json`` (its architecture) and returns the metrics at the
    best epoch.
    """
    _check_resolved(cfg)
    run_dir = Path(run_dir)
    state = load_resume_state(run_dir, cfg) if cfg.resume else None
    for name in ("log.jsonl", "predictions.parquet", "model_best.pt") if state is None else ():
        (run_dir / name).unlink(missing_ok=True)  # a rerun starts clean
    multilabel = bool(splits["train"].classes)
    sel = splits.get(cfg.select_on)
    if sel is not None and not multilabel and (len(sel) == 0 or len(np.unique(sel.label)) < 2):
        raise SplitError(f"select_on={cfg.select_on!r}: that split needs both classes to choose an epoch "
                         f"(it has {len(sel)} ECGs, labels {sorted(set(sel.label.tolist()))})")
    device = resolve_device(cfg.device)
    amp = bool(cfg.amp and device.type == "cuda")
    torch.manual_seed(cfg.seed)
    signal = models.model_family(cfg.model) == "signal"
    cache = (image_cache if image_cache is not None else IMAGE_CACHE) if cfg.cache_images and not signal else None
    default_factory = (SignalDatasetFactory(cfg.signal_rate, cfg.crop_seconds, seed=cfg.seed) if signal
                       else functools.partial(default_dataset_factory, ylim_mv=cfg.ylim_mv,
                                              disk_cache=cfg.cache_images))
    eval_batch = max(CUDA_EVAL_BATCH, 2 * cfg.batch_size) if device.type == "cuda" else 2 * cfg.batch_size
    train_loader, eval_loaders = _loaders(cfg, store, splits, dataset_factory or default_factory, cache, eval_batch)
    channels_last = (device.type == "cuda" and not signal
                     and models.model_spec(cfg.model).family in CNN_FAMILIES)
    if device.type == "cuda" and (channels_last or signal):
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest convolutions
    model = model.to(device, memory_format=torch.channels_last) if channels_last else model.to(device)
    shape = (1, -1, 1) if signal else (1, -1, 1, 1)  # per lead of (B, leads, T) / per channel of (B, 3, H, W)
    mean = torch.tensor(normalization[0], dtype=torch.float32, device=device).view(shape)
    std = torch.tensor(normalization[1], dtype=torch.float32, device=device).view(shape)
    opt, sched = make_optimizer(cfg, optimizer_params(cfg, model), cfg.epochs * len(train_loader),
                                fused=device.type == "cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    windows = None
    if signal and cfg.crop_seconds:
        n_in = prepared_length(store.shape[-1], float(store.fs), float(cfg.signal_rate))
        windows = engine.Windows(crop_length(cfg.crop_seconds, float(cfg.signal_rate), n_in), cfg.window_aggregate)
    n_classes = len(splits["train"].classes) if multilabel else 2
    extra = {"crop_seconds": cfg.crop_seconds, "window_aggregate": cfg.window_aggregate} if signal else {}
    write_model_record(run_dir, model, cfg.model, cfg.model_size or None, cfg.image_size, cfg.layout, normalization,
                       num_classes=n_classes, signal_rate=cfg.signal_rate if signal else None,
                       ylim_mv=None if signal else cfg.ylim_mv, classes=splits["train"].classes, extra=extra)

    log: list[dict] = []
    pred_frames: list[pd.DataFrame] = []
    best_epoch, best_value = None, -math.inf
    t_start = time.time()
    first = 1
    if state is not None:
        first, log, best_epoch, best_value = restore_resume_state(state, model, opt, sched, scaler, train_loader)
        if (run_dir / "predictions.parquet").is_file():  # none yet when no epoch was scored (eval_every)
            pred_frames = [pd.read_parquet(run_dir / "predictions.parquet").query("epoch < @first")]
        # the files may hold an epoch finished after resume.pt was written: keep what resume.pt knows
        (run_dir / "log.jsonl").unlink(missing_ok=True)
        for r in log:
            runs.append_jsonl(run_dir / "log.jsonl", _nan_to_none(r))
    epochs = range(first, cfg.epochs + 1)
    for epoch in tqdm(epochs, desc=f"{cfg.model} f={cfg.fraction}", leave=False) if progress else epochs:
        t0 = time.time()
        if hasattr(train_loader.dataset, "set_epoch"):
            train_loader.dataset.set_epoch(epoch)  # the epoch's random crops
        loss = engine.train_one_epoch(model, train_loader, opt, sched, scaler, mean, std, device, amp, channels_last,
                                      multilabel)
        row: dict[str, Any] = {"epoch": epoch, "train_loss": loss, "lr": sched.get_last_lr()[0]}
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            scores, frames = engine.evaluate(model, eval_loaders, splits, mean, std, device, epoch, amp,
                                             channels_last, windows)
            pred_frames += frames
        else:  # not scored this epoch (eval_every)
            scores = {f"{s}_{m}": float("nan") for s in EVAL_SPLITS for m in ("auroc", "auprc")}
        row.update(scores, epoch_time_s=time.time() - t0)
        log.append(row)
        runs.append_jsonl(run_dir / "log.jsonl", _nan_to_none(row))
        if pred_frames:
            utils.atomic_write(run_dir / "predictions.parquet",
                               lambda tmp: pd.concat(pred_frames, ignore_index=True).to_parquet(tmp, index=False))
        if cfg.select_on == "last":
            if epoch == cfg.epochs:
                best_epoch, best_value = epoch, row["val_auroc"]
                save_best_weights(model, run_dir)
        elif math.isfinite(value := row[f"{cfg.select_on}_auroc"]) and value >= best_value:  # the later epoch wins ties
            best_epoch, best_value = epoch, value
            save_best_weights(model, run_dir)
        if cfg.resume:
            save_resume_state(run_dir, cfg, epoch, log, best_epoch, best_value, model, opt, sched, scaler, train_loader)
    (run_dir / RESUME_FILE).unlink(missing_ok=True)
    assert best_epoch == select_best_epoch(log, cfg.select_on)  # the online choice equals the offline rule
    metrics = _summary(cfg, log, best_epoch, splits)
    metrics.update(train_records_sha256=records_sha256(splits["train"].record_id),
                   final_train_loss=log[-1]["train_loss"], train_time_s=time.time() - t_start,
                   n_parameters=models.count_parameters(model), normalize_mean=list(normalization[0]),
                   normalize_std=list(normalization[1]), device=str(device), amp=amp,
                   ylim_mv=None if cfg.ylim_mv is None else list(cfg.ylim_mv), val_fraction=cfg.val_fraction,
                   allow_pretrain_overlap=cfg.allow_pretrain_overlap, **pretrain_overlap(cfg))
    if multilabel:  # per-class AUROC of the chosen epoch (04 recomputes them with intervals)
        at_best = pd.concat(pred_frames, ignore_index=True).query("epoch == @best_epoch")
        for s in EVAL_SPLITS:
            part = at_best[at_best["split"] == s]
            metrics[f"{s}_auroc_per_class"] = {
                c: engine.split_metrics(part[f"{cohorts.LABEL_PREFIX}{c}"], part[f"{engine.SCORE_PREFIX}{c}"])["auroc"]
                for c in splits["train"].classes} if len(part) else {}
    hashes = {f"split_{s}_records": records_sha256(splits[s].record_id) for s in splits}
    return FitResult(best_epoch, _nan_to_none(metrics), log, hashes, run_dir)


def _nan_to_none(d: Mapping[str, Any]) -> dict[str, Any]:
    """NaN (a metric of an empty or one-class split) -> None, so the JSON files stay strict JSON."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}
