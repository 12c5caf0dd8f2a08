"""Saliency maps of ECG-image classifiers: FullGrad, Grad-CAM and attention rollout (one API for the four model
families; see :mod:`heartbeit_lib.analysis.saliency` for what each method computes on a ViT/BEiT).

Every map is a float32 (H, W) array in [0, 1] (min-max scaled per image), pixel-aligned with the image the
model saw.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from pytorch_grad_cam import FullGrad, GradCAM
from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients
from pytorch_grad_cam.utils.find_layers import find_layer_predicate_recursive
from pytorch_grad_cam.utils.image import scale_accross_batch_and_channels, scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from timm.models.beit import Beit
from timm.models.vision_transformer import VisionTransformer

from heartbeit_lib.analysis.saliency.errors import SaliencyError, UnsupportedMethodError

METHODS: tuple[str, ...] = ("fullgrad", "gradcam", "rollout")


def model_family(model: nn.Module) -> str:
    """``vit`` (timm VisionTransformer), ``beit`` (timm Beit), ``resnet`` (timm/torchvision ResNet),
    ``efficientnet`` (torchvision EfficientNet) or ``cnn`` (any other model with a Conv2d)."""
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
    def pred(layer):  # copied from pytorch_grad_cam.FullGrad.__init__ (layer_with_2D_bias)
        return type(layer) in (nn.Conv2d, nn.BatchNorm2d) and layer.bias is not None

    names = {id(m): n for n, m in model.named_modules()}
    return [names[id(m)] for m in find_layer_predicate_recursive(model, pred)]


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
