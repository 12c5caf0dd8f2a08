"""Vectorised bootstrap AUROC / AUPRC and confidence intervals (heartbeit_lib.analysis.metrics).

Oracles:
- ``sklearn.metrics.roc_auc_score``, ``average_precision_score`` and
  ``auc(*precision_recall_curve(...)[1::-1])`` called on ``y[idx[b]], s[idx[b]]`` for the same
  resample indices: agreement to 1e-12 (absolute).
- ``sklearn`` on ``np.delete(y, i), np.delete(s, i)`` for the closed-form jackknife: 1e-12.
- ``scipy.stats.bootstrap(..., method="BCa" / "percentile")`` fed the same resamples (its
  generator reproduced): interval bounds to 1e-10.
- Hand-computed values for a 3-sample example and for the p-value formula.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import scipy
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

from heartbeit_lib.analysis import metrics as M
from heartbeit_lib.pipeline import metrics as PM
from heartbeit_lib.pipeline import runs

TOL = 1e-12


def _sk(y, s):
    """(AUROC, AP, trapezoidal PR area) from scikit-learn."""
    p, r, _ = precision_recall_curve(y, s)
    return roc_auc_score(y, s), average_precision_score(y, s), auc(r, p)


def _sk_boot(y, s, idx):
    out = np.full((idx.shape[0], 3), np.nan)
    for b, i in enumerate(idx):
        if 0 < y[i].sum() < len(i):
            out[b] = _sk(y[i], s[i])
    return out


def _pairwise_oracle(y, s, idx):
    """Brute-force O(n^2) definitions on count vectors, vectorised over resamples:
    AUROC = P(s+ > s-) + P(s+ = s-)/2 over resampled pairs; AP = mean over resampled positives of
    the precision at their own score (= sklearn's step sum with tied thresholds grouped)."""
    n = len(y)
    w = np.stack([np.bincount(i, minlength=n) for i in idx]).astype(float)
    cmp = (s[:, None] > s[None, :]) + 0.5 * (s[:, None] == s[None, :])
    k = y[:, None] * (1 - y[None, :]) * cmp
    p, q = w @ y, w @ (1 - y)
    auroc = np.einsum("bi,ij,bj->b", w, k, w) / (p * q)
    ge = (s[None, :] >= s[:, None]).astype(float)  # ge[i, j] = s_j >= s_i
    num, den = (w * y) @ ge.T, w @ ge.T
    prec = np.divide(num, den, out=np.zeros_like(num), where=den > 0)  # den = 0 only where w = 0
    ap = np.einsum("bi,bi->b", w * y, prec) / p
    return auroc, ap


def _case(name):
    rng = np.random.default_rng({"ties": 0, "imbalance": 1, "tiny": 2, "many": 3}[name])
    if name == "ties":  # few distinct scores: many ties within and across classes
        n = 300
        y = (rng.random(n) < 0.3).astype(int)
        s = np.round(rng.normal(size=n) + y, 1)
        return y, s, 60
    if name == "imbalance":  # 1% prevalence
        n = 2000
        y = np.zeros(n, int)
        y[rng.choice(n, 20, replace=False)] = 1
        s = rng.normal(size=n) + 1.5 * y
        return y, s, 40
    if name == "tiny":  # n = 5: many single-class resamples
        return np.array([0, 1, 0, 1, 1]), np.array([0.2, 0.9, 0.9, 0.1, 0.5]), 100
    if name == "many":  # many resamples of a small set, integer scores (ties)
        n = 40
        y = (rng.random(n) < 0.5).astype(int)
        y[:2] = (0, 1)
        return y, rng.integers(0, 6, n).astype(float) + y, 3000
    raise KeyError(name)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["ties", "imbalance", "tiny", "many"])
def test_bootstrap_equals_sklearn_on_same_indices(case):
    y, s, n_boot = _case(case)
    idx = M.bootstrap_indices(len(y), n_boot, seed=3)
    ap = M.bootstrap_metrics(y, s, idx, auprc_method="ap")
    tr = M.bootstrap_metrics(y, s, idx, auprc_method="trapezoid")
    np.testing.assert_array_equal(ap.boot_auroc, tr.boot_auroc)
    # sklearn on every resample (on a random 150 of the 3000 for "many": ~7 ms per resample here)
    check = np.arange(n_boot) if n_boot <= 200 else np.random.default_rng(0).choice(n_boot, 150, replace=False)
    ref = _sk_boot(y, s, idx[check])
    valid = ~np.isnan(ref[:, 0])
    np.testing.assert_array_equal(ap.valid[check], valid)  # single-class resamples flagged, nothing else
    for got, col in ((ap.boot_auroc, 0), (ap.boot_auprc, 1), (tr.boot_auprc, 2)):
        assert np.abs(got[check][valid] - ref[valid, col]).max() < TOL
        assert np.isnan(got[check][~valid]).all()
    full = _sk(y, s)
    assert abs(ap.auroc - full[0]) < TOL and abs(ap.auprc - full[1]) < TOL and abs(tr.auprc - full[2]) < TOL
    if case == "tiny":
        assert 0 < (~valid).sum() < n_boot  # the case really exercises dropping
    if case == "many":  # all 3000 against the brute-force pairwise definitions
        assert ap.valid.all()
        pa, pp = _pairwise_oracle(y, s, idx)
        assert np.abs(ap.boot_auroc - pa).max() < TOL and np.abs(ap.boot_auprc - pp).max() < TOL


def test_chunking_does_not_change_results():
    y, s, _ = _case("ties")
    idx = M.bootstrap_indices(len(y), 50, seed=1)
    a = M.bootstrap_metrics(y, s, idx, chunk_bytes=1)  # one resample per chunk
    b = M.bootstrap_metrics(y, s, idx)
    np.testing.assert_array_equal(a.boot_auroc, b.boot_auroc)
    np.testing.assert_array_equal(a.boot_auprc, b.boot_auprc)


@pytest.mark.parametrize("method", ["ap", "trapezoid"])
def test_weighted_counts_equal_sklearn_sample_weight(method):
    y, s, _ = _case("ties")
    counts = np.random.default_rng(0).integers(0, 3, size=(5, len(y)))
    ra, rp = M.weighted_metrics(y, s, counts, auprc_method=method)
    for b in range(5):
        assert abs(ra[b] - roc_auc_score(y, s, sample_weight=counts[b])) < TOL
        if method == "ap":
            ref = average_precision_score(y, s, sample_weight=counts[b])
        else:
            p, r, _ = precision_recall_curve(y, s, sample_weight=counts[b])
            ref = auc(r, p)
        assert abs(rp[b] - ref) < TOL


def test_hand_computed_ap_and_trapezoid():
    # thresholds 0.9 (TP), 0.8 (FP), 0.7 (TP); P = 2
    y, s = [1, 0, 1], [0.9, 0.8, 0.7]
    # AP = 1/2 * 1 + 1/2 * 2/3 ; trapezoid over (0,1) (.5,1) (.5,.5) (1,2/3)
    assert M.auprc_score(y, s, "ap") == pytest.approx(0.5 + 1 / 3, abs=1e-15)
    assert M.auprc_score(y, s, "trapezoid") == pytest.approx(0.5 + 0.25 * (0.5 + 2 / 3), abs=1e-15)
    assert M.auroc_score(y, s) == pytest.approx(0.5, abs=1e-15)
    assert M.auroc_score([0, 1, 1], [0.5, 0.5, 0.7]) == pytest.approx(0.75, abs=1e-15)  # midrank tie


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_jackknife_closed_form_equals_leave_one_out(seed):
    rng = np.random.default_rng(seed)
    n = 35
    y = (rng.random(n) < 0.4).astype(int)
    y[:2] = (0, 1)
    s = np.round(rng.normal(size=n) + y, 1 if seed == 0 else 3)
    ja, jp = M.jackknife_metrics(y, s, "ap")
    _, jt = M.jackknife_metrics(y, s, "trapezoid")
    for i in range(n):
        ra, rp, rt = _sk(np.delete(y, i), np.delete(s, i))
        assert abs(ja[i] - ra) < TOL and abs(jp[i] - rp) < TOL and abs(jt[i] - rt) < TOL
    # removing the only positive leaves one class: NaN, not a number
    y1 = np.zeros(6, int)
    y1[2] = 1
    for method in M.AUPRC_METHODS:
        ja, jp = M.jackknife_metrics(y1, np.arange(6.0), method)
        assert np.isnan(ja[2]) and np.isnan(jp[2]) and np.isfinite(ja[[0, 1, 3, 4, 5]]).all()


@pytest.mark.slow
def test_intervals_equal_scipy_bootstrap():
    """scipy.stats.bootstrap on the index vector, statistic = sklearn on the indexed data; our
    indices reproduce scipy's draw ``rng.integers(0, n, (n_resamples, n))``. BCa and percentile
    bounds agree to 1e-10 (they share the bootstrap distribution; the acceleration comes from our
    closed-form jackknife vs scipy's n leave-one-out sklearn calls)."""
    rng = np.random.default_rng(5)
    n, n_boot = 60, 200
    y = np.r_[np.zeros(36, int), np.ones(24, int)]
    s = np.round(rng.normal(size=n) + 0.8 * y, 2)
    idx = np.random.default_rng(11).integers(0, n, (n_boot, n))
    bca = M.bootstrap_ci(y, s, indices=idx, method="bca")
    pct = M.bootstrap_ci(y, s, indices=idx, method="percentile")
    assert bca["n_boot_valid"] == n_boot and bca["auroc"] == pct["auroc"]
    for key, stat in (("auroc", roc_auc_score), ("auprc", average_precision_score)):
        res = scipy.stats.bootstrap((np.arange(n),), lambda i: stat(y[i], s[i]), n_resamples=n_boot,
                                    method="BCa", vectorized=False, rng=np.random.default_rng(11))
        ref_pct = scipy.stats.bootstrap((np.arange(n),), lambda i: stat(y[i], s[i]), n_resamples=0,
                                        bootstrap_result=res, method="percentile", vectorized=False)
        for ours, ref in ((bca, res), (pct, ref_pct)):
            assert ours[f"{key}_lo"] == pytest.approx(ref.confidence_interval.low, abs=1e-10)
            assert ours[f"{key}_hi"] == pytest.approx(ref.confidence_interval.high, abs=1e-10)
        assert bca[f"{key}_lo"] != pct[f"{key}_lo"]  # BCa really adjusts the levels here


@pytest.mark.slow
def test_bootstrap_ci_keys_and_defaults():
    y, s, _ = _case("ties")
    r = M.bootstrap_ci(y, s, n_boot=100, seed=4)
    for k in ("auroc", "auroc_lo", "auroc_hi", "auprc", "auprc_lo", "auprc_hi", "n", "n_pos", "n_boot_valid"):
        assert k in r
    assert r["auroc_lo"] < r["auroc"] < r["auroc_hi"] and r["auprc_lo"] < r["auprc"] < r["auprc_hi"]
    assert r["n"] == len(y) and r["n_pos"] == y.sum() and r["n_boot_valid"] == 100
    # same seed -> same resamples -> same interval; the percentile interval is np.quantile of sklearn's values
    assert M.bootstrap_ci(y, s, n_boot=100, seed=4) == r
    ref = _sk_boot(y, s, M.bootstrap_indices(len(y), 100, seed=4))
    assert r["auroc_lo"] == pytest.approx(np.quantile(ref[:, 0], 0.025), abs=TOL)
    assert r["auprc_hi"] == pytest.approx(np.quantile(ref[:, 1], 0.975), abs=TOL)
    tiny_y, tiny_s, _ = _case("tiny")
    t = M.bootstrap_ci(tiny_y, tiny_s, n_boot=200, seed=0)
    assert t["n_boot"] == 200 and t["n_boot_valid"] < 200


def test_bootstrap_indices_seeded_and_stratified():
    a = M.bootstrap_indices(100, 20, seed=7)
    assert a.shape == (20, 100) and a.dtype == np.int32 and a.min() >= 0 and a.max() < 100
    np.testing.assert_array_equal(a, M.bootstrap_indices(100, 20, seed=7))
    assert not np.array_equal(a, M.bootstrap_indices(100, 20, seed=8))
    y = np.r_[np.ones(3, int), np.zeros(97, int)]
    st = M.bootstrap_indices(100, 50, seed=0, stratify=y)
    assert (y[st].sum(axis=1) == 3).all()  # class counts kept in every resample
    r = M.bootstrap_ci(y, np.linspace(0, 1, 100), n_boot=50, stratify=True)
    assert r["n_boot_valid"] == 50


def test_paired_difference():
    rng = np.random.default_rng(0)
    n = 400
    y = (rng.random(n) < 0.3).astype(int)
    good = y * 1.5 + rng.normal(size=n)
    bad = y * 0.3 + rng.normal(size=n)
    d = M.paired_difference(y, good, bad, n_boot=200, seed=1)
    assert d["auroc_diff"] == pytest.approx(roc_auc_score(y, good) - roc_auc_score(y, bad), abs=TOL)
    assert d["auprc_diff"] == pytest.approx(average_precision_score(y, good) - average_precision_score(y, bad), abs=TOL)
    assert d["auroc_diff_lo"] > 0 and d["auroc_p"] == pytest.approx(2 / 201)  # no resample reverses the order
    same = M.paired_difference(y, good, good, n_boot=50, seed=1)
    assert same["auroc_diff"] == 0 and same["auroc_diff_lo"] == same["auroc_diff_hi"] == 0 and same["auroc_p"] == 1
    bca = M.paired_difference(y, good, bad, n_boot=200, seed=1, method="bca")
    assert bca["auroc_diff"] == d["auroc_diff"] and bca["auroc_diff_lo"] > 0
    # p-value formula by hand: d = [-1, 0.5, 1, 2]: #<=0 = 1, #>=0 = 3 -> 2 (1 + 1) / 5
    assert M.bootstrap_p_value(np.array([-1, 0.5, 1, 2])) == pytest.approx(0.8)
    assert M.bootstrap_p_value(np.array([1.0, 2.0, np.nan])) == pytest.approx(2 / 3)


@pytest.mark.parametrize("call, err, arg", [
    (lambda: M.bootstrap_ci([0, 1, 1], [0.1, 0.2]), M.LengthMismatchError, "y_score"),
    (lambda: M.bootstrap_ci([0, 1, 1], [0.1, np.nan, 0.3]), M.NonFiniteScoreError, "y_score"),
    (lambda: M.bootstrap_ci([0, 1, 1], [0.1, np.inf, 0.3]), M.NonFiniteScoreError, "y_score"),
    (lambda: M.bootstrap_ci([0, 2, 1], [0.1, 0.2, 0.3]), M.LabelValueError, "y_true"),
    (lambda: M.bootstrap_ci([0, np.nan, 1], [0.1, 0.2, 0.3]), M.LabelValueError, "y_true"),
    (lambda: M.bootstrap_ci(["a", "b"], [0.1, 0.2]), M.LabelValueError, "y_true"),
    (lambda: M.bootstrap_ci([1, 1, 1], [0.1, 0.2, 0.3]), M.SingleClassError, "y_true"),
    (lambda: M.bootstrap_ci([0, 1], [0.1, 0.2], indices=[[0, 2]]), M.BootstrapIndicesError, "indices"),
    (lambda: M.bootstrap_ci([0, 1], [0.1, 0.2], indices=[0, 1]), M.BootstrapIndicesError, "indices"),
    (lambda: M.bootstrap_ci([0, 1], [0.1, 0.2], method="bootstrap-t"), M.MetricsInputError, "method"),
    (lambda: M.bootstrap_ci([0, 1], [0.1, 0.2], auprc_method="interp"), M.MetricsInputError, "auprc_method"),
    (lambda: M.bootstrap_ci([0, 1], [0.1, 0.2], alpha=1.5), M.MetricsInputError, "alpha"),
    (lambda: M.paired_difference([0, 1], [0.1, 0.2], [0.3, np.nan]), M.NonFiniteScoreError, "score_b"),
    (lambda: M.paired_difference([0, 1], [0.1], [0.3, 0.2]), M.LengthMismatchError, "score_a"),
])
def test_invalid_inputs_raise_typed_errors(call, err, arg):
    with pytest.raises(err, match=arg) as info:
        call()
    assert isinstance(info.value, ValueError) and info.value.argument.startswith(arg)


def test_saved_indices_roundtrip_and_mismatch(tmp_path):
    ids = [f"r{i}" for i in range(30)]
    y = np.r_[np.zeros(20, int), np.ones(10, int)]
    a = M.bootstrap_indices_cached(tmp_path, "hcm-test", ids, n_boot=25, seed=0)
    assert (tmp_path / "hcm-test.npy").exists() and json.loads((tmp_path / "hcm-test.json").read_text())["n"] == 30
    np.testing.assert_array_equal(a, M.bootstrap_indices(30, 25, seed=0))
    # re-read, not redrawn: a different seed still returns the saved resamples
    np.testing.assert_array_equal(M.bootstrap_indices_cached(tmp_path, "hcm-test", ids, 25, seed=99), a)
    np.testing.assert_array_equal(M.load_bootstrap_indices(tmp_path, "hcm-test", ids), a)
    with pytest.raises(M.BootstrapIndexMismatchError, match="different evaluation set"):
        M.load_bootstrap_indices(tmp_path, "hcm-test", ids[::-1])  # same ids, other order
    with pytest.raises(M.BootstrapIndexMismatchError):
        M.bootstrap_indices_cached(tmp_path, "hcm-test", ids[:-1], 25)
    with pytest.raises(M.BootstrapIndicesError, match="25 resamples"):
        M.bootstrap_indices_cached(tmp_path, "hcm-test", ids, 50)
    with pytest.raises(FileNotFoundError):
        M.load_bootstrap_indices(tmp_path, "other", ids)
    st = M.bootstrap_indices_cached(tmp_path, "strat", ids, 10, seed=0, stratify=y)
    assert (y[st].sum(axis=1) == 10).all()


def _preds(ids, labels, models=("heartbeit", "resnet152"), shift=None):
    rng = np.random.default_rng(0)
    rows = []
    for m in models:
        sc = labels * (1.0 if m == "heartbeit" else 0.4) + rng.normal(size=len(ids))
        rows.append(pd.DataFrame({"task": "mi", "model": m, "fraction": 1.0, "seed": 0, "split": "test",
                                  "record_id": ids if shift is None or m == models[0] else shift,
                                  "label": labels, "score": sc}))
    return pd.concat(rows, ignore_index=True)


def test_evaluate_predictions_pairs_runs_and_checks_sets(tmp_path):
    ids = np.array([f"r{i:03d}" for i in range(120)])
    labels = (np.arange(120) % 3 == 0).astype(int)
    preds = _preds(ids, labels)
    res, diffs = PM.evaluate_predictions(preds.sample(frac=1, random_state=0), n_boot=40, indices_dir=tmp_path)
    assert len(res) == 2 and len(diffs) == 1 and (tmp_path / "mi-test.npy").exists()
    # order of rows in the input does not matter: records are aligned by id
    hb = preds[preds.model == "heartbeit"]
    assert res.set_index("model").loc["heartbeit", "auroc"] == pytest.approx(roc_auc_score(hb.label, hb.score), abs=TOL)
    assert diffs.iloc[0]["baseline"] == "resnet152" and diffs.iloc[0]["auroc_diff"] > 0
    other = ids.copy()
    other[0] = "zzz"
    with pytest.raises(M.RunMismatchError, match="record ids differ"):
        PM.evaluate_predictions(_preds(ids, labels, shift=other), n_boot=10)
    with pytest.raises(M.BootstrapIndexMismatchError):  # saved indices belong to the other id set
        PM.evaluate_predictions(_preds(other, labels), n_boot=40, indices_dir=tmp_path)


def test_metrics_config_validates():
    cfg = PM.MetricsConfig(n_boot="100", splits="test")
    assert cfg.n_boot == 100 and cfg.splits == ("test",)
    for kw in (dict(ci_method="normal"), dict(auprc_method="x"), dict(n_boot=0), dict(splits="train")):
        with pytest.raises(runs.ConfigError):
            PM.MetricsConfig(**kw)


def test_pool_seeds_mean_interval_over_test_and_seeds_and_paired_differences():
    """Issue 18 s.5. Oracles: sklearn roc_auc_score per seed (cell = their mean, sd = np.std ddof 1); the pooled
    resample values recomputed by hand from the per-seed ones and the documented (B, S) seed draw; the pooled
    interval is at least as wide as the widest single-seed interval's share of seed spread (here: seeds differ
    a lot, so it must be wider than every single-seed interval); differences paired on the same draws."""
    ids = np.array([f"r{i:03d}" for i in range(150)])
    labels = (np.arange(150) % 3 == 0).astype(int)
    rng = np.random.default_rng(1)
    frames = []
    for s, strength in enumerate((0.3, 1.0, 2.0)):  # seeds of very different quality: large seed variation
        for m, k in (("heartbeit", strength), ("resnet152", 0.5 * strength)):
            frames.append(pd.DataFrame({"task": "mi", "model": m, "fraction": 0.1, "seed": s, "split": "test",
                                        "record_id": ids, "label": labels,
                                        "score": labels * k + rng.normal(size=150)}))
    preds = pd.concat(frames, ignore_index=True)
    stats = {}
    res, _ = PM.evaluate_predictions(preds, n_boot=200, seed=0, keep_stats=stats)
    run_table = pd.DataFrame({"task": "mi", "model": ["heartbeit"] * 3 + ["resnet152"] * 3, "fraction": 0.1,
                              "seed": [0, 1, 2] * 2, "lr": [1e-4, 1e-4, 1e-3, 3e-4, 3e-4, 3e-4],
                              "family": ["image"] * 3 + ["signal"] * 3, "select_on": ["val"] * 3 + ["last"] * 3})
    pooled, diffs = PM.pool_seeds(stats, run_table, seed=0)
    assert len(pooled) == 2 and len(diffs) == 1
    # the pooled tables' caption names each model's epoch rule (oracle: the run table's select_on, by hand)
    assert dict(zip(pooled.model, pooled.select_on)) == {"heartbeit": "val", "resnet152": "last"}
    from heartbeit_lib.report import tables
    assert "except resnet152: the last epoch, no selection" in tables.metric_table(pooled, "auroc").caption
    assert dict(zip(pooled.model, pooled.family)) == {"heartbeit": "image", "resnet152": "signal"}  # table level
    hb = pooled.set_index("model").loc["heartbeit"]
    per_seed = [roc_auc_score(labels, preds[(preds.model == "heartbeit") & (preds.seed == s)].score) for s in range(3)]
    assert hb["auroc"] == pytest.approx(np.mean(per_seed), abs=TOL) and hb["n_seeds"] == 3
    assert hb["auroc_seed_sd"] == pytest.approx(np.std(per_seed, ddof=1), abs=TOL)
    assert hb["lr"] == "0.0001/0.001" and pooled.set_index("model").loc["resnet152", "lr"] == "0.0003"
    single = res[res.model == "heartbeit"]
    assert (hb["auroc_hi"] - hb["auroc_lo"]) > (single["auroc_hi"] - single["auroc_lo"]).max()
    # the pooled resample values: mean over the documented seed draw of the seeds' values on each test resample
    sts = [stats[("mi", "test")][("heartbeit", 0.1, s)] for s in range(3)]
    draw = np.random.default_rng(0).integers(0, 3, size=(200, 3))
    want = np.stack([st.boot_auroc for st in sts], 1)[np.arange(200)[:, None], draw].mean(1)
    np.testing.assert_allclose(M.seed_pool(sts, 0).boot_auroc, want)
    d = diffs.iloc[0]
    assert d["baseline"] == "resnet152" and d["auroc_diff"] == pytest.approx(
        hb["auroc"] - pooled.set_index("model").loc["resnet152", "auroc"], abs=TOL)
    assert M.seed_pool(sts[:1]) is sts[0]  # one seed: its own stats
    # issue 24 item 3: the difference pairs the test resamples only; each model's seeds are drawn from its own
    # stream (seed j of heartbeit has nothing to do with seed j of resnet152). Oracle: the documented draws.
    assert (d["seeds_reference"], d["seeds_baseline"]) == ("0,1,2", "0,1,2") and d["holm_family_size"] == 1
    rn = [stats[("mi", "test")][("resnet152", 0.1, s)] for s in range(3)]
    own = (M.seed_pool(sts, [0, PM.model_stream("heartbeit")]).boot_auroc
           - M.seed_pool(rn, [0, PM.model_stream("resnet152")]).boot_auroc)
    assert (d["auroc_diff_lo"], d["auroc_diff_hi"]) == pytest.approx(tuple(np.percentile(own, [2.5, 97.5])), abs=TOL)
    # the old pairing (same draw for both) hid the seed variation: both models are weak on seed 0 by construction
    same = M.seed_pool(sts, 0).boot_auroc - M.seed_pool(rn, 0).boot_auroc
    assert np.ptp(np.percentile(own, [2.5, 97.5])) > np.ptp(np.percentile(same, [2.5, 97.5]))
    from heartbeit_lib.report import tables

    t4, cap = tables.differences_table(diffs)
    assert "Holm" in cap and "family size 1" in cap and len(t4) == 1
    assert t4.iloc[0]["seeds (reference / baseline)"] == "0,1,2 / 0,1,2"
    assert t4.iloc[0]["p (Holm)"] == f"{d['auroc_p_holm']:.3g}"


def test_pool_seeds_simultaneous_intervals_over_the_family():
    """Issue 24 item 3: beside Holm's p, each difference of a table's family (task, split) gets a simultaneous
    interval at level 1 - alpha / m (Bonferroni). Oracle: numpy percentiles of the documented paired resample
    differences at alpha / (2m) and 1 - alpha / (2m), m = 2 baselines x 1 fraction; tolerance 1e-12."""
    ids = np.array([f"r{i:03d}" for i in range(120)])
    labels = (np.arange(120) % 4 == 0).astype(int)
    rng = np.random.default_rng(3)
    frames = [pd.DataFrame({"task": "mi", "model": m, "fraction": 0.1, "seed": s, "split": "test", "record_id": ids,
                            "label": labels, "score": labels * k * (1 + s) + rng.normal(size=120)})
              for s in range(2) for m, k in (("heartbeit", 1.0), ("resnet152", 0.6), ("xresnet1d101", 0.3))]
    stats = {}
    PM.evaluate_predictions(pd.concat(frames, ignore_index=True), n_boot=300, seed=0, keep_stats=stats)
    _, diffs = PM.pool_seeds(stats, seed=0)
    assert len(diffs) == 2 and set(diffs["holm_family_size"]) == {2}
    st = stats[("mi", "test")]
    hb = M.seed_pool([st[("heartbeit", 0.1, s)] for s in range(2)], [0, PM.model_stream("heartbeit")]).boot_auroc
    for _, d in diffs.iterrows():
        other = M.seed_pool([st[(d["baseline"], 0.1, s)] for s in range(2)], [0, PM.model_stream(d["baseline"])])
        q = np.quantile(hb - other.boot_auroc, [0.05 / 4, 1 - 0.05 / 4])
        assert (d["auroc_diff_lo_adj"], d["auroc_diff_hi_adj"]) == pytest.approx(tuple(q), abs=1e-12)
        assert d["alpha_adj"] == pytest.approx(0.025)
        assert d["auroc_diff_lo_adj"] <= d["auroc_diff_lo"] and d["auroc_diff_hi_adj"] >= d["auroc_diff_hi"]
    from heartbeit_lib.report import tables

    t4, cap = tables.differences_table(diffs)
    assert "Bonferroni" in cap and "simultaneous CI (Bonferroni)" in t4.columns


def test_holm_adjusted_p_values_and_the_family_of_a_table():
    """Oracle: Holm's step-down rule by hand (m = 3 finite p-values; NaN stays NaN and is not counted)."""
    np.testing.assert_allclose(M.holm_adjust([0.01, 0.04, 0.03, np.nan]), [0.03, 0.06, 0.06, np.nan])
    np.testing.assert_allclose(M.holm_adjust([0.5, 0.6]), [1.0, 1.0])  # capped at 1
    assert M.holm_adjust([]).size == 0
