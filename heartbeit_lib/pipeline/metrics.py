"""Notebook 04 (metrics): find the 03_finetune runs, bootstrap every run's AUROC/AUPRC on the same
resamples, the run's ``metrics.json`` and :func:`run`, the notebook's steps in one call.

The statistics live in :mod:`heartbeit_lib.analysis.metrics`, the tables / figures / HTML report in
:mod:`heartbeit_lib.report`; this module holds the notebook's :class:`MetricsConfig` and the glue.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zlib
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from heartbeit_lib.analysis.metrics import (AUPRC_METHODS, CI_METHODS, BootstrapStats, MetricsInputError,
                                            benchmark_interval, bootstrap_macro_metrics,
                                            RunMismatchError, _check_labels, _check_method, bootstrap_indices,
                                            bootstrap_indices_cached, bootstrap_metrics, compare, holm_adjust,
                                            interval_summary, seed_pool)
from heartbeit_lib import safety
from heartbeit_lib.classify.checkpoint import FinetuneRunError, read_metrics
from heartbeit_lib.classify.engine import SCORE_PREFIX
from heartbeit_lib.cohorts.store import LABEL_PREFIX
from heartbeit_lib.models import registry as models
from heartbeit_lib.pipeline import runs
from heartbeit_lib.report import figures, html, tables
from heartbeit_lib.report.tables import SPLIT_LABELS, SPLIT_ORDER, order_models

PREDICTION_COLUMNS = ("record_id", "patient_hash", "split", "epoch", "label", "score")
RUN_FILES = ("config.yaml", "predictions.parquet", "metrics.json")


class RunFolderError(ValueError):
    """A 03_finetune run folder is malformed (the message names the file and the reason)."""


@dataclasses.dataclass(frozen=True)
class MetricsConfig(runs.TypedConfig):
    """Parameters of ``notebooks/04_metrics.ipynb`` (its parameters cell is these field lines)."""

    finetune_root: str = "outputs/03_finetune"  # folder of 03_finetune run folders (searched 3 levels deep)
    n_boot: int = 500  # bootstrap resamples (paper: 500)
    seed: int = 0  # seed of the resample indices (ignored when they are re-read from bootstrap_dir)
    alpha: float = 0.05  # 1 - confidence level of the intervals
    ci_method: str = "percentile"  # percentile (default) or bca (bias-corrected and accelerated)
    auprc_method: str = "ap"  # ap (average precision, sklearn) or trapezoid (auc of the PR curve, as the authors code)
    stratify: bool = False  # resample within class (keeps the prevalence of every resample)
    reference_model: str = "heartbeit"  # model compared with every baseline (paired differences)
    splits: tuple[str, ...] = ("test", "external")  # evaluation splits: test (internal), external, val
    finetune_seed: int | None = None  # fine-tuning seed shown in tables/figures; None: tables pool all seeds (mean, interval over test x seeds, sd)
    lr_choice: tuple[str, ...] = ()  # lr-choice-<sweep>.csv files of 'python -m heartbeit_lib.sweep choose-lr': of an lr grid keep the validation-chosen run of each cell
    bootstrap_dir: str | None = None  # folder of saved resample indices to reuse (None: <run_dir>/bootstrap)
    figure_dpi: int = 110  # resolution of the PNG figures (300 for print)
    out_root: str = "outputs"  # root of the run folders
    run_id: str | None = None  # run folder name (None: a UTC timestamp)

    choices = {"ci_method": CI_METHODS, "auprc_method": AUPRC_METHODS}

    def validate(self) -> None:
        if self.n_boot < 1:
            raise runs.ConfigError(f"parameter 'n_boot': must be >= 1, got {self.n_boot}")
        if self.figure_dpi < 10:
            raise runs.ConfigError(f"parameter 'figure_dpi': must be >= 10, got {self.figure_dpi}")
        if not 0 < self.alpha < 1:
            raise runs.ConfigError(f"parameter 'alpha': must be in (0, 1), got {self.alpha}")
        if self.finetune_seed is not None and self.finetune_seed < 0:
            raise runs.ConfigError(f"parameter 'finetune_seed': must be >= 0 or None (one seed per cell), "
                                   f"got {self.finetune_seed}")
        bad = [s for s in self.splits if s not in SPLIT_LABELS]
        if bad or not self.splits:
            raise runs.ConfigError(f"parameter 'splits': {bad or list(self.splits)} not in {list(SPLIT_LABELS)}")


# ------------------------------------------------------------------------------ learning-rate choice


LR_CHOICE_COLUMNS = ("task", "model", "fraction", "seed", "lr", "run_id", "val_auroc", "chosen", "chosen_lr")


def read_lr_choice(path: str | os.PathLike) -> pd.DataFrame:
    """The table ``python -m heartbeit_lib.sweep choose-lr`` writes (``lr-choice-<sweep>.csv``): one row per
    run of an lr-grid sweep, ``chosen`` True on the rate with the best validation AUROC of each (task, model,
    fraction, seed). Keep the runs of ``table.run_id[table.chosen]``.

    Raises
    ------
    RunFolderError : the file is missing or lacks a column of :data:`LR_CHOICE_COLUMNS`.
    """
    path = Path(path)
    if not path.is_file():
        raise RunFolderError(f"lr choice table {path} does not exist; run python -m heartbeit_lib.sweep choose-lr "
                             "<sweep yaml> first")
    table = pd.read_csv(path)
    missing = [c for c in LR_CHOICE_COLUMNS if c not in table.columns]
    if missing:
        raise RunFolderError(f"lr choice table {path}: missing column(s) {missing}")
    table["chosen"] = table["chosen"].astype(bool)
    return table


# ------------------------------------------------------------------------------ collecting runs


def _find_run_dirs(sweep_dir: Path, max_depth: int = 3) -> list[Path]:
    found = []
    for cfg in sorted(sweep_dir.rglob("config.yaml")):
        rel = cfg.parent.relative_to(sweep_dir)
        if len(rel.parts) <= max_depth:
            found.append(cfg.parent)
    return found


def _family(run_dir: Path, model: str) -> str:
    """``image`` or ``signal``: the run's ``model.json`` record, else the registry's, else ``image``."""
    try:
        return str(json.loads((run_dir / "model.json").read_text())["family"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        return models.model_family(str(model))
    except models.UnknownModelError:
        return "image"


def list_runs(sweep_dir: str | os.PathLike, lr_choice: Sequence[str | os.PathLike] = ()) -> pd.DataFrame:
    """Every 03_finetune run folder under ``sweep_dir`` (itself a run folder, a sweep folder such as
    ``outputs/03_finetune`` or a folder of sweeps, searched 3 levels deep).

    Returns
    -------
    DataFrame, one row per folder whose ``config.yaml`` names ``task, model, fraction, seed``:
    ``run_dir, task, model, fraction, seed, complete`` (all of config.yaml, predictions.parquet and
    metrics.json present), ``missing`` (files absent), and from ``metrics.json`` ``best_epoch,
    select_on``, ``reported_<split>_auroc/auprc`` and ``n_train, prevalence_train`` when present, from
    ``config.yaml`` ``model_size`` (default ``base``) and ``image_size`` (default 224 px), and ``family``
    (``image``/``signal``, :func:`_family`).
    lr_choice : ``lr-choice-<sweep>.csv`` tables (:func:`read_lr_choice`): the runs of an lr grid that were
        not chosen on validation are left out (runs no table names are kept)

    Raises
    ------
    FileNotFoundError when ``sweep_dir`` does not exist; RunFolderError for unreadable YAML/JSON, and for two
    complete runs of one (task, model, fraction, seed), e.g. the rates of an lr grid without ``lr_choice``.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"finetune_root {sweep_dir}: no such folder (expected 03_finetune run folders)")
    rows = []
    not_chosen = set()
    for path in lr_choice:
        choice = read_lr_choice(path)
        not_chosen |= set(choice.run_id[~choice.chosen].astype(str))
    for d in _find_run_dirs(sweep_dir):
        if d.name in not_chosen:
            continue
        try:
            cfg = safety.read_yaml_mapping(d / "config.yaml")
        except safety.RunFileError as e:
            raise RunFolderError(str(e)) from None
        if not {"task", "model", "fraction", "seed"} <= set(cfg):
            continue  # some other notebook's run folder
        missing = [f for f in RUN_FILES if not (d / f).is_file()]
        try:
            row: dict[str, Any] = {"run_dir": str(d), "task": str(cfg["task"]), "model": str(cfg["model"]),
                                   "fraction": float(cfg["fraction"]), "seed": int(cfg["seed"]),
                                   "complete": not missing, "missing": ",".join(missing),
                                   "model_size": str(cfg.get("model_size") or "base"),
                                   "image_size": int(cfg.get("image_size") or 224), "family": _family(d, cfg["model"])}
            if cfg.get("lr") is not None:  # the (validation-chosen or fixed) peak learning rate of the run
                row["lr"] = float(cfg["lr"])
        except (TypeError, ValueError, OverflowError) as e:
            raise RunFolderError(f"{d / 'config.yaml'}: fraction / seed / image_size / lr of the wrong type "
                                 f"({str(e)[:80]})") from None
        if not missing:
            try:
                met = read_metrics(d)
            except FinetuneRunError as e:
                raise RunFolderError(str(e)) from None
            if "best_epoch" not in met:
                raise RunFolderError(f"{d / 'metrics.json'}: no 'best_epoch' (contract of 03_finetune)")
            row["best_epoch"] = met["best_epoch"]
            row["select_on"] = str(met.get("select_on", ""))
            for s in SPLIT_ORDER:
                for m in ("auroc", "auprc"):
                    if f"{s}_{m}" in met and met[f"{s}_{m}"] is not None:
                        row[f"reported_{s}_{m}"] = float(met[f"{s}_{m}"])
            for k in ("n_train", "prevalence_train", "n_val", "prevalence_val", "pretrain_overlap_ecgs",
                      "pretrain_overlap_patients", "pretrain_overlap"):
                if k in met:
                    row[k] = met[k]
        rows.append(row)
    cols = ["run_dir", "task", "model", "fraction", "seed", "complete", "missing"]
    df = pd.DataFrame(rows, columns=cols + sorted({k for r in rows for k in r} - set(cols)))
    done = df[df["complete"]]
    twice = done[done.duplicated(["task", "model", "fraction", "seed"], keep=False)]
    if len(twice):
        raise RunFolderError(f"finetune_root {sweep_dir}: {len(twice)} complete runs share (task, model, fraction, "
                             f"seed), e.g. {sorted(twice.run_dir)[:3]}; for an lr grid pass lr_choice (the table of "
                             "'python -m heartbeit_lib.sweep choose-lr'), else point finetune_root at one sweep")
    return df.sort_values(["task", "model", "fraction", "seed"]).reset_index(drop=True)


def collect_runs(sweep_dir: str | os.PathLike, splits: Sequence[str] | None = None,
                 lr_choice: Sequence[str | os.PathLike] = ()) -> pd.DataFrame:
    """Predictions of every complete 03_finetune run under ``sweep_dir`` at its best epoch.

    Parameters
    ----------
    sweep_dir : folder of run folders (see :func:`list_runs`); incomplete runs are skipped (their
        ``metrics.json`` is written last, so a folder without it is still running or crashed)
    splits : keep only these splits (default: all of val, test, external)
    lr_choice : as :func:`list_runs`

    Returns
    -------
    DataFrame, one row per (run, split, record): ``task, model, family, fraction, seed, split, record_id,
    patient_hash, label, score, epoch, best_epoch, select_on, run_dir, reported_auroc,
    reported_auprc`` (the values ``metrics.json`` reports for that split, for cross-checking).

    Raises
    ------
    RunFolderError when a complete run's predictions lack a contract column, hold no rows for the
    best epoch, or repeat a record within a split.
    """
    table = list_runs(sweep_dir, lr_choice)
    frames = []
    for _, r in table[table["complete"]].iterrows():
        path = Path(r["run_dir"]) / "predictions.parquet"
        pred = pd.read_parquet(path)
        if any(c.startswith(SCORE_PREFIX) for c in pred.columns):  # multi-label: label:<c>/score:<c> per class
            pred = pred.assign(label=1, score=np.nan)
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
        pred = pred.assign(task=r["task"], model=r["model"], family=r["family"], fraction=r["fraction"], seed=r["seed"],
                           best_epoch=r["best_epoch"], select_on=r["select_on"], run_dir=r["run_dir"],
                           record_id=pred["record_id"].astype(str))
        pred["reported_auroc"] = pred["split"].map(lambda s: r.get(f"reported_{s}_auroc", np.nan))
        pred["reported_auprc"] = pred["split"].map(lambda s: r.get(f"reported_{s}_auprc", np.nan))
        frames.append(pred)
    cols = ["task", "model", "family", "fraction", "seed", "split", "record_id", "patient_hash", "label", "score",
            "epoch", "best_epoch", "select_on", "run_dir", "reported_auroc", "reported_auprc"]
    if not frames:
        return pd.DataFrame(columns=cols)
    out = pd.concat(frames, ignore_index=True)
    per_class = [c for c in out.columns if c.startswith((LABEL_PREFIX, SCORE_PREFIX))]
    return out[cols + per_class]


def multilabel_columns(sub: pd.DataFrame) -> tuple[list[str], list[str], list[str]]:
    """(classes, label columns, score columns) of the multi-label runs in ``sub`` (the class columns filled for
    every row), or three empty lists for a binary task."""
    classes = [c[len(SCORE_PREFIX):] for c in sub.columns if c.startswith(SCORE_PREFIX) and sub[c].notna().all()]
    return classes, [LABEL_PREFIX + c for c in classes], [SCORE_PREFIX + c for c in classes]


def run_file_hashes(run_dirs: Iterable[str | os.PathLike], files: Sequence[str]) -> dict[str, str]:
    """sha256 of ``files`` in every run folder (provenance for ``run.json``), keyed ``<run name>/<file>``."""
    return {f"{Path(d).name}/{f}": runs.file_sha256(Path(d) / f) for d in run_dirs for f in files}


def prediction_hashes(run_table: pd.DataFrame) -> dict[str, str]:
    """sha256 of the ``predictions.parquet`` and ``metrics.json`` of every complete run of :func:`list_runs`."""
    return run_file_hashes(run_table.loc[run_table["complete"], "run_dir"], ("predictions.parquet", "metrics.json"))


# ------------------------------------------------------------------------------ bootstrap of every run


_RUN_KEYS = ("task", "model", "fraction", "seed")


def evaluate_predictions(preds, n_boot: int = 500, seed: int = 0, alpha: float = 0.05,
                         method: str = "percentile", auprc_method: str = "ap", stratify: bool = False,
                         reference_model: str = "heartbeit", splits: Sequence[str] = ("test", "external"),
                         indices_dir: str | os.PathLike | None = None, keep_stats: dict | None = None):
    """Bootstrap AUROC/AUPRC of every run and paired differences against a reference model.

    Parameters
    ----------
    preds : DataFrame with one row per (run, split, record) at the run's chosen epoch, columns
        ``task, model, fraction, seed, split, record_id, label, score`` (what
        :func:`collect_runs` returns; extra columns such as ``run_dir``,
        ``reported_auroc`` are carried into the results when present)
    indices_dir : folder where the resample indices are saved once per ``<task>-<split>`` and
        re-read (a mismatch of record ids raises); None draws them in memory
    keep_stats : a dict that receives ``{(task, split): {(model, fraction, seed): BootstrapStats}}`` (the
        resampled values, for :func:`pool_seeds`)
    others : as :func:`bootstrap_ci`

    Returns
    -------
    results : DataFrame, one row per (task, split, model, fraction, seed) with the keys of
        :func:`bootstrap_ci` and ``prevalence``
    differences : DataFrame, one row per (task, split, fraction, seed, baseline) with the keys of
        :func:`paired_difference` for ``reference_model`` minus ``baseline``

    Raises
    ------
    RunMismatchError when runs of one task and split disagree on their records or labels.
    """
    _check_method("method", method, CI_METHODS)
    _check_method("auprc_method", auprc_method, AUPRC_METHODS)
    need = {"split", "record_id", "label", "score", *_RUN_KEYS}
    missing = sorted(need - set(preds.columns))
    if missing:
        raise MetricsInputError("preds", f"missing columns {missing}")
    carry = [c for c in ("family", "run_dir", "best_epoch", "select_on") if c in preds.columns]
    results, diffs = [], []
    for (task, split), sub in preds[preds["split"].isin(list(splits))].groupby(["task", "split"], sort=True):
        classes, label_cols, score_cols = multilabel_columns(sub)
        ref_ids = ref_labels = None
        ref_run = None
        stats: dict[tuple, BootstrapStats] = {}
        for key, run in sub.groupby(["model", "fraction", "seed"], sort=True):
            run = run.sort_values("record_id", kind="stable")
            ids = run["record_id"].astype(str).to_numpy()
            if len(np.unique(ids)) != len(ids):
                raise RunMismatchError(f"{task}/{split} run {key}: duplicate record ids")
            labels = run[label_cols].to_numpy() if classes else run["label"].to_numpy()
            if ref_ids is None:
                ref_ids, ref_labels, ref_run = ids, labels, key
                y = labels.astype(np.int64) if classes else _check_labels(labels, f"label ({task}/{split})")
                strat = y if stratify and not classes else None
                if indices_dir is not None:
                    idx = bootstrap_indices_cached(indices_dir, f"{task}-{split}", ids, n_boot, seed, strat)
                else:
                    idx = bootstrap_indices(len(ids), n_boot, seed, stratify=strat)
            elif not np.array_equal(ids, ref_ids):
                raise RunMismatchError(f"{task}/{split}: run {key} has {len(ids)} records, run {ref_run} "
                                       f"has {len(ref_ids)}, or their record ids differ; paired "
                                       "comparisons need the same evaluation set")
            elif not np.array_equal(labels, ref_labels):
                raise RunMismatchError(f"{task}/{split}: runs {key} and {ref_run} disagree on labels")
            if classes:  # macro over classes, every class on the same resamples; BCa is not defined here
                st = bootstrap_macro_metrics(y, run[score_cols].to_numpy(), idx, classes, auprc_method)
            else:
                st = bootstrap_metrics(y, run["score"].to_numpy(), idx, auprc_method, jackknife=method == "bca")
            stats[key] = st
            row = dict(zip(("task", "split", "model", "fraction", "seed"), (task, split, *key)))
            row.update(interval_summary(st, alpha, "percentile" if classes else method))
            row["prevalence"] = st.n_pos / (st.n * max(1, len(classes)))
            if classes:
                row.update(benchmark_interval(st), average="macro", n_classes=len(classes))
                for c, pc in zip(classes, st.per_class):
                    summ = interval_summary(pc, alpha, "percentile")
                    row.update({f"auroc:{c}": summ["auroc"], f"auroc_lo:{c}": summ["auroc_lo"],
                                f"auroc_hi:{c}": summ["auroc_hi"]})
            first = run.iloc[0]
            for col in carry:
                row[col] = first[col]
            for col in ("auroc", "auprc"):
                if f"reported_{col}" in run.columns:
                    row[f"reported_{col}"] = first[f"reported_{col}"]
            results.append(row)
        diffs.extend(_paired_differences(task, split, stats, reference_model, alpha, method))
        if keep_stats is not None:
            keep_stats[(task, split)] = stats
    return pd.DataFrame(results), pd.DataFrame(diffs)


def _by_run(run_table: pd.DataFrame | None, column: str) -> dict[tuple, Any]:
    """``{(task, model, fraction, seed): value}`` of ``column`` in a :func:`list_runs` table, where it is set ({}
    without the table or the column)."""
    if run_table is None or column not in run_table.columns:
        return {}
    return {tuple(r[k] for k in _RUN_KEYS): r[column] for _, r in run_table.iterrows() if pd.notna(r[column])}


def pool_seeds(stats_by_split: dict, run_table: pd.DataFrame | None = None, seed: int = 0, alpha: float = 0.05,
               reference_model: str = "heartbeit") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tables 2-3 cells over fine-tuning seeds: per (task, split, model, fraction) the seed-mean AUROC/AUPRC with
    a 95 % interval over test resamples and seeds (:func:`analysis.metrics.seed_pool`: every test resample
    paired with a resample of the seeds), the seed sd beside it, and differences reference - baseline: the
    difference of the two seed means (= the mean over all seed pairs), paired on the same test resamples, each
    model's seeds resampled independently (its own stream, :func:`model_stream`; fine-tuning seed j of one model
    has nothing to do with seed j of another). Every seed of each model enters (``seeds_reference``,
    ``seeds_baseline``); ``<metric>_p_holm`` is the bootstrap p Holm-adjusted over the ``holm_family_size``
    differences of the task and split (:func:`analysis.metrics.holm_adjust`), and ``<metric>_diff_lo_adj`` /
    ``_hi_adj`` the simultaneous interval of that family (Bonferroni: percentile interval at level
    ``1 - alpha_adj``, ``alpha_adj = alpha / holm_family_size``; it excludes 0 only where Holm's test rejects
    too, Holm being the more powerful of the two).

    ``stats_by_split``: what :func:`evaluate_predictions` put into ``keep_stats``. ``run_table`` (:func:`list_runs`)
    adds ``lr``: the runs' peak learning rate(s) of the cell ("1e-4" or "1e-4/1e-3" when seeds differ),
    ``family`` (image / signal), so pooled tables keep the family level, and ``select_on`` (the runs' epoch rule),
    so their caption states it.
    Intervals: percentile (a single seed keeps its run's own interval, percentile as well).
    Returns (seed_results, seed_differences).
    """
    family_of = {}
    if run_table is not None and "family" in run_table.columns:
        family_of = dict(zip(run_table["model"], run_table["family"]))
    lr_of = _by_run(run_table, "lr")
    select_of = {k: v or "val" for k, v in _by_run(run_table, "select_on").items()}
    rows, diffs = [], []
    for (task, split), stats in sorted(stats_by_split.items()):
        cells: dict[tuple, dict[int, BootstrapStats]] = {}
        for (model, fraction, fseed), st in stats.items():
            cells.setdefault((model, fraction), {})[fseed] = st
        pooled = {}
        for (model, fraction), by_seed in sorted(cells.items()):
            seeds = sorted(by_seed)
            pooled[(model, fraction)] = (seeds, seed_pool([by_seed[s] for s in seeds], seed))
            row = {"task": task, "split": split, "model": model, "fraction": fraction, "n_seeds": len(seeds),
                   "seeds": ",".join(map(str, seeds))}
            if model in family_of:
                row["family"] = family_of[model]
            row.update(interval_summary(pooled[(model, fraction)][1], alpha, "percentile"))
            for m in ("auroc", "auprc"):
                vals = [getattr(by_seed[s], m) for s in seeds]
                row[f"{m}_seed_sd"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan")
            lrs = sorted({lr_of[(task, model, fraction, s)] for s in seeds if (task, model, fraction, s) in lr_of})
            row["lr"] = "/".join(f"{v:g}" for v in lrs) if lrs else None
            rules = sorted({select_of[k] for k in ((task, model, fraction, s) for s in seeds) if k in select_of})
            if rules:  # the tables' caption states each model's epoch rule (report.tables.epoch_rule_caption)
                row["select_on"] = "/".join(rules)
            rows.append(row)
        family = []
        for (model, fraction), by_seed in sorted(cells.items()):
            if model != reference_model:
                continue
            for (other, f2), other_seeds in sorted(cells.items()):
                if other == reference_model or f2 != fraction:
                    continue
                ref, base = sorted(by_seed), sorted(other_seeds)
                row = {"task": task, "split": split, "fraction": fraction, "reference": reference_model,
                       "baseline": other, "seeds_reference": ",".join(map(str, ref)),
                       "seeds_baseline": ",".join(map(str, base))}
                pair = (seed_pool([by_seed[s] for s in ref], [seed, model_stream(reference_model)]),
                        seed_pool([other_seeds[s] for s in base], [seed, model_stream(other)]))
                family.append((row, pair))
        for row, pair in family:  # simultaneous intervals: Bonferroni, each at level 1 - alpha / family size
            row.update(compare(*pair, alpha, "percentile", alpha_adj=alpha / len(family)))
            row["holm_family_size"] = len(family)
            row["alpha_adj"] = alpha / len(family)
        for m in ("auroc", "auprc"):  # Holm over the differences of this task and split (one table's family)
            for (row, _), p in zip(family, holm_adjust([r[f"{m}_p"] for r, _ in family])):
                row[f"{m}_p_holm"] = float(p)
        diffs.extend(row for row, _ in family)
    return pd.DataFrame(rows), pd.DataFrame(diffs)


def model_stream(model: str) -> int:
    """A stable integer per model name (crc32): the key of its own seed-resampling stream in :func:`pool_seeds`."""
    return zlib.crc32(str(model).encode())


def _paired_differences(task: str, split: str, stats: dict[tuple, BootstrapStats], reference_model: str,
                        alpha: float, method: str) -> list[dict]:
    """Rows of ``reference_model`` minus every other model of the same fraction and seed (keys of ``stats``:
    ``(model, fraction, seed)``), scored on the same resamples."""
    rows = []
    for (model, fraction, fseed), st_ref in stats.items():
        if model != reference_model:
            continue
        for (other, f2, s2), st_other in stats.items():
            if other == reference_model or f2 != fraction or s2 != fseed:
                continue
            row = {"task": task, "split": split, "fraction": fraction, "seed": fseed,
                   "reference": reference_model, "baseline": other}
            row.update(compare(st_ref, st_other, alpha, method))
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------ metrics.json


def run_metrics(results: pd.DataFrame, differences: pd.DataFrame, run_table: pd.DataFrame) -> dict:
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


# ------------------------------------------------------------------------------ the notebook's steps


def run(cfg: MetricsConfig, run_dir: str | os.PathLike) -> dict:
    """The notebook's steps in order (runs, bootstrap, seed pooling, tables, figures, report, metrics), finishing
    the run folder ``run_dir`` (made by ``runs.start_run``); returns ``metrics.json``'s content."""
    run_dir = Path(run_dir)
    run_table = list_runs(cfg.finetune_root, cfg.lr_choice)
    preds = collect_runs(cfg.finetune_root, lr_choice=cfg.lr_choice)
    stats: dict = {}
    results, differences = evaluate_predictions(
        preds, n_boot=cfg.n_boot, seed=cfg.seed, alpha=cfg.alpha, method=cfg.ci_method, auprc_method=cfg.auprc_method,
        stratify=cfg.stratify, reference_model=cfg.reference_model, splits=cfg.splits,
        indices_dir=cfg.bootstrap_dir or run_dir / "bootstrap", keep_stats=stats)
    seed_results, seed_differences = pool_seeds(stats, run_table, seed=cfg.seed, alpha=cfg.alpha,
                                                reference_model=cfg.reference_model)
    written = tables.write_tables(results, preds, run_dir / "tables", run_table=run_table, differences=differences,
                                  finetune_seed=cfg.finetune_seed, seed_results=seed_results,
                                  seed_differences=seed_differences if cfg.finetune_seed is None else None)
    safety.write_csv(seed_differences, run_dir / "tables" / "seed_differences.csv", index=False)
    figure_paths = figures.write_figures(preds, results, differences, run_dir / "figures",
                                         reference_model=cfg.reference_model, finetune_seed=cfg.finetune_seed,
                                         auprc_method=cfg.auprc_method, splits=cfg.splits, dpi=cfg.figure_dpi)
    html.write_report(run_dir, written, figure_paths, config=cfg.to_dict(), notes=html.report_notes(results, run_table))
    metrics = run_metrics(results, differences, run_table)
    runs.finish_run(run_dir, metrics=metrics, data_hashes=prediction_hashes(run_table))
    return metrics
