"""Figures of the report: the paper's performance figures (04_metrics), Supplementary Figure 9 (05_wasserstein)
and the saliency overlays and bar charts (06_saliency).

- ROC and precision-recall curves per task / split with one panel per fraction and the models overlaid
  (Supplementary Figures 2-5), and per task / split the performance-versus-fraction panels with CI bands
  (Figures 2-4 A/B) and the reference-minus-baseline differences with paired CIs (C/D).

Figures are built on :class:`matplotlib.figure.Figure` directly (no pyplot state), so they render
headlessly and do not leak between calls.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from heartbeit_lib import render
from heartbeit_lib.analysis.metrics import auprc_score, auroc_score
from heartbeit_lib.analysis.saliency.attribution import attribution_summary
from heartbeit_lib.analysis.saliency.errors import SaliencyError
from heartbeit_lib.analysis.saliency.faithfulness import faithfulness_summary
from heartbeit_lib.analysis.saliency.results import SaliencyResult
from heartbeit_lib.analysis.wasserstein import PAPER_VALUES, is_same_set, pair_values
from heartbeit_lib.report.tables import (MODEL_ORDER, TableError, model_families, model_label, order_models,
                                         select_seed, split_label, task_label)

#: line style and marker per model family, so image and signal models differ in every 04 figure beyond colour
FAMILY_STYLE = {"image": {"ls": "-", "marker": "o"}, "signal": {"ls": "--", "marker": "s"}}


def model_colors(models: Sequence[str]) -> dict[str, Any]:
    """A fixed colour per model (position in the paper's order), the same in every figure."""
    cmap = colormaps["tab10"]
    out, extra = {}, 0
    for m in order_models(models):
        base = m.removesuffix("_scratch")
        if base in MODEL_ORDER:
            out[m] = cmap(MODEL_ORDER.index(base))
        else:
            out[m] = cmap((len(MODEL_ORDER) + extra) % 10)
            extra += 1
    return out


# ------------------------------------------------------------------------------ metrics (04)


def _fraction_axis(ax, fractions: Sequence[float]) -> None:
    ax.set_xscale("log")
    ax.set_xticks(list(fractions))
    ax.set_xticklabels([f"{100 * f:g}%" for f in fractions])
    ax.minorticks_off()
    ax.set_xlabel("training data")


def plot_roc_pr(preds: pd.DataFrame, task: str, split: str, seed: int | None = None,
                auprc_method: str = "ap") -> Figure:
    """ROC (top row) and precision-recall (bottom row) curves, one column per training fraction,
    models overlaid (Supplementary Figures 2-5). Curves from ``sklearn.metrics.roc_curve`` and
    ``precision_recall_curve``; legends give AUROC / AUPRC on the full set. PR curves are drawn as
    steps for ``auprc_method="ap"`` and with straight segments for ``"trapezoid"``."""
    sub = preds[(preds["task"] == task) & (preds["split"] == split)]
    if seed is not None:
        sub = sub[sub["seed"] == seed]
    if sub.empty:
        raise TableError(f"plot_roc_pr: no predictions for task={task!r}, split={split!r}")
    fractions = sorted(sub["fraction"].unique())
    models = order_models(sub["model"])
    colors = model_colors(models)
    ls = {m: FAMILY_STYLE[f]["ls"] for m, f in model_families(sub).items()}
    nf = len(fractions)
    fig = Figure(figsize=(2.6 * nf + 0.8, 6.0))
    # fixed margins instead of constrained layout: same look, a fraction of the layout time
    fig.subplots_adjust(left=0.7 / (2.6 * nf + 0.8), right=0.99, bottom=0.08, top=0.9, wspace=0.08, hspace=0.28)
    axes = fig.subplots(2, nf, squeeze=False, sharex=True, sharey=True)
    for j, f in enumerate(fractions):
        ax_roc, ax_pr = axes[0, j], axes[1, j]
        prevalence = None
        for model in models:
            r = sub[(sub["fraction"] == f) & (sub["model"] == model)]
            if r.empty:
                continue
            if r["seed"].nunique() > 1:
                r = r[r["seed"] == r["seed"].min()]
            y, s = r["label"].to_numpy(), r["score"].to_numpy(dtype=np.float64)
            prevalence = y.mean()
            fpr, tpr, _ = roc_curve(y, s)
            ax_roc.plot(fpr, tpr, color=colors[model], lw=1.2, ls=ls[model],
                        label=f"{model_label(model)} {auroc_score(y, s):.3f}")
            prec, rec, _ = precision_recall_curve(y, s, drop_intermediate=True)
            if auprc_method == "ap":
                ax_pr.step(rec, prec, where="pre", color=colors[model], lw=1.2, ls=ls[model],
                           label=f"{model_label(model)} {auprc_score(y, s, 'ap'):.3f}")
            else:
                ax_pr.plot(rec, prec, color=colors[model], lw=1.2, ls=ls[model],
                           label=f"{model_label(model)} {auprc_score(y, s, 'trapezoid'):.3f}")
        ax_roc.plot([0, 1], [0, 1], ls=":", color="grey", lw=0.8)
        if prevalence is not None:
            ax_pr.axhline(prevalence, ls=":", color="grey", lw=0.8)
        ax_roc.set_title(f"{100 * f:g}% of training data", fontsize=10)
        ax_roc.set_xlabel("1 - specificity", fontsize=9)
        ax_pr.set_xlabel("recall", fontsize=9)
        if j == 0:
            ax_roc.set_ylabel("sensitivity", fontsize=9)
            ax_pr.set_ylabel("precision", fontsize=9)
        for ax in (ax_roc, ax_pr):
            ax.legend(fontsize=6.5, loc="lower right" if ax is ax_roc else "lower left",
                      title="AUROC" if ax is ax_roc else "AUPRC", title_fontsize=7)
    ax0 = axes[0, 0]
    ax0.set_xlim(0, 1)
    ax0.set_ylim(0, 1.02)
    ax0.set_xticks([0, 0.5, 1], ["0", "0.5", "1"])
    ax0.set_yticks([0, 0.5, 1], ["0", "0.5", "1"])
    fig.suptitle(f"{task_label(task)}, {split_label(split)}: ROC and precision-recall curves")
    return fig


def plot_fraction_panels(results: pd.DataFrame, differences: pd.DataFrame | None, task: str, split: str,
                         reference_model: str = "heartbeit") -> Figure:
    """Figures 2-4 of the paper: (A) AUROC and (B) AUPRC versus the fraction of training data with
    95% CI bands, (C, D) the paired differences ``reference_model`` minus each baseline with their CI
    bands (``*``: two-sided bootstrap p < 0.05). Results must hold one seed per cell."""
    res = select_seed(results)
    sub = res[(res["task"] == task) & (res["split"] == split)]
    if sub.empty:
        raise TableError(f"plot_fraction_panels: no results for task={task!r}, split={split!r}")
    fractions = sorted(sub["fraction"].unique())
    models = order_models(sub["model"])
    colors = model_colors(models)
    style = {m: FAMILY_STYLE[f] for m, f in model_families(sub).items()}
    dsub = None
    if differences is not None and len(differences):
        dsub = differences[(differences["task"] == task) & (differences["split"] == split)
                           & (differences["reference"] == reference_model)]
        dsub = dsub if len(dsub) else None
    nrows = 2 if dsub is not None else 1
    fig = Figure(figsize=(10, 3.8 * nrows))
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.12 / nrows, top=1 - 0.16 / nrows, wspace=0.22,
                        hspace=0.38)
    axes = fig.subplots(nrows, 2, squeeze=False)
    letters = np.array([["A", "B"], ["C", "D"]])
    for j, metric in enumerate(("auroc", "auprc")):
        ax = axes[0, j]
        for model in models:
            r = sub[sub["model"] == model].sort_values("fraction")
            ax.plot(r["fraction"], r[metric], ms=4, color=colors[model], label=model_label(model),
                    lw=2.0 if model == reference_model else 1.2, **style[model])
            ax.fill_between(r["fraction"], r[f"{metric}_lo"], r[f"{metric}_hi"], color=colors[model], alpha=0.15,
                            lw=0)
        _fraction_axis(ax, fractions)
        ax.set_ylabel(metric.upper())
        ax.set_title(f"{letters[0, j]}  {metric.upper()}", loc="left")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if dsub is None:
            continue
        ax = axes[1, j]
        for base in order_models(dsub["baseline"]):
            r = dsub[dsub["baseline"] == base].sort_values("fraction")
            if r["seed"].nunique() > 1:
                r = r[r["seed"] == r["seed"].min()]
            ax.plot(r["fraction"], r[f"{metric}_diff"], ms=4, color=colors.get(base, "k"),
                    **style.get(base, FAMILY_STYLE["image"]),
                    label=f"{model_label(reference_model)} - {model_label(base)}")
            ax.fill_between(r["fraction"], r[f"{metric}_diff_lo"], r[f"{metric}_diff_hi"],
                            color=colors.get(base, "k"), alpha=0.15, lw=0)
            for _, rr in r.iterrows():
                if rr[f"{metric}_p"] < 0.05:
                    ax.annotate("*", (rr["fraction"], rr[f"{metric}_diff_hi"]), ha="center", va="bottom",
                                color=colors.get(base, "k"), fontsize=11)
        ax.axhline(0, color="k", lw=0.8)
        _fraction_axis(ax, fractions)
        ax.set_ylabel(f"difference in {metric.upper()}")
        ax.set_title(f"{letters[1, j]}  {metric.upper()}: {model_label(reference_model)} minus baseline",
                     loc="left")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{task_label(task)}, {split_label(split)}")
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 110) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def write_figures(preds: pd.DataFrame, results: pd.DataFrame, differences: pd.DataFrame | None,
                  out_dir: str | os.PathLike, reference_model: str = "heartbeit", finetune_seed: int | None = None,
                  auprc_method: str = "ap", splits: Sequence[str] = ("test", "external"),
                  dpi: int = 110) -> list[Path]:
    """For every task and split: ``roc_pr_<task>_<split>.png`` (binary tasks) and ``fraction_<task>_<split>.png``
    (macro AUROC for a multi-label task).
    Several seeds per cell with ``finetune_seed`` None: the figures show the smallest seed (ROC curves are per run;
    the seed-pooled numbers are in the tables)."""
    if finetune_seed is None and len(results) and results.groupby(["task", "split", "model", "fraction"])[
            "seed"].nunique().max() > 1:
        finetune_seed = int(results["seed"].min())
    res = select_seed(results, finetune_seed)
    diffs = differences
    if diffs is not None and len(diffs) and finetune_seed is not None:
        diffs = diffs[diffs["seed"] == finetune_seed]
    paths = []
    for task in sorted(res["task"].unique()):
        for split in [s for s in splits if s in set(res.loc[res["task"] == task, "split"])]:
            seed = None if finetune_seed is None else int(finetune_seed)
            if preds.loc[preds["task"] == task, "score"].notna().any():  # a multi-label task has no single ROC curve
                fig = plot_roc_pr(preds, task, split, seed=seed, auprc_method=auprc_method)
                paths.append(save_figure(fig, Path(out_dir) / f"roc_pr_{task}_{split}.png", dpi))
            fig = plot_fraction_panels(res, diffs, task, split, reference_model)
            paths.append(save_figure(fig, Path(out_dir) / f"fraction_{task}_{split}.png", dpi))
    return paths


# ------------------------------------------------------------------------------ Wasserstein (05)


def plot_supp_fig9(summary, path: str | Path | None = None, title: str | None = None,
                   ylabel: str = "mean Wasserstein distance (grey levels, 0-255)"):
    """Supplementary Figure 9: mean distance per comparison with bootstrap CI, the paper's bars beside.

    ``summary`` is a :func:`heartbeit_lib.analysis.wasserstein.pair_summary` table. Saved to ``path`` (PNG/PDF by suffix) when given;
    returns the ``matplotlib.figure.Figure`` (not registered with pyplot).
    """
    names = list(summary.index)
    x = np.arange(len(names))
    mean = summary["mean"].to_numpy(float)
    err = np.vstack([mean - summary["ci_low"].to_numpy(float), summary["ci_high"].to_numpy(float) - mean])
    paper = summary["paper"].to_numpy(float)
    has_paper = ~np.isnan(paper)
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    w = 0.38 if has_paper.any() else 0.6
    lvl = int(round(100 * float(summary["level"].iloc[0])))
    bars = ax.bar(x - (w / 2 if has_paper.any() else 0), mean, w, color="#3b6ea8",
                  yerr=None if np.isnan(err).all() else err, capsize=4,
                  label=f"this run (mean, {lvl}% bootstrap CI)")
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in mean], padding=3, fontsize=8)
    if has_paper.any():
        pb = ax.bar(x[has_paper] + w / 2, paper[has_paper], w, color="#c9c9c9", edgecolor="#555",
                    hatch="//", label="paper (Vaid et al.)")
        ax.bar_label(pb, labels=[f"{v:.2f}" for v in paper[has_paper]], padding=3, fontsize=8)
    ax.set_xticks(x, names)
    ax.set_ylabel(ylabel)
    ax.set_title(title or "Wasserstein distance between image sets (Supplementary Figure 9)", fontsize=10)
    ax.legend(frameon=False, fontsize=8, loc="upper left")
    ax.set_ylim(0, 1.15 * np.nanmax(np.concatenate([mean + np.nan_to_num(err[1]), paper])))
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=150)
    return fig


def plot_pair_histograms(matrices: Mapping[str, np.ndarray], path: str | Path | None = None,
                         bins: int = 60, xlabel: str = "Wasserstein distance (grey levels)",
                         show_paper: bool = True):
    """Histograms of the distinct pairwise distances (:func:`heartbeit_lib.analysis.wasserstein.pair_values`: i < j within a set, no
    self-pairs), one panel per comparison, with their mean (solid) and, with ``show_paper``, the paper's value (dashed) marked. Returns the Figure."""
    fig = Figure(figsize=(4.2 * len(matrices), 3.4))
    axes = fig.subplots(1, len(matrices), squeeze=False)
    for ax, (name, D) in zip(axes[0], matrices.items()):
        same = is_same_set(name)
        v = pair_values(D, same)
        ax.hist(v, bins=min(bins, max(10, int(np.sqrt(v.size)))), color="#3b6ea8", alpha=0.85)
        ax.axvline(v.mean(), color="k", lw=1.2, label=f"mean of these pairs {v.mean():.2f}")
        if show_paper and name in PAPER_VALUES:
            ax.axvline(PAPER_VALUES[name], color="#c0392b", ls="--", lw=1.2, label=f"paper {PAPER_VALUES[name]:.2f}")
        ax.set_title(f"{name} ({len(v):,} pairs)", fontsize=10)
        ax.set_xlabel(xlabel)
        ax.legend(frameon=False, fontsize=8)
        ax.spines[["top", "right"]].set_visible(False)
    axes[0][0].set_ylabel("pairs")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=150)
    return fig


# ------------------------------------------------------------------------------ saliency (06)


def _lead_label_positions(layout: str, size: tuple[int, int], n_samples: int = 2500) -> list[tuple[str, float, float]]:
    """(lead, x, y) for a label at the top-left of each panel (stack8: the band centre on the left)."""
    geo = render.layout_geometry(layout, size, n_samples)
    out = []
    for p in geo["panels"]:
        y0, y1 = geo["bands"][p["band"]]
        name = {"AVR": "aVR", "AVL": "aVL", "AVF": "aVF"}.get(p["lead"], p["lead"])
        out.append((name, float(p["x0"]), (y0 + y1) / 2 if layout == "stack8" else y0 + 0.15 * (y1 - y0)))
    return out


def draw_overlay(ax, image: np.ndarray, smap: np.ndarray, layout: str = "stack8", alpha: float = 0.45,
                 lead_labels: bool = True, cmap: str = "jet") -> None:
    """The ECG image in grey with the saliency map on top (``cmap``, ``alpha``), lead names on the
    y axis (stack8) or at each panel (other layouts)."""
    h, w = image.shape[:2]
    ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.imshow(smap, cmap=cmap, vmin=0, vmax=1, alpha=alpha, interpolation="bilinear")
    ax.set_xticks([])
    ax.set_yticks([])
    if lead_labels:
        pos = _lead_label_positions(layout, (h, w))
        if layout == "stack8":
            ax.set_yticks([y for _, _, y in pos])
            ax.set_yticklabels([n for n, _, _ in pos], fontsize=7)
            ax.tick_params(axis="y", length=0, pad=2)
        else:
            for n, x, y in pos:
                ax.text(x + 1, y, n, fontsize=6, color="k", va="center",
                        bbox=dict(boxstyle="square,pad=0.1", fc="white", ec="none", alpha=0.7))


def overlay_figure(result: SaliencyResult, task: str, record_id: str, method: str, title: str = ""):
    """Figures 5-8 of the paper, for one ECG: rows = training fractions, columns = models, each
    panel the ECG with the run's ``method`` map and its predicted probability. Returns a
    ``matplotlib.figure.Figure`` (not registered with pyplot)."""
    sel = [r for r in result.runs if r.info["task"] == task and method in r.maps
           and (r.records["record_id"] == record_id).any()]
    if not sel:
        raise SaliencyError(f"no run of task {task!r} has a {method!r} map of record {record_id!r}")
    fracs = sorted({float(r.info["fraction"]) for r in sel})
    mods = order_models({r.info["model"] for r in sel})
    fig = Figure(figsize=(2.7 * len(mods) + 0.3, 2.7 * len(fracs) + 0.5))
    axes = fig.subplots(len(fracs), len(mods), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    first = {}
    for r in sel:  # lead names on the leftmost panel of each row
        i, j = fracs.index(float(r.info["fraction"])), mods.index(r.info["model"])
        first[i] = min(first.get(i, j), j)
    for r in sel:
        i, j = fracs.index(float(r.info["fraction"])), mods.index(r.info["model"])
        k = int(np.flatnonzero(r.records["record_id"].to_numpy() == record_id)[0])
        ax = axes[i, j]
        ax.set_axis_on()
        draw_overlay(ax, r.images[k], r.maps[method][k].astype(np.float32), r.info["layout"],
                     lead_labels=(j == first[i]))
        ax.set_title(f"{model_label(r.info['model'])}, {100 * float(r.info['fraction']):g}%\n"
                     f"p = {r.records['prob'].iloc[k]:.2f}", fontsize=8)
    lab = sel[0].records.set_index("record_id")["label"].get(record_id, "?")
    # parse_math=False: a "$" in a record id (a file name) must not start matplotlib mathtext
    fig.suptitle(title or f"{task_label(task)}: ECG {record_id} (label {lab}), {method}", fontsize=9, parse_math=False)
    fig.tight_layout()
    return fig


def save_overlay_figures(result: SaliencyResult, run_dir: str | os.PathLike, n_figures: int,
                         methods: Sequence[str] | None = None) -> list[Path]:
    """``overlays/<task>-<record_id>-<method>.png`` for the first ``n_figures`` records of each task."""
    out = Path(run_dir) / "overlays"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    tasks = dict.fromkeys(r.info["task"] for r in result.runs)
    for task in tasks:
        runs_t = [r for r in result.runs if r.info["task"] == task]
        recs = runs_t[0].records["record_id"].tolist()[:n_figures]
        for method in (methods or list(dict.fromkeys(m for r in runs_t for m in r.maps))):
            if not any(method in r.maps for r in runs_t):
                continue
            for rid in recs:
                fig = overlay_figure(result, task, rid, method)
                p = out / f"{_safe(task)}-{_safe(rid)}-{method}.png"
                fig.savefig(p, dpi=110)
                paths.append(p)
    return paths


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(s)).strip("._") or "x"


def plot_attribution(attribution: pd.DataFrame, path: str | os.PathLike | None = None):
    """Bar charts of the mean share per lead and per segment (one bar group per run x method), with
    the share expected from area as black ticks. Returns a ``Figure``."""
    fig = Figure(figsize=(12, 3.6))
    axes = fig.subplots(1, 2, gridspec_kw=dict(width_ratios=[2, 1]))
    for ax, by in zip(axes, ("lead", "segment")):
        s = attribution_summary(attribution, by)
        s["series"] = s.apply(lambda r: f"{model_label(r['model'])} {100 * r['fraction']:g}% {r['method']}",
                              axis=1)
        cats = list(dict.fromkeys(s[by]))
        series = list(dict.fromkeys(s["series"]))
        width = 0.8 / max(len(series), 1)
        for k, name in enumerate(series):
            d = s[s["series"] == name].set_index(by).reindex(cats)
            ax.bar(np.arange(len(cats)) + (k - (len(series) - 1) / 2) * width, d["share"], width, label=name)
        area = s.groupby(by, sort=False)["area_share"].mean().reindex(cats)
        ax.scatter(np.arange(len(cats)), area, marker="_", s=400, color="k", zorder=3, label="expected from area")
        ax.set_xticks(np.arange(len(cats)))
        ax.set_xticklabels(cats)
        ax.set_ylabel("share of saliency")
        ax.set_title(f"saliency per {by} (mean over records)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def plot_faithfulness(faith: pd.DataFrame, path: str | os.PathLike | None = None):
    """Deletion and insertion AUC per run and method minus the same run's random-map AUC (means over
    ECGs with standard errors; below 0 for deletion and above 0 for insertion = more faithful than
    random). Without random rows the raw AUCs are drawn. Returns a ``Figure``."""
    fig = Figure(figsize=(11, 3.4))
    axes = fig.subplots(1, 2)
    if faith.empty:
        return fig
    f = faith.copy()
    relative = (f["method"] == "random").any()
    if relative:
        base = f[f["method"] == "random"].set_index(["run", "record_id"])
        for col in ("deletion_auc", "insertion_auc"):
            f[col] = f[col].to_numpy() - base[col].reindex(pd.MultiIndex.from_frame(f[["run", "record_id"]])).to_numpy()
        f = f[f["method"] != "random"]
    s = faithfulness_summary(f)
    if s.empty:
        return fig
    s["run_label"] = s.apply(lambda r: f"{model_label(r['model'])} {100 * r['fraction']:g}%", axis=1)
    cats = list(dict.fromkeys(s["run_label"]))
    methods = list(dict.fromkeys(s["method"]))
    width = 0.8 / len(methods)
    for ax, col, better in zip(axes, ("deletion_auc", "insertion_auc"), ("lower", "higher")):
        for k, m in enumerate(methods):
            d = s[s["method"] == m].set_index("run_label").reindex(cats)
            ax.bar(np.arange(len(cats)) + (k - (len(methods) - 1) / 2) * width, d[col], width,
                   yerr=d[f"{col}_se"], label=m, capsize=2)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(np.arange(len(cats)))
        ax.set_xticklabels(cats, fontsize=7, rotation=20, ha="right")
        name = col.replace("_auc", " AUC")
        ylabel = f"{name} - random" if relative else name
        ax.set_ylabel(f"{ylabel} ({better} = more faithful)", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


# ---------------------------------------------------------------- pretraining (02)


def plot_pretrain_curve(history: Sequence[dict] | str | os.PathLike, path: str | os.PathLike | None = None,
               baselines: dict | None = None):
    """Pretraining curve (the paper's Supplementary Figure 1): loss and masked-token accuracy per epoch.

    ``history`` is a list of epoch dicts or a ``log.jsonl`` path; ``baselines`` may hold
    ``majority_acc`` / ``position_majority_acc`` drawn as horizontal lines.  Saved to ``path`` (PNG).
    """
    if isinstance(history, (str, os.PathLike)):  # one JSON line per epoch
        history = [json.loads(line) for line in Path(history).read_text().splitlines() if line.strip()]
    ep = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 3.6))
    a1, a2 = fig.subplots(1, 2)
    a1.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    if history and "val_loss" in history[0]:
        a1.plot(ep, [h["val_loss"] for h in history], "s-", label="held-out")
    a1.set(xlabel="epoch", ylabel="masked-token cross-entropy", title="MIM loss")
    a1.legend()
    a2.plot(ep, [h["train_acc"] for h in history], "o-", label="train")
    if history and "val_acc" in history[0]:
        a2.plot(ep, [h["val_acc"] for h in history], "s-", label="held-out")
    for key, style in (("majority_acc", ":"), ("position_majority_acc", "--")):
        if baselines and key in baselines:
            a2.axhline(baselines[key], color="grey", ls=style, label=key.replace("_acc", "").replace("_", " "))
    a2.set(xlabel="epoch", ylabel="masked-token accuracy", title="MIM accuracy")
    a2.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def plot_mim_examples(data: Any, path: str | os.PathLike | None = None, n: int = 3, epoch: int = 0):
    """Rendered ECGs of a pretraining set (``pipeline.pretrain.MIMData``), their token grids and one epoch's block
    masks."""
    n = min(n, len(data.train))
    fig = Figure(figsize=(9, 3 * n))
    axes = fig.subplots(n, 3, squeeze=False)
    for r in range(n):
        img, tok, mask = data.train[(r, epoch)]
        grey = img.numpy() / 255.0 if img.dtype == torch.uint8 else img[0].numpy()
        s = grey.shape[0] // tok.shape[0]
        axes[r, 0].imshow(grey, cmap="gray", vmin=0, vmax=1)
        axes[r, 1].imshow(tok.numpy(), cmap="nipy_spectral", vmin=0, vmax=data.vocab_size - 1,
                          interpolation="nearest")
        if tok.shape[0] <= 8:  # small grids: print the ids
            for (yy, xx), v in np.ndenumerate(tok.numpy()):
                axes[r, 1].text(xx, yy, str(v), ha="center", va="center", fontsize=7, color="white")
        big = np.kron(mask.numpy(), np.ones((s, s), bool))
        axes[r, 2].imshow(np.where(big, 0.5, grey), cmap="gray", vmin=0, vmax=1)
        for a, title in zip(axes[r], ("rendered ECG", f"tokens (vocab {data.vocab_size})",
                                      f"block mask ({int(mask.sum())} of {mask.numel()} patches)")):
            a.set_title(title, fontsize=9)
            a.set_xticks([]), a.set_yticks([])
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def plot_stmem_curve(history: Sequence[dict], path: str | os.PathLike | None = None):
    """ST-MEM pretraining: masked-patch MSE (train and held-out) per epoch; saved to ``path`` (PNG)."""
    fig = Figure(figsize=(5, 3.6))
    ax = fig.subplots()
    ep = [h["epoch"] for h in history]
    ax.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    if history and "val_loss" in history[0]:
        ax.plot(ep, [h["val_loss"] for h in history], "s-", label="held-out")
    ax.set(xlabel="epoch", ylabel="masked-patch MSE (normalised targets)", title="ST-MEM pretraining")
    ax.legend()
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
