"""Reading a cohort store (:class:`CohortStore`) and its on-disk format (see the package docstring)."""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from heartbeit_lib.safety import RunFileError, read_json_mapping

from .errors import CohortError, StoreError
from .splits import FRACTION_EPS, RANKED_SPLITS, SPLITS, fraction_mask, fraction_size, train_ranks
from .tasks import TaskConfig

STORE_FORMAT = "heartbeit-cohort-store"
STORE_VERSION = 1
N_LEADS = 8
N_SAMPLES = 2500  # 5 s at 500 Hz (the paper truncates every ECG to 2,500 samples)
STORE_FS = 500
# open shard memmaps kept per CohortStore object (per loader worker): each holds one file descriptor.  At the
# paper's ~4,150 shards (shard_size 2048) a random batch touches nearly every shard, and a 1,024 soft limit would
# end in "Too many open files".  The cost of the cap: a read from a closed shard reopens it (open + mmap of the
# .npy, measured 0.26-0.31 ms per shard with one row read on the shared 2-core dev machine), so a batch of 128
# random ECGs over 4,150 shards (94 % misses at 256 open) spends ~35 ms reopening, about as long as rendering
# it.  Pages stay in the OS page cache.  Fewer, larger shards (shard_size 16384: 520 shards, about half the reads
# reopening) cut the cost; parameters/01_preprocess/paper_pretrain_muse.yaml uses them.
MAX_OPEN_SHARDS = 256
LABEL_PREFIX = "label:"  # manifest column of one class of a multi-label task: label:<class> (1, 0, -1 unlabelled)
REJECT_COLUMNS = ("input_index", "source_path", "record_id", "stage", "error_type", "reason")


def shard_name(i: int) -> str:
    return f"shard-{i:05d}"


def normalise_rejects(df: pd.DataFrame) -> pd.DataFrame:
    df = df.reindex(columns=list(REJECT_COLUMNS))
    df["input_index"] = df["input_index"].astype(np.int64)
    for c in REJECT_COLUMNS[1:]:
        df[c] = df[c].astype(str)
    return df.reset_index(drop=True)


_CORE_DTYPES = {"record_id": str, "patient_hash": str, "patient_source": str, "site": str,
                "label": np.int64, "shard": np.int64, "offset": np.int64, "source_path": str,
                "input_index": np.int64, "fs_source": np.float64, "n_samples_source": np.int64}


def normalise_manifest(df: pd.DataFrame, dtypes: Mapping[str, Any]) -> pd.DataFrame:
    df = df.copy()
    for c, t in dtypes.items():
        if c in df.columns:
            df[c] = df[c].astype(t)
    return df.reset_index(drop=True)


class CohortStore:
    """Read access to a cohort store folder (see the module docstring).

    Attributes
    ----------
    root : Path
    task : str
    manifest : DataFrame
        One row per stored ECG in store order (RangeIndex): ``record_id`` str, ``patient_hash``
        str, ``site`` str, ``label`` int (0/1, -1 unlabelled), ``split`` str in
        {train, val, test, external, unassigned}, ``train_rank`` int, ``shard`` int, ``offset``
        int, ``source_path`` str, plus task-specific columns.
    info : dict
        ``store.json``.
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.root = Path(run_dir)
        info_p, man_p = self.root / "store.json", self.root / "manifest.parquet"
        if not info_p.exists() or not man_p.exists():
            raise StoreError(f"{self.root}: not a finished cohort store (no store.json/manifest.parquet); "
                             "build it with notebooks/01_preprocess.ipynb")
        try:  # a store handed to 02/03/07 is an input too: a regular JSON object file of bounded size
            self.info = read_json_mapping(info_p)
        except RunFileError as e:
            raise StoreError(str(e)) from None
        if self.info.get("format") != STORE_FORMAT:
            raise StoreError(f"{info_p}: format {str(self.info.get('format'))[:40]!r} is not {STORE_FORMAT!r}")
        if not isinstance(self.info.get("task"), str):
            raise StoreError(f"{info_p}: task {str(self.info.get('task'))[:40]!r} is not a task name")
        self.task: str = self.info["task"]
        self.manifest: pd.DataFrame = pd.read_parquet(man_p).reset_index(drop=True)
        self._shards: OrderedDict[int, np.ndarray] = OrderedDict()  # LRU, at most max_open_shards
        self.max_open_shards = MAX_OPEN_SHARDS

    def __len__(self) -> int:
        return len(self.manifest)

    def __repr__(self) -> str:
        counts = self.manifest["split"].value_counts().to_dict()
        return f"CohortStore({str(self.root)!r}, task={self.task!r}, n={len(self)}, splits={counts})"

    def __getstate__(self) -> dict:  # memmaps are re-opened in the receiving process
        d = self.__dict__.copy()
        d["_shards"] = OrderedDict()
        return d

    @property
    def rejects(self) -> pd.DataFrame:
        """Inputs that could not be stored: ``source_path``, ``record_id``, ``stage``, ``error_type``, ``reason``."""
        return pd.read_parquet(self.root / "rejects.parquet")

    @property
    def task_config(self) -> TaskConfig:
        return TaskConfig.from_dict(self.info["task_config"])

    @property
    def shape(self) -> tuple[int, int]:
        """(leads, samples) of every stored ECG: (8, 2500) for the paper's store, (12, 1000) for PTB-XL's 10 s at
        100 Hz."""
        return tuple(int(v) for v in self.info.get("shape", (N_LEADS, N_SAMPLES)))

    @property
    def fs(self) -> float:
        """Sampling rate of the stored signals in Hz."""
        return float(self.info.get("fs", STORE_FS))

    @property
    def lead_names(self) -> tuple[str, ...]:
        return tuple(self.info.get("leads", ()))

    @property
    def paper_layout(self) -> bool:
        """True when the store holds the paper's input: leads I, II, V1-V6, 5 s at 500 Hz (what images are drawn
        from)."""
        return self.shape == (N_LEADS, N_SAMPLES) and self.fs == STORE_FS

    @property
    def classes(self) -> list[str]:
        """Class names of a multi-label store (the ``label:<class>`` columns), [] for a binary store."""
        return list(self.info.get("classes") or [])

    @property
    def multilabel(self) -> bool:
        return bool(self.classes)

    def label_matrix(self, idx: Iterable[int] | np.ndarray) -> np.ndarray:
        """int64 (n, classes) 0/1 labels of rows ``idx`` of a multi-label store (-1 where a row has none)."""
        if not self.multilabel:
            raise CohortError(f"{self.root}: store of task {self.task!r} is not multi-label (no classes)")
        cols = [LABEL_PREFIX + c for c in self.classes]
        return self.manifest[cols].to_numpy(np.int64)[np.asarray(idx, np.int64)]

    def _shard(self, i: int) -> np.ndarray:
        """The memmap of shard ``i``; the least recently used one is closed beyond ``max_open_shards``."""
        if i in self._shards:
            self._shards.move_to_end(i)
            return self._shards[i]
        while len(self._shards) >= max(1, self.max_open_shards):
            _, old = self._shards.popitem(last=False)
            mm = getattr(old, "_mmap", None)
            del old
            if mm is not None:
                try:
                    mm.close()  # frees the descriptor now; fails harmlessly if a view of it is still alive
                except BufferError:
                    pass
        self._shards[i] = np.load(self.root / "store" / f"{shard_name(i)}.npy", mmap_mode="r")
        return self._shards[i]

    def signals(self, idx: Iterable[int] | np.ndarray) -> np.ndarray:
        """ECGs of manifest rows ``idx`` as float32 (n, leads, samples) microvolts (:attr:`shape`, :attr:`fs`; the
        paper's store: (n, 8, 2500), leads I, II, V1-V6, 500 Hz).

        Rows are read shard by shard (one fancy-index per shard memmap); the output follows the
        order of ``idx`` (duplicates allowed).
        """
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"{self.root}: row index out of range for {len(self)} ECGs")
        idx = np.where(idx < 0, idx + len(self), idx)
        out = np.empty((idx.size, *self.shape), np.float32)
        shard = self.manifest["shard"].to_numpy(np.int64)[idx]
        offset = self.manifest["offset"].to_numpy(np.int64)[idx]
        for s in np.unique(shard):
            pos = np.flatnonzero(shard == s)
            order = np.argsort(offset[pos], kind="stable")
            out[pos[order]] = self._shard(int(s))[offset[pos[order]]]
        return out

    def indices(self, split: str, fraction: float = 1.0) -> np.ndarray:
        """Sorted int64 row indices of ``split``; ``fraction < 1`` (train or val) gives the saved
        nested, stratified subset (see :func:`train_ranks`, :func:`fraction_mask`)."""
        if split not in SPLITS:
            raise CohortError(f"split {split!r} is not one of {list(SPLITS)}")
        if fraction < 1.0 - FRACTION_EPS:
            if split not in RANKED_SPLITS:
                raise CohortError(f"fraction {fraction} < 1 is only defined for {list(RANKED_SPLITS)}, not {split!r}")
            man = self.manifest
            if split == "val" and (man.loc[man["split"] == "val", "train_rank"] < 0).any():
                # a store built before validation rows were ranked: the same ranks, computed now
                man = man.assign(train_rank=train_ranks(man, int(self.info.get("seed", 0))))
            return np.flatnonzero(fraction_mask(man, fraction, split)).astype(np.int64)
        fraction_size(1, fraction)  # validates the range
        return np.flatnonzero(self.manifest["split"].to_numpy() == split).astype(np.int64)

    def labels(self, idx: Iterable[int] | np.ndarray) -> np.ndarray:
        """int64 labels of rows ``idx``."""
        return self.manifest["label"].to_numpy(np.int64)[np.asarray(idx, np.int64)]
