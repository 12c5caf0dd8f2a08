"""Notebook 01 (``notebooks/01_preprocess.ipynb``): its config, the data source it names, the store build,
Table 1, the QC figure, provenance hashes, ``metrics.json`` and :func:`run`, the notebook's steps in one call.

The algorithms live in :mod:`heartbeit_lib.cohorts` (tasks, sources, store builder, splits) and
:mod:`heartbeit_lib.report.qc` (Table 1, QC figure); this module only wires them to the notebook.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import ClassVar

from heartbeit_lib.cohorts import (SPLIT_METHODS, SPLITS, CohortStore, Source, TaskConfig, build_store, demo_source,
                                   load_task, muse_source, ptbxl_source, task_names, wfdb_source)
from heartbeit_lib.cohorts.evaluation import write_eval_patients  # noqa: F401 (public path preprocess.write_eval_patients)
from heartbeit_lib.signals import N_SAMPLES, TARGET_FS, TWELVE_LEADS
from heartbeit_lib.pipeline import runs
from heartbeit_lib.report import qc

NOTEBOOK = "01_preprocess"


@dataclasses.dataclass(frozen=True)
class PreprocessConfig(runs.TypedConfig):
    """Parameters of ``notebooks/01_preprocess.ipynb`` (its parameters cell is these field lines)."""

    source: str = "demo"  # ptbxl | muse | wfdb | demo (synthetic deepfake-ecg cohort, no data needed)
    data_root: str | None = None  # PTB-XL root, MUSE XML folder or WFDB folder (None for demo)
    labels_csv: str | None = None  # muse/wfdb labels CSV (None: <data_root>/labels.csv when the task needs labels)
    ptbxl_database: str = "ptbxl_database.csv"  # PTB-XL table; ptbxl_database_100hz.csv holds all 840 shared records
    ptbxl_rate: int | None = None  # PTB-XL files: 100 or 500 Hz; None: 500 if every row's 500 Hz file is on disk, else 100
    task: str = "demo"  # parameters/tasks/<task>.yaml: mi, stemi, lvef, hcm, demo, custom, unlabelled
    split: str | None = None  # override the task's split: group_shuffle | ptbxl_folds | none (None: the task's own)
    seed: int = 0  # split and fraction seed (constant: the same patients for every model); demo generator seed
    n_demo: int = 200  # demo: labelled synthetic ECGs
    n_demo_unlabelled: int = 0  # demo: extra unlabelled ECGs (label -1, split unassigned; for pretraining)
    demo_prevalence: float = 0.3  # demo: fraction of positive synthetic patients
    band_low: float = 0.5  # Hz, Butterworth band-pass low edge (paper)
    band_high: float = 40.0  # Hz, band-pass high edge (paper)
    filter_order: int = 4  # Butterworth order per edge (see heartbeit_lib/signals.py)
    median_kernel: int = 3  # median filter width in samples at 500 Hz (1: off)
    window_start: int = 0  # first kept sample at store_fs (the paper keeps the first 2,500 at 500 Hz)
    pad_short: bool = False  # zero-pad records shorter than `seconds` instead of rejecting them
    store_leads: str = "paper"  # paper: I, II, V1-V6 (what images are drawn from) | twelve: I, II, III, aVR, aVL, aVF, V1-V6
    store_fs: int = 500  # Hz of the stored signals (paper: 500; PTB-XL benchmark: 100)
    seconds: float = 5.0  # stored length in s (paper: 5; PTB-XL benchmark: 10)
    filtering: bool = True  # band-pass + median filter (paper); false stores the raw signal (PTB-XL benchmark)
    shard_size: int = 512  # ECGs per shard file (512 x 8 x 2500 float16: 20 MB)
    workers: int = 2  # worker processes (output does not depend on it)
    salt_file: str | None = None  # file holding the patient-hash salt (None: the per-user salt file, see cohorts.default_salt_path)
    n_qc: int = 3  # records shown in the QC figure
    progress: bool = True  # tqdm progress bar
    out_root: str = "outputs"  # run folders: <out_root>/01_preprocess/<run_id>/
    run_id: str | None = None  # None: UTC timestamp; an existing run_id resumes that build

    choices: ClassVar[dict[str, tuple]] = {
        "source": ("ptbxl", "muse", "wfdb", "demo"),
        "split": (None, *SPLIT_METHODS),
        "ptbxl_rate": (None, 100, 500),
        "store_leads": ("paper", "twelve"),
    }

    def validate(self) -> None:
        if self.source != "demo" and not self.data_root:
            raise runs.ConfigError(f"parameter 'data_root': source {self.source!r} needs a data folder")
        if self.source == "demo" and self.n_demo < 2:
            raise runs.ConfigError(f"parameter 'n_demo': needs at least 2 ECGs, got {self.n_demo}")
        if self.task not in task_names() and Path(self.task).suffix not in (".yaml", ".yml"):
            raise runs.ConfigError(f"parameter 'task': {self.task!r} is not one of {task_names()} "
                                   "nor a YAML path")
        if self.store_fs < 1 or self.seconds <= 0:
            raise runs.ConfigError(f"parameters 'store_fs' ({self.store_fs}) and 'seconds' ({self.seconds}) must be > 0")
        if self.shard_size < 1 or self.workers < 0 or self.n_qc < 0:
            raise runs.ConfigError("parameters 'shard_size' >= 1, 'workers' >= 0, 'n_qc' >= 0 required")

    def preprocess_kw(self) -> dict:
        """Keyword arguments of :func:`heartbeit_lib.signals.preprocess` (the store layout keys only when they
        differ from the paper's, so the paper's stores keep their build fingerprints)."""
        kw = {"band": (self.band_low, self.band_high) if self.filtering else None, "order": self.filter_order,
              "median_kernel": self.median_kernel if self.filtering else 1, "start": self.window_start,
              "pad": self.pad_short}
        if self.store_leads == "twelve":
            kw["out_leads"] = list(TWELVE_LEADS)
        if self.store_fs != TARGET_FS:
            kw["target_fs"] = float(self.store_fs)
        if round(self.seconds * self.store_fs) != N_SAMPLES:
            kw["n_samples"] = int(round(self.seconds * self.store_fs))
        return kw

    def task_config(self) -> TaskConfig:
        """The task with the notebook's ``split`` override (None = the task's own)."""
        return load_task(self.task, split=self.split)


def make_source(cfg: PreprocessConfig, task: TaskConfig | None = None) -> Source:
    """The :class:`~heartbeit_lib.cohorts.Source` named by ``cfg.source``."""
    task = task or cfg.task_config()
    if cfg.source == "ptbxl":
        return ptbxl_source(cfg.data_root, task, cfg.ptbxl_database, cfg.ptbxl_rate)
    if cfg.source == "muse":
        return muse_source(cfg.data_root, task, cfg.labels_csv)
    if cfg.source == "wfdb":
        return wfdb_source(cfg.data_root, task, cfg.labels_csv)
    return demo_source(cfg.n_demo, cfg.seed, cfg.demo_prevalence, cfg.n_demo_unlabelled)


def build_from_config(cfg: PreprocessConfig, run_dir: str | os.PathLike, source: Source) -> CohortStore:
    """:func:`~heartbeit_lib.cohorts.build_store` with the notebook's parameters."""
    return build_store(source.inputs, source.reader, run_dir, task_cfg=cfg.task_config(), seed=cfg.seed,
                       shard_size=cfg.shard_size, workers=cfg.workers, preprocess_kw=cfg.preprocess_kw(),
                       salt_file=cfg.salt_file, progress=cfg.progress)


def _rel(p: Path, root: Path | None) -> str:
    try:
        return str(p.relative_to(root)) if root else str(p)
    except ValueError:
        return str(p)


def data_hashes(source: Source) -> dict[str, str]:
    """sha256 of the source's label/metadata files and one combined sha256 over all its record files
    (plus the hashes the source computed itself, e.g. of the demo arrays), for ``run.json``."""
    out = dict(source.hashes)
    root = Path(source.data_root) if source.data_root else None
    tables = [p for p in source.files if p.suffix.lower() == ".csv"]
    records = [p for p in source.files if p.suffix.lower() != ".csv"]
    for p in tables:
        out[_rel(p, root)] = runs.file_sha256(p)
    if records:
        h = {_rel(p, root): runs.file_sha256(p) for p in records}
        out[f"records ({len(records)} files, combined)"] = runs.combined_hash(h)
    return out


def store_metrics(store: CohortStore) -> dict:
    """Counts for ``metrics.json``: inputs, stored, rejected (by error type), per split, per fraction (training
    and matched validation ECGs), and the clipped-lead and clipped-ECG fractions at the default amplitude range."""
    m = store.manifest
    rej = store.rejects
    out = {"task": store.task, "split_method": store.info["split_method"],
           "n_inputs": store.info["n_inputs"], "n_stored": len(m), "n_rejected": len(rej),
           "n_patients": int(m["patient_hash"].nunique()), "n_positive": int((m["label"] == 1).sum()),
           "rejects_by_type": {str(k): int(v) for k, v in rej["error_type"].value_counts().sort_index().items()}}
    for s in SPLITS:
        sub = m[m["split"] == s]
        out[f"n_{s}"] = len(sub)
        out[f"n_{s}_positive"] = int((sub["label"] == 1).sum())
        out[f"n_{s}_patients"] = int(sub["patient_hash"].nunique())
    for f in store.info["fractions"]:
        out[f"n_train_f{f:g}"] = int(len(store.indices("train", f)))
        out[f"n_val_f{f:g}"] = int(len(store.indices("val", f)))
    out.update(qc.clipping(store))
    return out


def finish(run_dir: str | os.PathLike, store: CohortStore, source: Source) -> dict:
    """Write ``metrics.json`` and the data hashes into the run folder (marks it complete); returns the metrics."""
    metrics = store_metrics(store)
    metrics["n_eval_patients"] = write_eval_patients(run_dir, store)
    runs.finish_run(run_dir, metrics=metrics, data_hashes=data_hashes(source))
    return metrics


QC_FIGURE = "qc_raw_vs_filtered.png"  # the QC figure's file in the run folder (saved at 90 dpi)


def run(cfg: PreprocessConfig, run_dir: str | os.PathLike) -> dict:
    """The notebook's steps in order (source, store build, Table 1 and its per-fraction rows, QC figure, metrics),
    finishing the run folder ``run_dir`` (made by ``runs.start_run``); returns ``metrics.json``'s content."""
    run_dir = Path(run_dir)
    source = make_source(cfg, cfg.task_config())
    store = build_from_config(cfg, run_dir, source)
    qc.save_table(qc.table1(store), run_dir / "table1")
    qc.save_table(qc.fraction_table(store), run_dir / "table1_fractions")
    qc.qc_figure(store, source.reader, n=cfg.n_qc).savefig(run_dir / QC_FIGURE, dpi=90)
    return finish(run_dir, store, source)
