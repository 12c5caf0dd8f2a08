"""Small helpers every layer uses: atomic file writes, the compute device (distributed runs: :mod:`.distributed`).

Imports nothing of ``heartbeit_lib`` (any module may import it), and torch only where a function needs it: the
cohort store's ``spawn`` build workers import this module, and torch took most of their start-up (07 with 2 workers
was slower than with 1: ``benchmarks/bench_predict.py``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Write ``path`` through ``write(tmp)`` then ``os.replace``: a reader sees the old file or the new one,
    never half of one. The temporary name carries the process id so concurrent writers do not share it."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_torch_save(obj, path: str | os.PathLike) -> Path:
    """``torch.save`` atomically (plain tensors and dicts: loadable with ``weights_only=True``)."""
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def cuda_index(local_rank: int) -> int:
    """The CUDA device of the process with ``local_rank``: ``local_rank % torch.cuda.device_count()``.

    The one rule for every device choice (``resolve_device``, ``distributed.init_distributed``): with all of a
    node's GPUs visible to every task (torchrun) it is ``local_rank``; when Slurm gives each task its own single
    visible GPU it is 0 (``cuda:<local_rank>`` would be an invalid ordinal for ranks >= 1); several processes on
    one GPU (the one-chip DDP check) share it.
    """
    import torch

    return local_rank % max(torch.cuda.device_count(), 1)


def resolve_device(name: str | None = "auto", local_rank: int = 0) -> torch.device:
    """``auto``/``None`` -> ``cuda`` when available, else ``cpu``; ``cuda`` without an index ->
    ``cuda:<cuda_index(local_rank)>`` (and makes it the current device). Raises ``ValueError`` when CUDA is
    asked for and absent, or a ``cuda:N`` index is not visible."""
    import torch

    if name in (None, "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r}: CUDA is not available on this machine (use 'cpu' or 'auto')")
        if dev.index is None:
            dev = torch.device("cuda", cuda_index(local_rank))
        elif dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={name!r}: only {torch.cuda.device_count()} CUDA device(s) visible "
                             f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); use 'cuda'")
        torch.cuda.set_device(dev)
    return dev
