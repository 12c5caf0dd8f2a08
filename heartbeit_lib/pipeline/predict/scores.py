"""07, step 3: every member's probabilities and the predictions table (one ``score:<class>`` column per class of a
multi-label model)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from heartbeit_lib.classify.engine import SCORE_PREFIX
from heartbeit_lib.cohorts import LABEL_PREFIX, build_shards_in_order, merge_store
from heartbeit_lib.cohorts.store import shard_name

from heartbeit_lib.pipeline.predict.config import CHUNK, DECISION_PREFIX, PredictConfig, Thresholds
from heartbeit_lib.pipeline.predict.ensemble import (Member, Rendering, member_probabilities, member_score_inputs,
                                                     render_images)
from heartbeit_lib.pipeline.predict.inputs import Inputs, _relative, prepare_inputs, raw_inputs, raw_source, read_workers

SHARD = 64  # raw files per store shard in prepare_and_score: the unit the readers hand to the scoring


def score(members: Sequence[Member], inputs: Inputs, rendering: Rendering, batch_size: int = 64) -> np.ndarray:
    """(n_members, n) probability of class 1 of every member for every scored ECG, or (n_members, n, classes) the
    sigmoid per class of multi-label members (read in chunks of :data:`CHUNK`; rendered once per chunk when an image
    model is among the members)."""
    out = _no_scores(members, len(inputs.rows))
    for s in range(0, len(inputs.rows), CHUNK):
        sig = inputs.store.signals(inputs.rows[s:s + CHUNK])
        out[:, s:s + len(sig)] = score_chunk(members, sig, rendering, batch_size)
    return out


def _no_scores(members: Sequence[Member], n: int) -> np.ndarray:
    return np.zeros((len(members), n, *((len(members[0].classes),) if members[0].multilabel else ())), np.float64)


def score_chunk(members: Sequence[Member], signals: np.ndarray, rendering: Rendering, batch_size: int = 64
                ) -> np.ndarray:
    """(n_members, n[, classes]) probabilities of the float32 store signals (n, leads, T) of one chunk (rendered once
    when an image model is among the members)."""
    grey = render_images(signals, rendering) if any(m.family == "image" for m in members) else None
    return np.stack([member_probabilities(m, member_score_inputs(m, signals, grey, rendering), batch_size)
                     for m in members])


def prepare_and_score(cfg: PredictConfig, run_dir: str | os.PathLike, members: Sequence[Member],
                      rendering: Rendering, while_reading: Callable[[], Any] | None = None
                      ) -> tuple[Inputs, np.ndarray]:
    """:func:`prepare_inputs` then :func:`score` (steps 2 and 3, what :func:`run` does), the same inputs and
    probabilities bit for bit, faster for raw files: ``workers`` reader processes (``cohorts.build_shards_in_order``,
    forked) build the store in shards of :data:`SHARD` files while this process scores the stored ECGs, in store
    order, as soon as the shards holding them are built; then ``merge_store``. The model (torch) and the readers
    (Python: XML, base64, the filters) so run on different cores at once, with no GIL between them.

    The scored units are whole batches of :func:`score` (``batch_size`` rows, or :data:`CHUNK` rows when
    ``batch_size`` does not divide it), so every batch the model sees holds the rows :func:`score` would give it.

    ``while_reading`` (optional) is called once while the readers read the first shard (:func:`run`: the threshold
    and its bootstrap interval, which need no scored ECG), else before the inputs are prepared.

    Returns the :class:`Inputs` and :func:`score`'s (n_members, n[, classes]) probabilities."""
    if cfg.cohort_run:
        if while_reading is not None:
            while_reading()
        inputs = prepare_inputs(cfg, run_dir, rendering)
        return inputs, score(members, inputs, rendering, cfg.batch_size)
    src = raw_source(cfg, rendering.task, rendering.classes)
    cohort = Path(run_dir) / "cohort"
    kw = dict(task_cfg="unlabelled", preprocess_kw=rendering.preprocess_kw, salt_file=cfg.salt_file,
              shard_size=SHARD)
    readers = read_workers(cfg.workers, len(src.inputs))
    last = max(1, math.ceil(len(src.inputs) / SHARD)) - 1  # plan_build's shard count
    unit = cfg.batch_size if CHUNK % cfg.batch_size == 0 else CHUNK  # score()'s batches, whole
    done: list[np.ndarray] = []
    carry: list[np.ndarray] = []  # stored ECGs not yet scored, float32 as CohortStore.signals gives them
    threads = torch.get_num_threads()
    try:
        # the readers hold `readers` cores until the last shard is built: torch's threads spin-wait when they
        # outnumber the free cores (micro ViT on 2 cores, 1 reader: 7.4 CPU ms per ECG with 2 threads, 4.6 with 1)
        torch.set_num_threads(max(1, threads - readers))
        for i in build_shards_in_order(src.inputs, src.reader, cohort, workers=readers, while_reading=while_reading,
                                       **kw):
            if i == last:
                torch.set_num_threads(threads)
            carry.append(np.load(cohort / "store" / f"{shard_name(i)}.npy").astype(np.float32))
            pending = np.concatenate(carry)
            whole = len(pending) - len(pending) % unit
            done.extend(score_chunk(members, pending[s:s + unit], rendering, cfg.batch_size)
                        for s in range(0, whole, unit))
            carry = [pending[whole:]]
        if carry and len(carry[0]):
            done.append(score_chunk(members, carry[0], rendering, cfg.batch_size))
    finally:
        torch.set_num_threads(threads)
    store = merge_store(src.inputs, cohort, **kw)
    return raw_inputs(cfg, src, store), np.concatenate(done, axis=1) if done else _no_scores(members, 0)


def member_columns(members: Sequence[Member]) -> list[str]:
    """``score_<run folder name>`` per member (suffixed ``_<k>`` when two folders share a name)."""
    cols: list[str] = []
    for k, m in enumerate(members):
        c = f"score_{m.name}"
        cols.append(c if c not in cols else f"{c}_{k}")
    return cols


def predictions_table(members: Sequence[Member], inputs: Inputs, member_scores: np.ndarray,
                      threshold: Thresholds) -> pd.DataFrame:
    """``record_id, path, patient_hash, label, score`` (ensemble mean), one column per member, ``decision``
    (1 when ``score >= threshold``).

    A multi-label ensemble (``threshold`` a dict class -> threshold): ``label:<c>`` (the scored store's label of
    class c, -1 when it has none), ``score:<c>`` (the members' mean sigmoid), ``score_<member>:<c>`` and
    ``decision:<c>`` (``score:<c> >= threshold[c]``) per class, in the model's class order."""
    man = inputs.store.manifest.iloc[inputs.rows]
    p = member_scores.mean(axis=0)
    df = pd.DataFrame({"record_id": man["record_id"].astype(str).to_numpy(),
                       "path": [_relative(s, inputs.data_root) for s in man["source_path"]],
                       "patient_hash": man["patient_hash"].astype(str).to_numpy()})
    classes = members[0].classes
    if not classes:
        df["label"], df["score"] = man["label"].to_numpy(np.int64), p
        for col, s in zip(member_columns(members), member_scores):
            df[col] = s
        df["decision"] = (p >= threshold.value).astype(np.int64)
        return df
    cols: dict[str, np.ndarray] = {}
    for j, c in enumerate(classes):
        lab = man.get(f"{LABEL_PREFIX}{c}")
        cols[f"{LABEL_PREFIX}{c}"] = np.full(len(man), -1, np.int64) if lab is None else lab.to_numpy(np.int64)
    cols.update({f"{SCORE_PREFIX}{c}": p[:, j] for j, c in enumerate(classes)})
    for col, s in zip(member_columns(members), member_scores):
        cols.update({f"{col}:{c}": s[:, j] for j, c in enumerate(classes)})
    cols.update({f"{DECISION_PREFIX}{c}": (p[:, j] >= threshold[c].value).astype(np.int64)
                 for j, c in enumerate(classes)})
    return pd.concat([df, pd.DataFrame(cols, index=df.index)], axis=1)


def class_view(pred: pd.DataFrame, cls: str | None) -> pd.DataFrame:
    """``pred`` with the ``label``, ``score`` and ``decision`` of class ``cls`` of a multi-label table (``pred``
    itself when ``cls`` is None): every per-class step is the binary step on this view."""
    if cls is None:
        return pred
    base = [c for c in ("record_id", "path", "patient_hash") if c in pred.columns]
    return pd.DataFrame({**{c: pred[c] for c in base}, "label": pred[f"{LABEL_PREFIX}{cls}"],
                         "score": pred[f"{SCORE_PREFIX}{cls}"], "decision": pred[f"{DECISION_PREFIX}{cls}"]})
