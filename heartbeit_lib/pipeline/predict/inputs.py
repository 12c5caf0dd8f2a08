"""07, step 2: the ECGs to score, preprocessed as the model's training store was (rows of a cohort store, or raw files
read by the cohort builder), with their rejects."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from heartbeit_lib.cohorts import (CohortStore, LABEL_PREFIX, Source, build_store, clean_id, load_task, muse_source,
                                   ptbxl_source, wfdb_source)
from heartbeit_lib.cohorts.sources import add_label_matrix

from heartbeit_lib.pipeline.predict.config import PredictConfig, PredictError
from heartbeit_lib.pipeline.predict.ensemble import Rendering, _resolve, _same


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
    return raw_inputs(cfg, src, store)


def raw_inputs(cfg: PredictConfig, src: Source, store: CohortStore) -> Inputs:
    """The :class:`Inputs` of the raw files of ``src`` once built into ``store``: every stored row, and the rejects
    with their file relative to ``cfg.data_root``."""
    root = Path(cfg.data_root)
    rej = store.rejects
    rejects = pd.DataFrame({"file": [_relative(p, root) for p in rej["source_path"]], "record_id": rej["record_id"],
                            "stage": rej["stage"], "error_class": rej["error_type"], "reason": rej["reason"]})
    assert len(src.inputs) == len(store) + len(rejects)  # every input scored or rejected, once
    return Inputs(store, np.arange(len(store), dtype=np.int64), len(src.inputs), rejects, root)


def read_workers(workers: int, n_files: int) -> int:
    """Processes that read and preprocess ``n_files`` raw files: ``workers``, at most one per file.

    :func:`~heartbeit_lib.pipeline.predict.prepare_and_score` (07's path) forks them (``cohorts.build_shards_in_order``)
    and scores in this process meanwhile, so ``workers: 1`` already keeps two cores busy (the reader and the model);
    :func:`prepare_inputs` alone builds the store with ``cohorts.build_store`` (in this process for 1, else its
    ``spawn`` workers, one shard each: each starts Python and imports the reader and the filters, ~2.2 CPU s)."""
    return max(1, min(int(workers), n_files))


def _relative(path: str, root: Path | None) -> str:
    if root is None:
        return str(path)
    try:
        return os.path.relpath(path, root)
    except ValueError:
        return str(path)
