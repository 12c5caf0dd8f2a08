"""Geometry shared by the three renderers: constants, style, layouts and input checks.

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
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np


# Leads of the stored 8-lead ECG, in the order of the signal's first axis and of the stack8 rows.
LEADS: tuple[str, ...] = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
LAYOUTS: tuple[str, ...] = ("stack8", "grid4x2", "clinical3x4")
RESAMPLE_FILTERS: tuple[str, ...] = ("bilinear", "bicubic", "box", "lanczos", "nearest")
#: Version of the pixels the renderers produce: part of the token cache key
#: (``tokenizers.token_cache_key``); bump it when a change alters the rendered images.
RENDER_VERSION = "1"

DEFAULT_YLIM_MV: tuple[float, float] = (-4.0, 4.0)  # stack8/grid4x2 band range in mV (module docs: clipping table)
#: The range images were drawn at before runs recorded ``ylim_mv`` (issue 18 moved the default from +-2 to +-4 mV):
#: what a run, model record or checkpoint saved without ``ylim_mv`` saw (:func:`saved_ylim_mv`).
LEGACY_YLIM_MV: tuple[float, float] = (-2.0, 2.0)


def saved_ylim_mv(recorded) -> tuple[float, float]:
    """The amplitude range (lo, hi) mV a saved run was drawn at: its recorded ``ylim_mv``, or :data:`LEGACY_YLIM_MV`
    when it has none (saved before the range was recorded). The one rule of 03, 06 and 07."""
    return tuple(float(v) for v in (LEGACY_YLIM_MV if recorded is None or len(recorded) == 0 else recorded))
_PAPER_MM_PER_S = 25.0  # ECG paper: 25 mm/s, 10 mm/mV
_PAPER_MM_PER_MV = 10.0
_GRID_MAJOR_GREY = 200.0  # grey level of 5-mm lines on the clinical layout's paper
_GRID_MINOR_GREY = 235.0  # grey level of 1-mm lines


class RenderError(ValueError):
    """An ECG or a rendering parameter that cannot be rendered (names the parameter and why)."""


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
