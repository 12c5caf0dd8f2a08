"""Confidence intervals (percentile, BCa) from bootstrap values, paired differences with two-sided p-values, Holm's
adjustment and the pooling of fine-tuning seeds."""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
from scipy.special import ndtr, ndtri
from heartbeit_lib.analysis.metrics.checks import (AUPRC_METHODS, CI_METHODS, _check_indices, _check_method,
                                                   _check_scores, DegenerateIntervalWarning, MetricsInputError,
                                                   RunMismatchError, validate_binary)
from heartbeit_lib.analysis.metrics.bootstrap import bootstrap_indices, bootstrap_metrics, BootstrapStats




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


def compare(a: BootstrapStats, b: BootstrapStats, alpha: float = 0.05, method: str = "percentile",
            alpha_adj: float | None = None) -> dict:
    """Paired difference ``a - b`` of two :class:`BootstrapStats` computed on the same indices.

    ``alpha_adj`` (e.g. ``alpha / m`` for a family of m differences) adds ``<metric>_diff_lo_adj`` / ``_hi_adj``:
    the same resample differences' interval at level ``1 - alpha_adj``."""
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
        if alpha_adj is not None:
            out[f"{name}_diff_lo_adj"], out[f"{name}_diff_hi_adj"] = _interval(pa - pb, d_boot, jack, alpha_adj, method)
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
