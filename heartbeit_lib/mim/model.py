"""The BEiT masked image model (MIM): backbone + mask token + LayerNorm + linear head over the tokenizer's vocabulary.

:class:`MIMModel` = ``models.create_backbone(size, img_size)`` (timm BEiT: relative position bias, layer scale)
+ a learnable mask token that replaces the patch embeddings of masked patches + LayerNorm + a linear head;
the loss is cross-entropy on the masked positions only (BEiT eq. 1).  The backbone's pooled-feature
``fc_norm`` is unused by MIM (it is frozen here and fine-tuned later).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from timm.optim import param_groups_layer_decay

from heartbeit_lib.models import registry as models

NORMALIZE = {"mean": list(models.DEFAULT_MEAN), "std": list(models.DEFAULT_STD)}  # [0, 1] -> [-1, 1]


class MIMModel(nn.Module):
    """BEiT masked image model: backbone + mask token + LayerNorm + linear head over the vocabulary.

    Parameters
    ----------
    backbone : timm ``Beit`` from :func:`models.create_backbone`.
    vocab_size : tokenizer vocabulary (8192 for DALL-E).
    """

    def __init__(self, backbone: nn.Module, vocab_size: int):
        super().__init__()
        self.backbone = backbone
        d = backbone.embed_dim
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        # timm's Beit with avg pooling has norm = Identity (its fc_norm acts on pooled features)
        self.norm = nn.LayerNorm(d, eps=1e-6) if isinstance(backbone.norm, nn.Identity) else nn.Identity()
        self.head = nn.Linear(d, vocab_size)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        fc_norm = getattr(backbone, "fc_norm", None)
        if isinstance(fc_norm, nn.Module):
            fc_norm.requires_grad_(False)  # unused by MIM; DDP must not wait for its gradients
        self.vocab_size = vocab_size

    @property
    def num_layers(self) -> int:
        return len(self.backbone.blocks)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameter names without weight decay: the backbone's (timm) and the mask token."""
        return {"mask_token"} | {f"backbone.{n}" for n in self.backbone.no_weight_decay()}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's layer grouping of the backbone under ``backbone.``, with the mask token among the embeddings;
        what no pattern matches (the MIM norm and head) is timm's last layer."""
        inner = self.backbone.group_matcher(coarse)
        blocks = inner["blocks"] if isinstance(inner["blocks"], (list, tuple)) else [(inner["blocks"], None)]
        under = lambda p: rf"^backbone\.(?:{p.lstrip('^')})"  # noqa: E731
        return {"stem": rf"^mask_token|{under(inner['stem'])}",
                "blocks": [(under(p), suffix) for p, suffix in blocks]}

    def encode(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Backbone tokens with masked patch embeddings replaced by the mask token.

        images : float (B, 3, H, W), normalised; mask : bool (B, h, w) or (B, h*w), True = masked
        (None = nothing masked, which equals the backbone's ``forward_features``).
        Returns (B, 1 + h*w, D) after the backbone's final norm (class token first).
        """
        bb = self.backbone
        x = bb.patch_embed(images)                                   # (B, N, D)
        if mask is not None:
            w = mask.reshape(x.shape[0], -1).unsqueeze(-1).to(x.dtype)
            x = x * (1 - w) + self.mask_token.to(x.dtype) * w
        x = torch.cat((bb.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        if bb.pos_embed is not None:
            x = x + bb.pos_embed
        x = bb.pos_drop(x)
        rel = bb.rel_pos_bias() if bb.rel_pos_bias is not None else None
        for blk in bb.blocks:
            x = blk(x, shared_rel_pos_bias=rel)
        return bb.norm(x)

    def forward(self, images: torch.Tensor, mask: torch.Tensor, num_masked: int | None = None) -> torch.Tensor:
        """Logits of the masked patches.

        Parameters
        ----------
        images : float (B, 3, H, W), normalised.
        mask : bool (B, h, w) or (B, h*w), True = masked.
        num_masked : masked patches per image when every image has the same count (static shapes
            for ``torch.compile``, no host sync); None uses boolean indexing.

        Returns
        -------
        (B * num_masked, vocab) logits in row-major order of (image, masked position).
        """
        m = mask.reshape(mask.shape[0], -1)
        x = self.norm(self.encode(images, m))[:, 1:]                 # (B, N, D)
        if num_masked is None:
            x = x[m]
        else:
            idx = masked_positions(m, num_masked)                    # (B, K)
            x = x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1])).flatten(0, 1)
        return self.head(x)


def masked_positions(mask: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (B, k) of the True entries of a (B, N) mask with exactly k per row, ascending."""
    return torch.argsort(mask.to(torch.int8), dim=1, descending=True, stable=True)[:, :k]


def mim_targets(tokens: torch.Tensor, mask: torch.Tensor, num_masked: int | None = None) -> torch.Tensor:
    """Token ids of the masked patches, in :meth:`MIMModel.forward`'s order: (B * k,) int64."""
    t = tokens.reshape(tokens.shape[0], -1)
    m = mask.reshape(mask.shape[0], -1)
    if num_masked is None:
        return t[m]
    return t.gather(1, masked_positions(m, num_masked)).flatten()


def param_groups(model: MIMModel, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """AdamW parameter groups from ``timm.optim.param_groups_layer_decay``: no weight decay for 1-D parameters
    and ``model.no_weight_decay()``; ``lr_scale = layer_decay ** (L + 1 - layer)`` with the layers of
    ``model.group_matcher()`` (0 = embeddings and tokens, i + 1 = block i, L + 1 = final norm and MIM head)."""
    return param_groups_layer_decay(model, weight_decay, no_weight_decay_list=model.no_weight_decay(),
                                    layer_decay=layer_decay)


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warmup over ``warmup`` steps, then cosine from 1 to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class DeviceImages:
    """Loader batches -> the model's normalised float input, on the device, with constants made once.

    Workers ship uint8 grey (B, H, W) (6.4 MB per batch of 128 at 224 px instead of 77 MB of float32 RGB);
    here they become float (B, 3, H, W): ``x / 255`` repeated over 3 channels, then ``(x - mean) / std``
    (``norm``, default :data:`NORMALIZE`).  Float (B, 3, H, W) batches in [0, 1] are normalised as they are.  Same values as
    ``normalize(render._to_images(grey, 3, None))`` bit for bit (same float32 operations in the same order).
    """

    def __init__(self, device: torch.device | str, norm: dict | None = None):
        norm = norm or NORMALIZE  # {mean, std}: the rendered images' own statistics (render.image_stats)
        self.device = torch.device(device)
        self.mean = torch.tensor(norm["mean"], dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(norm["std"], dtype=torch.float32, device=self.device).view(1, -1, 1, 1)

    def __call__(self, images: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True)
        if x.dtype == torch.uint8:
            if x.ndim == 3:
                x = x[:, None]
            x = x.float().div_(255.0).expand(-1, self.mean.shape[1], -1, -1)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def normalize(images: torch.Tensor, norm: dict | None = None) -> torch.Tensor:
    """[0, 1] images (B, 3, H, W) -> the model's input scale: ``(x - mean) / std`` with ``norm``
    {mean, std} (1 or 3 values; the rendered images' own statistics, ``render.image_stats``), None:
    :data:`NORMALIZE` (mean = std = 0.5, checkpoints before issue 18)."""
    norm = norm or NORMALIZE
    mean = torch.tensor(norm["mean"], device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    std = torch.tensor(norm["std"], device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    return (images - mean) / std
