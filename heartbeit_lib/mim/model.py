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

from heartbeit_lib.classify import registry as models

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
    """AdamW parameter groups with BEiT's no-decay set and optional layer-wise lr decay.

    No weight decay: biases, norms, layer-scale gammas (all 1-D), ``cls_token``, ``mask_token``,
    ``pos_embed`` and relative position bias tables.  Layer ids: 0 = embeddings and tokens,
    i + 1 = block i, L + 1 = final norm and MIM head; ``lr_scale = layer_decay ** (L + 1 - id)``.
    """
    n_layers = model.num_layers
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        short = name.removeprefix("backbone.")
        no_decay = (p.ndim <= 1 or short in ("cls_token", "mask_token", "pos_embed")
                    or "relative_position_bias_table" in short)
        if short.startswith(("cls_token", "mask_token", "pos_embed", "patch_embed", "rel_pos_bias")):
            layer = 0
        elif short.startswith("blocks."):
            layer = int(short.split(".")[1]) + 1
        else:
            layer = n_layers + 1
        key = (layer, no_decay)
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": 0.0 if no_decay else weight_decay,
                           "lr_scale": float(layer_decay ** (n_layers + 1 - layer)), "layer_id": layer}
        groups[key]["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warmup over ``warmup`` steps, then cosine from 1 to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def normalize(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images (B, 3, H, W) -> the model's input scale (:data:`NORMALIZE`)."""
    mean = torch.tensor(NORMALIZE["mean"], device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    std = torch.tensor(NORMALIZE["std"], device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    return (images - mean) / std
