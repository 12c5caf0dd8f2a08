"""Cohort reports of notebook 01: the paper's Table 1 (ECGs, patients, positives, prevalence per split)
and the QC figure (raw vs stored signal)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from heartbeit_lib import render
from heartbeit_lib.cohorts import LABEL_PREFIX, SPLITS, CohortStore


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
    ``prevalence_pct`` (100 * positives / labelled ECGs; NaN without labelled ECGs). A multi-label store
    (``label:<class>`` columns) adds one ``positives:<class>`` column per class; there ``positives`` counts the
    ECGs with at least one class of the task (every labelled ECG).
    """
    m = _as_manifest(store_or_manifest)
    class_cols = [c for c in m.columns if c.startswith(LABEL_PREFIX)]
    rows = {}
    present = [s for s in SPLITS if (m["split"] == s).any()]
    for name in [*present, "total"]:
        sub = m if name == "total" else m[m["split"] == name]
        lab = sub["label"].to_numpy(np.int64)
        n_lab = int((lab >= 0).sum())
        pos = int((lab == 1).sum())
        rows[name] = {"ecgs": len(sub), "patients": int(sub["patient_hash"].nunique()), "positives": pos,
                      "unlabelled": int((lab < 0).sum()),
                      "prevalence_pct": round(100.0 * pos / n_lab, 2) if n_lab else float("nan"),
                      **{f"positives:{c[len(LABEL_PREFIX):]}": int((sub[c] == 1).sum()) for c in class_cols}}
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "split"
    return out


def fraction_table(store: CohortStore) -> pd.DataFrame:
    """Table 1, per training fraction: the training subset and the validation subset fine-tuning selects its
    epoch on by default (``val_fraction: matched``; nested, stratified, at least ``VAL_MIN_PER_CLASS`` = 50 ECGs of each class, so a
    small fraction's validation share can exceed the fraction), and the full validation split for comparison.

    Returns a DataFrame indexed by fraction with int columns ``train_ecgs``, ``train_positives``,
    ``val_ecgs``, ``val_positives``, ``val_full_ecgs``.
    """
    rows = {}
    full = store.indices("val")
    for f in store.info.get("fractions", [1.0]):
        tr, va = store.indices("train", f), store.indices("val", f)
        rows[float(f)] = {"train_ecgs": len(tr), "train_positives": int((store.labels(tr) == 1).sum()),
                          "val_ecgs": len(va), "val_positives": int((store.labels(va) == 1).sum()),
                          "val_full_ecgs": len(full)}
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "fraction"
    return out


def clipping(store: CohortStore, ylim_mv: Sequence[float] | None = None, batch: int = 512) -> dict:
    """Share of stored leads and ECGs that the renderer clips at ``ylim_mv`` (None: ``render.DEFAULT_YLIM_MV``):
    ``render.clip_fractions`` over the whole store, read ``batch`` ECGs at a time. Keys ``clip_ylim_mv``,
    ``clipped_lead_fraction``, ``clipped_ecg_fraction``; a store images are not drawn from (not the paper's
    8 leads x 5 s at 500 Hz, e.g. the PTB-XL benchmark's) gives None for both fractions."""
    n_lead = n_ecg = 0.0
    if not store.paper_layout:
        lo, hi = render.clip_fractions(np.zeros((0, 8, 1)), ylim_mv)["ylim_mv"]
        return {"clip_ylim_mv": [lo, hi], "clipped_lead_fraction": None, "clipped_ecg_fraction": None}
    for s in range(0, len(store), batch):
        rows = np.arange(s, min(s + batch, len(store)))
        got = render.clip_fractions(store.signals(rows), ylim_mv)
        n_lead += got["clipped_lead_fraction"] * len(rows)
        n_ecg += got["clipped_ecg_fraction"] * len(rows)
    lo, hi = render.clip_fractions(np.zeros((0, 8, 1)), ylim_mv)["ylim_mv"]
    n = max(len(store), 1)
    return {"clip_ylim_mv": [lo, hi], "clipped_lead_fraction": n_lead / n, "clipped_ecg_fraction": n_ecg / n}


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


def qc_figure(store: CohortStore, reader: Callable[[str], Any], rows: Sequence[int] | None = None, n: int = 3,
              window_start_s: float | None = None, spacing_mv: float = 3.0):
    """Raw vs stored (filtered) leads of a few records, as a matplotlib Figure.

    Parameters
    ----------
    store : CohortStore
    reader : the reader the store was built with (re-reads ``source_path`` for the raw signal)
    rows : manifest rows to show (default: ``n`` rows evenly spaced over the store)
    window_start_s : start of the stored window in the raw record, seconds (default: the
        store's ``preprocess_kw['start'] / store.fs``)
    spacing_mv : vertical distance between stacked leads, mV

    Returns
    -------
    matplotlib.figure.Figure with one panel per record: leads I, II, V1-V6 stacked top to bottom
    (offset by ``spacing_mv``), raw in grey at its own sampling rate, stored in blue, both in mV
    over the same 5 s.
    """
    if rows is None:
        rows = np.unique(np.linspace(0, len(store) - 1, num=min(n, len(store))).round().astype(int)).tolist()
    rows = list(rows)
    if not rows:
        fig = Figure(figsize=(4, 1))
        fig.text(0.5, 0.5, "no records to show", ha="center", va="center")
        return fig
    leads = list(store.info["leads"])
    filtered = (store.info.get("preprocess_kw") or {}).get("band", ()) is not None
    if window_start_s is None:
        window_start_s = float((store.info.get("preprocess_kw") or {}).get("start", 0)) / store.fs
    fig = Figure(figsize=(4.5 * max(1, len(rows)), 6.5))
    axes = np.atleast_1d(fig.subplots(1, max(1, len(rows)), sharey=True, squeeze=False)[0])
    stored = store.signals(np.asarray(rows, np.int64))
    offsets = -spacing_mv * np.arange(len(leads))
    n_samples, fs_st = store.shape[-1], store.fs
    t_st = window_start_s + np.arange(n_samples) / fs_st
    for c, r in enumerate(rows):
        rec = store.manifest.iloc[r]
        raw = reader(rec["source_path"])
        sig = np.asarray(raw.signal)
        raw_leads = [str(l).upper() for l in raw.leads]
        fs = float(raw.fs)
        a = int(round(window_start_s * fs))
        b = min(int(round((window_start_s + n_samples / fs_st) * fs)), sig.shape[-1])
        t_raw = np.arange(a, b) / fs
        ax = axes[c]
        for k, lead in enumerate(leads):
            if lead in raw_leads:
                ax.plot(t_raw, sig[raw_leads.index(lead), a:b] / 1000.0 + offsets[k], color="0.65", lw=0.6,
                        label="raw" if k == 0 else None)
            ax.plot(t_st, stored[c, k] / 1000.0 + offsets[k], color="tab:blue", lw=0.6,
                    label=("stored (filtered)" if filtered else "stored") if k == 0 else None)
        # parse_math=False: a "$" in a record id (a file name) must not start matplotlib mathtext
        ax.set_title(f"{rec['record_id']} (label {rec['label']}, {rec['split']})", fontsize=8, parse_math=False)
        ax.set_xlabel("time (s)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_yticks(offsets, leads)
    axes[0].set_ylabel(f"lead (offset {spacing_mv:g} mV apart)", fontsize=8)
    axes[0].legend(fontsize=7, loc="upper right")
    fig.suptitle("01_preprocess QC: raw (grey) vs " + ("band-passed + median-filtered" if filtered else "stored raw")
                 + " (blue), mV", fontsize=9)
    fig.subplots_adjust(left=0.07, right=0.99, bottom=0.08, top=0.9, wspace=0.05)
    return fig
