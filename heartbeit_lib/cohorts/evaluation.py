"""The evaluation-patient rule, in one place.

A patient with any validation, test or external row is an *evaluation patient*: none of their ECGs, whatever
split the ECG itself carries, may be pretrained on or fit the tokenizer. 01_preprocess writes their salted
hashes to ``<cohort_run>/eval_patients.txt`` so that a pretraining store built from another source with the same
salt can drop them too (02's ``eval_patients_of``); a pretraining mix drops them when it is built
(``cohorts.build_pretraining_mix(..., exclude_patients_of=...)``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from heartbeit_lib import utils
from heartbeit_lib.cohorts.errors import StoreError

EVAL_SPLITS = ("val", "test", "external")
EVAL_PATIENTS_FILE = "eval_patients.txt"  # written by 01_preprocess: salted hashes of val/test/external patients


def eval_patient_hashes(manifest: Any) -> set[str]:
    """Salted hashes of the patients with a row in :data:`EVAL_SPLITS` (``manifest``: ``split``, ``patient_hash``)."""
    return set(manifest.loc[manifest["split"].isin(EVAL_SPLITS), "patient_hash"].astype(str))


def pretraining_rows(manifest: Any, splits: Sequence[str] = ("train", "unassigned"),
                     exclude_patients_of: Sequence[str] = EVAL_SPLITS,
                     exclude_hashes: Sequence[str] | set = ()) -> np.ndarray:
    """Sorted int64 store rows to pretrain on (and to fit the tokenizer on).

    Rows whose ``split`` is in ``splits``, minus every row of a patient who has any row in
    ``exclude_patients_of`` (whatever split the row itself carries: ``unassigned`` holds label -1 rows and the
    internal-site ECGs of external patients) or whose ``patient_hash`` is in ``exclude_hashes`` (the
    evaluation patients of the fine-tuning cohorts, for a store built from another source with the same salt).

    ``manifest``: a DataFrame with at least ``split`` and ``patient_hash`` (a cohort store's manifest).
    """
    for col in ("split", "patient_hash"):
        if col not in manifest.columns:
            raise StoreError(f"pretraining_rows: the manifest has no {col!r} column")
    split = manifest["split"].astype(str).to_numpy()
    pat = manifest["patient_hash"].astype(str).to_numpy()
    excluded = set(pat[np.isin(split, list(exclude_patients_of))]) | set(exclude_hashes)
    keep = np.isin(split, list(splits)) & ~np.isin(pat, list(excluded))
    return np.flatnonzero(keep).astype(np.int64)


def write_eval_patients(run_dir: str | os.PathLike, store: Any) -> int:
    """``<run_dir>/eval_patients.txt``: sorted salted hashes of every evaluation patient of ``store`` (a
    ``CohortStore``), which 02_pretrain drops from a pretraining store built with the same ``salt_file``; returns
    their count."""
    pats = sorted(eval_patient_hashes(store.manifest))
    utils.atomic_write_text(Path(run_dir) / EVAL_PATIENTS_FILE, "".join(p + "\n" for p in pats))
    return len(pats)


def read_eval_patients(cohort_run: str | os.PathLike) -> set[str]:
    """Salted patient hashes in ``<cohort_run>/eval_patients.txt`` (one per line)."""
    p = Path(cohort_run) / EVAL_PATIENTS_FILE
    if not p.is_file():
        raise StoreError(f"parameter 'eval_patients_of': {p} does not exist; rebuild that cohort with "
                         "01_preprocess (it writes the evaluation patients' hashes)")
    return {line.strip() for line in p.read_text().splitlines() if line.strip()}
