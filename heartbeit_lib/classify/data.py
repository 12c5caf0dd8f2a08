"""Fine-tuning data: the labelled splits of a cohort store, their image datasets and loaders.

Splits come from the cohort store (``store.indices(split, fraction)``), saved once by ``01_preprocess``: identical
across models, seeds and runs, and the fraction subsets of ``train`` are nested.  Nothing is re-drawn here.
"""
from __future__ import annotations

import dataclasses
import fcntl
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from heartbeit_lib import render
from heartbeit_lib.distributed import ignore_preemption_signals
from heartbeit_lib.cohorts.errors import SplitError
from heartbeit_lib.cohorts.evaluation import EVAL_SPLITS



@dataclasses.dataclass(frozen=True)
class Split:
    """Row indices of one split of a cohort store, with their record ids and labels."""

    name: str
    indices: np.ndarray        # (n,) int64 store rows, sorted
    record_id: np.ndarray      # (n,) str
    patient_hash: np.ndarray   # (n,) str
    label: np.ndarray          # (n,) int64 in {0, 1} (multi-label: 1, the row has a class of the task)
    y: np.ndarray | None = None  # multi-label: (n, C) int64 0/1 targets
    classes: tuple[str, ...] = ()  # multi-label: class names (columns of y); () for a binary task

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def prevalence(self) -> float:
        """Share of positives (multi-label: of positive labels over every class)."""
        if not len(self):
            return float("nan")
        return float(self.y.mean()) if self.classes else float(self.label.mean())

    @property
    def targets(self) -> np.ndarray:
        """What the model is trained on: (n,) int64 labels, or (n, C) float32 0/1 for a multi-label task."""
        return self.y.astype(np.float32) if self.classes else self.label


def make_splits(store, fraction: float = 1.0, val_fraction: str = "matched") -> dict[str, Split]:
    """``train`` (the stored nested ``fraction`` subset), ``val``, ``test`` and ``external`` of a store.

    ``val_fraction``: ``matched`` (default) -> the stored nested ``fraction`` subset of ``val`` too (at least
    5 ECGs of each class, ``cohorts.fraction_mask``), so "1 % of labels" selects its epoch on 1 % of the
    validation labels; ``full`` -> the whole validation split at every fraction (before issue 18).

    Rows with label -1 (unlabelled) are left out. ``external`` may be empty.

    Raises
    ------
    SplitError : the training split is empty, or a labelled split holds only one class in training.
    """
    if val_fraction not in ("matched", "full"):
        raise SplitError(f"val_fraction={val_fraction!r}: must be 'matched' or 'full'")
    man = store.manifest
    out = {}
    for name in ("train",) + EVAL_SPLITS:
        f = fraction if name == "train" or (name == "val" and val_fraction == "matched") else 1.0
        idx = np.asarray(store.indices(name, f), dtype=np.int64)
        lab = man["label"].to_numpy()[idx].astype(np.int64)
        idx = idx[lab >= 0]
        rows = man.iloc[idx]
        classes = tuple(getattr(store, "classes", None) or ())
        out[name] = Split(name, idx, rows["record_id"].astype(str).to_numpy(),
                          rows["patient_hash"].astype(str).to_numpy(), rows["label"].to_numpy().astype(np.int64),
                          store.label_matrix(idx) if classes else None, classes)
    for sp in out.values():
        if sp.classes and len(sp) and sp.name != "external":
            absent = [c for j, c in enumerate(sp.classes) if not sp.y[:, j].any()]
            if absent:
                raise SplitError(f"store {getattr(store, 'root', '')}: class(es) {absent} have no positive ECG in the "
                                 f"{sp.name} split at fraction {fraction if sp.name != 'test' else 1.0} "
                                 f"({len(sp)} ECGs); a per-class AUROC needs both labels")
    if len(out["train"]) < 2:
        raise SplitError(f"store {getattr(store, 'root', '')}: training split at fraction {fraction} has "
                         f"{len(out['train'])} labelled ECG(s); need at least 2")
    return out


def describe_splits(splits: Mapping[str, Split]) -> pd.DataFrame:
    """One row per split: ECGs, patients, positives, prevalence (multi-label: positive labels of every class, and
    one column per class with its positives)."""
    rows = []
    for s in splits.values():
        r = {"split": s.name, "ecgs": len(s), "patients": len(set(s.patient_hash)),
             "positives": int(s.y.sum() if s.classes else s.label.sum()), "prevalence": s.prevalence}
        r.update({f"pos:{c}": int(s.y[:, j].sum()) for j, c in enumerate(s.classes)})
        rows.append(r)
    return pd.DataFrame(rows).set_index("split")


def records_sha256(record_ids: Sequence[str]) -> str:
    """sha256 over sorted record ids (to check that two runs trained on the same ECGs)."""
    return hashlib.sha256("\n".join(sorted(map(str, record_ids))).encode()).hexdigest()


def device_images(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """A loader batch as the model's input on ``mean``'s device: uint8 grey (B, H, W) or uint8/float
    (B, C, H, W) -> float32 (B, C', H, W) ``(x / 255 - mean) / std`` (float input: ``(x - mean) / std``), C' =
    ``mean.shape[1]``, grey repeated.  ``mean``/``std`` (1, C', 1, 1) float32, made once per run.

    Bit for bit what ``render._to_images`` followed by ``(x - mean) / std`` gave before (same float32 ops).
    """
    x = x.to(mean.device, non_blocking=True)
    if x.dtype == torch.uint8:
        if x.ndim == 3:
            x = x[:, None]
        x = x.float().div_(255.0)
    # grey (B, 1, H, W) broadcasts to the model's channels in the subtraction (signals (B, leads, T) pass as they
    # are); the division in place: one (B, C', H, W) buffer instead of two, half the time on a CPU (bench_predict)
    x = (x - mean).div_(std)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


RENDER_CACHE = "render_cache"  # folder of a cohort store holding its rendered uint8 images, one file per setting
RENDER_CACHE_CHUNK = 256  # ECGs rendered at once while filling the cache


def render_cache(store, size: int, layout: str = "stack8", ylim_mv: tuple[float, float] | None = None) -> np.ndarray | None:
    """Every row of ``store`` rendered once as uint8 (N, size, size) grey images, memory-mapped from
    ``<store>/render_cache/<key>.npy`` (key: size, layout, amplitude range and the store's manifest hash).

    The first caller renders it (``render.render_ecg`` in chunks of :data:`RENDER_CACHE_CHUNK`, into a temporary
    file renamed when complete) while holding ``<key>.lock``; concurrent callers (the jobs of a sweep) wait for it
    and then map the same file, so a sweep renders a store once per setting. None when the store is too large to
    cache (more than ``MAX_CACHED_IMAGES`` ECGs), has no folder, or its folder is not writable: the caller renders
    on the fly.
    """
    root = getattr(store, "root", None)
    if root is None or len(store) > MAX_CACHED_IMAGES:
        return None
    man = Path(root) / "manifest.parquet"
    ident = {"size": int(size), "layout": str(layout), "ylim_mv": None if ylim_mv is None else [float(v) for v in ylim_mv],
             "manifest": hashlib.sha256(man.read_bytes()).hexdigest() if man.is_file() else str(len(store))}
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]
    folder = Path(root) / RENDER_CACHE
    path = folder / f"{size}-{layout}-{key}.npy"
    try:
        if not path.is_file():
            folder.mkdir(exist_ok=True)
            with open(folder / f"{path.stem}.lock", "a") as lock:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # one job renders, the others wait for its file
                if not path.is_file():
                    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(store), size, size))
                    for s in range(0, len(store), RENDER_CACHE_CHUNK):
                        rows = np.arange(s, min(len(store), s + RENDER_CACHE_CHUNK))
                        out[rows] = render.render_ecg(store.signals(rows), size=size, layout=layout, ylim_mv=ylim_mv)
                    out.flush()
                    del out
                    os.replace(tmp, path)
                    (folder / f"{path.stem}.json").write_text(json.dumps(ident, indent=1) + "\n")
        return np.load(path, mmap_mode="r")
    except OSError:
        return None


class GreyImageDataset(torch.utils.data.Dataset):
    """Store rows rendered on the fly as uint8 grey images: items ``(uint8 (H, W), int64 label)``.

    A batch is one ``store.signals`` read and one vectorised ``render.render_ecg`` (``__getitems__``); the
    float RGB tensor the model needs is made on the device (:func:`device_images`): a worker ships 12x fewer
    bytes than ``render.RenderedECGDataset``'s float32 (3, H, W).
    """

    def __init__(self, store, indices: np.ndarray, size: int, layout: str = "stack8",
                 ylim_mv: tuple[float, float] | None = None, targets: np.ndarray | None = None,
                 images: np.ndarray | None = None):
        self.store, self.indices = store, np.asarray(indices, np.int64)
        self.size, self.layout, self.ylim_mv = int(size), layout, ylim_mv
        self.labels = store.manifest["label"].to_numpy(np.int64)[self.indices] if targets is None else \
            np.asarray(targets)  # (n,) int64, or (n, C) float32 multi-label targets
        self.images = images  # (N, H, W) uint8 of every store row (render_cache), else rendered per batch

    def __len__(self) -> int:
        return len(self.indices)

    def __getitems__(self, pos) -> list:
        pos = np.asarray(pos, np.int64)
        if self.images is not None:
            grey = np.asarray(self.images[self.indices[pos]])
        else:
            grey = render.render_ecg(self.store.signals(self.indices[pos]), size=self.size, layout=self.layout,
                                     ylim_mv=self.ylim_mv)
        return list(zip(torch.from_numpy(np.ascontiguousarray(grey)).unbind(0),
                        torch.from_numpy(self.labels[pos]).unbind(0)))

    def __getitem__(self, i: int):
        return self.__getitems__([i])[0]


def require_paper_layout(store) -> None:
    """Raise :class:`SplitError` unless ``store`` holds what images are drawn from: leads I, II, V1-V6, 5 s at
    500 Hz (a PTB-XL benchmark store of 12 leads, 10 s at 100 Hz is for the signal models)."""
    if not getattr(store, "paper_layout", True):
        raise SplitError(f"store {getattr(store, 'root', '')} holds {store.shape} signals at {store.fs:g} Hz; image "
                         "models draw the paper's (8, 2500) at 500 Hz: build the cohort with 01's default "
                         "store_leads/store_fs/seconds")


def default_dataset_factory(store, indices: np.ndarray, image_size: int, layout: str,
                            ylim_mv: tuple[float, float] | None = None, targets: np.ndarray | None = None,
                            train: bool = False, disk_cache: bool = False) -> torch.utils.data.Dataset:
    """:class:`GreyImageDataset`: uint8 (H, W) grey images and int64 labels (or ``targets``); ``ylim_mv`` (lo, hi)
    mV per lead band, None: ``render.DEFAULT_YLIM_MV``. Images are drawn from the paper's store layout only (leads
    I, II, V1-V6, 5 s at 500 Hz). ``disk_cache``: read them from the store's :func:`render_cache` (rendered once per
    store and setting, shared by every process), else render them per batch."""
    require_paper_layout(store)
    images = render_cache(store, image_size, layout, ylim_mv) if disk_cache else None
    return GreyImageDataset(store, indices, image_size, layout, ylim_mv, targets, images)


# cache_images above this many ECGs per split is refused: uint8 224-px images take 50 kB each (10 GB here),
# and a cohort that large renders faster in loader workers than one process renders it up front.
MAX_CACHED_IMAGES = 200_000


class _CachedDataset(torch.utils.data.Dataset):
    """A dataset materialised once in memory as uint8 (when the images are exact multiples of 1/255, always so
    for rendered ECGs; else float32), rendered batch by batch in ``num_workers`` loader workers.

    Items: ``(image, label)``, the image uint8 (or float32) in the source's shape, the label int64 (or the
    source's float (C,) multi-label targets); the model input is made on the device (:func:`device_images`), so
    values equal the uncached path's.
    """

    def __init__(self, ds: torch.utils.data.Dataset, num_workers: int = 0):
        if len(ds) > MAX_CACHED_IMAGES:
            raise SplitError(f"parameter 'cache_images': {len(ds)} ECGs in one split exceed {MAX_CACHED_IMAGES} "
                             f"({len(ds) * 50_176 / 1e9:.0f} GB of uint8 224-px images); set cache_images=false "
                             "and render in loader workers (num_workers)")
        # its own generator: a DataLoader without one draws its workers' base seed from the global torch RNG, so
        # building the cache would move every later global draw (a run with cache_images differing from one without)
        loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=False, num_workers=num_workers,
                                             generator=torch.Generator().manual_seed(0),
                                             worker_init_fn=ignore_preemption_signals)
        xs, ys = [], []
        for x, y in loader:
            if x.is_floating_point():
                q = torch.round(x * 255)
                if torch.allclose(q / 255, x, atol=1e-6, rtol=0):
                    x = q.to(torch.uint8)
            xs.append(x)
            ys.append(y)
        if xs and any(x.dtype != torch.uint8 for x in xs):
            xs = [x.float() / 255 if x.dtype == torch.uint8 else x for x in xs]
        self.x = torch.cat(xs) if xs else torch.zeros(0, dtype=torch.uint8)
        y = torch.cat(ys) if ys else torch.zeros(0, dtype=torch.long)
        self.y = y if y.is_floating_point() else y.long()  # multi-label targets stay float

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]



class ImageCache:
    """Rendered splits kept in memory (``cache_images=True``), so a sweep in one process renders each split once.

    Keyed by store folder, dataset factory, image size, layout and the split's rows and labels; the oldest
    entry is evicted first once ``max_items`` are held.
    """

    def __init__(self, max_items: int = 16):
        self.max_items = max_items
        self._items: dict[tuple, _CachedDataset] = {}

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()

    def dataset(self, factory: Callable, store, split: Split, image_size: int, layout: str,
                num_workers: int = 0, targets: np.ndarray | None = None) -> "_CachedDataset":
        """The cached dataset of ``split`` (rendered through ``factory`` on first use); ``targets``: a multi-label
        split's (n, C) targets, passed to ``factory`` and part of the key."""
        # a functools.partial (the default factory with an amplitude range) is keyed by its function and arguments
        fkey = (id(factory.func), factory.args, tuple(sorted(factory.keywords.items()))) \
            if isinstance(factory, functools.partial) else id(factory)
        key = (str(getattr(store, "root", id(store))), fkey, image_size, layout,
               hashlib.sha1(split.indices.tobytes() + split.label.tobytes()
                            + (b"" if targets is None else np.ascontiguousarray(targets).tobytes())).hexdigest())
        if key not in self._items:
            while len(self._items) >= self.max_items:
                self._items.pop(next(iter(self._items)))
            kw = {} if targets is None else {"targets": targets}
            self._items[key] = _CachedDataset(factory(store, split.indices, image_size, layout, **kw), num_workers)
        return self._items[key]


def make_loader(ds, batch_size: int, shuffle: bool, seed: int, num_workers: int, drop_last: bool = False):
    """DataLoader with a seeded shuffling generator (identical order for identical runs)."""
    g = torch.Generator()
    g.manual_seed(seed)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g,
                                       num_workers=num_workers, drop_last=drop_last,
                                       pin_memory=torch.cuda.is_available(),
                                       persistent_workers=num_workers > 0, worker_init_fn=ignore_preemption_signals)
