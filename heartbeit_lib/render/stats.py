"""Amplitude range and image statistics of rendered ECGs: the clipped share and the normaliser."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from heartbeit_lib.render.geometry import DEFAULT_YLIM_MV, RenderError, _make_style
from heartbeit_lib.render.numpy_renderer import render_ecg
from heartbeit_lib.render.datasets import _read_signals


def clip_fractions(x: Any, ylim_mv: Sequence[float] | None = None) -> dict[str, float]:
    """Share of leads and of ECGs with a sample outside the amplitude range (drawn clipped).

    x : (N, 8, T) float, microvolts (a cohort store's signals). ylim_mv : (lo, hi) mV; None =
    :data:`DEFAULT_YLIM_MV`. Returns ``{"ylim_mv": [lo, hi], "clipped_lead_fraction",
    "clipped_ecg_fraction"}`` (fractions in [0, 1]; a lead clips iff max > hi or min < lo).
    """
    lo, hi = _make_style({"ylim_mv": DEFAULT_YLIM_MV if ylim_mv is None else ylim_mv}).ylim_mv
    sig = np.asarray(x, dtype=np.float32)
    if sig.ndim != 3:
        raise RenderError(f"clip_fractions: x must be (N, leads, T) microvolts, got shape {sig.shape}")
    clipped = (sig.max(-1) > hi * 1000.0) | (sig.min(-1) < lo * 1000.0)      # (N, leads)
    return {"ylim_mv": [lo, hi], "clipped_lead_fraction": float(clipped.mean()) if clipped.size else 0.0,
            "clipped_ecg_fraction": float(clipped.any(1).mean()) if len(clipped) else 0.0}


def image_stats(store, rows, size: int | Sequence[int] = 224, layout: str = "stack8", *, n: int = 256,
                seed: int = 0, **style) -> dict[str, list[float]]:
    """Mean and std of the [0, 1] grey images of a fixed sample of store rows, as a normaliser.

    Transformers from scratch (and HeartBEiT) cannot learn from inputs normalised with mean = std = 0.5:
    the white background (89-94 % of pixels) becomes a constant +1, so every patch embedding is nearly the
    same vector (issue 18: scratch ViT train loss 0.650 = prevalence loss; with these statistics 0.348).
    The statistics depend on (layout, size, ylim_mv): at +-4 mV about 0.907 / 0.226 at 112 px and
    0.952 / 0.174 at 224 px on PTB-XL. Deterministic: ``min(n, len(rows))`` rows drawn with
    ``numpy.random.default_rng(seed)`` (sorted). Returns ``{"mean": [m], "std": [s]}`` (one grey channel;
    :class:`RenderedECGDataset` broadcasts it to 3).
    """
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if rows.size == 0:
        raise RenderError("image_stats: no rows to compute image statistics from")
    pick = np.sort(np.random.default_rng(seed).choice(rows, min(int(n), rows.size), replace=False))
    total = total_sq = 0.0
    count = 0
    for k in range(0, pick.size, 64):
        img = render_ecg(_read_signals(store, pick[k:k + 64]), size, layout, **style).astype(np.float64) / 255.0
        total, total_sq, count = total + img.sum(), total_sq + np.square(img).sum(), count + img.size
    mean = total / count
    std = math.sqrt(max(total_sq / count - mean * mean, 1e-12))
    return {"mean": [round(mean, 6)], "std": [round(std, 6)]}
