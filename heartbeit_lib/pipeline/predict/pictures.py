"""07, step 6: one page per chosen ECG with the model input and its saliency map."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from heartbeit_lib.analysis.saliency import is_transformer, saliency_maps, signal_saliency, to_image, to_store_rate
from heartbeit_lib.analysis.saliency.errors import UnsupportedMethodError
from heartbeit_lib.analysis.saliency.signal_maps import gradcam_layer
from heartbeit_lib.classify.engine import SCORE_PREFIX
from heartbeit_lib.cohorts import output_leads
from heartbeit_lib.report import ecg_page
from heartbeit_lib.safety import file_name_from

from heartbeit_lib.pipeline.predict.config import DECISION_PREFIX, PredictConfig, PredictError, Thresholds
from heartbeit_lib.pipeline.predict.ensemble import (Member, Rendering, member_inputs, member_normalization,
                                                     render_images)
from heartbeit_lib.pipeline.predict.inputs import Inputs
from heartbeit_lib.pipeline.predict.scores import class_view
from heartbeit_lib.pipeline.predict.thresholds import _threshold_of


def choose_pictures(pred: pd.DataFrame, cfg: PredictConfig) -> np.ndarray:
    """Positions in ``pred`` to draw: the ``n_pictures`` highest scores, the first ``n_pictures`` positives
    by score, or the records of ``picture_ids`` (an unknown id is an error naming it). A multi-label table: by each
    ECG's highest class score, positives = ECGs with a positive decision in any class."""
    if cfg.pictures == "none":
        return np.zeros(0, np.int64)
    if cfg.pictures == "ids":
        pos = {r: i for i, r in enumerate(pred["record_id"])}
        missing = [r for r in cfg.picture_ids if r not in pos]
        if missing:
            raise PredictError(f"parameter 'picture_ids': {missing} not among the scored records")
        return np.array([pos[r] for r in cfg.picture_ids], np.int64)
    order = score_order(pred)
    if cfg.pictures == "positives":
        order = order[_columns(pred, DECISION_PREFIX, "decision").max(axis=1)[order] == 1]
    return order[:cfg.n_pictures]


def score_order(pred: pd.DataFrame) -> np.ndarray:
    """Positions of ``pred`` from the highest score down (multi-label: each ECG's highest class score)."""
    return np.argsort(-_columns(pred, SCORE_PREFIX, "score").max(axis=1), kind="stable")


def _columns(pred: pd.DataFrame, prefix: str, binary: str) -> np.ndarray:
    """(n, classes) of the ``<prefix><class>`` columns of a multi-label table, else (n, 1) of column ``binary``."""
    cols = [c for c in pred.columns if c.startswith(prefix)] or [binary]
    return pred[cols].to_numpy()


def picture_class(members: Sequence[Member], row: pd.Series, threshold: Thresholds) -> tuple[str | None, int]:
    """The class one page shows and explains: (None, 1) for a binary model (class 1's logit), for a multi-label one
    the class whose score is furthest above its threshold (a positive decision when there is one), with its output
    index."""
    if not members[0].multilabel:
        return None, 1
    margin = [float(row[f"{SCORE_PREFIX}{c}"]) - threshold[c].value for c in members[0].classes]
    j = int(np.argmax(margin))
    return members[0].classes[j], j


def _safe_name(record_id: str) -> str:
    return file_name_from(record_id, "record")


def signal_method(member: Member, method: str) -> str:
    """The map a signal member draws for ``method``: Grad-CAM on a 1-D CNN when ``gradcam`` is asked, else
    integrated gradients (ST-MEM has no convolutional map; ``fullgrad``/``rollout`` are image methods)."""
    if method != "gradcam":
        return "ig"
    try:
        gradcam_layer(member.model)
        return "gradcam"
    except UnsupportedMethodError:
        return "ig"


def member_maps(members: Sequence[Member], signals: np.ndarray, grey: np.ndarray, rendering: Rendering, method: str,
                target_class: int = 1) -> np.ndarray:
    """(n, H, W) saliency in [0, 1] of output ``target_class`` on the pictured model input ``grey`` (n, H, W),
    averaged over members.

    An image member's map is on its own input (rollout falls back to gradcam for CNNs); a signal member's lead x
    time map (:func:`heartbeit_lib.analysis.saliency.signal_saliency` on what it read, normalised as 03 did, the
    whole record in one pass, repeated onto the store's samples) is drawn into the pictured layout, each lead's
    panel taking its lead's map, so members of both families are averaged on the same pixels."""
    maps = []
    for m in members:
        x = member_inputs(m, signals, grey, rendering)
        if m.family == "signal":
            mean, std = member_normalization(m)
            lt = to_store_rate(signal_saliency(m.model, (x - mean) / std, signal_method(m, method), target_class,
                                               batch_size=8), signals.shape[-1])
            maps.append(to_image(lt, grey.shape[-1], rendering.layout or "stack8"))
        else:
            maps.append(saliency_maps(m.model, x.contiguous(),
                                      method if method != "rollout" or is_transformer(m.model) else "gradcam",
                                      target_class, normalization=m.normalize, batch_size=8))
    return np.mean(maps, axis=0)


def _saliency_note(members: Sequence[Member], method: str) -> str:
    names = sorted({signal_method(m, method) + " (lead x time)" if m.family == "signal" else method for m in members})
    return "saliency: " + ", ".join(names)


def draw_pictures(members: Sequence[Member], inputs: Inputs, pred: pd.DataFrame, positions: np.ndarray,
                  rendering: Rendering, threshold: Thresholds, cfg: PredictConfig,
                  run_dir: str | os.PathLike) -> list[Path]:
    """``pictures/<record_id>.png`` per position and ``pictures.pdf`` (all pages); returns the PNG paths. The
    model-input panel is the image models' input, or for a signal-only ensemble the signals drawn in ``stack8`` at
    :data:`PICTURE_SIZE` px, with the members' saliency on top (:func:`member_maps`). A multi-label page shows the
    score, threshold, decision and saliency of one class (:func:`picture_class`) and names the positive classes."""
    if not len(positions):
        return []
    out = Path(run_dir) / "pictures"
    out.mkdir(exist_ok=True)
    sig = inputs.store.signals(inputs.rows[positions])
    grey = render_images(sig, rendering)
    shown = [picture_class(members, pred.iloc[int(i)], threshold) for i in positions]
    maps = None
    if cfg.saliency_method:
        maps = np.zeros(grey.shape, np.float32)
        for j in sorted({j for _, j in shown}):  # one pass per explained output
            sel = np.array([k for k, (_, jj) in enumerate(shown) if jj == j])
            maps[sel] = member_maps(members, sig[sel], grey[sel], rendering, cfg.saliency_method, j)
    leads = tuple(inputs.store.info.get("leads") or output_leads())
    pages, paths = [], []
    for k, i in enumerate(positions):
        cls = shown[k][0]
        r = class_view(pred, cls).iloc[int(i)]
        lab = {1: "label: positive", 0: "label: negative"}.get(int(r["label"]), "")
        positives = ("positive classes: " + (", ".join(c for c in members[0].classes
                                                       if pred.iloc[int(i)][f"{DECISION_PREFIX}{c}"] == 1) or "none")
                     if cls is not None else "")
        note = "  ".join(t for t in (f"{len(members)}-model ensemble" if len(members) > 1 else members[0].name,
                                     f"class {cls}" if cls is not None else "", positives,
                                     _saliency_note(members, cfg.saliency_method) if maps is not None else "",
                                     lab) if t)
        page = ecg_page.ECGPage(signal=sig[k], fs=rendering.fs, image=grey[k], record_id=str(r["record_id"]),
                                score=float(r["score"]), threshold=_threshold_of(threshold, cls).value,
                                decision="POSITIVE" if r["decision"] == 1 else "negative",
                                saliency=None if maps is None else maps[k], leads=leads,
                                input_layout=rendering.layout or "stack8", input_samples=sig.shape[-1], note=note)
        paths.append(ecg_page.save_png(ecg_page.page_figure(page), out / f"{k:03d}_{_safe_name(page.record_id)}.png",
                                       dpi=110))
        pages.append(page)
    ecg_page.save_pdf(pages, Path(run_dir) / "pictures.pdf")
    return paths
