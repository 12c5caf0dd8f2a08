"""Saliency maps of fine-tuned ECG-image classifiers, their attribution to leads and ECG segments,
and faithfulness checks (notebook ``06_saliency``).

Methods (:func:`saliency_maps`, one common API for the four model families)
--------------------------------------------------------------------------
``fullgrad``
    FullGrad (Srinivas & Fleuret 2019) as the paper used it: ``pytorch_grad_cam.FullGrad``. It sums
    ``|input gradient x input|`` and, for every hooked layer, ``|bias x gradient|`` of that layer's
    output, each channel min-max scaled and upsampled to the image. pytorch-grad-cam hooks **only
    modules whose type is exactly** ``nn.Conv2d`` **or** ``nn.BatchNorm2d`` **and that have a bias**
    (:func:`fullgrad_hooked_layers`). In a CNN that is every BatchNorm (and EfficientNet's
    squeeze-excitation convolutions); in a timm ViT or BEiT it is **only the patch embedding**
    ``patch_embed.proj``: the biases of the 12 transformer blocks (``nn.Linear``, ``nn.LayerNorm``)
    contribute nothing, so on a ViT "FullGrad" is an input-gradient map plus a 14x14 patch-level
    gradient map of the first layer. We keep it because the paper shows it, and add two better
    founded transformer methods. The per-channel upsampling of pytorch-grad-cam is replaced by an
    exactly equivalent sum-then-upsample (:class:`FastFullGrad`; bilinear resizing is linear), which
    avoids a (B, channels, H, W) array per layer (6.5 GB for ResNet-152's last stage at a batch of
    16); ``tests/test_saliency.py`` compares it with the library's own FullGrad.
``gradcam``
    Grad-CAM (``pytorch_grad_cam.GradCAM``) on the last stage: ResNet ``layer4[-1]``, EfficientNet
    ``features[-1]``, and for ViT/BEiT ``blocks[-1].norm1`` (as pytorch-grad-cam's ViT example),
    whose token output (B, N, C) is turned into a feature map by :func:`vit_reshape_transform`
    (prefix/CLS tokens dropped, the h x w patch tokens reshaped to (B, C, h, w)).
``rollout``
    Attention rollout (Abnar & Zuidema 2020), transformers only: per block the attention
    probabilities averaged over heads, ``0.5 A + 0.5 I`` renormalised, multiplied through the blocks.
    Captured by forward hooks on each timm attention's ``attn_drop`` (the post-softmax probabilities,
    which in BEiT already include the relative position bias: the captured matrix is exactly what
    multiplies the values). timm's fused attention (``F.scaled_dot_product_attention``) never
    materialises the probabilities, so ``attn.fused_attn`` is switched off for the pass and restored.
    The read-out follows the classifier: the CLS row for ``global_pool="token"`` (timm ViT), the mean
    of the patch-token rows for ``global_pool="avg"`` (timm BEiT / HeartBEiT, which never reads the
    CLS token). Class-agnostic (``target_class`` is ignored).

Every map is a float32 (H, W) array in [0, 1] (min-max scaled per image), pixel-aligned with the
rendered ECG image the model saw.

Attribution to leads and segments (:func:`attribute_maps`)
----------------------------------------------------------
The rendering geometry (``render.layout_geometry``) says which lead each pixel shows and which
samples each pixel column covers (stack8: 8 bands of H/8 rows, I, II, V1..V6 top to bottom, the full
5 s across the width). R peaks come from :func:`detect_r_peaks` on the preprocessed signal (lead II
band-passed 5-15 Hz, ``scipy.signal.find_peaks``); samples are labelled P ``[-250, -80)`` ms, QRS
``[-80, +80)`` ms, ST-T ``[+80, +450)`` ms relative to each R peak (overlaps: QRS wins over P, P over
ST-T) and ``other`` elsewhere. A pixel column that spans several samples (11 at 224 px for 2,500
samples) is split between segments in proportion. Shares of a map sum to 1 over lead x segment.
:func:`area_shares` gives the same attribution of a uniform map: the share expected by area alone.

Faithfulness (:func:`deletion_insertion`, :func:`road_scores`)
--------------------------------------------------------------
Deletion: erase the most salient pixels first (set them to white paper, 1.0 in [0, 1] image space)
and follow the target-class probability; insertion: start from a blank page and draw the most
salient pixels first. Areas under the curves (fraction of pixels 0..1): a faithful map has a low
deletion AUC and a high insertion AUC, compared with a random map (``method="random"``). Caveat: a
blank or half-erased page is far from every training image, and a model may call it positive (the
faithfulness table reports ``prob_blank``, the probability of the all-white page); when it does,
deletion and insertion disagree. ROAD (Rong et al. 2022; ``pytorch_grad_cam.metrics.road``) fills
removed pixels by noisy linear imputation from their neighbours instead, which keeps the images
closer to the data; it solves a sparse linear system per image and threshold (slow at 224 px).
"""

from __future__ import annotations

import dataclasses
import glob
import io
import json
import math
import os
import typing
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from pytorch_grad_cam import FullGrad, GradCAM
from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients
from pytorch_grad_cam.utils.image import scale_accross_batch_and_channels, scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget

from heartbeit_lib.classify import registry as models
from heartbeit_lib.pipeline import runs

METHODS: tuple[str, ...] = ("fullgrad", "gradcam", "rollout")
SEGMENTS: tuple[str, ...] = ("P", "QRS", "ST-T", "other")
#: segment windows relative to each R peak, milliseconds [start, end)
SEGMENT_WINDOWS_MS: dict[str, tuple[float, float]] = {"P": (-250.0, -80.0), "QRS": (-80.0, 80.0),
                                                      "ST-T": (80.0, 450.0)}
#: overlapping windows of neighbouring beats: later entries win
SEGMENT_PRIORITY: tuple[str, ...] = ("ST-T", "P", "QRS")
R_PEAK_BAND_HZ: tuple[float, float] = (5.0, 15.0)  # QRS energy band of the detector
WHITE = 1.0  # blank paper in [0, 1] image space: the deletion baseline
FS = 500.0   # Hz of the stored signals


class SaliencyError(ValueError):
    """A saliency input that cannot be used (the message names the parameter and the reason)."""


class UnsupportedMethodError(SaliencyError):
    """The method does not apply to the model (e.g. attention rollout on a CNN)."""


class FinetuneRunError(SaliencyError):
    """A 03_finetune run folder cannot be found or rebuilt (names the folder/file and the reason)."""


# ======================================================================== model introspection


def model_family(model: nn.Module) -> str:
    """``vit`` (timm VisionTransformer), ``beit`` (timm Beit), ``resnet`` (timm/torchvision ResNet),
    ``efficientnet`` (torchvision EfficientNet) or ``cnn`` (any other model with a Conv2d)."""
    from timm.models.beit import Beit
    from timm.models.vision_transformer import VisionTransformer

    if isinstance(model, Beit):
        return "beit"
    if isinstance(model, VisionTransformer):
        return "vit"
    name = type(model).__name__
    if name == "ResNet" and hasattr(model, "layer4"):
        return "resnet"
    if name == "EfficientNet" and hasattr(model, "features"):
        return "efficientnet"
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return "cnn"
    raise SaliencyError(f"model: {type(model).__name__} is neither a timm ViT/BEiT nor a CNN with Conv2d layers")


def is_transformer(model: nn.Module) -> bool:
    return model_family(model) in ("vit", "beit")


def token_grid(model: nn.Module) -> tuple[int, int, int]:
    """(h, w, prefix) of a timm transformer: the patch-token grid and the number of prefix tokens
    (CLS, registers) that precede the patch tokens."""
    if not is_transformer(model):
        raise SaliencyError(f"model: {type(model).__name__} has no token grid (not a timm ViT/BEiT)")
    h, w = (int(v) for v in model.patch_embed.grid_size)
    return h, w, int(getattr(model, "num_prefix_tokens", 1))


def vit_reshape_transform(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The ``reshape_transform`` of pytorch-grad-cam for a timm ViT/BEiT.

    Token tensors (B, N, C) with N = prefix + h*w: the prefix (CLS) tokens are dropped and the patch
    tokens reshaped to a feature map (B, C, h, w), row-major as the patch embedding flattened them.
    4-D tensors (B, C, h, w) - the patch embedding convolution that FullGrad hooks - pass unchanged.
    """
    h, w, prefix = token_grid(model)

    def transform(t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 4:
            return t
        if t.dim() != 3 or t.shape[1] != prefix + h * w:
            raise SaliencyError(f"vit_reshape_transform: expected tokens (B, {prefix + h * w}, C) for a {h}x{w} grid "
                                f"with {prefix} prefix token(s), got {tuple(t.shape)}")
        return t[:, prefix:, :].reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)

    return transform


def gradcam_target_layers(model: nn.Module) -> list[nn.Module]:
    """The layer Grad-CAM reads: ViT/BEiT ``blocks[-1].norm1``, ResNet ``layer4[-1]``, EfficientNet
    ``features[-1]``, otherwise the last Conv2d."""
    fam = model_family(model)
    if fam in ("vit", "beit"):
        return [model.blocks[-1].norm1]
    if fam == "resnet":
        return [model.layer4[-1]]
    if fam == "efficientnet":
        return [model.features[-1]]
    return [[m for m in model.modules() if isinstance(m, nn.Conv2d)][-1]]


def fullgrad_hooked_layers(model: nn.Module) -> list[str]:
    """Names of the modules pytorch-grad-cam's FullGrad hooks in ``model`` (its own predicate:
    ``type(layer) in [nn.Conv2d, nn.BatchNorm2d] and layer.bias is not None``). On a timm ViT/BEiT
    this is ``["patch_embed.proj"]`` only."""
    from pytorch_grad_cam.utils.find_layers import find_layer_predicate_recursive

    def pred(layer):  # copied from pytorch_grad_cam.FullGrad.__init__ (layer_with_2D_bias)
        return type(layer) in (nn.Conv2d, nn.BatchNorm2d) and layer.bias is not None

    names = {id(m): n for n, m in model.named_modules()}
    return [names[id(m)] for m in find_layer_predicate_recursive(model, pred)]


# ======================================================================== maps


class _GradientsOnly(ActivationsAndGradients):
    """pytorch-grad-cam's hook holder with only the gradient hooks: FullGrad never reads the
    activations, which for a ResNet-152 are every BatchNorm output of the batch."""

    def __init__(self, model, target_layers, reshape_transform, detach=True):
        self.model, self.gradients, self.activations = model, [], []
        self.reshape_transform, self.detach = reshape_transform, detach
        self.handles = [layer.register_forward_hook(self.save_gradient) for layer in target_layers]


class FastFullGrad(FullGrad):
    """pytorch-grad-cam's FullGrad with the per-channel upsampling moved after the channel sum.

    The library scales each channel of ``|bias x grad|`` to [0, 1], resizes every channel to the
    image (cv2 bilinear) and sums; resizing is linear, so summing the scaled channels at the layer's
    resolution and resizing once gives the same map (to float round-off) without the (B, C, H, W)
    intermediate. Hooks, bias extraction (BatchNorm: ``beta - mean * gamma / sqrt(var + eps)``), the
    input-gradient term and the final scaling are the library's.
    """

    def __init__(self, model, reshape_transform=None):
        super().__init__(model, [], reshape_transform)  # [] = no "target_layers is ignored" print
        self.activations_and_grads.release()
        self.activations_and_grads = _GradientsOnly(model, self.target_layers, reshape_transform)

    def compute_cam_per_layer(self, input_tensor, target_category, eigen_smooth):
        if eigen_smooth:
            raise SaliencyError("FastFullGrad: eigen_smooth is not supported")
        input_grad = input_tensor.grad.data.cpu().numpy()
        grads_list = [g.cpu().data.numpy() for g in self.activations_and_grads.gradients]
        target_size = self.get_target_width_height(input_tensor)
        total = scale_accross_batch_and_channels(np.abs(input_grad * input_tensor.data.cpu().numpy()),
                                                 target_size).sum(axis=1)        # (B, H, W)
        if len(self.bias_data) != len(grads_list):
            raise SaliencyError(f"FullGrad: {len(grads_list)} gradients for {len(self.bias_data)} hooked layers")
        for bias, grads in zip(self.bias_data, grads_list):
            bias_grad = np.abs(bias[None, :, None, None] * grads)              # (B, C, h, w)
            flat = bias_grad.reshape(bias_grad.shape[0] * bias_grad.shape[1], -1)
            flat = flat - flat.min(axis=1, keepdims=True)
            flat = flat / (1e-7 + flat.max(axis=1, keepdims=True))             # scale_cam_image per channel
            summed = flat.reshape(bias_grad.shape).sum(axis=1)                 # (B, h, w)
            for i in range(len(summed)):
                total[i] += _resize(summed[i], target_size)
        return total[:, None]

    def aggregate_multi_layers(self, cam_per_target_layer):
        return scale_cam_image(np.sum(cam_per_target_layer, axis=1))


def _resize(img: np.ndarray, target_size: tuple[int, int]) -> np.ndarray:
    """cv2 bilinear resize to (width, height), as pytorch-grad-cam's ``scale_cam_image``."""
    import cv2

    return cv2.resize(np.float32(img), target_size)


def _as_images(images: Any) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise SaliencyError(f"images: expected a (B, 3, H, W) float tensor, got shape {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        raise SaliencyError(f"images: expected floats in [0, 1], got dtype {x.dtype}")
    return x.float()


def _normalizer(normalization, device):
    if normalization is None:
        return None
    mean, std = normalization
    mean = torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return mean, std


def _device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def saliency_maps(model: nn.Module, images: Any, method: str = "fullgrad", target_class: int | None = 1, *,
                  normalization: tuple[Sequence[float], Sequence[float]] | None = None, batch_size: int = 16,
                  head_fusion: str = "mean", rng: np.random.Generator | None = None) -> np.ndarray:
    """Saliency maps of ``model`` for ``images``, aligned pixel by pixel.

    Parameters
    ----------
    model : a classifier (B, 3, H, W) -> (B, classes) logits: timm ViT/BEiT, ResNet, EfficientNet or
        another CNN.
    images : (B, 3, H, W) float tensor/array in [0, 1] (1 = white paper), e.g. from
        ``render.RenderedECGDataset(..., channels=3)``.
    method : ``fullgrad``, ``gradcam``, ``rollout`` (transformers only) or ``random`` (uniform noise
        from ``rng``: the baseline of the faithfulness checks).
    target_class : class whose logit is explained (1 = the positive class); None = the predicted class.
    normalization : per-channel (mean, std) the model expects (``(x - mean) / std`` is applied here,
        so the gradients are those of the input the model really sees); None = images as given.
    batch_size : images per backward pass.
    head_fusion : rollout: ``mean``, ``max`` or ``min`` over heads.

    Returns
    -------
    np.ndarray float32 (B, H, W) in [0, 1], min-max scaled per image (a constant map is all zeros).
    """
    x = _as_images(images)
    if method == "random":
        if rng is None:
            raise SaliencyError("method 'random' needs rng=np.random.default_rng(seed)")
        return rng.random((x.shape[0],) + tuple(x.shape[2:])).astype(np.float32)
    if method not in METHODS:
        raise SaliencyError(f"method={method!r}: choose one of {list(METHODS) + ['random']}")
    if batch_size < 1:
        raise SaliencyError(f"batch_size={batch_size}: must be >= 1")
    if method == "rollout":
        return attention_rollout(model, x, normalization=normalization, batch_size=batch_size,
                                 head_fusion=head_fusion)

    device = _device(model)
    norm = _normalizer(normalization, device)
    reshape = vit_reshape_transform(model) if is_transformer(model) else None
    was_training = model.training
    out = []
    try:
        with torch.enable_grad():
            if method == "fullgrad":
                cam = FastFullGrad(model, reshape_transform=reshape)
            else:
                cam = GradCAM(model, gradcam_target_layers(model), reshape_transform=reshape)
            with cam:
                for i in range(0, x.shape[0], batch_size):
                    xb = x[i:i + batch_size].to(device)
                    if norm is not None:
                        xb = (xb - norm[0]) / norm[1]
                    targets = None if target_class is None else [ClassifierOutputTarget(int(target_class))] * len(xb)
                    out.append(np.asarray(cam(input_tensor=xb, targets=targets), dtype=np.float32))
    finally:
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    maps = np.concatenate(out) if out else np.zeros((0,) + tuple(x.shape[2:]), np.float32)
    return np.clip(maps, 0.0, 1.0)


def attention_probabilities(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Post-softmax attention of every block for a batch of model inputs (already normalised).

    Hooks each ``blocks[i].attn.attn_drop`` (identity at eval) with ``fused_attn`` switched off;
    in BEiT the captured probabilities include the relative position bias. Returns a list of
    (B, heads, N, N) float32 tensors, one per block; the model's state is restored afterwards.
    """
    if not is_transformer(model):
        raise UnsupportedMethodError(f"attention rollout needs a timm ViT/BEiT; got {type(model).__name__} "
                                     f"({model_family(model)}): use fullgrad or gradcam")
    attns = [b.attn for b in model.blocks]
    if not all(hasattr(a, "attn_drop") and hasattr(a, "fused_attn") for a in attns):
        raise UnsupportedMethodError("attention rollout: the blocks' attention modules lack attn_drop/fused_attn "
                                     "(not timm's Attention)")
    captured: list[torch.Tensor] = []
    fused = [a.fused_attn for a in attns]
    handles = [a.attn_drop.register_forward_hook(lambda m, i, o: captured.append(o.detach().float()))
               for a in attns]
    was_training = model.training
    try:
        for a in attns:
            a.fused_attn = False
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for a, f in zip(attns, fused):
            a.fused_attn = f
        for h in handles:
            h.remove()
        model.train(was_training)
    return captured


def rollout_from_attentions(attentions: Sequence[torch.Tensor], head_fusion: str = "mean") -> torch.Tensor:
    """Abnar & Zuidema's rollout: prod over blocks of renorm(0.5 * fuse_heads(A) + 0.5 * I).

    attentions : per block (B, heads, N, N) row-stochastic. Returns (B, N, N); row i = how much
    each input token flows into output token i.
    """
    if head_fusion not in ("mean", "max", "min"):
        raise SaliencyError(f"head_fusion={head_fusion!r}: choose mean, max or min")
    result = None
    for a in attentions:
        a = {"mean": a.mean(1), "max": a.amax(1), "min": a.amin(1)}[head_fusion]   # (B, N, N)
        eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = 0.5 * a + 0.5 * eye
        a = a / a.sum(-1, keepdim=True)
        result = a if result is None else a @ result
    return result


def attention_rollout(model: nn.Module, images: Any, *, normalization=None, batch_size: int = 16,
                      head_fusion: str = "mean") -> np.ndarray:
    """Attention-rollout maps (B, H, W) float32 in [0, 1] (see the module docstring)."""
    import torch.nn.functional as F

    x = _as_images(images)
    if not is_transformer(model):
        raise UnsupportedMethodError(f"attention rollout needs a timm ViT/BEiT; got {type(model).__name__} "
                                     f"({model_family(model)}): use fullgrad or gradcam")
    h, w, prefix = token_grid(model)
    pool = getattr(model, "global_pool", "token")
    device = _device(model)
    norm = _normalizer(normalization, device)
    out = []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i:i + batch_size].to(device)
        if norm is not None:
            xb = (xb - norm[0]) / norm[1]
        roll = rollout_from_attentions(attention_probabilities(model, xb), head_fusion)
        if pool == "avg":  # the head reads the mean of the patch tokens
            r = roll[:, prefix:, prefix:].mean(1)
        else:              # "token": the head reads the CLS token
            r = roll[:, 0, prefix:]
        r = r.reshape(-1, 1, h, w)
        r = F.interpolate(r, size=tuple(x.shape[2:]), mode="bilinear", align_corners=False)[:, 0]
        lo = r.flatten(1).amin(1).view(-1, 1, 1)
        span = r.flatten(1).amax(1).view(-1, 1, 1) - lo
        out.append(((r - lo) / torch.where(span > 0, span, torch.ones_like(span))).cpu().numpy().astype(np.float32))
    return np.clip(np.concatenate(out), 0.0, 1.0) if out else np.zeros((0,) + tuple(x.shape[2:]), np.float32)


# ======================================================================== faithfulness


@torch.no_grad()
def _probabilities(model: nn.Module, x: torch.Tensor, target_class: int, norm, batch_size: int) -> np.ndarray:
    device = _device(model)
    out = []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i:i + batch_size].to(device)
        if norm is not None:
            xb = (xb - norm[0]) / norm[1]
        out.append(torch.softmax(model(xb).float(), dim=1)[:, target_class].cpu())
    return torch.cat(out).numpy().astype(np.float64)


def predict_proba(model: nn.Module, images: Any, target_class: int = 1, normalization=None,
                  batch_size: int = 32) -> np.ndarray:
    """Probability of ``target_class`` (softmax over the logits), (B,) float64."""
    x = _as_images(images)
    was = model.training
    model.eval()
    try:
        return _probabilities(model, x, int(target_class), _normalizer(normalization, _device(model)), batch_size)
    finally:
        model.train(was)


def deletion_insertion(model: nn.Module, images: Any, maps: np.ndarray, target_class: int = 1, *,
                       steps: int = 20, normalization=None, baseline: float = WHITE,
                       batch_size: int = 32) -> dict[str, np.ndarray]:
    """Pixel deletion and insertion curves.

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
            dele[i] = _probabilities(model, torch.where(mask, blank, img), target_class, norm, batch_size)
            ins[i] = _probabilities(model, torch.where(mask, img, blank), target_class, norm, batch_size)
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
    from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirstAverage, ROADMostRelevantFirstAverage

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


# ======================================================================== R peaks and segments


def detect_r_peaks(x: np.ndarray, fs: float = FS, lead: int = 1, band: tuple[float, float] = R_PEAK_BAND_HZ,
                   min_rr_s: float = 0.3, rel_height: float = 0.35, refine_ms: float = 40.0) -> list[np.ndarray]:
    """R-peak sample indices of each ECG: a simple detector, adequate for clean 5-s records.

    1. lead ``lead`` (1 = II in the stored order I, II, V1-V6) band-passed ``band`` Hz (zero-phase
       Butterworth, order 2: QRS energy, P/T waves and baseline wander suppressed);
    2. ``scipy.signal.find_peaks`` on its absolute value: peaks >= ``min_rr_s`` apart (<= 200 bpm)
       and above ``rel_height`` x the 99th percentile;
    3. each peak moved to the largest deviation of the unfiltered lead from its local baseline
       (median over +-200 ms) within +-``refine_ms`` (the R, or the S/QS wave of a negative
       complex); a peak that lands on the first or last sample (a complex cut by the record's
       edge) is dropped.

    Parameters
    ----------
    x : (N, 8, T) or (8, T) microvolts at ``fs`` Hz (the preprocessed signal).

    Returns
    -------
    list of N sorted int64 arrays.
    """
    import scipy.signal

    from heartbeit_lib.signals import bandpass

    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or not 0 <= lead < arr.shape[1]:
        raise SaliencyError(f"x: expected (N, leads, T) microvolts with lead {lead}, got shape {np.shape(x)}")
    sig = arr[:, lead]
    env = np.abs(bandpass(sig, fs, band=band, order=2))
    half = max(int(round(refine_ms / 1000.0 * fs)), 1)
    base = max(int(round(0.2 * fs)), half + 1)  # local baseline: median over +-200 ms
    out = []
    for raw, e in zip(sig, env):
        thr = rel_height * np.percentile(e, 99)
        if not thr > 0:
            out.append(np.zeros(0, np.int64))
            continue
        pk, _ = scipy.signal.find_peaks(e, height=thr, distance=max(int(min_rr_s * fs), 1))
        refined = []
        for p in pk:
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
    from heartbeit_lib import render

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


# ======================================================================== fine-tuning runs


@dataclasses.dataclass(frozen=True)
class SaliencyConfig(runs.TypedConfig):
    """Parameters of ``notebooks/06_saliency.ipynb`` (names equal the notebook's parameter names)."""

    finetune_runs: str = "outputs/03_finetune"  # comma-separated 03_finetune run folders, sweep folders or globs
    cohort_run: str = ""             # cohort store; "" = each run's own cohort_run (config.yaml)
    method: str = "fullgrad"         # comma-separated of fullgrad, gradcam, rollout; the first drives the figures
    n_examples: int = 32             # records per task drawn from `split` (maps and attribution)
    n_figures: int = 4               # of those, records drawn as overlay figures
    positives_only: bool = True      # draw only label-1 records
    split: str = "test"              # split to draw from
    target_class: int = 1            # class whose logit is explained
    faithfulness: bool = True        # deletion/insertion curves for every applicable method + random maps
    n_faithfulness: int = 16         # records per run for the faithfulness checks
    deletion_steps: int = 20         # points on the deletion/insertion curves
    road: bool = False               # also ROAD (noisy linear imputation; slow at 224 px)
    road_percentiles: str = "10,30,50,70,90"  # ROAD thresholds (percent of pixels)
    batch_size: int = 16             # images per saliency pass
    device: str = "auto"             # auto (cuda if available), cpu, cuda, cuda:N
    seed: int = 0                    # draws the records and the random baseline maps
    out_root: str = "outputs"        # root of run folders
    run_id: str = ""                 # run folder name ("" = timestamp)

    choices: typing.ClassVar[dict[str, tuple]] = {"split": ("train", "val", "test", "external")}

    def validate(self) -> None:
        if not self.finetune_runs.strip():
            raise runs.ConfigError("parameter 'finetune_runs': empty; pass 03_finetune run folders or a sweep folder")
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise runs.ConfigError(f"parameter 'method': {bad or self.method!r} not in {list(METHODS)}")
        for name in ("n_examples", "batch_size", "deletion_steps"):
            if getattr(self, name) < 1:
                raise runs.ConfigError(f"parameter {name!r}: {getattr(self, name)} must be >= 1")
        for name in ("n_figures", "n_faithfulness"):
            if getattr(self, name) < 0:
                raise runs.ConfigError(f"parameter {name!r}: {getattr(self, name)} must be >= 0")
        try:
            pct = self.percentiles
        except ValueError:
            pct = None
        if not pct or not all(0 < p < 100 for p in pct):
            raise runs.ConfigError(f"parameter 'road_percentiles': {self.road_percentiles!r} must be integers in 1..99")

    @property
    def methods(self) -> list[str]:
        return [m.strip() for m in self.method.split(",") if m.strip()]

    @property
    def percentiles(self) -> list[int]:
        return [int(p) for p in self.road_percentiles.split(",") if p.strip()]


def find_finetune_runs(finetune_runs: str | Sequence[str]) -> pd.DataFrame:
    """03_finetune runs named by run folders, sweep folders (searched 3 levels deep, as ``plots.list_runs``)
    or glob patterns (comma-separated in one string, or a list).

    Returns
    -------
    DataFrame, one row per complete run with ``model_best.pt``: ``run_dir, task, model, fraction,
    seed, best_epoch, reported_test_auroc`` (when present), ``model_size, image_size`` (as
    ``plots.list_runs``: defaults ``base``, 224), ``layout, cohort_run``; sorted by task, fraction, model
    (the paper's model order), seed.

    Raises
    ------
    FinetuneRunError : an entry matches nothing, or no complete run with weights is found.
    """
    import yaml

    from heartbeit_lib.report import plots

    entries = [e.strip() for e in finetune_runs.split(",")] if isinstance(finetune_runs, str) else list(finetune_runs)
    entries = [e for e in entries if e]
    frames, seen = [], set()
    for e in entries:
        dirs = sorted(p for p in glob.glob(e) if Path(p).is_dir()) if any(ch in e for ch in "*?[") else [e]
        if not dirs or not all(Path(d).is_dir() for d in dirs):
            raise FinetuneRunError(f"parameter 'finetune_runs': {e!r} matches no folder (expected 03_finetune run "
                                   "folders such as outputs/03_finetune/<task>-<model>-f<fraction>-s<seed>, a sweep "
                                   "folder or a glob)")
        for d in dirs:
            t = plots.list_runs(d)
            frames.append(t[~t["run_dir"].isin(seen)])
            seen.update(t["run_dir"])
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if table.empty:
        raise FinetuneRunError(f"parameter 'finetune_runs': no 03_finetune run folder (config.yaml with task, model, "
                               f"fraction, seed) under {entries}")
    has_weights = table["run_dir"].map(lambda d: (Path(d) / "model_best.pt").is_file())
    ok = table[table["complete"] & has_weights].copy()
    if ok.empty:
        raise FinetuneRunError(f"parameter 'finetune_runs': none of the {len(table)} run folder(s) under {entries} is "
                               "finished with model_best.pt (run notebooks/03_finetune.ipynb to completion)")
    extra = []  # list_runs already gives model_size and image_size; adding them again duplicated the columns
    for d in ok["run_dir"]:
        cfg = yaml.safe_load((Path(d) / "config.yaml").read_text()) or {}
        extra.append({"layout": str(cfg.get("layout") or "stack8"), "cohort_run": str(cfg.get("cohort_run") or "")})
    ok = pd.concat([ok.reset_index(drop=True), pd.DataFrame(extra)], axis=1)
    order = {m: i for i, m in enumerate(plots.order_models(ok["model"]))}
    ok["_m"] = ok["model"].map(order)
    ok = ok.sort_values(["task", "fraction", "_m", "seed"]).drop(columns="_m").reset_index(drop=True)
    keep = ["run_dir", "task", "model", "fraction", "seed", "best_epoch", "reported_test_auroc", "model_size",
            "image_size", "layout", "cohort_run"]
    return ok[[c for c in keep if c in ok.columns]]


def _infer_beit_size(sd: Mapping[str, torch.Tensor], run_dir: Path) -> tuple[str, int]:
    """(size, patch_size) of a HeartBEiT state dict, from its shapes and :data:`models.BEIT_SIZES`."""
    try:
        w = sd["patch_embed.proj.weight"]
    except KeyError:
        raise FinetuneRunError(f"{run_dir / 'model_best.pt'}: no patch_embed.proj.weight; "
                               "not a BEiT state dict") from None
    dim, patch = int(w.shape[0]), int(w.shape[-1])
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for name, cfg in models.BEIT_SIZES.items():
        if cfg["embed_dim"] == dim and cfg["depth"] == depth:
            return name, patch
    raise FinetuneRunError(f"{run_dir / 'model_best.pt'}: BEiT with width {dim} and depth {depth} matches no size "
                           f"of models.BEIT_SIZES {sorted(models.BEIT_SIZES)}")


def load_finetune_model(run_dir: str | os.PathLike, device: str | torch.device = "cpu"
                        ) -> tuple[nn.Module, tuple[tuple[float, ...], tuple[float, ...]], dict]:
    """Rebuild a 03_finetune run's model at its chosen epoch (``model_best.pt``).

    The architecture comes from ``config.yaml`` (``model``, ``model_size``, ``image_size``) built
    without pretrained weights (``<name>_scratch``; for ``heartbeit`` the BEiT size and patch size
    are read from the state dict's shapes), then the saved state dict is loaded strictly. The
    normalisation is the one training used (``metrics.json`` ``normalize_mean/std``).

    Returns
    -------
    (model in eval mode on ``device``, (mean, std), config dict)

    Raises
    ------
    FinetuneRunError : missing files, unknown model, or weights that do not fit.
    """
    import yaml

    from heartbeit_lib.classify import finetune

    run_dir = Path(run_dir)
    for f in ("config.yaml", "model_best.pt"):
        if not (run_dir / f).is_file():
            raise FinetuneRunError(f"{run_dir}: no {f}; not a finished 03_finetune run folder")
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    name = str(cfg.get("model", ""))
    try:
        spec = models.model_spec(name)
    except models.UnknownModelError as e:
        raise FinetuneRunError(f"{run_dir / 'config.yaml'}: {e}") from None
    sd = finetune.load_best_weights(run_dir)
    img = int(cfg.get("image_size") or 224)
    size = str(cfg.get("model_size") or "") or None
    if spec.source == "pretrain_checkpoint":
        bsize, patch = _infer_beit_size(sd, run_dir)
        model = models.create_backbone(bsize, img_size=img, patch_size=patch)
        model.reset_classifier(2)
    else:
        arch = name if spec.source is None else f"{name}_scratch"
        kw = {}
        if spec.family in ("vit", "beit") and "patch_embed.proj.weight" in sd:
            kw["patch_size"] = int(sd["patch_embed.proj.weight"].shape[-1])
        model = models.create_model(arch, num_classes=2, size=size, img_size=img, **kw)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise FinetuneRunError(f"{run_dir / 'model_best.pt'} does not fit {name} (size {size or 'base'}, "
                               f"{img} px): {str(e).splitlines()[0]}") from e
    met_p = run_dir / "metrics.json"
    met = json.loads(met_p.read_text()) if met_p.is_file() else {}
    if met.get("normalize_mean") and met.get("normalize_std"):
        norm = (tuple(float(v) for v in met["normalize_mean"]), tuple(float(v) for v in met["normalize_std"]))
    else:
        weights = cfg.get("weights") or cfg.get("pretrain_run") or None
        norm = models.normalization_for(name, weights=weights)
    return model.to(device).eval(), norm, cfg


def select_examples(store, split: str, n: int, positives_only: bool, seed: int) -> np.ndarray:
    """Up to ``n`` store rows of ``split`` (labelled; label 1 only when ``positives_only``), drawn
    with ``np.random.default_rng(seed)`` and returned sorted; the same rows for every model."""
    rows = np.asarray(store.indices(split), np.int64)
    lab = store.manifest["label"].to_numpy()[rows]
    rows = rows[(lab == 1) if positives_only else (lab >= 0)]
    if rows.size == 0:
        raise SaliencyError(f"split {split!r} of store {getattr(store, 'root', '')} holds no "
                            f"{'positive' if positives_only else 'labelled'} ECG")
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(rows)[:n])


@dataclasses.dataclass
class RunMaps:
    """Saliency of one fine-tuning run on the selected records."""

    info: dict                          # run_dir, task, model, fraction, seed, image_size, layout, ...
    records: pd.DataFrame               # row, record_id, label, prob (model's probability of target_class)
    images: np.ndarray                  # uint8 (n, H, W) the rendered ECGs (255 = white)
    maps: dict[str, np.ndarray]         # method -> float16 (n, H, W) in [0, 1] (half the memory; for display)

    @property
    def label(self) -> str:
        from heartbeit_lib.report import plots

        return f"{plots.model_label(self.info['model'])}, {100 * float(self.info['fraction']):g}%"


@dataclasses.dataclass
class SaliencyResult:
    runs: list[RunMaps]
    attribution: pd.DataFrame           # long: one row per run x method x record x lead x segment
    faithfulness: pd.DataFrame          # one row per run x method x record
    skipped: list[str]                  # (run, method) pairs not applicable, with the reason


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _faithfulness_rows(info, method, rec, model, images, maps, norm, cfg: SaliencyConfig) -> list[dict]:
    k = min(cfg.n_faithfulness, len(rec))
    if k == 0:
        return []
    res = deletion_insertion(model, images[:k], maps[:k], cfg.target_class, steps=cfg.deletion_steps,
                             normalization=norm, batch_size=max(cfg.batch_size, cfg.deletion_steps + 1))
    if cfg.road:
        res.update(road_scores(model, images[:k], maps[:k], cfg.target_class, percentiles=cfg.percentiles,
                               normalization=norm, seed=cfg.seed))
    rows = []
    for i in range(k):
        r = {"run": Path(info["run_dir"]).name, "task": info["task"], "model": info["model"],
             "fraction": info["fraction"], "method": method, "record_id": rec["record_id"].iloc[i],
             "label": int(rec["label"].iloc[i]), "prob": float(res["deletion"][i, 0]),
             "prob_blank": float(res["deletion"][i, -1]),
             "deletion_auc": float(res["deletion_auc"][i]), "insertion_auc": float(res["insertion_auc"][i])}
        for key in ("road_morf", "road_lerf", "road_combined"):
            if key in res:
                r[key] = float(res[key][i])
        rows.append(r)
    return rows


def compute(run_table: pd.DataFrame, cfg: SaliencyConfig, progress: bool = False) -> SaliencyResult:
    """Maps, lead/segment attribution and faithfulness for every run of ``run_table``.

    Records are drawn once per task (and cohort store) with :func:`select_examples`, so every model
    and fraction of a task is shown on the same ECGs. Each run renders them at its own image size and
    layout and is explained with every method of ``cfg.method`` that applies (rollout: transformers).
    """
    from heartbeit_lib import cohorts
    from heartbeit_lib import render

    device = _resolve_device(cfg.device)
    stores: dict[str, Any] = {}
    rows_by_store: dict[tuple[str, str], np.ndarray] = {}
    out_runs, attrib, faith, skipped = [], [], [], []
    it = list(run_table.to_dict("records"))
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="saliency", leave=False)
    for info in it:
        cohort = cfg.cohort_run or info.get("cohort_run") or ""
        if not cohort or not Path(cohort).is_dir():
            raise FinetuneRunError(f"run {info['run_dir']}: cohort store {cohort!r} not found; pass -p cohort_run "
                                   "<01_preprocess run folder>")
        if cohort not in stores:
            stores[cohort] = cohorts.CohortStore(cohort)
        store = stores[cohort]
        if getattr(store, "task", info["task"]) != info["task"]:
            raise FinetuneRunError(f"run {info['run_dir']} was trained on task {info['task']!r}, but the cohort store "
                                   f"{cohort} holds task {store.task!r}; leave cohort_run empty or pass that task's store")
        key = (cohort, info["task"])
        if key not in rows_by_store:
            rows_by_store[key] = select_examples(store, cfg.split, cfg.n_examples, cfg.positives_only, cfg.seed)
        rows = rows_by_store[key]
        model, norm, rcfg = load_finetune_model(info["run_dir"], device)
        size = int(rcfg.get("image_size") or 224)
        layout = str(rcfg.get("layout") or "stack8")
        info = dict(info, image_size=size, layout=layout, cohort_run=cohort)
        sig = store.signals(rows)
        grey = render.render_ecg(sig, size, layout)                               # (n, H, W) uint8
        images = torch.from_numpy(grey).float().div(255.0)[:, None].expand(-1, 3, -1, -1).contiguous()
        prob = predict_proba(model, images, cfg.target_class, norm, cfg.batch_size)
        man = store.manifest.iloc[rows]
        rec = pd.DataFrame({"row": rows, "record_id": man["record_id"].astype(str).to_numpy(),
                            "label": man["label"].to_numpy().astype(int), "prob": prob})
        peaks = detect_r_peaks(sig)
        area, leads = area_shares(sig, size, layout, r_peaks=peaks)
        maps: dict[str, np.ndarray] = {}
        for method in cfg.methods:
            if method == "rollout" and not is_transformer(model):
                skipped.append(f"{Path(info['run_dir']).name}: rollout (not a transformer)")
                continue
            maps[method] = saliency_maps(model, images, method, cfg.target_class, normalization=norm,
                                         batch_size=cfg.batch_size)
            shares, _ = attribute_maps(maps[method], sig, layout, r_peaks=peaks)
            attrib.append(_attribution_frame(info, method, rec, shares, area, leads))
        if cfg.faithfulness:
            rng = np.random.default_rng(cfg.seed)
            for method in list(maps) + ["random"]:
                m = maps[method] if method in maps else saliency_maps(model, images, "random", rng=rng)
                faith.extend(_faithfulness_rows(info, method, rec, model, images, m, norm, cfg))
        out_runs.append(RunMaps(info, rec, grey, {k: v.astype(np.float16) for k, v in maps.items()}))
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    attribution = pd.concat(attrib, ignore_index=True) if attrib else pd.DataFrame(
        columns=["run", "task", "model", "fraction", "method", "record_id", "label", "lead", "segment", "share",
                 "area_share"])
    return SaliencyResult(out_runs, attribution, pd.DataFrame(faith), skipped)


def _attribution_frame(info, method, rec, shares, area, leads) -> pd.DataFrame:
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


def save_tables(result: SaliencyResult, run_dir: str | os.PathLike) -> dict[str, Path]:
    """CSV files in ``run_dir``: ``attribution_long.csv`` (every record), ``attribution_lead.csv``,
    ``attribution_segment.csv``, ``attribution_lead_segment.csv`` (means over records),
    ``faithfulness_records.csv``, ``faithfulness.csv`` (means per run and method) and ``records.csv``
    (the explained ECGs with each run's predicted probability)."""
    run_dir = Path(run_dir)
    paths = {}
    tables = {"attribution_long": result.attribution,
              "attribution_lead": attribution_summary(result.attribution, "lead"),
              "attribution_segment": attribution_summary(result.attribution, "segment"),
              "attribution_lead_segment": attribution_summary(result.attribution, "lead_segment"),
              "faithfulness_records": result.faithfulness,
              "faithfulness": faithfulness_summary(result.faithfulness),
              "records": pd.concat([r.records.assign(run=Path(r.info["run_dir"]).name, model=r.info["model"],
                                                     fraction=r.info["fraction"], task=r.info["task"])
                                    for r in result.runs], ignore_index=True)}
    for name, df in tables.items():
        paths[name] = run_dir / f"{name}.csv"
        df.to_csv(paths[name], index=False)
    return paths


# ======================================================================== figures


def _lead_label_positions(layout: str, size: tuple[int, int], n_samples: int = 2500) -> list[tuple[str, float, float]]:
    """(lead, x, y) for a label at the top-left of each panel (stack8: the band centre on the left)."""
    from heartbeit_lib import render

    geo = render.layout_geometry(layout, size, n_samples)
    out = []
    for p in geo["panels"]:
        y0, y1 = geo["bands"][p["band"]]
        name = {"AVR": "aVR", "AVL": "aVL", "AVF": "aVF"}.get(p["lead"], p["lead"])
        out.append((name, float(p["x0"]), (y0 + y1) / 2 if layout == "stack8" else y0 + 0.15 * (y1 - y0)))
    return out


def draw_overlay(ax, image: np.ndarray, smap: np.ndarray, layout: str = "stack8", alpha: float = 0.45,
                 lead_labels: bool = True, cmap: str = "jet") -> None:
    """The ECG image in grey with the saliency map on top (``cmap``, ``alpha``), lead names on the
    y axis (stack8) or at each panel (other layouts)."""
    h, w = image.shape[:2]
    ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.imshow(smap, cmap=cmap, vmin=0, vmax=1, alpha=alpha, interpolation="bilinear")
    ax.set_xticks([])
    ax.set_yticks([])
    if lead_labels:
        pos = _lead_label_positions(layout, (h, w))
        if layout == "stack8":
            ax.set_yticks([y for _, _, y in pos])
            ax.set_yticklabels([n for n, _, _ in pos], fontsize=7)
            ax.tick_params(axis="y", length=0, pad=2)
        else:
            for n, x, y in pos:
                ax.text(x + 1, y, n, fontsize=6, color="k", va="center",
                        bbox=dict(boxstyle="square,pad=0.1", fc="white", ec="none", alpha=0.7))


def overlay_figure(result: SaliencyResult, task: str, record_id: str, method: str, title: str = ""):
    """Figures 5-8 of the paper, for one ECG: rows = training fractions, columns = models, each
    panel the ECG with the run's ``method`` map and its predicted probability. Returns a
    ``matplotlib.figure.Figure`` (not registered with pyplot)."""
    from matplotlib.figure import Figure

    from heartbeit_lib.report import plots

    sel = [r for r in result.runs if r.info["task"] == task and method in r.maps
           and (r.records["record_id"] == record_id).any()]
    if not sel:
        raise SaliencyError(f"no run of task {task!r} has a {method!r} map of record {record_id!r}")
    fracs = sorted({float(r.info["fraction"]) for r in sel})
    mods = plots.order_models({r.info["model"] for r in sel})
    fig = Figure(figsize=(2.7 * len(mods) + 0.3, 2.7 * len(fracs) + 0.5))
    axes = fig.subplots(len(fracs), len(mods), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    first = {}
    for r in sel:  # lead names on the leftmost panel of each row
        i, j = fracs.index(float(r.info["fraction"])), mods.index(r.info["model"])
        first[i] = min(first.get(i, j), j)
    for r in sel:
        i, j = fracs.index(float(r.info["fraction"])), mods.index(r.info["model"])
        k = int(np.flatnonzero(r.records["record_id"].to_numpy() == record_id)[0])
        ax = axes[i, j]
        ax.set_axis_on()
        draw_overlay(ax, r.images[k], r.maps[method][k].astype(np.float32), r.info["layout"],
                     lead_labels=(j == first[i]))
        ax.set_title(f"{plots.model_label(r.info['model'])}, {100 * float(r.info['fraction']):g}%\n"
                     f"p = {r.records['prob'].iloc[k]:.2f}", fontsize=8)
    lab = sel[0].records.set_index("record_id")["label"].get(record_id, "?")
    fig.suptitle(title or f"{plots.task_label(task)}: ECG {record_id} (label {lab}), {method}", fontsize=9)
    fig.tight_layout()
    return fig


def save_overlay_figures(result: SaliencyResult, run_dir: str | os.PathLike, n_figures: int,
                         methods: Sequence[str] | None = None) -> list[Path]:
    """``overlays/<task>-<record_id>-<method>.png`` for the first ``n_figures`` records of each task."""
    out = Path(run_dir) / "overlays"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    tasks = dict.fromkeys(r.info["task"] for r in result.runs)
    for task in tasks:
        runs_t = [r for r in result.runs if r.info["task"] == task]
        recs = runs_t[0].records["record_id"].tolist()[:n_figures]
        for method in (methods or list(dict.fromkeys(m for r in runs_t for m in r.maps))):
            if not any(method in r.maps for r in runs_t):
                continue
            for rid in recs:
                fig = overlay_figure(result, task, rid, method)
                p = out / f"{_safe(task)}-{_safe(rid)}-{method}.png"
                fig.savefig(p, dpi=110)
                paths.append(p)
    return paths


def _safe(s: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(s)).strip("._") or "x"


def plot_attribution(attribution: pd.DataFrame, path: str | os.PathLike | None = None):
    """Bar charts of the mean share per lead and per segment (one bar group per run x method), with
    the share expected from area as black ticks. Returns a ``Figure``."""
    from matplotlib.figure import Figure

    from heartbeit_lib.report import plots

    fig = Figure(figsize=(12, 3.6))
    axes = fig.subplots(1, 2, gridspec_kw=dict(width_ratios=[2, 1]))
    for ax, by in zip(axes, ("lead", "segment")):
        s = attribution_summary(attribution, by)
        s["series"] = s.apply(lambda r: f"{plots.model_label(r['model'])} {100 * r['fraction']:g}% {r['method']}",
                              axis=1)
        cats = list(dict.fromkeys(s[by]))
        series = list(dict.fromkeys(s["series"]))
        width = 0.8 / max(len(series), 1)
        for k, name in enumerate(series):
            d = s[s["series"] == name].set_index(by).reindex(cats)
            ax.bar(np.arange(len(cats)) + (k - (len(series) - 1) / 2) * width, d["share"], width, label=name)
        area = s.groupby(by, sort=False)["area_share"].mean().reindex(cats)
        ax.scatter(np.arange(len(cats)), area, marker="_", s=400, color="k", zorder=3, label="expected from area")
        ax.set_xticks(np.arange(len(cats)))
        ax.set_xticklabels(cats)
        ax.set_ylabel("share of saliency")
        ax.set_title(f"saliency per {by} (mean over records)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def plot_faithfulness(faith: pd.DataFrame, path: str | os.PathLike | None = None):
    """Deletion and insertion AUC per run and method minus the same run's random-map AUC (means over
    ECGs with standard errors; below 0 for deletion and above 0 for insertion = more faithful than
    random). Without random rows the raw AUCs are drawn. Returns a ``Figure``."""
    from matplotlib.figure import Figure

    from heartbeit_lib.report import plots

    fig = Figure(figsize=(11, 3.4))
    axes = fig.subplots(1, 2)
    if faith.empty:
        return fig
    f = faith.copy()
    relative = (f["method"] == "random").any()
    if relative:
        base = f[f["method"] == "random"].set_index(["run", "record_id"])
        for col in ("deletion_auc", "insertion_auc"):
            f[col] = f[col].to_numpy() - base[col].reindex(pd.MultiIndex.from_frame(f[["run", "record_id"]])).to_numpy()
        f = f[f["method"] != "random"]
    s = faithfulness_summary(f)
    if s.empty:
        return fig
    s["run_label"] = s.apply(lambda r: f"{plots.model_label(r['model'])} {100 * r['fraction']:g}%", axis=1)
    cats = list(dict.fromkeys(s["run_label"]))
    methods = list(dict.fromkeys(s["method"]))
    width = 0.8 / len(methods)
    for ax, col, better in zip(axes, ("deletion_auc", "insertion_auc"), ("lower", "higher")):
        for k, m in enumerate(methods):
            d = s[s["method"] == m].set_index("run_label").reindex(cats)
            ax.bar(np.arange(len(cats)) + (k - (len(methods) - 1) / 2) * width, d[col], width,
                   yerr=d[f"{col}_se"], label=m, capsize=2)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(np.arange(len(cats)))
        ax.set_xticklabels(cats, fontsize=7, rotation=20, ha="right")
        name = col.replace("_auc", " AUC")
        ylabel = f"{name} - random" if relative else name
        ax.set_ylabel(f"{ylabel} ({better} = more faithful)", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def overlay_png(result: SaliencyResult, task: str, record_id: str, method: str) -> bytes:
    """:func:`overlay_figure` as PNG bytes (for widgets)."""
    buf = io.BytesIO()
    overlay_figure(result, task, record_id, method).savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def browser(result: SaliencyResult):
    """An ipywidgets explorer: a slider over the explained records of a task, a method and a task
    selector, and the overlay figure (models side by side, fractions in rows). Built with the first
    record drawn, so it also renders in a headless run; interaction needs a live kernel."""
    import ipywidgets as widgets

    tasks = list(dict.fromkeys(r.info["task"] for r in result.runs))
    methods = list(dict.fromkeys(m for r in result.runs for m in r.maps))
    if not tasks or not methods:
        return widgets.HTML("no saliency maps to browse")
    task_w = widgets.Dropdown(options=tasks, value=tasks[0], description="task")
    method_w = widgets.Dropdown(options=methods, value=methods[0], description="method")

    def records(task):
        return next(r for r in result.runs if r.info["task"] == task).records

    slider = widgets.IntSlider(value=0, min=0, max=len(records(tasks[0])) - 1, description="record",
                               continuous_update=False)
    caption = widgets.HTML()
    image = widgets.Image(format="png")

    def redraw(*_):
        rec = records(task_w.value)
        slider.max = len(rec) - 1
        k = min(slider.value, len(rec) - 1)
        rid = rec["record_id"].iloc[k]
        caption.value = f"<b>{task_w.value}</b>: record {rid}, label {int(rec['label'].iloc[k])}"
        try:
            image.value = overlay_png(result, task_w.value, rid, method_w.value)
        except SaliencyError as e:  # e.g. rollout for a task with only CNN runs
            caption.value += f" - {e}"
            image.value = b""

    for w in (task_w, method_w, slider):
        w.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([task_w, method_w]), slider, caption, image])


# ======================================================================== metrics and provenance


def summary_metrics(result: SaliencyResult, cfg: SaliencyConfig) -> dict:
    """``metrics.json``: counts, per run x method the mean share per segment and the top lead, and the
    mean deletion/insertion AUC per run x method (random baseline included)."""
    def num(v):
        return None if v is None or not np.isfinite(v) else round(float(v), 4)

    out: dict[str, Any] = {"n_runs": len(result.runs), "methods": cfg.methods, "split": cfg.split,
                           "positives_only": cfg.positives_only,
                           "n_records": {r.info["task"]: int(len(r.records)) for r in result.runs},
                           "n_zero_maps": {f"{Path(r.info['run_dir']).name}/{m}":
                                           int((v.reshape(len(v), -1).max(1) == 0).sum())
                                           for r in result.runs for m, v in r.maps.items()},
                           "skipped": result.skipped}
    if not result.attribution.empty:
        seg = attribution_summary(result.attribution, "segment")
        lead = attribution_summary(result.attribution, "lead")
        out["segment_share"] = {f"{r}/{m}": {s: num(v) for s, v in zip(g["segment"], g["share"])}
                                for (r, m), g in seg.groupby(["run", "method"], sort=False)}
        out["segment_enrichment"] = {f"{r}/{m}": {s: num(v) for s, v in zip(g["segment"], g["enrichment"])}
                                     for (r, m), g in seg.groupby(["run", "method"], sort=False)}
        out["top_lead"] = {f"{r}/{m}": (str(g.loc[g["share"].idxmax(), "lead"]) if g["share"].notna().any() else None)
                           for (r, m), g in lead.groupby(["run", "method"], sort=False)}
    if not result.faithfulness.empty:
        f = faithfulness_summary(result.faithfulness)
        for col in ("deletion_auc", "insertion_auc", "road_combined"):
            if col in f:
                out[col] = {f"{r}/{m}": num(v) for r, m, v in zip(f["run"], f["method"], f[col])}
    return out


def input_hashes(run_table: pd.DataFrame) -> dict[str, str]:
    """sha256 of each run's ``model_best.pt`` and ``config.yaml``."""
    out = {}
    for d in run_table["run_dir"]:
        for f in ("model_best.pt", "config.yaml"):
            out[f"{Path(d).name}/{f}"] = runs.file_sha256(Path(d) / f)
    return out
