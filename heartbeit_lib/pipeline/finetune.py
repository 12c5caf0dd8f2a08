"""Fine-tuning a registered model on a labelled cohort store (notebook ``03_finetune``).

The paper's recipe (Vaid et al. 2023): a 2-neuron head, CrossEntropy, Adam with a OneCycle
schedule between 3e-4 and 1e-3, 30 epochs, training fractions 1/10/25/50/100 %, the same
patients in the same splits for every model. Here:

- **Splits** come from the cohort store (``store.indices(split, fraction)``), saved once by
  ``01_preprocess``: identical across models, seeds and runs, and the fraction subsets of ``train``
  are nested. Nothing is re-drawn here.
- **Schedule**: ``torch.optim.Adam(lr=lr_start, weight_decay=...)`` with
  ``OneCycleLR(max_lr=lr, div_factor=lr / lr_start)``: the learning rate starts at ``lr_start``
  (3e-4), rises to ``lr`` (1e-3) over the first 30 % of the steps (``pct_start``), then anneals
  (cosine) to ``lr_start / 1e4``. Adam's beta1 cycles 0.95 -> 0.85 -> 0.95 (OneCycle default).
- **Engine**: ``classify.engine.train_one_epoch`` / ``evaluate`` per epoch; this module is the driver.
- **Two model families** (``registry.model_family``): image models read rendered ECGs; the signal models
  (``xresnet1d101``, ``inception1d``, ``stmem``, ``stmem_scratch``) read the store's signals at ``signal_rate`` Hz
  (``classify.signal_data.SignalDatasetFactory``: no rendering, no image normalisation, whole 5-s records) through
  the same engine, epoch selection, outputs and ``model.json`` (with ``family`` and ``signal_rate``).
- **Every epoch** the model scores the ``val``, ``test`` and ``external`` splits; the scores
  (probability of class 1) are appended to ``predictions.parquet`` so every metric can be recomputed
  later, and ``log.jsonl`` gets one line (train loss, learning rate, per-split AUROC/AUPRC).
- **Best epoch**: chosen on ``select_on`` (default ``"val"``, the patient-disjoint validation split; at a small
  fraction its nested subset of at least 50 ECGs per class, ``cohorts.splits.VAL_MIN_PER_CLASS``); ties go to the
  later epoch (``engine.select_best_epoch``, which the online choice must equal).
  ``select_on="test"`` reproduces the paper / authors' code, which picked the epoch on the test set
  itself: optimistic, allowed only when named. The weights of the chosen epoch are saved as
  ``model_best.pt`` (a plain state dict, ``torch.load(..., weights_only=True)``).
- **Determinism**: ``torch.manual_seed(seed)`` before the model is built (random heads and scratch
  models) and a seeded ``torch.Generator`` for the shuffling order; identical runs give identical
  logs on CPU.

Per-epoch AUROC is ``sklearn.metrics.roc_auc_score``; AUPRC is average precision
(``sklearn.metrics.average_precision_score``; the authors' code used the trapezoidal
``auc(recall, precision)``). The metrics notebook recomputes both, with bootstrap CIs, from
``predictions.parquet``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
import typing
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from timm.optim import param_groups_layer_decay
import yaml
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from tqdm.auto import tqdm

from heartbeit_lib import cohorts, render, utils
from heartbeit_lib.cohorts.store import N_LEADS
from heartbeit_lib.classify import engine
from heartbeit_lib.models import registry as models
from heartbeit_lib.classify.checkpoint import load_best_weights, save_best_weights, write_model_record  # noqa: F401
from heartbeit_lib.classify.data import (EVAL_SPLITS, ImageCache, Split, SplitError,  # noqa: F401
                                         default_dataset_factory, describe_splits, make_loader, make_splits,
                                         require_paper_layout,
                                         records_sha256)
from heartbeit_lib.models.signal_models import benchmark_weight_init
from heartbeit_lib.classify.signal_data import SignalDatasetFactory, crop_length, fit_standardizer, prepared_length
from heartbeit_lib.classify.engine import predict, select_best_epoch, split_metrics  # noqa: F401
from heartbeit_lib.pipeline import overlap, runs

PAPER_FRACTIONS = (0.01, 0.1, 0.25, 0.5, 1.0)
DEFAULT_IMAGE_SIZE = 224  # the paper's image side (px)
# cache_images=True without an explicit cache: one per process, so an in-process sweep renders each split once
IMAGE_CACHE = ImageCache(max_items=16)
SIGNAL_NORMALIZATION = ((0.0,), (1.0,))  # signal models: identity (prepare_signals scales by a fixed constant)
CUDA_EVAL_BATCH = 512  # evaluation batch on CUDA (no gradients: memory allows it); CPU keeps 2 x batch_size
CNN_FAMILIES = ("resnet", "efficientnet")  # channels_last + cudnn.benchmark on CUDA
RESUME_FILE = "resume.pt"  # per-epoch training state of a run with resume=True; deleted when the run finishes


class CohortNotFoundError(runs.ConfigError):
    """``cohort_run`` does not point at a cohort store (run notebooks/01_preprocess.ipynb first)."""


class PretrainRunNotFoundError(runs.ConfigError):
    """``pretrain_run`` does not point at a 02_pretrain run folder with checkpoints."""



# ---------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class FinetuneConfig(runs.TypedConfig):
    """Parameters of ``notebooks/03_finetune.ipynb`` (names equal the notebook's parameter names)."""

    task: str = "hcm"  # task name; must equal the cohort store's task
    model: str = "heartbeit"  # registered model: heartbeit, vit_b16, beit_b16, efficientnet_b4, resnet152, <name>_scratch; signal: xresnet1d101, inception1d, stmem, stmem_scratch
    fraction: float = 1.0  # fraction of the training split (nested, stratified subsets saved in the store)
    seed: int = 0  # model init and shuffling seed
    pretrain_run: str | None = None  # 02_pretrain run folder for heartbeit (image) or stmem (signal); None: latest complete run of that modality under out_root
    cohort_run: str | None = None  # 01_preprocess run folder; None: <out_root>/01_preprocess/<task>
    weights: str | None = None  # weights file for ImageNet models (None: offline hub cache) or a heartbeit checkpoint file
    model_size: str | None = None  # architecture size; None: the paper's base (heartbeit: the checkpoint's); micro, tiny, small for CPU runs
    epochs: int = 30  # training epochs (paper: 30)
    batch_size: int = 32  # images per optimiser step
    lr: float = 0.001  # OneCycle peak learning rate (paper: 1e-3)
    lr_start: float = 0.0003  # OneCycle initial learning rate (paper: 3e-4)
    weight_decay: float = 0.0  # Adam weight decay
    layer_decay: float = 1.0  # layer-wise lr decay of the transformers (beit, vit): block i peaks at lr x decay^(L+1-i); 1: off (the paper)
    image_size: int | None = None  # rendered image side in px; None: the pretraining size for heartbeit, else the paper's 224
    layout: str = "stack8"  # ECG image layout (heartbeit_lib.render)
    signal_rate: int = 100  # input rate of the signal models in Hz (store 500 Hz resampled; PTB-XL benchmark: 100); image models ignore it
    crop_seconds: float | None = None  # signal models: random crops of this many s in training, windows of it (stride half a window) at evaluation; None: whole records (PTB-XL benchmark: 2.5)
    window_aggregate: str = "mean"  # signal models with crop_seconds: window outputs combined by mean or max (PTB-XL benchmark: max)
    standardize: bool = False  # signal models: subtract the mean and divide by the std of the training values (PTB-XL benchmark)
    optimizer: str = "adam"  # adam (the paper; weight_decay is L2) | adamw (decoupled weight decay: the PTB-XL benchmark's fastai)
    signal_init: str = "fastai"  # xresnet1d101/inception1d from scratch: fastai (the architecture's init) | benchmark (then the PTB-XL benchmark's weight_init: every BatchNorm at 1/0)
    adam_beta2: float = 0.999  # Adam's beta2 (fastai and the PTB-XL benchmark: 0.99); beta1 cycles 0.95 -> 0.85 -> 0.95 with OneCycle
    ylim_mv: tuple[float, ...] | None = None  # amplitude range (lo, hi) of each lead band in mV; None: heartbeit the checkpoint's, else +-4 mV
    device: str | None = None  # cpu, cuda, cuda:N; None: cuda when available, else cpu
    amp: bool = True  # mixed precision on cuda
    select_on: str = "val"  # split choosing the best epoch: val (default), test (paper, optimistic) or last (no selection: PTB-XL benchmark)
    eval_every: int = 1  # score val/test/external every k epochs and at the last one (selection sees only scored epochs)
    val_fraction: str = "matched"  # matched: validation shrinks with fraction (nested, stratified, at least 50 per class: cohorts.splits.VAL_MIN_PER_CLASS) | full: whole split
    num_workers: int = 0  # DataLoader worker processes
    cache_images: bool = False  # render the store once into its uint8 render_cache/ (shared by a sweep's jobs) and keep splits in memory (small cohorts)
    out_root: str = "outputs"  # root of the run folders
    run_id: str | None = None  # run folder name; None: <task>-<model>-f<fraction>-s<seed>
    resume: bool = False  # continue an interrupted run folder from its last finished epoch (resume.pt, written every epoch when True)
    allow_pretrain_overlap: bool = False  # True: fine-tune even when the pretraining run trained on ECGs of this cohort's val/test/external patients (counts in metrics.json)

    choices: typing.ClassVar[dict[str, tuple]] = {"select_on": ("val", "test", "last"),
                                                  "val_fraction": ("matched", "full"),
                                                  "window_aggregate": ("mean", "max"), "optimizer": ("adam", "adamw"),
                                                  "signal_init": ("fastai", "benchmark")}
    path_components: typing.ClassVar[tuple[str, ...]] = ("run_id", "task", "model")  # the run folder's name

    def validate(self) -> None:
        models.model_family(self.model)  # UnknownModelError (a ValueError) for a typo
        if self.model_size and self.model_size not in models.model_sizes(self.model):
            raise runs.ConfigError(f"parameter 'model_size': {self.model_size!r} is not a size of "
                                   f"{self.model!r}; choose one of {models.model_sizes(self.model)}")
        if not 0.0 < self.fraction <= 1.0:
            raise runs.ConfigError(f"parameter 'fraction': {self.fraction} is not in (0, 1]")
        signal = models.model_family(self.model) == "signal"
        if not signal and (self.crop_seconds is not None or self.standardize):
            raise runs.ConfigError(f"parameters 'crop_seconds'/'standardize' apply to the signal models, not to "
                                   f"{self.model!r}; leave them at None/false")
        if self.crop_seconds is not None and not self.crop_seconds > 0:
            raise runs.ConfigError(f"parameter 'crop_seconds': {self.crop_seconds} must be None or > 0 s")
        if self.signal_init != "fastai" and self.model not in ("xresnet1d101", "inception1d"):
            raise runs.ConfigError(f"parameter 'signal_init': {self.signal_init!r} applies to xresnet1d101 and "
                                   f"inception1d from scratch, not to {self.model!r}")
        if not 0.0 < self.adam_beta2 < 1.0:
            raise runs.ConfigError(f"parameter 'adam_beta2': {self.adam_beta2} must lie in (0, 1)")
        for name in ("epochs", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise runs.ConfigError(f"parameter {name!r}: {getattr(self, name)} must be >= 1")
        if self.image_size is not None and self.image_size < 8:
            raise runs.ConfigError(f"parameter 'image_size': {self.image_size} must be None (default) or >= 8 px")
        if not 0.0 < self.lr_start <= self.lr:
            raise runs.ConfigError(f"parameters 'lr_start'/'lr': need 0 < lr_start <= lr, got {self.lr_start}, {self.lr}")
        if self.signal_rate < 1:
            raise runs.ConfigError(f"parameter 'signal_rate': {self.signal_rate} Hz must be >= 1")
        if self.ylim_mv is not None and (len(self.ylim_mv) != 2 or not self.ylim_mv[0] < self.ylim_mv[1]):
            raise runs.ConfigError(f"parameter 'ylim_mv' must be None or two numbers lo < hi in mV, got {self.ylim_mv}")
        if not 0 < self.layer_decay <= 1:
            raise runs.ConfigError(f"parameter 'layer_decay' must lie in (0, 1], got {self.layer_decay}")
        if self.layer_decay < 1 and (models.model_family(self.model) == "signal"
                                     or models.model_spec(self.model).family not in TRANSFORMER_FAMILIES):
            raise runs.ConfigError(f"parameter 'layer_decay': {self.layer_decay} applies to the image transformers "
                                   f"(beit, vit families), not to {self.model!r}; leave it at 1")
        if self.weight_decay < 0 or self.num_workers < 0:
            raise runs.ConfigError("parameters 'weight_decay' and 'num_workers' must be >= 0")
        if not (self.device in (None, "auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")):
            raise runs.ConfigError(f"parameter 'device': {self.device!r} is not auto, cpu, cuda, cuda:N or mps")
        if not self.run_id:
            object.__setattr__(self, "run_id", run_name(self.task, self.model, self.fraction, self.seed))


def run_name(task: str, model: str, fraction: float, seed: int) -> str:
    """Run folder name ``<task>-<model>-f<fraction>-s<seed>``, e.g. ``mi-heartbeit-f0.1-s0``."""
    return f"{task}-{model}-f{float(fraction)!r}-s{int(seed)}"


def _latest_complete(folder: Path, predicate: Callable[[Path], bool] = lambda p: True) -> Path | None:
    cands = [p for p in folder.iterdir() if p.is_dir() and runs.is_complete(p) and predicate(p)] \
        if folder.is_dir() else []
    if not cands:
        return None
    return max(cands, key=lambda p: json.loads((p / "run.json").read_text()).get("finished") or "")




def _config_task(run_dir: Path) -> str | None:
    try:
        return (yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("task")
    except Exception:
        return None


def resolve_inputs(cfg: FinetuneConfig) -> FinetuneConfig:
    """Fill in default upstream run folders and check that they exist (:func:`_resolve_inputs`), then refuse a
    pretraining run that saw this cohort's evaluation patients (:func:`pretrain_overlap`)."""
    cfg = _resolve_inputs(cfg)
    pretrain_overlap(cfg)
    return cfg


def pretrain_overlap(cfg: FinetuneConfig) -> dict[str, Any]:
    """Patients/ECGs of ``cfg.cohort_run``'s val/test/external splits among the rows the model's pretraining run
    (``heartbeit`` image, ``stmem`` signal) trained on (:func:`overlap.count_overlap`); {} for other models.

    Raises
    ------
    overlap.PretrainOverlapError : some overlap, and ``allow_pretrain_overlap`` is False.
    overlap.SaltMismatchError : the two stores' patients cannot be compared, and ``allow_pretrain_overlap`` is
        False (with it: recorded as ``pretrain_overlap: unverified``).
    """
    signal = models.model_family(cfg.model) == "signal"
    if not (cfg.model == "stmem" if signal else models.model_spec(cfg.model).source == "pretrain_checkpoint"):
        return {}
    source = model_weights(cfg)
    if not source or not cfg.cohort_run:
        return {}
    try:
        found = overlap.count_overlap(source, cfg.cohort_run)
    except overlap.SaltMismatchError as e:
        if not cfg.allow_pretrain_overlap:
            raise
        return {"pretrain_overlap": "unverified", "pretrain_overlap_reason": str(e)}
    if found.get("pretrain_overlap_ecgs", 0) and not cfg.allow_pretrain_overlap:
        raise overlap.PretrainOverlapError(
            f"pretraining run {source} trained on {found['pretrain_overlap_ecgs']} ECGs of "
            f"{found['pretrain_overlap_patients']} patients who are in the val/test/external splits of cohort "
            f"{cfg.cohort_run}: its evaluation would not be held out. Pretrain with eval_patients_of: "
            f"[{cfg.cohort_run}] (or a mix built with exclude_patients_of), or pass allow_pretrain_overlap=true "
            "to run anyway (the counts go to metrics.json)")
    return found


def _resolve_inputs(cfg: FinetuneConfig) -> FinetuneConfig:
    """Fill in default upstream run folders and check that they exist.

    - ``cohort_run`` None -> ``<out_root>/01_preprocess/<task>`` if it exists, else the latest complete
      ``01_preprocess`` run whose config has this task.
    - ``pretrain_run`` None (only for ``model="heartbeit"`` without ``weights``) -> the latest complete
      ``02_pretrain`` run.
    - ``image_size`` None -> the checkpoint's ``img_size`` for ``heartbeit``, else 224; ``model_size`` None ->
      the checkpoint's ``size`` for ``heartbeit`` (so ``config.yaml`` names the architecture).

    Raises
    ------
    CohortNotFoundError, PretrainRunNotFoundError
    """
    out_root = Path(cfg.out_root)
    cohort = cfg.cohort_run
    if not cohort:
        default = out_root / "01_preprocess" / cfg.task
        found = default if default.is_dir() else _latest_complete(
            out_root / "01_preprocess", lambda p: _config_task(p) == cfg.task)
        if found is None:
            raise CohortNotFoundError(
                f"parameter 'cohort_run' is not set (None) and no cohort store for task {cfg.task!r} was found "
                f"(looked for {default} and complete runs in {out_root / '01_preprocess'}); run "
                f"notebooks/01_preprocess.ipynb with -p task {cfg.task} first, or pass -p cohort_run <run folder>")
        cohort = str(found)
    if not Path(cohort).is_dir():
        raise CohortNotFoundError(f"parameter 'cohort_run': {cohort} does not exist; run "
                                  f"notebooks/01_preprocess.ipynb first or pass the folder of an existing cohort store")
    if not (Path(cohort) / "manifest.parquet").is_file():
        raise CohortNotFoundError(f"parameter 'cohort_run': {cohort} holds no cohort store (no manifest.parquet); "
                                  "it is not a finished 01_preprocess run - rerun notebooks/01_preprocess.ipynb")
    if models.model_family(cfg.model) == "signal":
        return _resolve_signal_inputs(dataclasses.replace(cfg, cohort_run=cohort))
    pretrain = cfg.pretrain_run
    if models.model_spec(cfg.model).source == "pretrain_checkpoint" and not cfg.weights:
        pretrain = _pretrain_run(cfg, "image")
    image_size, model_size = cfg.image_size, cfg.model_size
    ylim = tuple(cfg.ylim_mv) if cfg.ylim_mv is not None else tuple(render.DEFAULT_YLIM_MV)
    if models.model_spec(cfg.model).source == "pretrain_checkpoint":
        # heartbeit fine-tunes at its pretraining size, architecture and amplitude range: record them in config.yaml
        ck = models.load_pretrain_checkpoint(model_weights(dataclasses.replace(cfg, pretrain_run=pretrain)), mmap=True)
        bc = ck["backbone_config"]
        image_size, model_size = image_size or int(bc["img_size"]), model_size or str(bc["size"])
        ylim = checkpoint_ylim(ck, cfg.ylim_mv, pretrain or cfg.weights)
    return dataclasses.replace(cfg, cohort_run=cohort, pretrain_run=pretrain,
                               image_size=image_size or DEFAULT_IMAGE_SIZE, model_size=model_size, ylim_mv=ylim)


def checkpoint_ylim(ck: Mapping[str, Any], asked: Sequence[float] | None, where: Any) -> tuple[float, float]:
    """The amplitude range (lo, hi) mV a pretraining checkpoint's images were drawn at (``render.ylim_mv``;
    checkpoints before issue 18 lack it and were drawn at the old default, +-2 mV). ``asked`` (the
    ``ylim_mv`` parameter) must be None or equal it, else :class:`runs.ConfigError` naming both."""
    got = render.saved_ylim_mv((ck.get("render") or {}).get("ylim_mv"))
    if asked is not None and tuple(float(v) for v in asked) != got:
        raise runs.ConfigError(f"parameter 'ylim_mv' = {tuple(asked)} mV, but the pretraining checkpoint {where} "
                               f"was drawn at ylim_mv = {got} mV: fine-tuning must see the pretraining scale "
                               "(leave ylim_mv None to take the checkpoint's)")
    return got


def _pretrain_modality(run_dir: Path) -> str:
    """``modality`` of a 02_pretrain run's config.yaml (runs from before the parameter: ``image``)."""
    try:
        return str((yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("modality") or "image")
    except Exception:
        return "image"


def _pretrain_run(cfg: FinetuneConfig, modality: str) -> str:
    """``cfg.pretrain_run``, or when None the latest complete 02_pretrain run of ``modality`` under ``out_root``;
    either must hold ``checkpoints/last.pt`` (or be a checkpoint file), else :class:`PretrainRunNotFoundError`."""
    pretrain = cfg.pretrain_run
    if not pretrain:
        root = Path(cfg.out_root) / "02_pretrain"
        found = _latest_complete(root, lambda p: (p / "checkpoints" / "last.pt").is_file()
                                 and _pretrain_modality(p) == modality)
        if found is None:
            raise PretrainRunNotFoundError(
                f"model {cfg.model!r} needs a pretraining run with modality {modality}: parameter 'pretrain_run' "
                f"is not set (None) and {root} holds no complete one with checkpoints/last.pt; run "
                f"notebooks/02_pretrain.ipynb (-p modality {modality}) or pass -p pretrain_run <run folder>")
        pretrain = str(found)
    if not (Path(pretrain) / "checkpoints" / "last.pt").is_file() and not Path(pretrain).is_file():
        raise PretrainRunNotFoundError(f"parameter 'pretrain_run': {pretrain} holds no checkpoints/last.pt")
    return pretrain


def _resolve_signal_inputs(cfg: FinetuneConfig) -> FinetuneConfig:
    """:func:`resolve_inputs` for the signal models: ``stmem`` finds its signal pretraining run (latest complete
    ``02_pretrain`` run with ``modality: signal`` when ``pretrain_run`` is None) and takes the checkpoint's size;
    ``image_size`` becomes None (signal models read no image)."""
    pretrain, size = cfg.pretrain_run, cfg.model_size
    if cfg.model == "stmem" and not cfg.weights:
        pretrain = _pretrain_run(cfg, "signal")
    if cfg.model == "stmem" and not size:
        ck = models.load_weights_file(models.resolve_pretrain_checkpoint(cfg.weights or pretrain))
        size = str(ck["backbone_config"]["size"])
    return dataclasses.replace(cfg, pretrain_run=pretrain if cfg.model == "stmem" else None, image_size=None,
                               model_size=size)


def model_weights(cfg: FinetuneConfig) -> str | None:
    """The weights argument of :func:`models.create_model` for ``cfg`` (None = offline cache / scratch)."""
    if models.model_family(cfg.model) == "signal":
        return (cfg.weights or cfg.pretrain_run or None) if cfg.model == "stmem" else None
    spec = models.model_spec(cfg.model)
    if spec.source is None:
        return None
    if spec.source == "pretrain_checkpoint":
        return cfg.weights or cfg.pretrain_run or None
    return cfg.weights or None


def _check_resolved(cfg: FinetuneConfig) -> None:
    if cfg.image_size is None and models.model_family(cfg.model) == "image":
        raise runs.ConfigError("image_size is None (automatic): pass the config through finetune.resolve_inputs first")


def build_model(cfg: FinetuneConfig, store=None) -> tuple[nn.Module, tuple[tuple[float, ...], tuple[float, ...]]]:
    """The model (2-neuron head, seeded init) and the (mean, std) normalisation of its inputs.

    Pretrained models: the normalisation their weights expect (heartbeit: its checkpoint's, ImageNet models:
    ImageNet's). Transformers from scratch (``vit_b16_scratch``, ``beit_b16_scratch``, ``heartbeit_scratch``)
    with ``store``: the rendered training images' own mean/std (:func:`scratch_normalization`); at 0.5 / 0.5 they
    stay at the prevalence loss (issue 18). CNNs from scratch keep 0.5 / 0.5: BatchNorm after their stem removes
    the input offset, and their results stay comparable with earlier runs.
    """
    _check_resolved(cfg)
    torch.manual_seed(cfg.seed)
    weights = model_weights(cfg)
    n_out = len(store.classes) if getattr(store, "multilabel", False) else 2
    if models.model_family(cfg.model) == "signal":  # inputs are millivolts already (signal_data.SCALE_UV)
        in_chans = store.shape[0] if store is not None and hasattr(store, "shape") else N_LEADS
        model = models.create_model(cfg.model, num_classes=n_out, weights=weights, size=cfg.model_size or None,
                                    in_chans=in_chans, signal_rate=float(cfg.signal_rate))
        if cfg.signal_init == "benchmark":
            benchmark_weight_init(model)
        return model, signal_normalization(cfg, store)
    if store is not None:
        require_paper_layout(store)
    model = models.create_model(cfg.model, num_classes=n_out, weights=weights, size=cfg.model_size or None,
                                img_size=cfg.image_size)
    spec = models.model_spec(cfg.model)
    if store is not None and spec.source is None and spec.family in TRANSFORMER_FAMILIES:
        return model, scratch_normalization(cfg, store)
    return model, models.normalization_for(cfg.model, weights=weights)


TRANSFORMER_FAMILIES = ("vit", "beit")  # image transformers: no BatchNorm to absorb the input offset


def signal_normalization(cfg: FinetuneConfig, store) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean,), (std,) of a signal model's millivolt inputs: identity, or with ``standardize`` the mean and standard
    deviation of every value of the run's training rows (``signal_data.fit_standardizer``: the PTB-XL benchmark's
    StandardScaler, fitted on the training split only, so no evaluation value reaches the input)."""
    if not cfg.standardize:
        return SIGNAL_NORMALIZATION
    if store is None:
        raise runs.ConfigError("parameter 'standardize': needs the cohort store to fit the training statistics")
    idx = np.asarray(store.indices("train", cfg.fraction), np.int64)
    idx = idx[store.labels(idx) >= 0]
    mean, std = fit_standardizer(store, idx, float(cfg.signal_rate))
    return (mean,), (std,)


def scratch_normalization(cfg: FinetuneConfig, store) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) x 3 channels of the rendered images of the store's whole training split (256 rows drawn with
    seed 0, ``render.image_stats``): one normaliser per (cohort, layout, size, ylim_mv), the same at every fraction."""
    st = render.image_stats(store, store.indices("train"), cfg.image_size, cfg.layout, ylim_mv=cfg.ylim_mv)
    return tuple(st["mean"] * 3), tuple(st["std"] * 3)


# ---------------------------------------------------------------- splits and data



# ---------------------------------------------------------------- training driver


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


def make_optimizer(cfg: FinetuneConfig, params, total_steps: int):
    """Adam (or AdamW: ``optimizer``) + OneCycleLR stepped once per batch: lr ``lr_start`` -> ``lr`` (after
    ``pct_start`` = 30 % of the steps) -> ``lr_start / 1e4`` (cosine), as the paper's "OneCycle between 3e-4 and
    1e-3"; groups with an ``lr_scale`` (:func:`optimizer_params`) follow the same cycle scaled. fastai's
    ``fit_one_cycle(lr)`` of the PTB-XL benchmark is ``optimizer=adamw, adam_beta2=0.99, lr_start=lr/25``."""
    params = list(params)
    kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    opt = kind(params, lr=cfg.lr_start, betas=(0.9, cfg.adam_beta2), weight_decay=cfg.weight_decay)
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
        if kw:
            raise SplitError("cache_images does not apply to multi-label or signal datasets")
        return image_cache.dataset(factory, store, split, cfg.image_size, cfg.layout, cfg.num_workers)

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
    opt, sched = make_optimizer(cfg, optimizer_params(cfg, model), cfg.epochs * len(train_loader))
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


def _resume_key(cfg: FinetuneConfig) -> dict[str, Any]:
    """The config fields a resumed run must share with the interrupted one (all but ``resume``)."""
    return {k: v for k, v in cfg.to_dict().items() if k != "resume"}


def save_resume_state(run_dir: Path, cfg: FinetuneConfig, epoch: int, log: list[dict], best_epoch: int | None,
                      best_value: float, model: nn.Module, opt, sched, scaler, train_loader) -> None:
    """``resume.pt`` after ``epoch``: weights, optimiser, schedule, scaler, RNG and shuffling-generator states, the
    log so far and the best epoch, so that a resumed run continues exactly as an uninterrupted one (on CPU)."""
    state = {"config": _resume_key(cfg), "epoch": epoch, "log": log, "best_epoch": best_epoch,
             "best_value": best_value, "model": model.state_dict(), "opt": opt.state_dict(),
             "sched": sched.state_dict(), "scaler": scaler.state_dict(), "rng_cpu": torch.get_rng_state(),
             "rng_loader": train_loader.generator.get_state(),
             # the current device's state only: a requeued job may see another number of GPUs
             "rng_cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}
    utils.atomic_torch_save(state, run_dir / RESUME_FILE)


def load_resume_state(run_dir: Path, cfg: FinetuneConfig) -> dict | None:
    """The ``resume.pt`` of an interrupted run with the same config, else None (start clean).

    Raises
    ------
    runs.ConfigError : the folder's ``resume.pt`` was written with other parameters.
    """
    path = Path(run_dir) / RESUME_FILE
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    old, new = state["config"], _resume_key(cfg)
    defaults = _resume_key(FinetuneConfig(model=cfg.model))
    # a parameter added to FinetuneConfig after the run started resumes when it is at its default (the run used it)
    diff = sorted(k for k in set(old) | set(new)
                  if ((old[k] != new.get(k)) if k in old else (new[k] != defaults.get(k))))
    if diff:
        raise runs.ConfigError(f"{path}: written by a run with other parameters ({diff}); delete the run folder "
                               "or run with resume=False")
    return state


def restore_resume_state(state: dict, model: nn.Module, opt, sched, scaler, train_loader
                         ) -> tuple[int, list[dict], int | None, float]:
    """Load ``state`` into the training objects; returns (first epoch to run, log, best epoch, best value)."""
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng_cpu"])
    train_loader.generator.set_state(state["rng_loader"])
    if state["rng_cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["rng_cuda"])
    return state["epoch"] + 1, list(state["log"]), state["best_epoch"], float(state["best_value"])


def _nan_to_none(d: Mapping[str, Any]) -> dict[str, Any]:
    """NaN (a metric of an empty or one-class split) -> None, so the JSON files stay strict JSON."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def plot_learning_curves(log: Sequence[Mapping[str, Any]], best_epoch: int | None = None,
                         path: str | os.PathLike | None = None, title: str = ""):
    """Train loss and per-split AUROC/AUPRC against epoch; the chosen epoch dashed. Saved to ``path``.

    Returns a ``matplotlib.figure.Figure`` (not registered with pyplot: nothing to close; a notebook
    displays it as the cell's value).
    """
    df = pd.DataFrame(list(log))
    fig = Figure(figsize=(12, 3.2))
    axes = fig.subplots(1, 3)
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.16, top=0.86 if title else 0.95, wspace=0.25)
    axes[0].plot(df["epoch"], df["train_loss"], marker="o", ms=3, color="k")
    axes[0].set(xlabel="epoch", ylabel="train loss (CE)")
    for ax, metric in zip(axes[1:], ("auroc", "auprc")):
        for s, c in zip(EVAL_SPLITS, ("C0", "C1", "C2")):
            col = f"{s}_{metric}"
            if col in df and df[col].notna().any():
                ax.plot(df["epoch"], df[col].astype(float), marker="o", ms=3, color=c, label=s)
        ax.set(xlabel="epoch", ylabel=metric.upper())
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
        if best_epoch is not None:
            ax.axvline(best_epoch, ls="--", color="grey", lw=1)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    if path is not None:
        fig.savefig(path, dpi=80)
    return fig


# ---------------------------------------------------------------- whole run (the notebook's steps)


def run(cfg: FinetuneConfig, run_dir: str | os.PathLike, dataset_factory: Callable | None = None, store=None,
        figure: bool = True, image_cache: ImageCache | None = None) -> dict[str, Any]:
    """The notebook's steps after its config cell (store, splits, model, training, learning curves, metrics),
    finishing the run folder ``run_dir`` (made by ``runs.start_run`` from ``cfg``); returns ``metrics.json``'s
    content. ``cfg`` is resolved already (:func:`resolve_inputs`, as the notebook does before ``start_run`` so that
    ``config.yaml`` names the upstream runs); the keywords are :func:`run_finetune`'s."""
    return _run_steps(cfg, run_dir, dataset_factory, store, figure, image_cache).metrics


def _run_steps(cfg: FinetuneConfig, run_dir: str | os.PathLike, dataset_factory: Callable | None, store,
               figure: bool, image_cache: ImageCache | None) -> FitResult:
    run_dir = Path(run_dir)
    if store is None:
        store = open_store(cfg)
    splits = make_splits(store, cfg.fraction, cfg.val_fraction)
    model, norm = build_model(cfg, store)
    result = fit(cfg, model, store, splits, run_dir, normalization=norm, dataset_factory=dataset_factory,
                 image_cache=image_cache)
    if figure:
        plot_learning_curves(result.log, result.best_epoch, run_dir / "learning_curves.png", title=cfg.run_id)
    runs.finish_run(run_dir, metrics=result.metrics, data_hashes={**result.data_hashes, **input_hashes(cfg)})
    return result


def run_finetune(cfg: FinetuneConfig, dataset_factory: Callable | None = None, store=None,
                 figure: bool = True, image_cache: ImageCache | None = None) -> FitResult:
    """The notebook's steps in-process: resolve inputs, start the run folder, then :func:`run`'s steps.

    Used by the sweep's in-process executor and tests; ``notebooks/03_finetune.ipynb`` calls the
    same functions cell by cell. ``figure=False`` skips ``learning_curves.png`` (about 0.3 s of
    matplotlib per run, the largest cost of a tiny CPU run).
    """
    cfg = resolve_inputs(cfg)
    run_dir = runs.start_run("03_finetune", cfg)
    return _run_steps(cfg, run_dir, dataset_factory, store, figure, image_cache)


def open_store(cfg: FinetuneConfig):
    """``cohorts.CohortStore(cfg.cohort_run)``, checked to hold ``cfg.task``."""
    store = cohorts.CohortStore(cfg.cohort_run)
    if getattr(store, "task", cfg.task) != cfg.task:
        raise runs.ConfigError(f"parameter 'task': {cfg.task!r} but cohort_run {cfg.cohort_run} holds task "
                               f"{store.task!r}")
    return store


def input_hashes(cfg: FinetuneConfig) -> dict[str, str]:
    """sha256 of the weights file the model was initialised from (if any)."""
    w = model_weights(cfg)
    signal = models.model_family(cfg.model) == "signal"
    if w is None:
        p = models.find_cached_weights(cfg.model) if not signal and models.model_spec(cfg.model).source else None
    elif signal or models.model_spec(cfg.model).source == "pretrain_checkpoint":
        p = models.resolve_pretrain_checkpoint(w)
    else:
        p = Path(w)
    return {"weights": runs.file_sha256(p)} if p is not None and Path(p).is_file() else {}
