"""Notebook 07 (``notebooks/07_predict.ipynb``, ``python -m heartbeit_lib.predict``): score ECGs a trained model
has never seen, validate it externally when labels exist, and draw one page per chosen ECG.

The steps, each one function here (the notebook calls them in order, :func:`run` calls them all):

1. :func:`load_ensemble`: the ``03_finetune`` run folders of ``finetune_runs`` (one run, or a seed ensemble whose
   probabilities are averaged; image and signal models may be mixed), each checked to be a *finished* run and
   rebuilt with :func:`heartbeit_lib.classify.checkpoint.load_finetune_run`; what they were trained on is read from
   them, never guessed: an image model's rendering (image size, layout, amplitude range) from
   ``model.json``/``config.yaml``, a signal model's input rate (``signal_rate``) from ``model.json``, the
   preprocessing and rate from ``store.json`` of their cohort store. Members that disagree (image members on the
   rendering, all on the preprocessing), or a rendering parameter the user sets to another value, is an error
   naming both values.
2. :func:`prepare_inputs`: either rows of an existing cohort store (``cohort_run``, optional ``split``), or raw files
   under ``data_root`` (``source`` muse, wfdb or ptbxl), read and preprocessed by the cohort builder itself
   (:func:`heartbeit_lib.cohorts.build_store` with the training store's ``preprocess_kw``) into ``<run>/cohort``:
   the same reader, the same filters, the same float16 storage the model was trained on, and the same rejects
   (``len(inputs) == len(predictions) + len(rejects)``). Patient ids are stored only as salted hashes
   (``salt_file``, else the per-user default salt of :mod:`heartbeit_lib.cohorts.ids`, the one stores use by default).
3. :func:`score`: image members read the signals rendered with the recorded rendering, signal members the
   signals resampled to their rate (``classify.signal_data.prepare_signals``, as in training); one probability per
   member and their mean (``score``).
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
from heartbeit_lib.analysis.saliency import (METHODS, is_transformer, predict_proba, saliency_maps, signal_saliency,
                                             to_image, to_store_rate)
from heartbeit_lib.analysis.saliency.signal_maps import gradcam_layer
from heartbeit_lib.analysis.saliency.errors import UnsupportedMethodError
from heartbeit_lib.classify.checkpoint import MODEL_RECORD, WEIGHTS, FinetuneRunError, load_finetune_run
from heartbeit_lib.classify.signal_data import prepare_signals
from heartbeit_lib.cohorts import (REJECT_COLUMNS, STORE_FS, CohortStore, Source, build_store, clean_id, load_task,
                                   muse_source, output_leads, ptbxl_source, wfdb_source)
from heartbeit_lib.pipeline import overlap, runs
from heartbeit_lib.report import ecg_page
from heartbeit_lib.utils import atomic_write, resolve_device

NOTEBOOK = "07_predict"
SPLITS = ("train", "val", "test", "external", "unassigned")
CHUNK = 256  # ECGs rendered at once (256 x 224 x 224 uint8 = 13 MB)
OPERATING_TARGETS = (0.80, 0.90, 0.95)  # sensitivities and specificities offered in operating_points.csv
MIN_VAL_POSITIVES = 50  # fewer validation positives than this: the threshold is a rough estimate (warned)
PICTURE_SIZE = 224  # px of the model-input panel of a signal-only ensemble's pages (its saliency drawn in stack8)


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
    labels: str | None = None  # CSV: record_id (file stem or path without suffix), label 0/1; None: unlabelled (ptbxl: task labels)
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


IMAGE_FIELDS = ("image_size", "layout", "ylim_mv")


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
    info = json.loads((run_dir / "run.json").read_text())
    if info.get("notebook", "03_finetune") != "03_finetune":
        raise FinetuneRunError(f"{run_dir / 'run.json'}: written by {info.get('notebook')!r}, not 03_finetune")
    if not info.get("finished"):
        raise FinetuneRunError(f"{run_dir / 'run.json'}: no finish time; the 03_finetune run did not finish")
    if "best_epoch" not in json.loads((run_dir / "metrics.json").read_text()):
        raise FinetuneRunError(f"{run_dir / 'metrics.json'}: no best_epoch; not a finished 03_finetune run")


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
    store_info = json.loads((_resolve(cohort) / "store.json").read_text())
    return Rendering(None if signal else int(info["image_size"]), None if signal else str(info["layout"]),
                     None if ylim is None else tuple(float(v) for v in ylim),
                     store_info.get("preprocess_kw"), str(store_info.get("task", cfg.get("task", ""))),
                     float(store_info.get("fs", STORE_FS)))


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
        if info.get("multilabel"):  # one sigmoid per class: member_probabilities/score_columns are where it goes
            raise PredictError(f"{run_dir / MODEL_RECORD}: a multi-label model (classes {info.get('classes')}); 07 "
                               "scores binary models only so far (one score column per class is not built yet)")
        r = _recorded_rendering(run_dir, info)
        met = json.loads((run_dir / "metrics.json").read_text())
        family = str(info.get("family", "image"))
        rate = float(info.get("signal_rate") or 100.0) if family == "signal" else None
        members.append(Member(run_dir, run_dir.name, model, info["normalize"], info["config"], met, r, family, rate))
    first = members[0]
    for m in members[1:]:  # one store preprocessing and task for all; one rendering for the image members
        for key in ("preprocess_kw", "task", "fs"):
            _same(f"ensemble {key}", getattr(first.rendering, key), getattr(m.rendering, key),
                  str(first.run_dir), str(m.run_dir))
    images = [m for m in members if m.family == "image"]
    for m in images[1:]:
        for key in IMAGE_FIELDS:
            _same(f"ensemble {key}", getattr(images[0].rendering, key), getattr(m.rendering, key),
                  str(images[0].run_dir), str(m.run_dir))
    rec = images[0].rendering if images else first.rendering
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


@torch.no_grad()
def member_probabilities(member: Member, x: torch.Tensor, batch_size: int) -> np.ndarray:
    """(n,) float64 probability of class 1 (softmax over the two logits, as 03 scored it) of ``member`` for its
    inputs ``x`` (:func:`member_inputs`). A multi-label model (one logit per class, sigmoid per class) will return
    (n, classes) here; the rest of 07 takes its columns from :func:`score_columns`."""
    if member.family == "image":
        return predict_proba(member.model, x, 1, member.normalize, batch_size)
    device = next(member.model.parameters()).device
    out = [torch.softmax(member.model(x[i:i + batch_size].to(device)).float(), dim=1)[:, 1].double().cpu()
           for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0)


# ======================================================================== 2. inputs


@dataclasses.dataclass
class Inputs:
    """The ECGs to score: a cohort store and its rows, the input count and the rejects table."""

    store: CohortStore
    rows: np.ndarray  # (n,) store rows scored
    n_inputs: int
    rejects: pd.DataFrame  # file, record_id, stage, error_class, reason
    data_root: Path | None


def raw_source(cfg: PredictConfig, task: str) -> Source:
    """Raw files under ``cfg.data_root`` as a cohort :class:`Source`, labelled by ``cfg.labels`` (a CSV with
    ``record_id`` and ``label``) or, for PTB-XL, by the training ``task``."""
    root = Path(cfg.data_root)
    if not root.is_dir():
        raise PredictError(f"parameter 'data_root': {root} is not a folder")
    if cfg.source == "ptbxl":
        src = ptbxl_source(root, load_task(task), cfg.ptbxl_database, cfg.ptbxl_rate)
    else:
        src = (muse_source if cfg.source == "muse" else wfdb_source)(root, load_task("unlabelled"))
    if not len(src.inputs):
        raise PredictError(f"parameter 'data_root': no {cfg.source} records under {root}")
    if cfg.labels:
        src.inputs["label"] = _labels_from_csv(Path(cfg.labels), src.inputs["record_id"])
    return src


def _labels_from_csv(path: Path, record_ids: pd.Series) -> np.ndarray:
    """Label (0/1, -1 when absent) of each record id from ``path`` (``record_id``: the id itself or its stem)."""
    if not path.is_file():
        raise PredictError(f"parameter 'labels': {path} does not exist")
    tab = pd.read_csv(path, dtype={"record_id": str})
    miss = [c for c in ("record_id", "label") if c not in tab.columns]
    if miss:
        raise PredictError(f"{path}: missing column(s) {miss}; needs record_id and label (0/1)")
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
    src = raw_source(cfg, rendering.task)
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
    """(n_members, n) probability of class 1 of every member for every scored ECG (read in chunks of
    :data:`CHUNK`; rendered once per chunk when an image model is among the members)."""
    out = np.zeros((len(members), len(inputs.rows)), np.float64)
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
                      threshold: calibration.Threshold) -> pd.DataFrame:
    """``record_id, path, patient_hash, label, score`` (ensemble mean), one column per member, ``decision``
    (1 when ``score >= threshold``)."""
    man = inputs.store.manifest.iloc[inputs.rows]
    p = member_scores.mean(axis=0)
    df = pd.DataFrame({"record_id": man["record_id"].astype(str).to_numpy(),
                       "path": [_relative(s, inputs.data_root) for s in man["source_path"]],
                       "patient_hash": man["patient_hash"].astype(str).to_numpy(),
                       "label": man["label"].to_numpy(np.int64), "score": p})
    for col, s in zip(member_columns(members), member_scores):
        df[col] = s
    df["decision"] = (p >= threshold.value).astype(np.int64)
    return df


# ======================================================================== 4. threshold (validation split only)


def training_scores(members: Sequence[Member], split: str) -> pd.DataFrame:
    """``record_id, label, score`` of the training runs' ``split`` at each run's chosen epoch
    (``predictions.parquet``), the score averaged over members (records every member scored)."""
    frames = []
    for k, m in enumerate(members):
        pred = pd.read_parquet(m.run_dir / "predictions.parquet")
        sel = pred[(pred["split"] == split) & (pred["epoch"] == int(m.metrics["best_epoch"]))]
        frames.append(sel[["record_id", "label", "score"]].rename(columns={"score": f"s{k}"})
                      .set_index(["record_id", "label"]))
    df = pd.concat(frames, axis=1, join="inner")
    return pd.DataFrame({"record_id": df.index.get_level_values(0).astype(str),
                         "label": df.index.get_level_values(1).astype(np.int64), "score": df.mean(axis=1).to_numpy()})


def _validation_scores(members: Sequence[Member]) -> pd.DataFrame:
    val = training_scores(members, "val")
    if val.empty:
        raise PredictError(f"{members[0].run_dir / 'predictions.parquet'}: no validation scores at the chosen epoch; "
                           "the threshold is chosen on the validation split only")
    return val


def operating_threshold(members: Sequence[Member], cfg: PredictConfig) -> calibration.Threshold:
    """The threshold chosen on the training runs' validation split (``calibration.choose_threshold``)."""
    val = _validation_scores(members)
    return calibration.choose_threshold(val["label"], val["score"], split="val", method=cfg.threshold_method,
                                        target_sensitivity=cfg.target_sensitivity,
                                        target_specificity=cfg.target_specificity)


def threshold_report(members: Sequence[Member], threshold: calibration.Threshold, cfg: PredictConfig) -> dict:
    """How much to trust ``threshold``: the validation counts, its bootstrap interval on validation and the
    interval of its sensitivity/specificity there (``calibration.threshold_interval``, ``cfg.n_boot`` resamples),
    and a ``warning`` (also raised as a :class:`UserWarning`) when validation holds fewer than
    :data:`MIN_VAL_POSITIVES` positives: such a threshold may give a very different sensitivity elsewhere."""
    val = _validation_scores(members)
    n_pos = int((val["label"] == 1).sum())
    ci = calibration.threshold_interval(val["label"], val["score"], threshold, n_boot=cfg.n_boot, seed=cfg.seed)
    warning = None
    if n_pos < MIN_VAL_POSITIVES:
        warning = (f"the threshold {threshold.value:.4g} was chosen on {n_pos} validation positives (< "
                   f"{MIN_VAL_POSITIVES}): its 95 % bootstrap interval is {ci.value_lo:.4g}-{ci.value_hi:.4g} and "
                   f"its validation sensitivity {ci.sensitivity_lo:.2f}-{ci.sensitivity_hi:.2f}; expect another "
                   "sensitivity on new data (see operating_points.csv; choose it on a larger validation set)")
        warnings.warn(warning, UserWarning, stacklevel=2)
    return {"n_val": len(val), "n_val_positives": n_pos, "interval": dataclasses.asdict(ci), "warning": warning}


def operating_points(members: Sequence[Member], pred: pd.DataFrame,
                     targets: Sequence[float] = OPERATING_TARGETS) -> pd.DataFrame:
    """The operating points clinicians ask for: per target sensitivity and target specificity, the threshold chosen
    on the training runs' validation split, its sensitivity/specificity there, and (labelled scored ECGs only) on
    the scored ECGs. A target no validation threshold reaches gets a ``note``."""
    val = _validation_scores(members)
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


def validate(members: Sequence[Member], pred: pd.DataFrame, threshold: calibration.Threshold, cfg: PredictConfig,
             scored_store: Any | None = None) -> tuple[pd.DataFrame, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The validation table (internal = the training runs' test split, external = the labelled scored ECGs,
    then recalibrated rows when ``cfg.recalibrate``) and the (labels, scores) of each row for the reliability
    diagram."""
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    split_of: dict[str, str] = {}  # row name -> the split it comes from (the calibrator refuses its own)
    records_of: dict[str, np.ndarray] = {}  # row name -> its record ids (the calibrator refuses its fitted records)
    test = training_scores(members, "test")
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
        fit = training_scores(members, cfg.recalibrate_on)
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
    by score, or the records of ``picture_ids`` (an unknown id is an error naming it)."""
    if cfg.pictures == "none":
        return np.zeros(0, np.int64)
    if cfg.pictures == "ids":
        pos = {r: i for i, r in enumerate(pred["record_id"])}
        missing = [r for r in cfg.picture_ids if r not in pos]
        if missing:
            raise PredictError(f"parameter 'picture_ids': {missing} not among the scored records")
        return np.array([pos[r] for r in cfg.picture_ids], np.int64)
    order = np.argsort(-pred["score"].to_numpy(), kind="stable")
    if cfg.pictures == "positives":
        order = order[pred["decision"].to_numpy()[order] == 1]
    return order[:cfg.n_pictures]


def _safe_name(record_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", record_id).strip("._") or "record"


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


def member_maps(members: Sequence[Member], signals: np.ndarray, grey: np.ndarray, rendering: Rendering, method: str
                ) -> np.ndarray:
    """(n, H, W) saliency in [0, 1] on the pictured model input ``grey`` (n, H, W), averaged over members.

    An image member's map is on its own input (rollout falls back to gradcam for CNNs); a signal member's lead x
    time map (:func:`heartbeit_lib.analysis.saliency.signal_saliency` on what it read, repeated onto the store's
    samples) is drawn into the pictured layout, each lead's panel taking its lead's map, so members of both
    families are averaged on the same pixels."""
    maps = []
    for m in members:
        x = member_inputs(m, signals, grey, rendering)
        if m.family == "signal":
            lt = to_store_rate(signal_saliency(m.model, x, signal_method(m, method), 1, batch_size=8),
                               signals.shape[-1])
            maps.append(to_image(lt, grey.shape[-1], rendering.layout or "stack8"))
        else:
            maps.append(saliency_maps(m.model, x.contiguous(),
                                      method if method != "rollout" or is_transformer(m.model) else "gradcam",
                                      1, normalization=m.normalize, batch_size=8))
    return np.mean(maps, axis=0)


def _saliency_note(members: Sequence[Member], method: str) -> str:
    names = sorted({signal_method(m, method) + " (lead x time)" if m.family == "signal" else method for m in members})
    return "saliency: " + ", ".join(names)


def draw_pictures(members: Sequence[Member], inputs: Inputs, pred: pd.DataFrame, positions: np.ndarray,
                  rendering: Rendering, threshold: calibration.Threshold, cfg: PredictConfig,
                  run_dir: str | os.PathLike) -> list[Path]:
    """``pictures/<record_id>.png`` per position and ``pictures.pdf`` (all pages); returns the PNG paths. The
    model-input panel is the image models' input, or for a signal-only ensemble the signals drawn in ``stack8`` at
    :data:`PICTURE_SIZE` px, with the members' saliency on top (:func:`member_maps`)."""
    if not len(positions):
        return []
    out = Path(run_dir) / "pictures"
    out.mkdir(exist_ok=True)
    sig = inputs.store.signals(inputs.rows[positions])
    grey = render_images(sig, rendering)
    maps = member_maps(members, sig, grey, rendering, cfg.saliency_method) if cfg.saliency_method else None
    leads = tuple(inputs.store.info.get("leads") or output_leads())
    pages, paths = [], []
    for k, i in enumerate(positions):
        r = pred.iloc[int(i)]
        lab = {1: "label: positive", 0: "label: negative"}.get(int(r["label"]), "")
        note = "  ".join(t for t in (f"{len(members)}-model ensemble" if len(members) > 1 else members[0].name,
                                     _saliency_note(members, cfg.saliency_method) if maps is not None else "",
                                     lab) if t)
        page = ecg_page.ECGPage(signal=sig[k], fs=rendering.fs, image=grey[k], record_id=str(r["record_id"]),
                                score=float(r["score"]), threshold=threshold.value,
                                decision="POSITIVE" if r["decision"] == 1 else "negative",
                                saliency=None if maps is None else maps[k], leads=leads,
                                input_layout=rendering.layout or "stack8", input_samples=sig.shape[-1], note=note)
        paths.append(ecg_page.save_png(ecg_page.page_figure(page), out / f"{k:03d}_{_safe_name(page.record_id)}.png",
                                       dpi=110))
        pages.append(page)
    ecg_page.save_pdf(pages, Path(run_dir) / "pictures.pdf")
    return paths


# ======================================================================== files, provenance, the whole run


def write_outputs(run_dir: str | os.PathLike, pred: pd.DataFrame, inputs: Inputs,
                  threshold: calibration.Threshold, table: pd.DataFrame | None, report: dict | None = None,
                  points: pd.DataFrame | None = None) -> None:
    """``predictions.csv``, ``rejects.csv``, ``threshold.json`` (with :func:`threshold_report`),
    ``operating_points.csv`` and (labels only) ``validation.csv``."""
    run_dir = Path(run_dir)
    atomic_write(run_dir / "predictions.csv", lambda t: pred.to_csv(t, index=False))
    atomic_write(run_dir / "rejects.csv", lambda t: inputs.rejects.to_csv(t, index=False))
    runs.write_json(run_dir / "threshold.json", {**dataclasses.asdict(threshold), **(report or {})})
    if points is not None:
        atomic_write(run_dir / "operating_points.csv", lambda t: points.to_csv(t, index=False))
    if table is not None and len(table):
        atomic_write(run_dir / "validation.csv", lambda t: table.to_csv(t, index=False))


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


def run_metrics(pred: pd.DataFrame, inputs: Inputs, threshold: calibration.Threshold, table: pd.DataFrame | None,
                members: Sequence[Member], report: dict | None = None) -> dict:
    """``metrics.json``: counts, threshold (and its :func:`threshold_report`), fraction called positive, and the
    validation rows."""
    out = {"n_inputs": inputs.n_inputs, "n_scored": len(pred), "n_rejected": len(inputs.rejects),
           "n_members": len(members), "members": [m.name for m in members],
           "threshold": {**dataclasses.asdict(threshold), **(report or {})},
           "n_positive_decisions": int(pred["decision"].sum()),
           "mean_score": float(pred["score"].mean()) if len(pred) else None}
    if table is not None and len(table):
        out["validation"] = json.loads(table.to_json(orient="records"))
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
