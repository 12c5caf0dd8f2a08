"""Bootstrap resamples (:func:`bootstrap_indices`) and every resample's AUROC/AUPRC at once (:func:`bootstrap_metrics`,
:func:`bootstrap_macro_metrics`), and the jackknife values BCa needs."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
from heartbeit_lib.analysis.metrics.checks import (AUPRC_METHODS, _check_indices, _check_method, LengthMismatchError,
                                                   MetricsInputError, validate_binary)
from heartbeit_lib.analysis.metrics.scores import _metrics_from_slot_counts, slot_layout


#: memory budget (bytes) of the per-chunk count matrices in :func:`bootstrap_metrics`
DEFAULT_CHUNK_BYTES = 16 * 2**20  # measured best on a 2-core box: chunks that stay in cache




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
