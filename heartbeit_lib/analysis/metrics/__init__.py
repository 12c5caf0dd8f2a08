"""AUROC and AUPRC with bootstrap confidence intervals, exact and vectorised over resamples.

What is computed
----------------
* **AUROC** = the Mann-Whitney statistic with midranks for ties, i.e. exactly
  ``sklearn.metrics.roc_auc_score`` (the trapezoidal area under the ROC curve equals it).
* **AUPRC**, two readings selected by ``auprc_method``:

  - ``"ap"`` (default): average precision, exactly ``sklearn.metrics.average_precision_score``:
    ``AP = sum_k (R_k - R_{k-1}) P_k`` over the *distinct* score thresholds (tied scores form one
    threshold), a step function with no interpolation.
  - ``"trapezoid"``: ``sklearn.metrics.auc(recall, precision)`` over ``precision_recall_curve``,
    what the authors' code reported. Linear interpolation between PR points is optimistic (the
    PR curve is not linear between points; Davis & Goadrich 2006), so it is usually a little
    larger than AP, most visibly at low prevalence and with few distinct scores.

* **95% confidence intervals** from bootstrap resamples of the evaluation set (500 by default,
  as the paper): percentile intervals by default, BCa (bias-corrected and accelerated, with the
  jackknife acceleration of Efron & Tibshirani 1993, eq. 14.15) as an option.

How it is fast
--------------
A bootstrap resample is a vector of counts per original sample. The scores are ranked once;
each sample is mapped to a *slot* of a compact layout built around the ``m`` distinct scores of
the positives ``q_0 > q_1 > ... > q_{m-1}``::

    slot 3k   : negatives with q_{k-1} > score > q_k   (strictly between; k = 0: above q_0)
    slot 3k+1 : negatives with score == q_k            (tied with positives)
    slot 3k+2 : positives with score == q_k
    slot 3m   : negatives below q_{m-1}

``np.bincount`` of the slots of a resample's indices gives all the counts that AUROC, AP and
the trapezoidal PR area need, and both metrics are then weighted cumulative sums over the
``3m + 1`` slots: O(B * n) for B resamples of n samples instead of O(B * n log n) for B sorts.
With ``tps_k`` / ``fps_k`` the resampled positives / negatives with score >= ``q_k``, ``P_k`` the
positives at ``q_k``, ``T_k`` the negatives tied at ``q_k`` and ``P``, ``N`` the totals::

    AUROC = sum_k P_k (N - fps_k + T_k / 2) / (P N)
    AP    = sum_k P_k prec_k / P,               prec_k = tps_k / (tps_k + fps_k)
    trap  = sum_k P_k (prec_k + prev_k) / 2 / P, prev_k = precision at the next higher
            threshold present = (tps_k - P_k) / (tps_k - P_k + fps_k - T_k), 1 if nothing above

(the last one is exactly the trapezoid between consecutive points of sklearn's PR curve,
including its appended (recall 0, precision 1) point; thresholds with only negatives add zero
width). Counts are integers, so AUROC is exact up to the final division; every result agrees
with scikit-learn on the same resample indices to ~1e-15 (tests assert 1e-12).

Resamples with a single class
-----------------------------
A resample without positives or without negatives has no AUROC. Such resamples are **dropped**
(not redrawn) and counted: ``n_boot_valid`` is the number of resamples used. Dropping keeps
the saved indices the same for every model: whether a resample is single-class depends only on
the labels, so paired comparisons between models use exactly the same resamples. With
``stratify=True`` (class counts kept fixed in every resample) it cannot happen.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from scipy.special import ndtr, ndtri

from heartbeit_lib.utils import atomic_write_text

AUPRC_METHODS = ("ap", "trapezoid")
CI_METHODS = ("percentile", "bca")

#: memory budget (bytes) of the per-chunk count matrices in :func:`bootstrap_metrics`
DEFAULT_CHUNK_BYTES = 16 * 2**20  # measured best on a 2-core box: chunks that stay in cache


# ------------------------------------------------------------------------------------ errors


class MetricsInputError(ValueError):
    """Invalid input to a metric; ``argument`` names the offending parameter."""

    def __init__(self, argument: str, reason: str):
        self.argument = argument
        super().__init__(f"{argument}: {reason}")


class LengthMismatchError(MetricsInputError):
    """Arrays that must be aligned have different lengths (or are not 1-D)."""


class NonFiniteScoreError(MetricsInputError):
    """A score is NaN or infinite."""


class LabelValueError(MetricsInputError):
    """A label is not 0 or 1."""


class SingleClassError(MetricsInputError):
    """The labels hold only one class, so AUROC/AUPRC are undefined."""


class BootstrapIndicesError(MetricsInputError):
    """Bootstrap indices with the wrong shape, dtype or range."""


class BootstrapIndexMismatchError(BootstrapIndicesError):
    """Saved bootstrap indices belong to a different evaluation set (record ids differ)."""


class RunMismatchError(ValueError):
    """Runs that should share an evaluation set (same task and split) do not."""


class DegenerateIntervalWarning(RuntimeWarning):
    """An interval could not be computed (e.g. BCa with a constant bootstrap distribution)."""


# ------------------------------------------------------------------------------------ validation


def _check_labels(y: Any, argument: str = "y_true") -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise LengthMismatchError(argument, f"must be 1-D, got shape {y.shape}")
    if y.size == 0:
        raise LengthMismatchError(argument, "is empty")
    if y.dtype == bool:
        return y.astype(np.int8)
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise LabelValueError(argument, f"labels must be numeric 0/1, got dtype {y.dtype}")
    bad = ~((y == 0) | (y == 1))  # NaN compares False -> bad
    if bad.any():
        vals = np.unique(y[bad])[:5]
        raise LabelValueError(argument, f"labels must be 0 or 1; found {vals.tolist()} "
                                        f"({int(bad.sum())} of {y.size} values)")
    return y.astype(np.int8)


def _check_scores(s: Any, n: int, argument: str = "y_score") -> np.ndarray:
    s = np.asarray(s)
    if s.ndim != 1:
        raise LengthMismatchError(argument, f"must be 1-D, got shape {s.shape}")
    if s.shape[0] != n:
        raise LengthMismatchError(argument, f"has {s.shape[0]} scores but y_true has {n} labels")
    if not (np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer)
            or s.dtype == bool):
        raise NonFiniteScoreError(argument, f"scores must be numeric, got dtype {s.dtype}")
    s = s.astype(np.float64)
    bad = ~np.isfinite(s)
    if bad.any():
        raise NonFiniteScoreError(argument, f"{int(bad.sum())} of {n} scores are NaN or infinite "
                                            f"(first at position {int(np.flatnonzero(bad)[0])})")
    return s


def validate_binary(y_true: Any, y_score: Any, *, score_name: str = "y_score",
                    label_name: str = "y_true") -> tuple[np.ndarray, np.ndarray]:
    """Check and convert one binary evaluation set.

    Parameters
    ----------
    y_true : (n,) array-like of {0, 1} (bool, int or float)
    y_score : (n,) array-like of finite floats (higher = more likely class 1)

    Returns
    -------
    y : (n,) int8, s : (n,) float64

    Raises
    ------
    LengthMismatchError, LabelValueError, NonFiniteScoreError, SingleClassError
        each naming the argument and the reason.
    """
    y = _check_labels(y_true, label_name)
    s = _check_scores(y_score, y.shape[0], score_name)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise SingleClassError(label_name, f"holds a single class ({n_pos} positives of {y.size}); "
                                           "AUROC and AUPRC need both classes")
    return y, s


def _check_method(name: str, value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise MetricsInputError(name, f"{value!r} is not one of {list(allowed)}")
    return value


def _check_indices(indices: Any, n: int, argument: str = "indices") -> np.ndarray:
    idx = np.asarray(indices)
    if idx.ndim != 2:
        raise BootstrapIndicesError(argument, f"must be 2-D (n_boot, n), got shape {idx.shape}")
    if idx.shape[1] != n:
        raise BootstrapIndicesError(argument, f"resamples have {idx.shape[1]} indices but the "
                                              f"evaluation set has {n} samples")
    if not np.issubdtype(idx.dtype, np.integer):
        raise BootstrapIndicesError(argument, f"must be integers, got dtype {idx.dtype}")
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise BootstrapIndicesError(argument, f"values must lie in [0, {n}), got "
                                              f"[{idx.min()}, {idx.max()}]")
    return idx


# ------------------------------------------------------------------------------------ ranking


@dataclasses.dataclass(frozen=True)
class SlotLayout:
    """Samples mapped once to the slot layout of the module docstring.

    Attributes
    ----------
    slot : (n,) intp, slot of each original sample in ``[0, 3 m]``
    n_pos_scores : int, ``m``, number of distinct positive scores
    """

    slot: np.ndarray
    n_pos_scores: int

    @property
    def n_slots(self) -> int:
        return 3 * self.n_pos_scores + 1


def slot_layout(y: np.ndarray, s: np.ndarray) -> SlotLayout:
    """Rank the scores once (O(n log n)) and map every sample to its slot.

    Parameters
    ----------
    y : (n,) int {0, 1}; s : (n,) float64 (validated by the caller)
    """
    pos = y == 1
    q = np.unique(s[pos])  # ascending distinct positive scores
    m = q.size
    # number of distinct positive scores strictly above each sample = descending index
    above = m - np.searchsorted(q, s, side="right")
    slot = 3 * above
    # a sample tied with q_k has `above == k`; `left` finds q_k itself when tied
    left = np.searchsorted(q, s, side="left")
    tied = left < m
    tied[tied] = q[left[tied]] == s[tied]
    slot = slot + np.where(pos, 2, np.where(tied, 1, 0))
    return SlotLayout(slot=slot.astype(np.intp), n_pos_scores=int(m))


def _metrics_from_slot_counts(c: np.ndarray, m: int, auprc_method: str
                              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUROC, AUPRC and validity for count rows over the slot layout.

    Parameters
    ----------
    c : (b, 3 m + 1) float64 counts (or weights) per slot, one row per resample
    """
    a = c[:, 0:3 * m:3]
    t = c[:, 1:3 * m:3]
    p = c[:, 2:3 * m:3]
    tps = np.cumsum(p, axis=1)
    fps = np.cumsum(a + t, axis=1)  # negatives with score >= q_k
    n_pos = tps[:, -1]
    n_neg = fps[:, -1] + c[:, 3 * m]
    valid = (n_pos > 0) & (n_neg > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        # sum_k P_k * (negatives strictly below q_k + half the tied ones)
        u = np.einsum("ij,ij->i", p, n_neg[:, None] - fps + 0.5 * t)
        auroc = u / (n_pos * n_neg)
        den = tps + fps
        prec = np.divide(tps, den, out=np.zeros_like(tps), where=den > 0)
        if auprc_method == "ap":
            auprc = np.einsum("ij,ij->i", p, prec) / n_pos
        else:  # trapezoid between consecutive PR points (sklearn.metrics.auc(recall, precision))
            prev_t = tps - p
            prev_d = prev_t + fps - t
            prev = np.divide(prev_t, prev_d, out=np.ones_like(tps), where=prev_d > 0)
            auprc = 0.5 * np.einsum("ij,ij->i", p, prec + prev) / n_pos
    auroc[~valid] = np.nan
    auprc[~valid] = np.nan
    return auroc, auprc, valid


def _metrics_validated(y: np.ndarray, s: np.ndarray, auprc_method: str) -> tuple[float, float]:
    lay = slot_layout(y, s)
    c = np.bincount(lay.slot, minlength=lay.n_slots).astype(np.float64)[None]
    auroc, auprc, _ = _metrics_from_slot_counts(c, lay.n_pos_scores, auprc_method)
    return float(auroc[0]), float(auprc[0])


def auroc_score(y_true: Any, y_score: Any) -> float:
    """AUROC (Mann-Whitney with midranks); equals ``sklearn.metrics.roc_auc_score``."""
    y, s = validate_binary(y_true, y_score)
    return _metrics_validated(y, s, "ap")[0]


def auprc_score(y_true: Any, y_score: Any, auprc_method: str = "ap") -> float:
    """AUPRC: ``"ap"`` = ``average_precision_score``; ``"trapezoid"`` = ``auc(recall, precision)``."""
    _check_method("auprc_method", auprc_method, AUPRC_METHODS)
    y, s = validate_binary(y_true, y_score)
    return _metrics_validated(y, s, auprc_method)[1]


def weighted_metrics(y_true: Any, y_score: Any, counts: Any, auprc_method: str = "ap"
                     ) -> tuple[np.ndarray, np.ndarray]:
    """AUROC and AUPRC for rows of per-sample counts (a resample as a count vector).

    Parameters
    ----------
    y_true, y_score : (n,) labels and scores of the original set
    counts : (B, n) or (n,) non-negative integer counts (or weights) per original sample; row b
        is the resample that holds sample i ``counts[b, i]`` times. Equals sklearn's metrics with
        ``sample_weight=counts[b]``.

    Returns
    -------
    auroc, auprc : (B,) float64, NaN for rows with a single class.
    """
    _check_method("auprc_method", auprc_method, AUPRC_METHODS)
    y, s = validate_binary(y_true, y_score)
    w = np.atleast_2d(np.asarray(counts, dtype=np.float64))
    if w.shape[1] != y.size:
        raise LengthMismatchError("counts", f"rows have {w.shape[1]} entries, expected {y.size}")
    if (w < 0).any() or not np.isfinite(w).all():
        raise MetricsInputError("counts", "must be finite and non-negative")
    lay = slot_layout(y, s)
    c = np.stack([np.bincount(lay.slot, weights=row, minlength=lay.n_slots) for row in w])
    auroc, auprc, _ = _metrics_from_slot_counts(c, lay.n_pos_scores, auprc_method)
    return auroc, auprc


# ------------------------------------------------------------------------------------ bootstrap


@dataclasses.dataclass(frozen=True)
class BootstrapStats:
    """Point estimates and bootstrap distributions of one model on one evaluation set.

    Attributes
    ----------
    auroc, auprc : float, on the full set
    boot_auroc, boot_auprc : (B,) float64, NaN where the resample has a single class
    valid : (B,) bool, resamples with both classes
    jack_auroc, jack_auprc : (n,) float64 leave-one-out values (only for BCa), else None
    n, n_pos : int
    """

    auroc: float
    auprc: float
    boot_auroc: np.ndarray
    boot_auprc: np.ndarray
    valid: np.ndarray
    n: int
    n_pos: int
    auprc_method: str
    jack_auroc: np.ndarray | None = None
    jack_auprc: np.ndarray | None = None


def _resolve_rng(seed: int | np.random.Generator) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise MetricsInputError("seed", f"must be an int or a numpy Generator, got {seed!r}")
    return np.random.default_rng(int(seed))


def bootstrap_indices(n: int, n_boot: int = 500, seed: int | np.random.Generator = 0,
                      stratify: Any = None) -> np.ndarray:
    """Draw bootstrap resamples as row indices.

    Parameters
    ----------
    n : int, size of the evaluation set
    n_boot : int, number of resamples
    seed : int or ``np.random.Generator``
    stratify : None or (n,) labels; when given every resample keeps each class's count (sampling
        with replacement within class), so no resample has a single class.

    Returns
    -------
    (n_boot, n) int32 (int64 when n >= 2**31) indices into ``[0, n)``. Without ``stratify`` the
    rows are ``rng.integers(0, n, (n_boot, n))``; with it, each row holds the resampled members
    of class 0 then class 1 (order within a row does not matter to any metric here).
    """
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise MetricsInputError("n", f"must be a positive int, got {n!r}")
    if not isinstance(n_boot, (int, np.integer)) or isinstance(n_boot, bool) or n_boot < 1:
        raise MetricsInputError("n_boot", f"must be a positive int, got {n_boot!r}")
    rng = _resolve_rng(seed)
    dtype = np.int32 if n < 2**31 else np.int64
    if stratify is None:
        return rng.integers(0, n, size=(n_boot, n), dtype=dtype)
    lab = np.asarray(stratify)
    if lab.shape != (n,):
        raise LengthMismatchError("stratify", f"must have shape ({n},), got {lab.shape}")
    out = np.empty((n_boot, n), dtype=dtype)
    col = 0
    for cls in np.unique(lab):
        members = np.flatnonzero(lab == cls).astype(dtype)
        k = members.size
        out[:, col:col + k] = members[rng.integers(0, k, size=(n_boot, k), dtype=dtype)]
        col += k
    return out


def bootstrap_metrics(y_true: Any, y_score: Any, indices: Any, auprc_method: str = "ap",
                      jackknife: bool = False, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> BootstrapStats:
    """AUROC and AUPRC on the full set and on every bootstrap resample, vectorised.

    Parameters
    ----------
    y_true : (n,) {0, 1}; y_score : (n,) finite floats
    indices : (B, n) ints in ``[0, n)``, e.g. from :func:`bootstrap_indices`
    auprc_method : ``"ap"`` (average precision) or ``"trapezoid"``
    jackknife : also compute the n leave-one-out values (closed form, O(n)) needed by BCa
    chunk_bytes : memory budget for the (rows, 3 m + 1) count matrices processed at once

    Returns
    -------
    BootstrapStats. Cost O(n log n) once plus O(B n) for the resamples; equals sklearn's
    ``roc_auc_score`` / ``average_precision_score`` (or ``auc(recall, precision)``) on
    ``y_true[indices[b]], y_score[indices[b]]`` to ~1e-15.
    """
    _check_method("auprc_method", auprc_method, AUPRC_METHODS)
    y, s = validate_binary(y_true, y_score)
    idx = _check_indices(indices, y.size)
    lay = slot_layout(y, s)
    m, n_slots = lay.n_pos_scores, lay.n_slots
    c_full = np.bincount(lay.slot, minlength=n_slots).astype(np.float64)[None]
    auroc, auprc, _ = _metrics_from_slot_counts(c_full, m, auprc_method)

    n_boot = idx.shape[0]
    boot_auroc = np.empty(n_boot)
    boot_auprc = np.empty(n_boot)
    valid = np.empty(n_boot, dtype=bool)
    # ~8 float64 temporaries of (rows, m) live at once in _metrics_from_slot_counts
    rows = int(max(1, min(n_boot, chunk_bytes // (8 * 8 * max(n_slots, 1)))))
    slot = lay.slot
    c = np.empty((rows, n_slots), dtype=np.float64)
    for start in range(0, n_boot, rows):
        stop = min(n_boot, start + rows)
        cc = c[: stop - start]
        for r, b in enumerate(range(start, stop)):
            cc[r] = np.bincount(slot[idx[b]], minlength=n_slots)
        ra, rp, rv = _metrics_from_slot_counts(cc, m, auprc_method)
        boot_auroc[start:stop], boot_auprc[start:stop], valid[start:stop] = ra, rp, rv
    jack_auroc = jack_auprc = None
    if jackknife:
        jack_auroc, jack_auprc = jackknife_metrics(y, s, auprc_method)
    return BootstrapStats(auroc=float(auroc[0]), auprc=float(auprc[0]), boot_auroc=boot_auroc,
                          boot_auprc=boot_auprc, valid=valid, n=int(y.size), n_pos=int(y.sum()),
                          auprc_method=auprc_method, jack_auroc=jack_auroc, jack_auprc=jack_auprc)


@dataclasses.dataclass(frozen=True)
class MacroBootstrapStats(BootstrapStats):
    """:class:`BootstrapStats` of a multi-label model's **macro** AUROC/AUPRC (the mean over classes), with the
    per-class statistics it averages (``classes``, ``per_class``). ``valid``: resamples in which every class has
    both labels (the PTB-XL benchmark draws only resamples holding every class)."""

    classes: tuple[str, ...] = ()
    per_class: tuple[BootstrapStats, ...] = ()


def bootstrap_macro_metrics(y_true: Any, y_score: Any, indices: Any, classes: Sequence[str] | None = None,
                            auprc_method: str = "ap") -> MacroBootstrapStats:
    """Macro AUROC and AUPRC of a multi-label model on the full set and on every resample.

    Parameters
    ----------
    y_true : (n, C) {0, 1}; y_score : (n, C) finite floats (one column per class)
    indices : (B, n) resamples shared by every class (and every model compared)

    Returns
    -------
    MacroBootstrapStats: ``auroc`` = the mean over classes of :func:`bootstrap_metrics`'s full-set AUROC
    (``sklearn.metrics.roc_auc_score(y, p, average="macro")``); resample ``b`` the mean over classes on resample
    ``b``, valid where every class has both labels; ``n_pos`` counts positive labels over all classes.
    """
    y = np.asarray(y_true)
    s = np.asarray(y_score, dtype=np.float64)
    if y.ndim != 2 or s.shape != y.shape:
        raise LengthMismatchError("y_score", f"multi-label scores must be (n, C) like the labels {y.shape}, got {s.shape}")
    classes = tuple(str(c) for c in (classes if classes is not None else range(y.shape[1])))
    per = tuple(bootstrap_metrics(y[:, j], s[:, j], indices, auprc_method) for j in range(y.shape[1]))
    valid = np.logical_and.reduce([st.valid for st in per])
    boot = {m: np.mean([getattr(st, f"boot_{m}") for st in per], axis=0) for m in ("auroc", "auprc")}
    return MacroBootstrapStats(auroc=float(np.mean([st.auroc for st in per])),
                               auprc=float(np.mean([st.auprc for st in per])),
                               boot_auroc=np.where(valid, boot["auroc"], np.nan),
                               boot_auprc=np.where(valid, boot["auprc"], np.nan), valid=valid, n=int(y.shape[0]),
                               n_pos=int((y == 1).sum()), auprc_method=auprc_method, classes=classes, per_class=per)


def benchmark_interval(st: BootstrapStats, metric: str = "auroc") -> dict:
    """The PTB-XL benchmark's way of reporting (``utils.generate_ptbxl_summary_table``): the full-set value, the
    5th and 95th percentiles of the valid resamples, and the **maximum deviation**
    ``max(upper - point, point - lower)``, printed ``0.928(05)`` (= 0.928 +- 0.005)."""
    point = float(getattr(st, metric))
    boot = getattr(st, f"boot_{metric}")[st.valid]
    lo, hi = (float(np.quantile(boot, 0.05)), float(np.quantile(boot, 0.95))) if boot.size else (np.nan, np.nan)
    dev = max(hi - point, point - lo)
    return {f"{metric}_p05": lo, f"{metric}_p95": hi, f"{metric}_max_dev": dev,
            f"{metric}_benchmark": f"{np.round(point, 3):.3f}({int(dev * 1000):02d})" if np.isfinite(dev) else ""}


def jackknife_metrics(y_true: Any, y_score: Any, auprc_method: str = "ap"
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-out AUROC and AUPRC for every sample, in closed form (O(n log n) total).

    Removing one sample only shifts the cumulative counts at and below its score group by one,
    so each leave-one-out value is a prefix sum of the unchanged terms, a boundary term and a
    suffix sum of shifted terms that do not depend on which sample was removed.

    Returns
    -------
    jack_auroc, jack_auprc : (n,) float64; ``jack[i]`` is the metric without sample ``i``
    (equals sklearn on ``np.delete(y, i), np.delete(s, i)``; NaN if that leaves one class).
    """
    _check_method("auprc_method", auprc_method, AUPRC_METHODS)
    y, s = validate_binary(y_true, y_score)
    uniq, inv = np.unique(s, return_inverse=True)
    g_of = uniq.size - 1 - inv  # descending group index of each sample
    n_groups = uniq.size
    pg = np.bincount(g_of, weights=y, minlength=n_groups)
    ng = np.bincount(g_of, weights=1 - y, minlength=n_groups)
    tps, fps = np.cumsum(pg), np.cumsum(ng)
    cum = tps + fps
    n_pos, n_neg = tps[-1], fps[-1]

    def prec(tp, cc):  # precision, 1 where nothing is above the threshold (sklearn's (0, 1) point)
        return np.divide(tp, cc, out=np.ones_like(tp, dtype=np.float64), where=cc > 0)

    def excl_prefix(x):
        return np.concatenate(([0.0], np.cumsum(x)[:-1]))

    def suffix_after(x):  # sum_{k > g} x_k
        return np.concatenate((np.cumsum(x[::-1])[::-1][1:], [0.0]))

    with np.errstate(invalid="ignore", divide="ignore"):
        # AUROC
        u = np.sum(pg * (n_neg - fps + 0.5 * ng))
        auc_pos = (u - (n_neg - fps + 0.5 * ng)) / ((n_pos - 1) * n_neg)
        auc_neg = (u - ((tps - pg) + 0.5 * pg)) / (n_pos * (n_neg - 1))
        # AUPRC
        p_k = prec(tps, cum)
        if auprc_method == "ap":
            terms = pg * p_k
            pos_own = (pg - 1) * prec(tps - 1, cum - 1)
            pos_after = pg * prec(tps - 1, cum - 1)
            neg_own = pg * prec(tps, cum - 1)
            neg_after = neg_own
        else:
            before = cum - pg - ng  # samples strictly above group k
            prev = prec(tps - pg, before)
            terms = 0.5 * pg * (p_k + prev)
            pos_own = 0.5 * (pg - 1) * (prec(tps - 1, cum - 1) + prev)
            pos_after = 0.5 * pg * (prec(tps - 1, cum - 1) + prec(tps - pg - 1, before - 1))
            neg_own = 0.5 * pg * (prec(tps, cum - 1) + prev)
            neg_after = 0.5 * pg * (prec(tps, cum - 1) + prec(tps - pg, before - 1))
        pre = excl_prefix(terms)
        pr_pos = (pre + pos_own + suffix_after(pos_after)) / (n_pos - 1)
        pr_neg = (pre + neg_own + suffix_after(neg_after)) / n_pos
    ypos = y == 1
    jack_auroc = np.where(ypos, auc_pos[g_of], auc_neg[g_of])
    jack_auprc = np.where(ypos, pr_pos[g_of], pr_neg[g_of])
    # leaving out the only positive / negative leaves a single class: undefined
    if n_pos == 1:
        jack_auroc[ypos] = jack_auprc[ypos] = np.nan
    if n_neg == 1:
        jack_auroc[~ypos] = jack_auprc[~ypos] = np.nan
    return jack_auroc, jack_auprc


# ------------------------------------------------------------------------------------ intervals


def percentile_interval(boot: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    """Equal-tailed percentile interval of the finite values of ``boot`` (numpy 'linear' quantiles)."""
    b = np.asarray(boot, dtype=np.float64)
    b = b[np.isfinite(b)]
    if b.size == 0:
        warnings.warn("no valid bootstrap resamples: interval is NaN", DegenerateIntervalWarning,
                      stacklevel=2)
        return float("nan"), float("nan")
    lo, hi = np.quantile(b, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def bca_interval(theta_hat: float, boot: np.ndarray, jack: np.ndarray, alpha: float = 0.05
                 ) -> tuple[float, float]:
    """Bias-corrected and accelerated (BCa) bootstrap interval.

    Follows Efron & Tibshirani (1993) eq. 14.10-14.15 exactly as ``scipy.stats.bootstrap(...,
    method="BCa")`` does: ``z0 = Phi^-1(mean(boot < theta) / 2 + mean(boot <= theta) / 2)``,
    acceleration ``a = sum(d^3) / (6 sum(d^2)^1.5)`` with ``d = mean(jack) - jack``, and the
    adjusted levels ``Phi(z0 + (z0 + z) / (1 - a (z0 + z)))`` for ``z = Phi^-1(alpha/2)`` and
    ``Phi^-1(1 - alpha/2)``, read from ``boot`` with 'linear' quantiles.

    Parameters
    ----------
    theta_hat : float, statistic on the full set
    boot : (B,) bootstrap statistics (NaN = invalid resample, ignored)
    jack : (n,) leave-one-out statistics (NaN entries are ignored)
    """
    b = np.asarray(boot, dtype=np.float64)
    b = b[np.isfinite(b)]
    j = np.asarray(jack, dtype=np.float64)
    j = j[np.isfinite(j)]
    if b.size == 0 or j.size < 2:
        warnings.warn("BCa interval undefined (no valid resamples or jackknife values): NaN",
                      DegenerateIntervalWarning, stacklevel=2)
        return float("nan"), float("nan")
    z0 = ndtri((np.count_nonzero(b < theta_hat) + np.count_nonzero(b <= theta_hat)) / (2 * b.size))
    d = j.mean() - j
    den = 6.0 * np.sum(d**2) ** 1.5
    a_hat = np.sum(d**3) / den if den > 0 else 0.0
    z = ndtri(np.array([alpha / 2, 1 - alpha / 2]))
    levels = ndtr(z0 + (z0 + z) / (1 - a_hat * (z0 + z)))
    if not np.all(np.isfinite(levels)):
        warnings.warn(f"BCa interval undefined (z0={z0}, a={a_hat}): NaN", DegenerateIntervalWarning,
                      stacklevel=2)
        return float("nan"), float("nan")
    lo, hi = np.quantile(b, levels)
    return float(lo), float(hi)


def _interval(theta_hat: float, boot: np.ndarray, jack: np.ndarray | None, alpha: float,
              method: str) -> tuple[float, float]:
    if method == "bca":
        return bca_interval(theta_hat, boot, jack, alpha)
    return percentile_interval(boot, alpha)


def bootstrap_p_value(diff_boot: np.ndarray) -> float:
    """Two-sided bootstrap p-value for "difference = 0".

    ``p = min(1, 2 (1 + min(#{d_b <= 0}, #{d_b >= 0})) / (B + 1))`` over the B valid resampled
    differences ``d_b``: twice the smaller tail beyond 0, i.e. (up to the +1 correction, which
    keeps p > 0, Davison & Hinkley 1997 eq. 4.11) the smallest ``alpha`` whose equal-tailed
    percentile interval excludes 0. Identical models give p = 1.
    """
    d = np.asarray(diff_boot, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return float("nan")
    k = min(np.count_nonzero(d <= 0), np.count_nonzero(d >= 0))
    return float(min(1.0, 2.0 * (1 + k) / (d.size + 1)))


def _check_alpha(alpha: float) -> float:
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0 < alpha < 1:
        raise MetricsInputError("alpha", f"must be a float in (0, 1), got {alpha!r}")
    return float(alpha)


def _prepare_indices(n: int, y: np.ndarray, n_boot: int, seed, indices, stratify: bool) -> np.ndarray:
    if indices is None:
        return bootstrap_indices(n, n_boot, seed, stratify=y if stratify else None)
    return _check_indices(indices, n)


def bootstrap_ci(y_true: Any, y_score: Any, n_boot: int = 500, seed: int | np.random.Generator = 0,
                 indices: Any = None, alpha: float = 0.05, method: str = "percentile",
                 auprc_method: str = "ap", stratify: bool = False) -> dict:
    """AUROC and AUPRC with bootstrap confidence intervals.

    Parameters
    ----------
    y_true : (n,) {0, 1} labels; y_score : (n,) finite scores (probability of class 1)
    n_boot : int, resamples to draw when ``indices`` is None
    seed : int or Generator for drawing the resamples
    indices : optional (B, n) resample indices (e.g. saved once per task with
        :func:`bootstrap_indices_cached` so every model is scored on the same resamples);
        overrides ``n_boot`` / ``seed`` / ``stratify``
    alpha : float, 1 - confidence level (0.05 -> 95% intervals)
    method : ``"percentile"`` (default) or ``"bca"``
    auprc_method : ``"ap"`` (average precision, default) or ``"trapezoid"`` (authors' code)
    stratify : resample within class (keeps the class counts)

    Returns
    -------
    dict with ``auroc, auroc_lo, auroc_hi, auprc, auprc_lo, auprc_hi`` (point estimates on the
    full set, interval bounds from the bootstrap), ``n, n_pos, n_boot`` and ``n_boot_valid``
    (resamples with both classes; single-class resamples are dropped, see module docstring),
    ``alpha, method, auprc_method``.
    """
    _check_method("method", method, CI_METHODS)
    _check_method("auprc_method", auprc_method, AUPRC_METHODS)
    alpha = _check_alpha(alpha)
    y, s = validate_binary(y_true, y_score)
    idx = _prepare_indices(y.size, y, n_boot, seed, indices, stratify)
    st = bootstrap_metrics(y, s, idx, auprc_method, jackknife=method == "bca")
    return interval_summary(st, alpha=alpha, method=method)


def interval_summary(st: BootstrapStats, alpha: float = 0.05, method: str = "percentile") -> dict:
    """Intervals of a :class:`BootstrapStats` as the dict returned by :func:`bootstrap_ci`."""
    out: dict[str, Any] = {}
    for name, point, boot, jack in (("auroc", st.auroc, st.boot_auroc, st.jack_auroc),
                                    ("auprc", st.auprc, st.boot_auprc, st.jack_auprc)):
        lo, hi = _interval(point, boot[st.valid], jack, alpha, method)
        out.update({name: point, f"{name}_lo": lo, f"{name}_hi": hi})
    out.update(n=st.n, n_pos=st.n_pos, n_boot=int(st.valid.size), n_boot_valid=int(st.valid.sum()),
               alpha=alpha, method=method, auprc_method=st.auprc_method)
    return out


def paired_difference(y_true: Any, score_a: Any, score_b: Any, n_boot: int = 500,
                      seed: int | np.random.Generator = 0, indices: Any = None, alpha: float = 0.05,
                      method: str = "percentile", auprc_method: str = "ap",
                      stratify: bool = False) -> dict:
    """Paired bootstrap comparison of two models' scores on the same samples (A minus B).

    Both models are scored on the same resamples, so the interval of the difference accounts for
    the correlation between them.

    Returns
    -------
    dict with, for ``m`` in ``auroc, auprc``: ``{m}_a, {m}_b`` (full-set values), ``{m}_diff``
    (= a - b), ``{m}_diff_lo, {m}_diff_hi`` (interval of the resampled differences, percentile or
    BCa with the jackknife of the difference) and ``{m}_p`` (two-sided bootstrap p-value, formula in
    :func:`bootstrap_p_value`), plus ``n, n_pos, n_boot, n_boot_valid, alpha, method, auprc_method``.
    """
    _check_method("method", method, CI_METHODS)
    _check_method("auprc_method", auprc_method, AUPRC_METHODS)
    alpha = _check_alpha(alpha)
    y, sa = validate_binary(y_true, score_a, score_name="score_a")
    sb = _check_scores(score_b, y.size, "score_b")
    idx = _prepare_indices(y.size, y, n_boot, seed, indices, stratify)
    jk = method == "bca"
    a = bootstrap_metrics(y, sa, idx, auprc_method, jackknife=jk)
    b = bootstrap_metrics(y, sb, idx, auprc_method, jackknife=jk)
    return compare(a, b, alpha=alpha, method=method)


def compare(a: BootstrapStats, b: BootstrapStats, alpha: float = 0.05, method: str = "percentile") -> dict:
    """Paired difference ``a - b`` of two :class:`BootstrapStats` computed on the same indices."""
    if a.valid.shape != b.valid.shape or not np.array_equal(a.valid, b.valid) or a.n != b.n:
        raise RunMismatchError("compare: the two models were not scored on the same resamples")
    out: dict[str, Any] = {}
    for name in ("auroc", "auprc"):
        pa, pb = getattr(a, name), getattr(b, name)
        d_boot = (getattr(a, f"boot_{name}") - getattr(b, f"boot_{name}"))[a.valid]
        ja, jb = getattr(a, f"jack_{name}"), getattr(b, f"jack_{name}")
        jack = ja - jb if (ja is not None and jb is not None) else None
        lo, hi = _interval(pa - pb, d_boot, jack, alpha, method)
        out.update({f"{name}_a": pa, f"{name}_b": pb, f"{name}_diff": pa - pb, f"{name}_diff_lo": lo,
                    f"{name}_diff_hi": hi, f"{name}_p": bootstrap_p_value(d_boot)})
    out.update(n=a.n, n_pos=a.n_pos, n_boot=int(a.valid.size), n_boot_valid=int(a.valid.sum()),
               alpha=alpha, method=method, auprc_method=a.auprc_method)
    return out


def holm_adjust(p_values: Any) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979) of a family of m tests: the i-th smallest p becomes
    ``max_{j <= i} min(1, (m - j + 1) p_(j))``; rejecting where the adjusted p <= alpha controls the family-wise
    error rate at alpha. NaN p-values stay NaN and do not count in m. float64 array in the input order."""
    p = np.asarray(p_values, dtype=np.float64).reshape(-1)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if m:
        order = ok[np.argsort(p[ok], kind="stable")]
        out[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return out


def seed_pool(stats: Sequence[BootstrapStats], seed: int | Sequence[int] = 0) -> BootstrapStats:
    """One model's :class:`BootstrapStats` over S fine-tuning seeds, scored on the same test resamples.

    Point estimate: the mean over seeds of the full-set values. Resample ``b``: the mean over S seeds drawn
    with replacement (``numpy.random.default_rng(seed)``, one (B, S) draw) of the seeds' values on test
    resample ``b``, so its spread covers both test resampling and seed variation (a two-level bootstrap).
    The draw depends only on (seed, B, S): two models pooled with the same ``seed`` get the same draws, which
    pairs seed j of one with seed j of the other; fine-tuning seeds of two models are unrelated, so a
    difference should pool each model with its own stream (``seed=[seed, k]``, ``pipeline.metrics.pool_seeds``):
    paired on the test resamples, the seeds drawn independently. The jackknife is not pooled:
    use the percentile method for pooled stats. One seed: the seed's own stats (no seed variation to add).
    """
    stats = list(stats)
    if not stats:
        raise MetricsInputError("stats", "no runs to pool over seeds")
    if len(stats) == 1:
        return stats[0]
    a = stats[0]
    if any(s.valid.shape != a.valid.shape or not np.array_equal(s.valid, a.valid) or s.n != a.n for s in stats):
        raise RunMismatchError("seed_pool: the seeds were not scored on the same resamples")
    draw = np.random.default_rng(seed).integers(0, len(stats), size=(a.valid.size, len(stats)))  # (B, S)
    out = {}
    for name in ("auroc", "auprc"):
        boot = np.stack([getattr(s, f"boot_{name}") for s in stats], axis=1)                     # (B, S)
        out[name] = float(np.mean([getattr(s, name) for s in stats]))
        out[f"boot_{name}"] = np.take_along_axis(boot, draw, axis=1).mean(axis=1)
    return BootstrapStats(out["auroc"], out["auprc"], out["boot_auroc"], out["boot_auprc"], a.valid.copy(), a.n,
                          a.n_pos, a.auprc_method)


# ------------------------------------------------------------------------------------ saved indices


def record_ids_hash(record_ids: Iterable[Any]) -> str:
    """sha256 of the record ids in order (indices are positional, so order matters)."""
    h = hashlib.sha256()
    for r in record_ids:
        h.update(str(r).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def _index_paths(folder: str | os.PathLike, name: str) -> tuple[Path, Path]:
    if not name or any(ch in name for ch in "/\\") or name.startswith("."):
        raise MetricsInputError("name", f"{name!r} is not a plain file name")
    folder = Path(folder)
    return folder / f"{name}.npy", folder / f"{name}.json"


def save_bootstrap_indices(folder: str | os.PathLike, name: str, indices: np.ndarray,
                           record_ids: Sequence[Any], seed: Any = None, stratified: bool = False) -> Path:
    """Save ``indices`` (B, n) as ``<folder>/<name>.npy`` with a ``<name>.json`` sidecar holding the
    sha256 of the record ids (in the order the indices refer to), n, n_boot, seed and stratified."""
    record_ids = list(record_ids)
    idx = _check_indices(indices, len(record_ids))
    npy, meta = _index_paths(folder, name)
    npy.parent.mkdir(parents=True, exist_ok=True)
    tmp = npy.with_name(npy.stem + ".tmp.npy")
    np.save(tmp, idx)
    os.replace(tmp, npy)
    info = {"record_ids_sha256": record_ids_hash(record_ids), "n": len(record_ids), "n_boot": int(idx.shape[0]),
            "seed": seed if isinstance(seed, int) else None, "stratified": bool(stratified), "dtype": str(idx.dtype)}
    atomic_write_text(meta, json.dumps(info, indent=2) + "\n")
    return npy


def load_bootstrap_indices(folder: str | os.PathLike, name: str, record_ids: Sequence[Any]) -> np.ndarray:
    """Load indices saved by :func:`save_bootstrap_indices`; raise
    :class:`BootstrapIndexMismatchError` when they were saved for other record ids (or order)."""
    record_ids = list(record_ids)
    npy, meta = _index_paths(folder, name)
    if not npy.exists() or not meta.exists():
        raise FileNotFoundError(f"bootstrap indices {npy} (and {meta.name}) not found")
    info = json.loads(meta.read_text())
    want = record_ids_hash(record_ids)
    if info.get("record_ids_sha256") != want:
        raise BootstrapIndexMismatchError(
            "record_ids", f"{npy} was saved for a different evaluation set (record-id hash "
                          f"{info.get('record_ids_sha256', '?')[:12]}, n={info.get('n')}; this set: "
                          f"{want[:12]}, n={len(record_ids)}): same task and split must mean the same "
                          "records in the same order")
    try:
        idx = np.load(npy, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:  # truncated, not .npy, an object (pickle) array: refused
        raise BootstrapIndicesError(str(npy), f"not a readable .npy of plain integers ({type(e).__name__}: "
                                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    return _check_indices(idx, len(record_ids), argument=str(npy))


def bootstrap_indices_cached(folder: str | os.PathLike, name: str, record_ids: Sequence[Any],
                             n_boot: int = 500, seed: int = 0, stratify: Any = None) -> np.ndarray:
    """Load ``<folder>/<name>.npy`` if saved (checking record ids and ``n_boot``), else draw with
    :func:`bootstrap_indices` and save: the same evaluation set gets the same resamples for every
    model and fraction."""
    record_ids = list(record_ids)
    npy, meta = _index_paths(folder, name)
    if npy.exists():
        idx = load_bootstrap_indices(folder, name, record_ids)
        info = json.loads(meta.read_text())
        if idx.shape[0] != n_boot or bool(info.get("stratified")) != (stratify is not None):
            raise BootstrapIndicesError(
                "n_boot", f"{npy} holds {idx.shape[0]} resamples (stratified={info.get('stratified')}); "
                          f"asked for {n_boot} (stratified={stratify is not None}); use another folder")
        return idx
    idx = bootstrap_indices(len(record_ids), n_boot, seed, stratify=stratify)
    save_bootstrap_indices(folder, name, idx, record_ids, seed=seed, stratified=stratify is not None)
    return idx
