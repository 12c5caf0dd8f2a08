"""What the image and the signal story share: the pretraining rows (the evaluation-patient rule applied) and
the process set-up (CPU threads, device)."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from heartbeit_lib import utils
from heartbeit_lib.cohorts.evaluation import pretraining_rows, read_eval_patients
from heartbeit_lib.mim.data import PretrainError
from heartbeit_lib.pipeline.pretrain.config import PretrainConfig


@contextlib.contextmanager
def cpu_threads(n: int | None):
    """Limit torch and BLAS/OpenMP (scikit-learn, numpy) CPU threads to ``n`` inside the block (None = no limit).

    torch keeps ``n`` threads afterwards (the run's setting); the BLAS/OpenMP limits are restored.
    """
    if not n:
        yield
        return
    torch.set_num_threads(n)
    with threadpool_limits(limits=n):
        yield


def resolve_device(name: str | None, local_rank: int = 0) -> torch.device:
    """:func:`utils.resolve_device`, raising :class:`PretrainError` (parameter ``device``) on a bad name."""
    try:
        return utils.resolve_device(name, local_rank)
    except ValueError as e:
        raise PretrainError(str(e)) from None


def micro_batch(cfg: PretrainConfig, world: int) -> int:
    """ECGs per forward pass of one process: ``batch_size / world / accum_steps`` (a whole number, else
    :class:`PretrainError` naming the three)."""
    if cfg.batch_size % (world * cfg.accum_steps):
        raise PretrainError(f"batch_size {cfg.batch_size} must be divisible by the {world} processes x accum_steps "
                            f"{cfg.accum_steps}")
    return cfg.batch_size // world // cfg.accum_steps


# what split_rows counts of the evaluation-patient exclusion, reported in 02's metrics.json (image and signal)
EXCLUSION_KEYS = ("eval_patient_overlap_ecgs", "eval_patient_dropped_ecgs", "keep_eval_patients",
                  "mix_eval_patient_ecgs_dropped")


def split_rows(cfg: PretrainConfig, store: Any) -> dict[str, np.ndarray]:
    """Store rows for pretraining (``train``) and held-out evaluation (``val``), sorted int64.

    ``train`` is :func:`pretraining_rows` (no ECG of a patient with a val/test/external row here or in
    ``eval_patients_of``), or every row of ``train_splits`` with ``keep_eval_patients``; the returned dict
    also counts ``eval_patient_overlap_ecgs`` and ``eval_patient_dropped_ecgs``.
    ``val`` is ``store.indices(cfg.val_split)``; when that is empty, a seeded ``val_fraction`` of the
    training patients is held out instead (drawn on patients in order of first appearance, so two
    builds of the same inputs with different salts hold out the same ECGs); with ``max_val`` only the first drawn
    patients up to ``max_val`` ECGs are held out, the others stay in ``train`` (hold out only what is evaluated).
    ``max_train``/``max_val`` cap the counts by a seeded subsample (``max_val`` then drops at most the last held-out
    patient's surplus ECGs).
    """
    splits = list(cfg.train_splits)
    everything = np.unique(np.concatenate([store.indices(s) for s in splits])).astype(np.int64)
    mix = Path(store.root) / "mix.json"  # a cohorts.build_pretraining_mix store: it re-hashed its patients
    if cfg.eval_patients_of and mix.is_file():
        raise PretrainError(f"parameter 'eval_patients_of': {store.root} is a pretraining mix, whose rows carry new "
                            "patient hashes, so no evaluation patient would be found; exclude them when building it "
                            "(cohorts.build_pretraining_mix(..., exclude_patients_of=[...]))")
    foreign = set().union(*(read_eval_patients(c) for c in cfg.eval_patients_of))
    clean = pretraining_rows(store.manifest, splits, exclude_hashes=foreign)
    train = everything if cfg.keep_eval_patients else clean
    if cfg.keep_eval_patients:
        print(f"keep_eval_patients=True: {len(everything) - len(clean)} ECGs of evaluation patients stay in "
              "pretraining and the tokenizer fit (old behaviour)", file=sys.stderr)
    # counts before the hold-out and max_train: ECGs of evaluation patients kept / left out
    excl = {"eval_patient_overlap_ecgs": int(len(train) - len(clean)),
            "eval_patient_dropped_ecgs": int(len(everything) - len(train)),
            "keep_eval_patients": bool(cfg.keep_eval_patients)}
    if mix.is_file():  # what the mix build already left out, per cohort named there
        excl["mix_eval_patient_ecgs_dropped"] = json.loads(mix.read_text()).get("eval_patient_ecgs_dropped", {})
    val = store.indices(cfg.val_split) if cfg.val_split else np.zeros(0, np.int64)
    rng = np.random.default_rng(cfg.seed)
    held_out = "split"
    if len(val) == 0 and cfg.val_fraction > 0 and len(train) > 1:
        # patients in order of first appearance (not the salted hashes), so the held-out set
        # depends on the seed only, not on the salt of the store build
        codes, uniq = pd.factorize(store.manifest["patient_hash"].to_numpy()[train], sort=False)
        n_val = max(1, int(round(cfg.val_fraction * len(uniq))))
        chosen = rng.permutation(len(uniq))[:n_val]
        if cfg.max_val:
            # hold out only what is evaluated: the first patients of the draw until max_val ECGs are reached
            # (at paper scale 10 % of patients is ~850k ECGs, 20k of them evaluated: the rest stays in training)
            ecgs = np.bincount(codes, minlength=len(uniq))[chosen]
            chosen = chosen[:int(np.searchsorted(np.cumsum(ecgs), cfg.max_val)) + 1]
        is_val = np.isin(codes, chosen)
        val, train = train[is_val], train[~is_val]
        held_out = (f"{len(chosen)} of {len(uniq)} training patients (up to {cfg.val_fraction:.0%}, "
                    f"until max_val {cfg.max_val} ECGs)" if cfg.max_val else f"{cfg.val_fraction:.0%} of training patients")
    if cfg.max_train and len(train) > cfg.max_train:
        train = np.sort(rng.choice(train, cfg.max_train, replace=False))
    if cfg.max_val and len(val) > cfg.max_val:
        val = np.sort(rng.choice(val, cfg.max_val, replace=False))
    if len(train) == 0:
        raise PretrainError(f"{store.root}: no rows in splits {splits} to pretrain on")
    return {"train": train, "val": np.asarray(val, np.int64), "held_out": held_out, **excl}
