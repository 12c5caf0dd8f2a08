"""The matplotlib reference renderer (the paper's approach) and the parity checks of the fast renderers
against it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from heartbeit_lib.render.geometry import (RenderError, _check_signal, _finish, _get_layout, _image_size,
                                          _make_style)
from heartbeit_lib.render.numpy_renderer import render_ecg


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
