"""Notebook 06 (saliency, Figures 5-8): its :class:`SaliencyConfig`, finding and rebuilding the 03_finetune runs,
explaining the same records with every run (:func:`compute`), the CSV tables, ``metrics.json`` (:func:`run_metrics`)
and :func:`run`, the notebook's steps in one call.

The maps, attribution and faithfulness live in :mod:`heartbeit_lib.analysis.saliency`, the overlays and charts in
:mod:`heartbeit_lib.report.figures`, the browser in :mod:`heartbeit_lib.report.html`.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import typing
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from heartbeit_lib.cohorts.store import LABEL_PREFIX
from heartbeit_lib import cohorts
from heartbeit_lib import render
from heartbeit_lib.analysis.saliency import (METHODS, SaliencyError, area_shares, attribute_maps,
                                             attribute_signal_maps, attribution_frame, attribution_summary,
                                             deletion_insertion, detect_r_peaks, faithfulness_summary, is_transformer,
                                             predict_proba, road_scores, saliency_maps, signal_saliency, to_image,
                                             to_store_rate)
from heartbeit_lib.analysis.saliency.results import RunMaps, SaliencyResult
from heartbeit_lib.classify import checkpoint
from heartbeit_lib.classify.checkpoint import load_finetune_run
from heartbeit_lib.classify.signal_data import STORE_FS, prepare_signals
from heartbeit_lib.models.signal_models import Inception1d, XResNet1d
from heartbeit_lib.pipeline import runs
from heartbeit_lib.pipeline.metrics import list_runs, run_file_hashes
from heartbeit_lib.report import figures
from heartbeit_lib.report.tables import order_models
from heartbeit_lib.utils import resolve_device


class FinetuneRunError(SaliencyError):
    """A 03_finetune run folder cannot be found or rebuilt (names the folder/file and the reason)."""


@dataclasses.dataclass(frozen=True)
class SaliencyConfig(runs.TypedConfig):
    """Parameters of ``notebooks/06_saliency.ipynb`` (its parameters cell is these field lines)."""

    finetune_runs: tuple[str, ...] = ("outputs/03_finetune",)  # 03_finetune run folders, sweep folders or glob patterns
    cohort_run: str | None = None  # cohort store (01_preprocess run folder); None: each run's own cohort_run
    method: tuple[str, ...] = ("fullgrad",)  # of fullgrad (paper), gradcam, rollout; the first drives the figures
    n_examples: int = 32  # ECGs per task drawn from split (maps and attribution)
    n_figures: int = 4  # of those, ECGs drawn as overlay figures
    positives_only: bool = True  # draw only label-1 ECGs
    split: str = "test"  # split to draw from: train, val, test, external
    ylim_mv: tuple[float, ...] | None = None  # amplitude range (lo, hi) mV; None: each run's own (runs older than the +-4 mV default: +-2 mV); a value must equal it
    target_class: int = 1  # class whose logit is explained (1: the positive class); multi-label runs use class_name
    class_name: str | None = None  # multi-label runs (PTB-XL benchmark tasks): the class explained, e.g. MI (examples: its positives)
    faithfulness: bool = True  # deletion/insertion curves for every method and random maps
    n_faithfulness: int = 16  # ECGs per run for the faithfulness checks
    deletion_steps: int = 20  # points on the deletion/insertion curves
    road: bool = False  # also ROAD (pytorch-grad-cam, noisy linear imputation; slow at 224 px)
    road_percentiles: tuple[int, ...] = (10, 30, 50, 70, 90)  # ROAD thresholds, percent of pixels
    batch_size: int = 16  # images per saliency pass
    device: str | None = None  # cpu, cuda, cuda:N; None: cuda if available
    seed: int = 0  # draws the ECGs and the random baseline maps
    out_root: str = "outputs"  # root of the run folders
    run_id: str | None = None  # run folder name (None: a timestamp)

    choices: typing.ClassVar[dict[str, tuple]] = {"split": ("train", "val", "test", "external")}

    def validate(self) -> None:
        if not [e for e in self.finetune_runs if e.strip()]:
            raise runs.ConfigError("parameter 'finetune_runs': empty; pass 03_finetune run folders or a sweep folder")
        bad = [m for m in self.method if m not in METHODS]
        if bad or not self.method:
            raise runs.ConfigError(f"parameter 'method': {bad or list(self.method)} not in {list(METHODS)}")
        for name in ("n_examples", "batch_size", "deletion_steps"):
            if getattr(self, name) < 1:
                raise runs.ConfigError(f"parameter {name!r}: {getattr(self, name)} must be >= 1")
        for name in ("n_figures", "n_faithfulness"):
            if getattr(self, name) < 0:
                raise runs.ConfigError(f"parameter {name!r}: {getattr(self, name)} must be >= 0")
        if not self.road_percentiles or not all(0 < p < 100 for p in self.road_percentiles):
            raise runs.ConfigError(f"parameter 'road_percentiles': {list(self.road_percentiles)} must be integers "
                                   "in 1..99")


# ======================================================================== fine-tuning runs


def find_finetune_runs(finetune_runs: str | Sequence[str]) -> pd.DataFrame:
    """03_finetune runs named by run folders, sweep folders (searched 3 levels deep, as :func:`list_runs`)
    or glob patterns (comma-separated in one string, or a list).

    Returns
    -------
    DataFrame, one row per complete run with ``model_best.pt``: ``run_dir, task, model, fraction,
    seed, best_epoch, reported_test_auroc`` (when present), ``model_size, image_size`` (as
    :func:`list_runs`: defaults ``base``, 224), ``layout, cohort_run``; sorted by task, fraction, model
    (the paper's model order), seed.

    Raises
    ------
    FinetuneRunError : an entry matches nothing, or no complete run with weights is found.
    """
    entries = [e.strip() for e in finetune_runs.split(",")] if isinstance(finetune_runs, str) else list(finetune_runs)
    entries = [e for e in entries if e]
    frames, seen = [], set()
    for e in entries:
        dirs = sorted(p for p in glob.glob(e) if Path(p).is_dir()) if any(ch in e for ch in "*?[") else [e]
        if not dirs or not all(Path(d).is_dir() for d in dirs):
            raise FinetuneRunError(f"parameter 'finetune_runs': {e!r} matches no folder (expected 03_finetune run "
                                   "folders such as outputs/03_finetune/<task>-<model>-f<fraction>-s<seed>, a sweep "
                                   "folder or a glob)")
        for d in dirs:
            t = list_runs(d)
            frames.append(t[~t["run_dir"].isin(seen)])
            seen.update(t["run_dir"])
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if table.empty:
        raise FinetuneRunError(f"parameter 'finetune_runs': no 03_finetune run folder (config.yaml with task, model, "
                               f"fraction, seed) under {entries}")
    has_weights = table["run_dir"].map(lambda d: (Path(d) / "model_best.pt").is_file())
    ok = table[table["complete"] & has_weights].copy()
    if ok.empty:
        raise FinetuneRunError(f"parameter 'finetune_runs': none of the {len(table)} run folder(s) under {entries} is "
                               "finished with model_best.pt (run notebooks/03_finetune.ipynb to completion)")
    extra = []  # list_runs already gives model_size and image_size; adding them again duplicated the columns
    for d in ok["run_dir"]:
        cfg = runs.read_run_config(d)
        extra.append({"layout": str(cfg.get("layout") or "stack8"), "cohort_run": str(cfg.get("cohort_run") or "")})
    ok = pd.concat([ok.reset_index(drop=True), pd.DataFrame(extra)], axis=1)
    order = {m: i for i, m in enumerate(order_models(ok["model"]))}
    ok["_m"] = ok["model"].map(order)
    ok = ok.sort_values(["task", "fraction", "_m", "seed"]).drop(columns="_m").reset_index(drop=True)
    keep = ["run_dir", "task", "model", "family", "fraction", "seed", "best_epoch", "reported_test_auroc",
            "model_size", "image_size", "layout", "cohort_run"]
    return ok[[c for c in keep if c in ok.columns]]


def run_ylim(run_cfg: dict, asked, run_dir) -> tuple[float, float]:
    """The amplitude range (lo, hi) mV a fine-tuning run saw (its ``config.yaml``; runs before issue 18 lack
    it and drew at +-2 mV); ``asked`` (parameter ``ylim_mv``) must be None or equal it, else ConfigError."""
    got = render.saved_ylim_mv(run_cfg.get("ylim_mv"))
    if asked is not None and tuple(float(v) for v in asked) != got:
        raise runs.ConfigError(f"parameter 'ylim_mv' = {tuple(asked)} mV, but run {run_dir} was trained on images "
                               f"drawn at ylim_mv = {got} mV; leave ylim_mv None to use each run's own")
    return got


def load_finetune_model(run_dir: str | os.PathLike, device: str | torch.device = "cpu"
                        ) -> tuple[nn.Module, tuple[tuple[float, ...], tuple[float, ...]], dict]:
    """A 03_finetune run's model at its chosen epoch, its normalisation and its config
    (:func:`heartbeit_lib.classify.checkpoint.load_finetune_run`, errors re-raised as :class:`FinetuneRunError`)."""
    try:
        model, info = load_finetune_run(run_dir, device)
    except checkpoint.FinetuneRunError as e:
        raise FinetuneRunError(str(e)) from e
    return model, info["normalize"], info["config"]


def select_examples(store, split: str, n: int, positives_only: bool, seed: int, label_column: str = "label"
                    ) -> np.ndarray:
    """Up to ``n`` store rows of ``split`` (labelled; label 1 only when ``positives_only``), drawn
    with ``np.random.default_rng(seed)`` and returned sorted; the same rows for every model. ``label_column``: a
    multi-label store's ``label:<class>`` (the positives of the explained class)."""
    rows = np.asarray(store.indices(split), np.int64)
    lab = store.manifest[label_column].to_numpy()[rows]
    rows = rows[(lab == 1) if positives_only else (lab >= 0)]
    if rows.size == 0:
        raise SaliencyError(f"split {split!r} of store {getattr(store, 'root', '')} holds no "
                            f"{'positive' if positives_only else 'labelled'} ECG")
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(rows)[:n])


# ======================================================================== maps, attribution, faithfulness


def _faithfulness_rows(info, method, rec, model, images, maps, norm, cfg: SaliencyConfig,
                       sigmoid: bool = False) -> list[dict]:
    k = min(cfg.n_faithfulness, len(rec))
    if k == 0:
        return []
    res = deletion_insertion(model, images[:k], maps[:k], cfg.target_class, steps=cfg.deletion_steps,
                             normalization=norm, batch_size=max(cfg.batch_size, cfg.deletion_steps + 1),
                             sigmoid=sigmoid)
    if cfg.road:
        res.update(road_scores(model, images[:k], maps[:k], cfg.target_class, percentiles=cfg.road_percentiles,
                               normalization=norm, seed=cfg.seed))
    rows = []
    for i in range(k):
        r = {"run": Path(info["run_dir"]).name, "task": info["task"], "model": info["model"],
             "fraction": info["fraction"], "method": method, "record_id": rec["record_id"].iloc[i],
             "label": int(rec["label"].iloc[i]), "prob": float(res["deletion"][i, 0]),
             "prob_blank": float(res["deletion"][i, -1]),
             "deletion_auc": float(res["deletion_auc"][i]), "insertion_auc": float(res["insertion_auc"][i])}
        for key in ("road_morf", "road_lerf", "road_combined"):
            if key in res:
                r[key] = float(res[key][i])
        rows.append(r)
    return rows


SIGNAL_OVERLAY_SIZE = 224  # px of the stack8 images a signal model's lead x time maps are drawn on (06 overlays)


def _signal_run(info: dict, store, rows: np.ndarray, model: nn.Module, rcfg: dict, cfg: SaliencyConfig
                ) -> tuple[RunMaps, list[pd.DataFrame], list[str]]:
    """:func:`compute` for one signal model: integrated gradients (and Grad-CAM for the CNNs when ``gradcam`` is
    asked) as lead x time maps on the model's input, repeated onto the store's 500 Hz samples, attributed to
    the same lead x segment shares as the image maps (area share: the share of samples), and drawn into a
    stack8 image for the overlays. Image-only methods and the image-space faithfulness checks are skipped."""
    name = Path(info["run_dir"]).name
    sig = store.signals(rows)
    x = torch.from_numpy(prepare_signals(sig, STORE_FS, float(rcfg.get("signal_rate") or 100)))
    device = next(model.parameters()).device
    with torch.no_grad():
        prob = torch.cat([torch.softmax(model(x[i:i + cfg.batch_size].to(device)).float(), 1)[:, cfg.target_class]
                          for i in range(0, len(x), cfg.batch_size)]).cpu().numpy()
    man = store.manifest.iloc[rows]
    rec = pd.DataFrame({"row": rows, "record_id": man["record_id"].astype(str).to_numpy(),
                        "label": man["label"].to_numpy().astype(int), "prob": prob})
    cnn = isinstance(model, (XResNet1d, Inception1d))
    methods = ["ig"] + (["gradcam"] if "gradcam" in cfg.method and cnn else [])
    notes = [f"{name}: {m} (image models only; signal models: integrated gradients"
             f"{', gradcam' if cnn else ''})" for m in cfg.method if m not in methods]
    if cfg.faithfulness:
        notes.append(f"{name}: faithfulness (image-space deletion/insertion; not defined for signal models)")
    peaks = detect_r_peaks(sig)
    area, leads = attribute_signal_maps(np.ones(sig.shape), sig, r_peaks=peaks)
    info = dict(info, image_size=SIGNAL_OVERLAY_SIZE, layout="stack8")
    frames, maps = [], {}
    for method in methods:
        m = to_store_rate(signal_saliency(model, x, method, cfg.target_class, cfg.batch_size), sig.shape[-1])
        shares, _ = attribute_signal_maps(m, sig, r_peaks=peaks)
        frames.append(attribution_frame(info, method, rec, shares, area, leads))
        maps[method] = to_image(m, SIGNAL_OVERLAY_SIZE).astype(np.float16)
    grey = render.render_ecg(sig, SIGNAL_OVERLAY_SIZE, "stack8")
    return RunMaps(info, rec, grey, maps), frames, notes


def explained_class(store, cfg: SaliencyConfig) -> tuple[SaliencyConfig, bool, str]:
    """(config with the explained class's output index as ``target_class``, whether probabilities are sigmoids,
    the manifest column its examples are drawn by) for ``store``: a multi-label store explains ``class_name``
    (required), a binary store ``target_class`` of the softmax.

    Raises
    ------
    SaliencyError : a multi-label store without (or with an unknown) ``class_name``; ``class_name`` on a binary
        store; ROAD on a multi-label model (its pytorch-grad-cam target is a softmax).
    """
    classes = list(getattr(store, "classes", []) or [])
    if not classes:
        if cfg.class_name:
            raise SaliencyError(f"parameter 'class_name': {cfg.class_name!r} but store {store.root} holds the binary "
                                f"task {store.task!r}; leave it empty (target_class chooses the output)")
        return cfg, False, "label"
    if cfg.class_name not in classes:
        raise SaliencyError(f"parameter 'class_name': store {store.root} holds the multi-label task {store.task!r}; "
                            f"name the class to explain, one of {classes} (got {cfg.class_name!r})")
    if cfg.road:
        raise SaliencyError("parameter 'road': ROAD scores a softmax; it is not defined for a multi-label model")
    return dataclasses.replace(cfg, target_class=classes.index(cfg.class_name)), True, LABEL_PREFIX + cfg.class_name


def compute(run_table: pd.DataFrame, cfg: SaliencyConfig, progress: bool = False) -> SaliencyResult:
    """Maps, lead/segment attribution and faithfulness for every run of ``run_table``.

    Records are drawn once per task (and cohort store) with :func:`select_examples`, so every model
    and fraction of a task is shown on the same ECGs. Each run renders them at its own image size and
    layout and is explained with every method of ``cfg.method`` that applies (rollout: transformers); a signal
    model reads their signals and is explained by :func:`_signal_run`.
    """
    device = resolve_device(cfg.device)
    stores: dict[str, Any] = {}
    rows_by_store: dict[tuple[str, str], np.ndarray] = {}
    out_runs, attrib, faith, skipped = [], [], [], []
    it = list(run_table.to_dict("records"))
    if progress:
        it = tqdm(it, desc="saliency", leave=False)
    for info in it:
        cohort = cfg.cohort_run or info.get("cohort_run") or ""
        if not cohort or not Path(cohort).is_dir():
            raise FinetuneRunError(f"run {info['run_dir']}: cohort store {cohort!r} not found; pass -p cohort_run "
                                   "<01_preprocess run folder>")
        if cohort not in stores:
            stores[cohort] = cohorts.CohortStore(cohort)
        store = stores[cohort]
        if getattr(store, "task", info["task"]) != info["task"]:
            raise FinetuneRunError(f"run {info['run_dir']} was trained on task {info['task']!r}, but the cohort store "
                                   f"{cohort} holds task {store.task!r}; leave cohort_run empty or pass that task's store")
        run_cfg, sigmoid, label_column = explained_class(store, cfg)
        key = (cohort, info["task"])
        if key not in rows_by_store:
            rows_by_store[key] = select_examples(store, cfg.split, cfg.n_examples, cfg.positives_only, cfg.seed,
                                                 label_column)
        rows = rows_by_store[key]
        model, norm, rcfg = load_finetune_model(info["run_dir"], device)
        if info.get("family") == "signal":
            if not store.paper_layout:
                raise SaliencyError(f"run {info['run_dir']}: 06 draws signal-model maps on the paper's 8-lead, 5-s, "
                                    f"500 Hz store; {store.root} holds {store.shape} at {store.fs:g} Hz")
            if sigmoid:
                raise SaliencyError(f"run {info['run_dir']}: 06 explains multi-label tasks for image models only")
            run_maps, frames, notes = _signal_run(dict(info, cohort_run=cohort), store, rows, model, rcfg, cfg)
            out_runs.append(run_maps)
            attrib.extend(frames)
            skipped.extend(notes)
            continue
        size = int(rcfg.get("image_size") or 224)
        layout = str(rcfg.get("layout") or "stack8")
        ylim = run_ylim(rcfg, cfg.ylim_mv, info["run_dir"])
        info = dict(info, image_size=size, layout=layout, cohort_run=cohort, ylim_mv=list(ylim))
        sig = store.signals(rows)
        grey = render.render_ecg(sig, size, layout, ylim_mv=ylim)                 # (n, H, W) uint8
        images = torch.from_numpy(grey).float().div(255.0)[:, None].expand(-1, 3, -1, -1).contiguous()
        prob = predict_proba(model, images, run_cfg.target_class, norm, cfg.batch_size, sigmoid)
        man = store.manifest.iloc[rows]
        rec = pd.DataFrame({"row": rows, "record_id": man["record_id"].astype(str).to_numpy(),
                            "label": man[label_column].to_numpy().astype(int), "prob": prob})
        peaks = detect_r_peaks(sig)
        area, leads = area_shares(sig, size, layout, r_peaks=peaks)
        maps: dict[str, np.ndarray] = {}
        for method in cfg.method:
            if method == "rollout" and not is_transformer(model):
                skipped.append(f"{Path(info['run_dir']).name}: rollout (not a transformer)")
                continue
            maps[method] = saliency_maps(model, images, method, run_cfg.target_class, normalization=norm,
                                         batch_size=cfg.batch_size)
            shares, _ = attribute_maps(maps[method], sig, layout, r_peaks=peaks)
            attrib.append(attribution_frame(info, method, rec, shares, area, leads))
        if cfg.faithfulness:
            rng = np.random.default_rng(cfg.seed)
            for method in list(maps) + ["random"]:
                m = maps[method] if method in maps else saliency_maps(model, images, "random", rng=rng)
                faith.extend(_faithfulness_rows(info, method, rec, model, images, m, norm, run_cfg, sigmoid))
        out_runs.append(RunMaps(info, rec, grey, {k: v.astype(np.float16) for k, v in maps.items()}))
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    attribution = pd.concat(attrib, ignore_index=True) if attrib else pd.DataFrame(
        columns=["run", "task", "model", "fraction", "method", "record_id", "label", "lead", "segment", "share",
                 "area_share"])
    return SaliencyResult(out_runs, attribution, pd.DataFrame(faith), skipped)


def save_tables(result: SaliencyResult, run_dir: str | os.PathLike) -> dict[str, Path]:
    """CSV files in ``run_dir``: ``attribution_long.csv`` (every record), ``attribution_lead.csv``,
    ``attribution_segment.csv``, ``attribution_lead_segment.csv`` (means over records),
    ``faithfulness_records.csv``, ``faithfulness.csv`` (means per run and method) and ``records.csv``
    (the explained ECGs with each run's predicted probability)."""
    run_dir = Path(run_dir)
    paths = {}
    tables = {"attribution_long": result.attribution,
              "attribution_lead": attribution_summary(result.attribution, "lead"),
              "attribution_segment": attribution_summary(result.attribution, "segment"),
              "attribution_lead_segment": attribution_summary(result.attribution, "lead_segment"),
              "faithfulness_records": result.faithfulness,
              "faithfulness": faithfulness_summary(result.faithfulness),
              "records": pd.concat([r.records.assign(run=Path(r.info["run_dir"]).name, model=r.info["model"],
                                                     fraction=r.info["fraction"], task=r.info["task"])
                                    for r in result.runs], ignore_index=True)}
    for name, df in tables.items():
        paths[name] = run_dir / f"{name}.csv"
        df.to_csv(paths[name], index=False)
    return paths


# ======================================================================== metrics and provenance


def run_metrics(result: SaliencyResult, cfg: SaliencyConfig) -> dict:
    """``metrics.json``: counts, per run x method the mean share per segment and the top lead, and the
    mean deletion/insertion AUC per run x method (random baseline included)."""
    def num(v):
        return None if v is None or not np.isfinite(v) else round(float(v), 4)

    out: dict[str, Any] = {"n_runs": len(result.runs), "methods": list(cfg.method), "split": cfg.split,
                           "positives_only": cfg.positives_only,
                           "n_records": {r.info["task"]: int(len(r.records)) for r in result.runs},
                           "n_zero_maps": {f"{Path(r.info['run_dir']).name}/{m}":
                                           int((v.reshape(len(v), -1).max(1) == 0).sum())
                                           for r in result.runs for m, v in r.maps.items()},
                           "skipped": result.skipped}
    if not result.attribution.empty:
        seg = attribution_summary(result.attribution, "segment")
        lead = attribution_summary(result.attribution, "lead")
        out["segment_share"] = {f"{r}/{m}": {s: num(v) for s, v in zip(g["segment"], g["share"])}
                                for (r, m), g in seg.groupby(["run", "method"], sort=False)}
        out["segment_enrichment"] = {f"{r}/{m}": {s: num(v) for s, v in zip(g["segment"], g["enrichment"])}
                                     for (r, m), g in seg.groupby(["run", "method"], sort=False)}
        out["top_lead"] = {f"{r}/{m}": (str(g.loc[g["share"].idxmax(), "lead"]) if g["share"].notna().any() else None)
                           for (r, m), g in lead.groupby(["run", "method"], sort=False)}
    if not result.faithfulness.empty:
        f = faithfulness_summary(result.faithfulness)
        for col in ("deletion_auc", "insertion_auc", "road_combined"):
            if col in f:
                out[col] = {f"{r}/{m}": num(v) for r, m, v in zip(f["run"], f["method"], f[col])}
    return out


def finetune_hashes(run_table: pd.DataFrame) -> dict[str, str]:
    """sha256 of each run's ``model_best.pt`` and ``config.yaml`` (provenance for ``run.json``)."""
    return run_file_hashes(run_table["run_dir"], ("model_best.pt", "config.yaml"))


def run(cfg: SaliencyConfig, run_dir: str | os.PathLike) -> dict:
    """The notebook's steps in order (find the runs, explain, tables, overlays, attribution and faithfulness
    charts, metrics), finishing the run folder ``run_dir`` (made by ``runs.start_run``); returns ``metrics.json``'s
    content. (The notebook also shows the interactive browser, which writes nothing.)"""
    run_dir = Path(run_dir)
    run_table = find_finetune_runs(cfg.finetune_runs)
    result = compute(run_table, cfg)
    save_tables(result, run_dir)
    figures.save_overlay_figures(result, run_dir, cfg.n_figures, methods=cfg.method)
    figures.plot_attribution(result.attribution, run_dir / "attribution.png")
    figures.plot_faithfulness(result.faithfulness, run_dir / "faithfulness.png")
    metrics = run_metrics(result, cfg)
    runs.finish_run(run_dir, metrics=metrics, data_hashes=finetune_hashes(run_table))
    return metrics
