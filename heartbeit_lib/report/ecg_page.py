"""One page per ECG for a clinician: the printed 12-lead on grid paper beside what the model saw.

Left: the clinical 3x4 layout (columns I/II/III, aVR/aVL/aVF, V1-V3, V4-V6, each column a
consecutive quarter of the record, as an electrocardiograph prints it) and a lead II rhythm strip
over the whole record, on ECG paper at 25 mm/s and 10 mm/mV with 1 mm minor and 5 mm major grid
lines, lead labels and a 1 mV x 0.2 s calibration pulse at the start of each row. The page is
drawn at true size: printed at 100 % (the PDF), 1 mm of grid is 1 mm of paper.
Right: the model's input image (greyscale, as rendered by :func:`heartbeit_lib.render.render_ecg`)
with an optional saliency map on top (any resolution; bilinearly upsampled to the image and
min-max scaled to [0, 1]), lead names at each band.
Title: record id, score, threshold and decision.

Display conventions
-------------------
* Each printed segment is drawn around its own median, so a baseline offset (or the wander of an
  unfiltered record) does not push a trace into the next row; shapes and amplitudes are unchanged.
  Pass the band-passed record (``signals.preprocess(..., n_samples=T)``) for a clean print.
* Traces are not clipped at their row (printouts overlap too) but are clipped at the paper edge.
* Every text that comes from inputs (record id, decision, note) is drawn literally: matplotlib's
  mathtext and TeX are switched off for it, so ``"a$b_c^d"`` prints as typed.

Functions: :func:`ecg_page_figure` builds a ``matplotlib.figure.Figure`` (not registered with
pyplot), :func:`save_png` writes one figure, :func:`save_pdf` writes many pages into one PDF.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from matplotlib.ticker import MultipleLocator

from heartbeit_lib import render, signals
from heartbeit_lib.utils import atomic_write

MM_PER_S: float = 25.0        # paper speed
MM_PER_MV: float = 10.0       # gain
ROW_MM: float = 35.0          # height of one printed row (3.5 mV); a tall QRS may reach the next row
PULSE_MM: float = 10.0        # room at the left of each row for the calibration pulse
MM_PER_INCH: float = 25.4
# clinical 3x4: columns of leads, top to bottom (canonical names)
CLINICAL_COLUMNS: tuple[tuple[str, ...], ...] = (("I", "II", "III"), ("AVR", "AVL", "AVF"),
                                                 ("V1", "V2", "V3"), ("V4", "V5", "V6"))
RHYTHM_LEAD: str = "II"
DISPLAY_NAMES: dict[str, str] = {"AVR": "aVR", "AVL": "aVL", "AVF": "aVF"}
PAPER_COLORS: dict[str, str] = {"background": "#fff7f5", "minor": "#f5c4c0", "major": "#e0807a", "trace": "black"}
LITERAL = {"parse_math": False, "usetex": False}  # Text kwargs: inputs are printed as typed


class ECGPageError(ValueError):
    """Bad input to the per-ECG page (the message names the parameter and the reason)."""


@dataclass(frozen=True)
class ECGPage:
    """Everything one page shows (see :func:`ecg_page_figure` for the fields)."""

    signal: np.ndarray
    fs: float
    image: np.ndarray
    record_id: str
    score: float
    threshold: float
    decision: str | bool | None = None
    saliency: np.ndarray | None = None
    leads: Sequence[str] | None = None
    input_layout: str | None = "stack8"
    input_samples: int = signals.N_SAMPLES
    note: str = ""


def twelve_leads(signal: np.ndarray, leads: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Canonical lead name -> (T,) float64 microvolts for the 12 standard leads.

    ``signal`` is (L, T) microvolts; ``leads`` names its rows (default: the 12 leads in
    :data:`heartbeit_lib.signals.TWELVE_LEADS` order when L == 12, the 8 stored leads
    :data:`heartbeit_lib.signals.OUTPUT_LEADS` when L == 8). Missing III, aVR, aVL, aVF are derived
    from I and II (:func:`heartbeit_lib.signals.derive_limb_leads`).
    """
    x = np.asarray(signal, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 2:
        raise ECGPageError(f"signal: expected (leads, samples) with >= 2 samples, got shape {x.shape}")
    if leads is None:
        defaults = {12: signals.TWELVE_LEADS, 8: signals.OUTPUT_LEADS}
        if x.shape[0] not in defaults:
            raise ECGPageError(f"signal: {x.shape[0]} lead rows; pass leads= to name them (12 or 8 rows "
                               f"have default names)")
        leads = defaults[x.shape[0]]
    if len(leads) != x.shape[0]:
        raise ECGPageError(f"leads: {len(leads)} names for {x.shape[0]} rows of signal")
    names = [signals.canonical_lead_name(n) for n in leads]
    out = dict(zip(names, x))
    if not np.isfinite(x).all():
        raise ECGPageError("signal: holds NaN or inf samples")
    if "I" in out and "II" in out:
        for name, lead in signals.derive_limb_leads(out["I"], out["II"])._asdict().items():
            out.setdefault(name, lead)
    missing = [n for n in signals.TWELVE_LEADS if n not in out]
    if missing:
        raise ECGPageError(f"leads: {missing} missing from {list(leads)} (III, aVR, aVL, aVF are derived "
                           f"only when I and II are present)")
    return {n: out[n] for n in signals.TWELVE_LEADS}


def _decision_text(score: float, threshold: float, decision: str | bool | None) -> tuple[str, bool]:
    """(text, positive?) of the decision; ``None`` means ``score >= threshold``."""
    if decision is None:
        decision = bool(score >= threshold)
    if isinstance(decision, (bool, np.bool_)):
        return ("POSITIVE" if decision else "negative"), bool(decision)
    return str(decision), False


def draw_paper(ax, duration_s: float, n_rows: int = 4, row_mm: float = ROW_MM) -> None:
    """ECG paper on ``ax`` in millimetres: x from 0 to ``PULSE_MM + duration_s * 25``, y from 0 to
    ``n_rows * row_mm``; 1 mm minor and 5 mm major grid, equal aspect, no ticks."""
    width, height = PULSE_MM + duration_s * MM_PER_S, n_rows * row_mm
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_aspect("equal")
    ax.set_facecolor(PAPER_COLORS["background"])
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MultipleLocator(5))
        axis.set_minor_locator(MultipleLocator(1))
    ax.grid(which="minor", color=PAPER_COLORS["minor"], linewidth=0.3)
    ax.grid(which="major", color=PAPER_COLORS["major"], linewidth=0.6)
    ax.set_axisbelow(True)
    ax.tick_params(which="both", length=0, labelbottom=False, labelleft=False)
    for spine in ax.spines.values():
        spine.set_color(PAPER_COLORS["major"])


def _trace(ax, v_uv: np.ndarray, fs: float, x0_mm: float, base_mm: float, lw: float = 0.7) -> None:
    """Draw ``v_uv`` (T,) microvolts from ``x0_mm`` at 25 mm/s around ``base_mm`` (its median)."""
    t = np.arange(len(v_uv)) / fs
    y = base_mm + (v_uv - np.median(v_uv)) / 1000.0 * MM_PER_MV
    ax.plot(x0_mm + t * MM_PER_S, y, color=PAPER_COLORS["trace"], linewidth=lw, solid_joinstyle="round")


def _pulse(ax, base_mm: float) -> None:
    """1 mV (10 mm) x 0.2 s (5 mm) calibration pulse in the left margin of a row."""
    x = np.array([1.0, 2.5, 2.5, 7.5, 7.5, 9.0])
    y = base_mm + np.array([0, 0, MM_PER_MV, MM_PER_MV, 0, 0])
    ax.plot(x, y, color=PAPER_COLORS["trace"], linewidth=0.7)


def draw_twelve_lead(ax, leads: dict[str, np.ndarray], fs: float, row_mm: float = ROW_MM) -> None:
    """Clinical 3x4 + lead II rhythm strip on paper (see module docstring); ``leads`` from
    :func:`twelve_leads`, each (T,) microvolts at ``fs`` Hz."""
    n = len(leads[RHYTHM_LEAD])
    duration = n / fs
    draw_paper(ax, duration, 4, row_mm)
    edges = np.round(np.linspace(0, n, len(CLINICAL_COLUMNS) + 1)).astype(int)
    label_dy = 0.3 * row_mm  # label above the baseline, below the row above's baseline
    label = dict(fontsize=8, fontweight="bold", va="bottom", zorder=1.5)  # under the traces: never hide one
    for r in range(4):
        base = (3 - r) * row_mm + 5 * (row_mm // 10)  # near mid-row, on a major (5 mm) line
        _pulse(ax, base)
        if r == 3:  # rhythm strip
            _trace(ax, leads[RHYTHM_LEAD], fs, PULSE_MM, base)
            ax.text(PULSE_MM + 1, base + label_dy, RHYTHM_LEAD, **label)
            continue
        for c, column in enumerate(CLINICAL_COLUMNS):
            name, x0 = column[r], PULSE_MM + edges[c] / fs * MM_PER_S
            _trace(ax, leads[name][edges[c]:edges[c + 1]], fs, x0, base)
            ax.text(x0 + 1, base + label_dy, DISPLAY_NAMES.get(name, name), **label)
            if c:  # lead-change marker, as printed ECGs have
                ax.plot([x0, x0], [base - 3, base + 3], color=PAPER_COLORS["trace"], linewidth=0.9)
    ax.text(PULSE_MM + 1, 1.0, f"{MM_PER_S:g} mm/s   {MM_PER_MV:g} mm/mV   {fs:g} Hz   {duration:g} s",
            fontsize=7, va="bottom")


def _upsample(smap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``smap`` (h, w) to ``shape`` (H, W) with pixel centres aligned (align_corners
    False), then min-max scaled to [0, 1] (a constant map becomes zeros)."""
    h, w = smap.shape
    ys = np.clip((np.arange(shape[0]) + 0.5) * h / shape[0] - 0.5, 0, h - 1)
    xs = np.clip((np.arange(shape[1]) + 0.5) * w / shape[1] - 0.5, 0, w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = smap[y0][:, x0] * (1 - fx) + smap[y0][:, x1] * fx
    bot = smap[y1][:, x0] * (1 - fx) + smap[y1][:, x1] * fx
    out = top * (1 - fy) + bot * fy
    span = out.max() - out.min()
    return (out - out.min()) / span if span > 0 else np.zeros_like(out)


def draw_model_input(ax, image: np.ndarray, saliency: np.ndarray | None = None, layout: str | None = "stack8",
                     n_samples: int = 2500, alpha: float = 0.45, cmap: str = "jet"):
    """The model's input ``image`` (H, W) uint8 in grey, ``saliency`` (h, w) float on top (then the
    trace once more over the map, so it stays black); lead names
    from :func:`heartbeit_lib.render.layout_geometry` of ``layout`` (None: no names). Returns the
    saliency ``AxesImage`` (for a colour bar) or None."""
    img = np.asarray(image)
    if img.ndim != 2 or img.dtype != np.uint8:
        raise ECGPageError(f"image: expected a (H, W) uint8 image, got {img.dtype} {img.shape}")
    ax.imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    shown = None
    if saliency is not None:
        s = np.asarray(saliency, dtype=np.float64)
        if s.ndim != 2 or not np.isfinite(s).all():
            raise ECGPageError(f"saliency: expected a finite (h, w) map, got shape {s.shape}")
        shown = ax.imshow(_upsample(s, img.shape), cmap=cmap, vmin=0, vmax=1, alpha=alpha, interpolation="nearest")
        # the trace again on top, black with opacity = darkness, so the map never hides the ECG
        ink = np.zeros(img.shape + (4,), np.float32)
        ink[..., 3] = 1.0 - img / 255.0
        ax.imshow(ink, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if layout is not None:
        geo = render.layout_geometry(layout, img.shape, n_samples)
        for p in geo["panels"]:
            y0, y1 = geo["bands"][p["band"]]
            ax.text(p["x0"] + 1, y0 + 1, DISPLAY_NAMES.get(p["lead"], p["lead"]), fontsize=6, va="top",
                    bbox=dict(boxstyle="square,pad=0.1", fc="white", ec="none", alpha=0.75))
    return shown


def ecg_page_figure(signal: np.ndarray, fs: float, image: np.ndarray, *, record_id: str, score: float,
                    threshold: float, decision: str | bool | None = None, saliency: np.ndarray | None = None,
                    leads: Sequence[str] | None = None, input_layout: str | None = "stack8",
                    input_samples: int = signals.N_SAMPLES, note: str = "", row_mm: float = ROW_MM) -> Figure:
    """One page: 12-lead paper print (true size) | model input with saliency; title with the decision.

    Parameters
    ----------
    signal : (12, T) or (8, T) float, microvolts at ``fs`` Hz (rows named by ``leads``; defaults in
        :func:`twelve_leads`). The whole record is printed (T / fs seconds).
    fs : sampling rate in Hz.
    image : (H, W) uint8, the model's input image (255 = white).
    record_id, note : shown literally (no mathtext).
    score, threshold : the model's probability and the operating threshold.
    decision : text, a bool (True -> "POSITIVE"), or None for ``score >= threshold``.
    saliency : (h, w) float map over ``image`` (any resolution) or None.
    input_layout : the render layout of ``image`` for its lead names (None: no names).
    input_samples : samples per lead of the signal ``image`` was rendered from (sets the panels of
        the ``clinical3x4`` and ``grid4x2`` layouts; 2,500 after the paper's preprocessing).
    row_mm : height of each printed row in mm.
    """
    if not (np.isfinite(fs) and fs > 0):
        raise ECGPageError(f"fs: {fs!r} is not a positive sampling rate in Hz")
    leads12 = twelve_leads(signal, leads)
    n = len(leads12[RHYTHM_LEAD])
    paper_w, paper_h = PULSE_MM + n / fs * MM_PER_S, 4 * row_mm
    img = np.asarray(image)
    side_h = paper_h * 0.8
    side_w = side_h * img.shape[1] / max(img.shape[0], 1) if img.ndim == 2 else side_h
    margin, gap, top, bottom, cbar = 8.0, 10.0, 20.0, 6.0, 14.0
    fig_w, fig_h = margin + paper_w + gap + side_w + cbar + margin, top + paper_h + bottom
    fig = Figure(figsize=(fig_w / MM_PER_INCH, fig_h / MM_PER_INCH))
    ax = fig.add_axes((margin / fig_w, bottom / fig_h, paper_w / fig_w, paper_h / fig_h))
    draw_twelve_lead(ax, leads12, float(fs), row_mm)
    ax_in = fig.add_axes(((margin + paper_w + gap) / fig_w, (bottom + paper_h - side_h) / fig_h,
                          side_w / fig_w, side_h / fig_h))
    shown = draw_model_input(ax_in, img, saliency, input_layout, n_samples=input_samples)
    ax_in.set_title("model input" + (" + saliency" if shown is not None else ""), fontsize=8)
    if shown is not None:
        cax = fig.add_axes(((margin + paper_w + gap + side_w + 2) / fig_w, (bottom + paper_h - side_h) / fig_h,
                            3 / fig_w, side_h / fig_h))
        fig.colorbar(shown, cax=cax).set_label("saliency (min-max scaled)", fontsize=7)
        cax.tick_params(labelsize=6)
    text, positive = _decision_text(score, threshold, decision)
    fig.text(margin / fig_w, 1 - 5 / fig_h, f"ECG {record_id}", fontsize=12, fontweight="bold", va="top", **LITERAL)
    relation = ">=" if score >= threshold else "<"
    digits = next((d for d in range(3, 8) if f"{score:.{d}f}" != f"{threshold:.{d}f}"), 8)  # show the difference
    fig.text(margin / fig_w, 1 - 12 / fig_h,
             f"score {score:.{digits}f} {relation} threshold {threshold:.{digits}f}   decision: {text}", fontsize=10, va="top", color="#b00000" if positive else "black", **LITERAL)
    if note:
        fig.text(1 - margin / fig_w, 1 - 5 / fig_h, note, fontsize=8, va="top", ha="right", **LITERAL)
    return fig


def page_figure(page: ECGPage, **kwargs) -> Figure:
    """:func:`ecg_page_figure` of an :class:`ECGPage` (``kwargs``: e.g. ``row_mm``)."""
    return ecg_page_figure(page.signal, page.fs, page.image, record_id=page.record_id, score=page.score,
                           threshold=page.threshold, decision=page.decision, saliency=page.saliency,
                           leads=page.leads, input_layout=page.input_layout, input_samples=page.input_samples,
                           note=page.note, **kwargs)


def save_png(fig: Figure, path: str | os.PathLike, dpi: int = 200) -> Path:
    """Write ``fig`` as a PNG at ``dpi`` (200: about 8 pixels per millimetre of paper, so the 1 mm grid
    stays visible), atomically."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))


def save_pdf(pages: Iterable[ECGPage | Figure], path: str | os.PathLike, **kwargs) -> Path:
    """One multi-page PDF (vector graphics, true-size paper), one page per :class:`ECGPage` or
    ``Figure``, written atomically; figures are built one at a time (``kwargs`` go to
    :func:`page_figure`). Raises :class:`ECGPageError` when there are no pages."""

    def write(tmp: Path) -> None:
        n = 0
        with PdfPages(tmp) as pdf:
            for page in pages:
                pdf.savefig(page if isinstance(page, Figure) else page_figure(page, **kwargs))
                n += 1
        if not n:
            raise ECGPageError(f"pages: no pages to write to {path}")

    return atomic_write(path, write)
