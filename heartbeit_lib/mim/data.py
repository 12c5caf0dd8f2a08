"""Pretraining data: images, their cached tokens and a fresh BEiT block mask per (image, epoch).

Augmentations: **none**.  The paper uses none; random crops and flips would break the time axis and the lead
order of the stack8 image, and since the tokens of each stored ECG are cached, the image the model sees must be
exactly the image that was tokenized.  Randomness per epoch comes from the masks alone: masks are drawn from
``np.random.default_rng((seed, stream, epoch, row))`` and the epoch order from ``torch.randperm`` seeded with
``seed + epoch``, so neither depends on the number of processes or data-loader workers.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from heartbeit_lib import render
from heartbeit_lib.distributed import ignore_preemption_signals
from heartbeit_lib.cohorts.evaluation import (EVAL_PATIENTS_FILE, EVAL_SPLITS, pretraining_rows,  # noqa: F401
                                             read_eval_patients)
from heartbeit_lib.mim import masking

AUGMENTATIONS = "none (no crops, flips or intensity changes; the mask is the only per-epoch randomness)"
TRAIN_STREAM, VAL_STREAM = 0, 1  # mask RNG streams
# sites of generated ECGs: cohorts.build_pretraining_mix writes "deepfake" (the synthetic demo cohort's own sites
# are made-up names: all its ECGs are deepfake-ecg output, reported as "real" by this rule)
DEEPFAKE_SITES = ("deepfake",)


class PretrainError(ValueError):
    """Invalid pretraining input or state (the message names the parameter/file and the reason)."""


class StoreImages:
    """uint8 grey images (B, H, W) of cohort-store rows, rendered on demand (what loader workers ship).

    ``store.signals(rows[pos])`` float32 (B, 8, T) microvolts -> ``render.render_ecg`` uint8 (B, size, size),
    255 = white.  The float32 RGB view the model needs is made on the device (``mim.model.DeviceImages``):
    a 224-px batch of 128 is 6.4 MB here instead of 77 MB.
    """

    def __init__(self, store: Any, rows: np.ndarray, size: int, layout: str = "stack8",
                 ylim_mv: Sequence[float] | None = None):
        self.store, self.rows = store, np.asarray(rows, np.int64)
        self.size, self.layout = int(size), layout
        self.ylim_mv = None if ylim_mv is None else tuple(float(v) for v in ylim_mv)  # None: render's default

    def __len__(self) -> int:
        return len(self.rows)

    def uint8_batch(self, pos: Sequence[int]) -> torch.Tensor:
        """uint8 (len(pos), size, size) images of dataset positions ``pos``."""
        x = self.store.signals(self.rows[np.asarray(pos, np.int64)])
        return torch.from_numpy(np.ascontiguousarray(render.render_ecg(x, size=self.size, layout=self.layout,
                                                                          ylim_mv=self.ylim_mv)))


class MIMDataset(Dataset):
    """Images, their cached tokens and a fresh block mask: items ``(image, tokens, mask)``.

    Parameters
    ----------
    images : :class:`StoreImages` (uint8 (H, W) grey, batched), or an indexable of float (C, H, W) tensors in
        [0, 1] or of ``(image, label)`` pairs (``render.RenderedECGDataset``: its ``render_batch`` is used).
    tokens : int array (n, h, w) aligned with ``images``, or, with ``rows``, the token cache of a
        whole store (a memmap is kept as one and reopened by file name in loader workers).
    num_masked, min_block : :func:`masking.block_mask` parameters.
    seed, stream : mask RNG = ``default_rng((seed, stream, epoch, i))``.
    rows : item i has tokens ``tokens[rows[i]]`` (store rows of the images).

    mask_keys : item i draws its masks as item ``mask_keys[i]`` (default i; :meth:`subset` keeps the parent's).

    Keys are ``(i, epoch)`` (what :class:`EpochSampler` yields) or a plain ``i`` (epoch 0).
    Items: image uint8 (H, W) from :class:`StoreImages`, else float32 (C, H, W) in [0, 1]; tokens int64 (h, w);
    mask bool (h, w).
    """

    def __init__(self, images: Any, tokens: np.ndarray, num_masked: int, min_block: int = 16,
                 seed: int = 0, stream: int = TRAIN_STREAM, rows: np.ndarray | None = None,
                 mask_keys: np.ndarray | None = None):
        self.rows = None if rows is None else np.asarray(rows, np.int64)
        self.mask_keys = None if mask_keys is None else np.asarray(mask_keys, np.int64)
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

    def subset(self, pos: np.ndarray) -> "MIMDataset":
        """Items ``pos`` of this dataset (store images only), with the same images, tokens and masks."""
        if not isinstance(self.images, StoreImages) or self.rows is None:
            raise PretrainError("MIMDataset.subset needs store images and store rows")
        pos = np.asarray(pos, np.int64)
        keys = pos if self.mask_keys is None else self.mask_keys[pos]
        images = StoreImages(self.images.store, self.images.rows[pos], self.images.size, self.images.layout)
        return MIMDataset(images, self.tokens, self.num_masked, self.min_block, self.seed, self.stream,
                          rows=self.rows[pos], mask_keys=keys)

    def mask(self, i: int, epoch: int = 0) -> np.ndarray:
        """bool (h, w) mask of item ``i`` in ``epoch`` (the same as in any batch: :meth:`masks`)."""
        return self.masks([(i, epoch)])[0]

    def masks(self, keys: Sequence[tuple[int, int]]) -> np.ndarray:
        """bool (len(keys), h, w) masks of keys ``(i, epoch)``: ``masking.block_masks_batched``, one generator
        ``default_rng((seed, stream, epoch, i))`` per item, so an item's mask does not depend on its batch."""
        ids = [(int(i) if self.mask_keys is None else int(self.mask_keys[int(i)]), int(e)) for i, e in keys]
        rngs = [np.random.default_rng((self.seed, self.stream, e, i)) for i, e in ids]
        return masking.block_masks_batched(rngs, self.grid, self.num_masked, min_block=self.min_block)

    @staticmethod
    def _key(key) -> tuple[int, int]:
        return (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), 0)

    def _images(self, pos: list[int]) -> torch.Tensor:
        if isinstance(self.images, StoreImages):
            return self.images.uint8_batch(pos)
        if hasattr(self.images, "render_batch"):  # render.RenderedECGDataset: one vectorised render
            return self.images.render_batch(pos)[0]
        out = []
        for p in pos:
            item = self.images[p]
            out.append(item[0] if isinstance(item, (tuple, list)) else item)
        return torch.stack(out)

    def get_batch(self, keys: Sequence) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One batch: images uint8 (B, H, W) (store images) or float32 (B, C, H, W) in [0, 1], tokens int64
        (B, h, w), masks bool (B, h, w)."""
        ks = [self._key(k) for k in keys]
        pos = [i for i, _ in ks]
        images = self._images(pos)
        tokens = torch.from_numpy(self._tokens_at(np.asarray(pos, np.int64)))
        masks = torch.from_numpy(self.masks(ks))
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
    val_source: np.ndarray | None = None  # per held-out item: "real" or "deepfake" (site in DEEPFAKE_SITES)
    # model input normalisation of the [0, 1] images, stored in the checkpoint; None: mean = std = 0.5
    normalize: dict | None = None


def make_loader(ds: Dataset, sampler: EpochSampler, per_rank: int, workers: int, device: torch.device,
                drop_last: bool) -> DataLoader:
    """DataLoader over ``sampler``'s keys; batches come from :meth:`MIMDataset.__getitems__` already stacked.

    Workers stay alive across epochs (``persistent_workers``).  Shared memory: each worker keeps
    ``prefetch_factor`` (2) batches in flight through ``/dev/shm``; with uint8 images that is
    2 x per_rank x (S^2 + tokens + mask) bytes, about 13 MB per worker at 224 px and 128 per GPU, so
    8 GPUs x 8 workers need ~1 GB of ``/dev/shm`` (docker: ``--shm-size=2g``; float32 RGB needed 12x more).
    """
    return DataLoader(ds, batch_size=per_rank, sampler=sampler, num_workers=workers, drop_last=drop_last,
                      collate_fn=collate,
                      pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                      generator=torch.Generator().manual_seed(0),  # workers are seeded from this, not global RNG
                      worker_init_fn=ignore_preemption_signals)
