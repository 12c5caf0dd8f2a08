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

Modules, one idea each: :mod:`.checks` (typed errors, input checks), :mod:`.scores` (exact AUROC/AUPRC),
:mod:`.bootstrap` (resamples and their metrics), :mod:`.intervals` (intervals, paired differences, seed pooling),
:mod:`.saved_indices` (indices saved once per task and split). Every name is importable from here.
"""

from __future__ import annotations

from heartbeit_lib.analysis.metrics.checks import (AUPRC_METHODS, CI_METHODS, _check_indices,  # noqa: F401
                                                   _check_labels, _check_method, _check_scores,
                                                   BootstrapIndexMismatchError, BootstrapIndicesError,
                                                   DegenerateIntervalWarning, LabelValueError,
                                                   LengthMismatchError, MetricsInputError,
                                                   NonFiniteScoreError, RunMismatchError,
                                                   SingleClassError, validate_binary)
from heartbeit_lib.analysis.metrics.scores import (_metrics_from_slot_counts, _metrics_validated,  # noqa: F401
                                                   auprc_score, auroc_score, slot_layout, SlotLayout,
                                                   weighted_metrics)
from heartbeit_lib.analysis.metrics.bootstrap import (DEFAULT_CHUNK_BYTES, _resolve_rng,  # noqa: F401
                                                      benchmark_interval, bootstrap_indices,
                                                      bootstrap_macro_metrics, bootstrap_metrics,
                                                      BootstrapStats, jackknife_metrics,
                                                      MacroBootstrapStats)
from heartbeit_lib.analysis.metrics.intervals import (_check_alpha, _interval, _prepare_indices,  # noqa: F401
                                                      bca_interval, bootstrap_ci, bootstrap_p_value,
                                                      compare, holm_adjust, interval_summary,
                                                      paired_difference, percentile_interval, seed_pool)
from heartbeit_lib.analysis.metrics.saved_indices import (_index_paths, bootstrap_indices_cached,  # noqa: F401
                                                          load_bootstrap_indices, record_ids_hash,
                                                          save_bootstrap_indices)
