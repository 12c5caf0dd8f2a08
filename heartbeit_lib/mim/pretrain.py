"""BEiT masked-image-model (MIM) pretraining of the HeartBEiT backbone on rendered ECGs.

Pipeline (``notebooks/02_pretrain.ipynb``, or ``torchrun -m heartbeit_lib.pretrain`` on several GPUs):

1. :func:`split_rows` - pretraining rows of a cohort store (``train_splits``, default train +
   unassigned) and held-out rows (``val``; when the store has none, a seeded ``val_fraction`` of
   the training *patients*).  Test and external rows are never seen.
2. :func:`prepare_tokenizer` - load the DALL-E dVAE or an ECG k-means tokenizer, or fit the latter
   on rendered training ECGs; report codebook usage and reconstruction error.
3. :func:`build_data` - tokens of every stored ECG, computed once and cached next to the store
   (:func:`tokenizers.precompute_tokens`), and :class:`MIMDataset` s that render images on the fly
   (``render.RenderedECGDataset``) and draw a BEiT block mask per image.
4. :func:`train` - AdamW (BEiT's betas 0.9/0.999, weight decay 0.05), per-step linear warmup +
   cosine decay, gradient clipping, optional layer-wise lr decay, bf16 autocast on CUDA, optional
   ``torch.compile``, DistributedDataParallel under ``torchrun``; one JSON line per epoch in
   ``log.jsonl`` (loss, masked-token accuracy, lr, images/s), a tqdm bar, and a checkpoint every
   epoch (``checkpoints/last.pt``; ``epoch-XXXX.pt`` every ``save_every`` epochs and at the end).
5. :func:`plot_curve` - the pretraining curve (the paper's Supplementary Figure 1).

Model: :class:`MIMModel` = ``models.create_backbone(size, img_size)`` (timm BEiT: relative position
bias, layer scale) + a learnable mask token that replaces the patch embeddings of masked patches
+ LayerNorm + a linear head over the tokenizer's vocabulary; the loss is cross-entropy on the
masked positions only (BEiT eq. 1).  The backbone's pooled-feature ``fc_norm`` is unused by MIM
(it is frozen here and fine-tuned later).

Augmentations: **none**.  The paper uses none; random crops and flips would break the time axis
and the lead order of the stack8 image, and since the tokens of each stored ECG are cached, the
image the model sees must be exactly the image that was tokenized.  Randomness per epoch comes from
the masks alone.

Determinism: masks are drawn from ``np.random.default_rng((seed, stream, epoch, row))`` and the
epoch order from ``torch.randperm`` seeded with ``seed + epoch``, so they do not depend on the
number of processes or data-loader workers; every checkpoint stores the optimizer, scheduler and
torch/numpy/python RNG states of every rank as tensors and lists (``torch.load(weights_only=True)``
reads it).  Resuming after a kill therefore repeats the uninterrupted run's losses, and a DDP run
with the same global batch follows the single-process loss trajectory (up to float summation order)
when ``drop_path`` is 0 (drop-path draws per-rank random numbers).

Checkpoint (``checkpoints/last.pt``), the contract with fine-tuning (``models.create_model``):
``backbone`` (state dict of ``models.create_backbone(size, img_size, patch_size)``),
``backbone_config`` {size, img_size, patch_size}, ``normalize`` {mean, std} (applied to [0, 1]
images), plus ``mim`` (mask token, norm, head), ``optimizer``, ``scheduler``, ``epoch`` (completed),
``step``, ``rng`` (per rank), ``config``, ``history``, ``tokenizer`` {kind, fingerprint, vocab_size}.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from heartbeit_lib.mim import masking
from heartbeit_lib.classify import registry as models
from heartbeit_lib.pipeline import runs
from heartbeit_lib.mim import tokenizers

NORMALIZE = {"mean": list(models.DEFAULT_MEAN), "std": list(models.DEFAULT_STD)}  # [0, 1] -> [-1, 1]
AUGMENTATIONS = "none (no crops, flips or intensity changes; the mask is the only per-epoch randomness)"
TRAIN_STREAM, VAL_STREAM = 0, 1  # mask RNG streams


class PretrainError(ValueError):
    """Invalid pretraining input or state (the message names the parameter/file and the reason)."""


class ResumeError(PretrainError):
    """A checkpoint cannot be resumed with the current configuration."""


# ============================================================================ config


@dataclasses.dataclass(frozen=True)
class PretrainConfig(runs.TypedConfig):
    """Parameters of ``02_pretrain`` (names equal the notebook's parameters; YAML under
    ``parameters/02_pretrain/``).  Defaults are the paper's where it states them."""

    cohort_run: str = ""              # 01_preprocess run folder (cohort store)
    train_splits: str = "train,unassigned"  # comma-separated store splits used for pretraining
    val_split: str = "val"            # held-out split for masked-token accuracy
    val_fraction: float = 0.1         # held-out share of training patients when val_split is empty
    max_train: int = 0                # cap on pretraining ECGs (0 = all), seeded subsample
    max_val: int = 0                  # cap on held-out ECGs (0 = all)
    tokenizer: str = "ecg_kmeans"     # dalle | ecg_kmeans
    tokenizer_path: str = ""          # weights file; "" with ecg_kmeans = fit one in this run
    trust_pickle: bool = False        # allow unpickling OpenAI's encoder.pkl (runs code from the file)
    vocab_size: int = 512             # k-means codebook size when fitting
    tokenizer_fit_images: int = 2000  # rendered training ECGs used to fit the k-means codebook
    model_size: str = "base"          # models.BEIT_SIZES: base (paper, 86M) | small | tiny | micro
    image_size: int = 224             # pixels; patch grid image_size / 16
    layout: str = "stack8"            # render layout
    epochs: int = 300
    batch_size: int = 128             # global batch (all processes together)
    lr: float = 5e-4                  # peak learning rate (paper)
    min_lr: float = 1e-5              # end of the cosine
    warmup_epochs: float = 10.0
    weight_decay: float = 0.05
    layer_decay: float = 1.0          # layer-wise lr decay (1 = off)
    clip_grad: float = 3.0            # max gradient norm (0 = off), BEiT's value
    drop_path: float = 0.1            # stochastic depth
    num_masked: int = 75              # masked patches per image (75 of 196 = ~40%, BEiT)
    min_block: int = 16               # minimum mask block in patches (BEiT)
    device: str = "auto"              # auto | cpu | cuda | cuda:N
    amp: bool = True                  # bf16 autocast on CUDA (ignored on CPU)
    compile: bool = False             # torch.compile the model
    num_workers: int = 0              # DataLoader workers per process
    threads: int = 0                  # torch CPU threads per process (0 = torch's default)
    save_every: int = 10              # keep checkpoints/epoch-XXXX.pt every N epochs (and the last)
    resume: bool = True               # continue from checkpoints/last.pt of this run folder
    progress: bool = True             # tqdm bar
    seed: int = 0
    out_root: str = "outputs"
    run_id: str = ""

    choices = {"tokenizer": tokenizers.KINDS, "model_size": tuple(models.BEIT_SIZES)}

    def validate(self) -> None:
        if self.threads < 0 or self.num_workers < 0:
            raise runs.ConfigError(f"parameters 'threads'/'num_workers' must be >= 0, "
                                   f"got {self.threads}/{self.num_workers}")
        pos = ("epochs", "batch_size", "image_size", "vocab_size", "save_every")
        for name in pos:
            if getattr(self, name) < 1:
                raise runs.ConfigError(f"parameter {name!r} must be >= 1, got {getattr(self, name)}")
        if self.image_size % 16:
            raise runs.ConfigError(f"parameter 'image_size' must be a multiple of the 16-px patch, "
                                   f"got {self.image_size}")
        grid = (self.image_size // 16) ** 2
        if not 1 <= self.num_masked < grid:
            raise runs.ConfigError(f"parameter 'num_masked' must lie in 1..{grid - 1} for {self.image_size}-px "
                                   f"images ({grid} patches), got {self.num_masked}")
        if not (0 < self.lr and 0 <= self.min_lr <= self.lr):
            raise runs.ConfigError(f"parameters 'lr'/'min_lr' need 0 <= min_lr <= lr, 0 < lr; "
                                   f"got {self.lr}, {self.min_lr}")
        if not 0 < self.layer_decay <= 1:
            raise runs.ConfigError(f"parameter 'layer_decay' must lie in (0, 1], got {self.layer_decay}")
        if not 0 <= self.val_fraction < 1:
            raise runs.ConfigError(f"parameter 'val_fraction' must lie in [0, 1), got {self.val_fraction}")

    @property
    def grid(self) -> tuple[int, int]:
        return self.image_size // 16, self.image_size // 16


# the fields that define the training trajectory: a resumed run must agree on them
_TRAJECTORY_FIELDS = ("model_size", "image_size", "epochs", "batch_size", "lr", "min_lr", "warmup_epochs",
                      "weight_decay", "layer_decay", "clip_grad", "drop_path", "num_masked", "min_block", "seed")


# ============================================================================ model


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


# ============================================================================ data


class MIMDataset(Dataset):
    """Images, their cached tokens and a fresh block mask: items ``(image, tokens, mask)``.

    Parameters
    ----------
    images : indexable of float (C, H, W) tensors in [0, 1], or of ``(image, label)`` pairs
        (``render.RenderedECGDataset``; its batched ``render_batch`` is used when present).
    tokens : int array (n, h, w) aligned with ``images``, or, with ``rows``, the token cache of a
        whole store (a memmap is kept as one and reopened by file name in loader workers).
    num_masked, min_block : :func:`masking.block_mask` parameters.
    seed, stream : mask RNG = ``default_rng((seed, stream, epoch, i))``.
    rows : item i has tokens ``tokens[rows[i]]`` (store rows of the images).

    Keys are ``(i, epoch)`` (what :class:`EpochSampler` yields) or a plain ``i`` (epoch 0).
    Items: image float32 (C, H, W) in [0, 1], tokens int64 (h, w), mask bool (h, w).
    """

    def __init__(self, images: Any, tokens: np.ndarray, num_masked: int, min_block: int = 16,
                 seed: int = 0, stream: int = TRAIN_STREAM, rows: np.ndarray | None = None):
        self.rows = None if rows is None else np.asarray(rows, np.int64)
        n_tok = len(tokens) if self.rows is None else len(self.rows)
        if len(images) != n_tok:
            raise PretrainError(f"MIMDataset: {len(images)} images but {n_tok} token grids")
        self.images = images
        # a memmap (the token cache of a large store) stays a memmap: workers reopen it by file name
        self.tokens = tokens if isinstance(tokens, np.memmap) else np.asarray(tokens)
        self.grid = tuple(self.tokens.shape[1:3])
        self.num_masked, self.min_block, self.seed, self.stream = num_masked, min_block, seed, stream
        masking.block_mask(np.random.default_rng(0), self.grid, num_masked, min_block=min_block)  # validate

    def __getstate__(self) -> dict:
        d = self.__dict__.copy()
        if isinstance(self.tokens, np.memmap) and self.tokens.filename:
            d["tokens"] = ("memmap", str(self.tokens.filename))
        return d

    def __setstate__(self, d: dict) -> None:
        if isinstance(d.get("tokens"), tuple) and d["tokens"][0] == "memmap":
            d["tokens"] = np.load(d["tokens"][1], mmap_mode="r")
        self.__dict__.update(d)

    def __len__(self) -> int:
        return len(self.tokens) if self.rows is None else len(self.rows)

    def token_grid(self, i: int) -> np.ndarray:
        """int64 (h, w) tokens of item ``i``."""
        return self._tokens_at(np.array([i]))[0]

    def _tokens_at(self, pos: np.ndarray) -> np.ndarray:
        """int64 (len(pos), h, w) tokens of items ``pos``: one fancy-index read of the (memmapped) cache."""
        return np.asarray(self.tokens[pos if self.rows is None else self.rows[pos]], np.int64)

    def all_tokens(self, limit: int | None = None) -> np.ndarray:
        """int64 (n, h, w) tokens of the first ``limit`` items (all by default)."""
        n = len(self) if limit is None else min(limit, len(self))
        return self._tokens_at(np.arange(n))

    def mask(self, i: int, epoch: int = 0) -> np.ndarray:
        rng = np.random.default_rng((self.seed, self.stream, epoch, int(i)))
        return masking.block_mask(rng, self.grid, self.num_masked, min_block=self.min_block)

    @staticmethod
    def _key(key) -> tuple[int, int]:
        return (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), 0)

    def _images(self, pos: list[int]) -> torch.Tensor:
        if hasattr(self.images, "render_batch"):  # render.RenderedECGDataset: one vectorised render
            return self.images.render_batch(pos)[0]
        out = []
        for p in pos:
            item = self.images[p]
            out.append(item[0] if isinstance(item, (tuple, list)) else item)
        return torch.stack(out)

    def get_batch(self, keys: Sequence) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One batch: images float32 (B, C, H, W) in [0, 1], tokens int64 (B, h, w), masks bool (B, h, w)."""
        ks = [self._key(k) for k in keys]
        pos = [i for i, _ in ks]
        images = self._images(pos)
        tokens = torch.from_numpy(self._tokens_at(np.asarray(pos, np.int64)))
        masks = torch.from_numpy(np.stack([self.mask(i, e) for i, e in ks]))
        return images, tokens, masks

    def __getitems__(self, keys: Sequence) -> "_Batch":
        return _Batch(self.get_batch(keys))

    def __getitem__(self, key):
        images, tokens, masks = self.get_batch([key])
        return images[0], tokens[0], masks[0]


class _Batch(list):
    """A batch that :meth:`MIMDataset.__getitems__` has already stacked (no per-item split and re-stack)."""

    def __init__(self, tensors: tuple):
        super().__init__()
        self.tensors = tensors


def collate(batch):
    """DataLoader ``collate_fn``: pass :class:`_Batch` through, ``default_collate`` anything else."""
    if isinstance(batch, _Batch):
        return list(batch.tensors)
    return torch.utils.data.default_collate(batch)


class EpochSampler(Sampler):
    """Per-epoch shuffled keys ``(i, epoch)`` for one rank, identical in union to the 1-process order.

    The permutation is ``torch.randperm(n)`` seeded with ``seed + epoch``; with ``drop_last`` it is
    cut to whole global batches, and rank r takes every ``world``-th element from r, so the r-th
    slice of global batch j is rank r's batch j (``batch_size // world`` items).
    """

    def __init__(self, n: int, global_batch: int, seed: int = 0, rank: int = 0, world: int = 1,
                 shuffle: bool = True, drop_last: bool = True):
        if global_batch % world:
            raise PretrainError(f"batch_size {global_batch} must be divisible by the {world} processes")
        self.n, self.global_batch, self.seed = n, global_batch, seed
        self.rank, self.world, self.shuffle, self.drop_last = rank, world, shuffle, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _order(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.drop_last:
            order = order[: (self.n // self.global_batch) * self.global_batch]
        return order[self.rank::self.world]

    def __iter__(self):
        return iter([(i, self.epoch) for i in self._order()])

    def __len__(self) -> int:
        if self.drop_last:
            return (self.n // self.global_batch) * self.global_batch // self.world
        return len(range(self.rank, self.n, self.world))


@dataclasses.dataclass
class MIMData:
    """What :func:`train` needs: datasets, vocabulary and tokenizer identity."""

    train: MIMDataset
    val: MIMDataset | None
    vocab_size: int
    tokenizer: dict = dataclasses.field(default_factory=dict)  # kind, fingerprint, vocab_size
    info: dict = dataclasses.field(default_factory=dict)


# ============================================================================ distributed helpers


def dist_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank); initialises the process group under torchrun when needed."""
    if dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return 0, 1, 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def cpu_threads(n: int):
    """Limit torch and BLAS/OpenMP (scikit-learn, numpy) CPU threads to ``n`` inside the block (0 = no limit).

    torch keeps ``n`` threads afterwards (the run's setting); the BLAS/OpenMP limits are restored.
    """
    if n <= 0:
        yield
        return
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    with threadpool_limits(limits=n):
        yield


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise PretrainError(f"device={name!r}: CUDA is not available on this machine (use 'cpu' or 'auto')")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    return dev


def _rng_state() -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    st = {"torch": torch.get_rng_state(),
          "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)), "numpy_pos": int(np_state[2]),
          "numpy_has_gauss": int(np_state[3]), "numpy_gauss": float(np_state[4]),
          "python_version": int(py_state[0]), "python_state": list(py_state[1]),
          "python_gauss": py_state[2]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(("MT19937", st["numpy_keys"].numpy().astype(np.uint32), st["numpy_pos"],
                         st["numpy_has_gauss"], st["numpy_gauss"]))
    random.setstate((st["python_version"], tuple(st["python_state"]), st["python_gauss"]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _gather_rng(world: int) -> list[dict]:
    st = _rng_state()
    if world == 1:
        return [st]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, st)
    return out


def _all_reduce(t: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        dist.all_reduce(t)
    return t


# ============================================================================ training


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _loader(ds: Dataset, sampler: EpochSampler, per_rank: int, workers: int, device: torch.device,
            drop_last: bool) -> DataLoader:
    return DataLoader(ds, batch_size=per_rank, sampler=sampler, num_workers=workers, drop_last=drop_last,
                      collate_fn=collate,
                      pin_memory=device.type == "cuda", persistent_workers=False,
                      generator=torch.Generator().manual_seed(0))  # workers are seeded from this, not global RNG


def _normalize(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(NORMALIZE["mean"], device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    std = torch.tensor(NORMALIZE["std"], device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    return (images - mean) / std


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, num_masked: int, amp: bool,
             world: int = 1) -> dict:
    """Masked-token loss and accuracy over a loader (sums reduced over ranks)."""
    was = model.training
    model.eval()
    tot = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    for images, tokens, mask in loader:
        images, tokens, mask = (t.to(device, non_blocking=True) for t in (images, tokens, mask))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(_normalize(images), mask, num_masked)
        target = mim_targets(tokens, mask, num_masked)
        tot[0] += F.cross_entropy(logits.float(), target, reduction="sum").double()
        tot[1] += (logits.argmax(-1) == target).sum()
        tot[2] += target.numel()
    _all_reduce(tot, world)
    model.train(was)
    n = max(float(tot[2]), 1.0)
    return {"loss": float(tot[0]) / n, "acc": float(tot[1]) / n, "count": int(tot[2])}


def train(cfg: PretrainConfig, data: MIMData, run_dir: str | os.PathLike, *,
          on_epoch_end: Callable[[int, dict], None] | None = None, record_steps: bool = False) -> dict:
    """Pretrain a :class:`MIMModel`; checkpoints, ``log.jsonl`` in ``run_dir``.

    Parameters
    ----------
    cfg : the run's :class:`PretrainConfig` (model, optimisation, masking, device, resume fields).
    data : :class:`MIMData` (train / held-out datasets, vocabulary).
    run_dir : run folder; ``checkpoints/`` and ``log.jsonl`` go here (written by rank 0).
    on_epoch_end : called as ``on_epoch_end(epoch, log_line)`` after each epoch's checkpoint is saved
        (tests raise from it to simulate a kill).
    record_steps : keep each step's loss (averaged over ranks) in ``history[i]["step_losses"]``.

    Returns
    -------
    dict with ``history`` (one dict per epoch), ``checkpoint`` (path of last.pt), ``params``
    (backbone parameter count), ``resumed_from`` (epoch or None).
    """
    run_dir = Path(run_dir)
    rank, world, local_rank = dist_info()
    device = resolve_device(cfg.device, local_rank)
    if cfg.threads > 0:
        # on a shared or small CPU, intra-op threads contend (measured on a shared 2-core machine: >10x slower)
        torch.set_num_threads(cfg.threads)
    amp = bool(cfg.amp and device.type == "cuda")
    k = cfg.num_masked
    if data.train.grid != cfg.grid:
        raise PretrainError(f"token grid {data.train.grid} does not match image_size {cfg.image_size} "
                            f"(grid {cfg.grid}); tokenize at the training image size")
    if len(data.train) < cfg.batch_size:
        raise PretrainError(f"batch_size {cfg.batch_size} exceeds the {len(data.train)} pretraining ECGs")

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    backbone = models.create_backbone(cfg.model_size, img_size=cfg.image_size, drop_path_rate=cfg.drop_path)
    model = MIMModel(backbone, data.vocab_size).to(device)
    torch.manual_seed(cfg.seed + rank)  # per-rank stream for drop-path

    opt_kw = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay, cfg.layer_decay), lr=cfg.lr,
                            betas=(0.9, 0.999), **opt_kw)
    for g in opt.param_groups:
        g["lr"] = cfg.lr * g["lr_scale"]
    per_rank = cfg.batch_size // world
    sampler = EpochSampler(len(data.train), cfg.batch_size, cfg.seed, rank, world)
    steps_per_epoch = len(sampler) // per_rank
    total = steps_per_epoch * cfg.epochs
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    min_ratio = cfg.min_lr / cfg.lr
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, warmup, min_ratio))

    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.pt"
    history: list[dict] = []
    start_epoch, step, resumed_from = 0, 0, None
    if cfg.resume and last.exists():
        ck = torch.load(last, map_location="cpu", weights_only=True)
        diff = {f: (ck["config"].get(f), getattr(cfg, f)) for f in _TRAJECTORY_FIELDS
                if ck["config"].get(f) != getattr(cfg, f)}
        if ck["tokenizer"].get("fingerprint") != data.tokenizer.get("fingerprint"):
            diff["tokenizer"] = (ck["tokenizer"].get("fingerprint"), data.tokenizer.get("fingerprint"))
        if ck.get("n_train", len(data.train)) != len(data.train):
            diff["n_train"] = (ck["n_train"], len(data.train))
        if diff:
            raise ResumeError(f"{last}: cannot resume, these settings differ from the checkpoint's "
                              f"(checkpoint, now): {diff}; use a new run_id or resume=false")
        model.load_state_dict({**{f"backbone.{n}": v for n, v in ck["backbone"].items()}, **ck["mim"]})
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        start_epoch, step, history = int(ck["epoch"]), int(ck["step"]), list(ck["history"])
        rng = ck["rng"]
        if len(rng) != world:
            warnings.warn(f"{last}: saved by {len(rng)} process(es), resumed by {world}: same data order and "
                          "masks, but drop-path random numbers will differ from an uninterrupted run")
        _set_rng_state(rng[rank] if len(rng) == world else rng[0])
        resumed_from = start_epoch
        del ck
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        # the checkpoint's history is the truth (a kill may fall between log line and checkpoint)
        with open(run_dir / "log.jsonl", "w") as f:
            for h in history:
                f.write(json.dumps({k_: v for k_, v in h.items() if k_ != "step_losses"}) + "\n")

    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)

    train_loader = _loader(data.train, sampler, per_rank, cfg.num_workers, device, drop_last=True)
    val_loader = None
    if data.val is not None and len(data.val):
        vs = EpochSampler(len(data.val), world, cfg.seed, rank, world, shuffle=False, drop_last=False)
        val_loader = _loader(data.val, vs, per_rank, cfg.num_workers, device, drop_last=False)

    n_params = sum(p.numel() for p in model.backbone.parameters())
    show = cfg.progress and rank == 0
    if show:
        from tqdm.auto import tqdm
    for epoch in range(start_epoch, cfg.epochs):
        sampler.set_epoch(epoch)
        # worker seeds derive from the loader's generator: make them a function of the epoch
        train_loader.generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        net.train()
        tot = torch.zeros(3, dtype=torch.float64, device=device)
        step_losses: list[float] = []
        t0 = time.perf_counter()
        data_time = 0.0
        t_data = time.perf_counter()
        it = tqdm(train_loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True) if show \
            else train_loader
        for images, tokens, mask in it:
            data_time += time.perf_counter() - t_data
            images = images.to(device, non_blocking=True)
            tokens, mask = tokens.to(device, non_blocking=True), mask.to(device, non_blocking=True)
            target = mim_targets(tokens, mask, k)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = net(_normalize(images), mask, k)
            loss = F.cross_entropy(logits.float(), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            opt.step()
            sched.step()
            step += 1
            with torch.no_grad():
                tot[0] += loss.detach().double() * target.numel()
                tot[1] += (logits.argmax(-1) == target).sum()
                tot[2] += target.numel()
            if record_steps:
                sl = _all_reduce(loss.detach().double().clone(), world) / world
                step_losses.append(float(sl))
            if show and step % 10 == 0:
                it.set_postfix(loss=f"{float(loss):.3f}", lr=f"{opt.param_groups[-1]['lr']:.2e}")
            t_data = time.perf_counter()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_time = time.perf_counter() - t0
        _all_reduce(tot, world)
        n_img = steps_per_epoch * cfg.batch_size
        line = {"epoch": epoch + 1, "step": step,
                "train_loss": float(tot[0] / max(float(tot[2]), 1.0)),
                "train_acc": float(tot[1] / max(float(tot[2]), 1.0)),
                "lr": float(max(g["lr"] for g in opt.param_groups)),
                "images_per_s": n_img / train_time, "epoch_time_s": train_time,
                "data_wait_s": data_time}
        if val_loader is not None:
            ev = evaluate(net, val_loader, device, k, amp, world)
            line.update(val_loss=ev["loss"], val_acc=ev["acc"])
        line["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        if record_steps:
            line["step_losses"] = step_losses
        history.append(line)
        rng_all = _gather_rng(world)
        if rank == 0:
            state = checkpoint_state(model, cfg, opt, sched, epoch + 1, step, rng_all, history, data.tokenizer)
            state.update(n_train=len(data.train), world_size=world)
            _atomic_save(state, last)
            if (epoch + 1) % cfg.save_every == 0 or epoch + 1 == cfg.epochs:
                _atomic_save({k_: state[k_] for k_ in ("backbone", "backbone_config", "normalize", "mim",
                                                        "epoch", "step", "config", "tokenizer")},
                             ckpt_dir / f"epoch-{epoch + 1:04d}.pt")
            runs.append_jsonl(run_dir / "log.jsonl", {k_: v for k_, v in line.items() if k_ != "step_losses"})
            if show:
                tqdm.write(json.dumps({k_: (round(v, 4) if isinstance(v, float) else v)
                                       for k_, v in line.items() if k_ != "step_losses"}))
        _barrier()
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, line)
    return {"history": history, "checkpoint": last, "params": n_params, "resumed_from": resumed_from,
            "world_size": world}


def checkpoint_state(model: MIMModel, cfg: PretrainConfig, opt: torch.optim.Optimizer, sched: Any, epoch: int,
                     step: int, rng: list[dict], history: list[dict], tokenizer: dict) -> dict:
    """The checkpoint dict (only tensors, numbers, strings, lists, dicts: ``weights_only`` loadable)."""
    full = model.state_dict()
    return {
        "backbone": {k.removeprefix("backbone."): v.detach().cpu() for k, v in full.items()
                     if k.startswith("backbone.")},
        "backbone_config": {"size": cfg.model_size, "img_size": cfg.image_size, "patch_size": 16},
        "normalize": {"mean": list(NORMALIZE["mean"]), "std": list(NORMALIZE["std"])},
        "mim": {k: v.detach().cpu() for k, v in full.items() if not k.startswith("backbone.")},
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "epoch": int(epoch),
        "step": int(step),
        "rng": rng,
        "config": cfg.to_dict(),
        "history": [dict(h) for h in history],
        "tokenizer": dict(tokenizer),
        "format_version": 1,
    }


def load_mim_model(checkpoint: str | os.PathLike, device: str | torch.device = "cpu") -> MIMModel:
    """The :class:`MIMModel` (backbone + MIM head) of a pretraining checkpoint, in eval mode."""
    ck = torch.load(checkpoint, map_location="cpu", weights_only=True)
    bc = ck["backbone_config"]
    vocab = ck["mim"]["head.weight"].shape[0]
    model = MIMModel(models.create_backbone(bc["size"], img_size=int(bc["img_size"]),
                                            patch_size=int(bc.get("patch_size", 16))), vocab)
    model.load_state_dict({**{f"backbone.{k}": v for k, v in ck["backbone"].items()}, **ck["mim"]})
    return model.to(device).eval()


# ============================================================================ pipeline (notebook)


def split_rows(cfg: PretrainConfig, store: Any) -> dict[str, np.ndarray]:
    """Store rows for pretraining (``train``) and held-out evaluation (``val``), sorted int64.

    ``val`` is ``store.indices(cfg.val_split)``; when that is empty, a seeded ``val_fraction`` of the
    training patients is held out instead (drawn on patients in order of first appearance, so two
    builds of the same inputs with different salts hold out the same ECGs).  ``max_train``/``max_val`` cap the
    counts by a seeded subsample.
    """
    splits = [s.strip() for s in cfg.train_splits.split(",") if s.strip()]
    if not splits:
        raise PretrainError(f"train_splits={cfg.train_splits!r} names no split")
    train = np.unique(np.concatenate([store.indices(s) for s in splits])).astype(np.int64)
    val = store.indices(cfg.val_split) if cfg.val_split else np.zeros(0, np.int64)
    rng = np.random.default_rng(cfg.seed)
    held_out = "split"
    if len(val) == 0 and cfg.val_fraction > 0 and len(train) > 1:
        # patients in order of first appearance (not the salted hashes), so the held-out set
        # depends on the seed only, not on the salt of the store build
        codes, uniq = pd.factorize(store.manifest["patient_hash"].to_numpy()[train], sort=False)
        n_val = max(1, int(round(cfg.val_fraction * len(uniq))))
        is_val = np.isin(codes, rng.permutation(len(uniq))[:n_val])
        val, train = train[is_val], train[~is_val]
        held_out = f"{cfg.val_fraction:.0%} of training patients"
    if cfg.max_train and len(train) > cfg.max_train:
        train = np.sort(rng.choice(train, cfg.max_train, replace=False))
    if cfg.max_val and len(val) > cfg.max_val:
        val = np.sort(rng.choice(val, cfg.max_val, replace=False))
    if len(train) == 0:
        raise PretrainError(f"{store.root}: no rows in splits {splits} to pretrain on")
    return {"train": train, "val": np.asarray(val, np.int64), "held_out": held_out}


def render_rows(store: Any, rows: np.ndarray, cfg: PretrainConfig, batch: int = 256) -> np.ndarray:
    """uint8 (n, S, S) images of store rows, rendered as in pretraining."""
    from heartbeit_lib import render

    out = np.empty((len(rows), cfg.image_size, cfg.image_size), np.uint8)
    for s in range(0, len(rows), batch):
        out[s:s + batch] = render.render_ecg(store.signals(rows[s:s + batch]), size=cfg.image_size, layout=cfg.layout)
    return out


def prepare_tokenizer(cfg: PretrainConfig, store: Any, rows: dict, run_dir: str | os.PathLike,
                      device: str | None = None) -> tuple[Any, dict]:
    """Load (``tokenizer_path``) or fit (``ecg_kmeans`` without a path) the tokenizer.

    A fitted k-means tokenizer is saved to ``<run_dir>/tokenizer.pt``.  The report (codebook usage,
    perplexity, reconstruction MSE on up to 256 held-out ECGs) goes to ``tokenizer_report.json``.
    """
    run_dir = Path(run_dir)
    rank, _, local_rank = dist_info()
    device = device or str(resolve_device(cfg.device, local_rank))
    fitted = run_dir / "tokenizer.pt"
    if cfg.tokenizer_path:
        tok = tokenizers.load_tokenizer(cfg.tokenizer, cfg.tokenizer_path, trust_pickle=cfg.trust_pickle,
                                        device=device)
    elif cfg.tokenizer == "dalle":
        raise PretrainError("tokenizer='dalle' needs tokenizer_path=<DALL-E encoder file> (OpenAI's encoder.pkl "
                            "with trust_pickle=true, or a state dict from tokenizers.convert_dalle_pickle)")
    else:
        if rank == 0 and not fitted.exists():
            rng = np.random.default_rng(cfg.seed)
            n = min(cfg.tokenizer_fit_images, len(rows["train"]))
            fit_rows = np.sort(rng.choice(rows["train"], n, replace=False))
            t0 = time.perf_counter()
            with cpu_threads(cfg.threads):
                tok = tokenizers.fit_kmeans_tokenizer(render_rows(store, fit_rows, cfg), cfg.vocab_size, cfg.seed)
            tok.info["fit_seconds"] = time.perf_counter() - t0
            tok.save(fitted)
        _barrier()
        tok = tokenizers.load_tokenizer("ecg_kmeans", fitted, device=device)
    if tok.grid_for(cfg.image_size) != cfg.grid:
        raise PretrainError(f"tokenizer {cfg.tokenizer} gives a {tok.grid_for(cfg.image_size)} grid for "
                            f"{cfg.image_size}-px images, the model needs {cfg.grid}")
    eval_rows = rows["val"] if len(rows["val"]) else rows["train"]
    with cpu_threads(cfg.threads):
        report = tokenizers.codebook_report(tok, render_rows(store, eval_rows[:256], cfg))
    report.update(kind=tok.kind, fingerprint=tok.fingerprint(), source=str(cfg.tokenizer_path or fitted),
                  evaluated_on=f"{min(256, len(eval_rows))} held-out ECGs", info=getattr(tok, "info", {}))
    if rank == 0:
        runs.write_json(run_dir / "tokenizer_report.json", report)
    return tok, report


def build_data(cfg: PretrainConfig, store: Any, tokenizer: Any, rows: dict, progress: bool = False) -> MIMData:
    """Cached tokens of the store and the train / held-out :class:`MIMDataset` s (images rendered on the fly)."""
    from heartbeit_lib import render

    rank, _, _ = dist_info()
    if rank == 0:
        with cpu_threads(cfg.threads):
            tokens = tokenizers.precompute_tokens(store, tokenizer, cfg.image_size, cfg.layout, progress=progress)
    _barrier()
    if rank != 0:
        tokens = tokenizers.precompute_tokens(store, tokenizer, cfg.image_size, cfg.layout)

    def ds(r: np.ndarray, stream: int) -> MIMDataset:
        images = render.RenderedECGDataset(store, r, size=cfg.image_size, layout=cfg.layout, channels=3)
        return MIMDataset(images, tokens, cfg.num_masked, cfg.min_block, cfg.seed, stream, rows=r)

    val = ds(rows["val"], VAL_STREAM) if len(rows["val"]) else None
    info = {"n_train": int(len(rows["train"])), "n_val": int(len(rows["val"])), "held_out": rows["held_out"],
            "token_cache": str(tokenizers.token_cache_path(store.root, tokenizer, cfg.image_size, cfg.layout)),
            "augmentations": AUGMENTATIONS}
    return MIMData(ds(rows["train"], TRAIN_STREAM), val, tokenizer.vocab_size,
                   {"kind": tokenizer.kind, "fingerprint": tokenizer.fingerprint(),
                    "vocab_size": tokenizer.vocab_size},
                   info)


def token_baselines(data: MIMData) -> dict:
    """Masked-token accuracy of two predictors that ignore the image, on the held-out masks.

    ``majority``: the most frequent training token everywhere.  ``position_majority``: the most
    frequent training token at each grid position (ECG images have a fixed layout).
    """
    if data.val is None:
        return {}
    tr = data.train.all_tokens(limit=200_000)
    counts = np.bincount(tr.ravel(), minlength=data.vocab_size)
    majority = int(counts.argmax())
    flat = tr.reshape(len(tr), -1)
    pos_major = np.array([np.bincount(flat[:, j], minlength=data.vocab_size).argmax() for j in range(flat.shape[1])])
    va = data.val.all_tokens().reshape(len(data.val), -1)
    masks = np.stack([data.val.mask(i) for i in range(len(data.val))]).reshape(len(data.val), -1)
    hit_major = (va == majority)[masks].mean()
    hit_pos = (va == pos_major[None, :])[masks].mean()
    return {"majority_token": majority, "majority_acc": float(hit_major), "position_majority_acc": float(hit_pos)}


def plot_curve(history: Sequence[dict] | str | os.PathLike, path: str | os.PathLike | None = None,
               baselines: dict | None = None):
    """Pretraining curve (the paper's Supplementary Figure 1): loss and masked-token accuracy per epoch.

    ``history`` is a list of epoch dicts or a ``log.jsonl`` path; ``baselines`` may hold
    ``majority_acc`` / ``position_majority_acc`` drawn as horizontal lines.  Saved to ``path`` (PNG).
    """
    from matplotlib.figure import Figure  # no pyplot: no global state, no backend switch

    if isinstance(history, (str, os.PathLike)):
        history = runs.read_jsonl(history)
    ep = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 3.6))
    a1, a2 = fig.subplots(1, 2)
    a1.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    if history and "val_loss" in history[0]:
        a1.plot(ep, [h["val_loss"] for h in history], "s-", label="held-out")
    a1.set(xlabel="epoch", ylabel="masked-token cross-entropy", title="MIM loss")
    a1.legend()
    a2.plot(ep, [h["train_acc"] for h in history], "o-", label="train")
    if history and "val_acc" in history[0]:
        a2.plot(ep, [h["val_acc"] for h in history], "s-", label="held-out")
    for key, style in (("majority_acc", ":"), ("position_majority_acc", "--")):
        if baselines and key in baselines:
            a2.axhline(baselines[key], color="grey", ls=style, label=key.replace("_acc", "").replace("_", " "))
    a2.set(xlabel="epoch", ylabel="masked-token accuracy", title="MIM accuracy")
    a2.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def plot_examples(data: MIMData, path: str | os.PathLike | None = None, n: int = 3, epoch: int = 0):
    """Rendered ECGs of the training set, their token grids and one epoch's block masks."""
    from matplotlib.figure import Figure

    n = min(n, len(data.train))
    fig = Figure(figsize=(9, 3 * n))
    axes = fig.subplots(n, 3, squeeze=False)
    for r in range(n):
        img, tok, mask = data.train[(r, epoch)]
        grey = img[0].numpy()
        s = grey.shape[0] // tok.shape[0]
        axes[r, 0].imshow(grey, cmap="gray", vmin=0, vmax=1)
        axes[r, 1].imshow(tok.numpy(), cmap="nipy_spectral", vmin=0, vmax=data.vocab_size - 1,
                          interpolation="nearest")
        if tok.shape[0] <= 8:  # small grids: print the ids
            for (yy, xx), v in np.ndenumerate(tok.numpy()):
                axes[r, 1].text(xx, yy, str(v), ha="center", va="center", fontsize=7, color="white")
        big = np.kron(mask.numpy(), np.ones((s, s), bool))
        axes[r, 2].imshow(np.where(big, 0.5, grey), cmap="gray", vmin=0, vmax=1)
        for a, title in zip(axes[r], ("rendered ECG", f"tokens (vocab {data.vocab_size})",
                                      f"block mask ({int(mask.sum())} of {mask.numel()} patches)")):
            a.set_title(title, fontsize=9)
            a.set_xticks([]), a.set_yticks([])
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def data_hashes(store: Any, run_dir: str | os.PathLike, cfg: PretrainConfig) -> dict[str, str]:
    """sha256 of the inputs of this run: the store manifest and the tokenizer weights."""
    files = {"cohort manifest.parquet": Path(store.root) / "manifest.parquet"}
    tok = Path(cfg.tokenizer_path) if cfg.tokenizer_path else Path(run_dir) / "tokenizer.pt"
    files[f"tokenizer {tok.name}"] = tok
    return {k: runs.file_sha256(p) for k, p in files.items() if p.exists()}


def summarize(result: dict, data: MIMData, tokenizer_report: dict, baselines: dict) -> dict:
    """metrics.json content: final losses/accuracies, baselines, throughput, tokenizer usage."""
    last = result["history"][-1] if result["history"] else {}
    out = {"epochs_done": len(result["history"]), "backbone_params": result["params"],
           "world_size": result["world_size"], "resumed_from_epoch": result["resumed_from"],
           "n_train": data.info.get("n_train"), "n_val": data.info.get("n_val"),
           "images_per_s_last_epoch": last.get("images_per_s"),
           "tokenizer_codes_used": tokenizer_report.get("codes_used"),
           "tokenizer_perplexity": tokenizer_report.get("perplexity"),
           "tokenizer_recon_mse": tokenizer_report.get("recon_mse"),
           "augmentations": AUGMENTATIONS}
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
        if key in last:
            out[f"final_{key}"] = last[key]
    out.update({f"baseline_{k}": v for k, v in baselines.items()})
    return out


def run(cfg: PretrainConfig, run_dir: str | os.PathLike, device: str = "cpu") -> dict:
    """The whole pipeline (what the notebook does, finishing the run folder on rank 0), for
    ``torchrun -m heartbeit_lib.pretrain``."""
    from heartbeit_lib.cohorts import CohortStore

    run_dir = Path(run_dir)
    store = CohortStore(cfg.cohort_run)
    rows = split_rows(cfg, store)
    tok, tok_report = prepare_tokenizer(cfg, store, rows, run_dir, device=device)
    data = build_data(cfg, store, tok, rows, progress=cfg.progress)
    baselines = token_baselines(data)
    if dist_info()[0] == 0:
        plot_examples(data, run_dir / "examples.png")
    result = train(cfg, data, run_dir)
    metrics = summarize(result, data, tok_report, baselines)
    if dist_info()[0] == 0:
        plot_curve(result["history"], run_dir / "pretrain_curve.png", baselines)
        runs.finish_run(run_dir, metrics=metrics, data_hashes=data_hashes(store, run_dir, cfg))
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """``torchrun --nproc_per_node=N -m heartbeit_lib.pretrain -f parameters/02_pretrain/paper.yaml
    -p cohort_run outputs/01_preprocess/<id> -p run_id <id>`` (a run_id is required with several
    processes so that every rank writes the same folder)."""
    ap = argparse.ArgumentParser(description="HeartBEiT MIM pretraining (multi-GPU/multi-node via torchrun)")
    ap.add_argument("-f", "--parameters", action="append", default=[], help="YAML parameter file(s), later wins")
    ap.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    args = ap.parse_args(argv)
    params = runs.load_parameter_files(*args.parameters)
    params.update({k: v for k, v in args.param})
    cfg = PretrainConfig.from_dict(params)
    rank, world, local_rank = dist_info()
    if world > 1 and not cfg.run_id:
        raise PretrainError("with several processes pass -p run_id <id> so all ranks use one run folder")
    if rank == 0:
        run_dir = runs.start_run("02_pretrain", cfg)
    _barrier()
    run_dir = Path(cfg.out_root) / "02_pretrain" / (cfg.run_id or run_dir.name)  # type: ignore[possibly-undefined]
    dev = str(resolve_device(cfg.device, local_rank))
    metrics = run(cfg, run_dir, device=dev)
    if rank == 0:
        print(json.dumps(metrics, indent=1, default=str))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
