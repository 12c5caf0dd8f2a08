"""Cohort stores, fine-tuning tasks, patient-disjoint splits and the paper's Table 1.

A *cohort store* is the output folder of ``notebooks/01_preprocess.ipynb``
(``outputs/01_preprocess/<run_id>/``)::

    store/shard-00000.npy ...      float16 (n_shard, 8, 2500) microvolts, leads I, II, V1-V6, 500 Hz
    store/parts/shard-00000.*.parquet  per-shard manifest / rejects parts (what makes a build resumable)
    store/build_spec.json          fingerprint of inputs + parameters (a resumed build must match it)
    manifest.parquet               one row per stored ECG, in store order (see :class:`CohortStore`)
    rejects.parquet, rejects.csv   one row per input that could not be stored, with the reason
    store.json                     task, counts, shapes, parameters
    salt.txt                       secret salt of the patient hashes (only when none was given)

Every input is accounted for: ``n_inputs == len(manifest) + len(rejects)`` (asserted by
:func:`build_store`). Raw patient ids are never written anywhere: the manifest holds
``patient_hash = sha256(salt + "\\0" + patient_id)``. Keep ``salt.txt`` (or the salt file you
pass) private; anyone holding both the salt and a list of candidate ids can test them.

**Why float16 microvolts.** The filtered signals of real ECGs stay within about +-10 mV
(+-10,000 uV), where float16's spacing is at most 8 uV (2 uV below 4 mV, 0.5 uV below 1 mV),
below the 4.88 uV resolution of a MUSE export. float16's largest finite value is 65,504:
a filtered ECG beyond +-65.5 mV is not physiological and means a wrong gain or unit, so such a
record is **rejected** (:class:`AmplitudeRangeError`) rather than clipped, which would hide
the error.

Tasks live in ``parameters/tasks/<name>.yaml`` (:class:`TaskConfig`, :func:`load_task`);
splits are computed once, when the store is built, and saved in the manifest
(``split``, ``train_rank``), so every model and every run reads the same patients.
"""

from __future__ import annotations

import ast
import concurrent.futures as cf
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import secrets
import warnings
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import yaml

from heartbeit_lib.pipeline import runs

TASKS_DIR = runs.PARAMETERS_DIR / "tasks"
STORE_FORMAT = "heartbeit-cohort-store"
STORE_VERSION = 1
N_LEADS = 8
N_SAMPLES = 2500  # 5 s at 500 Hz (the paper truncates every ECG to 2,500 samples)
STORE_FS = 500
FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504.0
SPLITS = ("train", "val", "test", "external", "unassigned")
SPLIT_METHODS = ("group_shuffle", "ptbxl_folds", "none")
LABEL_RULES = ("ptbxl_scp", "csv_label", "csv_threshold", "given", "none")
DEFAULT_FRACTIONS = (0.01, 0.1, 0.25, 0.5, 1.0)
# columns of an inputs table (one row per input record, see build_store)
INPUT_COLUMNS = ("source_path", "record_id", "patient_id", "site", "label")
REJECT_COLUMNS = ("input_index", "source_path", "record_id", "stage", "error_type", "reason")
_FRACTION_EPS = 1e-9  # 0.1 * 30 == 3.0000000000000004 must give 3 rows, not 4


# ====================================================================== errors


class CohortError(ValueError):
    """A cohort store, task or split could not be built or read (the message says which and why)."""


class TaskError(CohortError):
    """A task file is missing, has unknown keys or an invalid value."""


class SplitError(CohortError):
    """A split cannot be made (too few patients, a patient crossing splits, a missing column)."""


class StoreError(CohortError):
    """A store folder is missing, incomplete, or was built with other inputs/parameters."""


class RecordError(CohortError):
    """One input record cannot be stored; :func:`build_store` turns it into a reject row."""


class LabelError(RecordError):
    """The record has no usable label for a labelled task (e.g. an empty LVEF value)."""


class NonFiniteOutputError(RecordError):
    """The signal to be stored holds NaN or inf."""


class AmplitudeRangeError(RecordError):
    """The preprocessed signal exceeds float16's range (+-65,504 uV): a wrong gain or unit."""


class StoredShapeError(RecordError):
    """A signal given as already preprocessed is not (8, 2500)."""


# ====================================================================== tasks


@dataclasses.dataclass(frozen=True)
class TaskConfig(runs.TypedConfig):
    """A labelled (or unlabelled) task over a data source, read from ``parameters/tasks/<name>.yaml``.

    Label rules (``label_rule``)
        ``ptbxl_scp``: positive when ``scp_codes`` holds a diagnostic statement
        (``scp_statements.diagnostic == 1``) whose ``diagnostic_class`` is in ``scp_classes`` with
        likelihood >= ``scp_min_likelihood`` (0 = any, as the PTB-XL benchmark), and, when
        ``infarction_stadia`` is not empty, ``infarction_stadium1`` or ``infarction_stadium2`` is one
        of them. ``csv_label``: 0/1 column ``label_column`` of the labels CSV. ``csv_threshold``:
        positive when ``value_column`` compares to ``threshold`` by ``positive_if`` (``le`` = <=).
        ``given``: labels supplied with the data (demo, in-memory arrays). ``none``: unlabelled (-1).
    Splits (``split``)
        ``group_shuffle``: sklearn ``GroupShuffleSplit`` on patients (``test_size``), then again on the
        remaining patients for validation (``val_size`` of them); ``ptbxl_folds``: ``strat_fold`` in
        ``train_folds`` / ``val_folds`` / ``test_folds``; ``none``: every row ``unassigned``.
        Rows of ``external_site`` become ``external`` in every method.
    """

    name: str = ""
    description: str = ""
    source: str = "any"  # the data source the label rule is written for
    label_rule: str = "given"
    positive_name: str = "positive"  # what label 1 means, for tables and plots
    # ptbxl_scp
    scp_classes: tuple[str, ...] = ()
    scp_min_likelihood: float = 0.0
    infarction_stadia: tuple[str, ...] = ()
    # labels CSV (muse / wfdb): column names
    id_column: str = "ecg_id"
    patient_column: str = "patient_id"
    site_column: str = "site"
    file_column: str = ""  # relative path of the record; empty -> <data_root>/<ecg id>.<ext>
    label_column: str = "label"
    value_column: str = ""
    threshold: float = 40.0
    positive_if: str = "le"
    # splits
    split: str = "group_shuffle"
    test_size: float = 0.2
    val_size: float = 0.1
    external_site: str = ""
    train_folds: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8)
    val_folds: tuple[int, ...] = (9,)
    test_folds: tuple[int, ...] = (10,)
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS

    choices: ClassVar[dict[str, tuple]] = {
        "source": ("any", "ptbxl", "muse", "wfdb", "demo"),
        "label_rule": LABEL_RULES,
        "positive_if": ("le", "lt", "ge", "gt"),
        "split": SPLIT_METHODS,
    }

    def validate(self) -> None:
        where = f"task {self.name!r}"
        if self.label_rule == "ptbxl_scp" and not self.scp_classes:
            raise TaskError(f"{where}: label_rule ptbxl_scp needs scp_classes (e.g. [MI])")
        if self.label_rule == "csv_threshold" and not self.value_column:
            raise TaskError(f"{where}: label_rule csv_threshold needs value_column (e.g. lvef)")
        if not 0.0 < self.test_size < 1.0:
            raise TaskError(f"{where}: test_size must be in (0, 1), got {self.test_size}")
        if not 0.0 <= self.val_size < 1.0:
            raise TaskError(f"{where}: val_size must be in [0, 1), got {self.val_size}")
        if not self.fractions or any(not 0.0 < f <= 1.0 for f in self.fractions):
            raise TaskError(f"{where}: fractions must lie in (0, 1], got {list(self.fractions)}")
        folds = [*self.train_folds, *self.val_folds, *self.test_folds]
        if len(set(folds)) != len(folds):
            raise TaskError(f"{where}: train/val/test folds overlap: {folds}")

    @property
    def labelled(self) -> bool:
        return self.label_rule != "none"

    def with_overrides(self, **overrides: Any) -> "TaskConfig":
        """A copy with the given fields replaced (``None`` or ``""`` values are ignored)."""
        kw = {k: v for k, v in overrides.items() if v is not None and v != ""}
        return dataclasses.replace(self, **kw) if kw else self


def task_names() -> list[str]:
    """Names of the tasks defined in ``parameters/tasks/*.yaml``."""
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def load_task(name_or_path: "str | os.PathLike | TaskConfig", **overrides: Any) -> TaskConfig:
    """Load a task by name (``parameters/tasks/<name>.yaml``) or from a YAML path.

    Unknown keys raise :class:`TaskError` (a typo like ``extrenal_site`` must not silently
    fall back to the default). ``overrides`` replace fields; ``None``/``""`` values are ignored,
    so a notebook can pass ``split=cfg.split`` with ``""`` meaning "the task's default".
    """
    if isinstance(name_or_path, TaskConfig):
        return name_or_path.with_overrides(**overrides)
    p = Path(name_or_path)
    if p.suffix not in (".yaml", ".yml"):
        p = TASKS_DIR / f"{name_or_path}.yaml"
        if not p.exists():
            raise TaskError(f"task {str(name_or_path)!r}: no file {p}; known tasks: {task_names()}")
    if not p.exists():
        raise TaskError(f"task file {p} does not exist")
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict):
        raise TaskError(f"task file {p}: must hold a mapping, got {type(data).__name__}")
    if "name" in data and data["name"] != p.stem:
        raise TaskError(f"task file {p}: name {data['name']!r} differs from the file name {p.stem!r}")
    data = {"name": p.stem, **data}
    try:
        cfg = TaskConfig.from_dict(data)
    except runs.UnknownParameterError as e:
        raise TaskError(f"task file {p}: {e}") from None
    except runs.ConfigError as e:
        raise TaskError(f"task file {p}: {e}") from None
    return cfg.with_overrides(**overrides)


# ---------------------------------------------------------------- label rules


def ptbxl_labels(db: pd.DataFrame, statements: pd.DataFrame, task: TaskConfig) -> np.ndarray:
    """0/1 labels of PTB-XL rows under a ``ptbxl_scp`` task.

    Parameters
    ----------
    db : DataFrame
        ``ptbxl_database.csv`` rows; ``scp_codes`` as dicts (statement -> likelihood 0-100) or their
        string form; ``infarction_stadium1/2`` columns (used when ``task.infarction_stadia``).
    statements : DataFrame
        ``scp_statements.csv`` indexed by statement code (``diagnostic``, ``diagnostic_class``).
    task : TaskConfig
        ``scp_classes``, ``scp_min_likelihood``, ``infarction_stadia``.

    Returns
    -------
    ndarray int64 (len(db),)
    """
    diag = statements[(statements["diagnostic"] == 1) & statements["diagnostic_class"].isin(task.scp_classes)]
    codes = set(diag.index)
    scp = db["scp_codes"].map(lambda v: ast.literal_eval(v) if isinstance(v, str) else v)
    pos = scp.map(lambda d: any(k in codes and float(lik) >= task.scp_min_likelihood for k, lik in d.items()))
    pos = np.array(pos.to_numpy(bool))  # a writable copy (pandas may hand out a read-only view)
    if task.infarction_stadia:
        stadia = set(task.infarction_stadia)
        cols = [c for c in ("infarction_stadium1", "infarction_stadium2") if c in db.columns]
        if not cols:
            raise TaskError(f"task {task.name!r}: infarction_stadia given but the table has no "
                            "infarction_stadium1/2 columns")
        acute = np.zeros(len(db), bool)
        for c in cols:
            acute |= db[c].isin(stadia).to_numpy(bool)
        pos = pos & acute
    return pos.astype(np.int64)


def threshold_labels(values: pd.Series, task: TaskConfig) -> np.ndarray:
    """0/1 labels from a numeric column (e.g. LVEF %), -1 where the value is missing.

    ``positive_if='le'`` with ``threshold=40`` gives label 1 for LVEF <= 40 %.
    """
    v = pd.to_numeric(values, errors="coerce").to_numpy(float)
    op = {"le": np.less_equal, "lt": np.less, "ge": np.greater_equal, "gt": np.greater}[task.positive_if]
    with np.errstate(invalid="ignore"):
        lab = op(v, task.threshold).astype(np.int64)
    lab[~np.isfinite(v)] = -1
    return lab


# ====================================================================== patient hashes


def read_or_create_salt(run_dir: str | os.PathLike, salt_file: str | os.PathLike = "") -> str:
    """The salt for patient hashes: from ``salt_file`` if given, else ``<run_dir>/salt.txt``,
    created with 128 random bits on first use (so a resumed build reuses it)."""
    if salt_file:
        p = Path(salt_file)
        if not p.exists():
            raise StoreError(f"salt_file {p} does not exist")
        salt = p.read_text().strip()
        if not salt:
            raise StoreError(f"salt_file {p} is empty")
        return salt
    p = Path(run_dir) / "salt.txt"
    if p.exists():
        return p.read_text().strip()
    p.parent.mkdir(parents=True, exist_ok=True)
    salt = secrets.token_hex(16)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(salt + "\n")
    os.replace(tmp, p)
    return salt


def hash_patient(patient_id: Any, salt: str) -> str:
    """``sha256(salt + '\\0' + str(patient_id))`` as 64 hex characters."""
    return hashlib.sha256(f"{salt}\0{patient_id}".encode()).hexdigest()


def _clean_id(v: Any) -> str:
    """Patient/record ids as strings; ``15709.0`` (PTB-XL stores ids as floats) -> ``'15709'``."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    if isinstance(v, (np.integer,)):
        return str(int(v))
    s = str(v).strip()
    return "" if s.lower() in ("nan", "none") else s


# ====================================================================== readers


@dataclasses.dataclass
class ArrayRecord:
    """Minimal record for in-memory signals (same attributes as ``io.ECGRecord``)."""

    signal: np.ndarray  # float32 (leads, samples) microvolts
    fs: float
    leads: tuple[str, ...]
    meta: dict


class ArrayReader:
    """``reader('array[i]')`` -> row ``i`` of an in-memory (N, leads, samples) microvolt array.

    Builds from arrays run in the calling process (``in_process=True``, the default): the data
    are already in memory and sending them to worker processes would copy them.
    """

    def __init__(self, x: np.ndarray, fs: float, leads: Sequence[str], in_process: bool = True):
        if x.ndim != 3 or x.shape[1] != len(leads):
            raise CohortError(f"arrays: x must be (N, {len(leads)} leads, samples), got {x.shape}")
        self.x, self.fs, self.leads, self.in_process = x, float(fs), tuple(leads), in_process

    @staticmethod
    def path(i: int) -> str:
        return f"array[{i}]"

    def __call__(self, source_path: str) -> ArrayRecord:
        if not (source_path.startswith("array[") and source_path.endswith("]")):
            raise CohortError(f"ArrayReader: {source_path!r} is not of the form 'array[i]'")
        i = int(source_path[6:-1])
        return ArrayRecord(np.asarray(self.x[i], np.float32), self.fs, self.leads, {})


def _rejectable() -> tuple[type[BaseException], ...]:
    """Exception types that make an input a reject; anything else propagates (a bug)."""
    from heartbeit_lib import io as hio  # deferred: signals imports scipy.signal
    from heartbeit_lib import signals

    return (RecordError, hio.ECGReadError, signals.SignalError)


def _output_leads() -> tuple[str, ...]:
    from heartbeit_lib.signals import OUTPUT_LEADS

    return tuple(OUTPUT_LEADS)


# ====================================================================== building


def _shard_name(i: int) -> str:
    return f"shard-{i:05d}"


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def _write_npy(path: Path, arr: np.ndarray) -> None:
    def w(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)

    _atomic_write(path, w)


def _write_parquet(path: Path, df: pd.DataFrame) -> None:
    _atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False, engine="pyarrow"))


def _write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda tmp: tmp.write_text(text))


def _shard_done(store_dir: Path, i: int) -> bool:
    name = _shard_name(i)
    return all((p.exists() for p in (store_dir / f"{name}.npy",
                                     store_dir / "parts" / f"{name}.manifest.parquet",
                                     store_dir / "parts" / f"{name}.rejects.parquet")))


def _preprocess_group(x: np.ndarray, fs: float, leads: tuple[str, ...], preprocess_kw: Mapping | None
                      ) -> np.ndarray:
    """(n, L, T) microvolts -> float32 (n, 8, 2500); ``preprocess_kw=None`` means already preprocessed."""
    if preprocess_kw is None:
        if x.shape[1:] != (N_LEADS, N_SAMPLES):
            raise StoredShapeError(f"signal given as preprocessed must be ({N_LEADS}, {N_SAMPLES}), "
                                   f"got {x.shape[1:]}")
        return np.asarray(x, np.float32)
    from heartbeit_lib import signals

    return np.asarray(signals.preprocess(x, fs, list(leads), **dict(preprocess_kw)), np.float32)


def _check_range(y: np.ndarray, where: str) -> None:
    if not np.isfinite(y).all():
        raise NonFiniteOutputError(f"{where}: preprocessed signal holds NaN/inf")
    peak = float(np.abs(y).max()) if y.size else 0.0
    if peak > FLOAT16_MAX:
        raise AmplitudeRangeError(f"{where}: preprocessed peak {peak:.0f} uV exceeds float16's "
                                  f"+-{FLOAT16_MAX:.0f} uV (wrong gain or unit?)")


def _build_shard(spec: dict) -> dict:
    """Read, preprocess and write one shard (runs in a worker process). Returns counts."""
    store_dir = Path(spec["store_dir"])
    name = _shard_name(spec["shard"])
    reader = spec["reader"]
    rows: list[dict] = spec["rows"]
    salt: str = spec["salt"]
    rejectable = _rejectable()
    rejects: list[dict] = []

    def reject(row: dict, stage: str, err: BaseException) -> None:
        path, why = str(row["source_path"]), str(err)
        rejects.append({"input_index": int(row["input_index"]), "source_path": path,
                        "record_id": str(row["record_id"]), "stage": stage, "error_type": type(err).__name__,
                        "reason": why if path in why else f"{path}: {why}"})

    # 1. read
    recs: list[tuple[dict, Any]] = []
    for row in rows:
        if row.get("reject"):
            reject(row, "inputs", LabelError(str(row["reject"])))
            continue
        try:
            rec = reader(row["source_path"])
        except rejectable as e:
            reject(row, "read", e)
            continue
        recs.append((row, rec))

    # 2. preprocess, batched over records of the same rate / leads / length
    out: dict[int, np.ndarray] = {}
    groups: dict[tuple, list[int]] = {}
    for j, (row, rec) in enumerate(recs):
        sig = np.asarray(rec.signal)
        key = (float(rec.fs), tuple(str(l).upper() for l in rec.leads), sig.shape)
        groups.setdefault(key, []).append(j)
    pkw = spec["preprocess_kw"]
    chunk = 256  # bounds peak memory: 256 x 12 x 5000 float32 = 61 MB
    failed: list[int] = []
    for (fs, leads, _), js in groups.items():
        for s in range(0, len(js), chunk):
            part = js[s:s + chunk]
            x = np.stack([np.asarray(recs[j][1].signal, np.float32) for j in part])
            try:
                y = _preprocess_group(x, fs, leads, pkw)
            except rejectable:
                failed.extend(part)  # redo one by one to find the culprits
                continue
            for k, j in enumerate(part):
                out[j] = y[k]
    for j in sorted(failed):
        row, rec = recs[j]
        try:
            out[j] = _preprocess_group(np.asarray(rec.signal, np.float32)[None], float(rec.fs),
                                       tuple(str(l).upper() for l in rec.leads), pkw)[0]
        except rejectable as e:
            reject(row, "preprocess", e)

    # 3. range checks, manifest rows
    sigs, mrows = [], []
    for j, (row, rec) in enumerate(recs):
        if j not in out:
            continue
        try:
            _check_range(out[j], str(row["source_path"]))
        except rejectable as e:
            reject(row, "store", e)
            continue
        meta = getattr(rec, "meta", None) or {}
        pid, psrc = _clean_id(row.get("patient_id")), "input"
        if not pid:
            pid, psrc = _clean_id(meta.get("patient_id")), "record"
        if not pid:  # no patient id anywhere: the record is its own patient (documented)
            pid, psrc = "record:" + str(row["record_id"]), "record_id"
        site = _clean_id(row.get("site")) or _clean_id(meta.get("site")) or "unknown"
        m = {k: v for k, v in row.items() if k not in ("patient_id", "reject")}
        m.update(patient_hash=hash_patient(pid, salt), patient_source=psrc, site=site,
                 shard=int(spec["shard"]), offset=len(sigs), fs_source=float(rec.fs),
                 n_samples_source=int(np.asarray(rec.signal).shape[-1]))
        mrows.append(m)
        sigs.append(out[j])

    arr = (np.stack(sigs) if sigs else np.zeros((0, N_LEADS, N_SAMPLES), np.float32)).astype(np.float16)
    mdf = pd.DataFrame(mrows, columns=spec["manifest_columns"]) if mrows else \
        pd.DataFrame({c: pd.Series(dtype=spec["dtypes"].get(c, "object")) for c in spec["manifest_columns"]})
    rdf = pd.DataFrame(sorted(rejects, key=lambda r: r["input_index"]), columns=list(REJECT_COLUMNS))
    parts = store_dir / "parts"
    # parts first, the array last: a shard counts as done only when all three exist
    _write_parquet(parts / f"{name}.rejects.parquet", _normalise_rejects(rdf))
    _write_parquet(parts / f"{name}.manifest.parquet", _normalise_manifest(mdf, spec["dtypes"]))
    _write_npy(store_dir / f"{name}.npy", arr)
    return {"shard": spec["shard"], "stored": len(mrows), "rejected": len(rejects)}


def _normalise_rejects(df: pd.DataFrame) -> pd.DataFrame:
    df = df.reindex(columns=list(REJECT_COLUMNS))
    df["input_index"] = df["input_index"].astype(np.int64)
    for c in REJECT_COLUMNS[1:]:
        df[c] = df[c].astype(str)
    return df.reset_index(drop=True)


_CORE_DTYPES = {"record_id": str, "patient_hash": str, "patient_source": str, "site": str,
                "label": np.int64, "shard": np.int64, "offset": np.int64, "source_path": str,
                "input_index": np.int64, "fs_source": np.float64, "n_samples_source": np.int64}


def _normalise_manifest(df: pd.DataFrame, dtypes: Mapping[str, Any]) -> pd.DataFrame:
    df = df.copy()
    for c, t in dtypes.items():
        if c in df.columns:
            df[c] = df[c].astype(t)
    return df.reset_index(drop=True)


def _check_inputs(inputs: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in ("source_path", "record_id") if c not in inputs.columns]
    if missing:
        raise CohortError(f"inputs table: missing column(s) {missing}; needs {list(INPUT_COLUMNS)}")
    df = inputs.reset_index(drop=True).copy()
    for c, default in (("patient_id", ""), ("site", ""), ("label", -1), ("reject", "")):
        if c not in df.columns:
            df[c] = default
    df["record_id"] = df["record_id"].map(_clean_id)
    df["source_path"] = df["source_path"].astype(str)
    df["patient_id"] = df["patient_id"].map(_clean_id)
    df["site"] = df["site"].map(_clean_id)
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


def build_store(inputs: pd.DataFrame, reader: Callable[[str], Any], run_dir: str | os.PathLike, *,
                task_cfg: "TaskConfig | str" = "custom", seed: int = 0, shard_size: int = 512,
                workers: int = 2, preprocess_kw: Mapping[str, Any] | None = None,
                salt: str | None = None, salt_file: str | os.PathLike = "", progress: bool = True
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
        Salt of the patient hashes, or a file holding it; neither -> ``<run_dir>/salt.txt``
        (created once, reused when resuming).
    progress : bool
        tqdm progress bar over inputs.

    Returns
    -------
    CohortStore
    """
    from tqdm.auto import tqdm

    run_dir = Path(run_dir)
    task = load_task(task_cfg)
    if shard_size < 1:
        raise CohortError(f"shard_size must be >= 1, got {shard_size}")
    df = _check_inputs(inputs)
    salt = salt if salt else read_or_create_salt(run_dir, salt_file)
    store_dir = run_dir / "store"
    (store_dir / "parts").mkdir(parents=True, exist_ok=True)

    # what the output depends on (not workers/progress): a resumed build must match it
    params = {"task": task.to_dict(), "seed": int(seed), "shard_size": int(shard_size),
              "preprocess_kw": None if preprocess_kw is None else dict(preprocess_kw),
              "leads": list(_output_leads()), "format": STORE_FORMAT, "version": STORE_VERSION}
    fp = _fingerprint(df, salt, params)
    spec_path = store_dir / "build_spec.json"
    if spec_path.exists():
        old = json.loads(spec_path.read_text()).get("fingerprint")
        if old != fp:
            raise StoreError(f"{run_dir}: holds a build of other inputs or parameters (fingerprint "
                             f"{str(old)[:12]} != {fp[:12]}); use a new run_id or delete the folder")
    else:
        _write_text(spec_path, json.dumps({"fingerprint": fp, **params}, indent=2, sort_keys=True) + "\n")

    extra = [c for c in df.columns if c not in (*INPUT_COLUMNS, "reject", "input_index")]
    manifest_columns = ["record_id", "patient_hash", "patient_source", "site", "label", "shard", "offset",
                        "source_path", "input_index", "fs_source", "n_samples_source", *extra]
    dtypes = {**_CORE_DTYPES, **{c: df[c].dtype for c in extra}}
    n_shards = max(1, math.ceil(len(df) / shard_size))
    for stale in store_dir.rglob("*.tmp-*"):  # half-written files of a killed build
        stale.unlink()
    todo = [i for i in range(n_shards) if not _shard_done(store_dir, i)]

    def spec(i: int) -> dict:  # built lazily: at paper scale all rows at once would not fit
        return {"shard": i, "rows": df.iloc[i * shard_size:(i + 1) * shard_size].to_dict("records"),
                "reader": reader, "store_dir": str(store_dir), "salt": salt,
                "preprocess_kw": params["preprocess_kw"], "manifest_columns": manifest_columns, "dtypes": dtypes}

    def n_rows(i: int) -> int:
        return min(len(df), (i + 1) * shard_size) - i * shard_size

    bar = tqdm(total=len(df), initial=len(df) - sum(n_rows(i) for i in todo), unit="ecg",
               desc="01_preprocess", disable=not progress, mininterval=1.0)
    try:
        if workers <= 1 or getattr(reader, "in_process", False) or len(todo) <= 1:
            for i in todo:
                _build_shard(spec(i))
                bar.update(n_rows(i))
        else:
            ctx = multiprocessing.get_context("spawn")  # fork is unsafe with torch/BLAS threads alive
            with cf.ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx) as pool:
                queue, running = list(reversed(todo)), {}
                try:
                    while queue or running:
                        while queue and len(running) < 2 * workers:  # bounded: specs hold their rows
                            i = queue.pop()
                            running[pool.submit(_build_shard, spec(i))] = i
                        finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                        for f in finished:
                            f.result()  # re-raises a worker's error (non-reject errors propagate)
                            bar.update(n_rows(running.pop(f)))
                except BaseException:
                    for f in running:
                        f.cancel()
                    raise
    finally:
        bar.close()
    _merge(run_dir, df, task, int(seed), n_shards, params)
    return CohortStore(run_dir)


def _merge(run_dir: Path, df: pd.DataFrame, task: TaskConfig, seed: int, n_shards: int, params: dict) -> None:
    """Concatenate the shard parts (in shard order), assign splits and write the final tables."""
    store_dir = run_dir / "store"
    mparts, rparts = [], []
    for i in range(n_shards):
        name = _shard_name(i)
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
    rejects = _normalise_rejects(pd.concat(rparts, ignore_index=True))
    # every input is accounted for, exactly once
    assert len(df) == len(manifest) + len(rejects), (len(df), len(manifest), len(rejects))
    seen = np.sort(np.concatenate([manifest["input_index"].to_numpy(np.int64),
                                   rejects["input_index"].to_numpy(np.int64)]))
    assert np.array_equal(seen, np.arange(len(df))), "an input was stored or rejected twice"

    manifest["split"] = assign_splits(manifest, task, seed)
    manifest["train_rank"] = train_ranks(manifest, seed)
    _check_disjoint(manifest)
    cols = ["record_id", "patient_hash", "site", "label", "split", "train_rank", "shard", "offset", "source_path"]
    manifest = manifest[cols + [c for c in manifest.columns if c not in cols]]
    _write_parquet(run_dir / "manifest.parquet", manifest)
    _write_parquet(run_dir / "rejects.parquet", rejects)
    _atomic_write(run_dir / "rejects.csv", lambda tmp: rejects.to_csv(tmp, index=False))
    info = {"format": STORE_FORMAT, "version": STORE_VERSION, "task": task.name,
            "n_inputs": len(df), "n_stored": len(manifest), "n_rejected": len(rejects),
            "n_shards": n_shards, "shard_size": params["shard_size"], "dtype": "float16",
            "shape": [N_LEADS, N_SAMPLES], "fs": STORE_FS, "leads": params["leads"], "units": "microvolts",
            "seed": seed, "split_method": task.split, "fractions": list(task.fractions),
            "task_config": task.to_dict(), "preprocess_kw": params["preprocess_kw"]}
    _write_text(run_dir / "store.json", json.dumps(info, indent=2) + "\n")


# ====================================================================== splits


def _patient_codes(manifest: pd.DataFrame) -> np.ndarray:
    """Integer patient codes in order of first appearance.

    Splits are drawn on these, not on the hashes, so they do not depend on the salt: two builds
    of the same inputs with different salts give the same splits.
    """
    codes, _ = pd.factorize(manifest["patient_hash"], sort=False)
    return codes.astype(np.int64)


def _group_split(idx: np.ndarray, groups: np.ndarray, size: float, seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """sklearn ``GroupShuffleSplit(n_splits=1, test_size=size, random_state=seed)`` over ``idx``.

    With fewer than 2 patients nothing can be held out: all of ``idx`` is kept (with a warning).
    """
    from sklearn.model_selection import GroupShuffleSplit

    if len(np.unique(groups[idx])) < 2:
        warnings.warn(f"{what}: only {len(np.unique(groups[idx]))} patient(s); nothing held out", stacklevel=3)
        return idx, idx[:0]
    gss = GroupShuffleSplit(n_splits=1, test_size=size, random_state=seed)
    a, b = next(gss.split(np.zeros(len(idx)), groups=groups[idx]))
    return idx[np.sort(a)], idx[np.sort(b)]


def assign_splits(manifest: pd.DataFrame, task: TaskConfig, seed: int) -> np.ndarray:
    """Split of every manifest row: ``train``, ``val``, ``test``, ``external`` or ``unassigned``.

    ``external_site`` rows -> ``external``; other rows of patients seen at the external site ->
    ``unassigned`` (keeps the external set site-pure and every split patient-disjoint); in a
    labelled task, rows with label -1 -> ``unassigned`` (kept in the store for pretraining). The rest:

    - ``group_shuffle``: ``GroupShuffleSplit(test_size, random_state=seed)`` on patients -> test;
      then ``GroupShuffleSplit(val_size, random_state=seed)`` on the remaining patients -> val
      (skipped when ``val_size == 0``), as the authors' code (test 20 %, constant seed) plus a
      validation set for model selection.
    - ``ptbxl_folds``: ``strat_fold`` in ``train_folds``/``val_folds``/``test_folds`` (PTB-XL's
      folds are patient-wise; checked), other folds -> ``unassigned``.
    - ``none``: all ``unassigned`` (pretraining cohorts).

    Returns
    -------
    ndarray of str (len(manifest),)
    """
    n = len(manifest)
    split = np.full(n, "unassigned", dtype=object)
    if n == 0:
        return split.astype(str)
    groups = _patient_codes(manifest)
    usable = manifest["label"].to_numpy(np.int64) >= 0 if task.labelled else np.ones(n, bool)
    internal = np.ones(n, bool)
    if task.external_site:
        ext = manifest["site"].astype(str).to_numpy() == task.external_site
        split[ext & usable] = "external"
        internal = ~np.isin(groups, np.unique(groups[ext]))
    internal &= usable  # unlabelled rows cannot train or evaluate a labelled task
    idx = np.flatnonzero(internal)
    if task.split == "group_shuffle" and len(idx):
        pool, test = _group_split(idx, groups, task.test_size, seed, f"task {task.name!r} test split")
        split[test] = "test"
        if task.val_size > 0:
            train, val = _group_split(pool, groups, task.val_size, seed, f"task {task.name!r} validation split")
            split[val] = "val"
        else:
            train = pool
        split[train] = "train"
    elif task.split == "ptbxl_folds" and len(idx):
        if "strat_fold" not in manifest.columns:
            raise SplitError(f"task {task.name!r}: split ptbxl_folds needs a strat_fold column")
        fold = pd.to_numeric(manifest["strat_fold"], errors="coerce").to_numpy()
        for name, folds in (("train", task.train_folds), ("val", task.val_folds), ("test", task.test_folds)):
            split[internal & np.isin(fold, folds)] = name
    return split.astype(str)


def train_ranks(manifest: pd.DataFrame, seed: int) -> np.ndarray:
    """Rank of each training row within its class (0, 1, ...), -1 outside ``train``.

    A seeded random permutation per class (classes in sorted order, one
    ``np.random.default_rng(seed)``). The fraction-``f`` training set is, in every class of
    ``n_c`` training rows, the rows of rank < ``ceil(f * n_c)``: stratified, nested (the 1 % set
    is inside the 10 % set), at least one row of each present class, and identical across runs.
    """
    rank = np.full(len(manifest), -1, np.int64)
    if len(manifest) == 0:
        return rank
    is_train = manifest["split"].to_numpy() == "train"
    labels = manifest["label"].to_numpy(np.int64)
    rng = np.random.default_rng(seed)
    for c in np.unique(labels[is_train]):
        rows = np.flatnonzero(is_train & (labels == c))
        rank[rows] = rng.permutation(len(rows))
    return rank


def fraction_size(n: int, fraction: float) -> int:
    """``ceil(fraction * n)`` robust to float error (0.1 * 30 -> 3)."""
    if not 0.0 < fraction <= 1.0:
        raise CohortError(f"fraction must be in (0, 1], got {fraction}")
    return min(n, math.ceil(fraction * n - _FRACTION_EPS))


def fraction_mask(manifest: pd.DataFrame, fraction: float) -> np.ndarray:
    """Boolean mask of the training rows in the nested, stratified ``fraction`` subset."""
    is_train = manifest["split"].to_numpy() == "train"
    labels = manifest["label"].to_numpy(np.int64)
    rank = manifest["train_rank"].to_numpy(np.int64)
    mask = np.zeros(len(manifest), bool)
    for c in np.unique(labels[is_train]):
        in_c = is_train & (labels == c)
        mask |= in_c & (rank < fraction_size(int(in_c.sum()), fraction))
    return mask


def _check_disjoint(manifest: pd.DataFrame) -> None:
    """Raise :class:`SplitError` if a patient has rows in two of train/val/test/external."""
    m = manifest[manifest["split"] != "unassigned"]
    per = m.groupby("patient_hash")["split"].nunique()
    bad = per[per > 1]
    if len(bad):
        raise SplitError(f"{len(bad)} patient(s) cross splits (e.g. hash {bad.index[0][:12]}...)")


# ====================================================================== the store


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
        self.info = json.loads(info_p.read_text())
        if self.info.get("format") != STORE_FORMAT:
            raise StoreError(f"{info_p}: format {self.info.get('format')!r} is not {STORE_FORMAT!r}")
        self.task: str = self.info["task"]
        self.manifest: pd.DataFrame = pd.read_parquet(man_p).reset_index(drop=True)
        self._shards: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.manifest)

    def __repr__(self) -> str:
        counts = self.manifest["split"].value_counts().to_dict()
        return f"CohortStore({str(self.root)!r}, task={self.task!r}, n={len(self)}, splits={counts})"

    def __getstate__(self) -> dict:  # memmaps are re-opened in the receiving process
        d = self.__dict__.copy()
        d["_shards"] = {}
        return d

    @property
    def rejects(self) -> pd.DataFrame:
        """Inputs that could not be stored: ``source_path``, ``record_id``, ``stage``, ``error_type``, ``reason``."""
        return pd.read_parquet(self.root / "rejects.parquet")

    @property
    def task_config(self) -> TaskConfig:
        return TaskConfig.from_dict(self.info["task_config"])

    def _shard(self, i: int) -> np.ndarray:
        if i not in self._shards:
            self._shards[i] = np.load(self.root / "store" / f"{_shard_name(i)}.npy", mmap_mode="r")
        return self._shards[i]

    def signals(self, idx: Iterable[int] | np.ndarray) -> np.ndarray:
        """ECGs of manifest rows ``idx`` as float32 (n, 8, 2500) microvolts (leads I, II, V1-V6, 500 Hz).

        Rows are read shard by shard (one fancy-index per shard memmap); the output follows the
        order of ``idx`` (duplicates allowed).
        """
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"{self.root}: row index out of range for {len(self)} ECGs")
        idx = np.where(idx < 0, idx + len(self), idx)
        out = np.empty((idx.size, N_LEADS, N_SAMPLES), np.float32)
        shard = self.manifest["shard"].to_numpy(np.int64)[idx]
        offset = self.manifest["offset"].to_numpy(np.int64)[idx]
        for s in np.unique(shard):
            pos = np.flatnonzero(shard == s)
            order = np.argsort(offset[pos], kind="stable")
            out[pos[order]] = self._shard(int(s))[offset[pos[order]]]
        return out

    def indices(self, split: str, fraction: float = 1.0) -> np.ndarray:
        """Sorted int64 row indices of ``split``; ``fraction < 1`` (train only) gives the saved
        nested, stratified subset (see :func:`train_ranks`)."""
        if split not in SPLITS:
            raise CohortError(f"split {split!r} is not one of {list(SPLITS)}")
        if fraction < 1.0 - _FRACTION_EPS:
            if split != "train":
                raise CohortError(f"fraction {fraction} < 1 is only defined for 'train', not {split!r}")
            return np.flatnonzero(fraction_mask(self.manifest, fraction)).astype(np.int64)
        fraction_size(1, fraction)  # validates the range
        return np.flatnonzero(self.manifest["split"].to_numpy() == split).astype(np.int64)

    def labels(self, idx: Iterable[int] | np.ndarray) -> np.ndarray:
        """int64 labels of rows ``idx``."""
        return self.manifest["label"].to_numpy(np.int64)[np.asarray(idx, np.int64)]


# ====================================================================== in-memory stores


def build_store_from_arrays(run_dir: str | os.PathLike, x: np.ndarray, meta: pd.DataFrame, task: "str | TaskConfig" = "custom",
                            seed: int = 0, fs: float = 500, leads: Sequence[str] | None = None,
                            preprocess: bool | None = None, preprocess_kw: Mapping[str, Any] | None = None,
                            shard_size: int = 512, salt: str | None = None, progress: bool = False
                            ) -> CohortStore:
    """Write a cohort store from in-memory signals (test fixtures, the synthetic demo).

    Parameters
    ----------
    run_dir : path
    x : ndarray (N, L, T) float microvolts at ``fs`` Hz, leads ``leads`` (default I, II, V1-V6)
    meta : DataFrame (N rows)
        ``record_id``, ``patient_id``, ``site``, ``label`` (0/1/-1); other columns are kept.
    task : task name or TaskConfig (default ``custom``: group shuffle split, labels as given)
    seed : split seed
    preprocess : bool or None
        ``True``: run :func:`signals.preprocess` (band-pass, median filter, resample, truncate);
        ``False``: store ``x`` as given (must be (N, 8, 2500)); ``None`` (default): ``False`` when
        ``x`` is already (N, 8, 2500) at 500 Hz in leads I, II, V1-V6, else ``True``.
    preprocess_kw : keyword arguments of :func:`signals.preprocess`
    salt : patient-hash salt (default: ``<run_dir>/salt.txt``)
    """
    x = np.asarray(x)
    leads = tuple(leads) if leads is not None else _output_leads()
    if len(meta) != len(x):
        raise CohortError(f"arrays: {len(x)} signals but {len(meta)} metadata rows")
    if preprocess is None:
        preprocess = not (x.ndim == 3 and x.shape[1:] == (N_LEADS, N_SAMPLES) and float(fs) == STORE_FS
                          and leads == _output_leads())
    inputs = meta.reset_index(drop=True).copy()
    if "record_id" not in inputs.columns:
        inputs["record_id"] = [f"rec{i:06d}" for i in range(len(inputs))]
    inputs.insert(0, "source_path", [ArrayReader.path(i) for i in range(len(x))])
    return build_store(inputs, ArrayReader(x, fs, leads), run_dir, task_cfg=task, seed=seed,
                       shard_size=shard_size, workers=1,
                       preprocess_kw=dict(preprocess_kw or {}) if preprocess else None,
                       salt=salt, progress=progress)


def build_pretraining_mix(cohort_run: str | os.PathLike, run_dir: str | os.PathLike, n_synthetic: int = 0,
                          splits: Sequence[str] = ("train",), synthetic_seed: int = 1234,
                          shard_size: int = 256) -> CohortStore:
    """An unlabelled pretraining store: a labelled cohort's ``splits`` ECGs plus ``n_synthetic``
    deepfake-ecg ECGs (for CPU-scale pretraining when the labelled cohort is small).

    Only the named splits of ``cohort_run`` are copied (default ``train``), so the validation and
    test ECGs of the downstream task are never seen in pretraining. Every row gets label -1 (task
    ``unlabelled``); ``02_pretrain`` then holds out a seeded share of patients for masked-token
    accuracy. Record ids are prefixed ``<site>_`` (cohort rows) and ``df`` (synthetic rows).

    Parameters
    ----------
    cohort_run : 01_preprocess run folder (preprocessed (N, 8, 2500) µV)
    run_dir : output store folder
    n_synthetic : deepfake ECGs generated (~95 ECGs/s on 2 cores), preprocessed like the demo source
    splits : cohort splits to copy
    synthetic_seed : seed of :func:`synthetic.generate_ecgs`
    """
    from heartbeit_lib import signals  # deferred: the generator checkpoint loads only when asked for
    from heartbeit_lib.cohorts import synthetic

    src = CohortStore(cohort_run)
    idx = np.concatenate([src.indices(s) for s in splits]) if splits else np.zeros(0, np.int64)
    if len(idx) == 0 and n_synthetic <= 0:
        raise CohortError(f"{cohort_run}: no ECGs in splits {list(splits)} and n_synthetic = {n_synthetic}")
    idx = np.sort(idx)
    m = src.manifest.iloc[idx]
    xs = [src.signals(idx)] if len(idx) else []  # float32 already
    meta = [pd.DataFrame({"record_id": (m["site"].astype(str) + "_" + m["record_id"].astype(str)).to_numpy(),
                          "patient_id": (m["site"].astype(str) + "_" + m["patient_hash"].astype(str)).to_numpy(),
                          "site": m["site"].astype(str).to_numpy(), "label": -1})]
    if n_synthetic > 0:
        xd = synthetic.generate_ecgs(int(n_synthetic), seed=synthetic_seed)
        xs.append(signals.preprocess(xd, synthetic.DEEPFAKE_FS, synthetic.DEEPFAKE_LEADS))  # float32
        meta.append(pd.DataFrame({"record_id": [f"df{i:06d}" for i in range(n_synthetic)],
                                  "patient_id": [f"dfP{i:06d}" for i in range(n_synthetic)],
                                  "site": "deepfake", "label": -1}))
    return build_store_from_arrays(run_dir, np.concatenate(xs), pd.concat(meta, ignore_index=True),
                                   task="unlabelled", preprocess=False, shard_size=shard_size)


# ====================================================================== sources (notebook 01)


@dataclasses.dataclass(frozen=True)
class PreprocessConfig(runs.TypedConfig):
    """Parameters of ``notebooks/01_preprocess.ipynb`` (see its parameters cell for the comments)."""

    source: str = "demo"
    data_root: str = ""
    labels_csv: str = ""
    ptbxl_database: str = "ptbxl_database.csv"
    ptbxl_rate: int = 0
    task: str = "demo"
    split: str = ""
    seed: int = 0
    n_demo: int = 200
    n_demo_unlabelled: int = 0
    demo_prevalence: float = 0.3
    band_low: float = 0.5
    band_high: float = 40.0
    filter_order: int = 4
    median_kernel: int = 3
    window_start: int = 0
    pad_short: bool = False
    shard_size: int = 512
    workers: int = 2
    salt_file: str = ""
    n_qc: int = 3
    progress: bool = True
    out_root: str = "outputs"
    run_id: str = ""

    choices: ClassVar[dict[str, tuple]] = {
        "source": ("ptbxl", "muse", "wfdb", "demo"),
        "split": ("", *SPLIT_METHODS),
        "ptbxl_rate": (0, 100, 500),
    }

    def validate(self) -> None:
        if self.source != "demo" and not self.data_root:
            raise runs.ConfigError(f"parameter 'data_root': source {self.source!r} needs a data folder")
        if self.source == "demo" and self.n_demo < 2:
            raise runs.ConfigError(f"parameter 'n_demo': needs at least 2 ECGs, got {self.n_demo}")
        if self.task not in task_names() and Path(self.task).suffix not in (".yaml", ".yml"):
            raise runs.ConfigError(f"parameter 'task': {self.task!r} is not one of {task_names()} "
                                   "nor a YAML path")
        if self.shard_size < 1 or self.workers < 0 or self.n_qc < 0:
            raise runs.ConfigError("parameters 'shard_size' >= 1, 'workers' >= 0, 'n_qc' >= 0 required")

    def preprocess_kw(self) -> dict:
        """Keyword arguments of :func:`heartbeit_lib.signals.preprocess`."""
        return {"band": (self.band_low, self.band_high), "order": self.filter_order,
                "median_kernel": self.median_kernel, "start": self.window_start, "pad": self.pad_short}

    def task_config(self) -> TaskConfig:
        """The task with the notebook's ``split`` override (``""`` = the task's own)."""
        return load_task(self.task, split=self.split)


@dataclasses.dataclass
class Source:
    """A data source ready for :func:`build_store`: the inputs table, a reader and what to hash."""

    name: str
    inputs: pd.DataFrame
    reader: Callable[[str], Any]
    data_root: str = ""
    files: tuple[Path, ...] = ()  # input files for provenance (record files, CSVs)
    hashes: dict[str, str] = dataclasses.field(default_factory=dict)  # precomputed (e.g. demo arrays)

    def preview(self, n: int = 5) -> pd.DataFrame:
        """The first ``n`` inputs without the raw patient ids (safe to show in a notebook)."""
        return self.inputs.drop(columns=["patient_id"], errors="ignore").head(n)

    def data_hashes(self) -> dict[str, str]:
        """sha256 of the label/metadata files and one combined sha256 over all record files."""
        out = dict(self.hashes)
        root = Path(self.data_root) if self.data_root else None
        tables = [p for p in self.files if p.suffix.lower() == ".csv"]
        records = [p for p in self.files if p.suffix.lower() != ".csv"]
        for p in tables:
            out[_rel(p, root)] = runs.file_sha256(p)
        if records:
            h = {_rel(p, root): runs.file_sha256(p) for p in records}
            out[f"records ({len(records)} files, combined)"] = runs.combined_hash(h)
        return out


def _rel(p: Path, root: Path | None) -> str:
    try:
        return str(p.relative_to(root)) if root else str(p)
    except ValueError:
        return str(p)


def _record_files(paths: Iterable[str]) -> list[Path]:
    """Existing files of each record: the path itself and its siblings with the same stem (.dat, .mat)."""
    out: set[Path] = set()
    for s in paths:
        p = Path(s)
        if p.exists():
            out.add(p)
            for ext in (".dat", ".mat"):
                q = p.with_suffix(ext)
                if q.exists():
                    out.add(q)
    return sorted(out)


def ptbxl_source(root: str | os.PathLike, task: TaskConfig, database: str = "ptbxl_database.csv",
                 rate: int = 0) -> Source:
    """PTB-XL inputs: one row per row of ``<root>/<database>`` (:func:`io.load_ptbxl`), labelled by ``task``.

    ``rate`` 100 reads ``records100`` (``filename_lr``), 500 ``records500`` (``filename_hr``);
    0 picks 500 when every row has a 500 Hz file, else 100 (``ptbxl_database_100hz.csv`` of the
    shared subset). Rows without a file at the chosen rate are rejected with that reason.
    Carried columns: ``ecg_id``, ``strat_fold``, ``scp_codes`` (text), ``infarction_stadium1/2``,
    ``age``, ``sex``.
    """
    from heartbeit_lib import io as hio

    if task.label_rule not in ("ptbxl_scp", "none"):
        raise TaskError(f"task {task.name!r} (label_rule {task.label_rule}) cannot label PTB-XL; "
                        "use a ptbxl_scp task such as mi or stemi")
    root = Path(root)
    db = hio.load_ptbxl(root, rate or 500, database)
    if rate == 0:  # auto: 500 Hz when every row has a 500 Hz file
        rate = 500 if db["path"].notna().all() else 100
        if rate == 100:
            db = hio.load_ptbxl(root, 100, database)
    statements = hio.load_scp_statements(root)
    db = db.reset_index()
    label = ptbxl_labels(db, statements, task) if task.label_rule == "ptbxl_scp" else np.full(len(db), -1)
    has = db["path"].notna().to_numpy()
    inputs = pd.DataFrame({
        "source_path": [f"{p}.hea" if h else f"{root}/{database}#ecg_id={e}"
                        for p, h, e in zip(db["path"], has, db["ecg_id"])],
        "record_id": db["ecg_id"].map(_clean_id),
        "patient_id": db["patient_id"].map(_clean_id),
        "site": db["site"].map(_clean_id) if "site" in db.columns else "",
        "label": label.astype(np.int64),
        "reject": np.where(has, "", f"no {rate} Hz record file in {database}"),
        "ecg_id": db["ecg_id"].astype(np.int64),
        "strat_fold": db["strat_fold"].astype(np.int64),
        "scp_codes": db["scp_codes"].astype(str),
        "infarction_stadium1": db["infarction_stadium1"].fillna("").astype(str),
        "infarction_stadium2": db["infarction_stadium2"].fillna("").astype(str),
        "age": pd.to_numeric(db["age"], errors="coerce").astype(float),
        "sex": pd.to_numeric(db["sex"], errors="coerce").fillna(-1).astype(np.int64),
    })
    files = (root / database, root / "scp_statements.csv", *_record_files(inputs.loc[has, "source_path"]))
    return Source("ptbxl", inputs, hio.read_ecg, str(root), tuple(files))


def _csv_source(kind: str, root: str | os.PathLike, task: TaskConfig, labels_csv: str, exts: tuple[str, ...]
                ) -> Source:
    """MUSE XML or WFDB records in a folder, labelled by a CSV (or unlabelled without one)."""
    root = Path(root)
    if not root.is_dir():
        raise CohortError(f"{kind} source: data_root {root} is not a folder")
    found = sorted(p for e in exts for p in root.rglob(f"*{e}"))
    by_stem: dict[str, Path] = {}
    for p in found:
        by_stem.setdefault(p.stem, p)
    csv = Path(labels_csv) if labels_csv else root / "labels.csv"
    if task.label_rule in ("csv_label", "csv_threshold") or labels_csv:
        if not csv.exists():
            raise CohortError(f"{kind} source: labels CSV {csv} does not exist (parameter labels_csv)")
        tab = pd.read_csv(csv, dtype={task.id_column: str, task.patient_column: str, task.site_column: str})
        need = [task.id_column] + ([task.label_column] if task.label_rule == "csv_label" else []) + \
               ([task.value_column] if task.label_rule == "csv_threshold" else [])
        miss = [c for c in need if c not in tab.columns]
        if miss:
            raise CohortError(f"{csv}: missing column(s) {miss} needed by task {task.name!r}; has {list(tab.columns)}")
        ids = tab[task.id_column].map(_clean_id)
        if task.file_column and task.file_column in tab.columns:
            paths = [str(root / f) for f in tab[task.file_column].astype(str)]
        else:
            paths = [str(by_stem[i]) if i in by_stem else str(root / f"{i}{exts[0]}") for i in ids]
        if task.label_rule == "csv_label":
            lab = pd.to_numeric(tab[task.label_column], errors="coerce")
            ok = lab.isin([0, 1])
            label = np.where(ok, lab.fillna(-1), -1).astype(np.int64)
            why = np.where(ok, "", f"label column {task.label_column!r} is not 0/1")
        elif task.label_rule == "csv_threshold":
            label = threshold_labels(tab[task.value_column], task)
            why = np.where(label >= 0, "", f"value column {task.value_column!r} is empty or not numeric")
        else:
            label, why = np.full(len(tab), -1, np.int64), np.full(len(tab), "")
        inputs = pd.DataFrame({
            "source_path": paths, "record_id": ids,
            "patient_id": tab[task.patient_column].map(_clean_id) if task.patient_column in tab.columns else "",
            "site": tab[task.site_column].map(_clean_id) if task.site_column in tab.columns else "",
            "label": label, "reject": why})
        if task.value_column and task.value_column in tab.columns:
            inputs[task.value_column] = pd.to_numeric(tab[task.value_column], errors="coerce").astype(float)
        files = (csv, *_record_files(p for p, r in zip(inputs["source_path"], inputs["reject"]) if not r))
    else:  # unlabelled folder: every record file, patient ids from the records themselves
        inputs = pd.DataFrame({"source_path": [str(p) for p in found],
                               "record_id": [str(p.relative_to(root).with_suffix("")) for p in found],
                               "patient_id": "", "site": "", "label": -1})
        files = tuple(_record_files(inputs["source_path"]))
    from heartbeit_lib import io as hio

    return Source(kind, inputs, hio.read_ecg, str(root), tuple(files))


def muse_source(root: str | os.PathLike, task: TaskConfig, labels_csv: str = "") -> Source:
    """GE MUSE XML files under ``root`` + a labels CSV (``id_column`` = file stem or ``file_column``,
    ``patient_column``, ``site_column``, ``label_column`` or ``value_column``; see the lvef/hcm tasks)."""
    return _csv_source("muse", root, task, labels_csv, (".xml",))


def wfdb_source(root: str | os.PathLike, task: TaskConfig, labels_csv: str = "") -> Source:
    """WFDB records (``.hea`` + ``.dat``/``.mat``, e.g. PhysioNet/CinC) under ``root`` + an optional labels CSV."""
    return _csv_source("wfdb", root, task, labels_csv, (".hea",))


def demo_source(n: int, seed: int, prevalence: float, n_unlabelled: int = 0) -> Source:
    """The synthetic demo cohort of :func:`heartbeit_lib.cohorts.synthetic.make_demo_cohort`: ``n``
    labelled ECGs (synthetic anterior ST elevation = 1) then ``n_unlabelled`` with label -1
    (deepfake-ecg ECGs, 8 leads at 500 Hz, 10 s, three synthetic sites), read from memory."""
    from heartbeit_lib.cohorts import synthetic

    x, meta = synthetic.make_demo_cohort(n, seed, prevalence, n_unlabelled=n_unlabelled)
    x = np.ascontiguousarray(x, dtype=np.float32)
    inputs = meta.reset_index(drop=True).copy()
    inputs.insert(0, "source_path", [ArrayReader.path(i) for i in range(len(x))])
    hashes = {"demo_signals (sha256 of float32 bytes)": hashlib.sha256(x.tobytes()).hexdigest(),
              "demo_meta (sha256 of CSV)": hashlib.sha256(meta.to_csv(index=False).encode()).hexdigest()}
    return Source("demo", inputs, ArrayReader(x, 500, _output_leads()), "", (), hashes)


def make_source(cfg: PreprocessConfig, task: TaskConfig | None = None) -> Source:
    """The :class:`Source` named by ``cfg.source``."""
    task = task or cfg.task_config()
    if cfg.source == "ptbxl":
        return ptbxl_source(cfg.data_root, task, cfg.ptbxl_database, cfg.ptbxl_rate)
    if cfg.source == "muse":
        return muse_source(cfg.data_root, task, cfg.labels_csv)
    if cfg.source == "wfdb":
        return wfdb_source(cfg.data_root, task, cfg.labels_csv)
    return demo_source(cfg.n_demo, cfg.seed, cfg.demo_prevalence, cfg.n_demo_unlabelled)


def build_from_config(cfg: PreprocessConfig, run_dir: str | os.PathLike, source: Source) -> CohortStore:
    """:func:`build_store` with the notebook's parameters."""
    return build_store(source.inputs, source.reader, run_dir, task_cfg=cfg.task_config(), seed=cfg.seed,
                       shard_size=cfg.shard_size, workers=cfg.workers, preprocess_kw=cfg.preprocess_kw(),
                       salt_file=cfg.salt_file, progress=cfg.progress)


# ====================================================================== Table 1, metrics, QC


def _as_manifest(store_or_manifest: "CohortStore | pd.DataFrame | str | os.PathLike") -> pd.DataFrame:
    if isinstance(store_or_manifest, CohortStore):
        return store_or_manifest.manifest
    if isinstance(store_or_manifest, pd.DataFrame):
        return store_or_manifest
    return CohortStore(store_or_manifest).manifest


def table1(store_or_manifest: "CohortStore | pd.DataFrame | str | os.PathLike") -> pd.DataFrame:
    """The paper's Table 1: ECGs, patients, positives and prevalence per split.

    Returns
    -------
    DataFrame indexed by split (train, val, test, external, unassigned - those present - then
    ``total``) with int columns ``ecgs``, ``patients``, ``positives``, ``unlabelled`` and float
    ``prevalence_pct`` (100 * positives / labelled ECGs; NaN without labelled ECGs).
    """
    m = _as_manifest(store_or_manifest)
    rows = {}
    present = [s for s in SPLITS if (m["split"] == s).any()]
    for name in [*present, "total"]:
        sub = m if name == "total" else m[m["split"] == name]
        lab = sub["label"].to_numpy(np.int64)
        n_lab = int((lab >= 0).sum())
        pos = int((lab == 1).sum())
        rows[name] = {"ecgs": len(sub), "patients": int(sub["patient_hash"].nunique()), "positives": pos,
                      "unlabelled": int((lab < 0).sum()),
                      "prevalence_pct": round(100.0 * pos / n_lab, 2) if n_lab else float("nan")}
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "split"
    return out


def to_markdown(df: pd.DataFrame) -> str:
    """A pipe table of ``df`` (index included) without the optional ``tabulate`` dependency."""
    cols = [df.index.name or ""] + [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for idx, *values in df.itertuples(index=True, name=None):  # itertuples keeps each column's type
        lines.append("| " + " | ".join([str(idx)] + ["" if pd.isna(v) else str(v) for v in values]) + " |")
    return "\n".join(lines) + "\n"


def save_table(df: pd.DataFrame, path_stem: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``<stem>.csv`` and ``<stem>.md``; returns both paths."""
    stem = Path(path_stem)
    csv, md = stem.with_suffix(".csv"), stem.with_suffix(".md")
    df.to_csv(csv)
    md.write_text(to_markdown(df))
    return csv, md


def store_metrics(store: CohortStore) -> dict:
    """Counts for ``metrics.json``: inputs, stored, rejected (by error type), per split, per fraction."""
    m = store.manifest
    rej = store.rejects
    out = {"task": store.task, "split_method": store.info["split_method"],
           "n_inputs": store.info["n_inputs"], "n_stored": len(m), "n_rejected": len(rej),
           "n_patients": int(m["patient_hash"].nunique()), "n_positive": int((m["label"] == 1).sum()),
           "rejects_by_type": {str(k): int(v) for k, v in rej["error_type"].value_counts().sort_index().items()}}
    for s in SPLITS:
        sub = m[m["split"] == s]
        out[f"n_{s}"] = len(sub)
        out[f"n_{s}_positive"] = int((sub["label"] == 1).sum())
        out[f"n_{s}_patients"] = int(sub["patient_hash"].nunique())
    for f in store.info["fractions"]:
        out[f"n_train_f{f:g}"] = int(len(store.indices("train", f)))
    return out


def qc_figure(store: CohortStore, reader: Callable[[str], Any], rows: Sequence[int] | None = None, n: int = 3,
              window_start_s: float | None = None, spacing_mv: float = 3.0):
    """Raw vs stored (filtered) leads of a few records, as a matplotlib Figure.

    Parameters
    ----------
    store : CohortStore
    reader : the reader the store was built with (re-reads ``source_path`` for the raw signal)
    rows : manifest rows to show (default: ``n`` rows evenly spaced over the store)
    window_start_s : start of the stored 5 s window in the raw record, seconds (default: the
        store's ``preprocess_kw['start'] / 500``)
    spacing_mv : vertical distance between stacked leads, mV

    Returns
    -------
    matplotlib.figure.Figure with one panel per record: leads I, II, V1-V6 stacked top to bottom
    (offset by ``spacing_mv``), raw in grey at its own sampling rate, stored in blue, both in mV
    over the same 5 s.
    """
    from matplotlib.figure import Figure

    if rows is None:
        rows = np.unique(np.linspace(0, len(store) - 1, num=min(n, len(store))).round().astype(int)).tolist()
    rows = list(rows)
    if not rows:
        fig = Figure(figsize=(4, 1))
        fig.text(0.5, 0.5, "no records to show", ha="center", va="center")
        return fig
    leads = list(store.info["leads"])
    if window_start_s is None:
        window_start_s = float((store.info.get("preprocess_kw") or {}).get("start", 0)) / STORE_FS
    fig = Figure(figsize=(4.5 * max(1, len(rows)), 6.5))
    axes = np.atleast_1d(fig.subplots(1, max(1, len(rows)), sharey=True, squeeze=False)[0])
    stored = store.signals(np.asarray(rows, np.int64))
    offsets = -spacing_mv * np.arange(len(leads))
    t_st = window_start_s + np.arange(N_SAMPLES) / STORE_FS
    for c, r in enumerate(rows):
        rec = store.manifest.iloc[r]
        raw = reader(rec["source_path"])
        sig = np.asarray(raw.signal)
        raw_leads = [str(l).upper() for l in raw.leads]
        fs = float(raw.fs)
        a = int(round(window_start_s * fs))
        b = min(int(round((window_start_s + N_SAMPLES / STORE_FS) * fs)), sig.shape[-1])
        t_raw = np.arange(a, b) / fs
        ax = axes[c]
        for k, lead in enumerate(leads):
            if lead in raw_leads:
                ax.plot(t_raw, sig[raw_leads.index(lead), a:b] / 1000.0 + offsets[k], color="0.65", lw=0.6,
                        label="raw" if k == 0 else None)
            ax.plot(t_st, stored[c, k] / 1000.0 + offsets[k], color="tab:blue", lw=0.6,
                    label="stored (filtered)" if k == 0 else None)
        ax.set_title(f"{rec['record_id']} (label {rec['label']}, {rec['split']})", fontsize=8)
        ax.set_xlabel("time (s)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_yticks(offsets, leads)
    axes[0].set_ylabel(f"lead (offset {spacing_mv:g} mV apart)", fontsize=8)
    axes[0].legend(fontsize=7, loc="upper right")
    fig.suptitle("01_preprocess QC: raw (grey) vs band-passed + median-filtered (blue), mV", fontsize=9)
    fig.subplots_adjust(left=0.07, right=0.99, bottom=0.08, top=0.9, wspace=0.05)
    return fig
