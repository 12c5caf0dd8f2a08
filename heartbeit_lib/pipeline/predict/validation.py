"""07, step 5: external validation when the scored ECGs carry labels (discrimination, calibration, the operating point;
per class for a multi-label model) and the reliability diagram."""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from heartbeit_lib.analysis import calibration, metrics
from heartbeit_lib.cohorts import CohortStore
from heartbeit_lib.pipeline import overlap

from heartbeit_lib.pipeline.predict.config import PredictConfig, Thresholds
from heartbeit_lib.pipeline.predict.ensemble import Member, _resolve
from heartbeit_lib.pipeline.predict.scores import class_view
from heartbeit_lib.pipeline.predict.thresholds import training_scores


def evaluate(y: np.ndarray, p: np.ndarray, name: str, threshold: float, n_boot: int, seed: int,
             p_decision: np.ndarray | None = None) -> dict:
    """One table row: AUROC/AUPRC with 95 % bootstrap CIs, calibration of ``p`` and the operating point of
    ``p_decision >= threshold`` (default ``p``; recalibrated rows keep the decisions of the raw scores the threshold
    was chosen on); only the counts (and a note) where one class is missing."""
    row: dict[str, Any] = {"data": name, "n": int(len(y)), "n_pos": int(np.sum(y == 1))}
    op = calibration.operating_point(y, p if p_decision is None else p_decision, threshold, split=name)
    row.update(threshold=threshold, sensitivity=op.sensitivity, specificity=op.specificity, ppv=op.ppv, npv=op.npv)
    try:
        ci = metrics.bootstrap_ci(y, p, n_boot=n_boot, seed=seed)
        cal = calibration.calibration_summary(y, p, split=name)
    except (metrics.MetricsInputError, calibration.CalibrationError) as e:
        return {**row, "note": str(e)}
    row.update({k: ci[k] for k in ("auroc", "auroc_lo", "auroc_hi", "auprc", "auprc_lo", "auprc_hi")})
    row.update({k: cal[k] for k in ("brier", "ece", "slope", "intercept")}, note="")
    return row


def scored_data_name(members: Sequence[Member], scored_store: Any | None, patient_hashes: Sequence[str]) -> str:
    """The validation-table name of the scored ECGs of ``patient_hashes`` (salted, as in ``scored_store``, the store
    they were read from): ``external (scored ECGs)`` only when none of their
    patients has a non-external ECG in a training run's cohort store; ``scored ECGs (overlaps training: P patients
    / E ECGs)`` when some do; ``scored ECGs (overlap with training unverified)`` when the stores' patient hashes
    cannot be compared (another salt: ``overlap.check_same_salt``) or the scored store is not known."""
    unverified = "scored ECGs (overlap with training unverified)"
    if scored_store is None:
        return unverified
    seen: set[str] = set()
    for root in sorted({str(_resolve(str(m.config.get("cohort_run") or ""))) for m in members}):
        try:
            train = CohortStore(root)
            overlap.check_same_salt(scored_store, train)
        except (overlap.SaltMismatchError, OSError, ValueError):
            return unverified
        tm = train.manifest
        seen |= set(tm.loc[tm["split"].astype(str) != "external", "patient_hash"].astype(str))
    pats = np.asarray(patient_hashes, dtype=str)
    hit = np.isin(pats, list(seen))
    if hit.any():
        return f"scored ECGs (overlaps training: {len(set(pats[hit]))} patients / {int(hit.sum())} ECGs)"
    return "external (scored ECGs)"


def validate(members: Sequence[Member], pred: pd.DataFrame, threshold: Thresholds, cfg: PredictConfig,
             scored_store: Any | None = None) -> tuple[pd.DataFrame, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The validation table (internal = the training runs' test split, external = the labelled scored ECGs,
    then recalibrated rows when ``cfg.recalibrate``) and the (labels, scores) of each row for the reliability
    diagram.

    Multi-label: the rows of every class (a ``class`` column first; thresholds, calibrators and intervals per
    class), and the curves of each row pooled over the classes (one reliability curve per data, not per class)."""
    if not members[0].multilabel:
        return _validate(members, pred, threshold, cfg, scored_store, None)
    tables, pooled = [], {}
    for c in members[0].classes:
        table, curves = _validate(members, class_view(pred, c), threshold[c], cfg, scored_store, c)
        tables.append(table.assign(**{"class": c})[["class", *table.columns]] if len(table) else table)
        for name, (y, p) in curves.items():
            ys, ps = pooled.get(name, ((), ()))
            pooled[name] = (np.r_[ys, y].astype(np.int64), np.r_[ps, p])
    return pd.concat(tables, ignore_index=True), pooled


def _validate(members: Sequence[Member], pred: pd.DataFrame, threshold: calibration.Threshold, cfg: PredictConfig,
              scored_store: Any | None, cls: str | None) -> tuple[pd.DataFrame, dict]:
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    split_of: dict[str, str] = {}  # row name -> the split it comes from (the calibrator refuses its own)
    records_of: dict[str, np.ndarray] = {}  # row name -> its record ids (the calibrator refuses its fitted records)
    test = training_scores(members, "test", cls)
    test = test[test["label"] >= 0]
    if len(test):
        curves["internal (training runs' test split)"] = (test["label"].to_numpy(), test["score"].to_numpy())
        split_of["internal (training runs' test split)"] = "test"
        records_of["internal (training runs' test split)"] = test["record_id"].astype(str).to_numpy()
    lab = pred[pred["label"] >= 0]
    if len(lab):
        name = scored_data_name(members, scored_store, lab["patient_hash"].astype(str).to_numpy())  # "external" only when checked against the training stores
        curves[name] = (lab["label"].to_numpy(), lab["score"].to_numpy())
        split_of[name] = "external"
        records_of[name] = lab["record_id"].astype(str).to_numpy()
    if cfg.recalibrate and curves:
        fit = training_scores(members, cfg.recalibrate_on, cls)
        fit = fit[fit["label"] >= 0]
        cal = calibration.fit_calibrator(fit["label"], fit["score"], method=cfg.recalibrate, split=cfg.recalibrate_on,
                                         records=fit["record_id"].astype(str))
        for name, split in list(split_of.items()):
            if split != cfg.recalibrate_on:  # never evaluated on the split it was fitted on
                y, p = curves[name]
                curves[f"{name}, {cfg.recalibrate} on {cfg.recalibrate_on}"] = (
                    y, cal.apply(p, split=split, records=records_of[name]))
    raw = {name: curves[name][1] for name in split_of}
    rows = [evaluate(y, p, name, threshold.value, cfg.n_boot, cfg.seed, raw.get(name.split(", ")[0]))
            for name, (y, p) in curves.items()]
    return pd.DataFrame(rows), curves


def reliability_figure(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike | None = None,
                       n_bins: int = calibration.N_BINS) -> Figure:
    """Reliability diagram (mean predicted vs observed fraction positive per equal-width bin, marker area ~
    count) of every row of :func:`validate`; the diagonal is perfect calibration."""
    fig = Figure(figsize=(4.6, 4.2 + 0.22 * len(curves)))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    for name, (y, p) in curves.items():
        r = calibration.reliability(y, p, split=name, n_bins=n_bins)
        full = r.count > 0
        ax.plot(r.mean_predicted[full], r.fraction_positive[full], marker="o", ms=4, label=f"{name} (n={len(y)})")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted probability", ylabel="observed fraction positive",
           title="reliability")
    fig.tight_layout(rect=(0, 0.055 * len(curves), 1, 1))
    fig.legend(*ax.get_legend_handles_labels(), fontsize=7, loc="lower center", ncol=1, frameon=False)  # below: no overlap
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig
