"""One fine-tuning epoch and the per-split evaluation (MAE's ``engine`` shape): one loop, one step.

Per-epoch AUROC is ``sklearn.metrics.roc_auc_score``; AUPRC is average precision
(``sklearn.metrics.average_precision_score``; the authors' code used the trapezoidal
``auc(recall, precision)``).  The metrics notebook recomputes both, with bootstrap CIs, from
``predictions.parquet``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from heartbeit_lib.analysis import metrics as hm
from heartbeit_lib.classify.data import EVAL_SPLITS, Split, device_images
from heartbeit_lib.classify.signal_data import CROP_STRIDE, sliding_window_logits
from heartbeit_lib.cohorts.store import LABEL_PREFIX

SCORE_PREFIX = "score:"  # predictions column of one class of a multi-label model: score:<class> (sigmoid)


def macro_metrics(y: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """Macro AUROC and macro AUPRC of a multi-label split: ``y`` (n, C) 0/1, ``score`` (n, C); the mean over the
    classes with both labels present (``sklearn.metrics.roc_auc_score(y, score, average="macro")`` when every
    class has both), NaN when none has or a score is not finite."""
    y, score = np.asarray(y), np.asarray(score, dtype=np.float64)
    per = [split_metrics(y[:, j], score[:, j]) for j in range(y.shape[1])] if len(y) else []
    au = [m["auroc"] for m in per if np.isfinite(m["auroc"])]
    ap = [m["auprc"] for m in per if np.isfinite(m["auprc"])]
    return {"auroc": float(np.mean(au)) if au else float("nan"), "auprc": float(np.mean(ap)) if ap else float("nan")}


def split_metrics(label: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """AUROC and AUPRC (average precision) of one split; NaN if one class is absent or a score is
    not finite (a diverged epoch is logged, not fatal).

    ``heartbeit_lib.analysis.metrics.auroc_score`` / ``auprc_score`` (exactly sklearn's ``roc_auc_score`` /
    ``average_precision_score``).
    """
    label, score = np.asarray(label), np.asarray(score, dtype=np.float64)
    if len(label) == 0 or len(np.unique(label)) < 2 or not np.isfinite(score).all():
        return {"auroc": float("nan"), "auprc": float("nan")}
    return {"auroc": float(hm.auroc_score(label, score)), "auprc": float(hm.auprc_score(label, score))}


def select_best_epoch(log: Sequence[Mapping[str, Any]], select_on: str = "val", metric: str = "auroc") -> int:
    """Epoch (the log's ``epoch`` value) with the highest ``<select_on>_<metric>``; the *latest* such epoch on ties
    (a small validation set ties often, and an early tie is an undertrained model: issue 24, item 2).

    Only the named split is read: with ``select_on="val"`` the test and external scores never
    influence the choice. NaN (one class in the split) counts as worst.

    Raises
    ------
    ValueError : empty log, unknown split, or the column is NaN in every epoch.
    """
    if select_on not in ("val", "test", "last"):
        raise ValueError(f"select_on must be 'val', 'test' or 'last', got {select_on!r}")
    if not log:
        raise ValueError("select_best_epoch: empty training log")
    if select_on == "last":  # no selection (the PTB-XL benchmark keeps the last epoch)
        return int(log[-1]["epoch"])
    key = f"{select_on}_{metric}"
    vals = [(float("nan") if r.get(key) is None else float(r[key]), int(r["epoch"])) for r in log]
    finite = [(v, e) for v, e in vals if math.isfinite(v)]
    if not finite:
        raise ValueError(f"select_best_epoch: {key} is NaN in every epoch (does the {select_on} split hold both classes?)")
    best = max(v for v, _ in finite)
    return max(e for v, e in finite if v == best)


# ---------------------------------------------------------------- training


def train_one_epoch(model: nn.Module, loader, opt: torch.optim.Optimizer, sched, scaler: torch.amp.GradScaler,
                    mean: torch.Tensor, std: torch.Tensor, device: torch.device, amp: bool = False,
                    channels_last: bool = False, multilabel: bool = False) -> float:
    """One pass over ``loader`` (images uint8 (B, S, S) grey or (B, 3, S, S) in [0, 1], int64 labels (B,));
    cross-entropy, one optimiser and scheduler step per batch.  ``mean``/``std`` (1, 3, 1, 1) normalise on the
    device (:func:`device_images`).  The loss sum stays on the device until the end of the epoch (no host
    sync per step).  ``multilabel``: float (B, C) 0/1 targets and ``BCEWithLogitsLoss`` (mean over the batch and
    classes, the PTB-XL benchmark's ``binary_cross_entropy_with_logits``).  Returns the mean training loss over the
    epoch's images."""
    model.train()
    loss_fn = nn.BCEWithLogitsLoss() if multilabel else nn.CrossEntropyLoss()
    tot, n = torch.zeros((), dtype=torch.float64, device=device), 0
    for x, y in loader:
        x = device_images(x, mean, std, channels_last)
        y = y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        tot += loss.detach().double() * len(y)
        n += len(y)
    return float(tot) / max(n, 1)


@dataclasses.dataclass(frozen=True)
class Windows:
    """Test-time windows of the signal models: ``window`` samples every ``window * stride_fraction`` (plus one flush
    with the end), window outputs combined by ``aggregate`` (``mean`` or ``max``; the PTB-XL benchmark: 2.5-s
    windows, 1.25-s stride, max)."""

    window: int
    aggregate: str = "mean"
    stride_fraction: float = CROP_STRIDE


@torch.no_grad()
def predict(model: nn.Module, loader, mean: torch.Tensor, std: torch.Tensor, device: torch.device,
            amp: bool = False, channels_last: bool = False, multilabel: bool = False,
            windows: Windows | None = None) -> np.ndarray:
    """Probability of class 1 for every image of ``loader``: (n,) float64; ``multilabel``: sigmoid of every class,
    (n, C) float64. ``windows``: signal inputs scored as windows (max of window logits = max of probabilities)."""
    model.eval()
    out = []
    for x, _ in loader:
        x = device_images(x, mean, std, channels_last)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits = model(x) if windows is None else sliding_window_logits(
                model, x, windows.window, windows.stride_fraction, windows.aggregate)
        logits = logits.float()
        out.append((torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)[:, 1]).double())
    if not out:
        return np.zeros((0, 0)) if multilabel else np.zeros(0)
    return torch.cat(out).cpu().numpy()  # one device -> host copy per split


def evaluate(model: nn.Module, loaders: Mapping[str, Any], splits: Mapping[str, Split], mean: torch.Tensor,
             std: torch.Tensor, device: torch.device, epoch: int, amp: bool = False,
             channels_last: bool = False, windows: Windows | None = None) -> tuple[dict, list[pd.DataFrame]]:
    """Score every split of :data:`EVAL_SPLITS` (an empty split has no loader and NaN metrics).

    Returns ({``<split>_auroc``, ``<split>_auprc``}, one predictions frame per split with record_id,
    patient_hash, split, epoch, label, score = probability of class 1). A multi-label split (``Split.classes``):
    macro AUROC/AUPRC (:func:`macro_metrics`) and, instead of label/score, one ``label:<class>`` and one
    ``score:<class>`` (sigmoid) column per class.
    """
    row: dict[str, float] = {}
    frames = []
    for s in EVAL_SPLITS:
        sp = splits[s]
        if sp.classes:
            score = predict(model, loaders[s], mean, std, device, amp, channels_last, True, windows) \
                if s in loaders else np.zeros((0, len(sp.classes)))
            m = macro_metrics(sp.y, score)
            row[f"{s}_auroc"], row[f"{s}_auprc"] = m["auroc"], m["auprc"]
            cols = {f"{LABEL_PREFIX}{c}": sp.y[:, j].astype(np.int64) for j, c in enumerate(sp.classes)}
            cols.update({f"{SCORE_PREFIX}{c}": score[:, j].astype(np.float64) for j, c in enumerate(sp.classes)})
            frames.append(pd.DataFrame({"record_id": sp.record_id.astype(str),
                                        "patient_hash": sp.patient_hash.astype(str), "split": s,
                                        "epoch": np.full(len(sp), epoch, dtype=np.int64), **cols}))
            continue
        score = predict(model, loaders[s], mean, std, device, amp, channels_last, windows=windows) \
            if s in loaders else np.zeros(0)
        m = split_metrics(sp.label, score)
        row[f"{s}_auroc"], row[f"{s}_auprc"] = m["auroc"], m["auprc"]
        frames.append(pd.DataFrame({"record_id": sp.record_id.astype(str), "patient_hash": sp.patient_hash.astype(str),
                                    "split": s, "epoch": np.full(len(sp), epoch, dtype=np.int64),
                                    "label": sp.label.astype(np.int64), "score": score.astype(np.float64)}))
    return row, frames
