"""Notebook 07's parameters (:class:`PredictConfig`), its errors and constants."""

from __future__ import annotations

import dataclasses
import typing

from heartbeit_lib.analysis import calibration
from heartbeit_lib.analysis.saliency import METHODS
from heartbeit_lib.pipeline import runs


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
    ptbxl_rate: int | None = None  # source ptbxl: 100 or 500 Hz files; None: 500 if every record's 500 Hz file is on disk, else 100
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
    workers: int = 2  # forked processes reading raw files (data_root) while this one scores (2 CPU cores, bench_predict: micro ViT 176-214 ECG/s with 2, 147-172 with 1; xresnet1d101 124-142 with 2, 132-169 with 1: give 1 for a signal model on 2 cores, more on a GPU node)
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

Thresholds = typing.Union[calibration.Threshold, dict]  # one threshold, or class -> threshold (multi-label)
