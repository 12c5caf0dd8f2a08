"""Collecting fine-tuning runs, the paper's tables and figures, and the HTML report (04_metrics).

Inputs are ``03_finetune`` run folders (``<task>-<model>-f<fraction>-s<seed>/`` holding
``config.yaml``, ``predictions.parquet`` and, once finished, ``metrics.json``); outputs:

- Table 1 (ECGs, patients, positives and prevalence per task and split), Table 2 (AUROC) and
  Table 3 (AUPRC) in the paper's layout: rows task x split (internal, external) x model, columns
  the training fractions, cells ``0.86 (0.84 - 0.88)``; CSV, Markdown and styled HTML with the best
  model of each column (per task and split) in bold.
- ROC and precision-recall curves per task / split with one panel per fraction and the models
  overlaid (Supplementary Figures 2-5), and per task / split the performance-versus-fraction
  panels with CI bands (Figures 2-4 A/B) and the reference-minus-baseline differences with paired
  CIs (C/D).
- A self-contained HTML report (figures embedded as base64 PNG).

Figures are built on :class:`matplotlib.figure.Figure` directly (no pyplot state), so they render
headlessly and do not leak between calls.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure

from heartbeit_lib.pipeline import runs
from heartbeit_lib.analysis.metrics import SPLIT_LABELS

#: display names; unknown models are shown by their registry name
MODEL_LABELS = {
    "vit_b16": "ViT-B/16",
    "beit_b16": "BEiT-B/16 (IN-22k)",
    "efficientnet_b4": "EfficientNet-B4",
    "resnet152": "ResNet-152",
    "heartbeit": "HeartBEiT",
}
#: the paper's row order (baselines first, HeartBEiT last); other models follow alphabetically
MODEL_ORDER = ("vit_b16", "beit_b16", "efficientnet_b4", "resnet152", "heartbeit")
TASK_LABELS = {"lvef": "LVEF <= 40%", "hcm": "HCM", "stemi": "STEMI", "mi": "MI"}
SPLIT_ORDER = ("test", "external", "val")
PREDICTION_COLUMNS = ("record_id", "patient_hash", "split", "epoch", "label", "score")
RUN_FILES = ("config.yaml", "predictions.parquet", "metrics.json")


class RunFolderError(ValueError):
    """A 03_finetune run folder is malformed (the message names the file and the reason)."""


class TableError(ValueError):
    """Results cannot be laid out as a table (e.g. several fine-tuning seeds for one cell)."""


# ------------------------------------------------------------------------------ labels / order


def model_label(name: str) -> str:
    """``resnet152`` -> ``ResNet-152``; ``resnet152_scratch`` -> ``ResNet-152 (scratch)``."""
    if name in MODEL_LABELS:
        return MODEL_LABELS[name]
    base = name.removesuffix("_scratch")
    if base != name and base in MODEL_LABELS:
        # the architecture only: "(IN-22k)" names pretrained weights that a scratch model does not have
        return f"{MODEL_LABELS[base].split(' (')[0]} (scratch)"
    return name


def task_label(name: str) -> str:
    return TASK_LABELS.get(name, name)


def split_label(name: str) -> str:
    return SPLIT_LABELS.get(name, name)


def model_sort_key(name: str) -> tuple:
    base = name.removesuffix("_scratch")
    rank = MODEL_ORDER.index(base) if base in MODEL_ORDER else len(MODEL_ORDER)
    return (rank, name.endswith("_scratch"), name)


def order_models(names: Iterable[str]) -> list[str]:
    return sorted(set(names), key=model_sort_key)


def fraction_label(f: float) -> str:
    """0.01 -> ``0.01``, 1.0 -> ``1`` (column names of Tables 2-3)."""
    return f"{float(f):g}"


def model_colors(models: Sequence[str]) -> dict[str, Any]:
    """A fixed colour per model (position in the paper's order), the same in every figure."""
    from matplotlib import colormaps

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


# ------------------------------------------------------------------------------ collecting runs


def _find_run_dirs(sweep_dir: Path, max_depth: int = 3) -> list[Path]:
    found = []
    for cfg in sorted(sweep_dir.rglob("config.yaml")):
        rel = cfg.parent.relative_to(sweep_dir)
        if len(rel.parts) <= max_depth:
            found.append(cfg.parent)
    return found


def list_runs(sweep_dir: str | os.PathLike) -> pd.DataFrame:
    """Every 03_finetune run folder under ``sweep_dir`` (itself a run folder, a sweep folder such as
    ``outputs/03_finetune`` or a folder of sweeps, searched 3 levels deep).

    Returns
    -------
    DataFrame, one row per folder whose ``config.yaml`` names ``task, model, fraction, seed``:
    ``run_dir, task, model, fraction, seed, complete`` (all of config.yaml, predictions.parquet and
    metrics.json present), ``missing`` (files absent), and from ``metrics.json`` ``best_epoch,
    select_on``, ``reported_<split>_auroc/auprc`` and ``n_train, prevalence_train`` when present, and from
    ``config.yaml`` ``model_size`` (default ``base``) and ``image_size`` (default 224 px).

    Raises
    ------
    FileNotFoundError when ``sweep_dir`` does not exist; RunFolderError for unreadable YAML/JSON.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"finetune_root {sweep_dir}: no such folder (expected 03_finetune run folders)")
    rows = []
    for d in _find_run_dirs(sweep_dir):
        try:
            cfg = yaml.safe_load((d / "config.yaml").read_text()) or {}
        except yaml.YAMLError as e:
            raise RunFolderError(f"{d / 'config.yaml'}: not valid YAML ({e})") from e
        if not isinstance(cfg, dict) or not {"task", "model", "fraction", "seed"} <= set(cfg):
            continue  # some other notebook's run folder
        missing = [f for f in RUN_FILES if not (d / f).is_file()]
        row: dict[str, Any] = {"run_dir": str(d), "task": str(cfg["task"]), "model": str(cfg["model"]),
                               "fraction": float(cfg["fraction"]), "seed": int(cfg["seed"]),
                               "complete": not missing, "missing": ",".join(missing),
                               "model_size": str(cfg.get("model_size") or "base"),
                               "image_size": int(cfg.get("image_size") or 224)}
        if not missing:
            try:
                met = json.loads((d / "metrics.json").read_text())
            except json.JSONDecodeError as e:
                raise RunFolderError(f"{d / 'metrics.json'}: not valid JSON ({e})") from e
            if "best_epoch" not in met:
                raise RunFolderError(f"{d / 'metrics.json'}: no 'best_epoch' (contract of 03_finetune)")
            row["best_epoch"] = int(met["best_epoch"])
            row["select_on"] = str(met.get("select_on", ""))
            for s in SPLIT_ORDER:
                for m in ("auroc", "auprc"):
                    if f"{s}_{m}" in met and met[f"{s}_{m}"] is not None:
                        row[f"reported_{s}_{m}"] = float(met[f"{s}_{m}"])
            for k in ("n_train", "prevalence_train"):
                if k in met:
                    row[k] = met[k]
        rows.append(row)
    cols = ["run_dir", "task", "model", "fraction", "seed", "complete", "missing"]
    df = pd.DataFrame(rows, columns=cols + sorted({k for r in rows for k in r} - set(cols)))
    return df.sort_values(["task", "model", "fraction", "seed"]).reset_index(drop=True)


def collect_runs(sweep_dir: str | os.PathLike, splits: Sequence[str] | None = None) -> pd.DataFrame:
    """Predictions of every complete 03_finetune run under ``sweep_dir`` at its best epoch.

    Parameters
    ----------
    sweep_dir : folder of run folders (see :func:`list_runs`); incomplete runs are skipped (their
        ``metrics.json`` is written last, so a folder without it is still running or crashed)
    splits : keep only these splits (default: all of val, test, external)

    Returns
    -------
    DataFrame, one row per (run, split, record): ``task, model, fraction, seed, split, record_id,
    patient_hash, label, score, epoch, best_epoch, select_on, run_dir, reported_auroc,
    reported_auprc`` (the values ``metrics.json`` reports for that split, for cross-checking).

    Raises
    ------
    RunFolderError when a complete run's predictions lack a contract column, hold no rows for the
    best epoch, or repeat a record within a split.
    """
    table = list_runs(sweep_dir)
    frames = []
    for _, r in table[table["complete"]].iterrows():
        path = Path(r["run_dir"]) / "predictions.parquet"
        pred = pd.read_parquet(path)
        missing = [c for c in PREDICTION_COLUMNS if c not in pred.columns]
        if missing:
            raise RunFolderError(f"{path}: missing columns {missing} (contract: {list(PREDICTION_COLUMNS)})")
        pred = pred[pred["epoch"] == r["best_epoch"]]
        if splits is not None:
            pred = pred[pred["split"].isin(list(splits))]
        if pred.empty:
            raise RunFolderError(f"{path}: no predictions at best_epoch={r['best_epoch']}")
        dup = pred.duplicated(["split", "record_id"])
        if dup.any():
            raise RunFolderError(f"{path}: {int(dup.sum())} duplicated (split, record_id) rows at the best epoch")
        pred = pred.assign(task=r["task"], model=r["model"], fraction=r["fraction"], seed=r["seed"],
                           best_epoch=r["best_epoch"], select_on=r["select_on"], run_dir=r["run_dir"],
                           record_id=pred["record_id"].astype(str))
        pred["reported_auroc"] = pred["split"].map(lambda s: r.get(f"reported_{s}_auroc", np.nan))
        pred["reported_auprc"] = pred["split"].map(lambda s: r.get(f"reported_{s}_auprc", np.nan))
        frames.append(pred)
    cols = ["task", "model", "fraction", "seed", "split", "record_id", "patient_hash", "label", "score",
            "epoch", "best_epoch", "select_on", "run_dir", "reported_auroc", "reported_auprc"]
    if not frames:
        return pd.DataFrame(columns=cols)
    return pd.concat(frames, ignore_index=True)[cols]


def input_hashes(run_table: pd.DataFrame) -> dict[str, str]:
    """sha256 of the ``predictions.parquet`` and ``metrics.json`` of every complete run (provenance)."""
    out = {}
    for d in run_table.loc[run_table["complete"], "run_dir"]:
        for f in ("predictions.parquet", "metrics.json"):
            out[f"{Path(d).name}/{f}"] = runs.file_sha256(Path(d) / f)
    return out


# ------------------------------------------------------------------------------ tables


def table1(preds: pd.DataFrame, run_table: pd.DataFrame | None = None) -> pd.DataFrame:
    """Table 1: ECGs, patients, positives and prevalence per task and split.

    Evaluation splits come from the predictions (records counted once per task and split);
    training sets per fraction come from the runs' ``metrics.json`` (``n_train``,
    ``prevalence_train``) when reported (patients are not reported there: left empty).
    """
    rows = []
    for task in sorted(preds["task"].unique()):
        if run_table is not None and "n_train" in run_table.columns:
            tr = run_table[(run_table["task"] == task) & run_table["complete"] & run_table["n_train"].notna()]
            for frac, g in tr.groupby("fraction"):
                n = int(g["n_train"].iloc[0])
                prev = float(g["prevalence_train"].iloc[0]) if "prevalence_train" in g else math.nan
                rows.append({"task": task_label(task), "split": f"train ({fraction_label(frac)})", "ecgs": n,
                             "patients": pd.NA, "positives": int(round(prev * n)) if np.isfinite(prev) else pd.NA,
                             "prevalence_%": round(100 * prev, 1)})
        sub = preds[preds["task"] == task]
        for split in [s for s in ("val", "test", "external") if s in set(sub["split"])]:
            recs = sub[sub["split"] == split].drop_duplicates("record_id")
            n, pos = len(recs), int(recs["label"].sum())
            rows.append({"task": task_label(task), "split": split_label(split), "ecgs": n,
                         "patients": int(recs["patient_hash"].nunique()), "positives": pos,
                         "prevalence_%": round(100 * pos / n, 1)})
    return pd.DataFrame(rows, columns=["task", "split", "ecgs", "patients", "positives", "prevalence_%"])


def select_seed(results: pd.DataFrame, finetune_seed: int = -1) -> pd.DataFrame:
    """Results of one fine-tuning seed per cell: ``finetune_seed`` >= 0 picks it; -1 requires that
    every (task, split, model, fraction) has exactly one seed (else :class:`TableError`)."""
    if finetune_seed >= 0:
        out = results[results["seed"] == finetune_seed]
        if out.empty:
            raise TableError(f"finetune_seed={finetune_seed}: no runs with that seed "
                             f"(seeds found: {sorted(results['seed'].unique())})")
        return out
    counts = results.groupby(["task", "split", "model", "fraction"])["seed"].nunique()
    if (counts > 1).any():
        raise TableError(f"several fine-tuning seeds for {list(counts[counts > 1].index[:3])}...: "
                         f"set finetune_seed to one of {sorted(results['seed'].unique())}")
    return results


def format_cell(point: float, lo: float, hi: float, decimals: int = 2) -> str:
    """``0.86 (0.84 - 0.88)``; empty when the point estimate is missing."""
    if point is None or not np.isfinite(point):
        return ""
    f = f"{{:.{decimals}f}}"
    lo_s = f.format(lo) if np.isfinite(lo) else "nan"
    hi_s = f.format(hi) if np.isfinite(hi) else "nan"
    return f"{f.format(point)} ({lo_s} - {hi_s})"


@dataclasses.dataclass
class Table:
    """A formatted table: ``cells`` (str DataFrame, index task/split/model), ``bold`` (same shape,
    True = best model of its column within its task and split) and ``caption``."""

    cells: pd.DataFrame
    bold: pd.DataFrame
    caption: str

    def to_markdown(self) -> str:
        return table_to_markdown(self.cells, self.bold, self.caption)

    def to_html(self) -> str:
        return table_to_html(self.cells, self.bold, self.caption)


def metric_table(results: pd.DataFrame, metric: str = "auroc", decimals: int = 2,
                 splits: Sequence[str] = ("test", "external")) -> Table:
    """Table 2 (``metric="auroc"``) or Table 3 (``"auprc"``) in the paper's layout.

    Rows task x split (internal = ``test``, external) x model (paper order), columns the fractions
    (``0.01 0.1 0.25 0.5 1``), cells ``point (lo - hi)``; results must hold one seed per cell
    (:func:`select_seed`). Bold = highest point estimate in the column within the task and split
    (all tied models bold).
    """
    if metric not in ("auroc", "auprc"):
        raise TableError(f"metric: {metric!r} is not 'auroc' or 'auprc'")
    res = select_seed(results)
    res = res[res["split"].isin(list(splits))]
    fractions = sorted(res["fraction"].unique())
    cols = [fraction_label(f) for f in fractions]
    index, cell_rows, bold_rows = [], [], []
    for task in sorted(res["task"].unique()):
        for split in [s for s in splits if s in set(res.loc[res["task"] == task, "split"])]:
            sub = res[(res["task"] == task) & (res["split"] == split)]
            best = sub.groupby("fraction")[metric].max()
            for model in order_models(sub["model"]):
                cells, bolds = [], []
                for f in fractions:
                    r = sub[(sub["model"] == model) & (sub["fraction"] == f)]
                    if r.empty:
                        cells.append("")
                        bolds.append(False)
                        continue
                    r = r.iloc[0]
                    cells.append(format_cell(r[metric], r[f"{metric}_lo"], r[f"{metric}_hi"], decimals))
                    bolds.append(bool(np.isfinite(r[metric]) and r[metric] == best.loc[f]))
                index.append((task_label(task), split_label(split), model_label(model)))
                cell_rows.append(cells)
                bold_rows.append(bolds)
    idx = pd.MultiIndex.from_tuples(index, names=["task", "split", "model"])
    caption = {"auroc": "Table 2. AUROC (95% CI) by fraction of training data",
               "auprc": "Table 3. AUPRC (95% CI) by fraction of training data"}[metric]
    return Table(pd.DataFrame(cell_rows, index=idx, columns=cols),
                 pd.DataFrame(bold_rows, index=idx, columns=cols), caption)


def table_to_markdown(cells: pd.DataFrame, bold: pd.DataFrame | None = None, caption: str = "") -> str:
    """GitHub Markdown; bold cells wrapped in ``**``; index levels become the first columns."""
    flat = cells.reset_index()
    n_idx = flat.shape[1] - cells.shape[1]
    header = [str(c) for c in flat.columns]
    lines = ([f"**{caption}**", ""] if caption else []) + [
        "| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for i in range(len(flat)):
        vals = []
        for j, v in enumerate(flat.iloc[i]):
            s = "" if (v is None or (not isinstance(v, str) and pd.isna(v))) else str(v)
            if bold is not None and j >= n_idx and s and bool(bold.iloc[i, j - n_idx]):
                s = f"**{s}**"
            vals.append(s.replace("|", "\\|"))
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


_TABLE_CSS = [{"selector": "", "props": "border-collapse: collapse; font-family: sans-serif; font-size: 13px;"},
              {"selector": "th, td", "props": "border: 1px solid #ccc; padding: 3px 8px; text-align: left;"},
              {"selector": "caption", "props": "caption-side: top; font-weight: bold; padding: 4px;"}]


def table_to_html(cells: pd.DataFrame, bold: pd.DataFrame | None = None, caption: str = "") -> str:
    """Styled HTML (pandas Styler): bold cells in ``font-weight: bold``."""
    sty = cells.style
    if bold is not None:
        sty = sty.apply(lambda _: np.where(bold.to_numpy(), "font-weight: bold", ""), axis=None)
    sty = sty.set_table_styles(_TABLE_CSS)
    if caption:
        sty = sty.set_caption(caption)
    return sty.to_html()


def write_table(cells: pd.DataFrame, out_dir: str | os.PathLike, name: str, bold: pd.DataFrame | None = None,
                caption: str = "") -> dict[str, Path]:
    """Write ``<name>.csv`` (plain cells), ``<name>.md`` and ``<name>.html``; return the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out_dir / f"{name}.csv", "md": out_dir / f"{name}.md", "html": out_dir / f"{name}.html"}
    cells.to_csv(paths["csv"])
    paths["md"].write_text(table_to_markdown(cells, bold, caption))
    paths["html"].write_text(table_to_html(cells, bold, caption))
    return paths


def write_tables(results: pd.DataFrame, preds: pd.DataFrame, out_dir: str | os.PathLike,
                 run_table: pd.DataFrame | None = None, differences: pd.DataFrame | None = None,
                 finetune_seed: int = -1, decimals: int = 2) -> dict[str, dict]:
    """Tables 1-3 as CSV / Markdown / HTML plus the full-precision ``results.csv`` and
    ``differences.csv``. Returns ``{name: {"markdown": str, "html": str, "paths": {...}}}``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    res = select_seed(results, finetune_seed)
    out: dict[str, dict] = {}
    t1 = table1(preds, run_table).set_index(["task", "split"])
    cap1 = "Table 1. ECGs, patients, positives and prevalence per task and split"
    out["table1"] = {"paths": write_table(t1, out_dir, "table1", None, cap1),
                     "markdown": table_to_markdown(t1, None, cap1), "html": table_to_html(t1, None, cap1)}
    for name, metric in (("table2_auroc", "auroc"), ("table3_auprc", "auprc")):
        t = metric_table(res, metric, decimals)
        out[name] = {"paths": write_table(t.cells, out_dir, name, t.bold, t.caption),
                     "markdown": t.to_markdown(), "html": t.to_html()}
    results.to_csv(out_dir / "results.csv", index=False)
    if differences is not None:
        differences.to_csv(out_dir / "differences.csv", index=False)
    return out


# ------------------------------------------------------------------------------ figures


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
    from sklearn.metrics import precision_recall_curve, roc_curve

    from heartbeit_lib.analysis.metrics import auprc_score, auroc_score

    sub = preds[(preds["task"] == task) & (preds["split"] == split)]
    if seed is not None:
        sub = sub[sub["seed"] == seed]
    if sub.empty:
        raise TableError(f"plot_roc_pr: no predictions for task={task!r}, split={split!r}")
    fractions = sorted(sub["fraction"].unique())
    models = order_models(sub["model"])
    colors = model_colors(models)
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
            ax_roc.plot(fpr, tpr, color=colors[model], lw=1.2,
                        label=f"{model_label(model)} {auroc_score(y, s):.3f}")
            prec, rec, _ = precision_recall_curve(y, s, drop_intermediate=True)
            if auprc_method == "ap":
                ax_pr.step(rec, prec, where="pre", color=colors[model], lw=1.2,
                           label=f"{model_label(model)} {auprc_score(y, s, 'ap'):.3f}")
            else:
                ax_pr.plot(rec, prec, color=colors[model], lw=1.2,
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
            ax.plot(r["fraction"], r[metric], marker="o", ms=4, color=colors[model], label=model_label(model),
                    lw=2.0 if model == reference_model else 1.2)
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
            ax.plot(r["fraction"], r[f"{metric}_diff"], marker="o", ms=4, color=colors.get(base, "k"),
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
                  out_dir: str | os.PathLike, reference_model: str = "heartbeit", finetune_seed: int = -1,
                  auprc_method: str = "ap", splits: Sequence[str] = ("test", "external"),
                  dpi: int = 110) -> list[Path]:
    """For every task and split: ``roc_pr_<task>_<split>.png`` and ``fraction_<task>_<split>.png``."""
    res = select_seed(results, finetune_seed)
    diffs = differences
    if diffs is not None and len(diffs) and finetune_seed >= 0:
        diffs = diffs[diffs["seed"] == finetune_seed]
    paths = []
    for task in sorted(res["task"].unique()):
        for split in [s for s in splits if s in set(res.loc[res["task"] == task, "split"])]:
            seed = int(finetune_seed) if finetune_seed >= 0 else None
            fig = plot_roc_pr(preds, task, split, seed=seed, auprc_method=auprc_method)
            paths.append(save_figure(fig, Path(out_dir) / f"roc_pr_{task}_{split}.png", dpi))
            fig = plot_fraction_panels(res, diffs, task, split, reference_model)
            paths.append(save_figure(fig, Path(out_dir) / f"fraction_{task}_{split}.png", dpi))
    return paths


# ------------------------------------------------------------------------------ report


def _img_tag(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}" style="max-width:100%">'


def write_report(run_dir: str | os.PathLike, tables: Mapping[str, Mapping[str, Any]], figures: Sequence[Path],
                 config: Mapping[str, Any] | None = None, notes: Sequence[str] = (),
                 title: str = "HeartBEiT: fine-tuning results (04_metrics)") -> Path:
    """``<run_dir>/report.html``: notes, configuration, Tables 1-3 and every figure, self-contained
    (PNG figures embedded as base64, no external files or scripts)."""
    run_dir = Path(run_dir)
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'>", f"<title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1300px;margin:auto;padding:1em}"
             "h2{border-bottom:1px solid #ddd}table{margin-bottom:1em}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    if notes:
        parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    if config:
        parts.append("<h2>Configuration</h2><pre>" + html.escape(yaml.safe_dump(dict(config), sort_keys=False))
                     + "</pre>")
    parts.append("<h2>Tables</h2>")
    for name in ("table1", "table2_auroc", "table3_auprc"):
        if name in tables:
            parts.append(tables[name]["html"])
    for prefix, heading in (("fraction", "Performance versus training data"),
                            ("roc_pr", "ROC and precision-recall curves")):
        figs = [Path(p) for p in figures if Path(p).name.startswith(prefix + "_")]
        if figs:
            parts.append(f"<h2>{heading}</h2>")
            for p in figs:
                parts.append(f"<h3>{html.escape(p.stem)}</h3>" + _img_tag(p))
    parts.append("</body></html>")
    out = run_dir / "report.html"
    out.write_text("\n".join(parts))
    return out


def report_notes(results: pd.DataFrame, run_table: pd.DataFrame) -> list[str]:
    """Plain-language notes for the report: methods, resample counts, skipped runs, cross-checks."""
    notes = []
    if len(results):
        r0 = results.iloc[0]
        pr = ("average precision (scikit-learn average_precision_score)" if r0["auprc_method"] == "ap" else
              "trapezoidal area under the PR curve, auc(recall, precision), as the authors' code")
        notes.append(f"AUROC and AUPRC = {pr}; {100 * (1 - r0['alpha']):g}% {r0['method']} bootstrap intervals "
                     f"from {int(r0['n_boot'])} resamples of each evaluation set, the same resamples for every "
                     "model and fraction of a task (paired differences).")
        dropped = int((results["n_boot"] - results["n_boot_valid"]).max())
        notes.append(f"Resamples holding a single class are dropped: at most {dropped} per evaluation set "
                     f"(smallest number used: {int(results['n_boot_valid'].min())}).")
        if "select_on" in results.columns:
            sel = sorted(set(results["select_on"].dropna().astype(str)))
            notes.append(f"Each run is scored at its best epoch, chosen on: {', '.join(sel) or 'unknown'}"
                         + (" (choosing on the test split is optimistic)" if "test" in sel else "") + ".")
        if "reported_auroc" in results.columns and results["reported_auroc"].notna().any():
            gap = float((results["auroc"] - results["reported_auroc"]).abs().max())
            notes.append(f"Largest |recomputed - reported| AUROC over runs: {gap:.1e}.")
    if len(run_table) and "model_size" in run_table.columns:  # the runs reported: complete ones
        arch = (run_table[run_table["complete"]].groupby("model")[["model_size", "image_size"]]
                .agg(lambda v: "/".join(sorted({str(x) for x in v}))))
        if ((arch["model_size"] != "base") | (arch["image_size"] != "224")).any():
            notes.append("Architectures differ from the paper's base models at 224 px (labels name the model family): "
                         + "; ".join(f"{m}: size {r.model_size}, {r.image_size} px" for m, r in arch.iterrows())
                         + ".")
    bad = run_table[~run_table["complete"]] if len(run_table) else run_table
    if len(bad):
        notes.append(f"{len(bad)} incomplete run folder(s) skipped: "
                     + ", ".join(Path(d).name for d in bad["run_dir"][:10]) + ("..." if len(bad) > 10 else ""))
    return notes


def summary_metrics(results: pd.DataFrame, differences: pd.DataFrame, run_table: pd.DataFrame) -> dict:
    """The 04_metrics ``metrics.json``: run counts, settings, the smallest ``n_boot_valid``, the
    largest gap between recomputed and ``metrics.json``-reported AUROC, and every result and
    difference as records."""
    out: dict[str, Any] = {
        "n_runs": int(run_table["complete"].sum()) if len(run_table) else 0,
        "n_incomplete": int((~run_table["complete"]).sum()) if len(run_table) else 0,
        "tasks": sorted(results["task"].unique().tolist()) if len(results) else [],
        "models": order_models(results["model"]) if len(results) else [],
        "fractions": sorted(float(f) for f in results["fraction"].unique()) if len(results) else [],
    }
    if len(results):
        out["n_boot"] = int(results["n_boot"].iloc[0])
        out["min_n_boot_valid"] = int(results["n_boot_valid"].min())
        out["ci_method"] = str(results["method"].iloc[0])
        out["auprc_method"] = str(results["auprc_method"].iloc[0])
        if "reported_auroc" in results.columns:
            gap = (results["auroc"] - results["reported_auroc"]).abs()
            out["max_abs_diff_reported_auroc"] = float(gap.max()) if gap.notna().any() else None
    clean = results.replace({np.nan: None})
    out["results"] = clean.to_dict(orient="records")
    out["differences"] = differences.replace({np.nan: None}).to_dict(orient="records") if len(differences) else []
    return out
