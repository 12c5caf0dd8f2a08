"""Evaluation patients of a fine-tuning cohort seen in pretraining (issue 24, item 1).

02_pretrain drops the evaluation patients of *its own* store (and of the cohorts named in ``eval_patients_of``),
but a fine-tuning cohort split differently (PTB-XL ``stemi`` on a random patient split, pretraining on the ``mi``
store's benchmark folds) can still have its validation/test/external patients among the pretraining rows.
:func:`count_overlap` counts them; ``03_finetune`` refuses such a run unless ``allow_pretrain_overlap``.

The pretraining rows are recomputed with :func:`pipeline.pretrain.split_rows` from the run's ``config.yaml`` (the
very function 02 trained with; a signal run's ``pretraining_rows.npy`` is used when present). Rows of a
``cohorts.build_pretraining_mix`` store are mapped back to the records of the cohort they were copied from (the mix
re-hashed their patients). Patients of two different stores are compared by salted hash only when the stores are
shown to share a salt: some record of both carries the same patient hash in both (every shared record must), or
both ``store.json`` name the same salt file. Otherwise :class:`SaltMismatchError`: never a silent zero.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import yaml

from heartbeit_lib.cohorts import CohortStore
from heartbeit_lib.pipeline import runs

EVAL_SPLITS = ("val", "test", "external")


class PretrainOverlapError(runs.ConfigError):
    """The pretraining run trained on ECGs of the fine-tuning cohort's val/test/external patients."""


class SaltMismatchError(runs.ConfigError):
    """The patients of two stores cannot be compared (built with different salts, or not shown to share one)."""


def pretrain_run_dir(source: str | os.PathLike) -> Path | None:
    """The 02_pretrain run folder of ``source`` (a run folder, or a checkpoint file in its ``checkpoints/``),
    or None when no ``config.yaml`` of a 02 run is found (a checkpoint from elsewhere)."""
    p = Path(source)
    for cand in ((p,) if p.is_dir() else (p.parent.parent,)):
        if (cand / "config.yaml").is_file():
            return cand
    return None


def pretraining_records(run_dir: str | os.PathLike) -> tuple[CohortStore, np.ndarray]:
    """(store, sorted int64 rows) that the 02 run in ``run_dir`` pretrained on (its training rows; the held-out
    rows are never trained on). Rows of a pretraining mix are returned as rows of the cohort it was built from
    (deepfake rows have no patient there and are left out)."""
    from heartbeit_lib.pipeline import pretrain  # deferred: imports the MIM stack

    run_dir = Path(run_dir)
    raw = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    names = {f.name for f in pretrain.PretrainConfig.__dataclass_fields__.values()}
    pcfg = pretrain.PretrainConfig.from_dict({k: v for k, v in raw.items() if k in names})
    if not pcfg.cohort_run:
        raise runs.ConfigError(f"{run_dir / 'config.yaml'}: names no cohort_run; its pretraining rows are unknown")
    store = CohortStore(pcfg.cohort_run)
    saved = run_dir / "pretraining_rows.npy"
    rows = (np.load(saved, allow_pickle=False).astype(np.int64) if saved.is_file()
            else pretrain.split_rows(pcfg, store)["train"])
    mix = Path(store.root) / "mix.json"
    if mix.is_file():  # map back to the source cohort's records: the mix's patient hashes are new ones
        src = CohortStore(json.loads(mix.read_text())["cohort_run"])
        key = (src.manifest["site"].astype(str) + "_" + src.manifest["record_id"].astype(str)).to_numpy()
        pos = {k: i for i, k in enumerate(key)}
        rid = store.manifest["record_id"].astype(str).to_numpy()[rows]
        rows = np.array(sorted(pos[r] for r in rid if r in pos), np.int64)
        store = src
    return store, np.asarray(rows, np.int64)


def check_same_salt(a: CohortStore, b: CohortStore) -> None:
    """Raise :class:`SaltMismatchError` unless the patient hashes of stores ``a`` and ``b`` are comparable."""
    if Path(a.root).resolve() == Path(b.root).resolve():
        return
    ma, mb = (s.manifest[["record_id", "patient_hash"]].astype(str) for s in (a, b))
    both = ma.merge(mb, on="record_id", suffixes=("_a", "_b"))
    if len(both) and (both["patient_hash_a"] != both["patient_hash_b"]).any():
        raise SaltMismatchError(f"stores {a.root} and {b.root} give one record different patient hashes (built "
                                "with different salts): their patients cannot be compared; rebuild them with one "
                                "salt file")
    if len(both):
        return
    fa, fb = a.info.get("salt_file"), b.info.get("salt_file")
    if not (fa and fa == fb):
        raise SaltMismatchError(f"stores {a.root} and {b.root} share no record and do not name one salt file "
                                f"({fa!r} vs {fb!r}): whether their patients overlap cannot be checked")


def count_overlap(pretrain_source: str | os.PathLike, cohort_run: str | os.PathLike) -> dict:
    """Patients and ECGs of the pretraining rows of ``pretrain_source`` (02 run folder or checkpoint in it) who have
    a val/test/external ECG in the cohort store ``cohort_run``.

    Returns ``{pretrain_overlap_patients, pretrain_overlap_ecgs, pretrain_rows, pretrain_store}``, or
    ``{pretrain_overlap: "unverified", pretrain_overlap_reason}`` when ``pretrain_source`` is not in a 02 run folder.
    Raises :class:`SaltMismatchError` when the two stores' patients cannot be compared.
    """
    run_dir = pretrain_run_dir(pretrain_source)
    if run_dir is None:
        return {"pretrain_overlap": "unverified",
                "pretrain_overlap_reason": f"{pretrain_source} is not in a 02_pretrain run folder (no config.yaml)"}
    pstore, rows = pretraining_records(run_dir)
    fstore = CohortStore(cohort_run)
    check_same_salt(pstore, fstore)
    fm = fstore.manifest
    eval_patients = set(fm.loc[fm["split"].astype(str).isin(EVAL_SPLITS), "patient_hash"].astype(str))
    pat = pstore.manifest["patient_hash"].astype(str).to_numpy()[rows]
    hit = np.isin(pat, list(eval_patients))
    return {"pretrain_overlap_patients": int(len(set(pat[hit]))), "pretrain_overlap_ecgs": int(hit.sum()),
            "pretrain_rows": int(len(rows)), "pretrain_store": str(pstore.root)}
