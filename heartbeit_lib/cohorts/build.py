"""Building a cohort store: read, preprocess and write every input in resumable shards
(:func:`build_store`), then merge the shards, assign splits and write the tables."""

from __future__ import annotations

import collections
import concurrent.futures as cf
import ctypes
import dataclasses
import fcntl
import functools
import gc
import hashlib
import json
import math
import multiprocessing
import os
import signal as _signal_mod  # `signals` is the ECG module
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from heartbeit_lib import io as hio
from heartbeit_lib import signals
from heartbeit_lib.safety import write_csv
from heartbeit_lib.utils import atomic_write, atomic_write_text

from .errors import (AmplitudeRangeError, CohortError, LabelError, NonFiniteOutputError, RecordError, StoreError,
                     StoredShapeError, WorkerDiedError)
from .ids import clean_id, hash_patient, read_or_create_salt, salt_path
from .splits import assign_splits, check_disjoint, train_ranks
from .store import (LABEL_PREFIX, N_LEADS, N_SAMPLES, REJECT_COLUMNS, STORE_FORMAT, STORE_FS, STORE_VERSION, CohortStore,
                    normalise_manifest, normalise_rejects, shard_name)
from .tasks import TaskConfig, load_task

FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504.0
# columns of an inputs table (one row per input record, see build_store)
INPUT_COLUMNS = ("source_path", "record_id", "patient_id", "site", "label")
# The typed errors of a bad input. Any other Exception of one file (MemoryError, OverflowError, a
# reader's bug) is a reject too: one file never stops a build; KeyboardInterrupt/SystemExit do.
REJECTABLE: tuple[type[BaseException], ...] = (RecordError, hio.ECGReadError, signals.SignalError)
PER_FILE_FAILURES: tuple[type[BaseException], ...] = (Exception,)
# records per signals.preprocess call: 16 x 12 x 5000 float32 = 3.8 MB; numpy asks the kernel for huge pages from
# 4 MiB, whose faults may stall in compaction (see signals.preprocess's chunk_size)
PREPROCESS_CHUNK = 16
LOCK_NAME = ".build.lock"  # in the run folder, flock-ed for the whole build
_CORE_DTYPES = {"record_id": str, "patient_hash": str, "patient_source": str, "site": str,
                "label": np.int64, "shard": np.int64, "offset": np.int64, "source_path": str,
                "input_index": np.int64, "fs_source": np.float64, "n_samples_source": np.int64}


def output_leads() -> tuple[str, ...]:
    """Leads of the paper's store: I, II, V1-V6."""
    return tuple(signals.OUTPUT_LEADS)


def store_layout(preprocess_kw: Mapping[str, Any] | None) -> tuple[tuple[str, ...], tuple[int, int], float]:
    """(lead names, (leads, samples), rate in Hz) of the ECGs a build with ``preprocess_kw`` stores: the paper's
    (I, II, V1-V6; 2,500 samples; 500 Hz) unless ``out_leads`` / ``n_samples`` / ``target_fs`` say otherwise."""
    kw = dict(preprocess_kw or {})
    leads = tuple(str(l).upper() for l in kw.get("out_leads", output_leads()))
    return leads, (len(leads), int(kw.get("n_samples", N_SAMPLES))), float(kw.get("target_fs", STORE_FS))


# ---------------------------------------------------------------- one shard (runs in a worker)


@dataclasses.dataclass(frozen=True)
class ShardSpec:
    """Everything a worker needs to build shard ``shard`` (picklable; rows are that shard's inputs)."""

    shard: int
    rows: list[dict]  # inputs-table rows (see build_store), with input_index
    reader: Callable[[str], Any]
    store_dir: str
    salt: str
    preprocess_kw: dict | None  # None: signals are stored as given
    manifest_columns: list[str]
    dtypes: dict[str, Any]  # manifest column -> dtype
    stamps: list | None = None  # input_stamps(rows), recorded with the shard; None: not recorded


def _write_npy(path: Path, arr: np.ndarray) -> None:
    def w(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)

    atomic_write(path, w)


def _write_parquet(path: Path, df: pd.DataFrame) -> None:
    atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False, engine="pyarrow"))


def input_stamps(rows: list[dict]) -> list[list]:
    """Per input row, ``[path, size, mtime_ns]`` of each file of its record that exists (the source path and
    its ``.hea`` / ``.dat`` / ``.mat`` siblings; ``[path, -1, -1]`` when there is none, e.g. an in-memory
    reader's path): what a resumed build compares to notice an input that changed after its shard was built."""
    out = []  # a stat per file, no folder listing: a shard of a folder of a million files lists nothing
    for row in rows:
        p = Path(str(row["source_path"]))
        files = dict.fromkeys([p, *(p.with_suffix(e) for e in (".hea", ".dat", ".mat"))])
        stamp = []
        for f in files:
            try:
                st = f.stat()
            except (OSError, ValueError):
                continue
            stamp.append([str(f), st.st_size, st.st_mtime_ns])
        out.append(stamp or [[str(p), -1, -1]])
    return out


def _stamp_path(store_dir: Path, i: int) -> Path:
    return store_dir / "parts" / f"{shard_name(i)}.inputs.json"


def _shard_done(store_dir: Path, i: int, stamps: list | None = None) -> bool:
    """All of a shard's files exist and, with ``stamps``, its inputs are as they were when it was built
    (:func:`input_stamps` recorded next to it; a shard without that record, or whose inputs changed, is redone)."""
    name = shard_name(i)
    if not all((p.exists() for p in (store_dir / f"{name}.npy",
                                     store_dir / "parts" / f"{name}.manifest.parquet",
                                     store_dir / "parts" / f"{name}.rejects.parquet"))):
        return False
    if stamps is None:
        return True
    try:
        return json.loads(_stamp_path(store_dir, i).read_text()) == stamps
    except (OSError, ValueError):
        return False


def _preprocess_group(x: np.ndarray, fs: float, leads: tuple[str, ...], preprocess_kw: Mapping | None
                      ) -> np.ndarray:
    """(n, L, T) microvolts -> float32 (n, 8, 2500); ``preprocess_kw=None`` means already preprocessed."""
    if preprocess_kw is None:
        if x.shape[1:] != (N_LEADS, N_SAMPLES):
            raise StoredShapeError(f"signal given as preprocessed must be ({N_LEADS}, {N_SAMPLES}), "
                                   f"got {x.shape[1:]}")
        return np.asarray(x, np.float32)
    return np.asarray(signals.preprocess(x, fs, list(leads), **dict(preprocess_kw)), np.float32)


def _check_range(y: np.ndarray, where: str) -> None:
    if not np.isfinite(y).all():
        raise NonFiniteOutputError(f"{where}: preprocessed signal holds NaN/inf")
    peak = float(np.abs(y).max()) if y.size else 0.0
    if peak > FLOAT16_MAX:
        raise AmplitudeRangeError(f"{where}: preprocessed peak {peak:.0f} uV exceeds float16's "
                                  f"+-{FLOAT16_MAX:.0f} uV (wrong gain or unit?)")


MAX_REASON_CHARS = 500  # a reject reason is a sentence; readers quote at most a short excerpt of a file


def _reason_text(err: BaseException) -> str:
    """``str(err)`` with control characters escaped (one line in rejects.csv and logs) and cut to
    :data:`MAX_REASON_CHARS`: an error message never carries more than a short excerpt of an input."""
    text = str(err).encode("unicode_escape", "backslashreplace").decode("ascii") if not str(err).isprintable() \
        else str(err)
    return text if len(text) <= MAX_REASON_CHARS else text[:MAX_REASON_CHARS] + "..."


class _Rejects(list):
    """Reject rows of one shard (``REJECT_COLUMNS``)."""

    def add(self, row: dict, stage: str, err: BaseException) -> None:
        path, why = str(row["source_path"]), _reason_text(err)
        self.append({"input_index": int(row["input_index"]), "source_path": path,
                     "record_id": str(row["record_id"]), "stage": stage, "error_type": type(err).__name__,
                     "reason": why if path in why else f"{path}: {why}"})


def _read_rows(spec: ShardSpec, rejects: _Rejects) -> list[tuple[dict, Any]]:
    """(row, record) of every input of the shard that could be read."""
    recs: list[tuple[dict, Any]] = []
    for row in spec.rows:
        if row.get("reject"):
            rejects.add(row, "inputs", LabelError(str(row["reject"])))
            continue
        if row.get("worker_died"):
            rejects.add(row, "read", WorkerDiedError(str(row["worker_died"])))
            continue
        try:
            rec = spec.reader(row["source_path"])
        except PER_FILE_FAILURES as e:
            rejects.add(row, "read", e)
            continue
        recs.append((row, rec))
    return recs


def _preprocess_records(recs: list[tuple[dict, Any]], pkw: dict | None, rejects: _Rejects) -> dict[int, np.ndarray]:
    """Preprocessed float32 (8, 2500) signal of each record (by position in ``recs``), batched over
    records of the same rate / leads / length; a failing batch is redone one by one to find the culprits."""
    out: dict[int, np.ndarray] = {}
    groups: dict[tuple, list[int]] = {}
    for j, (row, rec) in enumerate(recs):
        sig = np.asarray(rec.signal)
        key = (float(rec.fs), tuple(str(l).upper() for l in rec.leads), sig.shape)
        groups.setdefault(key, []).append(j)
    chunk = PREPROCESS_CHUNK
    failed: list[int] = []
    for (fs, leads, _), js in groups.items():
        for s in range(0, len(js), chunk):
            part = js[s:s + chunk]
            x = np.stack([np.asarray(recs[j][1].signal, np.float32) for j in part])
            try:
                y = _preprocess_group(x, fs, leads, pkw)
            except PER_FILE_FAILURES:
                failed.extend(part)
                continue
            for k, j in enumerate(part):
                out[j] = y[k]
    for j in sorted(failed):
        row, rec = recs[j]
        try:
            out[j] = _preprocess_group(np.asarray(rec.signal, np.float32)[None], float(rec.fs),
                                       tuple(str(l).upper() for l in rec.leads), pkw)[0]
        except PER_FILE_FAILURES as e:
            rejects.add(row, "preprocess", e)
    return out


def _manifest_row(spec: ShardSpec, row: dict, rec: Any, offset: int) -> dict:
    """Manifest row of a stored record: the input row without the raw patient id, plus its salted
    hash (input id, else the record's own, else the record is its own patient), site and position."""
    meta = getattr(rec, "meta", None) or {}
    pid, psrc = clean_id(row.get("patient_id")), "input"
    if not pid:
        pid, psrc = clean_id(meta.get("patient_id")), "record"
    if not pid:  # no patient id anywhere: the record is its own patient (documented)
        pid, psrc = "record:" + str(row["record_id"]), "record_id"
    site = clean_id(row.get("site")) or clean_id(meta.get("site")) or "unknown"
    m = {k: v for k, v in row.items() if k not in ("patient_id", "reject")}
    m.update(patient_hash=hash_patient(pid, spec.salt), patient_source=psrc, site=site,
             shard=int(spec.shard), offset=offset, fs_source=float(rec.fs),
             n_samples_source=int(np.asarray(rec.signal).shape[-1]))
    return m


def build_shard(spec: ShardSpec) -> dict:
    """Read, preprocess, range-check and write one shard (runs in a worker process). Returns counts."""
    rejects = _Rejects()
    recs = _read_rows(spec, rejects)
    out = _preprocess_records(recs, spec.preprocess_kw, rejects)
    sigs, mrows = [], []
    for j, (row, rec) in enumerate(recs):
        if j not in out:
            continue
        try:
            _check_range(out[j], str(row["source_path"]))
        except PER_FILE_FAILURES as e:
            rejects.add(row, "store", e)
            continue
        mrows.append(_manifest_row(spec, row, rec, len(sigs)))
        sigs.append(out[j])

    arr = (np.stack(sigs) if sigs else np.zeros((0, *store_layout(spec.preprocess_kw)[1]), np.float32)
           ).astype(np.float16)
    mdf = pd.DataFrame(mrows, columns=spec.manifest_columns) if mrows else \
        pd.DataFrame({c: pd.Series(dtype=spec.dtypes.get(c, "object")) for c in spec.manifest_columns})
    rdf = pd.DataFrame(sorted(rejects, key=lambda r: r["input_index"]), columns=list(REJECT_COLUMNS))
    store_dir, name = Path(spec.store_dir), shard_name(spec.shard)
    # the inputs' stamps (taken before reading) and the parts first, the array last: a shard counts as done
    # only when all of them exist
    if spec.stamps is not None:
        atomic_write_text(_stamp_path(store_dir, spec.shard), json.dumps(spec.stamps) + "\n")
    _write_parquet(store_dir / "parts" / f"{name}.rejects.parquet", normalise_rejects(rdf))
    _write_parquet(store_dir / "parts" / f"{name}.manifest.parquet", normalise_manifest(mdf, spec.dtypes))
    _write_npy(store_dir / f"{name}.npy", arr)
    return {"shard": spec.shard, "stored": len(mrows), "rejected": len(rejects)}


# ---------------------------------------------------------------- the whole store


def _check_inputs(inputs: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in ("source_path", "record_id") if c not in inputs.columns]
    if missing:
        raise CohortError(f"inputs table: missing column(s) {missing}; needs {list(INPUT_COLUMNS)}")
    df = inputs.reset_index(drop=True).copy()
    for c, default in (("patient_id", ""), ("site", ""), ("label", -1), ("reject", "")):
        if c not in df.columns:
            df[c] = default
    df["record_id"] = df["record_id"].map(clean_id)
    df["source_path"] = df["source_path"].astype(str)
    df["patient_id"] = df["patient_id"].map(clean_id)
    df["site"] = df["site"].map(clean_id)
    df["reject"] = df["reject"].fillna("").astype(str)
    lab = pd.to_numeric(df["label"], errors="coerce")
    if lab.isna().any() or not lab.isin([-1, 0, 1]).all():
        bad = df.loc[lab.isna() | ~lab.isin([-1, 0, 1]), "record_id"].head(5).tolist()
        raise CohortError(f"inputs table: labels must be 0, 1 or -1 (unlabelled); bad rows e.g. {bad}")
    df["label"] = lab.astype(np.int64)
    if (df["record_id"] == "").any():
        raise CohortError("inputs table: empty record_id in rows "
                          f"{df.index[df['record_id'] == ''][:5].tolist()}")
    dup = df["record_id"][df["record_id"].duplicated()]
    if len(dup):
        raise CohortError(f"inputs table: duplicate record_id(s) {dup.head(5).tolist()}")
    df.insert(0, "input_index", np.arange(len(df), dtype=np.int64))
    return df


def _fingerprint(inputs: pd.DataFrame, salt: str, params: Mapping[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(salt.encode() + b"\0")  # salted, so the fingerprint reveals nothing about patient ids
    h.update(pd.util.hash_pandas_object(inputs.astype(str), index=True).to_numpy().tobytes())
    h.update(json.dumps(list(inputs.columns)).encode())
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _holding_run_folder_lock(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn(inputs, reader, run_dir, ...)`` holding an exclusive ``flock`` on ``<run_dir>/.build.lock``:
    a second build of the same folder (another process or thread) is refused with a :class:`StoreError`
    instead of racing on the same files. The lock goes with the process (no stale lock after a kill)."""

    @functools.wraps(fn)
    def locked(inputs: pd.DataFrame, reader: Callable[[str], Any], run_dir: str | os.PathLike, *a: Any, **kw: Any):
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        with open(Path(run_dir) / LOCK_NAME, "a") as lock:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreError(f"{run_dir}: another build of this run folder is running (it holds "
                                 f"{LOCK_NAME}); wait for it or use another run_id") from None
            try:
                return fn(inputs, reader, run_dir, *a, **kw)
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    return locked


@_holding_run_folder_lock
def build_store(inputs: pd.DataFrame, reader: Callable[[str], Any], run_dir: str | os.PathLike, *,
                task_cfg: "TaskConfig | str" = "custom", seed: int = 0, shard_size: int = 512,
                workers: int = 2, preprocess_kw: Mapping[str, Any] | None = None,
                salt: str | None = None, salt_file: str | os.PathLike | None = None, progress: bool = True
                ) -> "CohortStore":
    """Preprocess every input record into a sharded, resumable cohort store in ``run_dir``.

    Parameters
    ----------
    inputs : DataFrame
        One row per input: ``source_path`` (what ``reader`` reads), ``record_id`` (unique),
        ``patient_id`` (raw; only its salted hash is stored; empty -> the record's own
        ``meta['patient_id']``, else the record is its own patient), ``site``, ``label``
        (0/1, -1 unlabelled), optional ``reject`` (non-empty text: reject without reading, e.g. a
        missing label) and any task-specific columns (e.g. ``strat_fold``), copied to the manifest.
    reader : callable
        E.g. :func:`heartbeit_lib.io.read_ecg`: ``reader(source_path)`` -> object with ``signal`` (leads, samples) microvolts, ``fs`` Hz,
        ``leads`` names, ``meta`` dict; raises ``io.ECGReadError`` (or :class:`RecordError`) for
        bad inputs, which become rejects. Must be picklable when ``workers > 1``.
    run_dir : path
        Output folder (created). A build interrupted at any point resumes here: finished shards
        are kept, the rest redone; the final files are byte-identical to an uninterrupted build.
    task_cfg : TaskConfig or task name
        Split method and parameters (the labels are already in ``inputs``).
    seed : int
        Seed of the patient splits and of the training-fraction ranks (constant: same splits
        for every model and run).
    shard_size : int
        Inputs per shard (one ``.npy`` each; 512 x 8 x 2500 float16 = 20 MB).
    workers : int
        Worker processes (``ProcessPoolExecutor`` with the ``spawn`` start method: forking a
        process that already runs torch/BLAS threads can deadlock); ``<= 1`` or an in-memory
        reader runs in this process. Does not change the output. From a *script*, call it under
        ``if __name__ == "__main__":`` (spawn re-imports the main module; notebooks are fine).
    preprocess_kw : mapping or None
        Keyword arguments of :func:`heartbeit_lib.signals.preprocess`; ``None`` stores the
        signals as given (they must already be (8, 2500) microvolts).
    salt, salt_file : str
        Salt of the patient hashes, or a file holding it; neither -> the per-user file
        :func:`~heartbeit_lib.cohorts.ids.default_salt_path` (outside the run folder, created once
        with ``O_EXCL``; a legacy ``<run_dir>/salt.txt`` is reused when resuming). ``store.json``
        records the file's path, never the salt: whoever holds the salt can re-identify patients.
    progress : bool
        tqdm progress bar over inputs.

    Every input ends in the manifest or the rejects table, whatever happens to one file (a typed
    read error, MemoryError, OverflowError, a worker process that dies): ``len(inputs) ==
    len(manifest) + len(rejects)``. A second build of ``run_dir`` while one runs is refused.

    Returns
    -------
    CohortStore
    """
    plan = plan_build(inputs, run_dir, task_cfg=task_cfg, seed=seed, shard_size=shard_size,
                      preprocess_kw=preprocess_kw, salt=salt, salt_file=salt_file)
    store_dir, df = plan.run_dir / "store", plan.df
    for stale in store_dir.rglob("*.tmp-*"):  # half-written files of a killed build
        stale.unlink()
    # a resumed build redoes a shard whose inputs changed (size or mtime) since it was built
    todo = [i for i in range(plan.n_shards) if not _shard_done(store_dir, i, input_stamps(plan.rows(i)))]

    spec = functools.partial(plan.spec, reader=reader)  # built lazily: at paper scale all rows would not fit

    def n_rows(i: int) -> int:
        return min(len(df), (i + 1) * shard_size) - i * shard_size

    in_process = workers <= 1 or getattr(reader, "in_process", False) or len(todo) <= 1
    with tqdm(total=len(df), initial=len(df) - sum(n_rows(i) for i in todo), unit="ecg",
              desc="01_preprocess", disable=not progress, mininterval=1.0) as bar:
        if in_process:
            for i in todo:
                build_shard(spec(i))
                bar.update(n_rows(i))
        else:
            try:
                for counts in _map_in_processes(build_shard, map(spec, todo), workers, min(workers, len(todo))):
                    bar.update(n_rows(counts["shard"]))
            except cf.process.BrokenProcessPool:  # a file killed its worker: find it, reject it, go on
                probe = _DeathProbe()
                try:
                    for i in [i for i in todo if not _shard_done(store_dir, i)]:
                        build_shard(probe.mark(spec(i)))
                        bar.update(n_rows(i))
                finally:
                    probe.close()
    _merge(plan.run_dir, df, plan.task, plan.seed, plan.n_shards, plan.params)
    return CohortStore(plan.run_dir)


def _check_or_write_build_spec(run_dir: Path, fp: str, params: Mapping[str, Any]) -> None:
    """Write ``store/build_spec.json`` on the first build; a resumed build must have the same fingerprint."""
    spec_path = run_dir / "store" / "build_spec.json"
    if spec_path.exists():
        old = json.loads(spec_path.read_text()).get("fingerprint")
        if old != fp:
            raise StoreError(f"{run_dir}: holds a build of other inputs or parameters (fingerprint "
                             f"{str(old)[:12]} != {fp[:12]}); use a new run_id or delete the folder")
    else:
        atomic_write_text(spec_path, json.dumps({"fingerprint": fp, **params}, indent=2, sort_keys=True) + "\n")


def _probe_read(reader: Callable[[str], Any], source_path: str) -> None:
    """Read one input in a worker and drop the record (only whether the worker survives matters)."""
    try:
        reader(source_path)
    except Exception:  # a typed or untyped error is handled by build_shard; a dead worker is not
        pass


class _DeathProbe:
    """Reads rows one at a time in a one-process ``spawn`` pool, renewed after each death, to find the
    rows whose reading kills a worker (a crash in native code, ``os._exit``, the OOM killer)."""

    def __init__(self) -> None:
        self.ctx = multiprocessing.get_context("spawn")
        self.pool = cf.ProcessPoolExecutor(max_workers=1, mp_context=self.ctx, initializer=die_with_parent,
                                              initargs=(os.getpid(),))

    def mark(self, spec: ShardSpec) -> ShardSpec:
        """``spec`` with ``worker_died`` set on each row that kills its worker, so that
        :func:`build_shard` rejects those rows (:class:`WorkerDiedError`) instead of dying."""
        rows = [dict(r) for r in spec.rows]
        for r in rows:
            if r.get("reject"):
                continue
            try:
                self.pool.submit(_probe_read, spec.reader, r["source_path"]).result()
            except cf.process.BrokenProcessPool as e:
                r["worker_died"] = f"the worker process died reading this file ({e})"
                self.pool.shutdown(wait=False, cancel_futures=True)
                self.pool = cf.ProcessPoolExecutor(max_workers=1, mp_context=self.ctx, initializer=die_with_parent,
                                              initargs=(os.getpid(),))
        return dataclasses.replace(spec, rows=rows)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def die_with_parent(parent_pid: int) -> None:
    """Worker initializer: the kernel sends this process SIGKILL when its parent dies (Linux
    ``prctl(PR_SET_PDEATHSIG)``), so a killed build leaves no orphaned worker writing shards; exits at once
    when the parent is already gone."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, _signal_mod.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: a worker notices a dead parent when its queue breaks
    if os.getppid() != parent_pid:
        os._exit(1)


def _map_in_processes(fn: Callable[[Any], dict], items: Iterator[Any], workers: int, max_workers: int
                      ) -> Iterator[dict]:
    """``fn(item)`` for each item in ``spawn`` worker processes, results in completion order.

    At most ``2 * workers`` items are in flight: ``Executor.map`` would build every item (a shard's
    rows) up front (its ``buffersize`` argument needs Python 3.14). A worker's error propagates and
    cancels what has not started.
    """
    ctx = multiprocessing.get_context("spawn")  # fork is unsafe with torch/BLAS threads alive
    with cf.ProcessPoolExecutor(max_workers=max_workers, mp_context=ctx, initializer=die_with_parent,
                                initargs=(os.getpid(),)) as pool:
        running: set[cf.Future] = set()
        try:
            for item in items:
                if len(running) >= 2 * workers:
                    done, running = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                    yield from (f.result() for f in done)
                running.add(pool.submit(fn, item))
            for f in cf.as_completed(running):
                yield f.result()
        except BaseException:
            for f in running:
                f.cancel()
            raise


def _merge(run_dir: Path, df: pd.DataFrame, task: TaskConfig, seed: int, n_shards: int, params: dict) -> None:
    """Concatenate the shard parts (in shard order), assign splits and write the final tables."""
    store_dir = run_dir / "store"
    mparts, rparts = [], []
    for i in range(n_shards):
        name = shard_name(i)
        m = pd.read_parquet(store_dir / "parts" / f"{name}.manifest.parquet")
        r = pd.read_parquet(store_dir / "parts" / f"{name}.rejects.parquet")
        n_rows = np.load(store_dir / f"{name}.npy", mmap_mode="r").shape[0] if len(m) else 0
        shard_inputs = min(len(df), (i + 1) * params["shard_size"]) - i * params["shard_size"]
        if len(m) != n_rows or len(m) + len(r) != shard_inputs:
            raise StoreError(f"{store_dir}: {name} is inconsistent ({len(m)} manifest rows, {n_rows} "
                             f"signals, {len(r)} rejects for {shard_inputs} inputs); delete it and re-run")
        mparts.append(m)
        rparts.append(r)
    manifest = pd.concat(mparts, ignore_index=True) if mparts else pd.DataFrame()
    rejects = normalise_rejects(pd.concat(rparts, ignore_index=True))
    # every input is accounted for, exactly once
    assert len(df) == len(manifest) + len(rejects), (len(df), len(manifest), len(rejects))
    seen = np.sort(np.concatenate([manifest["input_index"].to_numpy(np.int64),
                                   rejects["input_index"].to_numpy(np.int64)]))
    assert np.array_equal(seen, np.arange(len(df))), "an input was stored or rejected twice"

    manifest["split"] = assign_splits(manifest, task, seed)
    manifest["train_rank"] = train_ranks(manifest, seed)
    check_disjoint(manifest)
    cols = ["record_id", "patient_hash", "site", "label", "split", "train_rank", "shard", "offset", "source_path"]
    manifest = manifest[cols + [c for c in manifest.columns if c not in cols]]
    _write_parquet(run_dir / "manifest.parquet", manifest)
    _write_parquet(run_dir / "rejects.parquet", rejects)
    atomic_write(run_dir / "rejects.csv", lambda tmp: write_csv(rejects, tmp, index=False))
    _, shape, fs = store_layout(params["preprocess_kw"])
    classes = [c[len(LABEL_PREFIX):] for c in manifest.columns if c.startswith(LABEL_PREFIX)]
    info = {"format": STORE_FORMAT, "version": STORE_VERSION, "task": task.name,
            "n_inputs": len(df), "n_stored": len(manifest), "n_rejected": len(rejects),
            "n_shards": n_shards, "shard_size": params["shard_size"], "dtype": "float16",
            "shape": list(shape), "fs": int(fs) if fs == int(fs) else fs, "leads": params["leads"],
            "units": "microvolts",
            "seed": seed, "split_method": task.split, "fractions": list(task.fractions),
            "task_config": task.to_dict(), "preprocess_kw": params["preprocess_kw"],
            "salt_file": params.get("salt_file")}
    if classes:  # a multi-label task: its classes, in column order
        info["classes"] = classes
    atomic_write_text(run_dir / "store.json", json.dumps(info, indent=2) + "\n")


# ====================================================================== splits


# ---------------------------------------------------------------- array builds (Slurm array or local processes)


@dataclasses.dataclass(frozen=True)
class BuildPlan:
    """What every array task and the merge step derive, identically, from the inputs and build parameters."""

    run_dir: Path
    df: pd.DataFrame  # checked inputs with input_index
    task: TaskConfig
    seed: int
    salt: str
    params: dict  # what the output depends on (build_spec.json), then salt_file (recorded in store.json)
    n_shards: int
    manifest_columns: list[str]
    dtypes: dict[str, Any]

    def rows(self, i: int) -> list[dict]:
        """The input rows of shard ``i``."""
        size = self.params["shard_size"]
        return self.df.iloc[i * size:(i + 1) * size].to_dict("records")

    def spec(self, i: int, reader: Callable[[str], Any]) -> ShardSpec:
        """What :func:`build_shard` needs to build shard ``i`` (made lazily: at paper scale all rows at once
        would not fit in memory)."""
        r = self.rows(i)
        return ShardSpec(i, r, reader, str(self.run_dir / "store"), self.salt, self.params["preprocess_kw"],
                         self.manifest_columns, self.dtypes, input_stamps(r))


def plan_build(inputs: pd.DataFrame, run_dir: str | os.PathLike, *, task_cfg: "TaskConfig | str" = "custom",
               seed: int = 0, shard_size: int = 512, preprocess_kw: Mapping[str, Any] | None = None,
               salt: str | None = None, salt_file: str | os.PathLike | None = None) -> BuildPlan:
    """The preparation :func:`build_store` does before its shards, as one object (same arguments).

    Writes ``store/build_spec.json`` on the first call (later calls must match its fingerprint) and, without
    ``salt``/``salt_file``, ``salt.txt``: call it once before starting the array tasks so they never race to
    create either.
    """
    run_dir = Path(run_dir)
    task = load_task(task_cfg)
    if shard_size < 1:
        raise CohortError(f"shard_size must be >= 1, got {shard_size}")
    df = _check_inputs(inputs)
    given_salt = bool(salt)
    salt = salt if salt else read_or_create_salt(run_dir, salt_file)
    (run_dir / "store" / "parts").mkdir(parents=True, exist_ok=True)
    # what the output depends on (not workers/progress): a resumed build must match it
    params = {"task": task.to_dict(), "seed": int(seed), "shard_size": int(shard_size),
              "preprocess_kw": None if preprocess_kw is None else dict(preprocess_kw),
              "leads": list(store_layout(preprocess_kw)[0]), "format": STORE_FORMAT, "version": STORE_VERSION}
    _check_or_write_build_spec(run_dir, _fingerprint(df, salt, params), params)
    params["salt_file"] = None if given_salt else str(salt_path(run_dir, salt_file))  # store.json, as build_store
    extra = [c for c in df.columns if c not in (*INPUT_COLUMNS, "reject", "input_index")]
    manifest_columns = ["record_id", "patient_hash", "patient_source", "site", "label", "shard", "offset",
                        "source_path", "input_index", "fs_source", "n_samples_source", *extra]
    dtypes = {**_CORE_DTYPES, **{c: df[c].dtype for c in extra}}
    return BuildPlan(run_dir, df, task, int(seed), salt, params, max(1, math.ceil(len(df) / shard_size)),
                     manifest_columns, dtypes)


def shard_ranges(n_shards: int, n_tasks: int) -> list[range]:
    """``n_tasks`` contiguous shard ranges covering ``range(n_shards)``, sizes differing by at most one
    (a task beyond ``n_shards`` gets an empty range)."""
    if n_tasks < 1:
        raise CohortError(f"n_tasks must be >= 1, got {n_tasks}")
    q, r = divmod(n_shards, n_tasks)
    starts = [i * q + min(i, r) for i in range(n_tasks + 1)]
    return [range(starts[i], starts[i + 1]) for i in range(n_tasks)]


def build_shard_range(inputs: pd.DataFrame, reader: Callable[[str], Any], run_dir: str | os.PathLike, *,
                      task_index: int, n_tasks: int, workers: int = 1, **build_kw: Any) -> list[dict]:
    """Build the shards of array task ``task_index`` of ``n_tasks`` (:func:`shard_ranges`); no merge.

    Independent tasks (a Slurm array, local processes) may run at once over one ``run_dir``: each writes and
    cleans only its own shards, and skips those already built (resumable). ``build_kw`` are
    :func:`build_store`'s keyword arguments (task_cfg, seed, shard_size, preprocess_kw, salt, salt_file) and
    must be the same in every task and in :func:`merge_store`. Returns the counts of the shards built.
    """
    plan = plan_build(inputs, run_dir, **build_kw)
    store_dir = plan.run_dir / "store"
    mine = shard_ranges(plan.n_shards, n_tasks)[task_index]
    for i in mine:  # half-written files of a killed task: only this task's shards (others may be writing)
        for folder in (store_dir, store_dir / "parts"):
            for stale in folder.glob(f"{shard_name(i)}.*.tmp-*"):
                stale.unlink()
    todo = [i for i in mine if not _shard_done(store_dir, i, input_stamps(plan.rows(i)))]  # changed inputs: redone
    spec = functools.partial(plan.spec, reader=reader)
    if workers <= 1 or getattr(reader, "in_process", False) or len(todo) <= 1:
        return [build_shard(spec(i)) for i in todo]
    return list(_map_in_processes(build_shard, map(spec, todo), workers, min(workers, len(todo))))


def build_shards_in_order(inputs: pd.DataFrame, reader: Callable[[str], Any], run_dir: str | os.PathLike, *,
                          workers: int = 1, while_reading: Callable[[], Any] | None = None,
                          **build_kw: Any) -> Iterator[int]:
    """Build every shard of the store and yield each shard's index, in shard order, once it is built (no merge:
    :func:`merge_store` with the same ``build_kw`` follows), so a caller can use shard ``i`` while later shards are
    still being read. Resumable as :func:`build_shard_range` (finished shards are skipped and yielded at once).

    ``workers`` reader processes build the shards, at most ``4 * workers`` shards ahead of the caller. They are
    started with ``fork`` where the platform has it: a ``spawn`` worker starts Python and imports the reader and
    the filters (scipy.signal alone is 1.2 CPU s; 2.2 CPU s in all, measured), more than reading 512 MUSE files,
    while a forked one shares the parent's modules. The workers run only the reader, numpy/scipy filtering and
    the shard writes (no torch, no OpenMP region: forking beside torch's idle thread pool is safe for them; the
    child never enters it). A worker that dies (a file that crashes the reader, memory) leaves the remaining
    shards to :class:`_DeathProbe` (``spawn``, one file at a time), which rejects the culprit as
    :func:`build_store` does. An in-memory reader (``reader.in_process``) is read in this process.

    ``while_reading``, when given, is called once in this process as soon as the readers have started (before the
    first shard is awaited), else before building in this process: work that needs no ECG fills that wait.
    """
    plan = plan_build(inputs, run_dir, **build_kw)
    store_dir = plan.run_dir / "store"
    for stale in store_dir.rglob("*.tmp-*"):  # half-written files of a killed build
        stale.unlink()
    rows, spec = plan.rows, functools.partial(plan.spec, reader=reader)

    # a shard with its files is redone when its inputs changed; the inputs' stamps (4 stat calls per file) only
    # for those: a fresh build starts its readers at once
    todo = [i for i in range(plan.n_shards)
            if not (_shard_done(store_dir, i) and _shard_done(store_dir, i, input_stamps(rows(i))))]
    if getattr(reader, "in_process", False) or not todo:
        if while_reading is not None:
            while_reading()
        for i in range(plan.n_shards):
            if i in todo:
                build_shard(spec(i))
            yield i
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    ahead = collections.deque(todo)
    running: collections.deque[tuple[int, cf.Future]] = collections.deque()
    broken = False
    with cf.ProcessPoolExecutor(max_workers=max(1, min(workers, len(todo))),
                                mp_context=multiprocessing.get_context(method), initializer=die_with_parent,
                                initargs=(os.getpid(),)) as pool:
        try:
            first = spec(ahead[0])
            gc.freeze()  # the first submit forks the workers: their collector then skips every inherited object
            try:  # (a collection touching them all copied this process's pages: 3x the workers' system time)
                running.append((ahead.popleft(), pool.submit(build_shard, first)))
            finally:
                gc.unfreeze()
            if while_reading is not None:
                while_reading()
            for i in range(plan.n_shards):
                while ahead and len(running) < 4 * workers:
                    j = ahead.popleft()
                    running.append((j, pool.submit(build_shard, spec(j))))
                if running and running[0][0] == i:
                    running.popleft()[1].result()
                if i == plan.n_shards - 1:  # every shard built: the workers exit while the caller uses the last one
                    pool.shutdown(wait=False)  # (30-40 ms with nothing else running, 512 MUSE files)
                yield i
        except cf.process.BrokenProcessPool:  # a file killed its worker: find it, reject it, go on
            broken = True
        finally:
            for _, f in running:
                f.cancel()
    if broken:
        probe = _DeathProbe()
        try:
            for i in range(i, plan.n_shards):
                if not _shard_done(store_dir, i):
                    build_shard(probe.mark(spec(i)))
                yield i
        finally:
            probe.close()


def merge_store(inputs: pd.DataFrame, run_dir: str | os.PathLike, **build_kw: Any) -> "CohortStore":
    """The merge step after the array tasks: manifest, rejects and ``store.json`` from the built shards.

    Byte-identical to :func:`build_store` in one process with the same arguments; asserts
    ``len(inputs) == len(manifest) + len(rejects)``.

    Raises
    ------
    StoreError : a shard is not built yet (its task failed or is still running).
    """
    plan = plan_build(inputs, run_dir, **build_kw)
    missing = [i for i in range(plan.n_shards) if not _shard_done(plan.run_dir / "store", i)]
    if missing:
        raise StoreError(f"{plan.run_dir}: {len(missing)} of {plan.n_shards} shards are not built yet (e.g. "
                         f"{[shard_name(i) for i in missing[:5]]}); re-run their array tasks, then merge")
    _merge(plan.run_dir, plan.df, plan.task, plan.seed, plan.n_shards, plan.params)
    return CohortStore(plan.run_dir)
