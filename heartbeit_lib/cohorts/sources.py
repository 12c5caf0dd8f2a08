"""Data sources of a cohort store: PTB-XL, MUSE XML and WFDB folders (with a labels CSV), the synthetic
demo cohort and in-memory arrays (:class:`ArrayReader`, :func:`build_store_from_arrays`)."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import unicodedata
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from heartbeit_lib import io as hio
from heartbeit_lib import signals

from .build import build_store, output_leads
from .errors import CohortError, TaskError
from .evaluation import eval_patient_hashes
from .ids import clean_id
from .benchmark import benchmark_labels
from .store import LABEL_PREFIX, N_LEADS, N_SAMPLES, STORE_FS, CohortStore
from .tasks import TaskConfig, ptbxl_labels, threshold_labels


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


def _loose(name: str) -> str:
    """``name`` with case and Unicode compatibility forms folded: two names a case- or normalisation-insensitive
    file system (APFS, HFS+, NTFS) may take for one fold to the same text (more, never fewer: U+037E and ``;``,
    the Kelvin sign and ``k``)."""
    return unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", name).casefold())


def _folder_entries(listing: dict, folder: str) -> tuple[str, dict[str, os.DirEntry], frozenset[str] | None]:
    """``(real path, {name: entry}, loosely folded names)`` of ``folder``, listed once (``os.scandir``) and kept in
    ``listing``: a folder of N record files costs one listing, not ~4 stat calls per file and sibling ({} and None
    when unreadable)."""
    if folder not in listing:
        try:
            with os.scandir(folder) as it:
                names = {e.name: e for e in it}
            folded = frozenset(_loose(n) for n in names)
        except OSError:
            names, folded = {}, None
        listing[folder] = (os.path.realpath(folder), names, folded)
    return listing[folder]


def _may_exist(name: str, names: dict[str, os.DirEntry], folded: frozenset[str] | None) -> bool:
    """False only when ``name`` is surely absent from a folder listed by :func:`_folder_entries`: not listed, ASCII,
    and no listed name the same once case and compatibility forms are folded (another spelling a case- or
    normalisation-insensitive file system would open): the failing stat call of each missing sibling (``.hea`` /
    ``.dat`` / ``.mat`` of a MUSE file) is skipped; anything else is asked of the file system."""
    return folded is None or name in names or not name.isascii() or name.casefold() in folded


def _sibling_names(p: Path, suffixes: Sequence[str]) -> list[str]:
    """``p.with_suffix(e).name`` for each ``e`` in ``suffixes``, as text (no Path built per sibling)."""
    name, old = p.name, p.suffix
    if not name:
        return [p.with_suffix(e).name for e in suffixes]  # raises as with_suffix does
    stem = name[:len(name) - len(old)] if old else name
    return [stem + e for e in suffixes]


def _record_files(paths: Iterable[str]) -> list[Path]:
    """Existing files of each record: the path itself and its siblings with the same stem (.dat, .mat)."""
    out: set[Path] = set()
    listing: dict = {}
    for s in paths:
        p = Path(s)
        _, names, folded = _folder_entries(listing, str(p.parent))
        for k, name in enumerate([p.name, *_sibling_names(p, (".dat", ".mat"))]):
            q = p if k == 0 else p.parent / name
            e = names.get(name)  # None: absent, or another spelling (a case-insensitive file system): ask
            if e.is_file() if e is not None else _may_exist(name, names, folded) and q.is_file():
                out.add(q)  # regular files only (a FIFO would hang the hashing)
            elif k == 0:
                break
    return sorted(out)


def _outside_root(paths: Iterable[str], root: Path, rejects: Iterable[str] | None = None) -> list[str]:
    """Per input, why it is refused ('' when it is not): the earlier reason in ``rejects``, else when the file or
    its record's ``.hea`` / ``.dat`` / ``.mat`` siblings resolve (symlinks, ``..``) outside ``root``: a symlink
    to a secret (the salt file) must not be read, nor its content quoted into a reject.

    Each folder is listed, resolved and placed (inside ``root`` or not) once; a name that is not a symlink
    resolves to its folder's real path plus the name, so it is inside when its folder is; a symlink is resolved on
    its own (``Path.resolve``)."""
    top = root.resolve()
    listing: dict = {}
    folder_inside: dict[str, bool] = {}
    out = []
    for s, why in zip(paths, rejects if rejects is not None else itertools.repeat("")):
        if not why:
            p = Path(s)
            real_dir, names, folded = _folder_entries(listing, str(p.parent))
            if real_dir not in folder_inside:
                folder_inside[real_dir] = top in Path(real_dir, "x").parents
            for name in [p.name, *_sibling_names(p, [e for e in (".hea", ".dat", ".mat") if e != p.suffix])]:
                e = names.get(name)
                if e is not None and not e.is_symlink():
                    inside = folder_inside[real_dir]
                else:
                    f = p.parent / name
                    if e is None and not (_may_exist(name, names, folded) and os.path.lexists(f)):  # nothing to read
                        continue
                    inside = top in f.resolve().parents  # a symlink, or another spelling of an entry
                if not inside:
                    why = f"{name} resolves outside data_root {root} (a symlink or '..' leaving it): not read"
                    break
        out.append(why)
    return out


def _printable_name(text: str) -> str:
    """A file name as valid UTF-8 text: bytes that are not UTF-8 (held as surrogates by ``os.fsdecode``)
    become ``\\xNN`` escapes, so parquet and CSV can store the name."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def ptbxl_source(root: str | os.PathLike, task: TaskConfig, database: str = "ptbxl_database.csv",
                 rate: int | None = None) -> Source:
    """PTB-XL inputs: one row per row of ``<root>/<database>`` (:func:`io.load_ptbxl`), labelled by ``task``.

    ``rate`` 100 reads ``records100`` (``filename_lr``), 500 ``records500`` (``filename_hr``);
    None picks 500 when every row's 500 Hz header file exists on disk, else 100 (``ptbxl_database_100hz.csv``
    of the shared subset; a copy holding only ``records100``, as ``ptbxl_full.py`` writes). Rows without a file
    at the chosen rate are rejected with that reason.
    Carried columns: ``ecg_id``, ``strat_fold``, ``scp_codes`` (text), ``infarction_stadium1/2``,
    ``age``, ``sex``.
    """
    if task.label_rule not in ("ptbxl_scp", "ptbxl_benchmark", "none"):
        raise TaskError(f"task {task.name!r} (label_rule {task.label_rule}) cannot label PTB-XL; "
                        "use a ptbxl_scp task such as mi or stemi, or a ptbxl_<benchmark task>")
    root = Path(root)
    db = hio.load_ptbxl(root, rate or 500, database)
    if rate is None:  # auto: 500 Hz when every row's 500 Hz header is on disk (a 100 Hz-only copy: 100)
        rate = 500 if all(p is not None and os.path.isfile(f"{p}.hea") for p in db["path"]) else 100
        if rate == 100:
            db = hio.load_ptbxl(root, 100, database)
    statements = hio.load_scp_statements(root)
    db = db.reset_index()
    label = ptbxl_labels(db, statements, task) if task.label_rule == "ptbxl_scp" else np.full(len(db), -1)
    matrix = None
    if task.multilabel:  # the benchmark's classes of this table; records without one stay unlabelled (-1)
        y = benchmark_labels(root / database, task.benchmark_task, root / "scp_statements.csv")
        matrix = y.reindex(db["ecg_id"].astype(np.int64)).fillna(-1).astype(np.int64)
        label = np.where(db["ecg_id"].astype(np.int64).isin(y.index), 1, -1)
    has = db["path"].notna().to_numpy()
    inputs = pd.DataFrame({
        "source_path": [f"{p}.hea" if h else f"{root}/{database}#ecg_id={e}"
                        for p, h, e in zip(db["path"], has, db["ecg_id"])],
        "record_id": db["ecg_id"].map(clean_id),
        "patient_id": db["patient_id"].map(clean_id),
        "site": db["site"].map(clean_id) if "site" in db.columns else "",
        "label": label.astype(np.int64),
        "reject": _outside_root([f"{p}.hea" if h else "" for p, h in zip(db["path"], has)], root,
                                np.where(has, "", f"no {rate} Hz record file in {database}")),
        "ecg_id": db["ecg_id"].astype(np.int64),
        "strat_fold": db["strat_fold"].astype(np.int64),
        "scp_codes": db["scp_codes"].astype(str),
        "infarction_stadium1": db["infarction_stadium1"].fillna("").astype(str),
        "infarction_stadium2": db["infarction_stadium2"].fillna("").astype(str),
        "age": pd.to_numeric(db["age"], errors="coerce").astype(float),
        "sex": pd.to_numeric(db["sex"], errors="coerce").fillna(-1).astype(np.int64),
    })
    if matrix is not None:
        inputs = add_label_matrix(inputs, matrix.to_numpy(), list(matrix.columns))
    files = (root / database, root / "scp_statements.csv",
             *_record_files(inputs.loc[inputs["reject"] == "", "source_path"]))
    return Source("ptbxl", inputs, hio.read_ecg, str(root), tuple(files))


def label_strata(y: np.ndarray) -> np.ndarray:
    """Stratum of each multi-label row: the index of its rarest positive class (class counts over the rows with
    a label), -1 for rows without one. Training fractions are drawn per stratum (:func:`.splits.train_ranks`), so
    the 1 % subset still holds the rare classes ("stratify on the rarest present class")."""
    pos = np.asarray(y) == 1
    counts = pos.sum(axis=0)
    stratum = np.where(pos, counts[None, :], counts.sum() + 1).argmin(axis=1) if pos.size else np.zeros(len(pos))
    return np.where(pos.any(axis=1), stratum, -1).astype(np.int64)


def add_label_matrix(inputs: pd.DataFrame, y: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """``inputs`` with one int64 column ``label:<class>`` per class (1, 0; -1 where the row has no label) and the
    ``stratum`` column of :func:`label_strata`."""
    y = np.asarray(y, np.int64)
    if y.shape != (len(inputs), len(classes)):
        raise CohortError(f"label matrix of shape {y.shape} for {len(inputs)} inputs and {len(classes)} classes")
    cols = {f"{LABEL_PREFIX}{c}": y[:, j] for j, c in enumerate(classes)}
    return inputs.assign(**cols, stratum=label_strata(y))


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
        ids = tab[task.id_column].map(clean_id)
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
            "patient_id": tab[task.patient_column].map(clean_id) if task.patient_column in tab.columns else "",
            "site": tab[task.site_column].map(clean_id) if task.site_column in tab.columns else "",
            "label": label, "reject": _outside_root(paths, root, why)})
        if task.value_column and task.value_column in tab.columns:
            inputs[task.value_column] = pd.to_numeric(tab[task.value_column], errors="coerce").astype(float)
        files = (csv, *_record_files(p for p, r in zip(inputs["source_path"], inputs["reject"]) if not r))
    else:  # unlabelled folder: every record file, patient ids from the records themselves
        names = [str(p) for p in found]
        not_utf8 = ["file name is not valid UTF-8 (bytes shown as \\xNN): not read"
                    if _printable_name(n) != n else "" for n in names]
        inputs = pd.DataFrame({"source_path": [_printable_name(n) for n in names],
                               "record_id": [_printable_name(str(p.relative_to(root).with_suffix(""))) for p in found],
                               "patient_id": "", "site": "", "label": -1,
                               "reject": _outside_root(names, root, not_utf8)})
        files = tuple(_record_files(inputs.loc[inputs["reject"] == "", "source_path"]))
    files = tuple(f for f in files if _printable_name(str(f)) == str(f))  # provenance keys are text too
    return Source(kind, inputs, hio.read_ecg, str(root), files)


def muse_source(root: str | os.PathLike, task: TaskConfig, labels_csv: str | None = None) -> Source:
    """GE MUSE XML files under ``root`` + a labels CSV (``id_column`` = file stem or ``file_column``,
    ``patient_column``, ``site_column``, ``label_column`` or ``value_column``; see the lvef/hcm tasks)."""
    return _csv_source("muse", root, task, labels_csv, (".xml",))


def wfdb_source(root: str | os.PathLike, task: TaskConfig, labels_csv: str | None = None) -> Source:
    """WFDB records (``.hea`` + ``.dat``/``.mat``, e.g. PhysioNet/CinC) under ``root`` + an optional labels CSV."""
    return _csv_source("wfdb", root, task, labels_csv, (".hea",))


def demo_source(n: int, seed: int, prevalence: float, n_unlabelled: int = 0) -> Source:
    """The synthetic demo cohort of :func:`heartbeit_lib.cohorts.synthetic.make_demo_cohort`: ``n``
    labelled ECGs (synthetic anterior ST elevation = 1) then ``n_unlabelled`` with label -1
    (deepfake-ecg ECGs, 8 leads at 500 Hz, 10 s, three synthetic sites), read from memory."""
    from heartbeit_lib.cohorts import synthetic  # deferred: imports torch and the generator

    x, meta = synthetic.make_demo_cohort(n, seed, prevalence, n_unlabelled=n_unlabelled)
    x = np.ascontiguousarray(x, dtype=np.float32)
    inputs = meta.reset_index(drop=True).copy()
    inputs.insert(0, "source_path", [ArrayReader.path(i) for i in range(len(x))])
    hashes = {"demo_signals (sha256 of float32 bytes)": hashlib.sha256(x.tobytes()).hexdigest(),
              "demo_meta (sha256 of CSV)": hashlib.sha256(meta.to_csv(index=False).encode()).hexdigest()}
    return Source("demo", inputs, ArrayReader(x, 500, output_leads()), "", (), hashes)


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
    salt : patient-hash salt (default: the per-user salt file, :func:`~heartbeit_lib.cohorts.ids.default_salt_path`)
    """
    x = np.asarray(x)
    leads = tuple(leads) if leads is not None else output_leads()
    if len(meta) != len(x):
        raise CohortError(f"arrays: {len(x)} signals but {len(meta)} metadata rows")
    if preprocess is None:
        preprocess = not (x.ndim == 3 and x.shape[1:] == (N_LEADS, N_SAMPLES) and float(fs) == STORE_FS
                          and leads == output_leads())
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
                          shard_size: int = 256,
                          exclude_patients_of: Sequence[str | os.PathLike] = ()) -> CohortStore:
    """An unlabelled pretraining store: a labelled cohort's ``splits`` ECGs plus ``n_synthetic``
    deepfake-ecg ECGs (for CPU-scale pretraining when the labelled cohort is small).

    Only the named splits of ``cohort_run`` are copied (default ``train``), minus every ECG of a patient
    with a val/test/external row in ``cohort_run`` or in any cohort of ``exclude_patients_of``: a model
    fine-tuned on several cohorts of one archive (PTB-XL ``mi`` on the benchmark folds, ``stemi`` on a
    patient-wise random split) must not have seen any of their evaluation patients. The copied rows get new
    patient hashes, so 02's ``eval_patients_of`` cannot find them later: exclude here. Every row gets
    label -1 (task ``unlabelled``); ``02_pretrain`` then holds out a seeded share of patients for
    masked-token accuracy. Record ids are prefixed ``<site>_`` (cohort rows) and ``df`` (synthetic rows).
    ``<run_dir>/mix.json`` records the sources, the excluded cohorts and how many ECGs each cost.

    Parameters
    ----------
    cohort_run : 01_preprocess run folder (preprocessed (N, 8, 2500) µV)
    run_dir : output store folder
    n_synthetic : deepfake ECGs generated (~95 ECGs/s on 2 cores), preprocessed like the demo source
    splits : cohort splits to copy
    synthetic_seed : seed of :func:`synthetic.generate_ecgs`
    exclude_patients_of : further 01 cohort runs of the same archive, built with the same salt file

    Raises
    ------
    CohortError when nothing is left, or when a cohort of ``exclude_patients_of`` holds a record of
    ``cohort_run`` under another patient hash (another salt: the exclusion would silently miss).
    """
    from heartbeit_lib.cohorts import synthetic  # deferred: imports torch and the generator

    src = CohortStore(cohort_run)
    idx = np.concatenate([src.indices(s) for s in splits]) if splits else np.zeros(0, np.int64)
    idx = np.sort(idx)
    dropped = {}
    for other in [cohort_run, *exclude_patients_of]:
        keep = ~src.manifest["patient_hash"].iloc[idx].isin(_eval_patients(other, src, cohort_run)).to_numpy()
        dropped[str(other)] = int((~keep).sum())
        idx = idx[keep]
    if len(idx) == 0 and n_synthetic <= 0:
        raise CohortError(f"{cohort_run}: no ECGs in splits {list(splits)} (after excluding evaluation patients) "
                          f"and n_synthetic = {n_synthetic}")
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
    store = build_store_from_arrays(run_dir, np.concatenate(xs), pd.concat(meta, ignore_index=True),
                                    task="unlabelled", preprocess=False, shard_size=shard_size)
    info = {"cohort_run": str(cohort_run), "splits": list(splits), "n_cohort_ecgs": int(len(idx)),
            "n_synthetic": int(n_synthetic), "synthetic_seed": int(synthetic_seed),
            "eval_patient_ecgs_dropped": dropped}
    Path(run_dir, "mix.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"pretraining mix: {len(idx)} cohort ECGs + {n_synthetic} deepfake; evaluation-patient ECGs dropped {dropped}")
    return store


def _eval_patients(cohort_run: str | os.PathLike, src: CohortStore, src_run: str | os.PathLike) -> set[str]:
    """Patient hashes with a val/test/external row in ``cohort_run``, checked to share ``src``'s salt."""
    m = CohortStore(cohort_run).manifest
    both = m.merge(src.manifest[["record_id", "patient_hash"]], on="record_id", suffixes=("", "_src"))
    if (both["patient_hash"] != both["patient_hash_src"]).any():
        raise CohortError(f"{cohort_run}: its records carry other patient hashes than in {src_run} (built with "
                          "another salt file?): its evaluation patients cannot be excluded; rebuild both with one salt")
    return eval_patient_hashes(m)
