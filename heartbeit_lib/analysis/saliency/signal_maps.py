"""Saliency of the signal models (1-D: (N, leads, T) -> logits), as lead x time maps.

Methods (:func:`signal_saliency`)
---------------------------------
``ig``
    Integrated gradients (Sundararajan et al. 2017) from the flat-line baseline (0 mV on every lead):
    ``|x * mean_k grad f(k/m x)|`` over ``m`` midpoint steps; one value per lead and sample, so it serves
    every signal model (xresnet1d101, inception1d, ST-MEM) and gives per-lead shares.
``gradcam``
    Grad-CAM on the last convolutional block of the CNNs (xresnet1d101: the last bottleneck stage;
    inception1d: the last residual join), ReLU of the gradient-weighted channel sum, linearly upsampled
    to the input length. The 1-D features have no lead axis: the time profile is the same on every lead,
    so its lead shares are uniform by construction (use ``ig`` for "which lead").

Every map is float32 (N, leads, T) in [0, 1], min-max scaled per record over lead x time (a constant
map is all zeros), at the model's input rate; :func:`to_store_rate` repeats it onto the store's 500 Hz
samples (where the R peaks and segments live) and :func:`to_image` draws it into the rendered layout, so
the 06 overlays and the per-lead / per-segment shares (:func:`attribution.attribute_signal_maps`) are the
image models' own.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from heartbeit_lib import render
from heartbeit_lib.analysis.saliency.errors import SaliencyError, UnsupportedMethodError
from heartbeit_lib.models.signal_models import Inception1d, XResNet1d

SIGNAL_METHODS = ("ig", "gradcam")
IG_STEPS = 32  # midpoint Riemann steps of integrated gradients


def gradcam_layer(model: nn.Module) -> nn.Module:
    """The last convolutional block of a signal CNN; :class:`UnsupportedMethodError` for ST-MEM."""
    if isinstance(model, XResNet1d):
        return model[-2]  # last bottleneck stage (the head follows)
    if isinstance(model, Inception1d):
        return model.shortcuts[-1] if model.residual else model.blocks[-1]
    raise UnsupportedMethodError(f"gradcam needs a 1-D CNN (xresnet1d101, inception1d), got {type(model).__name__}")


def _scale(maps: torch.Tensor) -> np.ndarray:
    flat = maps.reshape(len(maps), -1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    out = torch.where(hi > lo, (flat - lo) / (hi - lo).clamp(min=1e-12), torch.zeros_like(flat))
    return out.reshape(maps.shape).float().numpy()


def _target(logits: torch.Tensor, target_class: int | None) -> torch.Tensor:
    cls = logits.argmax(1) if target_class is None else torch.full((len(logits),), target_class)
    return logits.gather(1, cls[:, None].to(logits.device)).sum()


def _ig(model: nn.Module, x: torch.Tensor, target_class: int | None, steps: int) -> torch.Tensor:
    grads = torch.zeros_like(x)
    for k in range(steps):
        xi = (x * (k + 0.5) / steps).requires_grad_(True)
        grads += torch.autograd.grad(_target(model(xi), target_class), xi)[0]
    return (x * grads / steps).abs()


def _gradcam(model: nn.Module, x: torch.Tensor, target_class: int | None) -> torch.Tensor:
    layer, store = gradcam_layer(model), {}
    hook = layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        x = x.clone().requires_grad_(True)  # so the hooked activation is part of a graph even with frozen weights
        logits = model(x)
        act = store["a"]
        grad = torch.autograd.grad(_target(logits, target_class), act)[0]
    finally:
        hook.remove()
    cam = F.relu((grad.mean(-1, keepdim=True) * act).sum(1, keepdim=True))          # (N, 1, T'')
    cam = F.interpolate(cam, size=x.shape[-1], mode="linear", align_corners=False)   # (N, 1, T)
    return cam.expand(-1, x.shape[1], -1).detach()


def signal_saliency(model: nn.Module, signals, method: str = "ig", target_class: int | None = 1,
                    batch_size: int = 16, steps: int = IG_STEPS) -> np.ndarray:
    """Lead x time saliency of a signal classifier.

    Parameters
    ----------
    model : (N, leads, T) float -> (N, classes) logits, in eval mode.
    signals : (N, leads, T) float, the model's input (``prepare_signals`` output: millivolts at its rate).
    method : ``ig`` or ``gradcam`` (CNNs only); see the module docstring.
    target_class : class whose logit is explained; None = the predicted class.

    Returns
    -------
    float32 (N, leads, T) in [0, 1], min-max scaled per record.
    """
    if method not in SIGNAL_METHODS:
        raise SaliencyError(f"method={method!r}: signal models support {list(SIGNAL_METHODS)}")
    x_all = torch.as_tensor(np.asarray(signals), dtype=torch.float32)
    if x_all.ndim != 3:
        raise SaliencyError(f"signals: expected (N, leads, T), got {tuple(x_all.shape)}")
    device = next(model.parameters()).device
    model.eval()
    out = []
    for s in range(0, len(x_all), batch_size):
        x = x_all[s:s + batch_size].to(device)
        m = _ig(model, x, target_class, steps) if method == "ig" else _gradcam(model, x, target_class)
        out.append(_scale(m.cpu()))
    return np.concatenate(out) if out else np.zeros(x_all.shape, np.float32)


def to_store_rate(maps: np.ndarray, n_samples: int) -> np.ndarray:
    """(N, leads, T') maps at the model's rate -> (N, leads, n_samples): store sample t takes the model
    sample ``floor(t * T' / n_samples)`` (the one whose interval holds it)."""
    maps = np.asarray(maps)
    idx = np.minimum((np.arange(n_samples) * maps.shape[-1]) // n_samples, maps.shape[-1] - 1)
    return maps[..., idx]


def to_image(maps: np.ndarray, size: int, layout: str = "stack8") -> np.ndarray:
    """(N, 8, T) lead x time maps (store order ``render.LEADS``) -> (N, size, size) maps drawn in the
    layout the image models see: each panel's rows get the mean of its lead's samples per pixel column."""
    maps = np.asarray(maps, dtype=np.float32)
    geo = render.layout_geometry(layout, (size, size), maps.shape[-1])
    out = np.zeros((len(maps), size, size), np.float32)
    for p in geo["panels"]:
        y0, y1 = geo["bands"][p["band"]]
        lead = render.LEADS.index(p["lead"])
        edges = np.linspace(p["t0"], p["t1"], p["x1"] - p["x0"] + 1).round().astype(np.int64)
        edges[1:] = np.maximum(edges[1:], edges[:-1] + 1)
        cum = np.concatenate([np.zeros((len(maps), 1)), np.cumsum(maps[:, lead], axis=1)], axis=1)
        hi = np.minimum(edges[1:], maps.shape[-1])
        lo = np.minimum(edges[:-1], hi - 1)
        cols = (cum[:, hi] - cum[:, lo]) / (hi - lo)
        out[:, y0:y1, p["x0"]:p["x1"]] = cols[:, None, :]
    return out
