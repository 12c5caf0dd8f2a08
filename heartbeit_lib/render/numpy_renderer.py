"""The numpy renderer :func:`render_ecg`: vectorised over a batch, a few hundred times faster than a
matplotlib figure per ECG (``benchmarks/bench_render.py``).

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
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from heartbeit_lib.render.geometry import (_Group, _Layout, _check_signal, _finish, _get_layout, _image_size,
                                          _make_style)


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
