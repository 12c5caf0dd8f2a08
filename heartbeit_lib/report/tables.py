"""The paper's tables from bootstrap results (04_metrics): labels and model order, Table 1 (ECGs, patients,
positives and prevalence per task and split), Tables 2-3 (AUROC / AUPRC with CIs) as CSV, Markdown and HTML.

Layout of Tables 2-3: rows task x split (internal, external) x model, columns the training fractions, cells
``0.86 (0.84 - 0.88)``, the best model of each column (per task and split) in bold.
"""

from __future__ import annotations

import dataclasses
import html
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from heartbeit_lib.safety import write_csv

#: evaluation split -> its name in the tables
SPLIT_LABELS = {"test": "internal", "external": "external", "val": "validation"}
#: display names; unknown models are shown by their registry name
MODEL_LABELS = {
    "vit_b16": "ViT-B/16",
    "beit_b16": "BEiT-B/16 (IN-22k)",
    "efficientnet_b4": "EfficientNet-B4",
    "resnet152": "ResNet-152",
    "heartbeit": "HeartBEiT",
    "xresnet1d101": "xresnet1d101",
    "inception1d": "Inception1d",
    "stmem": "ST-MEM",
}
#: the paper's row order (baselines first, HeartBEiT last); other models follow alphabetically
MODEL_ORDER = ("vit_b16", "beit_b16", "efficientnet_b4", "resnet152", "heartbeit")
TASK_LABELS = {"lvef": "LVEF <= 40%", "hcm": "HCM", "stemi": "STEMI", "mi": "MI"}
SPLIT_ORDER = ("test", "external", "val")


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


def model_families(df: pd.DataFrame) -> dict[str, str]:
    """model -> ``image``/``signal`` from ``df``'s ``family`` column (``image`` for all without one)."""
    if "family" not in df.columns:
        return {m: "image" for m in df["model"].unique()}
    return dict(zip(df["model"], df["family"].fillna("image")))


def has_signal_models(df: pd.DataFrame) -> bool:
    """True when ``df`` holds a signal model: the tables then get a ``family`` level (image-only tables keep
    the paper's layout)."""
    return "family" in df.columns and bool((df["family"] == "signal").any())


def fraction_label(f: float) -> str:
    """0.01 -> ``0.01``, 1.0 -> ``1`` (column names of Tables 2-3)."""
    return f"{float(f):g}"


# ------------------------------------------------------------------------------ tables


def evaluation_table1(preds: pd.DataFrame, run_table: pd.DataFrame | None = None) -> pd.DataFrame:
    """Table 1: ECGs, patients, positives and prevalence per task and split.

    Evaluation splits come from the predictions (records counted once per task and split);
    training sets per fraction come from the runs' ``metrics.json`` (``n_train``,
    ``prevalence_train``) when reported (patients are not reported there: left empty). A multi-label task
    (``label:<class>`` columns) counts positive labels over its C classes, and its prevalence is their share of
    the ECG x class pairs.
    """
    rows = []
    for task in sorted(preds["task"].unique()):
        sub = preds[preds["task"] == task]
        label_cols = [c for c in sub.columns if c.startswith("label:") and sub[c].notna().all()]
        n_cls = max(1, len(label_cols))
        if run_table is not None and "n_train" in run_table.columns:
            tr = run_table[(run_table["task"] == task) & run_table["complete"] & run_table["n_train"].notna()]
            for frac, g in tr.groupby("fraction"):
                n = int(g["n_train"].iloc[0])
                prev = float(g["prevalence_train"].iloc[0]) if "prevalence_train" in g else math.nan
                rows.append({"task": task_label(task), "split": f"train ({fraction_label(frac)})", "ecgs": n,
                             "patients": pd.NA,
                             "positives": int(round(prev * n * n_cls)) if np.isfinite(prev) else pd.NA,
                             "prevalence_%": round(100 * prev, 1)})
                if "n_val" in g and pd.notna(g["n_val"].iloc[0]):  # the validation set the fraction selected on
                    nv = int(g["n_val"].iloc[0])
                    pv = float(g["prevalence_val"].iloc[0]) if "prevalence_val" in g else math.nan
                    rows.append({"task": task_label(task), "split": f"validation ({fraction_label(frac)})",
                                 "ecgs": nv, "patients": pd.NA,
                                 "positives": int(round(pv * nv * n_cls)) if np.isfinite(pv) else pd.NA,
                                 "prevalence_%": round(100 * pv, 1)})
        for split in [s for s in ("val", "test", "external") if s in set(sub["split"])]:
            recs = sub[sub["split"] == split].drop_duplicates("record_id")
            n = len(recs)
            pos = int(recs[label_cols].to_numpy().sum()) if label_cols else int(recs["label"].sum())
            rows.append({"task": task_label(task), "split": split_label(split), "ecgs": n,
                         "patients": int(recs["patient_hash"].nunique()), "positives": pos,
                         "prevalence_%": round(100 * pos / (n * n_cls), 1)})
    return pd.DataFrame(rows, columns=["task", "split", "ecgs", "patients", "positives", "prevalence_%"])


def select_seed(results: pd.DataFrame, finetune_seed: int | None = None) -> pd.DataFrame:
    """Results of one fine-tuning seed per cell: ``finetune_seed`` picks it; None requires that
    every (task, split, model, fraction) has exactly one seed (else :class:`TableError`)."""
    if finetune_seed is not None:
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
    (all tied models bold). With signal models among the results (:func:`has_signal_models`) the rows get a
    ``family`` level (image models first, then signal models), so the two families sit side by side.
    Seed-pooled results (``pipeline.metrics.pool_seeds``: no ``seed`` column) give
    the seed-mean with its interval over test resamples and seeds, and ``sd`` over seeds when there are several.
    """
    if metric not in ("auroc", "auprc"):
        raise TableError(f"metric: {metric!r} is not 'auroc' or 'auprc'")
    res = select_seed(results) if "seed" in results.columns else results
    res = res[res["split"].isin(list(splits))]
    fractions = sorted(res["fraction"].unique())
    cols = [fraction_label(f) for f in fractions]
    index, cell_rows, bold_rows = [], [], []
    with_family, family = has_signal_models(res), model_families(res)
    for task in sorted(res["task"].unique()):
        for split in [s for s in splits if s in set(res.loc[res["task"] == task, "split"])]:
            sub = res[(res["task"] == task) & (res["split"] == split)]
            best = sub.groupby("fraction")[metric].max()
            ordered = order_models(sub["model"])
            for model in sorted(ordered, key=lambda m: family[m] == "signal") if with_family else ordered:
                cells, bolds = [], []
                for f in fractions:
                    r = sub[(sub["model"] == model) & (sub["fraction"] == f)]
                    if r.empty:
                        cells.append("")
                        bolds.append(False)
                        continue
                    r = r.iloc[0]
                    cell = format_cell(r[metric], r[f"{metric}_lo"], r[f"{metric}_hi"], decimals)
                    sd = r.get(f"{metric}_seed_sd", float("nan"))
                    cells.append(f"{cell} sd {sd:.{decimals}f}" if cell and sd is not None and np.isfinite(sd) else cell)
                    bolds.append(bool(np.isfinite(r[metric]) and r[metric] == best.loc[f]))
                index.append((task_label(task), split_label(split), *((family[model],) if with_family else ()),
                              model_label(model)))
                cell_rows.append(cells)
                bold_rows.append(bolds)
    idx = pd.MultiIndex.from_tuples(index, names=["task", "split", *(["family"] if with_family else []), "model"])
    caption = {"auroc": "Table 2. AUROC (95% CI) by fraction of training data",
               "auprc": "Table 3. AUPRC (95% CI) by fraction of training data"}[metric]
    caption += epoch_rule_caption(res)
    return Table(pd.DataFrame(cell_rows, index=idx, columns=cols),
                 pd.DataFrame(bold_rows, index=idx, columns=cols), caption)


VALIDATION_RULE = ("chosen on its validation rows (Table 1, 'validation (<fraction>)': ECGs and positives; at least "
                   "50 ECGs per class), ties to the later epoch")
OTHER_RULES = {"last": "the last epoch, no selection (the PTB-XL benchmark's protocol)",
               "test": "the best test epoch (the paper's optimistic choice)"}


def epoch_rule_caption(results: pd.DataFrame) -> str:
    """The caption's sentence on how each run's epoch was chosen, from the runs' ``select_on`` (missing: ``val``):
    the validation rule, with the models that used another rule named after it."""
    rules = (results["select_on"].fillna("val").replace("", "val") if "select_on" in results.columns
             else pd.Series("val", index=results.index))
    used = sorted(set(rules)) or ["val"]
    if len(used) == 1:  # one rule for every run: no model list
        return ". Each run's epoch is " + (VALIDATION_RULE if used == ["val"] else OTHER_RULES.get(used[0], used[0]))
    others = [f"{', '.join(sorted(results.loc[rules == r, 'model'].astype(str).unique()))}: {OTHER_RULES.get(r, r)}"
              for r in used if r != "val"]
    if "val" not in used:
        return ". Each run's epoch is " + "; ".join(others)
    return ". Each run's epoch is " + VALIDATION_RULE + ", except " + "; ".join(others)


_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")  # inside a table cell only these start markup


def markdown_text(text: Any) -> str:
    """``text`` shown literally in Markdown (and in the HTML nbconvert or Jupyter make of it): HTML-escaped
    (``<img onerror=...>`` stays text) and Markdown punctuation backslash-escaped (no link, emphasis or table
    cell from a task name or record id); newlines become spaces."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(" ".join(str(text).split()), quote=False))


def table_to_markdown(cells: pd.DataFrame, bold: pd.DataFrame | None = None, caption: str = "") -> str:
    """GitHub Markdown; bold cells wrapped in ``**``; index levels become the first columns. Every cell, header
    and the caption are escaped (:func:`markdown_text`): task and model names, record ids come from inputs."""
    flat = cells.reset_index()
    n_idx = flat.shape[1] - cells.shape[1]
    header = [markdown_text(c) for c in flat.columns]
    caption = markdown_text(caption) if caption else ""
    lines = ([f"**{caption}**", ""] if caption else []) + [
        "| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for i in range(len(flat)):
        vals = []
        for j, v in enumerate(flat.iloc[i]):
            s = "" if (v is None or (not isinstance(v, str) and pd.isna(v))) else markdown_text(v)
            if bold is not None and j >= n_idx and s and bool(bold.iloc[i, j - n_idx]):
                s = f"**{s}**"
            vals.append(s)
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


_TABLE_CSS = [{"selector": "", "props": "border-collapse: collapse; font-family: sans-serif; font-size: 13px;"},
              {"selector": "th, td", "props": "border: 1px solid #ccc; padding: 3px 8px; text-align: left;"},
              {"selector": "caption", "props": "caption-side: top; font-weight: bold; padding: 4px;"}]


def table_to_html(cells: pd.DataFrame, bold: pd.DataFrame | None = None, caption: str = "") -> str:
    """Styled HTML (pandas Styler): bold cells in ``font-weight: bold``. Cells, index, header and caption
    are HTML-escaped (task and model names, record ids come from inputs)."""
    sty = cells.style.format(escape="html").format_index(escape="html", axis=0).format_index(escape="html", axis=1)
    if bold is not None:
        sty = sty.apply(lambda _: np.where(bold.to_numpy(), "font-weight: bold", ""), axis=None)
    sty = sty.set_table_styles(_TABLE_CSS)
    if caption:
        sty = sty.set_caption(html.escape(caption))
    return sty.to_html()


def write_table(cells: pd.DataFrame, out_dir: str | os.PathLike, name: str, bold: pd.DataFrame | None = None,
                caption: str = "") -> dict[str, Path]:
    """Write ``<name>.csv`` (plain cells), ``<name>.md`` and ``<name>.html``; return the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out_dir / f"{name}.csv", "md": out_dir / f"{name}.md", "html": out_dir / f"{name}.html"}
    write_csv(cells, paths["csv"])
    paths["md"].write_text(table_to_markdown(cells, bold, caption))
    paths["html"].write_text(table_to_html(cells, bold, caption))
    return paths


def write_tables(results: pd.DataFrame, preds: pd.DataFrame, out_dir: str | os.PathLike,
                 run_table: pd.DataFrame | None = None, differences: pd.DataFrame | None = None,
                 finetune_seed: int | None = None, decimals: int = 2,
                 seed_results: pd.DataFrame | None = None,
                 seed_differences: pd.DataFrame | None = None) -> dict[str, dict]:
    """Tables 1-3 as CSV / Markdown / HTML plus the full-precision ``results.csv`` and
    ``differences.csv``. Returns ``{name: {"markdown": str, "html": str, "paths": {...}}}``.

    ``seed_results`` (``pipeline.metrics.pool_seeds``) with ``finetune_seed`` None: Tables 2-3 show the seed-mean
    cells (several seeds per cell allowed), ``seed_results.csv`` is written, and when runs carry a learning
    rate, ``table_lr`` lists the rate(s) of every cell (each run's own rate is in ``results.csv``).
    ``seed_differences`` (``pool_seeds``): Table 4, the paired differences with Holm-adjusted p-values
    (:func:`differences_table`)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pooled = seed_results is not None and finetune_seed is None and len(seed_results)
    res = seed_results if pooled else select_seed(results, finetune_seed)
    out: dict[str, dict] = {}
    t1 = evaluation_table1(preds, run_table).set_index(["task", "split"])
    cap1 = "Table 1. ECGs, patients, positives and prevalence per task and split"
    out["table1"] = {"paths": write_table(t1, out_dir, "table1", None, cap1),
                     "markdown": table_to_markdown(t1, None, cap1), "html": table_to_html(t1, None, cap1)}
    for name, metric in (("table2_auroc", "auroc"), ("table3_auprc", "auprc")):
        t = metric_table(res, metric, decimals)
        out[name] = {"paths": write_table(t.cells, out_dir, name, t.bold, t.caption),
                     "markdown": t.to_markdown(), "html": t.to_html()}
    if pooled:
        write_csv(seed_results, out_dir / "seed_results.csv", index=False)
        if seed_results["lr"].notna().any():
            lr = seed_results.assign(task=seed_results["task"].map(task_label), split=seed_results["split"].map(
                split_label), model=seed_results["model"].map(model_label), fraction=seed_results["fraction"].map(
                fraction_label)).pivot_table(index=["task", "split", "model"], columns="fraction", values="lr",
                                             aggfunc="first")
            cap = "Learning rate (peak) of each cell's runs (several: the seeds' validation choices differ)"
            out["table_lr"] = {"paths": write_table(lr, out_dir, "table_lr", None, cap),
                               "markdown": table_to_markdown(lr, None, cap), "html": table_to_html(lr, None, cap)}
    if seed_differences is not None and len(seed_differences):
        t4, cap4 = differences_table(seed_differences, decimals)
        out["table4_differences"] = {"paths": write_table(t4, out_dir, "table4_differences", None, cap4),
                                     "markdown": table_to_markdown(t4, None, cap4), "html": table_to_html(t4, None, cap4)}
    write_csv(results, out_dir / "results.csv", index=False)
    if differences is not None:
        write_csv(differences, out_dir / "differences.csv", index=False)
    return out


def differences_table(seed_differences: pd.DataFrame, decimals: int = 2) -> tuple[pd.DataFrame, str]:
    """Table 4: reference - baseline AUROC per task, split, baseline and fraction (``pipeline.metrics.pool_seeds``):
    difference of seed means (95 % CI), Holm-adjusted p, and the seeds of each model. Returns (cells, caption)."""
    d = seed_differences
    rows, index = [], []
    for _, r in d.sort_values(["task", "split", "baseline", "fraction"]).iterrows():
        index.append((task_label(r["task"]), split_label(r["split"]), model_label(r["baseline"]),
                      fraction_label(r["fraction"])))
        cells = {"AUROC difference (95% CI)": format_cell(r["auroc_diff"], r["auroc_diff_lo"], r["auroc_diff_hi"],
                                                          decimals)}
        if "auroc_diff_lo_adj" in r and pd.notna(r["auroc_diff_lo_adj"]):
            cells["simultaneous CI (Bonferroni)"] = (f"{r['auroc_diff_lo_adj']:.{decimals}f} - "
                                                     f"{r['auroc_diff_hi_adj']:.{decimals}f}")
        rows.append({**cells, "p (Holm)": f"{r['auroc_p_holm']:.3g}", "seeds (reference / baseline)":
                     f"{r['seeds_reference']} / {r['seeds_baseline']}"})
    idx = pd.MultiIndex.from_tuples(index, names=["task", "split", "baseline", "fraction"])
    ref = ", ".join(sorted(set(d["reference"].map(model_label))))
    caption = (f"Table 4. {ref} minus each baseline, AUROC: difference of seed means, 95% percentile interval over "
               "test resamples (paired) with each model's seeds resampled independently; bootstrap p-values "
               "Holm-adjusted over the differences of each task and split (family size "
               f"{'/'.join(str(int(v)) for v in sorted(set(d['holm_family_size'])))}); simultaneous intervals over "
               "the same family at level 1 - 0.05 / family size (Bonferroni)")
    return pd.DataFrame(rows, index=idx), caption
