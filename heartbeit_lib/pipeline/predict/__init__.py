"""Notebook 07 (``notebooks/07_predict.ipynb``, ``python -m heartbeit_lib.predict``): score ECGs a trained model
has never seen, validate it externally when labels exist, and draw one page per chosen ECG.

The steps, each one function here (the notebook calls them in order, :func:`run` calls them all):

1. :func:`load_ensemble`: the ``03_finetune`` run folders of ``finetune_runs`` (one run, or a seed ensemble whose
   probabilities are averaged; image and signal models may be mixed), each checked to be a *finished* run and
   rebuilt with :func:`heartbeit_lib.classify.checkpoint.load_finetune_run`; what they were trained on is read from
   them, never guessed: an image model's rendering (image size, layout, amplitude range) from
   ``model.json``/``config.yaml``, a signal model's input rate (``signal_rate``) from ``model.json``, the
   preprocessing and rate from ``store.json`` of their cohort store. Members that disagree (image members on the
   rendering, all on the preprocessing and the classes), or a rendering parameter the user sets to another value, is
   an error naming both values.
2. :func:`prepare_inputs`: either rows of an existing cohort store (``cohort_run``, optional ``split``), or raw files
   under ``data_root`` (``source`` muse, wfdb or ptbxl), read and preprocessed by the cohort builder itself
   (:func:`heartbeit_lib.cohorts.build_store` with the training store's ``preprocess_kw``) into ``<run>/cohort``:
   the same reader, the same filters, the same float16 storage the model was trained on, and the same rejects
   (``len(inputs) == len(predictions) + len(rejects)``). Patient ids are stored only as salted hashes
   (``salt_file``, else the per-user default salt of :mod:`heartbeit_lib.cohorts.ids`, the one stores use by default).
3. :func:`score`: image members read the signals rendered with the recorded rendering, signal members the
   signals resampled to their rate (``classify.signal_data.prepare_signals``, as in training), each scored by 03's
   own ``classify.engine.predict`` (its normalisation, and for signal models trained on crops its test-time windows
   combined by the recorded ``window_aggregate``); one probability per member and their mean (``score``).
   :func:`prepare_and_score` does steps 2 and 3 in one call (the notebook and :func:`run`) with the same result: raw
   files read in this process are scored chunk by chunk in a background thread while the next ones are read.
4. :func:`operating_threshold`: chosen on the training runs' *validation* split (their ``predictions.parquet`` at
   the chosen epoch, averaged over members), Youden by default, a target sensitivity or a target specificity; never
   on the scored data. :func:`threshold_report`: its bootstrap interval and sensitivity/specificity on validation,
   a warning under :data:`MIN_VAL_POSITIVES` validation positives; :func:`operating_points`: the thresholds for
   sensitivity and specificity 0.80/0.90/0.95 on validation (and how they do on labelled scored ECGs).
5. :func:`validate`: when the scored ECGs carry labels, AUROC/AUPRC with bootstrap CIs, Brier, ECE, calibration
   slope/intercept and sensitivity/specificity/PPV/NPV at that threshold, for the training runs' internal test
   split next to the external data; optionally recalibrated (Platt or isotonic fitted on a named training split).
6. :func:`draw_pictures`: one PNG per chosen ECG and one multi-page PDF (:mod:`heartbeit_lib.report.ecg_page`)
   with the model input and its saliency map (:func:`heartbeit_lib.analysis.saliency.saliency_maps`; a signal
   model's lead x time map drawn into the same layout, :func:`member_maps`).

Multi-label models (``model.json`` ``multilabel: true`` and its ``classes``; e.g. the PTB-XL benchmark tasks): one
sigmoid per class, and every step above is done class by class: ``predictions.csv`` holds ``label:<c>``,
``score:<c>`` (the members' mean), ``score_<member>:<c>`` and ``decision:<c>`` per class; each class has its own
threshold, chosen on that class's validation labels and scores (``threshold.json`` ``classes``); the operating points
and validation rows carry a ``class`` column; ``metrics.json`` adds the macro AUROC per validation data. An ensemble
averages runs of the same classes only (a :class:`MismatchError` otherwise). Labels of raw files come from a CSV with
``record_id`` and one 0/1 column per class (PTB-XL: from the task).

Files in ``<out_root>/07_predict/<run_id>/``: ``predictions.csv``, ``rejects.csv``, ``threshold.json``,
``operating_points.csv``,
``validation.csv`` and ``reliability.png`` (labels only), ``pictures/*.png`` and ``pictures.pdf``, ``cohort/``
(the preprocessed inputs), ``config.yaml``, ``metrics.json`` and ``run.json`` (with ``training_runs``: each
member's folder, its run.json, config and file hashes).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd

from heartbeit_lib.classify.checkpoint import MODEL_RECORD, WEIGHTS, FinetuneRunError  # noqa: F401 (re-exported)
from heartbeit_lib.classify.engine import SCORE_PREFIX
from heartbeit_lib.pipeline import runs
from heartbeit_lib.safety import write_csv
from heartbeit_lib.utils import atomic_write, resolve_device

# the public names of every step, importable from here as before the split (``predict.run``, ``predict.Member``...)
from heartbeit_lib.pipeline.predict.config import (CHUNK, DECISION_PREFIX, MIN_VAL_POSITIVES, MismatchError, NOTEBOOK,
                                                   OPERATING_TARGETS, PICTURE_SIZE, PredictConfig, PredictError, SPLITS,
                                                   Thresholds)
from heartbeit_lib.pipeline.predict.ensemble import (IMAGE_FIELDS, Member, Rendering, _recorded_rendering,
                                                     check_finetune_run, load_ensemble, member_inputs,
                                                     member_normalization, member_probabilities, member_windows,
                                                     render_images)
from heartbeit_lib.pipeline.predict.inputs import Inputs, prepare_inputs, raw_inputs, raw_source, read_workers
from heartbeit_lib.pipeline.predict.scores import (class_view, member_columns, predictions_table, prepare_and_score,
                                                   score, score_chunk)
from heartbeit_lib.pipeline.predict.thresholds import (operating_points, operating_threshold, threshold_record,
                                                       threshold_report, training_scores)
from heartbeit_lib.pipeline.predict.validation import (evaluate, reliability_figure, scored_data_name, validate)
from heartbeit_lib.pipeline.predict.pictures import (_safe_name, choose_pictures, draw_pictures, member_maps,
                                                     picture_class, score_order, signal_method)


def write_outputs(run_dir: str | os.PathLike, pred: pd.DataFrame, inputs: Inputs,
                  threshold: Thresholds, table: pd.DataFrame | None, report: dict | None = None,
                  points: pd.DataFrame | None = None) -> None:
    """``predictions.csv``, ``rejects.csv``, ``threshold.json`` (:func:`threshold_record`),
    ``operating_points.csv`` and (labels only) ``validation.csv``."""
    run_dir = Path(run_dir)
    atomic_write(run_dir / "predictions.csv", lambda t: write_csv(pred, t, index=False))
    atomic_write(run_dir / "rejects.csv", lambda t: write_csv(inputs.rejects, t, index=False))
    runs.write_json(run_dir / "threshold.json", threshold_record(threshold, report))
    if points is not None:
        atomic_write(run_dir / "operating_points.csv", lambda t: write_csv(points, t, index=False))
    if table is not None and len(table):
        atomic_write(run_dir / "validation.csv", lambda t: write_csv(table, t, index=False))


def training_provenance(members: Sequence[Member]) -> list[dict]:
    """Per member: folder, its run.json, config.yaml, chosen epoch and sha256 of its weights and records."""
    out = []
    for m in members:
        files = [f for f in (WEIGHTS, MODEL_RECORD, "config.yaml", "predictions.parquet") if (m.run_dir / f).is_file()]
        out.append({"run_dir": str(m.run_dir), "run": json.loads((m.run_dir / "run.json").read_text()),
                    "config": m.config, "best_epoch": m.metrics.get("best_epoch"),
                    "sha256": runs.hash_files([m.run_dir / f for f in files], m.run_dir),
                    "rendering": dataclasses.asdict(m.rendering)})
    return out


def run_metrics(pred: pd.DataFrame, inputs: Inputs, threshold: Thresholds, table: pd.DataFrame | None,
                members: Sequence[Member], report: dict | None = None) -> dict:
    """``metrics.json``: counts, threshold (and its :func:`threshold_report`), fraction called positive, and the
    validation rows. Multi-label: ``classes``, the positive decisions and mean score per class, and ``macro_auroc``
    per validation data (the mean of the classes' AUROC where one is defined, as 03/04)."""
    out = {"n_inputs": inputs.n_inputs, "n_scored": len(pred), "n_rejected": len(inputs.rejects),
           "n_members": len(members), "members": [m.name for m in members],
           "threshold": threshold_record(threshold, report)}
    classes = members[0].classes
    if classes:
        out.update(classes=list(classes),
                   n_positive_decisions={c: int(pred[f"{DECISION_PREFIX}{c}"].sum()) for c in classes},
                   mean_score={c: float(pred[f"{SCORE_PREFIX}{c}"].mean()) if len(pred) else None for c in classes})
    else:
        out.update(n_positive_decisions=int(pred["decision"].sum()),
                   mean_score=float(pred["score"].mean()) if len(pred) else None)
    if table is not None and len(table):
        out["validation"] = json.loads(table.to_json(orient="records"))
        if classes and "auroc" in table.columns:
            out["macro_auroc"] = {str(d): float(g["auroc"].mean()) for d, g in table.groupby("data", sort=False)
                                  if g["auroc"].notna().any()}
    return out


def finish(run_dir: str | os.PathLike, result: dict, members: Sequence[Member], inputs: Inputs) -> None:
    """``metrics.json``, data hashes and the training runs' provenance in ``run.json`` (marks it complete)."""
    hashes = {"predictions.csv": runs.file_sha256(Path(run_dir) / "predictions.csv")}
    if (inputs.store.root / "manifest.parquet").is_file():
        hashes["scored store manifest.parquet"] = runs.file_sha256(inputs.store.root / "manifest.parquet")
    info = json.loads((Path(run_dir) / "run.json").read_text())
    info["training_runs"] = training_provenance(members)
    info["scored_store"] = str(inputs.store.root)
    runs.write_json(Path(run_dir) / "run.json", info)
    runs.finish_run(run_dir, metrics=result, data_hashes=hashes)  # last: it lets go of the run folder's lock


def run(cfg: PredictConfig, run_dir: str | os.PathLike | None = None) -> dict:
    """Every step (what the notebook does cell by cell); returns the metrics. For the CLI and tests.

    Without ``run_dir`` the run is written into ``<out_root>/07_predict/.<run_id>.partial`` and renamed to
    ``<run_id>`` once finished (replacing an earlier run of that id), so a failed call leaves no folder that looks
    finished: only the hidden ``.partial`` one, its ``run.json`` recording the error under ``failed``."""
    if run_dir is not None:
        return _run_steps(cfg, Path(run_dir))
    run_id = cfg.run_id or runs.default_run_id(cfg)
    cfg = dataclasses.replace(cfg, run_id=run_id)
    final = Path(cfg.out_root or runs.REPO_ROOT / "outputs") / NOTEBOOK / run_id
    runs.lock_run_folder(final)  # a second call with this run_id is refused until this one ends
    try:
        staging = final.with_name(f".{run_id}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        runs.start_run(NOTEBOOK, cfg, run_id=staging.name, out_root=final.parent.parent)
        try:
            result = _run_steps(cfg, staging)
        except BaseException as e:
            runs.mark_failed(staging, e)
            raise
        info = json.loads((staging / "run.json").read_text())
        info["run_id"] = run_id
        if info.get("scored_store", "").startswith(str(staging)):
            info["scored_store"] = str(final) + info["scored_store"][len(str(staging)):]
        runs.write_json(staging / "run.json", info)
        old = final.with_name(f".{run_id}.replaced")
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
        staging.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        return result
    finally:
        runs.release_run_folder(final)


def _threshold_and_report(members: Sequence[Member], cfg: PredictConfig) -> tuple[Thresholds, dict]:
    threshold = operating_threshold(members, cfg)
    return threshold, threshold_report(members, threshold, cfg)


def _run_steps(cfg: PredictConfig, run_dir: Path) -> dict:
    members, rendering = load_ensemble(cfg, resolve_device(cfg.device))
    chosen: list = []  # the threshold needs the training runs' validation scores only: chosen (its bootstrap:
    # 0.02 s for 100 scores, 0.1 s per class of 2,156) while the readers read the first ECGs
    inputs, member_scores = prepare_and_score(cfg, run_dir, members, rendering,  # prepare_inputs, then score
                                              while_reading=lambda: chosen.extend(_threshold_and_report(members, cfg)))
    threshold, report = chosen
    pred = predictions_table(members, inputs, member_scores, threshold)
    table, curves = validate(members, pred, threshold, cfg, scored_store=inputs.store)
    if curves:
        reliability_figure(curves, run_dir / "reliability.png")
    write_outputs(run_dir, pred, inputs, threshold, table, report, operating_points(members, pred))
    draw_pictures(members, inputs, pred, choose_pictures(pred, cfg), rendering, threshold, cfg, run_dir)
    result = run_metrics(pred, inputs, threshold, table, members, report)
    finish(run_dir, result, members, inputs)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m heartbeit_lib.predict -f parameters/07_predict/demo.yaml -p finetune_runs RUN -p data_root DIR
    -p source muse -p run_id ID -p out_root OUT`` (``-f`` YAML files, later wins; ``-p`` wins over files)."""
    cfg = runs.config_from_cli(PredictConfig, argv, "Score new ECGs with trained 03_finetune run(s) (notebook 07_predict)")
    print(json.dumps(run(cfg), indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
