"""The self-contained HTML report of 04_metrics (figures embedded as base64 PNG) and its notes; the saliency
browser of 06_saliency (ipywidgets)."""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import ipywidgets as widgets
import pandas as pd
import yaml

from heartbeit_lib.analysis.saliency.errors import SaliencyError
from heartbeit_lib.analysis.saliency.results import SaliencyResult
from heartbeit_lib.report.figures import overlay_figure


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
    if len(run_table) and "pretrain_overlap_ecgs" in run_table.columns:  # 03 ran with allow_pretrain_overlap
        leak = run_table[run_table["pretrain_overlap_ecgs"].fillna(0) > 0]
        if len(leak):
            notes.append(f"{len(leak)} run(s) fine-tuned from a pretraining run that trained on ECGs of their "
                         "cohort's validation/test/external patients (allow_pretrain_overlap): "
                         + "; ".join(f"{Path(r.run_dir).name}: {int(r.pretrain_overlap_ecgs)} ECGs of "
                                     f"{int(r.pretrain_overlap_patients)} patients" for r in leak.head(10).itertuples())
                         + ("..." if len(leak) > 10 else "") + ".")
    if len(run_table) and "pretrain_overlap" in run_table.columns:
        unv = run_table[run_table["pretrain_overlap"].astype(str) == "unverified"]
        if len(unv):
            notes.append(f"{len(unv)} run(s) fine-tuned from a pretraining run whose overlap with their evaluation "
                         "patients could not be checked (another salt or no 02 run folder).")
    bad = run_table[~run_table["complete"]] if len(run_table) else run_table
    if len(bad):
        notes.append(f"{len(bad)} incomplete run folder(s) skipped: "
                     + ", ".join(Path(d).name for d in bad["run_dir"][:10]) + ("..." if len(bad) > 10 else ""))
    return notes


# ------------------------------------------------------------------------------ saliency browser (06)


def overlay_png(result: SaliencyResult, task: str, record_id: str, method: str) -> bytes:
    """:func:`overlay_figure` as PNG bytes (for widgets)."""
    buf = io.BytesIO()
    overlay_figure(result, task, record_id, method).savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def browser(result: SaliencyResult):
    """An ipywidgets explorer: a slider over the explained records of a task, a method and a task
    selector, and the overlay figure (models side by side, fractions in rows). Built with the first
    record drawn, so it also renders in a headless run; interaction needs a live kernel."""
    tasks = list(dict.fromkeys(r.info["task"] for r in result.runs))
    methods = list(dict.fromkeys(m for r in result.runs for m in r.maps))
    if not tasks or not methods:
        return widgets.HTML("no saliency maps to browse")
    task_w = widgets.Dropdown(options=tasks, value=tasks[0], description="task")
    method_w = widgets.Dropdown(options=methods, value=methods[0], description="method")

    def records(task):
        return next(r for r in result.runs if r.info["task"] == task).records

    slider = widgets.IntSlider(value=0, min=0, max=len(records(tasks[0])) - 1, description="record",
                               continuous_update=False)
    caption = widgets.HTML()
    image = widgets.Image(format="png")

    def redraw(*_):
        rec = records(task_w.value)
        slider.max = len(rec) - 1
        k = min(slider.value, len(rec) - 1)
        rid = rec["record_id"].iloc[k]
        # record ids are file names: escaped, so "<img onerror=...>.xml" is text, not markup
        caption.value = (f"<b>{html.escape(str(task_w.value))}</b>: record {html.escape(str(rid))}, "
                         f"label {int(rec['label'].iloc[k])}")
        try:
            image.value = overlay_png(result, task_w.value, rid, method_w.value)
        except SaliencyError as e:  # e.g. rollout for a task with only CNN runs
            caption.value += f" - {html.escape(str(e))}"
            image.value = b""

    for w in (task_w, method_w, slider):
        w.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([task_w, method_w]), slider, caption, image])
