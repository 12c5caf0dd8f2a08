"""Faithfulness of saliency maps: pixel deletion / insertion curves and ROAD (see
:mod:`heartbeit_lib.analysis.saliency` for the caveats), and their means per run and method.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirstAverage, ROADMostRelevantFirstAverage
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

from heartbeit_lib.analysis.saliency.errors import SaliencyError
from heartbeit_lib.analysis.saliency.maps import _as_images, _device, _normalizer

WHITE = 1.0  # blank paper in [0, 1] image space: the deletion baseline


@torch.no_grad()
def _probabilities(model: nn.Module, x: torch.Tensor, target_class: int, norm, batch_size: int,
                   sigmoid: bool = False) -> np.ndarray:
    device = _device(model)
    out = []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i:i + batch_size].to(device)
        if norm is not None:
            xb = (xb - norm[0]) / norm[1]
        logits = model(xb).float()
        out.append((torch.sigmoid(logits[:, target_class]) if sigmoid else torch.softmax(logits, dim=1)[:, target_class]).cpu())
    return torch.cat(out).numpy().astype(np.float64)


def predict_proba(model: nn.Module, images: Any, target_class: int = 1, normalization=None,
                  batch_size: int = 32, sigmoid: bool = False) -> np.ndarray:
    """Probability of ``target_class`` (softmax over the logits; ``sigmoid``: of that logit alone, a multi-label
    model's class probability), (B,) float64."""
    x = _as_images(images)
    was = model.training
    model.eval()
    try:
        return _probabilities(model, x, int(target_class), _normalizer(normalization, _device(model)), batch_size,
                              sigmoid)
    finally:
        model.train(was)


def deletion_insertion(model: nn.Module, images: Any, maps: np.ndarray, target_class: int = 1, *,
                       steps: int = 20, normalization=None, baseline: float = WHITE,
                       batch_size: int = 32, sigmoid: bool = False) -> dict[str, np.ndarray]:
    """Pixel deletion and insertion curves (of the softmax probability, or with ``sigmoid`` of a multi-label
    model's class probability).

    For k = 0..steps the ``round(k / steps * H * W)`` most salient pixels (ties: raster order) are
    set to ``baseline`` (deletion; white paper) or copied onto a ``baseline`` image (insertion), in
    all channels, and the model's probability of ``target_class`` is recorded.

    Returns
    -------
    dict with ``fraction`` (steps+1,), ``deletion`` and ``insertion`` (B, steps+1) probabilities, and
    ``deletion_auc`` / ``insertion_auc`` (B,) trapezoidal areas over the fraction axis (0..1).
    """
    x = _as_images(images)
    maps = np.asarray(maps, dtype=np.float64)
    if maps.shape != (x.shape[0],) + tuple(x.shape[2:]):
        raise SaliencyError(f"maps: shape {maps.shape} does not match images {tuple(x.shape)} (need (B, H, W))")
    if steps < 1:
        raise SaliencyError(f"steps={steps}: must be >= 1")
    b, c, h, w = x.shape
    frac = np.arange(steps + 1) / steps
    counts = np.round(frac * h * w).astype(np.int64)
    was = model.training
    model.eval()
    norm = _normalizer(normalization, _device(model))
    dele = np.zeros((b, steps + 1))
    ins = np.zeros((b, steps + 1))
    try:
        for i in range(b):
            order = np.argsort(-maps[i].ravel(), kind="stable")
            rank = np.empty(h * w, np.int64)
            rank[order] = np.arange(h * w)
            mask = torch.from_numpy(rank.reshape(1, 1, h, w) < counts.reshape(-1, 1, 1, 1))   # (S, 1, H, W)
            img = x[i:i + 1]
            blank = torch.full_like(img, float(baseline))
            dele[i] = _probabilities(model, torch.where(mask, blank, img), target_class, norm, batch_size, sigmoid)
            ins[i] = _probabilities(model, torch.where(mask, img, blank), target_class, norm, batch_size, sigmoid)
    finally:
        model.train(was)
    return {"fraction": frac, "deletion": dele, "insertion": ins,
            "deletion_auc": np.trapezoid(dele, frac, axis=1), "insertion_auc": np.trapezoid(ins, frac, axis=1)}


def road_scores(model: nn.Module, images: Any, maps: np.ndarray, target_class: int = 1, *,
                percentiles: Sequence[int] = (10, 30, 50, 70, 90), normalization=None,
                seed: int = 0) -> dict[str, np.ndarray]:
    """ROAD (``pytorch_grad_cam.metrics.road``) with noisy linear imputation, on softmax probabilities.

    Returns per image (B,) arrays: ``road_morf`` (change in probability when the most relevant
    pixels are imputed, averaged over ``percentiles``; more negative = more faithful),
    ``road_lerf`` (least relevant first; near 0 = faithful) and ``road_combined`` =
    (lerf - morf) / 2 (higher = more faithful). The imputer's noise comes from torch's global RNG,
    forked and seeded with ``seed`` here so results are reproducible.
    """
    x = _as_images(images)
    maps = np.asarray(maps, dtype=np.float32)
    if maps.shape != (x.shape[0],) + tuple(x.shape[2:]):
        raise SaliencyError(f"maps: shape {maps.shape} does not match images {tuple(x.shape)}")
    device = _device(model)
    norm = _normalizer(normalization, device)
    xb = x.to(device)
    if norm is not None:
        xb = (xb - norm[0]) / norm[1]
    targets = [ClassifierOutputSoftmaxTarget(int(target_class))] * len(xb)
    was = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # numpy 2 on torch tensors, inside the library
            torch.manual_seed(seed)
            morf = ROADMostRelevantFirstAverage(list(percentiles))(xb, maps, targets, model)
            lerf = ROADLeastRelevantFirstAverage(list(percentiles))(xb, maps, targets, model)
    finally:
        model.train(was)
    morf, lerf = np.asarray(morf, np.float64).reshape(-1), np.asarray(lerf, np.float64).reshape(-1)
    return {"road_morf": morf, "road_lerf": lerf, "road_combined": (lerf - morf) / 2}


def faithfulness_summary(faith: pd.DataFrame) -> pd.DataFrame:
    """Mean (and standard error) of the faithfulness scores per run and method."""
    if faith.empty:
        return faith
    cols = [c for c in ("deletion_auc", "insertion_auc", "road_morf", "road_lerf", "road_combined") if c in faith]
    g = faith.groupby(["task", "model", "fraction", "method", "run"], sort=False)[cols]
    mean, sem = g.mean(), g.sem()
    out = mean.join(sem.add_suffix("_se")).reset_index()
    out.insert(5, "n_records", g.size().to_numpy())
    return out
