"""AUROC and AUPRC of one evaluation set, exactly, through the slot layout (see the package docstring):
:func:`auroc_score`, :func:`auprc_score` and :func:`weighted_metrics` (counts per sample, one bootstrap resample)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from heartbeit_lib.analysis.metrics.checks import (AUPRC_METHODS, _check_method, LengthMismatchError,
                                                   MetricsInputError, validate_binary)




@dataclasses.dataclass(frozen=True)
class SlotLayout:
    """Samples mapped once to the slot layout of the package docstring.

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
