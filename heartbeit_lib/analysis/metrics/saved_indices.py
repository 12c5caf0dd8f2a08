"""Bootstrap indices saved once per task and split, keyed by the record ids, and read back by every model and fraction."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from heartbeit_lib.utils import atomic_write_text
from heartbeit_lib.analysis.metrics.checks import (_check_indices, BootstrapIndexMismatchError, BootstrapIndicesError,
                                                   MetricsInputError)
from heartbeit_lib.analysis.metrics.bootstrap import bootstrap_indices




def record_ids_hash(record_ids: Iterable[Any]) -> str:
    """sha256 of the record ids in order (indices are positional, so order matters)."""
    h = hashlib.sha256()
    for r in record_ids:
        h.update(str(r).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def _index_paths(folder: str | os.PathLike, name: str) -> tuple[Path, Path]:
    if not name or any(ch in name for ch in "/\\") or name.startswith("."):
        raise MetricsInputError("name", f"{name!r} is not a plain file name")
    folder = Path(folder)
    return folder / f"{name}.npy", folder / f"{name}.json"


def save_bootstrap_indices(folder: str | os.PathLike, name: str, indices: np.ndarray,
                           record_ids: Sequence[Any], seed: Any = None, stratified: bool = False) -> Path:
    """Save ``indices`` (B, n) as ``<folder>/<name>.npy`` with a ``<name>.json`` sidecar holding the
    sha256 of the record ids (in the order the indices refer to), n, n_boot, seed and stratified."""
    record_ids = list(record_ids)
    idx = _check_indices(indices, len(record_ids))
    npy, meta = _index_paths(folder, name)
    npy.parent.mkdir(parents=True, exist_ok=True)
    tmp = npy.with_name(npy.stem + ".tmp.npy")
    np.save(tmp, idx)
    os.replace(tmp, npy)
    info = {"record_ids_sha256": record_ids_hash(record_ids), "n": len(record_ids), "n_boot": int(idx.shape[0]),
            "seed": seed if isinstance(seed, int) else None, "stratified": bool(stratified), "dtype": str(idx.dtype)}
    atomic_write_text(meta, json.dumps(info, indent=2) + "\n")
    return npy


def load_bootstrap_indices(folder: str | os.PathLike, name: str, record_ids: Sequence[Any]) -> np.ndarray:
    """Load indices saved by :func:`save_bootstrap_indices`; raise
    :class:`BootstrapIndexMismatchError` when they were saved for other record ids (or order)."""
    record_ids = list(record_ids)
    npy, meta = _index_paths(folder, name)
    if not npy.exists() or not meta.exists():
        raise FileNotFoundError(f"bootstrap indices {npy} (and {meta.name}) not found")
    info = json.loads(meta.read_text())
    want = record_ids_hash(record_ids)
    if info.get("record_ids_sha256") != want:
        raise BootstrapIndexMismatchError(
            "record_ids", f"{npy} was saved for a different evaluation set (record-id hash "
                          f"{info.get('record_ids_sha256', '?')[:12]}, n={info.get('n')}; this set: "
                          f"{want[:12]}, n={len(record_ids)}): same task and split must mean the same "
                          "records in the same order")
    try:
        idx = np.load(npy, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:  # truncated, not .npy, an object (pickle) array: refused
        raise BootstrapIndicesError(str(npy), f"not a readable .npy of plain integers ({type(e).__name__}: "
                                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    return _check_indices(idx, len(record_ids), argument=str(npy))


def bootstrap_indices_cached(folder: str | os.PathLike, name: str, record_ids: Sequence[Any],
                             n_boot: int = 500, seed: int = 0, stratify: Any = None) -> np.ndarray:
    """Load ``<folder>/<name>.npy`` if saved (checking record ids and ``n_boot``), else draw with
    :func:`bootstrap_indices` and save: the same evaluation set gets the same resamples for every
    model and fraction."""
    record_ids = list(record_ids)
    npy, meta = _index_paths(folder, name)
    if npy.exists():
        idx = load_bootstrap_indices(folder, name, record_ids)
        info = json.loads(meta.read_text())
        if idx.shape[0] != n_boot or bool(info.get("stratified")) != (stratify is not None):
            raise BootstrapIndicesError(
                "n_boot", f"{npy} holds {idx.shape[0]} resamples (stratified={info.get('stratified')}); "
                          f"asked for {n_boot} (stratified={stratify is not None}); use another folder")
        return idx
    idx = bootstrap_indices(len(record_ids), n_boot, seed, stratify=stratify)
    save_bootstrap_indices(folder, name, idx, record_ids, seed=seed, stratified=stratify is not None)
    return idx
