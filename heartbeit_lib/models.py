"""Model registry shared by pretraining (02) and fine-tuning (03).

Backbone sizes for the BEiT/HeartBEiT family. ``base`` is the paper's BEiT-B/16
(12 layers, width 768, 12 heads, about 86M parameters); the smaller sizes run the same code
on a CPU for tests and CPU-scale experiments.
"""

from __future__ import annotations

import timm
import torch.nn as nn

# name -> timm Beit keyword overrides of beit_base_patch16_224
BEIT_SIZES: dict[str, dict] = {
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "micro": dict(embed_dim=64, depth=2, num_heads=2),  # tests: ~0.1M parameters
}


def create_backbone(size: str = "base", img_size: int = 224, patch_size: int = 16,
                    drop_path_rate: float = 0.1, **kw) -> nn.Module:
    """A timm ``Beit`` (relative position bias, layer scale) without a classifier head.

    Parameters
    ----------
    size : one of :data:`BEIT_SIZES`.
    img_size : input images are (B, 3, img_size, img_size); the token grid is img_size // patch_size square.
    """
    if size not in BEIT_SIZES:
        raise ValueError(f"unknown BEiT size {size!r}; choose one of {sorted(BEIT_SIZES)}")
    args = dict(BEIT_SIZES[size], img_size=img_size, patch_size=patch_size,
                drop_path_rate=drop_path_rate, num_classes=0,
                use_abs_pos_emb=False, use_rel_pos_bias=True, init_values=0.1)
    args.update(kw)
    return timm.create_model("beit_base_patch16_224", pretrained=False, **args)
