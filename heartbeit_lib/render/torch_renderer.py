"""The torch renderer :func:`render_ecg_torch`: the numpy renderer's algorithm on CPU or GPU tensors (the same
float32 operations, then integer arithmetic; tested to within 1 grey level). Deterministic on every device: no
atomics.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import numpy as np

from heartbeit_lib.render.geometry import LEADS, RenderError, _Layout, _get_layout, _image_size, _make_style


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
