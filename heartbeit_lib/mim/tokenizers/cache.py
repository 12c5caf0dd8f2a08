"""Token pre-computation: render and tokenize every ECG of a cohort store once, cached on disk."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from heartbeit_lib import render, utils
from heartbeit_lib.distributed import ignore_preemption_signals


def _render_version() -> str:
    return render.RENDER_VERSION


def token_cache_key(tokenizer: Any, size: int, layout: str, style: dict | None = None) -> str:
    """Hash of the tokenizer weights and every render setting that changes the images."""
    spec = {"tokenizer": tokenizer.fingerprint(), "size": int(size), "layout": layout,
            "style": style or {}, "render": _render_version()}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:20]


def token_cache_path(store_root: str | os.PathLike, tokenizer: Any, size: int, layout: str = "stack8",
                     style: dict | None = None) -> Path:
    """``<store_root>/tokens/<key>.npy`` for this tokenizer and render settings."""
    return Path(store_root) / "tokens" / f"{token_cache_key(tokenizer, size, layout, style)}.npy"


class _TokenBatches(torch.utils.data.Dataset):
    """Batch ``j`` of a store = (start row, uint8 (n, size, size) images): rendered in loader workers."""

    def __init__(self, store: Any, starts: Sequence[int], n: int, batch_size: int, size: int, layout: str,
                 style: dict, render_fn: Any):
        self.store, self.starts, self.n, self.batch_size = store, list(starts), n, batch_size
        self.size, self.layout, self.style, self.render_fn = size, layout, style, render_fn

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, j: int) -> tuple[int, torch.Tensor]:
        s = self.starts[j]
        idx = np.arange(s, min(s + self.batch_size, self.n))
        imgs = self.render_fn(self.store.signals(idx), size=self.size, layout=self.layout, **self.style)
        return s, torch.from_numpy(np.ascontiguousarray(np.asarray(imgs, np.uint8).reshape(len(idx), self.size,
                                                                                             self.size)))


def _rank_starts(n: int, batch_size: int, rank: int, world: int) -> list[int]:
    """Batch starts of rank ``rank``: a contiguous run of whole batches (the same batches as one process)."""
    starts = list(range(0, n, batch_size))
    per = -(-len(starts) // world)
    return starts[rank * per:(rank + 1) * per]


def _rank_rows(n: int, batch_size: int, rank: int, world: int) -> tuple[int, int]:
    """[lo, hi) store rows of rank ``rank`` (:func:`_rank_starts`'s batches; lo == hi when it has none)."""
    starts = _rank_starts(n, batch_size, rank, world)
    return (starts[0], min(starts[-1] + batch_size, n)) if starts else (n, n)


def _part_path(partial: Path, rank: int, world: int) -> Path:
    """Rank ``rank``'s own token file (the partial file itself for one process)."""
    return partial if world == 1 else partial.with_name(f"{partial.stem}.rank{rank}.npy")


def _merge_parts(partial: Path, n: int, batch_size: int, world: int, dtype, grid: tuple[int, int],
                 chunk: int = 1 << 16) -> None:
    """Rank 0: the ranks' files copied in row order into ``partial`` (chunks of ``chunk`` rows), then deleted."""
    merged = np.lib.format.open_memmap(partial, mode="w+", dtype=dtype, shape=(n, *grid))
    for r in range(world):
        lo, hi = _rank_rows(n, batch_size, r, world)
        if hi == lo:
            continue
        part = np.load(_part_path(partial, r, world), mmap_mode="r", allow_pickle=False)
        for a in range(0, hi - lo, chunk):
            merged[lo + a:lo + min(a + chunk, hi - lo)] = part[a:a + chunk]
        del part
    merged.flush()
    del merged
    for r in range(world):
        _part_path(partial, r, world).unlink(missing_ok=True)


def _no_barrier() -> None:
    return None


def precompute_tokens(store: Any, tokenizer: Any, size: int = 224, layout: str = "stack8", *,
                      style: dict | None = None, batch_size: int = 64, cache_dir: str | os.PathLike | None = None,
                      progress: bool = False, render_fn: Any = None, rank: int = 0, world: int = 1,
                      barrier: Callable[[], None] = _no_barrier, num_workers: int = 0) -> np.ndarray:
    """Tokens of every ECG in a cohort store, rendered as in pretraining, cached on disk.

    Several processes share the work: each renders and tokenizes a contiguous run of whole batches of
    ``batch_size`` rows (the batches a single process would make) into its own memory-mapped ``.npy`` (never one
    file for all: on a shared file system two nodes would overwrite each other's half of the boundary page), then
    rank 0 copies them in order into one file and renames it into place; the file equals a single-process run's
    byte for byte.
    ``barrier`` must synchronise all ranks without a short timeout (the lengthy part runs between two
    barriers: pass a gloo group with a long timeout, never an NCCL barrier with its 10-minute watchdog).
    Images are rendered as uint8 in ``num_workers`` DataLoader workers; on CUDA the tokenizer runs under bf16
    autocast when it supports it (``DalleTokenizer.amp``; part of the cache key).

    Parameters
    ----------
    store : a ``cohorts.CohortStore`` (``.root``, ``len()``, ``.signals(idx)`` float32 (n, 8, T) microvolts).
    tokenizer : any tokenizer of this module.
    size, layout, style : passed to ``render.render_ecg``; part of the cache key.
    cache_dir : folder for the cache (default ``<store.root>/tokens``).
    render_fn : ``render_fn(x (n, 8, T) microvolts, size=, layout=, **style) -> uint8 (n, size, size)``;
        default ``render.render_ecg`` (tests pass a stand-in; the cache key does not see it).
    rank, world, barrier : this process among ``world`` (all must call with the same arguments).

    Returns
    -------
    np.ndarray int16 (int32 when vocab > 32767) (len(store), h, w), row i = store row i; a read-only
    memmap of the cache file.
    """
    if render_fn is None:
        render_fn = render.render_ecg
    key = token_cache_key(tokenizer, size, layout, style)
    folder = Path(cache_dir) if cache_dir is not None else Path(store.root) / "tokens"
    path = folder / f"{key}.npy"
    n = len(store)
    h, w = tokenizer.grid_for(size)
    if path.exists():
        tokens = np.load(path, allow_pickle=False, mmap_mode="r")  # a large cache is paged in on demand
        if tokens.shape == (n, h, w):
            return tokens
    barrier()  # every rank has looked before rank 0 may start a new file
    dtype = np.int16 if tokenizer.vocab_size <= np.iinfo(np.int16).max + 1 else np.int32
    partial = folder / f"{key}.partial-{world}.npy"
    lo, hi = _rank_rows(n, batch_size, rank, world)
    folder.mkdir(parents=True, exist_ok=True)
    if hi > lo:
        # every rank writes its own file: on a shared file system two nodes writing one file would each flush
        # whole pages, and the page holding two ranks' boundary rows would keep only one node's half
        out = np.lib.format.open_memmap(_part_path(partial, rank, world), mode="w+", dtype=dtype,
                                        shape=(hi - lo, h, w))
        batches = _TokenBatches(store, _rank_starts(n, batch_size, rank, world), n, batch_size, size, layout,
                                dict(style or {}), render_fn)
        dev = getattr(tokenizer, "device", torch.device("cpu"))
        loader = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=num_workers,
                                             pin_memory=dev.type == "cuda", worker_init_fn=ignore_preemption_signals)
        for s, imgs in (tqdm(loader, desc=f"tokens (rank {rank})", unit="batch") if progress else loader):
            out[s - lo:s - lo + len(imgs)] = np.asarray(tokenizer.tokenize(imgs.to(dev, non_blocking=True)).cpu()
                                                        ).astype(dtype)
        out.flush()
        del out
    barrier()
    if rank == 0:
        if world > 1:
            _merge_parts(partial, n, batch_size, world, dtype, (h, w))
        os.replace(partial, path)
        meta = {"key": key, "tokenizer_kind": tokenizer.kind, "tokenizer_fingerprint": tokenizer.fingerprint(),
                "vocab_size": tokenizer.vocab_size, "size": size, "layout": layout, "style": style or {},
                "render": _render_version(), "shape": [n, h, w], "dtype": np.dtype(dtype).name}
        utils.atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2, default=str) + "\n")
    barrier()
    return np.load(path, allow_pickle=False, mmap_mode="r")
