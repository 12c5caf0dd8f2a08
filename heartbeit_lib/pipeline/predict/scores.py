"""07, step 3: every member's probabilities and the predictions table (one ``score:<class>`` column per class of a
multi-label model)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from heartbeit_lib.classify.engine import SCORE_PREFIX
from heartbeit_lib.cohorts import LABEL_PREFIX

from heartbeit_lib.pipeline.predict.config import CHUNK, DECISION_PREFIX, Thresholds
from heartbeit_lib.pipeline.predict.ensemble import (Member, Rendering, member_inputs, member_probabilities,
                                                     render_images)
from heartbeit_lib.pipeline.predict.inputs import Inputs, _relative


def score(members: Sequence[Member], inputs: Inputs, rendering: Rendering, batch_size: int = 64) -> np.ndarray:
    """(n_members, n) probability of class 1 of every member for every scored ECG, or (n_members, n, classes) the
    sigmoid per class of multi-label members (read in chunks of :data:`CHUNK`; rendered once per chunk when an image
    model is among the members)."""
    out = np.zeros((len(members), len(inputs.rows), *((len(members[0].classes),) if members[0].multilabel else ())),
                   np.float64)
    need_images = any(m.family == "image" for m in members)
    for s in range(0, len(inputs.rows), CHUNK):
        sig = inputs.store.signals(inputs.rows[s:s + CHUNK])
        grey = render_images(sig, rendering) if need_images else None
        for k, m in enumerate(members):
            out[k, s:s + len(sig)] = member_probabilities(m, member_inputs(m, sig, grey, rendering), batch_size)
    return out


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
