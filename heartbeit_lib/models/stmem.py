"""ST-MEM: spatio-temporal masked ECG modelling (Na et al., ICLR 2024), on timm transformer blocks.

What the paper's code (bakqui/ST-MEM ``models/st_mem.py``, ``models/encoder/st_mem_vit.py``,
``configs/pretrain/st_mem.yaml``) does, and what this module keeps:

- **Tokens.** Each lead is cut into non-overlapping 1-D patches; a patch is embedded by
  LayerNorm(p) -> Linear(p, D) -> LayerNorm(D). Every lead gets a learned SEP token at both ends;
  fixed 1-D sin-cos positional embeddings (zero at the two SEP positions) are shared by all leads,
  a learned lead embedding is added to all tokens of its lead. All leads' tokens form one sequence
  (N, C * (n + 2), D) through a ViT (timm ``Block``: pre-norm, qkv bias, MLP ratio 4).
- **Pretraining.** Per lead, 75 % of the patches are dropped at random (each lead its own random
  subset, the same count per lead); the encoder sees the rest plus SEP tokens. A small transformer
  decoder (width 256, 4 blocks, 4 heads in the paper) runs *per lead* on the kept tokens + mask
  tokens and predicts the raw samples of each patch. Loss: MSE on masked patches only, the target
  normalised per patch (``norm_pix_loss: true``, MAE's per-patch mean/std).
- **Classifier.** Encoder tokens without SEP, mean over leads and patches, the encoder's final
  LayerNorm, then Linear(D, classes) (the paper's ``ST_MEM_ViT.forward``).

Geometry chosen for this repository. The paper: 250 Hz, 2,250-sample crops (9 s), 75-sample patches
(0.3 s), 12 leads, mask ratio 0.75. The cohort store holds 5 s at 500 Hz, 8 leads, and the signal
models read it at ``signal_rate`` Hz (100 by default). We keep the paper's *patch duration* (0.3 s)
and mask ratio: :func:`geometry` gives ``patch_size = round(0.3 * signal_rate)`` samples (30 at
100 Hz, 75 at 250 Hz as in the paper) and ``num_patches = 16`` per lead for a 5 s record (4.8 s;
the last 0.2 s is not used: the encoder drops ``T % patch_size`` trailing samples). Shorter inputs
(2.5 s crops: 8 patches) use the first positional embeddings, as the paper's code does.

Sizes (:data:`STMEM_SIZES`): ``base`` is the paper's ViT-B/75 + 256-wide 4-block decoder,
``small`` its ViT-S; ``micro`` (width 64, 2 blocks) runs the same code in CPU tests and the demo.

Checkpoint contract (written by pretraining, read by ``registry.create_model("stmem", weights=...)``):
``{"backbone": STMEMEncoder.state_dict(), "backbone_config": {size, num_leads, num_patches,
patch_size, signal_rate}, "modality": "signal"}`` (:func:`checkpoint_payload`). The classifier's
``encoder.*`` keys are exactly the backbone's keys, so it loads strictly.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
from timm.models.vision_transformer import Block

FAMILY = "signal"  # model family tag read by downstream code: "image" or "signal"

PATCH_SECONDS = 0.3   # s, the paper's 75 samples at 250 Hz
MASK_RATIO = 0.75     # fraction of each lead's patches hidden from the encoder (paper)
RECORD_SECONDS = 5.0  # s, the cohort store's record length

STMEM_SIZES: dict[str, dict] = {
    "base": dict(embed_dim=768, depth=12, num_heads=12, decoder_dim=256, decoder_depth=4, decoder_heads=4),
    "small": dict(embed_dim=384, depth=12, num_heads=6, decoder_dim=256, decoder_depth=4, decoder_heads=4),
    "tiny": dict(embed_dim=192, depth=12, num_heads=3, decoder_dim=128, decoder_depth=2, decoder_heads=2),
    "micro": dict(embed_dim=64, depth=2, num_heads=2, decoder_dim=32, decoder_depth=1, decoder_heads=2),
}

_norm = partial(nn.LayerNorm, eps=1e-6)  # the paper's norm_layer


def geometry(signal_rate: float, record_seconds: float = RECORD_SECONDS,
             patch_seconds: float = PATCH_SECONDS) -> tuple[int, int]:
    """(patch_size samples, num_patches per lead) for records of ``record_seconds`` at ``signal_rate`` Hz."""
    patch = int(round(patch_seconds * signal_rate))
    n = int(round(record_seconds * signal_rate)) // patch
    if patch < 1 or n < 1:
        raise ValueError(f"signal_rate={signal_rate} Hz gives {patch}-sample patches and {n} patches per lead")
    return patch, n


def sincos_1d(dim: int, n: int, temperature: float = 10000.0) -> torch.Tensor:
    """(n + 2, dim) fixed positional embeddings: [zeros (left SEP), sin|cos of positions 0..n-1, zeros (right SEP)]."""
    if dim % 2:
        raise ValueError(f"embedding width must be even for sin-cos positions, got {dim}")
    omega = 1.0 / temperature ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    ang = torch.arange(n, dtype=torch.float64)[:, None] * omega[None, :]
    pe = torch.cat([ang.sin(), ang.cos()], dim=1)
    zero = torch.zeros(1, dim, dtype=torch.float64)
    return torch.cat([zero, pe, zero]).float()


def _init_linear_ln(m: nn.Module) -> None:
    """The paper's (and MAE's) init: xavier-uniform linear weights, zero biases, unit LayerNorms."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class STMEMEncoder(nn.Module):
    """Lead-wise patch embedding + SEP/lead/position embeddings + ViT blocks.

    Parameters
    ----------
    num_leads : C, leads of the input (8 in the cohort store).
    num_patches : n, patches per lead the positional table covers (longest input: n * patch_size samples).
    patch_size : samples per patch.
    """

    def __init__(self, num_leads: int, num_patches: int, patch_size: int, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, drop_path_rate: float = 0.0):
        super().__init__()
        self.num_leads, self.num_patches, self.patch_size = num_leads, num_patches, patch_size
        self.patch_embed = nn.Sequential(nn.LayerNorm(patch_size), nn.Linear(patch_size, embed_dim),
                                         nn.LayerNorm(embed_dim))
        self.register_buffer("pos_embed", sincos_1d(embed_dim, num_patches)[None])  # (1, n + 2, D), fixed
        self.sep_embed = nn.Parameter(torch.zeros(embed_dim))
        self.lead_embed = nn.Parameter(torch.zeros(num_leads, embed_dim))
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear, as timm
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, drop_path=dpr[i],
                                           norm_layer=_norm) for i in range(depth)])
        self.norm = _norm(embed_dim)
        nn.init.normal_(self.sep_embed, std=0.02)
        nn.init.normal_(self.lead_embed, std=0.02)
        self.apply(_init_linear_ln)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, T) -> (N, C, n, patch_size), n = T // patch_size (trailing T % patch_size samples dropped)."""
        n_b, c, t = x.shape
        n = t // self.patch_size
        if c != self.num_leads or not 1 <= n <= self.num_patches:
            raise ValueError(f"ST-MEM encoder takes (N, {self.num_leads}, T) with {self.patch_size} <= T < "
                             f"{(self.num_patches + 1) * self.patch_size} samples, got {tuple(x.shape)}")
        return x[..., : n * self.patch_size].reshape(n_b, c, n, self.patch_size)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, T) -> (N, C, n, D) patch tokens with positions (no SEP, no lead embedding yet)."""
        tok = self.patch_embed(self.patchify(x))
        return tok + self.pos_embed[:, 1: tok.shape[2] + 1].unsqueeze(1)

    def encode(self, tok: torch.Tensor) -> torch.Tensor:
        """(N, C, m, D) position-embedded tokens -> (N, C, m + 2, D) block outputs, SEP first and last
        per lead (not yet normalised: pretraining norms per token, the classifier after pooling)."""
        n_b, c, m, d = tok.shape
        sep = self.sep_embed.expand(n_b, c, 1, d)
        x = torch.cat([sep + self.pos_embed[:, :1], tok, sep + self.pos_embed[:, -1:]], dim=2)
        x = (x + self.lead_embed[None, :c, None, :]).reshape(n_b, c * (m + 2), d)
        for blk in self.blocks:
            x = blk(x)
        return x.reshape(n_b, c, m + 2, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, T) -> (N, D): mean over leads and patches (SEP excluded), then the final LayerNorm."""
        return self.norm(self.encode(self.embed(x))[:, :, 1:-1].mean(dim=(1, 2)))


class STMEMClassifier(nn.Module):
    """ST-MEM encoder + linear head: (N, C, T) float -> (N, num_classes) logits.

    Keys: ``encoder.*`` (identical to a pretraining checkpoint's ``backbone``) and ``head.*``.
    """

    family = FAMILY

    def __init__(self, encoder: STMEMEncoder, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.encoder = encoder
        self.head_drop = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.norm.normalized_shape[0], num_classes)
        _init_linear_ln(self.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(self.encoder(x)))


class STMEM(nn.Module):
    """Masked-patch reconstruction model for pretraining: encoder + lead-wise decoder.

    ``forward(x, mask_ratio, generator)`` -> dict(loss: scalar, pred: (N, C, n, p) in the
    normalised-target space, mask: (N, C, n) float, 1 = masked).
    """

    family = FAMILY

    def __init__(self, encoder: STMEMEncoder, decoder_dim: int = 256, decoder_depth: int = 4,
                 decoder_heads: int = 4, mlp_ratio: float = 4.0, norm_pix_loss: bool = True):
        super().__init__()
        self.encoder = encoder
        self.norm_pix_loss = norm_pix_loss
        d = encoder.norm.normalized_shape[0]
        self.decoder_embed = nn.Linear(d, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(decoder_dim))
        self.register_buffer("decoder_pos_embed", sincos_1d(decoder_dim, encoder.num_patches)[None])
        self.decoder_blocks = nn.ModuleList([Block(decoder_dim, decoder_heads, mlp_ratio, qkv_bias=True,
                                                   norm_layer=_norm) for _ in range(decoder_depth)])
        self.decoder_norm = _norm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, encoder.patch_size)
        for m in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            m.apply(_init_linear_ln)
        nn.init.normal_(self.mask_token, std=0.02)

    @staticmethod
    def random_masking(n_b: int, c: int, n: int, mask_ratio: float, device: torch.device,
                       generator: torch.Generator | None = None,
                       noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per lead, keep ``int(n * (1 - mask_ratio))`` random patches (the lowest ``noise``; ``noise``
        (N, C, >= n) given by the caller makes the masks a function of the sample, e.g. under DDP).

        Returns ids_shuffle (N, C, n) long (kept patches first) and mask (N, C, n) float, 1 = masked.
        """
        n_keep = int(n * (1 - mask_ratio))
        if not 1 <= n_keep <= n:
            raise ValueError(f"mask_ratio={mask_ratio} keeps {n_keep} of {n} patches per lead; keep at least one")
        if noise is None:
            noise = torch.rand(n_b, c, n, generator=generator, device=generator.device if generator else device)
        noise = noise[:, :, :n]
        ids_shuffle = noise.to(device).argsort(dim=2)
        mask = torch.ones(n_b, c, n, device=device)
        mask.scatter_(2, ids_shuffle[:, :, :n_keep], 0.0)
        return ids_shuffle, mask

    def forward_decoder(self, latent: torch.Tensor, ids_shuffle: torch.Tensor) -> torch.Tensor:
        """latent (N, C, k + 2, D) -> predictions (N, C, n, patch_size); each lead decoded on its own."""
        x = self.decoder_embed(latent)
        n_b, c, k2, d = x.shape
        n = ids_shuffle.shape[2]
        filled = torch.cat([x[:, :, 1:-1], self.mask_token.expand(n_b, c, n - (k2 - 2), d)], dim=2)
        restore = ids_shuffle.argsort(dim=2)  # position in shuffled order -> original patch order
        filled = filled.gather(2, restore[..., None].expand(-1, -1, -1, d))
        pos = self.decoder_pos_embed
        x = torch.cat([x[:, :, :1] + pos[:, :1], filled + pos[:, 1: n + 1].unsqueeze(1),
                       x[:, :, -1:] + pos[:, -1:]], dim=2).reshape(n_b * c, n + 2, d)
        for blk in self.decoder_blocks:  # lead-wise: leads are separate sequences in the batch dimension
            x = blk(x)
        x = self.decoder_pred(self.decoder_norm(x))
        return x.reshape(n_b, c, n + 2, -1)[:, :, 1:-1]

    def loss(self, x: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error over masked patches; target normalised per patch when ``norm_pix_loss``."""
        target = self.encoder.patchify(x)
        if self.norm_pix_loss:
            target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        per_patch = ((pred - target) ** 2).mean(-1)
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, x: torch.Tensor, mask_ratio: float = MASK_RATIO, generator: torch.Generator | None = None,
                noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """x: (N, C, T) float signal (the classifier's input scale); ``noise`` see :meth:`random_masking`."""
        tok = self.encoder.embed(x)
        n_b, c, n, d = tok.shape
        ids_shuffle, mask = self.random_masking(n_b, c, n, mask_ratio, x.device, generator, noise)
        keep = ids_shuffle[:, :, : int(n * (1 - mask_ratio))]
        tok = tok.gather(2, keep[..., None].expand(-1, -1, -1, d))
        latent = self.encoder.norm(self.encoder.encode(tok))
        pred = self.forward_decoder(latent, ids_shuffle)
        return {"loss": self.loss(x, pred, mask), "pred": pred, "mask": mask}


# ---------------------------------------------------------------- builders


def build_encoder(size: str = "base", num_leads: int = 8, signal_rate: float = 100.0,
                  drop_path_rate: float = 0.0) -> STMEMEncoder:
    """An :class:`STMEMEncoder` of ``size`` for ``num_leads`` leads at ``signal_rate`` Hz (:func:`geometry`)."""
    if size not in STMEM_SIZES:
        raise ValueError(f"unknown ST-MEM size {size!r}; choose one of {sorted(STMEM_SIZES)}")
    s = STMEM_SIZES[size]
    patch, n = geometry(signal_rate)
    return STMEMEncoder(num_leads, n, patch, s["embed_dim"], s["depth"], s["num_heads"],
                        drop_path_rate=drop_path_rate)


def build_pretrainer(size: str = "base", num_leads: int = 8, signal_rate: float = 100.0,
                     drop_path_rate: float = 0.0, norm_pix_loss: bool = True) -> STMEM:
    """The pretraining model (encoder + the size's decoder)."""
    encoder = build_encoder(size, num_leads, signal_rate, drop_path_rate)  # checks size
    s = STMEM_SIZES[size]
    return STMEM(encoder, s["decoder_dim"],
                 s["decoder_depth"], s["decoder_heads"], norm_pix_loss=norm_pix_loss)


def build_classifier(num_classes: int, size: str = "base", num_leads: int = 8, signal_rate: float = 100.0,
                     drop_path_rate: float = 0.1, dropout: float = 0.0) -> STMEMClassifier:
    """A randomly initialised classifier (``stmem_scratch``); ``stmem`` then loads ``encoder.*``."""
    return STMEMClassifier(build_encoder(size, num_leads, signal_rate, drop_path_rate), num_classes, dropout)


def backbone_config(model: STMEM | STMEMEncoder, size: str, signal_rate: float) -> dict:
    """The ``backbone_config`` entry of a checkpoint: everything needed to rebuild the encoder."""
    enc = model.encoder if isinstance(model, STMEM) else model
    return {"size": size, "num_leads": enc.num_leads, "num_patches": enc.num_patches,
            "patch_size": enc.patch_size, "signal_rate": float(signal_rate)}


def checkpoint_payload(model: STMEM, size: str, signal_rate: float) -> dict:
    """The model part of a pretraining checkpoint (add optimizer/epoch state beside it)."""
    return {"backbone": model.encoder.state_dict(), "backbone_config": backbone_config(model, size, signal_rate),
            "modality": "signal"}
