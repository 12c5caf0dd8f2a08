"""ECG images: the 8 stored leads drawn as a greyscale picture, fast enough to render on the fly.

HeartBEiT plots each preprocessed ECG (leads I, II, V1-V6, 2,500 samples = 5 s at 500 Hz) with
matplotlib and resizes the plot to 224x224 (PAPER.md, "Preprocessing" and "Images"). This module
has three renderers with one geometry:

- :func:`render_ecg_reference` - the paper's approach, with matplotlib: one axes per lead on an
  Agg canvas ``ref_scale`` (4) times larger than the output (black trace on white, no axes, no
  grid, fixed amplitude range, clipping), then resized to the output size with PIL's
  ``Image.resize`` and its default filter (bicubic, antialiased when downscaling): the paper
  plots, then resizes to 224 with PIL (PAPER.md lists PIL; the filter is not stated, so
  ``resample="bilinear"``, ``torchvision.transforms.Resize``'s choice, is available and measured
  by the benchmark too). Tens of milliseconds per ECG.
- :func:`render_ecg` - numpy, vectorised over a batch, a few hundred times faster than a figure
  per ECG (``benchmarks/bench_render.py``): antialiased line segments between consecutive samples
  by per-column min/max envelopes (see *Algorithm*).
- :func:`render_ecg_torch` - the same algorithm in torch (CPU or GPU tensors); on the same input
  it gives the numpy renderer's pixels (the same float32 operations, then integer arithmetic;
  tested to within 1 grey level). Deterministic on every device: no atomics.

All three are pure functions of the signal and the parameters (no files, no global state apart
from a cache of layout geometry). Output: ``uint8`` (H, W), or (N, H, W) for a batch, 255 = white.

Geometry (shared by all renderers)
----------------------------------
Pixel (row i, column j) covers ``[j, j+1) x [i, i+1)`` in continuous image coordinates, y downwards.
A layout cuts the image into horizontal *bands* with integer edges ``round(k * H / n_bands)`` and
each band into *panels*; a panel shows samples ``t0 <= t < t1`` of one lead in columns
``[x0, x1)``, sample ``t`` at ``x = x0 + (t - t0 + 0.5) * (x1 - x0) / (t1 - t0)`` (the matplotlib
axes has ``xlim = (t0 - 0.5, t1 - 0.5)``). A band ``[y0, y1)`` shows the amplitude range ``ylim_mv
= (lo, hi)``: value ``v`` mV lands at ``y = y0 + (hi - v) / (hi - lo) * (y1 - y0)``, so
``mv_per_px = (hi - lo) / (y1 - y0)``. With ``clip=True`` (default) values outside the range are
drawn at the limit and the stroke is cut at the band edge (matplotlib's axes clipping), so a lead
never draws into its neighbour's band. ``linewidth`` is in output pixels.

Layouts
-------
``stack8`` (default, the paper's): 8 bands of H/8 rows, top to bottom I, II, V1, ..., V6, each the
full record across the full width; default range :data:`DEFAULT_YLIM_MV` = -4..+4 mV (28 px rows at
224: 0.286 mV/px; 112 px: 0.571 mV/px). Inside the range the trace row is linear in mV; beyond it the
trace is clipped at the band edge (soft compression was tried and was not better, see below).
Clipping measured on the shared PTB-XL subset (840 records, 8 leads after band-pass + median; a lead
clips when any sample lies outside the range; checked against rendered pixels; issue 18):

==========  ======  ======  ============  =====  =====
range       leads   ECGs    LVH ECGs (96)  V2     V3
==========  ======  ======  ============  =====  =====
+-2 mV      11.8 %  41.7 %  86.5 %        25.1 %  22.0 %
+-3 mV       2.8 %  12.6 %  45.8 %         6.9 %   7.3 %
+-4 mV       0.8 %   4.6 %  17.7 %         2.5 %   2.4 %
+-5 mV       0.3 %   1.4 %   3.1 %
==========  ======  ======  ============  =====  =====

The paper's +-2 mV (the default before issue 18) clips 42 % of ECGs and 87 % of LVH records. A cheap
check (scratch ViT, 112 px, one seed, validation AUROC, 89 validation ECGs) found no measurable cost of
the wider range: mi 0.747 / 0.733 / 0.735 at +-2 / +-3 / +-4 mV (soft compression 0.746), so +-4 mV,
which clips 4.6 % of ECGs, is the default; pass ``ylim_mv=(-2, 2)`` for the paper's images.
``grid4x2``: 4 rows x 2 columns, left column I, II, V1, V2, right column V3..V6, each the full
record in half the width; default :data:`DEFAULT_YLIM_MV` per (H/4)-row band.
``clinical3x4``: the printed 12-lead format (ECG-Image-Kit, PhysioNet Challenge 2024): 3 rows x 4
columns (I aVR V1 V4 / II aVL V2 V5 / III aVF V3 V6), each column a quarter of the record
(1.25 s of our 5 s), plus a rhythm strip of lead II over the full record, on an ECG-paper grid at
25 mm/s and 10 mm/mV (the image width is the record's length at 25 mm/s: 125 mm for 5 s, 1.79 px/mm
at 224; major lines every 5 mm, minor 1-mm lines only where they are >= 4 px apart). Only 8 leads
are stored, so III, aVR, aVL and aVF are derived from I and II by Einthoven/Goldberger:
``III = II - I``, ``aVR = -(I + II)/2``, ``aVL = I - II/2``, ``aVF = II - I/2``. The grid is grey
(greyscale output) and the same array under both renderers' traces; no lead labels are printed.

Algorithm of the fast renderers
-------------------------------
Each output column is split into ``oversample`` (s, default 2) sub-columns. For a sub-column
centred at ``c`` the trace covers the vertical span ``[min y - r, max y + r]``, min/max over the
polyline for ``x`` in ``[c - r, c + r]``, ``r = linewidth / 2``: a square brush (exact for
horizontal and vertical strokes, up to 40% thicker across 45-degree strokes). The polyline's
extremes over a window are those of the samples inside it (two look-ups in a sparse table of
running min/max over 2^k samples) and of its linearly interpolated values at the two window ends.
A sub-column adds ``255 / s`` coverage units to the pixel rows strictly inside its span and its
exact fractional coverage (rounded to an integer) to the first and last rows: vertical
antialiasing exact, horizontal to 1/s px. Pixel = ``background * (255 - coverage) / 255``.
Cost: O(samples + pixels) with uint8 arithmetic for the pixels.

Dataset / export
----------------
:class:`RenderedECGDataset` renders from a :class:`heartbeit_lib.cohorts.CohortStore` on the fly
(batched: a ``DataLoader`` calls ``__getitems__`` with the whole batch, which reads the signals
in one call and renders them in one vectorised call; ``render_batch`` does the same directly).
:class:`RenderTransform` renders a batch of signal tensors on their device (a GPU training loop
feeds raw signals from :class:`ECGSignalDataset`). ``python -m heartbeit_lib.render export
<cohort_run> <out_dir> [--size --layout --split]`` writes PNG folders for users who want files.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from heartbeit_lib.safety import file_name_from, write_csv

# Leads of the stored 8-lead ECG, in the order of the signal's first axis and of the stack8 rows.
LEADS: tuple[str, ...] = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
LAYOUTS: tuple[str, ...] = ("stack8", "grid4x2", "clinical3x4")
RESAMPLE_FILTERS: tuple[str, ...] = ("bilinear", "bicubic", "box", "lanczos", "nearest")
#: Version of the pixels the renderers produce: part of the token cache key
#: (``tokenizers.token_cache_key``); bump it when a change alters the rendered images.
RENDER_VERSION = "1"

DEFAULT_YLIM_MV: tuple[float, float] = (-4.0, 4.0)  # stack8/grid4x2 band range in mV (module docs: clipping table)
_PAPER_MM_PER_S = 25.0  # ECG paper: 25 mm/s, 10 mm/mV
_PAPER_MM_PER_MV = 10.0
_GRID_MAJOR_GREY = 200.0  # grey level of 5-mm lines on the clinical layout's paper
_GRID_MINOR_GREY = 235.0  # grey level of 1-mm lines


class RenderError(ValueError):
    """An ECG or a rendering parameter that cannot be rendered (names the parameter and why)."""


# ----------------------------------------------------------------------------- style


@dataclasses.dataclass(frozen=True)
class RenderStyle:
    """Style keyword arguments of every renderer (``**style``); each renderer ignores the others' own.

    Attributes
    ----------
    ylim_mv : (lo, hi) amplitude range of each band in mV (bottom, top); None = layout default
        (:data:`DEFAULT_YLIM_MV`, -4..+4 mV, for stack8/grid4x2; 10 mm/mV for clinical3x4).
    mv_per_px : alternative to ``ylim_mv``: mV per output pixel, range symmetric about 0.
    linewidth : trace width in output pixels (at the final size).
    clip : clip values to ``ylim_mv`` and cut strokes at the band edges; False lets large waves
        overlap the neighbouring bands (still cut at the image edge).
    fs : sampling rate in Hz, used only for the clinical paper grid (25 mm/s).
    grid : draw the ECG-paper grid; None = only for clinical3x4.
    oversample : fast renderers: sub-columns per pixel column (horizontal antialiasing 1/oversample px).
    ref_scale : reference renderer: the Agg canvas is ``ref_scale`` x the output size, then resized.
    resample : reference renderer: PIL filter of that resize (one of :data:`RESAMPLE_FILTERS`;
        default bicubic, PIL's default).
    """

    ylim_mv: tuple[float, float] | None = None
    mv_per_px: float | None = None
    linewidth: float = 1.0
    clip: bool = True
    fs: float = 500.0
    grid: bool | None = None
    oversample: int = 2
    ref_scale: int = 4
    resample: str = "bicubic"

    def __post_init__(self) -> None:
        if self.ylim_mv is not None:
            try:
                lo, hi = (float(v) for v in self.ylim_mv)
            except (TypeError, ValueError) as e:
                raise RenderError(f"style ylim_mv={self.ylim_mv!r}: expected two numbers (lo, hi) in mV") from e
            if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
                raise RenderError(f"style ylim_mv={self.ylim_mv!r}: need finite lo < hi")
            object.__setattr__(self, "ylim_mv", (lo, hi))
        if self.ylim_mv is not None and self.mv_per_px is not None:
            raise RenderError("style: give ylim_mv or mv_per_px, not both")
        if self.mv_per_px is not None and not (float(self.mv_per_px) > 0 and math.isfinite(self.mv_per_px)):
            raise RenderError(f"style mv_per_px={self.mv_per_px!r}: must be a positive number")
        if not (float(self.linewidth) > 0 and math.isfinite(self.linewidth)):
            raise RenderError(f"style linewidth={self.linewidth!r}: must be a positive number of pixels")
        if not float(self.fs) > 0:
            raise RenderError(f"style fs={self.fs!r}: must be a positive sampling rate in Hz")
        for name in ("oversample", "ref_scale"):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v or not 1 <= int(v) <= 16:
                raise RenderError(f"style {name}={v!r}: must be an integer in 1..16")
            object.__setattr__(self, name, int(v))
        if self.resample not in RESAMPLE_FILTERS:
            raise RenderError(f"style resample={self.resample!r}: must be one of {list(RESAMPLE_FILTERS)}")
        object.__setattr__(self, "clip", bool(self.clip))
        object.__setattr__(self, "linewidth", float(self.linewidth))
        object.__setattr__(self, "fs", float(self.fs))


_STYLE_FIELDS = tuple(f.name for f in dataclasses.fields(RenderStyle))


def _make_style(style: Mapping[str, Any]) -> RenderStyle:
    unknown = sorted(set(style) - set(_STYLE_FIELDS))
    if unknown:
        raise RenderError(f"unknown style keyword(s) {unknown}; valid: {list(_STYLE_FIELDS)}")
    return RenderStyle(**style)


def _image_size(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        h = w = int(size)
    else:
        try:
            h, w = (int(v) for v in size)  # type: ignore[union-attr]
        except (TypeError, ValueError) as e:
            raise RenderError(f"size={size!r}: expected an int or (height, width)") from e
    if h < 16 or w < 16 or h > 8192 or w > 8192:
        raise RenderError(f"size={size!r}: height and width must be in 16..8192 pixels")
    return h, w


# ----------------------------------------------------------------------------- layouts

_TWELVE: tuple[str, ...] = ("I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6")
# source signal = x[la] * ca + x[lb] * cb on the stored leads (Einthoven / Goldberger for the limb leads);
# written as two products so that numpy and torch compute bit-identical float32 values
_SOURCES: dict[str, tuple[int, float, int, float]] = {
    "I": (0, 1.0, 0, 0.0), "II": (1, 1.0, 1, 0.0), "III": (1, 1.0, 0, -1.0),
    "AVR": (0, -0.5, 1, -0.5), "AVL": (0, 1.0, 1, -0.5), "AVF": (1, 1.0, 0, -0.5),
    **{f"V{k}": (1 + k, 1.0, 1 + k, 0.0) for k in range(1, 7)},
}
_CLINICAL_ROWS = (("I", "AVR", "V1", "V4"), ("II", "AVL", "V2", "V5"), ("III", "AVF", "V3", "V6"))


def _ro(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


@dataclasses.dataclass(frozen=True, eq=False)  # identity hash: cached, holds arrays
class _Group:
    """Panels sharing their columns and samples (vectorised together); (G, 1) arrays per panel."""

    x0: int
    x1: int
    t0: int
    t1: int
    sources: np.ndarray   # (G,) source signal of each panel
    identity: bool        # panels = all source signals in order over all samples (the group reads them as is)
    bands: np.ndarray     # (G,) band of each panel
    ppu: np.ndarray       # (G, 1) float32 pixels per microvolt
    c_a: np.ndarray       # (G, 1) float32: span top a = clip(c_a - max * ppu, 0, lim_a)  (block rows)
    lim_a: np.ndarray
    c_b: np.ndarray       # (G, 1) float32: span bottom b = clip(c_b - min * ppu, lo_b, lim_b)
    lo_b: np.ndarray
    lim_b: np.ndarray
    level: int            # sparse-table level of every window, or -1 when they differ
    n_levels: int         # levels to build (max level + 1)
    # windows, one per sub-column, ordered sub-column-major (j * Wp + x) so each sub-column j is contiguous
    ia: np.ndarray        # (nsub,) index of the first range-min query (flat over levels if level == -1)
    ib: np.ndarray        # (nsub,) index of the second query
    empty: np.ndarray | None  # (nsub,) bool: window holds no sample (only its end values count)
    s_i0: np.ndarray      # (nsub,) window start: polyline = v[s_i0] * s_w0 + v[s_i0 + 1] * s_w1
    s_w0: np.ndarray
    s_w1: np.ndarray
    e_i0: np.ndarray      # window end, likewise
    e_w0: np.ndarray
    e_w1: np.ndarray


class _Panel(NamedTuple):
    """One lead drawn in one band: samples ``t0 <= t < t1`` of source signal ``source`` in pixel
    columns ``x0 <= x < x1`` of band ``band``."""

    source: int
    band: int
    x0: int
    x1: int
    t0: int
    t1: int

    @property
    def window(self) -> tuple[int, int, int, int]:
        """``(x0, x1, t0, t1)``: panels with the same window are rendered as one group."""
        return self.x0, self.x1, self.t0, self.t1


@dataclasses.dataclass(frozen=True, eq=False)  # identity hash (key of the torch constants cache)
class _Layout:
    name: str
    height: int
    width: int
    n_samples: int
    sources: tuple[str, ...]        # names of the source signals the panels index
    mix: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None  # (la, ca, lb, cb); None = x itself
    bands: tuple[tuple[int, int], ...]      # integer pixel rows [y0, y1) of each band
    ylims: tuple[tuple[float, float], ...]  # (lo, hi) mV per band
    panels: tuple[_Panel, ...]
    groups: tuple[_Group, ...]
    single_group: bool              # one group whose panels are the bands in order (stack8): no scatter
    background: np.ndarray | None   # (H, W) uint16 grey levels or None (white)
    oversample: int
    full: np.ndarray                # (s,) uint8 coverage units of a fully covered sub-column (sum 255)
    radius: float                   # linewidth / 2 (px)
    clip: bool
    block_h: int                    # rows of a band block (max band height; H without clipping)
    row_index: np.ndarray | None    # (H,) rows of the stacked band blocks forming the image, None = reshape


def _window_geometry(x0: int, x1: int, t0: int, t1: int, s: int, r: float) -> dict:
    """Samples and end points of the x-window [c - r, c + r] of every sub-column centre c of a panel."""
    n, wp = t1 - t0, x1 - x0
    c = (np.arange(wp)[None, :] + (np.arange(s)[:, None] + 0.5) / s).reshape(-1)   # (s * Wp,) j-major
    us = (c - r) * n / wp - 0.5                          # fractional sample index of the window start
    ue = (c + r) * n / wp - 0.5
    lo = np.clip(np.ceil(us - 1e-7), 0, n - 1).astype(np.int64)   # samples strictly inside the window
    hi = np.clip(np.floor(ue + 1e-7), 0, n - 1).astype(np.int64)
    count = hi - lo + 1
    empty = count <= 0
    count = np.maximum(count, 1)
    lo = np.where(empty, 0, lo)
    level = np.floor(np.log2(count)).astype(np.int64)
    ib = np.where(empty, 0, hi - (1 << level) + 1)
    levels = np.unique(level[~empty]) if (~empty).any() else np.array([0])
    single = int(levels[0]) if levels.size == 1 else -1
    out = dict(level=single, n_levels=int(level.max()) + 1,
               ia=_ro(lo if single >= 0 else level * n + lo), ib=_ro(ib if single >= 0 else level * n + ib),
               empty=_ro(empty) if empty.any() else None)
    for key, u in (("s", us), ("e", ue)):
        uc = np.clip(u, 0.0, n - 1.0)
        i0 = np.minimum(np.floor(uc), n - 2).astype(np.int64)
        w1 = (uc - i0).astype(np.float32)
        out[f"{key}_i0"], out[f"{key}_w1"] = _ro(i0), _ro(w1)
        out[f"{key}_w0"] = _ro((np.float32(1.0) - w1).astype(np.float32))
    return out


def _paper_grid(h: int, w: int, px_per_mm: float) -> np.ndarray:
    """(H, W) uint16 grey background: 5-mm lines (and 1-mm lines when >= 4 px apart), 1 px wide."""
    def coverage(length: int, spacing: float) -> np.ndarray:
        pos = np.arange(0.0, length + spacing, spacing)                  # line centres (px)
        edges = np.arange(length, dtype=np.float64)
        lo = np.maximum(edges[:, None], pos[None, :] - 0.5)
        hi = np.minimum(edges[:, None] + 1.0, pos[None, :] + 0.5)
        return np.clip(hi - lo, 0.0, 1.0).max(axis=1)                   # (length,)

    dark = np.zeros((h, w))
    for mm, grey in ((1.0, _GRID_MINOR_GREY), (5.0, _GRID_MAJOR_GREY)):
        spacing = mm * px_per_mm
        if spacing < 4.0:
            continue
        cov = np.maximum(coverage(h, spacing)[:, None], coverage(w, spacing)[None, :])
        dark = np.maximum(dark, (255.0 - grey) * cov)
    return _ro(np.rint(255.0 - dark).astype(np.uint16))


def _layout_panels(name: str, w: int, n: int) -> tuple[tuple[str, ...], int, tuple[_Panel, ...]]:
    """Source signal names, number of bands and the panels of layout ``name`` (width ``w`` px, ``n`` samples)."""
    if name == "stack8":
        return LEADS, 8, tuple(_Panel(k, k, 0, w, 0, n) for k in range(8))
    if name == "grid4x2":
        xm = int(round(w / 2))
        return LEADS, 4, tuple(_Panel(k, k % 4, 0 if k < 4 else xm, xm if k < 4 else w, 0, n) for k in range(8))
    # clinical3x4: 3 x 4 quarter-record panels + a rhythm strip of lead II
    xs = np.round(np.linspace(0, w, 5)).astype(int)
    ts = np.round(np.linspace(0, n, 5)).astype(int)
    panels = tuple(_Panel(_TWELVE.index(_CLINICAL_ROWS[r][c]), r, int(xs[c]), int(xs[c + 1]), int(ts[c]), int(ts[c + 1]))
                   for r in range(3) for c in range(4))
    return _TWELVE, 4, panels + (_Panel(_TWELVE.index("II"), 3, 0, w, 0, n),)


def _band_ylims(name: str, bands: tuple[tuple[int, int], ...], px_per_mm: float, style: RenderStyle
                ) -> tuple[tuple[float, float], ...]:
    """(lo, hi) mV of each band: ``ylim_mv``, else ``mv_per_px``, else 10 mm/mV paper scale (clinical3x4)
    or :data:`DEFAULT_YLIM_MV`."""
    if style.ylim_mv is not None:
        return tuple(style.ylim_mv for _ in bands)
    if style.mv_per_px is not None:
        return tuple((-style.mv_per_px * (y1 - y0) / 2, style.mv_per_px * (y1 - y0) / 2) for y0, y1 in bands)
    if name == "clinical3x4":  # 10 mm/mV at the 25 mm/s paper scale
        return tuple((-(y1 - y0) / px_per_mm / _PAPER_MM_PER_MV / 2, (y1 - y0) / px_per_mm / _PAPER_MM_PER_MV / 2)
                     for y0, y1 in bands)
    return tuple(DEFAULT_YLIM_MV for _ in bands)


def _layout_groups(panels: tuple[_Panel, ...], n_sources: int, bands: tuple[tuple[int, int], ...],
                   ylims: tuple[tuple[float, float], ...], h: int, n: int, style: RenderStyle) -> tuple[_Group, ...]:
    """One :class:`_Group` per panel window, with the per-band pixel constants of its panels."""
    s, r = style.oversample, style.linewidth / 2.0
    heights = [y1 - y0 for y0, y1 in bands]
    groups: dict[tuple[int, int, int, int], list[_Panel]] = {}
    for p in panels:
        groups.setdefault(p.window, []).append(p)
    built = []
    for (x0, x1, t0, t1), ps in groups.items():
        def col(vals):
            return _ro(np.asarray(vals, dtype=np.float32).reshape(-1, 1))
        bk = [p.band for p in ps]
        hk_ = [heights[k] for k in bk]
        # value v (uV) -> band-local row (hi - v) * ppu; clip=True: rows clipped to the band, then the brush
        # (+-r) clipped to the band block; clip=False: rows in the full image (offset = band top)
        ppu = [float(np.float32(hk / ((ylims[k][1] - ylims[k][0]) * 1000.0))) for k, hk in zip(bk, hk_)]
        hi_px = [ylims[k][1] * 1000.0 * pp for k, pp in zip(bk, ppu)]
        offset = [0.0 if style.clip else float(bands[k][0]) for k in bk]
        limit = [float(hk) if style.clip else float(h) for hk in hk_]
        built.append(_Group(
            x0=x0, x1=x1, t0=t0, t1=t1,
            sources=_ro(np.asarray([p.source for p in ps], dtype=np.int64)), bands=_ro(np.asarray(bk, dtype=np.int64)),
            identity=t0 == 0 and t1 == n and [p.source for p in ps] == list(range(n_sources)),
            ppu=col(ppu), c_a=col([hp - r + off for hp, off in zip(hi_px, offset)]),
            lim_a=col([hk - r if style.clip else lim for hk, lim in zip(hk_, limit)]),
            c_b=col([hp + r + off for hp, off in zip(hi_px, offset)]),
            lo_b=col([r if style.clip else 0.0] * len(bk)),
            lim_b=col(limit),
            **_window_geometry(x0, x1, t0, t1, s, r)))
    return tuple(built)


@functools.lru_cache(maxsize=64)
def _get_layout(name: str, h: int, w: int, n: int, style: RenderStyle) -> _Layout:
    """The geometry and precomputed constants of layout ``name`` at ``(h, w)`` px for ``n`` samples."""
    if name not in LAYOUTS:
        raise RenderError(f"layout={name!r}: must be one of {list(LAYOUTS)}")
    px_per_mm = w / (n / style.fs * _PAPER_MM_PER_S)
    sources, nb, panels = _layout_panels(name, w, n)
    edges = np.round(np.linspace(0, h, nb + 1)).astype(int)
    bands = tuple((int(edges[k]), int(edges[k + 1])) for k in range(nb))
    for p in panels:
        if p.x1 - p.x0 < 2 or p.t1 - p.t0 < 2:
            raise RenderError(f"layout {name!r} at size ({h}, {w}) with {n} samples leaves a panel of "
                              f"{p.x1 - p.x0} px / {p.t1 - p.t0} samples; use a larger size or a longer signal")
    if style.linewidth >= min(y1 - y0 for y0, y1 in bands):
        raise RenderError(f"style linewidth={style.linewidth}: must be thinner than a band "
                          f"({min(y1 - y0 for y0, y1 in bands)} px for layout {name!r} at height {h})")
    ylims = _band_ylims(name, bands, px_per_mm, style)
    built = _layout_groups(panels, len(sources), bands, ylims, h, n, style)

    s = style.oversample
    heights = [y1 - y0 for y0, y1 in bands]
    block_h = max(heights) if style.clip else h
    row_index = None
    if style.clip and len(set(heights)) > 1:
        row_index = _ro(np.concatenate([k * block_h + np.arange(hk) for k, hk in enumerate(heights)]))
    mix = None
    if sources is _TWELVE:
        la, ca, lb, cb = zip(*(_SOURCES[nm] for nm in sources))
        mix = (_ro(np.asarray(la, dtype=np.int64)), _ro(np.asarray(ca, dtype=np.float32)[:, None]),
               _ro(np.asarray(lb, dtype=np.int64)), _ro(np.asarray(cb, dtype=np.float32)[:, None]))
    full = _ro(np.asarray([255 // s + (j < 255 % s) for j in range(s)], dtype=np.uint8))
    grid = style.grid if style.grid is not None else name == "clinical3x4"
    background = _paper_grid(h, w, px_per_mm) if grid else None
    single_group = len(built) == 1 and built[0].bands.tolist() == list(range(nb))
    return _Layout(name, h, w, n, tuple(sources), mix, bands, ylims, panels, built, single_group, background,
                   s, full, style.linewidth / 2.0, style.clip, block_h, row_index)


def layout_geometry(layout: str = "stack8", size: int | Sequence[int] = 224, n_samples: int = 2500,
                    **style) -> dict:
    """Where each lead is drawn, for plots and tests.

    Returns
    -------
    dict with ``bands`` [(y0, y1)] integer pixel rows, ``ylim_mv`` [(lo, hi)] per band,
    ``mv_per_px`` per band, and ``panels`` [dict(lead, band, x0, x1, t0, t1)] (lead names include
    the derived limb leads of clinical3x4).
    """
    h, w = _image_size(size)
    lay = _get_layout(layout, h, w, int(n_samples), _make_style(style))
    return {
        "bands": list(lay.bands),
        "ylim_mv": list(lay.ylims),
        "mv_per_px": [(hi - lo) / (y1 - y0) for (lo, hi), (y0, y1) in zip(lay.ylims, lay.bands)],
        "panels": [dict(lead=lay.sources[p.source], band=p.band, x0=p.x0, x1=p.x1, t0=p.t0, t1=p.t1) for p in lay.panels],
    }


# ----------------------------------------------------------------------------- input checks


def _check_signal(x: Any, name: str = "x") -> tuple[np.ndarray, bool]:
    a = np.asarray(x)
    single = a.ndim == 2
    if single:
        a = a[None]
    if a.ndim != 3 or a.shape[1] != len(LEADS):
        raise RenderError(f"{name}: expected (8, T) or (N, 8, T) microvolts (leads {', '.join(LEADS)}), "
                          f"got shape {np.shape(x)}")
    if a.shape[2] < 8:
        raise RenderError(f"{name}: need at least 8 samples per lead, got {a.shape[2]}")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise RenderError(f"{name}: expected a numeric array, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.isfinite(a).all():
        raise RenderError(f"{name}: contains NaN or infinite values; fill or drop them before rendering")
    return a, single


def _finish(img: np.ndarray, single: bool, channels: int) -> np.ndarray:
    if channels == 3:
        img = np.repeat(img[..., None], 3, axis=-1)
    elif channels != 1:
        raise RenderError(f"channels={channels!r}: must be 1 (H, W) or 3 (H, W, 3)")
    return img[0] if single else img


# ----------------------------------------------------------------------------- numpy renderer

_CHUNK = 8  # ECGs per pass: keeps the working set (~2 MB) in cache


def _sparse_levels_np(v: np.ndarray, g: _Group) -> tuple[np.ndarray, np.ndarray]:
    """Sparse tables of running min / max over 2^level samples, (n, G, nt) or (n, G, n_levels * nt).

    Computed on the flattened array (contiguous, SIMD): entries near the end of a row mix in the
    next row, but a query at level j never reads the last 2^j - 1 entries of a row.
    """
    nt = v.shape[2]
    if g.n_levels == 1:
        return v, v
    flat = v.reshape(-1)
    size = flat.size
    if g.level >= 0:  # every window queries the same level: keep only that one
        lmin, lmax = flat, flat
        for j in range(g.n_levels - 1):
            d = 1 << j
            nmin, nmax = np.empty(size, np.float32), np.empty(size, np.float32)
            np.minimum(lmin[:-d], lmin[d:], out=nmin[:-d])
            np.maximum(lmax[:-d], lmax[d:], out=nmax[:-d])
            nmin[-d:], nmax[-d:] = lmin[-d:], lmax[-d:]
            lmin, lmax = nmin, nmax
        return lmin.reshape(v.shape), lmax.reshape(v.shape)
    smin = np.empty((g.n_levels, size), np.float32)                    # windows of different sizes: all levels
    smax = np.empty((g.n_levels, size), np.float32)
    smin[0], smax[0] = flat, flat
    for j in range(g.n_levels - 1):
        d = 1 << j
        np.minimum(smin[j, :-d], smin[j, d:], out=smin[j + 1, :-d])
        np.maximum(smax[j, :-d], smax[j, d:], out=smax[j + 1, :-d])
        smin[j + 1, -d:], smax[j + 1, -d:] = smin[j, -d:], smax[j, -d:]
    shape = (g.n_levels,) + v.shape
    return (np.moveaxis(smin.reshape(shape), 0, 2).reshape(v.shape[:2] + (-1,)),
            np.moveaxis(smax.reshape(shape), 0, 2).reshape(v.shape[:2] + (-1,)))


def _spans_np(src: np.ndarray, g: _Group) -> tuple[np.ndarray, np.ndarray]:
    """Vertical spans [a, b] (block rows) of every window of every panel of ``g``: (n, G, s * Wp) each."""
    v = src if g.identity else src[:, g.sources, g.t0:g.t1]           # (n, G, nt) microvolts; stack8: no copy
    lmin, lmax = _sparse_levels_np(v, g)
    es = v[..., g.s_i0] * g.s_w0 + v[..., g.s_i0 + 1] * g.s_w1       # polyline at the window ends
    ee = v[..., g.e_i0] * g.e_w0 + v[..., g.e_i0 + 1] * g.e_w1
    mn = np.minimum(es, ee)
    mx = np.maximum(es, ee)
    rmn = np.minimum(lmin[..., g.ia], lmin[..., g.ib])               # samples inside each window
    rmx = np.maximum(lmax[..., g.ia], lmax[..., g.ib])
    if g.empty is not None:
        rmn[..., g.empty] = mn[..., g.empty]
        rmx[..., g.empty] = mx[..., g.empty]
    np.minimum(mn, rmn, out=mn)
    np.maximum(mx, rmx, out=mx)
    a = np.minimum(np.maximum(g.c_a - mx * g.ppu, np.float32(0.0)), g.lim_a)   # larger value = higher row
    b = np.minimum(np.maximum(g.c_b - mn * g.ppu, g.lo_b), g.lim_b)
    return a, b


def _pixels_np(a: np.ndarray, b: np.ndarray, lay: _Layout) -> np.ndarray:
    """Antialiased coverage of the spans -> uint8 grey blocks (n, nb, block_h, W), 255 = white.

    ``a``, ``b``: (n, nb, s, W) float32 block rows (sub-column j of every pixel column contiguous).
    Sub-column j adds ``full[j]`` (sum over j: 255) to the rows strictly inside its span and its exact
    fractional coverage (rounded) to the span's first and last rows. Integer arithmetic, mirrored
    exactly by :func:`_pixels_torch`.
    """
    n, nb, s, w = a.shape
    bh = lay.block_h
    full = lay.full.astype(np.float32)[:, None]                        # (s, 1)
    fa, fb = np.floor(a), np.floor(b)
    length = fb - fa                                                    # rows from first to last
    ca = np.rint((np.minimum(b, fa + np.float32(1.0)) - a) * full).astype(np.uint8)
    cb = np.rint((b - fb) * full)
    cb[length <= 0] = 0                                                 # span within one row: ca has it
    cb = cb.astype(np.uint8)
    rdt = np.uint8 if bh <= 128 else np.uint16                         # row arithmetic wraps modulo 2^bits
    # dense passes on (bh, n * nb * W): all block columns side by side, so numpy's inner loops are long
    m = n * nb * w
    first1 = (fa + np.float32(1.0)).astype(rdt).transpose(2, 0, 1, 3).reshape(s, 1, m)
    inner = np.maximum(length - np.float32(1.0), np.float32(0.0)).astype(rdt).transpose(2, 0, 1, 3).reshape(s, 1, m)
    rows = np.arange(bh, dtype=rdt)[:, None]
    acc = np.zeros((bh, m), np.uint8)
    d = np.empty((bh, m), rdt)
    inside = np.empty((bh, m), bool)
    column = np.arange(m, dtype=np.int64).reshape(n, nb, 1, w)
    top = np.float32(bh - 1)
    ia = np.minimum(fa, top).astype(np.int64) * m + column               # (n, nb, s, W) first rows
    ib = np.minimum(fb, top).astype(np.int64) * m + column               # last rows
    flat = acc.reshape(-1)
    for j in range(s):
        np.subtract(rows, first1[j], out=d)                             # row - (first + 1), wrapped
        np.less(d, inner[j], out=inside)                                # rows strictly inside the span
        acc += inside * lay.full[j]                                     # (ufunc where= is not vectorised)
        flat[ia[:, :, j]] += ca[:, :, j]                                # unique indices within one j
        flat[ib[:, :, j]] += cb[:, :, j]
    out = np.empty((n, nb, bh, w), np.uint8)
    np.subtract(np.uint8(255), acc.reshape(bh, n, nb, w).transpose(1, 2, 0, 3), out=out)
    return out


def _assemble_np(blocks: np.ndarray, lay: _Layout) -> np.ndarray:
    n = blocks.shape[0]
    if not lay.clip:  # every band drew into a full-height block: darkest wins
        img = blocks.min(axis=1)
    elif lay.row_index is None:
        img = blocks.reshape(n, lay.height, lay.width)
    else:
        img = blocks.reshape(n, -1, lay.width)[:, lay.row_index]
    if lay.background is not None:
        img = ((lay.background * img.astype(np.uint16) + 127) // 255).astype(np.uint8)
    return img


def _render_chunk_np(sig: np.ndarray, lay: _Layout) -> np.ndarray:
    if lay.mix is None:
        src = sig
    else:
        la, ca, lb, cb = lay.mix
        src = sig[:, la] * ca + sig[:, lb] * cb
    n, nb, s, w = sig.shape[0], len(lay.bands), lay.oversample, lay.width
    if lay.single_group:
        a, b = _spans_np(src, lay.groups[0])                            # stack8: one group, bands in order
        a, b = a.reshape(n, nb, s, w), b.reshape(n, nb, s, w)
    else:
        a = np.empty((n, nb, s, w), np.float32)
        b = np.empty_like(a)
        for g in lay.groups:
            ga, gb = _spans_np(src, g)
            a[:, g.bands, :, g.x0:g.x1] = ga.reshape(n, -1, s, g.x1 - g.x0)
            b[:, g.bands, :, g.x0:g.x1] = gb.reshape(n, -1, s, g.x1 - g.x0)
    return _assemble_np(_pixels_np(a, b, lay), lay)


def render_ecg(x: Any, size: int | Sequence[int] = 224, layout: str = "stack8", *, channels: int = 1,
               **style) -> np.ndarray:
    """Render ECGs as greyscale images with the fast numpy renderer (vectorised over the batch).

    Parameters
    ----------
    x : (8, T) or (N, 8, T) float, microvolts; leads I, II, V1-V6 (:data:`LEADS`) in that order,
        T samples (2,500 at 500 Hz after ``signals.preprocess``). Must be finite.
    size : output size, int (square) or (height, width) in pixels; 224 as in the paper.
    layout : ``"stack8"`` (default, the paper's), ``"grid4x2"`` or ``"clinical3x4"`` (module docs).
    channels : 1 -> (H, W); 3 -> (H, W, 3) with equal channels.
    **style : :class:`RenderStyle` fields (ylim_mv, mv_per_px, linewidth, clip, fs, grid, oversample).

    Returns
    -------
    np.ndarray uint8, (H, W) for one ECG or (N, H, W) for a batch (channels=3 appends an axis of 3);
    255 = white background, 0 = fully covered by the trace.
    """
    sig, single = _check_signal(x)
    h, w = _image_size(size)
    lay = _get_layout(layout, h, w, sig.shape[2], _make_style(style))
    out = np.empty((sig.shape[0], h, w), np.uint8)
    for k in range(0, sig.shape[0], _CHUNK):
        out[k:k + _CHUNK] = _render_chunk_np(sig[k:k + _CHUNK], lay)
    return _finish(out, single, channels)


# ----------------------------------------------------------------------------- torch renderer


@functools.lru_cache(maxsize=64)
def _torch_consts(lay: _Layout, device: str) -> dict:
    import torch

    def t(a):
        return torch.as_tensor(np.array(a), device=device)

    groups = [{f.name: (t(getattr(g, f.name)) if isinstance(getattr(g, f.name), np.ndarray) else getattr(g, f.name))
               for f in dataclasses.fields(g)} for g in lay.groups]
    for gd, g in zip(groups, lay.groups):
        gd["s_i1"], gd["e_i1"] = t(g.s_i0 + 1), t(g.e_i0 + 1)
    return dict(
        groups=groups,
        mix=None if lay.mix is None else tuple(t(m) for m in lay.mix),
        background=None if lay.background is None else t(lay.background.astype(np.int32)),
        full=t(lay.full.astype(np.float32)),
        row_index=None if lay.row_index is None else t(lay.row_index),
    )


def _spans_torch(src, gd: dict):
    """Torch mirror of :func:`_spans_np` (the same float32 operations in the same order)."""
    import torch

    v = src if gd["identity"] else src[:, gd["sources"], gd["t0"]:gd["t1"]]
    lmin = lmax = v
    stack_min = stack_max = None
    if gd["level"] < 0:
        stack_min = v.new_zeros(v.shape[:2] + (gd["n_levels"], v.shape[2]))
        stack_max = v.new_zeros(v.shape[:2] + (gd["n_levels"], v.shape[2]))
        stack_min[:, :, 0], stack_max[:, :, 0] = v, v
    for j in range(gd["n_levels"] - 1):
        d = 1 << j
        lmin = torch.minimum(lmin[..., :-d], lmin[..., d:])
        lmax = torch.maximum(lmax[..., :-d], lmax[..., d:])
        if stack_min is not None:
            stack_min[:, :, j + 1, :lmin.shape[-1]] = lmin
            stack_max[:, :, j + 1, :lmax.shape[-1]] = lmax
    if stack_min is not None:
        lmin = stack_min.reshape(v.shape[:2] + (-1,))
        lmax = stack_max.reshape(v.shape[:2] + (-1,))
    es = v[..., gd["s_i0"]] * gd["s_w0"] + v[..., gd["s_i1"]] * gd["s_w1"]
    ee = v[..., gd["e_i0"]] * gd["e_w0"] + v[..., gd["e_i1"]] * gd["e_w1"]
    mn = torch.minimum(es, ee)
    mx = torch.maximum(es, ee)
    rmn = torch.minimum(lmin[..., gd["ia"]], lmin[..., gd["ib"]])
    rmx = torch.maximum(lmax[..., gd["ia"]], lmax[..., gd["ib"]])
    if gd["empty"] is not None:
        rmn = torch.where(gd["empty"], mn, rmn)
        rmx = torch.where(gd["empty"], mx, rmx)
    mn = torch.minimum(mn, rmn)
    mx = torch.maximum(mx, rmx)
    a = torch.minimum((gd["c_a"] - mx * gd["ppu"]).clamp(min=0.0), gd["lim_a"])
    b = torch.minimum(torch.maximum(gd["c_b"] - mn * gd["ppu"], gd["lo_b"]), gd["lim_b"])
    return a, b


def _pixels_torch(a, b, lay: _Layout, consts: dict):
    """Torch mirror of :func:`_pixels_np`: uint8 grey blocks (n, nb, block_h, W)."""
    import torch

    n, nb, s, w = a.shape
    bh = lay.block_h
    dev = a.device
    full = consts["full"][:, None]
    fa, fb = torch.floor(a), torch.floor(b)
    length = fb - fa
    ca = torch.round((torch.minimum(b, fa + 1.0) - a) * full).to(torch.uint8)
    cb = torch.round((b - fb) * full)
    cb = torch.where(length <= 0, torch.zeros_like(cb), cb).to(torch.uint8)
    small = bh <= 128
    rdt = torch.uint8 if small else torch.int32                     # uint8 wraps like numpy; int32 compares signed
    first1 = (fa + 1.0).to(rdt)[:, :, :, None, :]
    inner = (length - 1.0).clamp(min=0.0).to(rdt)[:, :, :, None, :]
    rows = torch.arange(bh, device=dev, dtype=rdt)[:, None]
    acc = torch.zeros((n, nb, bh, w), dtype=torch.uint8, device=dev)
    base = (torch.arange(n * nb, device=dev, dtype=torch.int64).reshape(n, nb, 1, 1) * (bh * w)
            + torch.arange(w, device=dev))
    ia = base + torch.clamp(fa, max=bh - 1).to(torch.int64) * w
    ib = base + torch.clamp(fb, max=bh - 1).to(torch.int64) * w
    flat = acc.view(-1)
    for j in range(s):
        d = rows - first1[:, :, j]
        inside = d < inner[:, :, j]
        if not small:
            inside &= d >= 0
        acc += inside.to(torch.uint8) * int(lay.full[j])
        idx = ia[:, :, j].reshape(-1)
        flat[idx] = flat[idx] + ca[:, :, j].reshape(-1)                 # unique indices within one j
        idx = ib[:, :, j].reshape(-1)
        flat[idx] = flat[idx] + cb[:, :, j].reshape(-1)
    return 255 - acc


def _assemble_torch(blocks, lay: _Layout, consts: dict):
    import torch

    n = blocks.shape[0]
    if not lay.clip:
        img = blocks.amin(dim=1)
    elif lay.row_index is None:
        img = blocks.reshape(n, lay.height, lay.width)
    else:
        img = blocks.reshape(n, -1, lay.width)[:, consts["row_index"]]
    if consts["background"] is not None:
        img = torch.div(consts["background"] * img.to(torch.int32) + 127, 255, rounding_mode="floor").to(torch.uint8)
    return img


def render_ecg_torch(x: Any, size: int | Sequence[int] = 224, layout: str = "stack8", *,
                     out_dtype: Any = None, **style):
    """Torch counterpart of :func:`render_ecg` for tensors on any device (GPU included).

    Parameters
    ----------
    x : torch tensor (8, T) or (B, 8, T), microvolts, leads :data:`LEADS`; cast to float32.
    size, layout, **style : as :func:`render_ecg`.
    out_dtype : ``torch.uint8`` (default; grey levels 0..255) or ``torch.float32`` (grey / 255 in
        [0, 1], 1 = white).

    Returns
    -------
    Tensor (H, W) or (B, H, W) on ``x.device``, equal to :func:`render_ecg` to within 1 grey level
    (the same float32 operations, then integer coverage arithmetic; deterministic on every device:
    no atomics, scatters write unique indices).
    """
    import torch

    if not isinstance(x, torch.Tensor):
        raise RenderError(f"x: expected a torch.Tensor, got {type(x).__name__}; use render_ecg for arrays")
    out_dtype = torch.uint8 if out_dtype is None else out_dtype
    if out_dtype not in (torch.uint8, torch.float32):
        raise RenderError(f"out_dtype={out_dtype!r}: must be torch.uint8 or torch.float32")
    single = x.dim() == 2
    sig = x[None] if single else x
    if sig.dim() != 3 or sig.shape[1] != len(LEADS) or sig.shape[2] < 8:
        raise RenderError(f"x: expected (8, T) or (B, 8, T) microvolts with T >= 8, got shape {tuple(x.shape)}")
    sig = sig.to(torch.float32)
    if not bool(torch.isfinite(sig).all()):
        raise RenderError("x: contains NaN or infinite values; fill or drop them before rendering")
    h, w = _image_size(size)
    lay = _get_layout(layout, h, w, int(sig.shape[2]), _make_style(style))
    consts = _torch_consts(lay, str(sig.device))
    if consts["mix"] is None:
        src = sig
    else:
        la, ca, lb, cb = consts["mix"]
        src = sig[:, la] * ca + sig[:, lb] * cb
    n, nb, s = sig.shape[0], len(lay.bands), lay.oversample
    groups = consts["groups"]
    if lay.single_group:
        a, b = _spans_torch(src, groups[0])
        a, b = a.reshape(n, nb, s, w), b.reshape(n, nb, s, w)
    else:
        a = sig.new_empty((n, nb, s, w))
        b = sig.new_empty((n, nb, s, w))
        for gd in groups:
            ga, gb = _spans_torch(src, gd)
            wp = gd["x1"] - gd["x0"]
            a[:, gd["bands"], :, gd["x0"]:gd["x1"]] = ga.reshape(n, -1, s, wp)
            b[:, gd["bands"], :, gd["x0"]:gd["x1"]] = gb.reshape(n, -1, s, wp)
    img = _assemble_torch(_pixels_torch(a, b, lay, consts), lay, consts)
    if out_dtype == torch.float32:
        img = img.to(torch.float32) / 255.0
    return img[0] if single else img


# ----------------------------------------------------------------------------- matplotlib reference


def render_ecg_reference(x: Any, size: int | Sequence[int] = 224, layout: str = "stack8", *,
                         channels: int = 1, **style) -> np.ndarray:
    """Render ECGs the paper's way: matplotlib (Agg) at ``ref_scale`` x the size, then PIL resize.

    One axes per panel (no axis, no ticks, white background), ``ax.plot`` of the samples in black
    (``linewidth * ref_scale`` px wide, round joins, antialiased, no pixel snapping), fixed
    ``ylim``; values are clipped to it (``np.clip``) and the stroke is clipped by the axes. The
    canvas is converted to grey and resized to ``size`` with PIL (``resample``; default bicubic =
    ``Image.resize``'s default; ``"bilinear"`` = ``torchvision.transforms.Resize`` on PIL images).
    The clinical grid is composited under the trace (``background * grey / 255``) as in the fast
    renderer. A batch reuses one figure and updates the line data per ECG (same pixels as one
    figure per ECG, several times faster).

    Parameters and returns as :func:`render_ecg`; style fields ``ref_scale`` and ``resample``
    apply here, ``oversample`` is ignored.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    sig, single = _check_signal(x)
    st = _make_style(style)
    h, w = _image_size(size)
    lay = _get_layout(layout, h, w, sig.shape[2], st)
    scale, dpi = st.ref_scale, 100.0
    hb, wb = h * scale, w * scale
    fig = Figure(figsize=(wb / dpi, hb / dpi), dpi=dpi, facecolor="white")
    canvas = FigureCanvasAgg(fig)
    lines = []
    for srci, band, x0, x1, t0, t1 in lay.panels:
        y0, y1 = lay.bands[band]
        ax = fig.add_axes((x0 / w, 1.0 - y1 / h, (x1 - x0) / w, (y1 - y0) / h))
        ax.set_axis_off()
        ax.set_xlim(t0 - 0.5, t1 - 0.5)
        ax.set_ylim(*lay.ylims[band])
        (ln,) = ax.plot(np.arange(t0, t1), np.zeros(t1 - t0), color="black",
                        linewidth=st.linewidth * scale * 72.0 / dpi, antialiased=True, snap=False,
                        solid_joinstyle="round", solid_capstyle="projecting", clip_on=st.clip)
        lines.append((ln, srci, t0, t1, lay.ylims[band]))
    filt = getattr(Image.Resampling, st.resample.upper())
    out = np.empty((sig.shape[0], h, w), dtype=np.uint8)
    for i in range(sig.shape[0]):
        src = sig[i] if lay.mix is None else sig[i, lay.mix[0]] * lay.mix[1] + sig[i, lay.mix[2]] * lay.mix[3]
        for ln, srci, t0, t1, (lo, hi) in lines:
            v = src[srci, t0:t1].astype(np.float64) / 1000.0
            ln.set_ydata(np.clip(v, lo, hi) if st.clip else v)
        canvas.draw()
        rgba = np.asarray(canvas.buffer_rgba())
        if rgba.shape[:2] != (hb, wb):
            raise RenderError(f"matplotlib canvas is {rgba.shape[:2]}, expected {(hb, wb)} (size={size}, ref_scale={scale})")
        grey = Image.fromarray(np.ascontiguousarray(rgba[..., 0]))
        small = np.asarray(grey.resize((w, h), resample=filt) if (hb, wb) != (h, w) else grey, dtype=np.uint8)
        if lay.background is not None:  # the grid under the trace, as in the fast renderer
            small = ((lay.background * small.astype(np.uint16) + 127) // 255).astype(np.uint8)
        out[i] = small
    return _finish(out, single, channels)


# ----------------------------------------------------------------------------- parity and figures


def parity_metrics(reference: np.ndarray, fast: np.ndarray, dark: int = 128) -> dict[str, np.ndarray]:
    """Per-image agreement of two renderings (the issue's parity criteria).

    Parameters
    ----------
    reference, fast : uint8 (H, W) or (N, H, W) greyscale images, 255 = white.
    dark : pixels with value < ``dark`` are "dark" (trace).

    Returns
    -------
    dict of (N,) float64 arrays: ``mean_abs_diff`` (0-255 scale), ``iou_dilated`` (IoU of the two
    dark masks after a 3x3 dilation of each; 1.0 when both are empty), ``max_abs_diff``.
    """
    a = np.asarray(reference)
    b = np.asarray(fast)
    if a.shape != b.shape:
        raise RenderError(f"parity_metrics: shapes differ, reference {a.shape} vs fast {b.shape}")
    if a.ndim == 2:
        a, b = a[None], b[None]
    from scipy.ndimage import binary_dilation

    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    square = np.ones((1, 3, 3), bool)                                   # 3x3 per image; outside = False
    ma, mb = binary_dilation(a < dark, square), binary_dilation(b < dark, square)
    inter = (ma & mb).sum(axis=(1, 2))
    union = (ma | mb).sum(axis=(1, 2))
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return {"mean_abs_diff": diff.mean(axis=(1, 2)), "iou_dilated": iou.astype(np.float64),
            "max_abs_diff": diff.max(axis=(1, 2)).astype(np.float64)}


def save_comparison_figure(x: Any, out_dir: str | os.PathLike, size: int | Sequence[int] = 224,
                           layout: str = "stack8", *, titles: Sequence[str] | None = None,
                           filename: str = "render_comparison.png", **style) -> Path:
    """Save a PNG with, per ECG, the matplotlib reference, the fast render and their difference.

    Parameters
    ----------
    x : (N, 8, T) microvolts (a few ECGs; N rows in the figure).
    out_dir : folder to write into (created); e.g. ``outputs/render``.
    titles : optional label per ECG (e.g. record ids).

    Returns
    -------
    Path of the written PNG ``out_dir / filename``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sig, _ = _check_signal(x)
    if titles is not None and len(titles) != len(sig):
        raise RenderError(f"titles: {len(titles)} labels for {len(sig)} ECGs")
    ref = render_ecg_reference(sig, size, layout, **style)
    fast = render_ecg(sig, size, layout, **style)
    met = parity_metrics(ref, fast)
    n = len(sig)
    fig = Figure(figsize=(9.0, 3.1 * n + 0.3), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, 3, squeeze=False)
    for i in range(n):
        name = titles[i] if titles is not None else f"ECG {i}"
        panels = ((ref[i], f"{name}: matplotlib reference", "gray"),
                  (fast[i], "fast renderer (numpy)", "gray"),
                  (np.abs(ref[i].astype(int) - fast[i].astype(int)),
                   f"|diff| mean {met['mean_abs_diff'][i]:.2f}, IoU {met['iou_dilated'][i]:.3f}", "magma"))
        for ax, (img, title, cmap) in zip(axes[i], panels):
            ax.imshow(img, cmap=cmap, vmin=0, vmax=255, interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    st = _make_style(style)
    fig.suptitle(f"layout {layout}, {size} px: matplotlib reference (plot at {st.ref_scale}x, PIL {st.resample} "
                 f"resize) vs fast renderer", fontsize=9)
    fig.tight_layout()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / filename
    fig.savefig(path)
    return path


# ----------------------------------------------------------------------------- amplitude range, image statistics


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


# ----------------------------------------------------------------------------- datasets


def _normalizer(normalize: Any, channels: int):
    """(mean, std) float32 arrays of shape (C, 1, 1) from None / dict / (mean, std) pair."""
    if normalize is None:
        return None
    if isinstance(normalize, Mapping):
        if "mean" not in normalize or "std" not in normalize:
            raise RenderError(f"normalize={normalize!r}: a dict needs keys 'mean' and 'std'")
        mean, std = normalize["mean"], normalize["std"]
    else:
        try:
            mean, std = normalize
        except (TypeError, ValueError) as e:
            raise RenderError(f"normalize={normalize!r}: expected None, {{'mean', 'std'}} or (mean, std)") from e
    mean = np.broadcast_to(np.asarray(mean, dtype=np.float32).reshape(-1), (channels,)) \
        if np.size(mean) in (1, channels) else None
    std = np.broadcast_to(np.asarray(std, dtype=np.float32).reshape(-1), (channels,)) \
        if np.size(std) in (1, channels) else None
    if mean is None or std is None:
        raise RenderError(f"normalize={normalize!r}: mean/std need 1 or {channels} values")
    if not (std > 0).all():
        raise RenderError(f"normalize={normalize!r}: std must be positive")
    return mean.reshape(-1, 1, 1).copy(), std.reshape(-1, 1, 1).copy()


def _check_channels(channels: int) -> int:
    if channels not in (1, 3):
        raise RenderError(f"channels={channels!r}: must be 1 or 3")
    return int(channels)


def _to_images(grey, channels: int, norm):
    """uint8 tensor (B, H, W) -> float32 tensor (B, C, H, W) in [0, 1], optionally normalised."""
    import torch

    img = grey.to(torch.float32).div_(255.0)[:, None].expand(-1, channels, -1, -1)
    if norm is not None:
        mean = torch.as_tensor(norm[0], device=img.device)
        std = torch.as_tensor(norm[1], device=img.device)
        img = (img - mean) / std
    return img.contiguous()


try:  # torch is a dependency; keep the module importable for numpy-only use all the same
    from torch.utils.data import Dataset as _TorchDataset
except ImportError:  # pragma: no cover
    _TorchDataset = object  # type: ignore[assignment,misc]


def _store_labels(store, indices: np.ndarray, where: str) -> np.ndarray:
    man = store.manifest
    if "label" not in man.columns:
        raise RenderError(f"{where}: the store's manifest has no 'label' column")
    n = len(man)
    if indices.size and (indices.min() < 0 or indices.max() >= n):
        raise RenderError(f"{where}: indices must be row numbers in 0..{n - 1} of the store's manifest")
    return man["label"].to_numpy()[indices].astype(np.int64)


def _read_signals(store, rows: np.ndarray) -> np.ndarray:
    """``store.signals`` for rows in any order (read sorted, which stores serve fastest)."""
    order = np.argsort(rows, kind="stable")
    got = np.asarray(store.signals(rows[order]), dtype=np.float32)
    if got.ndim != 3 or got.shape[0] != rows.size:
        raise RenderError(f"store.signals returned shape {got.shape} for {rows.size} rows; expected (n, 8, T)")
    out = np.empty_like(got)
    out[order] = got
    return out


class RenderedECGDataset(_TorchDataset):
    """Images rendered on the fly from a cohort store: no PNGs needed.

    Parameters
    ----------
    store : :class:`heartbeit_lib.cohorts.CohortStore` (or any object with ``.signals(idx) ->
        float32 (n, 8, T) microvolts`` and a ``.manifest`` DataFrame with a ``label`` column).
    indices : int row numbers of the store (e.g. ``store.indices("train")``).
    size, layout : as :func:`render_ecg`.
    channels : 3 (default; equal channels for ImageNet-shaped backbones) or 1.
    normalize : None -> images in [0, 1] (1 = white); ``{"mean": [...], "std": [...]}`` (as saved in a
        pretraining checkpoint) or ``(mean, std)`` -> ``(image - mean) / std`` per channel.
    **style : :class:`RenderStyle` fields.

    Items are ``(image float32 tensor (C, H, W), label int64 tensor ())``. A ``DataLoader`` calls
    :meth:`__getitems__` with the whole batch: one ``store.signals`` read and one vectorised render
    per batch (a fraction of a millisecond per ECG on one core at 224 px), so rendering keeps up
    with training in the loader's workers.
    """

    def __init__(self, store, indices, size: int | Sequence[int] = 224, layout: str = "stack8",
                 channels: int = 3, normalize: Any = None, **style) -> None:
        self.store = store
        self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        self.size = _image_size(size)
        self.layout = layout
        self.channels = _check_channels(channels)
        self.normalize = normalize
        self._norm = _normalizer(normalize, self.channels)
        self.style = dict(style)
        _make_style(self.style)
        if layout not in LAYOUTS:
            raise RenderError(f"layout={layout!r}: must be one of {list(LAYOUTS)}")
        self.labels = _store_labels(store, self.indices, "RenderedECGDataset")

    def __len__(self) -> int:
        return int(self.indices.size)

    def render_batch(self, positions: Sequence[int]):
        """Images (B, C, H, W) float32 and labels (B,) int64 for dataset positions (not store rows)."""
        import torch

        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        if pos.size and (pos.min() < -len(self) or pos.max() >= len(self)):
            raise IndexError(f"RenderedECGDataset: positions out of range 0..{len(self) - 1}")
        if pos.size == 0:
            h, w = self.size
            return torch.zeros((0, self.channels, h, w)), torch.zeros(0, dtype=torch.int64)
        sig = _read_signals(self.store, self.indices[pos])
        grey = torch.from_numpy(render_ecg(sig, self.size, self.layout, **self.style))
        return _to_images(grey, self.channels, self._norm), torch.from_numpy(self.labels[pos])

    def __getitem__(self, i: int):
        img, lab = self.render_batch([int(i)])
        return img[0], lab[0]

    def __getitems__(self, positions: Sequence[int]) -> list:
        img, lab = self.render_batch(positions)
        return list(zip(img.unbind(0), lab.unbind(0)))


class ECGSignalDataset(_TorchDataset):
    """Raw signals from a cohort store, for rendering on the GPU with :class:`RenderTransform`.

    Items are ``(signal float32 tensor (8, T) microvolts, label int64 tensor ())``; batched reads
    through ``__getitems__`` as in :class:`RenderedECGDataset`.
    """

    def __init__(self, store, indices) -> None:
        self.store = store
        self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        self.labels = _store_labels(store, self.indices, "ECGSignalDataset")

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitems__(self, positions: Sequence[int]) -> list:
        import torch

        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        sig = _read_signals(self.store, self.indices[pos])
        return list(zip(torch.from_numpy(sig).unbind(0), torch.from_numpy(self.labels[pos]).unbind(0)))

    def __getitem__(self, i: int):
        return self.__getitems__([int(i)])[0]


class RenderTransform:
    """Signals (B, 8, T) microvolts on any device -> images (B, C, H, W) float32 on that device.

    Same parameters as :class:`RenderedECGDataset`; uses :func:`render_ecg_torch`, so a training
    loop on a GPU renders its batches there (``images = transform(signals.to("cuda"))``).
    """

    def __init__(self, size: int | Sequence[int] = 224, layout: str = "stack8", channels: int = 3,
                 normalize: Any = None, **style) -> None:
        self.size = _image_size(size)
        self.layout = layout
        self.channels = _check_channels(channels)
        self._norm = _normalizer(normalize, self.channels)
        self.style = dict(style)
        _make_style(self.style)

    def __call__(self, x):
        grey = render_ecg_torch(x if x.dim() == 3 else x[None], self.size, self.layout, **self.style)
        return _to_images(grey, self.channels, self._norm)


# ----------------------------------------------------------------------------- export


def _safe_name(s: str) -> str:
    return file_name_from(s, "ecg")


def export_pngs(cohort_run: str | os.PathLike, out_dir: str | os.PathLike, size: int = 224,
                layout: str = "stack8", splits: Sequence[str] | None = None, batch_size: int = 256,
                **style) -> Path:
    """Write ``out_dir/<split>/<label>/<record_id>.png`` for a cohort store, plus ``out_dir/index.csv``.

    Parameters
    ----------
    cohort_run : an ``outputs/01_preprocess/<run_id>/`` folder (read with ``cohorts.CohortStore``).
    out_dir : destination folder (created). Label folders are ``0``/``1`` and ``unlabelled`` (-1),
        i.e. ``torchvision.datasets.ImageFolder``-ready per split.
    splits : splits to export (default: every split in the manifest).

    Returns
    -------
    Path of ``index.csv`` (record_id, split, label, path relative to ``out_dir``, store row).
    """
    import pandas as pd
    from PIL import Image

    from heartbeit_lib import cohorts

    store = cohorts.CohortStore(cohort_run)
    man = store.manifest
    split_of = man["split"].astype(str).to_numpy()
    labels = man["label"].to_numpy()
    record_ids = man["record_id"].astype(str).to_numpy()
    available = list(dict.fromkeys(split_of))
    wanted = available if not splits else list(splits)
    bad = [s for s in wanted if s not in available]
    if bad:
        raise RenderError(f"--split {bad}: not in the store {cohort_run} (splits there: {available})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records, used = [], set()
    for split in wanted:
        rows = np.flatnonzero(split_of == split)
        for k in range(0, rows.size, batch_size):
            chunk = rows[k:k + batch_size]
            imgs = render_ecg(store.signals(chunk), size, layout, **style)
            for row, img in zip(chunk, imgs):
                label = int(labels[row])
                folder = out / split / (str(label) if label >= 0 else "unlabelled")
                folder.mkdir(parents=True, exist_ok=True)
                rel = folder.relative_to(out) / f"{_safe_name(record_ids[row])}.png"
                if str(rel) in used:  # duplicate record ids stay distinct files
                    rel = rel.with_name(f"{rel.stem}-row{row}.png")
                used.add(str(rel))
                Image.fromarray(img).save(out / rel)
                records.append(dict(record_id=record_ids[row], split=split, label=label,
                                    path=str(rel), row=int(row)))
    index = out / "index.csv"
    write_csv(pd.DataFrame(records, columns=["record_id", "split", "label", "path", "row"]), index, index=False)
    return index


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m heartbeit_lib.render export <cohort_run> <out_dir> [--size --layout --split]``."""
    parser = argparse.ArgumentParser(prog="python -m heartbeit_lib.render",
                                     description="ECG image rendering utilities.")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="write PNG folders <out_dir>/<split>/<label>/<record_id>.png")
    ex.add_argument("cohort_run", help="cohort store folder (outputs/01_preprocess/<run_id>)")
    ex.add_argument("out_dir", help="destination folder")
    ex.add_argument("--size", type=int, default=224, help="image size in pixels (square)")
    ex.add_argument("--layout", default="stack8", choices=LAYOUTS)
    ex.add_argument("--split", action="append", default=None,
                    help="split to export (repeatable or comma-separated; default: all)")
    ex.add_argument("--linewidth", type=float, default=1.0, help="trace width in output pixels")
    args = parser.parse_args(argv)
    splits = None if not args.split else [s for arg in args.split for s in arg.split(",") if s]
    try:
        index = export_pngs(args.cohort_run, args.out_dir, size=args.size, layout=args.layout, splits=splits,
                            linewidth=args.linewidth)
    except ValueError as e:  # RenderError, cohorts.StoreError, ...: a message, not a traceback
        parser.exit(2, f"{parser.prog} export: error: {e}\n")
    print(f"wrote {index}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
