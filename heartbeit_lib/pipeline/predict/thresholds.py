"""07, step 4: operating thresholds chosen on the training runs' validation split only (per class for a multi-label
model), how far to trust them, and the operating points clinicians ask for."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Sequence

import numpy as np
import pandas as pd

from heartbeit_lib.analysis import calibration
from heartbeit_lib.classify.checkpoint import FinetuneRunError
from heartbeit_lib.classify.engine import SCORE_PREFIX
from heartbeit_lib.cohorts import LABEL_PREFIX

from heartbeit_lib.pipeline.predict.config import (MIN_VAL_POSITIVES, OPERATING_TARGETS, PredictConfig, PredictError,
                                                   Thresholds)
from heartbeit_lib.pipeline.predict.ensemble import Member
from heartbeit_lib.pipeline.predict.scores import class_view


def training_scores(members: Sequence[Member], split: str, cls: str | None = None) -> pd.DataFrame:
    """``record_id, label, score`` of the training runs' ``split`` at each run's chosen epoch
    (``predictions.parquet``), the score averaged over members (records every member scored); ``cls``: of that
    class of multi-label runs (their ``label:<cls>`` / ``score:<cls>`` columns)."""
    label, score_col = ("label", "score") if cls is None else (f"{LABEL_PREFIX}{cls}", f"{SCORE_PREFIX}{cls}")
    frames = []
    for k, m in enumerate(members):
        pred = pd.read_parquet(m.run_dir / "predictions.parquet")
        missing = [c for c in ("record_id", "split", "epoch", label, score_col) if c not in pred.columns]
        if missing:
            raise FinetuneRunError(f"{m.run_dir / 'predictions.parquet'}: no column(s) {missing}")
        sel = pred[(pred["split"] == split) & (pred["epoch"] == int(m.metrics["best_epoch"]))]
        frames.append(sel[["record_id", label, score_col]].rename(columns={label: "label", score_col: f"s{k}"})
                      .set_index(["record_id", "label"]))
    df = pd.concat(frames, axis=1, join="inner")
    return pd.DataFrame({"record_id": df.index.get_level_values(0).astype(str),
                         "label": df.index.get_level_values(1).astype(np.int64), "score": df.mean(axis=1).to_numpy()})


def _validation_scores(members: Sequence[Member], cls: str | None = None) -> pd.DataFrame:
    val = training_scores(members, "val", cls)
    if val.empty:
        raise PredictError(f"{members[0].run_dir / 'predictions.parquet'}: no validation scores at the chosen epoch; "
                           "the threshold is chosen on the validation split only")
    return val[val["label"] >= 0]


def operating_threshold(members: Sequence[Member], cfg: PredictConfig) -> Thresholds:
    """The threshold chosen on the training runs' validation split (``calibration.choose_threshold``); for a
    multi-label ensemble a dict class -> the threshold chosen on that class's validation labels and scores (each
    class its own operating point: prevalences and score scales differ between classes)."""
    if members[0].multilabel:
        return {c: _choose(members, cfg, c) for c in members[0].classes}
    return _choose(members, cfg, None)


def _choose(members: Sequence[Member], cfg: PredictConfig, cls: str | None) -> calibration.Threshold:
    val = _validation_scores(members, cls)
    try:
        return calibration.choose_threshold(val["label"], val["score"], split="val", method=cfg.threshold_method,
                                            target_sensitivity=cfg.target_sensitivity,
                                            target_specificity=cfg.target_specificity)
    except calibration.CalibrationError as e:
        if cls is None:
            raise
        raise PredictError(f"class {cls!r}: no threshold on the validation split of "
                           f"{members[0].run_dir / 'predictions.parquet'}: {e}") from None


def threshold_report(members: Sequence[Member], threshold: Thresholds, cfg: PredictConfig) -> dict:
    """How much to trust ``threshold``: the validation counts, its bootstrap interval on validation and the
    interval of its sensitivity/specificity there (``calibration.threshold_interval``, ``cfg.n_boot`` resamples),
    and a ``warning`` (also raised as a :class:`UserWarning`) when validation holds fewer than
    :data:`MIN_VAL_POSITIVES` positives: such a threshold may give a very different sensitivity elsewhere.
    Multi-label: ``{"classes": {class: that report}, "warning": one warning naming every class under the bound}``."""
    if not isinstance(threshold, dict):
        rep = _report(members, threshold, cfg, None)
        if rep["warning"]:
            warnings.warn(rep["warning"], UserWarning, stacklevel=2)
        return rep
    reps = {c: _report(members, t, cfg, c) for c, t in threshold.items()}
    few = {c: r["n_val_positives"] for c, r in reps.items() if r["warning"]}
    warning = None
    if few:
        warning = (f"the thresholds of {len(few)} class(es) were chosen on fewer than {MIN_VAL_POSITIVES} validation "
                   f"positives ({', '.join(f'{c}: {n}' for c, n in few.items())}); their bootstrap intervals are in "
                   "threshold.json: expect other sensitivities on new data (see operating_points.csv)")
        warnings.warn(warning, UserWarning, stacklevel=2)
    return {"classes": reps, "warning": warning}


def _report(members: Sequence[Member], threshold: calibration.Threshold, cfg: PredictConfig, cls: str | None) -> dict:
    val = _validation_scores(members, cls)
    n_pos = int((val["label"] == 1).sum())
    ci = calibration.threshold_interval(val["label"], val["score"], threshold, n_boot=cfg.n_boot, seed=cfg.seed)
    warning = None
    if n_pos < MIN_VAL_POSITIVES:
        warning = (f"{'' if cls is None else f'class {cls}: '}the threshold {threshold.value:.4g} was chosen on "
                   f"{n_pos} validation positives (< {MIN_VAL_POSITIVES}): its 95 % bootstrap interval is "
                   f"{ci.value_lo:.4g}-{ci.value_hi:.4g} and its validation sensitivity {ci.sensitivity_lo:.2f}-"
                   f"{ci.sensitivity_hi:.2f}; expect another sensitivity on new data (see operating_points.csv; "
                   "choose it on a larger validation set)")
    return {"n_val": len(val), "n_val_positives": n_pos, "interval": dataclasses.asdict(ci), "warning": warning}


def operating_points(members: Sequence[Member], pred: pd.DataFrame,
                     targets: Sequence[float] = OPERATING_TARGETS) -> pd.DataFrame:
    """The operating points clinicians ask for: per target sensitivity and target specificity, the threshold chosen
    on the training runs' validation split, its sensitivity/specificity there, and (labelled scored ECGs only) on
    the scored ECGs. A target no validation threshold reaches gets a ``note``. Multi-label: the same per class
    (chosen on that class's validation labels), a ``class`` column first."""
    if members[0].multilabel:
        frames = []
        for c in members[0].classes:
            pts = _points(members, class_view(pred, c), targets, c)
            pts.insert(0, "class", c)
            frames.append(pts)
        return pd.concat(frames, ignore_index=True)
    return _points(members, pred, targets, None)


def _points(members: Sequence[Member], pred: pd.DataFrame, targets: Sequence[float], cls: str | None) -> pd.DataFrame:
    val = _validation_scores(members, cls)
    lab = pred[pred["label"] >= 0]
    rows = []
    for name in ("sensitivity", "specificity"):
        for target in targets:
            row: dict[str, Any] = {"target": name, "value": float(target)}
            try:
                t = calibration.choose_threshold(val["label"], val["score"], split="val", method=name,
                                                 **{f"target_{name}": float(target)})
            except calibration.CalibrationError as e:
                rows.append({**row, "note": str(e)})
                continue
            row.update(threshold=t.value, val_sensitivity=t.sensitivity, val_specificity=t.specificity)
            if len(lab):
                op = calibration.operating_point(lab["label"], lab["score"], t.value, split="external")
                row.update(scored_sensitivity=op.sensitivity, scored_specificity=op.specificity, scored_ppv=op.ppv,
                           scored_npv=op.npv)
            rows.append({**row, "note": ""})
    return pd.DataFrame(rows)


def _threshold_of(threshold: Thresholds, cls: str | None) -> calibration.Threshold:
    return threshold if cls is None else threshold[cls]


def threshold_record(threshold: Thresholds, report: dict | None = None) -> dict:
    """``threshold.json``: the threshold and its :func:`threshold_report`; multi-label: ``{"classes": {class:
    threshold and report}, "warning": ...}``."""
    report = report or {}
    if not isinstance(threshold, dict):
        return {**dataclasses.asdict(threshold), **report}
    per = report.get("classes", {})
    return {"classes": {c: {**dataclasses.asdict(t), **per.get(c, {})} for c, t in threshold.items()},
            "warning": report.get("warning")}
