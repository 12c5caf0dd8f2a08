"""Attribution of saliency maps to leads and ECG segments (P, QRS, ST-T, other), with the R-peak detector
that places the segments, and the share expected from area alone.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from heartbeit_lib import render, signals
from heartbeit_lib.analysis.saliency.errors import SaliencyError

SEGMENTS: tuple[str, ...] = ("P", "QRS", "ST-T", "other")
#: segment windows relative to each R peak, milliseconds [start, end)
SEGMENT_WINDOWS_MS: dict[str, tuple[float, float]] = {"P": (-250.0, -80.0), "QRS": (-80.0, 80.0),
                                                      "ST-T": (80.0, 450.0)}
#: overlapping windows of neighbouring beats: later entries win
SEGMENT_PRIORITY: tuple[str, ...] = ("ST-T", "P", "QRS")
FS = 500.0   # Hz of the stored signals


def detect_r_peaks(x: np.ndarray, fs: float = FS, lead: int = 1, refine_ms: float = 40.0) -> list[np.ndarray]:
    """R-peak sample indices of each ECG: the library's QRS detector, then the R wave located on one lead.

    1. QRS centres from :func:`heartbeit_lib.signals.detect_qrs` (all leads);
    2. each moved to the largest deviation of lead ``lead`` (1 = II in the stored order I, II, V1-V6)
       from its local baseline (median over +-200 ms) within +-``refine_ms`` (the R, or the S/QS wave
       of a negative complex); a peak that lands on the first or last sample (a complex cut by the
       record's edge) is dropped.

    Parameters
    ----------
    x : (N, 8, T) or (8, T) microvolts at ``fs`` Hz (the preprocessed signal).

    Returns
    -------
    list of N sorted int64 arrays.
    """
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or not 0 <= lead < arr.shape[1]:
        raise SaliencyError(f"x: expected (N, leads, T) microvolts with lead {lead}, got shape {np.shape(x)}")
    half = max(int(round(refine_ms / 1000.0 * fs)), 1)
    base = max(int(round(0.2 * fs)), half + 1)  # local baseline: median over +-200 ms
    out = []
    for rec in arr:
        raw = rec[lead]
        refined = []
        for p in signals.detect_qrs(rec, fs):
            lo, hi = max(p - half, 0), min(p + half + 1, raw.size)
            ref = np.median(raw[max(p - base, 0):min(p + base + 1, raw.size)])
            r = int(lo + np.argmax(np.abs(raw[lo:hi] - ref)))
            if 0 < r < raw.size - 1:  # a complex cut by the record's edge has no peak inside it
                refined.append(r)
        out.append(np.unique(np.asarray(refined, np.int64)))
    return out


def segment_codes(r_peaks: np.ndarray, n_samples: int, fs: float = FS,
                  windows: Mapping[str, tuple[float, float]] = SEGMENT_WINDOWS_MS) -> np.ndarray:
    """(n_samples,) int8 segment index into :data:`SEGMENTS` for one record.

    Sample t is in segment s when ``start_ms <= (t - r) / fs * 1000 < end_ms`` for some R peak r;
    overlaps resolve by :data:`SEGMENT_PRIORITY` (QRS over P over ST-T); ``other`` elsewhere.
    """
    unknown = set(windows) - set(SEGMENTS[:-1])
    if unknown:
        raise SaliencyError(f"windows: unknown segment(s) {sorted(unknown)}; use {list(SEGMENTS[:-1])}")
    n = int(n_samples)
    codes = np.full(n, SEGMENTS.index("other"), np.int8)
    for seg in SEGMENT_PRIORITY:
        if seg not in windows:
            continue
        lo_ms, hi_ms = windows[seg]
        for r in np.asarray(r_peaks, np.int64):
            lo = int(math.ceil(r + lo_ms / 1000.0 * fs - 1e-9))
            hi = int(math.ceil(r + hi_ms / 1000.0 * fs - 1e-9))
            codes[max(lo, 0):max(min(hi, n), 0)] = SEGMENTS.index(seg)
    return codes


def _layout_regions(layout: str, size: tuple[int, int], n_samples: int) -> tuple[list[str], list[dict]]:
    """Lead names (first-appearance order) and panels (lead index, y0, y1, x0, x1, t0, t1) that tile
    the image; raises when the layout leaves pixels unassigned."""
    geo = render.layout_geometry(layout, size, n_samples)
    bands = geo["bands"]
    leads: list[str] = []
    panels = []
    covered = np.zeros(size, bool)
    for p in geo["panels"]:
        if p["lead"] not in leads:
            leads.append(p["lead"])
        y0, y1 = bands[p["band"]]
        panels.append(dict(lead=leads.index(p["lead"]), y0=y0, y1=y1, x0=p["x0"], x1=p["x1"], t0=p["t0"], t1=p["t1"]))
        if covered[y0:y1, p["x0"]:p["x1"]].any():
            raise SaliencyError(f"layout {layout!r}: panels overlap; cannot attribute pixels to one lead")
        covered[y0:y1, p["x0"]:p["x1"]] = True
    if not covered.all():
        raise SaliencyError(f"layout {layout!r}: {int((~covered).sum())} pixels belong to no lead panel")
    return leads, panels


def _column_segment_fractions(codes: np.ndarray, x0: int, x1: int, t0: int, t1: int) -> np.ndarray:
    """(n_segments, x1 - x0): fraction of the samples drawn in each pixel column per segment.

    Geometry of ``render``: sample t at x = x0 + (t - t0 + 0.5) * (x1 - x0) / (t1 - t0), so column
    [j, j+1) holds the samples with t in [(j - x0) * k + t0 - 0.5, (j + 1 - x0) * k + t0 - 0.5),
    k = (t1 - t0) / (x1 - x0); a column holding none takes its nearest sample.
    """
    k = (t1 - t0) / (x1 - x0)
    j = np.arange(x1 - x0)
    lo = np.clip(np.ceil(j * k + t0 - 0.5 - 1e-9).astype(np.int64), t0, t1)
    hi = np.clip(np.ceil((j + 1) * k + t0 - 0.5 - 1e-9).astype(np.int64), t0, t1)
    nearest = np.clip(np.floor((j + 0.5) * k + t0 - 0.5 + 0.5).astype(np.int64), t0, t1 - 1)
    empty = hi <= lo
    lo = np.where(empty, nearest, lo)
    hi = np.where(empty, nearest + 1, hi)
    onehot = np.zeros((len(SEGMENTS), codes.size + 1))
    onehot[codes, np.arange(codes.size) + 1] = 1.0
    cum = np.cumsum(onehot, axis=1)                                   # (S, T + 1)
    return (cum[:, hi] - cum[:, lo]) / (hi - lo)


def attribute_maps(maps: np.ndarray, signals: np.ndarray, layout: str = "stack8", fs: float = FS,
                   windows: Mapping[str, tuple[float, float]] = SEGMENT_WINDOWS_MS,
                   r_peaks: Sequence[np.ndarray] | None = None) -> tuple[np.ndarray, list[str]]:
    """Share of each map's saliency mass per lead and ECG segment.

    Parameters
    ----------
    maps : (B, H, W) non-negative saliency, aligned with the images rendered from ``signals``.
    signals : (B, 8, T) microvolts at ``fs`` Hz, the preprocessed ECGs the images were drawn from.
    layout : the render layout of the images.
    r_peaks : R-peak samples per record (default :func:`detect_r_peaks` on ``signals``).

    Returns
    -------
    shares : (B, n_leads, 4) float64, axis 2 in :data:`SEGMENTS` order; each map's shares sum to 1
        (NaN for an all-zero map).
    leads : the lead names of axis 1 (stack8: I, II, V1..V6).
    """
    maps = np.asarray(maps, dtype=np.float64)
    sig = np.asarray(signals)
    if maps.ndim != 3 or sig.ndim != 3 or maps.shape[0] != sig.shape[0]:
        raise SaliencyError(f"maps {maps.shape} and signals {sig.shape}: expected (B, H, W) and (B, 8, T) with equal B")
    if (maps < 0).any() or not np.isfinite(maps).all():
        raise SaliencyError("maps: saliency must be finite and non-negative")
    b, h, w = maps.shape
    leads, panels = _layout_regions(layout, (h, w), sig.shape[2])
    if r_peaks is None:
        r_peaks = detect_r_peaks(sig, fs)
    if len(r_peaks) != b:
        raise SaliencyError(f"r_peaks: {len(r_peaks)} records for {b} maps")
    out = np.zeros((b, len(leads), len(SEGMENTS)))
    for i in range(b):
        codes = segment_codes(r_peaks[i], sig.shape[2], fs, windows)
        for p in panels:
            cols = maps[i, p["y0"]:p["y1"], p["x0"]:p["x1"]].sum(0)      # (x1 - x0,)
            out[i, p["lead"]] += _column_segment_fractions(codes, p["x0"], p["x1"], p["t0"], p["t1"]) @ cols
    total = maps.reshape(b, -1).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return out / np.where(total > 0, total, np.nan)[:, None, None], leads


def area_shares(signals: np.ndarray, size: int | tuple[int, int], layout: str = "stack8", fs: float = FS,
                windows: Mapping[str, tuple[float, float]] = SEGMENT_WINDOWS_MS,
                r_peaks: Sequence[np.ndarray] | None = None) -> tuple[np.ndarray, list[str]]:
    """:func:`attribute_maps` of a uniform map: the shares expected from area alone, (B, leads, 4)."""
    h, w = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    sig = np.asarray(signals)
    return attribute_maps(np.ones((sig.shape[0], h, w)), sig, layout, fs, windows, r_peaks)


def attribute_signal_maps(maps: np.ndarray, signals: np.ndarray, fs: float = FS,
                          windows: Mapping[str, tuple[float, float]] = SEGMENT_WINDOWS_MS,
                          r_peaks: Sequence[np.ndarray] | None = None) -> tuple[np.ndarray, list[str]]:
    """:func:`attribute_maps` for lead x time maps of the signal models: the same shares, read directly.

    Parameters
    ----------
    maps : (B, 8, T) non-negative saliency on the store's samples (``signal_maps.to_store_rate``), leads in the
        store's order (``render.LEADS``: I, II, V1..V6).
    signals : (B, 8, T) microvolts at ``fs`` Hz (the R peaks and segments come from them).

    Returns
    -------
    shares : (B, 8, 4) float64 per lead x :data:`SEGMENTS`, summing to 1 per map (NaN for an all-zero map).
    leads : ``render.LEADS``.
    """
    maps = np.asarray(maps, dtype=np.float64)
    sig = np.asarray(signals)
    if maps.shape != sig.shape or maps.ndim != 3 or maps.shape[1] != len(render.LEADS):
        raise SaliencyError(f"maps {maps.shape} and signals {sig.shape}: expected equal (B, 8, T)")
    if (maps < 0).any() or not np.isfinite(maps).all():
        raise SaliencyError("maps: saliency must be finite and non-negative")
    if r_peaks is None:
        r_peaks = detect_r_peaks(sig, fs)
    out = np.zeros(maps.shape[:2] + (len(SEGMENTS),))
    for i in range(len(maps)):
        onehot = np.eye(len(SEGMENTS))[segment_codes(r_peaks[i], sig.shape[2], fs, windows)]   # (T, 4)
        out[i] = maps[i] @ onehot
    total = maps.reshape(len(maps), -1).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return out / np.where(total > 0, total, np.nan)[:, None, None], list(render.LEADS)


def attribution_frame(info: Mapping, method: str, rec: pd.DataFrame, shares: np.ndarray, area: np.ndarray,
                      leads: Sequence[str]) -> pd.DataFrame:
    """Long table of one run x method: one row per record x lead x segment with ``share`` (from
    :func:`attribute_maps`, (n, leads, 4)) and ``area_share`` (from :func:`area_shares`); ``info`` names the run
    (``run_dir, task, model, fraction``), ``rec`` the records (``record_id, label``)."""
    n, nl, ns = shares.shape
    return pd.DataFrame({
        "run": Path(info["run_dir"]).name, "task": info["task"], "model": info["model"],
        "fraction": float(info["fraction"]), "method": method,
        "record_id": np.repeat(rec["record_id"].to_numpy(), nl * ns),
        "label": np.repeat(rec["label"].to_numpy(), nl * ns),
        "lead": np.tile(np.repeat(leads, ns), n), "segment": np.tile(SEGMENTS, n * nl),
        "share": shares.reshape(-1), "area_share": area.reshape(-1)})


def attribution_summary(attribution: pd.DataFrame, by: str = "lead") -> pd.DataFrame:
    """Mean share per ``by`` (``lead``, ``segment`` or ``lead_segment``) over records, one row per run x
    method, with ``enrichment`` = share / share expected from area (in a long table with columns
    ``task, model, fraction, method, run, <by>, share, area_share, n_records, enrichment``). Maps that
    are all zero (Grad-CAM when every weighted activation is negative) have no shares and are left
    out; ``n_records`` counts the maps averaged."""
    if by not in ("lead", "segment", "lead_segment"):
        raise SaliencyError(f"by={by!r}: choose lead, segment or lead_segment")
    keys = ["lead", "segment"] if by == "lead_segment" else [by]
    per_rec = attribution.groupby(["run", "task", "model", "fraction", "method", "record_id"] + keys,
                                  sort=False)[["share", "area_share"]].sum(min_count=1).reset_index()
    # an all-zero map (NaN shares) is left out of the mean; n_records counts the maps that entered it
    out = per_rec.groupby(["task", "model", "fraction", "method", "run"] + keys, sort=False).agg(
        share=("share", "mean"), area_share=("area_share", "mean"), n_records=("share", "count")).reset_index()
    out["enrichment"] = out["share"] / out["area_share"]
    return out
