"""Notebook 07 (``notebooks/07_predict.ipynb``, ``python -m heartbeit_lib.predict``): score ECGs a trained model
has never seen, validate it externally when labels exist, and draw one page per chosen ECG.

The steps, each one function here (the notebook calls them in order, :func:`run` calls them all):

1. :func:`load_ensemble`: the ``03_finetune`` run folders of ``finetune_runs`` (one run, or a seed ensemble whose
   probabilities are averaged; image and signal models may be mixed), each checked to be a *finished* run and
   rebuilt with :func:`heartbeit_lib.classify.checkpoint.load_finetune_run`; what they were trained on is read from
   them, never guessed: an image model's rendering (image size, layout, amplitude range) from
   ``model.json``/``config.yaml``, a signal model's input rate (``signal_rate``) from ``model.json``, the
   preprocessing and rate from ``store.json`` of their cohort store. Members that disagree (image members on the
   rendering, all on the preprocessing and the classes), or a rendering parameter the user sets to another value, is
   an error naming both values.
2. :func:`prepare_inputs`: either rows of an existing cohort store (``cohort_run``, optional ``split``), or raw files
   under ``data_root`` (``source`` muse, wfdb or ptbxl), read and preprocessed by the cohort builder itself
   (:func:`heartbeit_lib.cohorts.build_store` with the training store's ``preprocess_kw``) into ``<run>/cohort``:
   the same reader, the same filters, the same float16 storage the model was trained on, and the same rejects
   (``len(inputs) == len(predictions) + len(rejects)``). Patient ids are stored only as salted hashes
   (``salt_file``, else the per-user default salt of :mod:`heartbeit_lib.cohorts.ids`, the one stores use by default).
3. :func:`score`: image members read the signals rendered with the recorded rendering, signal members the
   signals resampled to their rate (``classify.signal_data.prepare_signals``, as in training), each scored by 03's
   own ``classify.engine.predict`` (its normalisation, and for signal models trained on crops its test-time windows
   combined by the recorded ``window_aggregate``); one probability per member and their mean (``score``).
4. :func:`operating_threshold`: chosen on the training runs' *validation* split (their ``predictions.parquet`` at
   the chosen epoch, averaged over members), Youden by default, a target sensitivity or a target specificity; never
   on the scored data. :func:`threshold_report`: its bootstrap interval and sensitivity/specificity on validation,
   a warning under :data:`MIN_VAL_POSITIVES` validation positives; :func:`operating_points`: the thresholds for
   sensitivity and specificity 0.80/0.90/0.95 on validation (and how they do on labelled scored ECGs).
5. :func:`validate`: when the scored ECGs carry labels, AUROC/AUPRC with bootstrap CIs, Brier, ECE, calibration
   slope/intercept and sensitivity/specificity/PPV/NPV at that threshold, for the training runs' internal test
   split next to the external data; optionally recalibrated (Platt or isotonic fitted on a named training split).
6. :func:`draw_pictures`: one PNG per chosen ECG and one multi-page PDF (:mod:`heartbeit_lib.report.ecg_page`)
   with the model input and its saliency map (:func:`heartbeit_lib.analysis.saliency.saliency_maps`; a signal
   model's lead x time map drawn into the same layout, :func:`member_maps`).

Multi-label models (``model.json`` ``multilabel: true`` and its ``classes``; e.g. the PTB-XL benchmark tasks): one
sigmoid per class, and every step above is done class by class: ``predictions.csv`` holds ``label:<c>``,
``score:<c>`` (the members' mean), ``score_<member>:<c>`` and ``decision:<c>`` per class; each class has its own
threshold, chosen on that class's validation labels and scores (``threshold.json`` ``classes``); the operating points
and validation rows carry a ``class`` column; ``metrics.json`` adds the macro AUROC per validation data. An ensemble
averages runs of the same classes only (a :class:`MismatchError` otherwise). Labels of raw files come from a CSV with
``record_id`` and one 0/1 column per class (PTB-XL: from the task).

Files in ``<out_root>/07_predict/<run_id>/``: ``predictions.csv``, ``rejects.csv``, ``threshold.json``,
``operating_points.csv``,
``validation.csv`` and ``reliability.png`` (labels only), ``pictures/*.png`` and ``pictures.pdf``, ``cohort/``
(the preprocessed inputs), ``config.yaml``, ``metrics.json`` and ``run.json`` (with ``training_runs``: each
member's folder, its run.json, config and file hashes).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import sys
import typing
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from matplotlib.figure import Figure

from heartbeit_lib import render
from heartbeit_lib.analysis import calibration, metrics
from heartbeit_lib.analysis.saliency import (METHODS, is_transformer, saliency_maps, signal_saliency,
                                             to_image, to_store_rate)
from heartbeit_lib.analysis.saliency.signal_maps import gradcam_layer
from heartbeit_lib.analysis.saliency.errors import UnsupportedMethodError
from heartbeit_lib import safety
from heartbeit_lib.classify.checkpoint import (MODEL_RECORD, WEIGHTS, FinetuneRunError, load_finetune_run,
                                                read_metrics)
from heartbeit_lib.classify import engine
from heartbeit_lib.classify.engine import SCORE_PREFIX
from heartbeit_lib.classify.signal_data import crop_length, prepare_signals
from heartbeit_lib.cohorts import (LABEL_PREFIX, REJECT_COLUMNS, STORE_FS, CohortStore, Source,
                                   build_store, clean_id, load_task,
                                   muse_source, output_leads, ptbxl_source, wfdb_source)
from heartbeit_lib.cohorts.sources import add_label_matrix
from heartbeit_lib.pipeline import overlap, runs
from heartbeit_lib.report import ecg_page
from heartbeit_lib.safety import file_name_from, write_csv
from heartbeit_lib.utils import atomic_write, resolve_device

NOTEBOOK = "07_predict"
SPLITS = ("train", "val", "test", "external", "unassigned")
CHUNK = 256  # ECGs rendered at once (256 x 224 x 224 uint8 = 13 MB)
OPERATING_TARGETS = (0.80, 0.90, 0.95)  # sensitivities and specificities offered in operating_points.csv
MIN_VAL_POSITIVES = 50  # fewer validation positives than this: the threshold is a rough estimate (warned)
PICTURE_SIZE = 224  # px of the model-input panel of a signal-only ensemble's pages (its saliency drawn in stack8)
DECISION_PREFIX = "decision:"  # predictions.csv column of one class of a multi-label model: decision:<class> (0/1)


class PredictError(runs.ConfigError):
    """Bad input to 07_predict (names the parameter or file and the reason)."""


class MismatchError(PredictError):
    """Rendering or preprocessing that differs from what the model was trained with (names both values)."""


@dataclasses.dataclass(frozen=True)
class PredictConfig(runs.TypedConfig):
    """Parameters of ``notebooks/07_predict.ipynb`` (its parameters cell is these field lines)."""

    finetune_runs: tuple[str, ...] = ("outputs/03_finetune/demo-heartbeit-f1.0-s0",)  # 03_finetune run folder(s); several: probabilities averaged
    cohort_run: str | None = None  # 01_preprocess store to score (None: raw files under data_root)
    split: str | None = None  # cohort_run: split to score (train, val, test, external, unassigned); None: all rows
    data_root: str | None = None  # folder of raw ECGs: MUSE XML, WFDB records or a PTB-XL root (instead of cohort_run)
    source: str = "muse"  # format under data_root: muse, wfdb or ptbxl
    labels: str | None = None  # CSV: record_id (file stem or path without suffix), label 0/1 (multi-label models: one 0/1 column per class); None: unlabelled (ptbxl: task labels)
    ptbxl_database: str = "ptbxl_database.csv"  # source ptbxl: record table under data_root
    ptbxl_rate: int | None = None  # source ptbxl: 100 or 500 Hz files; None: 500 if every record has one, else 100
    salt_file: str | None = None  # patient-hash salt file (the training store's); None: the per-user default salt (HEARTBEIT_SALT_FILE, else ~/.local/share/heartbeit/salt)
    image_size: int | None = None  # None: the size the model was trained at; another value is an error
    layout: str | None = None  # None: the layout the model was trained on; another value is an error
    ylim_mv: tuple[float, ...] | None = None  # (lo, hi) mV per band; None: as trained (if recorded); another value is an error
    threshold_method: str = "youden"  # threshold on the training runs' val split: youden, sensitivity or specificity
    target_sensitivity: float | None = None  # threshold_method sensitivity: sensitivity to reach on val, in (0, 1]
    target_specificity: float | None = None  # threshold_method specificity: specificity to reach on val, in (0, 1]
    recalibrate: str | None = None  # platt or isotonic; None: no recalibration
    recalibrate_on: str = "val"  # training-run split the calibrator is fitted on: val or test (never the evaluated one)
    pictures: str = "top"  # per-ECG pages: top (highest scores), positives (decision 1), ids (picture_ids), none
    n_pictures: int = 4  # top / positives: at most this many pages
    picture_ids: tuple[str, ...] = ()  # pictures ids: record ids to draw
    saliency_method: str | None = "gradcam"  # map on the model input: fullgrad, gradcam, rollout (signal models: gradcam on 1-D CNNs, else integrated gradients); None: no map
    n_boot: int = 500  # bootstrap resamples of the AUROC/AUPRC confidence intervals
    batch_size: int = 64  # images per forward pass
    workers: int = 1  # processes reading raw files (data_root), one store shard each (2 measured slower than 1 on a loaded 2-core machine: benchmarks/bench_predict.py)
    device: str | None = None  # cpu, cuda, cuda:N; None: cuda when available
    seed: int = 0  # bootstrap seed
    out_root: str = "outputs"  # root of the run folders
    run_id: str | None = None  # run folder name (None: a timestamp)

    choices: typing.ClassVar[dict[str, tuple]] = {
        "source": ("muse", "wfdb", "ptbxl"), "split": (None, *SPLITS), "ptbxl_rate": (None, 100, 500),
        "threshold_method": calibration.THRESHOLD_METHODS, "recalibrate": (None, *calibration.CALIBRATION_METHODS),
        "recalibrate_on": ("val", "test"), "pictures": ("top", "positives", "ids", "none"),
        "saliency_method": (None, *METHODS)}

    def validate(self) -> None:
        if not [r for r in self.finetune_runs if r.strip()]:
            raise PredictError("parameter 'finetune_runs': empty; pass one or more 03_finetune run folders")
        if bool(self.cohort_run) == bool(self.data_root):
            raise PredictError("parameters 'cohort_run' / 'data_root': pass exactly one (a cohort store, or a folder "
                               f"of raw files), got cohort_run={self.cohort_run!r}, data_root={self.data_root!r}")
        if self.split and not self.cohort_run:
            raise PredictError("parameter 'split': only with cohort_run")
        for name in ("sensitivity", "specificity"):
            target = getattr(self, f"target_{name}")
            if (self.threshold_method == name) != (target is not None):
                raise PredictError(f"parameters 'threshold_method'/'target_{name}': the target is required for "
                                   f"{name!r} and only allowed there (got {self.threshold_method!r}, {target!r})")
            if target is not None and not 0 < target <= 1:
                raise PredictError(f"parameter 'target_{name}': {target!r} is not in (0, 1]")
        if self.ylim_mv is not None and len(self.ylim_mv) != 2:
            raise PredictError(f"parameter 'ylim_mv': {list(self.ylim_mv)} is not a pair (lo, hi) in mV")
        if self.pictures == "ids" and not self.picture_ids:
            raise PredictError("parameter 'picture_ids': empty with pictures=ids")
        if self.workers < 1:
            raise PredictError(f"parameter 'workers': {self.workers} must be >= 1")
        for name in ("n_boot", "batch_size"):
            if getattr(self, name) < 1:
                raise PredictError(f"parameter {name!r}: {getattr(self, name)} must be >= 1")


# ======================================================================== 1. the trained model(s)


@dataclasses.dataclass(frozen=True)
class Rendering:
    """What the ensemble was trained on: for its image models the image side (px), layout and amplitude range (mV,
    None = layout default), all None when every member is a signal model; the preprocessing keyword arguments of the
    cohort store (``store.json``), its task and its signal rate ``fs`` (Hz)."""

    image_size: int | None
    layout: str | None
    ylim_mv: tuple[float, float] | None
    preprocess_kw: dict | None
    task: str
    fs: float = float(STORE_FS)
    classes: tuple[str, ...] = ()  # a multi-label ensemble's classes (labels CSV columns of raw files), () binary


IMAGE_FIELDS = ("image_size", "layout", "ylim_mv")
Thresholds = typing.Union[calibration.Threshold, dict]  # one threshold, or class -> threshold (multi-label)


@dataclasses.dataclass
class Member:
    """One trained run: its folder, model (eval mode), normalisation and recorded files; ``family`` image (reads
    rendered images) or signal (reads the store's signals resampled to ``signal_rate`` Hz)."""

    run_dir: Path
    name: str
    model: nn.Module
    normalize: tuple
    config: dict
    metrics: dict
    rendering: Rendering
    family: str = "image"
    signal_rate: float | None = None
    classes: tuple[str, ...] = ()  # a multi-label model's classes (one sigmoid each, model.json order); () binary
    crop_seconds: float | None = None  # signal models trained on crops: scored on windows of this length (as 03)
    window_aggregate: str = "mean"  # how the windows' outputs are combined (03's ``window_aggregate``)

    @property
    def multilabel(self) -> bool:
        return bool(self.classes)


def _resolve(path: str) -> Path:
    """A path as given, else relative to the repository root (run folders record paths relative to it)."""
    p = Path(path)
    return p if p.exists() or p.is_absolute() else runs.REPO_ROOT / p


def check_finetune_run(run_dir: Path) -> None:
    """A finished 03_finetune run folder, or :class:`FinetuneRunError` naming the missing file (a flat list of
    checks): ``config.yaml``, ``model_best.pt``, ``run.json`` with a finish time, ``metrics.json`` with
    ``best_epoch``, ``predictions.parquet`` (the validation scores the threshold is chosen on)."""
    if not run_dir.is_dir():
        raise FinetuneRunError(f"parameter 'finetune_runs': {run_dir} is not a folder")
    for f in ("config.yaml", WEIGHTS, "run.json", "metrics.json", "predictions.parquet"):
        if not (run_dir / f).is_file():
            raise FinetuneRunError(f"{run_dir / f}: missing; {run_dir} is not a finished 03_finetune run")
    info = _run_file(safety.read_json_mapping, run_dir / "run.json")
    if info.get("notebook", "03_finetune") != "03_finetune":
        raise FinetuneRunError(f"{run_dir / 'run.json'}: written by {info.get('notebook')!r}, not 03_finetune")
    if not info.get("finished"):
        raise FinetuneRunError(f"{run_dir / 'run.json'}: no finish time; the 03_finetune run did not finish")
    if "best_epoch" not in read_metrics(run_dir):
        raise FinetuneRunError(f"{run_dir / 'metrics.json'}: no best_epoch; not a finished 03_finetune run")


def _run_file(read: Any, path: Path) -> dict:
    """``read(path)`` (a :mod:`heartbeit_lib.safety` reader) with its error as :class:`FinetuneRunError`."""
    try:
        return read(path)
    except safety.RunFileError as e:
        raise FinetuneRunError(str(e)) from None


def _recorded_rendering(run_dir: Path, info: dict) -> Rendering:
    """The rendering of ``model.json`` (checked against ``config.yaml``; a signal model has none) and the store's
    preprocessing and rate."""
    cfg = info["config"]
    signal = info.get("family") == "signal"
    for key, rec in (("image_size", info["image_size"]), ("layout", info["layout"])):
        if not signal and cfg.get(key) not in (None, rec) and (run_dir / MODEL_RECORD).is_file():
            raise MismatchError(f"{run_dir}: {MODEL_RECORD} records {key} {rec!r} but config.yaml {cfg.get(key)!r}")
    ylim = None if signal else render.saved_ylim_mv(info.get("ylim_mv", cfg.get("ylim_mv")))
    cohort = cfg.get("cohort_run")
    if not cohort or not (_resolve(cohort) / "store.json").is_file():
        raise FinetuneRunError(f"{run_dir / 'config.yaml'}: its cohort store {cohort!r} (cohort_run) is not found; "
                               "its store.json records the preprocessing the model was trained with")
    store_info = _run_file(safety.read_json_mapping, _resolve(cohort) / "store.json")
    return Rendering(None if signal else int(info["image_size"]), None if signal else str(info["layout"]),
                     None if ylim is None else tuple(float(v) for v in ylim),
                     store_info.get("preprocess_kw"), str(store_info.get("task", cfg.get("task", ""))),
                     float(store_info.get("fs", STORE_FS)))


def _recorded_outputs(run_dir: Path, info: dict) -> dict:
    """A member's classes (``model.json`` ``classes`` when ``multilabel``) and its test-time windows
    (``crop_seconds``, ``window_aggregate``: signal models trained on crops were scored by 03 on windows)."""
    out: dict[str, Any] = {}
    if info.get("multilabel"):
        classes = info.get("classes")
        if (not isinstance(classes, list) or not classes or len(classes) != info["num_classes"]
                or not all(isinstance(c, str) and 0 < len(c) <= 64 for c in classes) or len(set(classes)) < len(classes)):
            raise FinetuneRunError(f"{run_dir / MODEL_RECORD}: multilabel with classes {str(classes)[:80]!r}, not "
                                   f"{info['num_classes']} distinct class names (num_classes)")
        out["classes"] = tuple(classes)
    crop = info.get("crop_seconds")
    if crop is not None and info.get("family") == "signal":
        agg = info.get("window_aggregate", "mean")
        if not isinstance(crop, (int, float)) or isinstance(crop, bool) or not 0 < crop <= 3600 or agg not in ("mean", "max"):
            raise FinetuneRunError(f"{run_dir / MODEL_RECORD}: crop_seconds {crop!r} / window_aggregate {agg!r} are "
                                   "not a positive number of seconds and mean or max")
        out.update(crop_seconds=float(crop), window_aggregate=agg)
    return out


def _same(what: str, a: Any, b: Any, where_a: str, where_b: str) -> None:
    if json.dumps(a, sort_keys=True, default=list) != json.dumps(b, sort_keys=True, default=list):
        raise MismatchError(f"{what}: {a!r} ({where_a}) != {b!r} ({where_b})")


def load_ensemble(cfg: PredictConfig, device: str | torch.device = "cpu") -> tuple[list[Member], Rendering]:
    """The members of ``cfg.finetune_runs`` and their common :class:`Rendering`.

    Raises
    ------
    FinetuneRunError : a folder that is not a finished 03_finetune run, or weights that do not fit.
    MismatchError : members trained differently, or ``image_size``/``layout``/``ylim_mv`` set to another value.
    """
    members: list[Member] = []
    for entry in [e for e in cfg.finetune_runs if e.strip()]:
        run_dir = _resolve(entry)
        check_finetune_run(run_dir)
        model, info = load_finetune_run(run_dir, device)
        r = _recorded_rendering(run_dir, info)
        met = read_metrics(run_dir)
        family = str(info.get("family", "image"))
        rate = float(info.get("signal_rate") or 100.0) if family == "signal" else None
        members.append(Member(run_dir, run_dir.name, model, info["normalize"], info["config"], met, r, family, rate,
                              **_recorded_outputs(run_dir, info)))
    first = members[0]
    for m in members[1:]:  # one store preprocessing and task for all; one rendering for the image members
        for key in ("preprocess_kw", "task", "fs"):
            _same(f"ensemble {key}", getattr(first.rendering, key), getattr(m.rendering, key),
                  str(first.run_dir), str(m.run_dir))
        if m.classes != first.classes:  # averaged class by class: the same classes in the same order
            raise MismatchError(f"ensemble classes: {list(first.classes) or 'binary'} ({first.run_dir / MODEL_RECORD})"
                                f" != {list(m.classes) or 'binary'} ({m.run_dir / MODEL_RECORD}); an ensemble averages "
                                "runs of the same classes only")
    images = [m for m in members if m.family == "image"]
    for m in images[1:]:
        for key in IMAGE_FIELDS:
            _same(f"ensemble {key}", getattr(images[0].rendering, key), getattr(m.rendering, key),
                  str(images[0].run_dir), str(m.run_dir))
    rec = dataclasses.replace(images[0].rendering if images else first.rendering, classes=first.classes)
    for key in IMAGE_FIELDS:
        forced = getattr(cfg, key)
        if forced is not None and not images:
            raise MismatchError(f"parameter {key!r}: {forced!r}, but every model of finetune_runs is a signal model "
                                f"(trained on signals, no {key}; {first.run_dir / MODEL_RECORD})")
        if forced is not None:
            _same(f"parameter {key!r}", forced, getattr(rec, key), "parameter",
                  f"trained with, {images[0].run_dir / MODEL_RECORD}")
    return members, rec


def render_images(signals: np.ndarray, rendering: Rendering) -> np.ndarray:
    """(n, leads, T) microvolts -> (n, H, W) uint8, exactly as the training dataset rendered them (signal-only
    ensembles, which read no image: the pictures' default, :data:`PICTURE_SIZE` px ``stack8``)."""
    style = {} if rendering.ylim_mv is None else {"ylim_mv": rendering.ylim_mv}
    return render.render_ecg(signals, rendering.image_size or PICTURE_SIZE, rendering.layout or "stack8", **style)


def member_inputs(member: Member, signals: np.ndarray, grey: np.ndarray | None, rendering: Rendering) -> torch.Tensor:
    """What ``member`` reads: (n, 3, H, W) images in [0, 1] from ``grey`` (image models), or (n, leads, T')
    millivolts at its ``signal_rate`` from the store ``signals`` at ``rendering.fs`` Hz (signal models, exactly
    ``classify.signal_data.prepare_signals`` as in training)."""
    if member.family == "signal":
        return torch.from_numpy(prepare_signals(signals, rendering.fs, member.signal_rate))
    return torch.from_numpy(grey).float().div(255.0)[:, None].expand(-1, 3, -1, -1)


def member_normalization(member: Member, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The member's input normalisation as 03 applied it on the device (``(x - mean) / std``): per channel
    (1, 3, 1, 1) of an image model's [0, 1] images, per lead (1, leads|1, 1) of a signal model's millivolts (its
    recorded ``standardize`` statistics, identity when none were recorded)."""
    mean, std = member.normalize or ((), ())
    if not len(mean):
        mean, std = (0.0,), (1.0,)
    shape = (1, -1, 1) if member.family == "signal" else (1, -1, 1, 1)
    return (torch.tensor(mean, dtype=torch.float32, device=device).view(shape),
            torch.tensor(std, dtype=torch.float32, device=device).view(shape))


def member_windows(member: Member, n_samples: int) -> engine.Windows | None:
    """03's test-time windows for a signal member trained on ``crop_seconds`` crops of inputs ``n_samples`` long at
    its rate (``crop_length``; outputs combined by its ``window_aggregate``), None for whole-record models."""
    if member.family != "signal" or not member.crop_seconds:
        return None
    return engine.Windows(crop_length(member.crop_seconds, float(member.signal_rate), n_samples),
                          member.window_aggregate)


@torch.no_grad()
def member_probabilities(member: Member, x: torch.Tensor, batch_size: int) -> np.ndarray:
    """What 03 scored for ``member``'s inputs ``x`` (:func:`member_inputs`), with 03's own code
    (``classify.engine.predict``: its normalisation, test-time windows, softmax or sigmoid): (n,) float64 probability
    of class 1 (softmax over the two logits) of a binary model, (n, classes) float64 sigmoid per class of a
    multi-label one."""
    device = next(member.model.parameters()).device
    mean, std = member_normalization(member, device)
    batches = ((x[i:i + batch_size], None) for i in range(0, len(x), batch_size))
    out = engine.predict(member.model, batches, mean, std, device, multilabel=member.multilabel,
                         windows=member_windows(member, x.shape[-1]))
    return out.reshape(0, len(member.classes)) if member.multilabel and not len(out) else out


# ======================================================================== 2. inputs


@dataclasses.dataclass
class Inputs:
    """The ECGs to score: a cohort store and its rows, the input count and the rejects table."""

    store: CohortStore
    rows: np.ndarray  # (n,) store rows scored
    n_inputs: int
    rejects: pd.DataFrame  # file, record_id, stage, error_class, reason
    data_root: Path | None


def raw_source(cfg: PredictConfig, task: str, classes: Sequence[str] = ()) -> Source:
    """Raw files under ``cfg.data_root`` as a cohort :class:`Source`, labelled by ``cfg.labels`` (a CSV with
    ``record_id`` and ``label``; for a multi-label model's ``classes`` one 0/1 column per class) or, for PTB-XL, by
    the training ``task``."""
    root = Path(cfg.data_root)
    if not root.is_dir():
        raise PredictError(f"parameter 'data_root': {root} is not a folder")
    if cfg.source == "ptbxl":
        src = ptbxl_source(root, load_task(task), cfg.ptbxl_database, cfg.ptbxl_rate)
    else:
        src = (muse_source if cfg.source == "muse" else wfdb_source)(root, load_task("unlabelled"))
    if not len(src.inputs):
        raise PredictError(f"parameter 'data_root': no {cfg.source} records under {root}")
    if cfg.labels and classes:
        y = _label_matrix_from_csv(Path(cfg.labels), src.inputs["record_id"], classes)
        src.inputs = add_label_matrix(src.inputs.drop(columns=[c for c in src.inputs.columns
                                                               if c.startswith(LABEL_PREFIX)]), y, list(classes))
    elif cfg.labels:
        src.inputs["label"] = _labels_from_csv(Path(cfg.labels), src.inputs["record_id"])
    return src


def _label_matrix_from_csv(path: Path, record_ids: pd.Series, classes: Sequence[str]) -> np.ndarray:
    """(n, classes) int64 labels of a multi-label model's classes from ``path``: ``record_id`` and one 0/1 column
    per class named as the class (``cohorts.benchmark_labels``' table); -1 for a record the CSV does not list."""
    tab = _read_labels_csv(path, ["record_id", *classes], "one 0/1 column per class of the model")
    y = tab[list(classes)].apply(pd.to_numeric, errors="coerce")
    bad = ~y.isin([0, 1]).all(axis=1)
    if bad.any():
        raise PredictError(f"{path}: class labels must be 0 or 1; bad rows e.g. {tab.loc[bad, 'record_id'].head(3).tolist()}")
    by_id = dict(zip(tab["record_id"].map(clean_id), y.to_numpy(np.int64)))
    none = np.full(len(classes), -1, np.int64)
    return np.array([by_id.get(r, by_id.get(Path(r).name, none)) for r in record_ids], np.int64).reshape(-1, len(classes))


def _read_labels_csv(path: Path, columns: Sequence[str], what: str) -> pd.DataFrame:
    if not path.is_file():
        raise PredictError(f"parameter 'labels': {path} does not exist")
    tab = pd.read_csv(path, dtype={"record_id": str})
    miss = [c for c in columns if c not in tab.columns]
    if miss:
        raise PredictError(f"{path}: missing column(s) {miss}; needs record_id and {what}")
    return tab


def _labels_from_csv(path: Path, record_ids: pd.Series) -> np.ndarray:
    """Label (0/1, -1 when absent) of each record id from ``path`` (``record_id``: the id itself or its stem)."""
    tab = _read_labels_csv(path, ("record_id", "label"), "label (0/1)")
    lab = pd.to_numeric(tab["label"], errors="coerce")
    if not lab.isin([0, 1]).all():
        bad = tab.loc[~lab.isin([0, 1]), "record_id"].head(3).tolist()
        raise PredictError(f"{path}: label must be 0 or 1; bad rows e.g. {bad}")
    by_id = dict(zip(tab["record_id"].map(clean_id), lab.astype(int)))
    return np.array([by_id.get(r, by_id.get(Path(r).name, -1)) for r in record_ids], np.int64)


def prepare_inputs(cfg: PredictConfig, run_dir: str | os.PathLike, rendering: Rendering) -> Inputs:
    """The ECGs to score, preprocessed as the model's training store was (see the module docstring).

    Raises :class:`MismatchError` when ``cohort_run`` was preprocessed otherwise than the training store."""
    if cfg.cohort_run:
        store = CohortStore(_resolve(cfg.cohort_run))
        _same("preprocess_kw", store.info.get("preprocess_kw"), rendering.preprocess_kw,
              f"{store.root / 'store.json'}", "the training store's store.json")
        rows = np.asarray(store.indices(cfg.split) if cfg.split else np.arange(len(store)), np.int64)
        if not len(rows):
            raise PredictError(f"parameter 'split': {store.root} holds no ECG in split {cfg.split!r}")
        empty = pd.DataFrame(columns=["file", "record_id", "stage", "error_class", "reason"])
        return Inputs(store, rows, len(rows), empty, None)
    src = raw_source(cfg, rendering.task, rendering.classes)
    workers = read_workers(cfg.workers, len(src.inputs))
    store = build_store(src.inputs, src.reader, Path(run_dir) / "cohort", task_cfg="unlabelled",
                        preprocess_kw=rendering.preprocess_kw, salt_file=cfg.salt_file, workers=workers,
                        shard_size=max(64, math.ceil(len(src.inputs) / workers)) if workers > 1 else 512,
                        progress=False)  # one shard per worker: shards are the unit of parallel work
    root = Path(cfg.data_root)
    rej = store.rejects
    rejects = pd.DataFrame({"file": [_relative(p, root) for p in rej["source_path"]], "record_id": rej["record_id"],
                            "stage": rej["stage"], "error_class": rej["error_type"], "reason": rej["reason"]})
    assert len(src.inputs) == len(store) + len(rejects)  # every input scored or rejected, once
    return Inputs(store, np.arange(len(store), dtype=np.int64), len(src.inputs), rejects, root)


def read_workers(workers: int, n_files: int) -> int:
    """Processes that read and preprocess ``n_files`` raw files (the store build's ``spawn`` workers, one shard
    each): ``workers``, at most one per file. Each worker starts Python and imports the library; on the 2-core
    machine at load ~11 two workers scored 512 MUSE files at 0.19x (micro ViT) and 0.55x (xresnet1d101) the rate
    of one (``benchmarks/bench_predict.py``), so 1 is the default; try more on a quiet many-core machine."""
    return max(1, min(int(workers), n_files))


def _relative(path: str, root: Path | None) -> str:
    if root is None:
        return str(path)
    try:
        return os.path.relpath(path, root)
    except ValueError:
        return str(path)


# ======================================================================== 3. scores


def score(members: Sequence[Member], inputs: Inputs, rendering: Rendering, batch_size: int = 64) -> np.ndarray:
    """(n_members, n) probability of class 1 of every member for every scored ECG, or (n_members, n, classes) the
    sigmoid per class of multi-label members (read in chunks of :data:`CHUNK`; rendered once per chunk when an image
    model is among the members)."""
    out = np.zeros((len(members), len(inputs.rows), *((len(members[0].classes),) if members[0].multilabel else ())),
                   np.float64)
    need_images = any(m.family == "image" for m in members)
    for s in range(0, len(inputs.rows), CHUNK):
        sig = inputs.store.signals(inputs.rows[s:s + CHUNK])
        grey = render_images(sig, rendering) if need_images else None
        for k, m in enumerate(members):
            out[k, s:s + len(sig)] = member_probabilities(m, member_inputs(m, sig, grey, rendering), batch_size)
    return out


def member_columns(members: Sequence[Member]) -> list[str]:
    """``score_<run folder name>`` per member (suffixed ``_<k>`` when two folders share a name)."""
    cols: list[str] = []
    for k, m in enumerate(members):
        c = f"score_{m.name}"
        cols.append(c if c not in cols else f"{c}_{k}")
    return cols


def predictions_table(members: Sequence[Member], inputs: Inputs, member_scores: np.ndarray,
                      threshold: Thresholds) -> pd.DataFrame:
    """``record_id, path, patient_hash, label, score`` (ensemble mean), one column per member, ``decision``
    (1 when ``score >= threshold``).

    A multi-label ensemble (``threshold`` a dict class -> threshold): ``label:<c>`` (the scored store's label of
    class c, -1 when it has none), ``score:<c>`` (the members' mean sigmoid), ``score_<member>:<c>`` and
    ``decision:<c>`` (``score:<c> >= threshold[c]``) per class, in the model's class order."""
    man = inputs.store.manifest.iloc[inputs.rows]
    p = member_scores.mean(axis=0)
    df = pd.DataFrame({"record_id": man["record_id"].astype(str).to_numpy(),
                       "path": [_relative(s, inputs.data_root) for s in man["source_path"]],
                       "patient_hash": man["patient_hash"].astype(str).to_numpy()})
    classes = members[0].classes
    if not classes:
        df["label"], df["score"] = man["label"].to_numpy(np.int64), p
        for col, s in zip(member_columns(members), member_scores):
            df[col] = s
        df["decision"] = (p >= threshold.value).astype(np.int64)
        return df
    cols: dict[str, np.ndarray] = {}
    for j, c in enumerate(classes):
        lab = man.get(f"{LABEL_PREFIX}{c}")
        cols[f"{LABEL_PREFIX}{c}"] = np.full(len(man), -1, np.int64) if lab is None else lab.to_numpy(np.int64)
    cols.update({f"{SCORE_PREFIX}{c}": p[:, j] for j, c in enumerate(classes)})
    for col, s in zip(member_columns(members), member_scores):
        cols.update({f"{col}:{c}": s[:, j] for j, c in enumerate(classes)})
    cols.update({f"{DECISION_PREFIX}{c}": (p[:, j] >= threshold[c].value).astype(np.int64)
                 for j, c in enumerate(classes)})
    return pd.concat([df, pd.DataFrame(cols, index=df.index)], axis=1)


def class_view(pred: pd.DataFrame, cls: str | None) -> pd.DataFrame:
    """``pred`` with the ``label``, ``score`` and ``decision`` of class ``cls`` of a multi-label table (``pred``
    itself when ``cls`` is None): every per-class step is the binary step on this view."""
    if cls is None:
        return pred
    base = [c for c in ("record_id", "path", "patient_hash") if c in pred.columns]
    return pd.DataFrame({**{c: pred[c] for c in base}, "label": pred[f"{LABEL_PREFIX}{cls}"],
                         "score": pred[f"{SCORE_PREFIX}{cls}"], "decision": pred[f"{DECISION_PREFIX}{cls}"]})


# ======================================================================== 4. threshold (validation split only)


def training_scores(members: Sequence[Member], split: str, cls: str | None = None) -> pd.DataFrame:
    """``record_id, label, score`` of the training runs' ``split`` at each run's chosen epoch
    (``predictions.parquet``), the score averaged over members (records every member scored); ``cls``: of that
    class of multi-label runs (their ``label:<cls>`` / ``score:<cls>`` columns)."""
    label, score_col = ("label", "score") if cls is None else (f"{LABEL_PREFIX}{cls}", f"{SCORE_PREFIX}{cls}")
    frames = []
    for k, m in enumerate(members):
        pred = pd.read_parquet(m.run_dir / "predictions.parquet")
        missing = [c for c in ("record_id", "split", "epoch", label, score_col) if c not in pred.columns]
        if missing:
            raise FinetuneRunError(f"{m.run_dir / 'predictions.parquet'}: no column(s) {missing}")
        sel = pred[(pred["split"] == split) & (pred["epoch"] == int(m.metrics["best_epoch"]))]
        frames.append(sel[["record_id", label, score_col]].rename(columns={label: "label", score_col: f"s{k}"})
                      .set_index(["record_id", "label"]))
    df = pd.concat(frames, axis=1, join="inner")
    return pd.DataFrame({"record_id": df.index.get_level_values(0).astype(str),
                         "label": df.index.get_level_values(1).astype(np.int64), "score": df.mean(axis=1).to_numpy()})


def _validation_scores(members: Sequence[Member], cls: str | None = None) -> pd.DataFrame:
    val = training_scores(members, "val", cls)
    if val.empty:
        raise PredictError(f"{members[0].run_dir / 'predictions.parquet'}: no validation scores at the chosen epoch; "
                           "the threshold is chosen on the validation split only")
    return val[val["label"] >= 0]


def operating_threshold(members: Sequence[Member], cfg: PredictConfig) -> Thresholds:
    """The threshold chosen on the training runs' validation split (``calibration.choose_threshold``); for a
    multi-label ensemble a dict class -> the threshold chosen on that class's validation labels and scores (each
    class its own operating point: prevalences and score scales differ between classes)."""
    if members[0].multilabel:
        return {c: _choose(members, cfg, c) for c in members[0].classes}
    return _choose(members, cfg, None)


def _choose(members: Sequence[Member], cfg: PredictConfig, cls: str | None) -> calibration.Threshold:
    val = _validation_scores(members, cls)
    try:
        return calibration.choose_threshold(val["label"], val["score"], split="val", method=cfg.threshold_method,
                                            target_sensitivity=cfg.target_sensitivity,
                                            target_specificity=cfg.target_specificity)
    except calibration.CalibrationError as e:
        if cls is None:
            raise
        raise PredictError(f"class {cls!r}: no threshold on the validation split of "
                           f"{members[0].run_dir / 'predictions.parquet'}: {e}") from None


def threshold_report(members: Sequence[Member], threshold: Thresholds, cfg: PredictConfig) -> dict:
    """How much to trust ``threshold``: the validation counts, its bootstrap interval on validation and the
    interval of its sensitivity/specificity there (``calibration.threshold_interval``, ``cfg.n_boot`` resamples),
    and a ``warning`` (also raised as a :class:`UserWarning`) when validation holds fewer than
    :data:`MIN_VAL_POSITIVES` positives: such a threshold may give a very different sensitivity elsewhere.
    Multi-label: ``{"classes": {class: that report}, "warning": one warning naming every class under the bound}``."""
    if not isinstance(threshold, dict):
        rep = _report(members, threshold, cfg, None)
        if rep["warning"]:
            warnings.warn(rep["warning"], UserWarning, stacklevel=2)
        return rep
    reps = {c: _report(members, t, cfg, c) for c, t in threshold.items()}
    few = {c: r["n_val_positives"] for c, r in reps.items() if r["warning"]}
    warning = None
    if few:
        warning = (f"the thresholds of {len(few)} class(es) were chosen on fewer than {MIN_VAL_POSITIVES} validation "
                   f"positives ({', '.join(f'{c}: {n}' for c, n in few.items())}); their bootstrap intervals are in "
                   "threshold.json: expect other sensitivities on new data (see operating_points.csv)")
        warnings.warn(warning, UserWarning, stacklevel=2)
    return {"classes": reps, "warning": warning}


def _report(members: Sequence[Member], threshold: calibration.Threshold, cfg: PredictConfig, cls: str | None) -> dict:
    val = _validation_scores(members, cls)
    n_pos = int((val["label"] == 1).sum())
    ci = calibration.threshold_interval(val["label"], val["score"], threshold, n_boot=cfg.n_boot, seed=cfg.seed)
    warning = None
    if n_pos < MIN_VAL_POSITIVES:
        warning = (f"{'' if cls is None else f'class {cls}: '}the threshold {threshold.value:.4g} was chosen on "
                   f"{n_pos} validation positives (< {MIN_VAL_POSITIVES}): its 95 % bootstrap interval is "
                   f"{ci.value_lo:.4g}-{ci.value_hi:.4g} and its validation sensitivity {ci.sensitivity_lo:.2f}-"
                   f"{ci.sensitivity_hi:.2f}; expect another sensitivity on new data (see operating_points.csv; "
                   "choose it on a larger validation set)")
    return {"n_val": len(val), "n_val_positives": n_pos, "interval": dataclasses.asdict(ci), "warning": warning}


def operating_points(members: Sequence[Member], pred: pd.DataFrame,
                     targets: Sequence[float] = OPERATING_TARGETS) -> pd.DataFrame:
    """The operating points clinicians ask for: per target sensitivity and target specificity, the threshold chosen
    on the training runs' validation split, its sensitivity/specificity there, and (labelled scored ECGs only) on
    the scored ECGs. A target no validation threshold reaches gets a ``note``. Multi-label: the same per class
    (chosen on that class's validation labels), a ``class`` column first."""
    if members[0].multilabel:
        frames = []
        for c in members[0].classes:
            pts = _points(members, class_view(pred, c), targets, c)
            pts.insert(0, "class", c)
            frames.append(pts)
        return pd.concat(frames, ignore_index=True)
    return _points(members, pred, targets, None)


def _points(members: Sequence[Member], pred: pd.DataFrame, targets: Sequence[float], cls: str | None) -> pd.DataFrame:
    val = _validation_scores(members, cls)
    lab = pred[pred["label"] >= 0]
    rows = []
    for name in ("sensitivity", "specificity"):
        for target in targets:
            row: dict[str, Any] = {"target": name, "value": float(target)}
            try:
                t = calibration.choose_threshold(val["label"], val["score"], split="val", method=name,
                                                 **{f"target_{name}": float(target)})
            except calibration.CalibrationError as e:
                rows.append({**row, "note": str(e)})
                continue
            row.update(threshold=t.value, val_sensitivity=t.sensitivity, val_specificity=t.specificity)
            if len(lab):
                op = calibration.operating_point(lab["label"], lab["score"], t.value, split="external")
                row.update(scored_sensitivity=op.sensitivity, scored_specificity=op.specificity, scored_ppv=op.ppv,
                           scored_npv=op.npv)
            rows.append({**row, "note": ""})
    return pd.DataFrame(rows)


# ======================================================================== 5. external validation


def evaluate(y: np.ndarray, p: np.ndarray, name: str, threshold: float, n_boot: int, seed: int,
             p_decision: np.ndarray | None = None) -> dict:
    """One table row: AUROC/AUPRC with 95 % bootstrap CIs, calibration of ``p`` and the operating point of
    ``p_decision >= threshold`` (default ``p``; recalibrated rows keep the decisions of the raw scores the threshold
    was chosen on); only the counts (and a note) where one class is missing."""
    row: dict[str, Any] = {"data": name, "n": int(len(y)), "n_pos": int(np.sum(y == 1))}
    op = calibration.operating_point(y, p if p_decision is None else p_decision, threshold, split=name)
    row.update(threshold=threshold, sensitivity=op.sensitivity, specificity=op.specificity, ppv=op.ppv, npv=op.npv)
    try:
        ci = metrics.bootstrap_ci(y, p, n_boot=n_boot, seed=seed)
        cal = calibration.calibration_summary(y, p, split=name)
    except (metrics.MetricsInputError, calibration.CalibrationError) as e:
        return {**row, "note": str(e)}
    row.update({k: ci[k] for k in ("auroc", "auroc_lo", "auroc_hi", "auprc", "auprc_lo", "auprc_hi")})
    row.update({k: cal[k] for k in ("brier", "ece", "slope", "intercept")}, note="")
    return row


def scored_data_name(members: Sequence[Member], scored_store: Any | None, patient_hashes: Sequence[str]) -> str:
    """The validation-table name of the scored ECGs of ``patient_hashes`` (salted, as in ``scored_store``, the store
    they were read from): ``external (scored ECGs)`` only when none of their
    patients has a non-external ECG in a training run's cohort store; ``scored ECGs (overlaps training: P patients
    / E ECGs)`` when some do; ``scored ECGs (overlap with training unverified)`` when the stores' patient hashes
    cannot be compared (another salt: ``overlap.check_same_salt``) or the scored store is not known."""
    unverified = "scored ECGs (overlap with training unverified)"
    if scored_store is None:
        return unverified
    seen: set[str] = set()
    for root in sorted({str(_resolve(str(m.config.get("cohort_run") or ""))) for m in members}):
        try:
            train = CohortStore(root)
            overlap.check_same_salt(scored_store, train)
        except (overlap.SaltMismatchError, OSError, ValueError):
            return unverified
        tm = train.manifest
        seen |= set(tm.loc[tm["split"].astype(str) != "external", "patient_hash"].astype(str))
    pats = np.asarray(patient_hashes, dtype=str)
    hit = np.isin(pats, list(seen))
    if hit.any():
        return f"scored ECGs (overlaps training: {len(set(pats[hit]))} patients / {int(hit.sum())} ECGs)"
    return "external (scored ECGs)"


def validate(members: Sequence[Member], pred: pd.DataFrame, threshold: Thresholds, cfg: PredictConfig,
             scored_store: Any | None = None) -> tuple[pd.DataFrame, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The validation table (internal = the training runs' test split, external = the labelled scored ECGs,
    then recalibrated rows when ``cfg.recalibrate``) and the (labels, scores) of each row for the reliability
    diagram.

    Multi-label: the rows of every class (a ``class`` column first; thresholds, calibrators and intervals per
    class), and the curves of each row pooled over the classes (one reliability curve per data, not per class)."""
    if not members[0].multilabel:
        return _validate(members, pred, threshold, cfg, scored_store, None)
    tables, pooled = [], {}
    for c in members[0].classes:
        table, curves = _validate(members, class_view(pred, c), threshold[c], cfg, scored_store, c)
        tables.append(table.assign(**{"class": c})[["class", *table.columns]] if len(table) else table)
        for name, (y, p) in curves.items():
            ys, ps = pooled.get(name, ((), ()))
            pooled[name] = (np.r_[ys, y].astype(np.int64), np.r_[ps, p])
    return pd.concat(tables, ignore_index=True), pooled


def _validate(members: Sequence[Member], pred: pd.DataFrame, threshold: calibration.Threshold, cfg: PredictConfig,
              scored_store: Any | None, cls: str | None) -> tuple[pd.DataFrame, dict]:
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    split_of: dict[str, str] = {}  # row name -> the split it comes from (the calibrator refuses its own)
    records_of: dict[str, np.ndarray] = {}  # row name -> its record ids (the calibrator refuses its fitted records)
    test = training_scores(members, "test", cls)
    test = test[test["label"] >= 0]
    if len(test):
        curves["internal (training runs' test split)"] = (test["label"].to_numpy(), test["score"].to_numpy())
        split_of["internal (training runs' test split)"] = "test"
        records_of["internal (training runs' test split)"] = test["record_id"].astype(str).to_numpy()
    lab = pred[pred["label"] >= 0]
    if len(lab):
        name = scored_data_name(members, scored_store, lab["patient_hash"].astype(str).to_numpy())  # "external" only when checked against the training stores
        curves[name] = (lab["label"].to_numpy(), lab["score"].to_numpy())
        split_of[name] = "external"
        records_of[name] = lab["record_id"].astype(str).to_numpy()
    if cfg.recalibrate and curves:
        fit = training_scores(members, cfg.recalibrate_on, cls)
        fit = fit[fit["label"] >= 0]
        cal = calibration.fit_calibrator(fit["label"], fit["score"], method=cfg.recalibrate, split=cfg.recalibrate_on,
                                         records=fit["record_id"].astype(str))
        for name, split in list(split_of.items()):
            if split != cfg.recalibrate_on:  # never evaluated on the split it was fitted on
                y, p = curves[name]
                curves[f"{name}, {cfg.recalibrate} on {cfg.recalibrate_on}"] = (
                    y, cal.apply(p, split=split, records=records_of[name]))
    raw = {name: curves[name][1] for name in split_of}
    rows = [evaluate(y, p, name, threshold.value, cfg.n_boot, cfg.seed, raw.get(name.split(", ")[0]))
            for name, (y, p) in curves.items()]
    return pd.DataFrame(rows), curves


def reliability_figure(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike | None = None,
                       n_bins: int = calibration.N_BINS) -> Figure:
    """Reliability diagram (mean predicted vs observed fraction positive per equal-width bin, marker area ~
    count) of every row of :func:`validate`; the diagonal is perfect calibration."""
    fig = Figure(figsize=(4.6, 4.2 + 0.22 * len(curves)))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    for name, (y, p) in curves.items():
        r = calibration.reliability(y, p, split=name, n_bins=n_bins)
        full = r.count > 0
        ax.plot(r.mean_predicted[full], r.fraction_positive[full], marker="o", ms=4, label=f"{name} (n={len(y)})")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted probability", ylabel="observed fraction positive",
           title="reliability")
    fig.tight_layout(rect=(0, 0.055 * len(curves), 1, 1))
    fig.legend(*ax.get_legend_handles_labels(), fontsize=7, loc="lower center", ncol=1, frameon=False)  # below: no overlap
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


# ======================================================================== 6. per-ECG pictures


def choose_pictures(pred: pd.DataFrame, cfg: PredictConfig) -> np.ndarray:
    """Positions in ``pred`` to draw: the ``n_pictures`` highest scores, the first ``n_pictures`` positives
    by score, or the records of ``picture_ids`` (an unknown id is an error naming it). A multi-label table: by each
    ECG's highest class score, positives = ECGs with a positive decision in any class."""
    if cfg.pictures == "none":
        return np.zeros(0, np.int64)
    if cfg.pictures == "ids":
        pos = {r: i for i, r in enumerate(pred["record_id"])}
        missing = [r for r in cfg.picture_ids if r not in pos]
        if missing:
            raise PredictError(f"parameter 'picture_ids': {missing} not among the scored records")
        return np.array([pos[r] for r in cfg.picture_ids], np.int64)
    order = score_order(pred)
    if cfg.pictures == "positives":
        order = order[_columns(pred, DECISION_PREFIX, "decision").max(axis=1)[order] == 1]
    return order[:cfg.n_pictures]


def score_order(pred: pd.DataFrame) -> np.ndarray:
    """Positions of ``pred`` from the highest score down (multi-label: each ECG's highest class score)."""
    return np.argsort(-_columns(pred, SCORE_PREFIX, "score").max(axis=1), kind="stable")


def _columns(pred: pd.DataFrame, prefix: str, binary: str) -> np.ndarray:
    """(n, classes) of the ``<prefix><class>`` columns of a multi-label table, else (n, 1) of column ``binary``."""
    cols = [c for c in pred.columns if c.startswith(prefix)] or [binary]
    return pred[cols].to_numpy()


def picture_class(members: Sequence[Member], row: pd.Series, threshold: Thresholds) -> tuple[str | None, int]:
    """The class one page shows and explains: (None, 1) for a binary model (class 1's logit), for a multi-label one
    the class whose score is furthest above its threshold (a positive decision when there is one), with its output
    index."""
    if not members[0].multilabel:
        return None, 1
    margin = [float(row[f"{SCORE_PREFIX}{c}"]) - threshold[c].value for c in members[0].classes]
    j = int(np.argmax(margin))
    return members[0].classes[j], j


def _safe_name(record_id: str) -> str:
    return file_name_from(record_id, "record")


def signal_method(member: Member, method: str) -> str:
    """The map a signal member draws for ``method``: Grad-CAM on a 1-D CNN when ``gradcam`` is asked, else
    integrated gradients (ST-MEM has no convolutional map; ``fullgrad``/``rollout`` are image methods)."""
    if method != "gradcam":
        return "ig"
    try:
        gradcam_layer(member.model)
        return "gradcam"
    except UnsupportedMethodError:
        return "ig"


def member_maps(members: Sequence[Member], signals: np.ndarray, grey: np.ndarray, rendering: Rendering, method: str,
                target_class: int = 1) -> np.ndarray:
    """(n, H, W) saliency in [0, 1] of output ``target_class`` on the pictured model input ``grey`` (n, H, W),
    averaged over members.

    An image member's map is on its own input (rollout falls back to gradcam for CNNs); a signal member's lead x
    time map (:func:`heartbeit_lib.analysis.saliency.signal_saliency` on what it read, normalised as 03 did, the
    whole record in one pass, repeated onto the store's samples) is drawn into the pictured layout, each lead's
    panel taking its lead's map, so members of both families are averaged on the same pixels."""
    maps = []
    for m in members:
        x = member_inputs(m, signals, grey, rendering)
        if m.family == "signal":
            mean, std = member_normalization(m)
            lt = to_store_rate(signal_saliency(m.model, (x - mean) / std, signal_method(m, method), target_class,
                                               batch_size=8), signals.shape[-1])
            maps.append(to_image(lt, grey.shape[-1], rendering.layout or "stack8"))
        else:
            maps.append(saliency_maps(m.model, x.contiguous(),
                                      method if method != "rollout" or is_transformer(m.model) else "gradcam",
                                      target_class, normalization=m.normalize, batch_size=8))
    return np.mean(maps, axis=0)


def _saliency_note(members: Sequence[Member], method: str) -> str:
    names = sorted({signal_method(m, method) + " (lead x time)" if m.family == "signal" else method for m in members})
    return "saliency: " + ", ".join(names)


def draw_pictures(members: Sequence[Member], inputs: Inputs, pred: pd.DataFrame, positions: np.ndarray,
                  rendering: Rendering, threshold: Thresholds, cfg: PredictConfig,
                  run_dir: str | os.PathLike) -> list[Path]:
    """``pictures/<record_id>.png`` per position and ``pictures.pdf`` (all pages); returns the PNG paths. The
    model-input panel is the image models' input, or for a signal-only ensemble the signals drawn in ``stack8`` at
    :data:`PICTURE_SIZE` px, with the members' saliency on top (:func:`member_maps`). A multi-label page shows the
    score, threshold, decision and saliency of one class (:func:`picture_class`) and names the positive classes."""
    if not len(positions):
        return []
    out = Path(run_dir) / "pictures"
    out.mkdir(exist_ok=True)
    sig = inputs.store.signals(inputs.rows[positions])
    grey = render_images(sig, rendering)
    shown = [picture_class(members, pred.iloc[int(i)], threshold) for i in positions]
    maps = None
    if cfg.saliency_method:
        maps = np.zeros(grey.shape, np.float32)
        for j in sorted({j for _, j in shown}):  # one pass per explained output
            sel = np.array([k for k, (_, jj) in enumerate(shown) if jj == j])
            maps[sel] = member_maps(members, sig[sel], grey[sel], rendering, cfg.saliency_method, j)
    leads = tuple(inputs.store.info.get("leads") or output_leads())
    pages, paths = [], []
    for k, i in enumerate(positions):
        cls = shown[k][0]
        r = class_view(pred, cls).iloc[int(i)]
        lab = {1: "label: positive", 0: "label: negative"}.get(int(r["label"]), "")
        positives = ("positive classes: " + (", ".join(c for c in members[0].classes
                                                       if pred.iloc[int(i)][f"{DECISION_PREFIX}{c}"] == 1) or "none")
                     if cls is not None else "")
        note = "  ".join(t for t in (f"{len(members)}-model ensemble" if len(members) > 1 else members[0].name,
                                     f"class {cls}" if cls is not None else "", positives,
                                     _saliency_note(members, cfg.saliency_method) if maps is not None else "",
                                     lab) if t)
        page = ecg_page.ECGPage(signal=sig[k], fs=rendering.fs, image=grey[k], record_id=str(r["record_id"]),
                                score=float(r["score"]), threshold=_threshold_of(threshold, cls).value,
                                decision="POSITIVE" if r["decision"] == 1 else "negative",
                                saliency=None if maps is None else maps[k], leads=leads,
                                input_layout=rendering.layout or "stack8", input_samples=sig.shape[-1], note=note)
        paths.append(ecg_page.save_png(ecg_page.page_figure(page), out / f"{k:03d}_{_safe_name(page.record_id)}.png",
                                       dpi=110))
        pages.append(page)
    ecg_page.save_pdf(pages, Path(run_dir) / "pictures.pdf")
    return paths


# ======================================================================== files, provenance, the whole run


def _threshold_of(threshold: Thresholds, cls: str | None) -> calibration.Threshold:
    return threshold if cls is None else threshold[cls]


def threshold_record(threshold: Thresholds, report: dict | None = None) -> dict:
    """``threshold.json``: the threshold and its :func:`threshold_report`; multi-label: ``{"classes": {class:
    threshold and report}, "warning": ...}``."""
    report = report or {}
    if not isinstance(threshold, dict):
        return {**dataclasses.asdict(threshold), **report}
    per = report.get("classes", {})
    return {"classes": {c: {**dataclasses.asdict(t), **per.get(c, {})} for c, t in threshold.items()},
            "warning": report.get("warning")}


def write_outputs(run_dir: str | os.PathLike, pred: pd.DataFrame, inputs: Inputs,
                  threshold: Thresholds, table: pd.DataFrame | None, report: dict | None = None,
                  points: pd.DataFrame | None = None) -> None:
    """``predictions.csv``, ``rejects.csv``, ``threshold.json`` (:func:`threshold_record`),
    ``operating_points.csv`` and (labels only) ``validation.csv``."""
    run_dir = Path(run_dir)
    atomic_write(run_dir / "predictions.csv", lambda t: write_csv(pred, t, index=False))
    atomic_write(run_dir / "rejects.csv", lambda t: write_csv(inputs.rejects, t, index=False))
    runs.write_json(run_dir / "threshold.json", threshold_record(threshold, report))
    if points is not None:
        atomic_write(run_dir / "operating_points.csv", lambda t: write_csv(points, t, index=False))
    if table is not None and len(table):
        atomic_write(run_dir / "validation.csv", lambda t: write_csv(table, t, index=False))


def training_provenance(members: Sequence[Member]) -> list[dict]:
    """Per member: folder, its run.json, config.yaml, chosen epoch and sha256 of its weights and records."""
    out = []
    for m in members:
        files = [f for f in (WEIGHTS, MODEL_RECORD, "config.yaml", "predictions.parquet") if (m.run_dir / f).is_file()]
        out.append({"run_dir": str(m.run_dir), "run": json.loads((m.run_dir / "run.json").read_text()),
                    "config": m.config, "best_epoch": m.metrics.get("best_epoch"),
                    "sha256": runs.hash_files([m.run_dir / f for f in files], m.run_dir),
                    "rendering": dataclasses.asdict(m.rendering)})
    return out


def run_metrics(pred: pd.DataFrame, inputs: Inputs, threshold: Thresholds, table: pd.DataFrame | None,
                members: Sequence[Member], report: dict | None = None) -> dict:
    """``metrics.json``: counts, threshold (and its :func:`threshold_report`), fraction called positive, and the
    validation rows. Multi-label: ``classes``, the positive decisions and mean score per class, and ``macro_auroc``
    per validation data (the mean of the classes' AUROC where one is defined, as 03/04)."""
    out = {"n_inputs": inputs.n_inputs, "n_scored": len(pred), "n_rejected": len(inputs.rejects),
           "n_members": len(members), "members": [m.name for m in members],
           "threshold": threshold_record(threshold, report)}
    classes = members[0].classes
    if classes:
        out.update(classes=list(classes),
                   n_positive_decisions={c: int(pred[f"{DECISION_PREFIX}{c}"].sum()) for c in classes},
                   mean_score={c: float(pred[f"{SCORE_PREFIX}{c}"].mean()) if len(pred) else None for c in classes})
    else:
        out.update(n_positive_decisions=int(pred["decision"].sum()),
                   mean_score=float(pred["score"].mean()) if len(pred) else None)
    if table is not None and len(table):
        out["validation"] = json.loads(table.to_json(orient="records"))
        if classes and "auroc" in table.columns:
            out["macro_auroc"] = {str(d): float(g["auroc"].mean()) for d, g in table.groupby("data", sort=False)
                                  if g["auroc"].notna().any()}
    return out


def finish(run_dir: str | os.PathLike, result: dict, members: Sequence[Member], inputs: Inputs) -> None:
    """``metrics.json``, data hashes and the training runs' provenance in ``run.json`` (marks it complete)."""
    hashes = {"predictions.csv": runs.file_sha256(Path(run_dir) / "predictions.csv")}
    if (inputs.store.root / "manifest.parquet").is_file():
        hashes["scored store manifest.parquet"] = runs.file_sha256(inputs.store.root / "manifest.parquet")
    info = json.loads((Path(run_dir) / "run.json").read_text())
    info["training_runs"] = training_provenance(members)
    info["scored_store"] = str(inputs.store.root)
    runs.write_json(Path(run_dir) / "run.json", info)
    runs.finish_run(run_dir, metrics=result, data_hashes=hashes)  # last: it lets go of the run folder's lock


def run(cfg: PredictConfig, run_dir: str | os.PathLike | None = None) -> dict:
    """Every step (what the notebook does cell by cell); returns the metrics. For the CLI and tests.

    Without ``run_dir`` the run is written into ``<out_root>/07_predict/.<run_id>.partial`` and renamed to
    ``<run_id>`` once finished (replacing an earlier run of that id), so a failed call leaves no folder that looks
    finished: only the hidden ``.partial`` one, its ``run.json`` recording the error under ``failed``."""
    if run_dir is not None:
        return _run_steps(cfg, Path(run_dir))
    run_id = cfg.run_id or runs.default_run_id(cfg)
    cfg = dataclasses.replace(cfg, run_id=run_id)
    final = Path(cfg.out_root or runs.REPO_ROOT / "outputs") / NOTEBOOK / run_id
    runs.lock_run_folder(final)  # a second call with this run_id is refused until this one ends
    try:
        staging = final.with_name(f".{run_id}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        runs.start_run(NOTEBOOK, cfg, run_id=staging.name, out_root=final.parent.parent)
        try:
            result = _run_steps(cfg, staging)
        except BaseException as e:
            runs.mark_failed(staging, e)
            raise
        info = json.loads((staging / "run.json").read_text())
        info["run_id"] = run_id
        if info.get("scored_store", "").startswith(str(staging)):
            info["scored_store"] = str(final) + info["scored_store"][len(str(staging)):]
        runs.write_json(staging / "run.json", info)
        old = final.with_name(f".{run_id}.replaced")
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
        staging.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        return result
    finally:
        runs.release_run_folder(final)


def _run_steps(cfg: PredictConfig, run_dir: Path) -> dict:
    members, rendering = load_ensemble(cfg, resolve_device(cfg.device))
    inputs = prepare_inputs(cfg, run_dir, rendering)
    member_scores = score(members, inputs, rendering, cfg.batch_size)
    threshold = operating_threshold(members, cfg)
    report = threshold_report(members, threshold, cfg)
    pred = predictions_table(members, inputs, member_scores, threshold)
    table, curves = validate(members, pred, threshold, cfg, scored_store=inputs.store)
    if curves:
        reliability_figure(curves, run_dir / "reliability.png")
    write_outputs(run_dir, pred, inputs, threshold, table, report, operating_points(members, pred))
    draw_pictures(members, inputs, pred, choose_pictures(pred, cfg), rendering, threshold, cfg, run_dir)
    result = run_metrics(pred, inputs, threshold, table, members, report)
    finish(run_dir, result, members, inputs)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m heartbeit_lib.predict -f parameters/07_predict/demo.yaml -p finetune_runs RUN -p data_root DIR
    -p source muse -p run_id ID -p out_root OUT`` (``-f`` YAML files, later wins; ``-p`` wins over files)."""
    cfg = runs.config_from_cli(PredictConfig, argv, "Score new ECGs with trained 03_finetune run(s) (notebook 07_predict)")
    print(json.dumps(run(cfg), indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
