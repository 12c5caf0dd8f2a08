"""heartbeit_lib.analysis.calibration against scikit-learn / scipy oracles.

Oracles and tolerances:
- thresholds: ``sklearn.metrics.roc_curve(drop_intermediate=False)`` -> exact (same float scores);
- counts and rates: ``sklearn.metrics.confusion_matrix`` / ``precision_score`` / ``recall_score`` -> exact;
- Brier: ``sklearn.metrics.brier_score_loss`` -> 1e-12 absolute;
- reliability bins: ``sklearn.calibration.calibration_curve(strategy="uniform")`` -> 1e-12 absolute;
- slope / intercept / Platt: ``LogisticRegression(C=np.inf)`` (unpenalised, lbfgs, tol 1e-10) -> 1e-5 absolute
  (lbfgs's own precision; our Newton fit converges to 1e-10);
- calibration in the large: its score equation (mean fitted probability == prevalence) -> 1e-9,
  and ``scipy.optimize.brentq`` on that equation -> 1e-7;
- isotonic: ``IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1)`` -> 1e-12 absolute.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.optimize
import scipy.special
from sklearn.calibration import calibration_curve
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, confusion_matrix, precision_score, recall_score, roc_curve

from heartbeit_lib.analysis import calibration as cal


def _data(seed: int = 0, n: int = 400, slope: float = 0.6, intercept: float = 0.3, decimals: int | None = 2):
    """Scores with ties (rounded) and labels drawn from a miscalibrated truth
    ``P(y=1) = expit(intercept + slope * logit(p))``."""
    rng = np.random.default_rng(seed)
    p = scipy.special.expit(rng.normal(-0.5, 1.5, n))
    if decimals is not None:
        p = np.clip(np.round(p, decimals), 0.0, 1.0)
    y = (rng.random(n) < scipy.special.expit(intercept + slope * cal.logit(p))).astype(int)
    return y, p


def _sk_logistic(x, y):
    # unpenalised: C=inf is scikit-learn >= 1.8's spelling of penalty=None (deprecated there)
    return LogisticRegression(C=np.inf, tol=1e-10, max_iter=10_000).fit(x[:, None], y)


# ------------------------------------------------------------------------ thresholds
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_youden_matches_roc_curve(seed):
    y, p = _data(seed)
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    finite = np.isfinite(thr)  # roc_curve starts with +inf (nothing called positive)
    k = np.argmax((tpr - fpr)[finite])
    t = cal.choose_threshold(y, p, split="val")
    assert t.value == thr[finite][k]
    assert t.sensitivity == tpr[finite][k] and t.specificity == pytest.approx(1 - fpr[finite][k], abs=1e-15)
    assert (t.method, t.split, t.target_sensitivity) == ("youden", "val", None)


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 1.0])
def test_target_sensitivity_matches_roc_curve(target):
    y, p = _data(3)
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    k = np.flatnonzero((tpr >= target) & np.isfinite(thr))[0]  # decreasing thresholds: the highest one
    t = cal.choose_threshold(y, p, split="val", method="sensitivity", target_sensitivity=target)
    assert t.value == thr[k] and t.sensitivity >= target
    assert t.specificity == pytest.approx(1 - fpr[k], abs=1e-15)
    op = cal.operating_point(y, p, t.value, split="val")  # the recorded rates are reproduced
    assert (op.sensitivity, op.specificity) == (t.sensitivity, t.specificity)


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 1.0])
def test_target_specificity_matches_roc_curve(target):
    """Oracle: sklearn's roc_curve; the lowest threshold whose specificity (1 - fpr) still reaches the target."""
    y, p = _data(5)
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    k = np.flatnonzero((1 - fpr >= target - 1e-12) & np.isfinite(thr))[-1]
    t = cal.choose_threshold(y, p, split="val", method="specificity", target_specificity=target)
    assert t.value == thr[k] and t.specificity >= target and t.sensitivity == tpr[k]
    assert (t.method, t.target_specificity, t.target_sensitivity) == ("specificity", target, None)
    with pytest.raises(cal.CalibrationError, match="target_specificity"):
        cal.choose_threshold(y, p, split="val", method="specificity")
    with pytest.raises(cal.CalibrationError, match="no threshold reaches specificity"):
        cal.choose_threshold([1, 0, 0], [0.2, 0.9, 0.1], split="val", method="specificity", target_specificity=1.0)


@pytest.mark.slow
@pytest.mark.parametrize("method,target", [("youden", None), ("sensitivity", 0.9), ("specificity", 0.9)])
def test_threshold_interval_is_the_choice_repeated_on_resamples(method, target):
    """Oracle: an explicit loop with sklearn's roc_curve (Youden: argmax of tpr - fpr; targets as above) on the
    same bootstrap indices (np.random.default_rng(seed).integers), then np.percentile."""
    y, p = _data(6)
    kw = {"youden": {}, "sensitivity": {"target_sensitivity": target}, "specificity": {"target_specificity": target}}
    t = cal.choose_threshold(y, p, split="val", method=method, **kw[method])
    ci = cal.threshold_interval(y, p, t, n_boot=200, seed=3)
    rng, vals, sens = np.random.default_rng(3), [], []
    for _ in range(200):
        i = rng.integers(0, len(y), len(y))
        yb, pb = y[i], p[i]
        if yb.min() == yb.max():
            continue
        fpr, tpr, thr = roc_curve(yb, pb, drop_intermediate=False)
        f = np.isfinite(thr)
        fpr, tpr, thr = fpr[f], tpr[f], thr[f]
        if method == "youden":
            vals.append(thr[np.argmax(tpr - fpr)])
        elif method == "sensitivity":
            vals.append(thr[np.flatnonzero(tpr >= target)[0]])
        else:
            vals.append(thr[np.flatnonzero(1 - fpr >= target - 1e-12)[-1]])
        sens.append(np.mean(pb[yb == 1] >= t.value))
    assert ci.n_used == len(vals) and ci.n_boot == 200
    assert (ci.value_lo, ci.value_hi) == pytest.approx(tuple(np.percentile(vals, [2.5, 97.5])), abs=1e-12)
    assert (ci.sensitivity_lo, ci.sensitivity_hi) == pytest.approx(tuple(np.percentile(sens, [2.5, 97.5])), abs=1e-12)
    assert ci.value_lo <= t.value <= ci.value_hi


def test_youden_ties_go_to_the_highest_threshold():
    # J = 0.5 at thresholds 0.4 (sens 0.5, spec 1) and 0.2 (sens 1, spec 0.5): the higher one wins
    t = cal.choose_threshold([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], split="val")
    assert (t.value, t.sensitivity, t.specificity) == (0.4, 0.5, 1.0)


def test_threshold_parameter_errors():
    y, p = _data(0)
    with pytest.raises(cal.CalibrationError, match="method"):
        cal.choose_threshold(y, p, split="val", method="f1")
    with pytest.raises(cal.CalibrationError, match="target_sensitivity"):
        cal.choose_threshold(y, p, split="val", method="sensitivity")
    with pytest.raises(cal.CalibrationError, match="target_sensitivity"):
        cal.choose_threshold(y, p, split="val", target_sensitivity=0.9)
    with pytest.raises(cal.CalibrationError, match="target_sensitivity"):
        cal.choose_threshold(y, p, split="val", method="sensitivity", target_sensitivity=1.5)


# ------------------------------------------------------------------------ operating point
@pytest.mark.parametrize("threshold", [0.05, 0.3, 0.5, 0.71])
def test_operating_point_matches_sklearn(threshold):
    y, p = _data(4)
    pred = (p >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    op = cal.operating_point(y, p, threshold, split="test")
    assert (op.tp, op.fp, op.tn, op.fn, op.n) == (tp, fp, tn, fn, len(y))
    assert op.sensitivity == recall_score(y, pred)
    assert op.specificity == recall_score(1 - y, 1 - pred)
    assert op.ppv == precision_score(y, pred)
    assert op.npv == precision_score(1 - y, 1 - pred)


def test_operating_point_undefined_rates_are_nan():
    op = cal.operating_point([0, 1, 1], [0.2, 0.4, 0.6], 0.9, split="test")  # nothing called positive
    assert (op.tp, op.fp, op.tn, op.fn) == (0, 0, 1, 2)
    assert np.isnan(op.ppv) and op.npv == 1 / 3 and op.sensitivity == 0.0
    op = cal.operating_point([0, 0], [0.2, 0.6], 0.5, split="ext")  # no positives at all
    assert np.isnan(op.sensitivity) and op.specificity == 0.5
    with pytest.raises(cal.CalibrationError, match="threshold"):
        cal.operating_point([0, 1], [0.2, 0.6], float("nan"), split="ext")


# ------------------------------------------------------------------------ Brier, bins, ECE
@pytest.mark.parametrize("seed", [0, 5])
def test_brier_matches_sklearn(seed):
    y, p = _data(seed, decimals=None)
    assert cal.brier_score(y, p, split="test") == pytest.approx(brier_score_loss(y, p), abs=1e-12)


@pytest.mark.parametrize("n_bins", [5, 10, 15])
def test_reliability_matches_calibration_curve(n_bins):
    y, p = _data(6, n=300)
    p[:8] = [0.0, 0.1, 0.2, 0.4, 0.6, 1.0, 0.5, 0.3]  # values on bin edges
    prob_true, prob_pred = calibration_curve(y, p, n_bins=n_bins, strategy="uniform")
    r = cal.reliability(y, p, split="test", n_bins=n_bins)
    full = r.count > 0
    np.testing.assert_allclose(r.fraction_positive[full], prob_true, rtol=0, atol=1e-12)
    np.testing.assert_allclose(r.mean_predicted[full], prob_pred, rtol=0, atol=1e-12)
    assert r.count.sum() == len(y) and len(r.count) == n_bins and len(r.edges) == n_bins + 1


def test_reliability_empty_bins_are_nan_and_ece_ignores_them():
    y = np.array([0] * 9 + [1] + [1] * 3 + [0])
    p = np.array([0.05] * 10 + [0.85] * 4)
    r = cal.reliability(y, p, split="val", n_bins=10)
    assert r.count.tolist() == [10, 0, 0, 0, 0, 0, 0, 0, 4, 0]
    assert np.isnan(r.mean_predicted[1:8]).all() and np.isnan(r.fraction_positive[9])
    # by hand: (10 * |0.05 - 0.1| + 4 * |0.85 - 0.75|) / 14
    assert cal.expected_calibration_error(y, p, split="val") == pytest.approx((0.5 + 0.4) / 14, abs=1e-12)


def test_ece_of_calibrated_scores_is_small_and_of_shifted_scores_is_the_shift():
    rng = np.random.default_rng(7)
    p = rng.uniform(0.2, 0.8, 200_000)
    y = (rng.random(p.size) < p).astype(int)
    assert cal.expected_calibration_error(y, p, split="val") < 0.005  # sampling noise only
    shifted = np.clip(p + 0.1, 0, 1)  # every bin is off by 0.1 -> ECE ~ 0.1
    assert cal.expected_calibration_error(y, shifted, split="val") == pytest.approx(0.1, abs=0.005)


# ------------------------------------------------------------------------ slope and intercept
@pytest.mark.parametrize("seed,slope,intercept", [(0, 0.6, 0.3), (1, 1.4, -0.5), (2, 1.0, 0.0)])
def test_slope_intercept_match_unpenalised_logistic_regression(seed, slope, intercept):
    y, p = _data(seed, n=2000, slope=slope, intercept=intercept, decimals=None)
    sk = _sk_logistic(cal.logit(p), y)
    fit = cal.calibration_slope_intercept(y, p, split="test")
    assert fit.slope == pytest.approx(sk.coef_[0, 0], abs=1e-5)
    assert fit.intercept == pytest.approx(sk.intercept_[0], abs=1e-5)
    assert fit.slope == pytest.approx(slope, abs=0.25)  # and it recovers the truth (sampling noise)


def test_calibration_in_the_large_solves_its_score_equation():
    y, p = _data(8, n=1000, slope=1.0, intercept=0.7, decimals=None)
    citl = cal.calibration_slope_intercept(y, p, split="test").calibration_in_the_large
    x = cal.logit(p)
    assert scipy.special.expit(citl + x).mean() == pytest.approx(y.mean(), abs=1e-9)
    root = scipy.optimize.brentq(lambda a: scipy.special.expit(a + x).mean() - y.mean(), -10, 10, xtol=1e-12)
    assert citl == pytest.approx(root, abs=1e-7)
    assert citl > 0.3  # the model under-predicts by construction (true intercept 0.7)


def test_perfectly_separated_scores_raise():
    p = np.linspace(0.01, 0.99, 50)
    with pytest.raises(cal.SeparationError, match="'val'"):
        cal.calibration_slope_intercept((p > 0.5).astype(int), p, split="val")


def test_calibration_summary_row():
    y, p = _data(9)
    row = cal.calibration_summary(y, p, split="external")
    assert row["split"] == "external" and row["n"] == len(y) and row["n_bins"] == cal.N_BINS
    assert row["brier"] == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    assert row["prevalence"] == pytest.approx(y.mean())


# ------------------------------------------------------------------------ recalibration
def test_platt_matches_logistic_regression_and_is_applied_elsewhere():
    y, p = _data(10, n=1500, decimals=None)
    _, q = _data(11, n=300, decimals=None)
    c = cal.fit_calibrator(y, p, method="platt", split="val")
    sk = _sk_logistic(cal.logit(p), y)
    np.testing.assert_allclose(c.apply(q, split="test"), sk.predict_proba(cal.logit(q)[:, None])[:, 1],
                               rtol=0, atol=1e-5)
    assert (c.method, c.fitted_on, c.n_fit) == ("platt", "val", len(p))


def test_isotonic_matches_sklearn_with_ties_and_out_of_range_scores():
    y, p = _data(12, n=500, decimals=2)
    p = np.clip(p, 0.05, 0.9)  # so that new scores fall outside the fitted range
    q = np.r_[np.linspace(0, 1, 101), p[:50]]
    c = cal.fit_calibrator(y, p, method="isotonic", split="val")
    sk = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(p, y)
    np.testing.assert_allclose(c.apply(q, split="test"), sk.predict(q), rtol=0, atol=1e-12)
    assert np.all(np.diff(c.apply(np.sort(q), split="test")) >= 0)


@pytest.mark.parametrize("method", cal.CALIBRATION_METHODS)
def test_calibrator_refuses_the_split_it_was_fitted_on(method):
    y, p = _data(13)
    c = cal.fit_calibrator(y, p, method=method, split="val")
    with pytest.raises(cal.SameSplitError, match="'val'"):
        c.apply(p[:10], split="val")
    with pytest.raises(cal.SameSplitError, match="fitted on"):
        c.apply(p, split="test")  # the very same scores under another name
    assert c.apply(p[:10], split="test").shape == (10,)  # other data of another split is fine


# ------------------------------------------------------------------------ edge cases
@pytest.mark.parametrize("call", [
    lambda y, p: cal.choose_threshold(y, p, split="val_site_b"),
    lambda y, p: cal.calibration_slope_intercept(y, p, split="val_site_b"),
    lambda y, p: cal.fit_calibrator(y, p, method="platt", split="val_site_b"),
    lambda y, p: cal.fit_calibrator(y, p, method="isotonic", split="val_site_b"),
    lambda y, p: cal.calibration_summary(y, p, split="val_site_b"),
])
@pytest.mark.parametrize("label", [0, 1])
def test_single_class_raises_a_typed_error_naming_the_split(call, label):
    with pytest.raises(cal.SingleClassError, match="val_site_b"):
        call(np.full(20, label), np.linspace(0.1, 0.9, 20))


def test_single_class_is_fine_where_both_are_not_needed():
    y, p = np.ones(5, int), np.linspace(0.1, 0.9, 5)
    assert cal.brier_score(y, p, split="t") == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    assert cal.operating_point(y, p, 0.5, split="t").tp == 3


def test_constant_scores():
    y = np.array([0, 0, 1, 0, 1, 0, 0, 1, 0, 0])
    p = np.full(10, 0.3)
    with pytest.raises(cal.ConstantScoreError, match="'val'"):
        cal.choose_threshold(y, p, split="val")
    with pytest.raises(cal.ConstantScoreError, match="'val'"):
        cal.calibration_slope_intercept(y, p, split="val")
    with pytest.raises(cal.ConstantScoreError, match="'val'"):
        cal.fit_calibrator(y, p, method="platt", split="val")
    # binned statistics are defined: one full bin, observed 0.3 == predicted 0.3
    assert cal.expected_calibration_error(y, p, split="val") == pytest.approx(0.0, abs=1e-12)
    assert cal.brier_score(y, p, split="val") == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    assert cal.reliability(y, p, split="val").count.tolist() == [0, 0, 1 * 10, 0, 0, 0, 0, 0, 0, 0]
    iso = cal.fit_calibrator(y, p, method="isotonic", split="val")  # a constant map to the prevalence
    np.testing.assert_allclose(iso.apply([0.0, 0.3, 1.0], split="test"), 0.3, rtol=0, atol=1e-12)


@pytest.mark.parametrize("y,p,match", [
    ([0, 1], [0.2, np.nan], "NaN"),
    ([0, 1], [0.2, 1.2], r"\[0, 1\]"),
    ([0, 2], [0.2, 0.4], "0 or 1"),
    ([0, 1, 1], [0.2, 0.4], "shape"),
    ([], [], "non-empty"),
    ([[0, 1]], [[0.2, 0.4]], "1-D"),
])
def test_bad_input_is_a_calibration_error_naming_the_split(y, p, match):
    with pytest.raises(cal.CalibrationError, match=match) as e:
        cal.brier_score(y, p, split="site_c")
    assert "site_c" in str(e.value)


def test_bad_method_and_bins():
    with pytest.raises(cal.CalibrationError, match="method"):
        cal.fit_calibrator([0, 1], [0.2, 0.4], method="beta", split="val")
    with pytest.raises(cal.CalibrationError, match="n_bins"):
        cal.reliability([0, 1], [0.2, 0.4], split="val", n_bins=0)


@pytest.mark.parametrize("method", cal.CALIBRATION_METHODS)
def test_calibrator_refuses_its_fitted_records_whatever_the_scores(method):
    """Issue 24 item 4: the guard compares records, not scores: permuted (or re-scored) scores of the fitting rows
    are refused under another split name; other records pass. Oracle: the record ids given here."""
    y, p = _data(13)
    ids = np.array([f"r{i}" for i in range(len(p))])
    c = cal.fit_calibrator(y, p, method=method, split="val", records=ids)
    perm = np.random.default_rng(0).permutation(len(p))
    with pytest.raises(cal.SameSplitError, match=f"{len(p)} of its rows"):
        c.apply(p[perm], split="test", records=ids[perm])  # the fingerprint alone let these through
    with pytest.raises(cal.SameSplitError, match="1 of its rows"):
        c.apply(p[:3], split="external", records=["x1", "x2", "r5"])
    assert c.apply(p[perm][:10], split="test", records=[f"t{i}" for i in range(10)]).shape == (10,)


def _interval_by_loop(y, p, t, n_boot, seed):
    """The definition, one resample at a time: choose_threshold and operating_point on each bootstrap resample
    (skipping one-class / constant resamples and those where choose_threshold raises), then np.percentile."""
    rng, vals, sens, spec = np.random.default_rng(seed), [], [], []
    kw = {"method": t.method, "target_sensitivity": t.target_sensitivity, "target_specificity": t.target_specificity}
    for _ in range(n_boot):
        i = rng.integers(0, len(y), len(y))
        yb, pb = np.asarray(y)[i], np.asarray(p)[i]
        if yb.min() == yb.max() or pb.min() == pb.max():
            continue
        try:
            vals.append(cal.choose_threshold(yb, pb, split="val", **kw).value)
        except cal.CalibrationError:
            continue
        op = cal.operating_point(yb, pb, t.value, split="val")
        sens.append(op.sensitivity)
        spec.append(op.specificity)
    q = lambda v: tuple(float(x) for x in np.percentile(v, [2.5, 97.5]))  # noqa: E731
    return (*q(vals), *q(sens), *q(spec), n_boot, len(vals))


@pytest.mark.parametrize("n, ties", [(12, True), (60, True), (300, False), (1500, True)])
@pytest.mark.parametrize("method,target", [("youden", None), ("sensitivity", 0.9), ("specificity", 0.9),
                                           ("specificity", 1.0)])
def test_threshold_interval_equals_the_loop_of_choices(n, ties, method, target, monkeypatch):
    """threshold_interval counts each resample's positives and negatives over one sorted order instead of sorting
    every resample. Oracle: the loop of choose_threshold + operating_point on the same resamples (itself tested
    against sklearn above); tolerance: none, every field equal (scores with many ties, tiny splits where
    resamples of one class are skipped, a specificity target that some resamples cannot reach), and chunked
    (BOOT_ELEMENTS) as one block."""
    rng = np.random.default_rng(n)
    y = (rng.random(n) < 0.3).astype(int)
    y[:2] = [0, 1]
    p = np.clip(0.4 * rng.random(n) + 0.3 * y, 0, 1)
    if ties:
        p = p.round(1)
    kw = {"youden": {}, "sensitivity": {"target_sensitivity": target}, "specificity": {"target_specificity": target}}
    t = cal.choose_threshold(y, p, split="val", method=method, **kw[method])
    want = _interval_by_loop(y, p, t, 150, 5)
    assert dataclasses.astuple(cal.threshold_interval(y, p, t, n_boot=150, seed=5)) == want
    monkeypatch.setattr(cal, "BOOT_ELEMENTS", 7 * n)  # 7 resamples per block
    assert dataclasses.astuple(cal.threshold_interval(y, p, t, n_boot=150, seed=5)) == want
