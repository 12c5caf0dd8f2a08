"""Operating thresholds, calibration statistics and recalibration of a binary classifier's scores.

Pure numpy/scipy: every function takes labels ``y`` (0/1, shape (N,)) and predicted probabilities
``p`` (shape (N,), in [0, 1]) plus the *name of the split* they come from (``"val"``, ``"test"``,
``"external"``), which every error message names. Nothing here reads files or runs.

Conventions
-----------
Decision rule
    A record is called positive when ``score >= threshold`` (scikit-learn's ``roc_curve``
    convention), so a threshold equal to a validation score reproduces that score's row of the ROC.
Threshold choice (:func:`choose_threshold`, always on a *validation* split)
    Candidates are the distinct scores of that split. ``method="youden"`` maximises
    ``J = sensitivity + specificity - 1``; ``method="sensitivity"`` takes the highest candidate whose
    sensitivity is ``>= target_sensitivity`` (sensitivity falls as the threshold rises, so this is
    the most specific threshold meeting the target); ``method="specificity"`` takes the lowest candidate
    whose specificity is ``>= target_specificity`` (the most sensitive threshold meeting it). Ties in J go to the *highest* threshold (the
    most specific of the equally good points; ``np.argmax`` over ``roc_curve``'s decreasing
    thresholds picks the same one). Constant scores admit no threshold and raise.
Threshold uncertainty (:func:`threshold_interval`)
    The same choice repeated on ``n_boot`` bootstrap resamples of the validation records (drawn with
    replacement, ``np.random.default_rng(seed)``); the 2.5 and 97.5 percentiles of the chosen thresholds
    and, at the chosen threshold, the percentile interval of sensitivity and specificity over the
    resamples. Resamples with one class or constant scores are skipped and counted.
Calibration bins (:func:`reliability`, :func:`expected_calibration_error`)
    ``n_bins`` (default 10) equal-width bins on [0, 1], closed on the right: bin k holds
    ``edges[k] < p <= edges[k+1]``, and the first bin also holds 0 (the bins of scikit-learn's
    ``calibration_curve(strategy="uniform")``). Empty bins are reported with count 0 and NaN means
    and carry no weight in the ECE: ``ECE = sum_k (n_k / N) * |mean p_k - fraction positive_k|``.
Calibration slope and intercept (:func:`calibration_slope_intercept`)
    Unpenalised logistic regression of ``y`` on ``logit(p)``: ``logit P(y=1) = a + b * logit(p)``
    (Cox 1958; Van Calster et al. 2019, "Calibration: the Achilles heel of predictive analytics").
    ``slope = b``, ``intercept = a``; perfectly calibrated scores give slope 1 and intercept 0, a
    slope below 1 means overconfident (too extreme) scores. ``calibration_in_the_large`` is the
    intercept with the slope fixed at 1 (``logit(p)`` as an offset): 0 when the mean predicted
    probability equals the observed prevalence, positive when the model under-predicts.
    ``logit(p)`` uses ``p`` clipped to ``[EPS, 1 - EPS]`` (``EPS = 1e-7``, about one float32 step
    below 1) so that probabilities of exactly 0 or 1 stay finite.
Recalibration (:func:`fit_calibrator`)
    Platt scaling (``expit(a + b * logit(p))``, the same fit as the calibration slope) or isotonic
    regression (pool-adjacent-violators on the distinct scores, linear interpolation between them,
    clipped outside their range: scikit-learn's ``IsotonicRegression(out_of_bounds="clip")``).
    A fitted :class:`Calibrator` records the split it was fitted on and a fingerprint of the fitting
    scores; :meth:`Calibrator.apply` requires the name of the split it is applied to and refuses
    that split or the very same scores, so a model cannot be recalibrated on the data it is
    evaluated on by accident.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import scipy.special

EPS: float = 1e-7         # probabilities are clipped to [EPS, 1 - EPS] before logit()
N_BINS: int = 10          # default number of equal-width calibration bins on [0, 1]
THRESHOLD_METHODS: tuple[str, ...] = ("youden", "sensitivity", "specificity")
CALIBRATION_METHODS: tuple[str, ...] = ("platt", "isotonic")


# --------------------------------------------------------------------------- errors
class CalibrationError(ValueError):
    """Base class: bad labels or scores; the message names the split and the reason."""


class SingleClassError(CalibrationError):
    """The labels of a split hold only one class (a threshold or a calibration fit needs both)."""


class ConstantScoreError(CalibrationError):
    """All scores of a split are equal (no threshold separates them, no slope can be fitted)."""


class SeparationError(CalibrationError):
    """The logistic fit does not converge: ``logit(p)`` separates the classes perfectly."""


class SameSplitError(CalibrationError):
    """A calibrator was applied to the split (or the very scores) it was fitted on."""


# --------------------------------------------------------------------------- checks
def check_probabilities(p, split: str) -> np.ndarray:
    """Validated float64 copy of scores ``p`` (N,) in [0, 1]; :class:`CalibrationError` naming
    ``split`` for an empty, non-1-D, non-finite or out-of-range array."""
    pa = np.asarray(p, dtype=np.float64)
    if pa.ndim != 1 or len(pa) == 0:
        raise CalibrationError(f"split {split!r}: scores must be a non-empty 1-D array, got shape {pa.shape}")
    if not np.isfinite(pa).all():
        raise CalibrationError(f"split {split!r}: {int((~np.isfinite(pa)).sum())} scores are NaN or inf")
    if pa.min() < 0 or pa.max() > 1:
        raise CalibrationError(f"split {split!r}: scores must be probabilities in [0, 1], got range "
                               f"[{pa.min():g}, {pa.max():g}]")
    return pa


def check_scores(y, p, split: str, *, both_classes: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Validated copies of labels and scores: ``y`` int64 (N,) in {0, 1}, ``p`` float64 (N,) in [0, 1].

    Raises :class:`CalibrationError` naming ``split`` for bad scores (:func:`check_probabilities`),
    labels of another length or outside {0, 1}, and :class:`SingleClassError` when
    ``both_classes`` and one class is absent. This is one flat list of checks.
    """
    pa = check_probabilities(p, split)
    ya = np.asarray(y)
    if ya.shape != pa.shape:
        raise CalibrationError(f"split {split!r}: labels of shape {ya.shape} for scores of shape {pa.shape}")
    if ya.dtype == bool:
        ya = ya.astype(np.int64)
    if not np.issubdtype(ya.dtype, np.number) or not np.isin(ya, (0, 1)).all():
        raise CalibrationError(f"split {split!r}: labels must be 0 or 1, got values {np.unique(ya)[:5].tolist()}")
    ya = ya.astype(np.int64)
    if both_classes and ya.min() == ya.max():
        raise SingleClassError(f"split {split!r}: all {len(ya)} labels are {int(ya[0])}; both classes "
                               f"are needed")
    return ya, pa


def logit(p) -> np.ndarray:
    """``log(p / (1 - p))`` of ``p`` clipped to ``[EPS, 1 - EPS]``, float64."""
    return scipy.special.logit(np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS))


# --------------------------------------------------------------------------- thresholds
@dataclass(frozen=True)
class Threshold:
    """An operating threshold and where it came from (record it with the run)."""

    value: float                      # positive when score >= value
    method: str                       # "youden" or "sensitivity"
    split: str                        # the split it was chosen on
    sensitivity: float                # on that split, at value
    specificity: float                # on that split, at value
    target_sensitivity: float | None  # the target when method == "sensitivity", else None
    target_specificity: float | None = None  # the target when method == "specificity", else None


def _roc_points(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Distinct scores in decreasing order (K,), the sensitivity and specificity of
    ``score >= threshold`` at each of them (both (K,), computed as in :func:`operating_point`) and
    Youden's J times ``n_pos * n_neg`` as exact integers (K,), so that ties in J are exact ties."""
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(ps)), len(ps) - 1]  # last index of each run of equal scores
    tp = np.cumsum(ys)[last]
    fp = (last + 1) - tp
    n_pos, n_neg = int(ys.sum()), len(ys) - int(ys.sum())
    return ps[last], tp / n_pos, (n_neg - fp) / n_neg, tp * n_neg - fp * n_pos


def choose_threshold(y, p, *, split: str, method: str = "youden", target_sensitivity: float | None = None,
                     target_specificity: float | None = None) -> Threshold:
    """Choose an operating threshold on a validation split (see the module docstring for ties).

    Parameters
    ----------
    y, p : (N,) labels in {0, 1} and probabilities in [0, 1] of the validation split.
    split : name of that split (recorded, and named in errors).
    method : ``"youden"`` (max sensitivity + specificity - 1), ``"sensitivity"`` (the highest
        threshold whose sensitivity is >= ``target_sensitivity``) or ``"specificity"`` (the lowest
        threshold whose specificity is >= ``target_specificity``).
    target_sensitivity, target_specificity : in (0, 1]; each required for (and only allowed with) its method.
    """
    if method not in THRESHOLD_METHODS:
        raise CalibrationError(f"method: {method!r} is not one of {THRESHOLD_METHODS}")
    for name, target in (("sensitivity", target_sensitivity), ("specificity", target_specificity)):
        if (method == name) != (target is not None):
            raise CalibrationError(f"target_{name}: {target!r} given with method={method!r} "
                                   f"(it is required for {name!r} and only allowed there)")
        if target is not None and not 0 < target <= 1:
            raise CalibrationError(f"target_{name}: {target!r} is not in (0, 1]")
    ya, pa = check_scores(y, p, split, both_classes=True)
    thr, sens, spec, j_scaled = _roc_points(ya, pa)
    if len(thr) == 1:
        raise ConstantScoreError(f"split {split!r}: all {len(pa)} scores equal {thr[0]:g}; no threshold "
                                 f"separates them")
    if method == "youden":
        k = int(np.argmax(j_scaled))  # first maximum = highest threshold among ties
    elif method == "sensitivity":
        k = int(np.flatnonzero(sens >= target_sensitivity - 1e-12)[0])  # sens reaches 1 at the lowest score
    else:
        ok = np.flatnonzero(spec >= target_specificity - 1e-12)  # specificity falls as the threshold falls
        if not len(ok):
            raise CalibrationError(f"split {split!r}: no threshold reaches specificity {target_specificity:g} "
                                   f"(negatives share the highest score {thr[0]:g}; best {spec[0]:.3f})")
        k = int(ok[-1])
    return Threshold(value=float(thr[k]), method=method, split=split, sensitivity=float(sens[k]),
                     specificity=float(spec[k]), target_sensitivity=target_sensitivity,
                     target_specificity=target_specificity)


@dataclass(frozen=True)
class ThresholdInterval:
    """Bootstrap spread of a threshold choice on its validation split (see the module docstring)."""

    value_lo: float        # 2.5 percentile of the re-chosen thresholds
    value_hi: float        # 97.5 percentile
    sensitivity_lo: float  # percentile interval of the sensitivity at the chosen threshold over the resamples
    sensitivity_hi: float
    specificity_lo: float
    specificity_hi: float
    n_boot: int            # resamples drawn
    n_used: int            # resamples with both classes and more than one score (the others are skipped)


BOOT_ELEMENTS = 1 << 18  # resample x record counts held at once by threshold_interval (2 MiB int64 arrays: larger
# ones are faulted in as huge pages, which stalled on this 2-core machine; see signals.WORK_BYTES)


def threshold_interval(y, p, threshold: Threshold, *, n_boot: int = 500, seed: int = 0) -> ThresholdInterval:
    """How far ``threshold`` (chosen on ``(y, p)`` by :func:`choose_threshold`) moves, and how its sensitivity and
    specificity vary, over ``n_boot`` bootstrap resamples of the same validation records.

    Each resample's choice is :func:`choose_threshold`'s and its sensitivity / specificity at ``threshold`` are
    :func:`operating_point`'s, the same numbers as a loop of those two calls (tested), without sorting each
    resample: the records are sorted once and a resample is how many times it drew each of them, so its counts
    of positives and negatives at or above every distinct score are cumulative sums over that one order (exact
    integers, exact ties); :data:`BOOT_ELEMENTS` counts at a time. 07 runs this once per class of a multi-label
    model."""
    ya, pa = check_scores(y, p, threshold.split, both_classes=True)
    n = len(ya)
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, n, n) for _ in range(n_boot)]  # one call per resample: the documented stream
    order = np.argsort(-pa, kind="stable")
    ps, ys = pa[order], ya[order]
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)  # record -> its position in the descending order
    run_end = np.r_[ps[1:] != ps[:-1], True]  # the last position of each run of equal scores
    n_at_or_above = int((ps >= threshold.value).sum())  # positions called positive at the threshold
    values, sens, spec = [], [], []
    rows = max(1, BOOT_ELEMENTS // n)
    for s0 in range(0, n_boot, rows):
        idx = np.stack(draws[s0:s0 + rows])
        b = len(idx)
        counts = np.bincount((rank[idx] + n * np.arange(b)[:, None]).ravel(), minlength=b * n).reshape(b, n)
        drawn = np.cumsum(counts, axis=1)  # (B, n) records drawn at or above each position's score
        tp = np.cumsum(counts * ys, axis=1)
        n_pos = tp[:, -1:]
        n_neg = n - n_pos
        at_end = drawn[:, run_end]
        present = np.diff(at_end, axis=1, prepend=0) > 0  # (B, runs) scores the resample holds: the candidates
        keep = (n_pos[:, 0] > 0) & (n_neg[:, 0] > 0) & (present.sum(1) > 1)  # one class / constant: skipped
        v, ok = _choose_rows(ps[run_end], present, tp[:, run_end], at_end - tp[:, run_end], n_pos, n_neg, threshold)
        ok &= keep
        if n_at_or_above:
            tp_t, fp_t = tp[:, n_at_or_above - 1], drawn[:, n_at_or_above - 1] - tp[:, n_at_or_above - 1]
        else:
            tp_t = fp_t = np.zeros(b, np.int64)
        values.extend(v[ok].tolist())
        sens.extend((tp_t / n_pos[:, 0])[ok].tolist())
        spec.extend(((n_neg[:, 0] - fp_t) / n_neg[:, 0])[ok].tolist())
    if not values:
        raise CalibrationError(f"split {threshold.split!r}: none of {n_boot} bootstrap resamples admits a threshold")
    q = lambda v: np.percentile(v, [2.5, 97.5])  # noqa: E731
    (v0, v1), (s0, s1), (c0, c1) = q(values), q(sens), q(spec)
    return ThresholdInterval(float(v0), float(v1), float(s0), float(s1), float(c0), float(c1), n_boot, len(values))


def _choose_rows(scores: np.ndarray, present: np.ndarray, tp: np.ndarray, fp: np.ndarray, n_pos: np.ndarray,
                 n_neg: np.ndarray, threshold: Threshold) -> tuple[np.ndarray, np.ndarray]:
    """:func:`choose_threshold` with ``threshold``'s method and target, for each resample (row): candidate
    ``scores`` (runs,) in decreasing order, ``present`` (B, runs) those the resample holds, ``tp`` / ``fp`` (B, runs)
    its positives / negatives at or above each, ``n_pos`` / ``n_neg`` (B, 1). Returns (B,) chosen values and (B,)
    bool, False where none was chosen (no candidate reaches the target specificity: the loop's skipped
    :class:`CalibrationError`; rows of one class or one score are the caller's to drop)."""
    with np.errstate(divide="ignore", invalid="ignore"):  # rows of one class, dropped by the caller
        if threshold.method == "youden":
            j = np.where(present, tp * n_neg - fp * n_pos, np.iinfo(np.int64).min)  # exact integers, exact ties
            k, ok = np.argmax(j, axis=1), present.any(1)  # first maximum = highest threshold among ties
        elif threshold.method == "sensitivity":
            hit = present & (tp / n_pos >= threshold.target_sensitivity - 1e-12)
            k, ok = np.argmax(hit, axis=1), hit.any(1)  # the highest candidate reaching it
        else:
            hit = present & ((n_neg - fp) / n_neg >= threshold.target_specificity - 1e-12)
            k, ok = hit.shape[1] - 1 - np.argmax(hit[:, ::-1], axis=1), hit.any(1)  # the lowest candidate reaching it
    return scores[k], ok


@dataclass(frozen=True)
class OperatingPoint:
    """Confusion counts and rates of ``score >= threshold`` on one split.

    A rate whose denominator is 0 (e.g. PPV when nothing is called positive) is NaN."""

    split: str
    threshold: float
    n: int
    tp: int
    fp: int
    tn: int
    fn: int
    sensitivity: float  # tp / (tp + fn)
    specificity: float  # tn / (tn + fp)
    ppv: float          # tp / (tp + fp), positive predictive value (precision)
    npv: float          # tn / (tn + fn), negative predictive value


def _rate(num: int, den: int) -> float:
    return num / den if den else float("nan")


def operating_point(y, p, threshold: float, *, split: str) -> OperatingPoint:
    """Sensitivity, specificity, PPV and NPV with their counts at ``threshold`` (positive when
    ``p >= threshold``) on the split ``split``. Either class may be absent (its rates are NaN)."""
    ya, pa = check_scores(y, p, split)
    if not np.isfinite(threshold):
        raise CalibrationError(f"threshold: {threshold!r} is not finite")
    pred = pa >= threshold
    tp = int((pred & (ya == 1)).sum())
    fp = int((pred & (ya == 0)).sum())
    fn = int((~pred & (ya == 1)).sum())
    tn = int((~pred & (ya == 0)).sum())
    return OperatingPoint(split=split, threshold=float(threshold), n=len(ya), tp=tp, fp=fp, tn=tn, fn=fn,
                          sensitivity=_rate(tp, tp + fn), specificity=_rate(tn, tn + fp),
                          ppv=_rate(tp, tp + fp), npv=_rate(tn, tn + fn))


# --------------------------------------------------------------------------- calibration statistics
def brier_score(y, p, *, split: str) -> float:
    """Mean squared difference between probability and label, ``mean((p - y)**2)`` (0 is perfect)."""
    ya, pa = check_scores(y, p, split)
    return float(np.mean((pa - ya) ** 2))


@dataclass(frozen=True)
class Reliability:
    """Reliability-diagram data: one entry per bin (``n_bins`` entries, empty bins included)."""

    edges: np.ndarray               # (n_bins + 1,) bin edges on [0, 1]
    mean_predicted: np.ndarray      # (n_bins,) mean p in the bin, NaN when empty
    fraction_positive: np.ndarray   # (n_bins,) observed fraction of label 1, NaN when empty
    count: np.ndarray               # (n_bins,) int64 records in the bin


def reliability(y, p, *, split: str, n_bins: int = N_BINS) -> Reliability:
    """Equal-width binned calibration (bins as in the module docstring)."""
    ya, pa = check_scores(y, p, split)
    if int(n_bins) != n_bins or n_bins < 1:
        raise CalibrationError(f"n_bins: {n_bins!r} is not a positive integer")
    edges = np.linspace(0.0, 1.0, int(n_bins) + 1)
    ids = np.searchsorted(edges[1:-1], pa, side="left")  # right-closed bins, 0 in the first
    count = np.bincount(ids, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(ids, weights=pa, minlength=n_bins) / count
        frac = np.bincount(ids, weights=ya, minlength=n_bins) / count
    return Reliability(edges=edges, mean_predicted=mean_p, fraction_positive=frac, count=count.astype(np.int64))


def expected_calibration_error(y, p, *, split: str, n_bins: int = N_BINS) -> float:
    """``sum_k (n_k / N) |mean p_k - fraction positive_k|`` over the non-empty equal-width bins."""
    r = reliability(y, p, split=split, n_bins=n_bins)
    full = r.count > 0
    gap = np.abs(r.mean_predicted[full] - r.fraction_positive[full])
    return float(np.sum(r.count[full] * gap) / r.count.sum())


def _fit_logistic(x: np.ndarray, y: np.ndarray, split: str, fit_slope: bool = True) -> tuple[float, float]:
    """Unpenalised maximum-likelihood fit of ``logit P(y=1) = a + b * x`` -> ``(a, b)``.

    With ``fit_slope=False`` the slope is fixed at 1 (``x`` is an offset) and only ``a`` is fitted.
    Newton-Raphson with step halving; the log-likelihood is concave,
    so it converges unless the classes are separated (then :class:`SeparationError`).
    """
    design = np.column_stack([np.ones_like(x), x])

    def nll(beta: np.ndarray) -> float:
        eta = design @ beta
        return float(np.sum(np.logaddexp(0.0, eta) - y * eta))

    # start from the null model (slope 0) or, with the slope fixed, from the offset alone
    beta = np.array([scipy.special.logit(np.clip(y.mean(), EPS, 1 - EPS)), 0.0]) if fit_slope else np.array([0.0, 1.0])
    free = [0, 1] if fit_slope else [0]
    for _ in range(100):
        mu = scipy.special.expit(design @ beta)
        grad = design[:, free].T @ (y - mu)
        hess = (design[:, free] * (mu * (1 - mu))[:, None]).T @ design[:, free]
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            raise SeparationError(f"split {split!r}: calibration fit is singular (separated classes)") from None
        new, cur, t = beta.copy(), nll(beta), 1.0
        for _ in range(30):  # step halving keeps the likelihood increasing
            new[free] = beta[free] + t * step
            if nll(new) <= cur + 1e-12:
                break
            t /= 2
        beta = new
        if np.max(np.abs(t * step)) < 1e-10:
            if np.max(np.abs(beta)) > 1e4:
                break
            return float(beta[0]), float(beta[1])
    raise SeparationError(f"split {split!r}: calibration fit did not converge (coefficients {beta.tolist()}); "
                          f"logit(p) separates the classes")


@dataclass(frozen=True)
class CalibrationFit:
    """Calibration slope and intercepts on one split (see the module docstring)."""

    split: str
    slope: float                      # b of logit P(y=1) = a + b logit(p); 1 is ideal
    intercept: float                  # a of the same fit; 0 is ideal
    calibration_in_the_large: float   # a with b fixed at 1; 0 is ideal, > 0: under-prediction


def calibration_slope_intercept(y, p, *, split: str) -> CalibrationFit:
    """Unpenalised logistic recalibration fit of the labels on ``logit(p)`` (module docstring)."""
    ya, pa = check_scores(y, p, split, both_classes=True)
    x = logit(pa)
    if np.ptp(x) == 0:
        raise ConstantScoreError(f"split {split!r}: all {len(pa)} scores equal {pa[0]:g}; the calibration "
                                 f"slope is undefined")
    a, b = _fit_logistic(x, ya.astype(np.float64), split)
    citl, _ = _fit_logistic(x, ya.astype(np.float64), split, fit_slope=False)
    return CalibrationFit(split=split, slope=b, intercept=a, calibration_in_the_large=citl)


def calibration_summary(y, p, *, split: str, n_bins: int = N_BINS) -> dict[str, float | int | str]:
    """One row for a results table: n, prevalence, Brier, ECE, slope, intercept, calibration in the large."""
    ya, pa = check_scores(y, p, split, both_classes=True)
    fit = calibration_slope_intercept(ya, pa, split=split)
    return {"split": split, "n": int(len(ya)), "prevalence": float(ya.mean()),
            "brier": brier_score(ya, pa, split=split),
            "ece": expected_calibration_error(ya, pa, split=split, n_bins=n_bins), "n_bins": int(n_bins),
            "slope": fit.slope, "intercept": fit.intercept,
            "calibration_in_the_large": fit.calibration_in_the_large}


# --------------------------------------------------------------------------- recalibration
def _fingerprint(p: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(p, dtype=np.float64).tobytes()).hexdigest()


@dataclass(frozen=True)
class Calibrator:
    """A recalibration map fitted on one split. Build it with :func:`fit_calibrator`.

    ``platt``: ``params = (a, b)``, ``p' = expit(a + b * logit(p))``.
    ``isotonic``: ``params = (x, y)`` knots (distinct fitted scores, increasing, and their
    non-decreasing fitted values); ``p' = interp(p, x, y)``, constant outside ``[x[0], x[-1]]``.
    """

    method: str
    fitted_on: str
    n_fit: int
    params: tuple
    fingerprint: str  # sha256 of the fitting scores (float64), to refuse re-applying to them
    records: frozenset = frozenset()  # ids (record ids or patient hashes) of the fitting rows, when given

    def apply(self, p, *, split: str, records=None) -> np.ndarray:
        """Recalibrated probabilities (N,) float64 of the scores ``p`` of split ``split``.

        ``records``: the ids of the rows of ``p`` (same kind as given to :func:`fit_calibrator`): any id the
        calibrator was fitted on is refused, whatever the scores (permuted or re-scored fitting rows included).

        Raises :class:`SameSplitError` when ``split`` is the fitting split, ``records`` share ids with the
        fitting rows, or ``p`` are the very scores the calibrator was fitted on."""
        if split == self.fitted_on:
            raise SameSplitError(f"split {split!r}: this {self.method} calibrator was fitted on {split!r}; "
                                 f"apply it to another split (fitting and evaluating on the same data "
                                 f"overstates calibration)")
        if records is not None and self.records:
            shared = self.records.intersection(str(r) for r in records)
            if shared:
                raise SameSplitError(f"split {split!r}: {len(shared)} of its rows are rows the calibrator was "
                                     f"fitted on (split {self.fitted_on!r}); evaluate it on other records")
        pa = check_probabilities(p, split)
        if len(pa) == self.n_fit and _fingerprint(pa) == self.fingerprint:
            raise SameSplitError(f"split {split!r}: these are the scores the calibrator was fitted on "
                                 f"(split {self.fitted_on!r}) under another name")
        if self.method == "platt":
            a, b = self.params
            return scipy.special.expit(a + b * logit(pa))
        x, y = self.params
        return np.interp(pa, x, y)


def fit_calibrator(y, p, *, method: str, split: str, records=None) -> Calibrator:
    """Fit a Platt or isotonic recalibration on the split ``split`` (labels ``y``, scores ``p``; ``records``: the
    rows' ids, which :meth:`Calibrator.apply` then refuses to evaluate on).

    Returns a :class:`Calibrator`; use ``calibrator.apply(scores, split=other_split)``.
    """
    if method not in CALIBRATION_METHODS:
        raise CalibrationError(f"method: {method!r} is not one of {CALIBRATION_METHODS}")
    ya, pa = check_scores(y, p, split, both_classes=True)
    if method == "platt":
        x = logit(pa)
        if np.ptp(x) == 0:
            raise ConstantScoreError(f"split {split!r}: all {len(pa)} scores equal {pa[0]:g}; Platt scaling "
                                     f"needs varying scores")
        params: tuple = _fit_logistic(x, ya.astype(np.float64), split)
    else:
        # average the labels of tied scores first (scikit-learn does the same), then PAVA weighted by counts
        ux, inv, cnt = np.unique(pa, return_inverse=True, return_counts=True)
        ymean = np.bincount(inv, weights=ya) / cnt
        fitted = scipy.optimize.isotonic_regression(ymean, weights=cnt.astype(np.float64), increasing=True).x
        params = (ux, np.clip(fitted, 0.0, 1.0))
    return Calibrator(method=method, fitted_on=split, n_fit=len(pa), params=params, fingerprint=_fingerprint(pa),
                      records=frozenset(str(r) for r in records) if records is not None else frozenset())
