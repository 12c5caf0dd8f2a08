"""Patient-disjoint splits and nested, stratified training fractions, computed once per store."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupShuffleSplit

from .errors import CohortError, SplitError
from .tasks import TaskConfig

SPLITS = ("train", "val", "test", "external", "unassigned")
FRACTION_EPS = 1e-9  # 0.1 * 30 == 3.0000000000000004 must give 3 rows, not 4
# A shrunken validation set keeps at least this many ECGs of each class (all, if fewer): with 50 positives and 50
# negatives the AUROC's standard error is about 0.05 (Hanley & McNeil 1982, at AUROC 0.6-0.8), so epochs whose
# validation AUROC differs by ~0.1 can be told apart; at the former floor of 5 (11 ECGs at 10 % of the 840-record
# mi store) it was about 0.17, and the choice of epoch was noise (issue 24, item 2).
VAL_MIN_PER_CLASS = 50
RANKED_SPLITS = ("train", "val")  # splits with nested, stratified fraction subsets


def _patient_codes(manifest: pd.DataFrame) -> np.ndarray:
    """Integer patient codes in order of first appearance.

    Splits are drawn on these, not on the hashes, so they do not depend on the salt: two builds
    of the same inputs with different salts give the same splits.
    """
    codes, _ = pd.factorize(manifest["patient_hash"], sort=False)
    return codes.astype(np.int64)


def _group_split(idx: np.ndarray, groups: np.ndarray, size: float, seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """sklearn ``GroupShuffleSplit(n_splits=1, test_size=size, random_state=seed)`` over ``idx``.

    With fewer than 2 patients nothing can be held out: all of ``idx`` is kept (with a warning).
    """
    if len(np.unique(groups[idx])) < 2:
        warnings.warn(f"{what}: only {len(np.unique(groups[idx]))} patient(s); nothing held out", stacklevel=3)
        return idx, idx[:0]
    gss = GroupShuffleSplit(n_splits=1, test_size=size, random_state=seed)
    a, b = next(gss.split(np.zeros(len(idx)), groups=groups[idx]))
    return idx[np.sort(a)], idx[np.sort(b)]


def assign_splits(manifest: pd.DataFrame, task: TaskConfig, seed: int) -> np.ndarray:
    """Split of every manifest row: ``train``, ``val``, ``test``, ``external`` or ``unassigned``.

    ``external_site`` rows -> ``external``; other rows of patients seen at the external site ->
    ``unassigned`` (keeps the external set site-pure and every split patient-disjoint); in a
    labelled task, rows with label -1 -> ``unassigned`` (kept in the store for pretraining). The rest:

    - ``group_shuffle``: ``GroupShuffleSplit(test_size, random_state=seed)`` on patients -> test;
      then ``GroupShuffleSplit(val_size, random_state=seed)`` on the remaining patients -> val
      (skipped when ``val_size == 0``), as the authors' code (test 20 %, constant seed) plus a
      validation set for model selection.
    - ``ptbxl_folds``: ``strat_fold`` in ``train_folds``/``val_folds``/``test_folds`` (PTB-XL's
      folds are patient-wise; checked), other folds -> ``unassigned``.
    - ``none``: all ``unassigned`` (pretraining cohorts).

    Returns
    -------
    ndarray of str (len(manifest),)
    """
    n = len(manifest)
    split = np.full(n, "unassigned", dtype=object)
    if n == 0:
        return split.astype(str)
    groups = _patient_codes(manifest)
    usable = manifest["label"].to_numpy(np.int64) >= 0 if task.labelled else np.ones(n, bool)
    internal = np.ones(n, bool)
    if task.external_site:
        ext = manifest["site"].astype(str).to_numpy() == task.external_site
        split[ext & usable] = "external"
        internal = ~np.isin(groups, np.unique(groups[ext]))
    internal &= usable  # unlabelled rows cannot train or evaluate a labelled task
    idx = np.flatnonzero(internal)
    if task.split == "group_shuffle" and len(idx):
        pool, test = _group_split(idx, groups, task.test_size, seed, f"task {task.name!r} test split")
        split[test] = "test"
        if task.val_size > 0:
            train, val = _group_split(pool, groups, task.val_size, seed, f"task {task.name!r} validation split")
            split[val] = "val"
        else:
            train = pool
        split[train] = "train"
    elif task.split == "ptbxl_folds" and len(idx):
        if "strat_fold" not in manifest.columns:
            raise SplitError(f"task {task.name!r}: split ptbxl_folds needs a strat_fold column")
        fold = pd.to_numeric(manifest["strat_fold"], errors="coerce").to_numpy()
        for name, folds in (("train", task.train_folds), ("val", task.val_folds), ("test", task.test_folds)):
            split[internal & np.isin(fold, folds)] = name
    return split.astype(str)


def strata(manifest: pd.DataFrame) -> np.ndarray:
    """The class each row is stratified by: ``label``, or ``stratum`` (the rarest present class) in a multi-label
    store."""
    return manifest["stratum" if "stratum" in manifest.columns else "label"].to_numpy(np.int64)


def train_ranks(manifest: pd.DataFrame, seed: int) -> np.ndarray:
    """Rank of each training and validation row within its split and class (0, 1, ...), -1 elsewhere
    (saved in the store as ``train_rank``).

    A seeded random permutation per class (classes in sorted order): one ``np.random.default_rng(seed)``
    for ``train`` (as before validation was ranked, so training subsets did not move), a second
    ``default_rng([seed, 1])`` for ``val``. The fraction-``f`` subset of a split is, in every class of
    ``n_c`` rows, the rows of rank < ``ceil(f * n_c)`` (:func:`fraction_mask`): stratified, nested (the
    1 % set is inside the 10 % set), at least one row of each present class, identical across runs.
    Validation and training are patient-disjoint by construction of the splits. Multi-label stores rank within
    the ``stratum`` of each row (its rarest present class, :func:`strata`) instead of the label.
    """
    rank = np.full(len(manifest), -1, np.int64)
    if len(manifest) == 0:
        return rank
    split = manifest["split"].to_numpy()
    labels = strata(manifest)
    for name, rng in (("train", np.random.default_rng(seed)), ("val", np.random.default_rng([seed, 1]))):
        in_split = split == name
        for c in np.unique(labels[in_split]):
            rows = np.flatnonzero(in_split & (labels == c))
            rank[rows] = rng.permutation(len(rows))
    return rank


def fraction_size(n: int, fraction: float) -> int:
    """``ceil(fraction * n)`` robust to float error (0.1 * 30 -> 3)."""
    if not 0.0 < fraction <= 1.0:
        raise CohortError(f"fraction must be in (0, 1], got {fraction}")
    return min(n, math.ceil(fraction * n - FRACTION_EPS))


def fraction_mask(manifest: pd.DataFrame, fraction: float, split: str = "train") -> np.ndarray:
    """Boolean mask of the rows of ``split`` (train or val) in its nested, stratified ``fraction`` subset.

    ``val`` keeps at least :data:`VAL_MIN_PER_CLASS` rows of each class (every row of a class that has
    fewer), so a small fraction's validation set can still rank epochs by AUROC; that floor makes its
    share larger than ``fraction`` (its counts are reported per fraction in Table 1).
    """
    if split not in RANKED_SPLITS:
        raise CohortError(f"fraction subsets exist for {list(RANKED_SPLITS)}, not {split!r}")
    in_split = manifest["split"].to_numpy() == split
    labels = strata(manifest)
    rank = manifest["train_rank"].to_numpy(np.int64)
    mask = np.zeros(len(manifest), bool)
    for c in np.unique(labels[in_split]):
        in_c = in_split & (labels == c)
        n = fraction_size(int(in_c.sum()), fraction)
        if split == "val":
            n = max(n, min(int(in_c.sum()), VAL_MIN_PER_CLASS))
        mask |= in_c & (rank < n)
    return mask


def check_disjoint(manifest: pd.DataFrame) -> None:
    """Raise :class:`SplitError` if a patient has rows in two of train/val/test/external."""
    m = manifest[manifest["split"] != "unassigned"]
    per = m.groupby("patient_hash")["split"].nunique()
    bad = per[per > 1]
    if len(bad):
        raise SplitError(f"{len(bad)} patient(s) cross splits (e.g. hash {bad.index[0][:12]}...)")
