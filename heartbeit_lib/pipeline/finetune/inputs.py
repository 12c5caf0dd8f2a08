"""Notebook 03's upstream runs: the default cohort store and pretraining run (:func:`resolve_inputs`), the image
size, architecture and amplitude range a pretraining checkpoint fixes, the weights a model starts from, and the
refusal of a pretraining run that saw the cohort's evaluation patients (:func:`pretrain_overlap`)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from heartbeit_lib import render
from heartbeit_lib.models import registry as models
from heartbeit_lib.pipeline import overlap, runs
from heartbeit_lib.pipeline.finetune.config import (DEFAULT_IMAGE_SIZE, CohortNotFoundError, FinetuneConfig,
                                                    PretrainRunNotFoundError)


def _latest_complete(folder: Path, predicate: Callable[[Path], bool] = lambda p: True) -> Path | None:
    cands = [p for p in folder.iterdir() if p.is_dir() and runs.is_complete(p) and predicate(p)] \
        if folder.is_dir() else []
    if not cands:
        return None
    return max(cands, key=lambda p: json.loads((p / "run.json").read_text()).get("finished") or "")




def _config_task(run_dir: Path) -> str | None:
    try:
        return (yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("task")
    except Exception:
        return None


def resolve_inputs(cfg: FinetuneConfig) -> FinetuneConfig:
    """Fill in default upstream run folders and check that they exist (:func:`_resolve_inputs`), then refuse a
    pretraining run that saw this cohort's evaluation patients (:func:`pretrain_overlap`)."""
    cfg = _resolve_inputs(cfg)
    pretrain_overlap(cfg)
    return cfg


def pretrain_overlap(cfg: FinetuneConfig) -> dict[str, Any]:
    """Patients/ECGs of ``cfg.cohort_run``'s val/test/external splits among the rows the model's pretraining run
    (``heartbeit`` image, ``stmem`` signal) trained on (:func:`overlap.count_overlap`); {} for other models.

    Raises
    ------
    overlap.PretrainOverlapError : some overlap, and ``allow_pretrain_overlap`` is False.
    overlap.SaltMismatchError : the two stores' patients cannot be compared, and ``allow_pretrain_overlap`` is
        False (with it: recorded as ``pretrain_overlap: unverified``).
    """
    signal = models.model_family(cfg.model) == "signal"
    if not (cfg.model == "stmem" if signal else models.model_spec(cfg.model).source == "pretrain_checkpoint"):
        return {}
    source = model_weights(cfg)
    if not source or not cfg.cohort_run:
        return {}
    try:
        found = overlap.count_overlap(source, cfg.cohort_run)
    except overlap.SaltMismatchError as e:
        if not cfg.allow_pretrain_overlap:
            raise
        return {"pretrain_overlap": "unverified", "pretrain_overlap_reason": str(e)}
    if found.get("pretrain_overlap_ecgs", 0) and not cfg.allow_pretrain_overlap:
        raise overlap.PretrainOverlapError(
            f"pretraining run {source} trained on {found['pretrain_overlap_ecgs']} ECGs of "
            f"{found['pretrain_overlap_patients']} patients who are in the val/test/external splits of cohort "
            f"{cfg.cohort_run}: its evaluation would not be held out. Pretrain with eval_patients_of: "
            f"[{cfg.cohort_run}] (or a mix built with exclude_patients_of), or pass allow_pretrain_overlap=true "
            "to run anyway (the counts go to metrics.json)")
    return found


def _resolve_inputs(cfg: FinetuneConfig) -> FinetuneConfig:
    """Fill in default upstream run folders and check that they exist.

    - ``cohort_run`` None -> ``<out_root>/01_preprocess/<task>`` if it exists, else the latest complete
      ``01_preprocess`` run whose config has this task.
    - ``pretrain_run`` None (only for ``model="heartbeit"`` without ``weights``) -> the latest complete
      ``02_pretrain`` run.
    - ``image_size`` None -> the checkpoint's ``img_size`` for ``heartbeit``, else 224; ``model_size`` None ->
      the checkpoint's ``size`` for ``heartbeit`` (so ``config.yaml`` names the architecture).

    Raises
    ------
    CohortNotFoundError, PretrainRunNotFoundError
    """
    out_root = Path(cfg.out_root)
    cohort = cfg.cohort_run
    if not cohort:
        default = out_root / "01_preprocess" / cfg.task
        found = default if default.is_dir() else _latest_complete(
            out_root / "01_preprocess", lambda p: _config_task(p) == cfg.task)
        if found is None:
            raise CohortNotFoundError(
                f"parameter 'cohort_run' is not set (None) and no cohort store for task {cfg.task!r} was found "
                f"(looked for {default} and complete runs in {out_root / '01_preprocess'}); run "
                f"notebooks/01_preprocess.ipynb with -p task {cfg.task} first, or pass -p cohort_run <run folder>")
        cohort = str(found)
    if not Path(cohort).is_dir():
        raise CohortNotFoundError(f"parameter 'cohort_run': {cohort} does not exist; run "
                                  f"notebooks/01_preprocess.ipynb first or pass the folder of an existing cohort store")
    if not (Path(cohort) / "manifest.parquet").is_file():
        raise CohortNotFoundError(f"parameter 'cohort_run': {cohort} holds no cohort store (no manifest.parquet); "
                                  "it is not a finished 01_preprocess run - rerun notebooks/01_preprocess.ipynb")
    if models.model_family(cfg.model) == "signal":
        return _resolve_signal_inputs(dataclasses.replace(cfg, cohort_run=cohort))
    pretrain = cfg.pretrain_run
    if models.model_spec(cfg.model).source == "pretrain_checkpoint" and not cfg.weights:
        pretrain = _pretrain_run(cfg, "image")
    image_size, model_size = cfg.image_size, cfg.model_size
    ylim = tuple(cfg.ylim_mv) if cfg.ylim_mv is not None else tuple(render.DEFAULT_YLIM_MV)
    if models.model_spec(cfg.model).source == "pretrain_checkpoint":
        # heartbeit fine-tunes at its pretraining size, architecture and amplitude range: record them in config.yaml
        ck = models.load_pretrain_checkpoint(model_weights(dataclasses.replace(cfg, pretrain_run=pretrain)), mmap=True)
        bc = ck["backbone_config"]
        image_size, model_size = image_size or int(bc["img_size"]), model_size or str(bc["size"])
        ylim = checkpoint_ylim(ck, cfg.ylim_mv, pretrain or cfg.weights)
    return dataclasses.replace(cfg, cohort_run=cohort, pretrain_run=pretrain,
                               image_size=image_size or DEFAULT_IMAGE_SIZE, model_size=model_size, ylim_mv=ylim)


def checkpoint_ylim(ck: Mapping[str, Any], asked: Sequence[float] | None, where: Any) -> tuple[float, float]:
    """The amplitude range (lo, hi) mV a pretraining checkpoint's images were drawn at (``render.ylim_mv``;
    checkpoints before issue 18 lack it and were drawn at the old default, +-2 mV). ``asked`` (the
    ``ylim_mv`` parameter) must be None or equal it, else :class:`runs.ConfigError` naming both."""
    got = render.saved_ylim_mv((ck.get("render") or {}).get("ylim_mv"))
    if asked is not None and tuple(float(v) for v in asked) != got:
        raise runs.ConfigError(f"parameter 'ylim_mv' = {tuple(asked)} mV, but the pretraining checkpoint {where} "
                               f"was drawn at ylim_mv = {got} mV: fine-tuning must see the pretraining scale "
                               "(leave ylim_mv None to take the checkpoint's)")
    return got


def _pretrain_modality(run_dir: Path) -> str:
    """``modality`` of a 02_pretrain run's config.yaml (runs from before the parameter: ``image``)."""
    try:
        return str((yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("modality") or "image")
    except Exception:
        return "image"


def _pretrain_run(cfg: FinetuneConfig, modality: str) -> str:
    """``cfg.pretrain_run``, or when None the latest complete 02_pretrain run of ``modality`` under ``out_root``;
    either must hold ``checkpoints/last.pt`` (or be a checkpoint file), else :class:`PretrainRunNotFoundError`."""
    pretrain = cfg.pretrain_run
    if not pretrain:
        root = Path(cfg.out_root) / "02_pretrain"
        found = _latest_complete(root, lambda p: (p / "checkpoints" / "last.pt").is_file()
                                 and _pretrain_modality(p) == modality)
        if found is None:
            raise PretrainRunNotFoundError(
                f"model {cfg.model!r} needs a pretraining run with modality {modality}: parameter 'pretrain_run' "
                f"is not set (None) and {root} holds no complete one with checkpoints/last.pt; run "
                f"notebooks/02_pretrain.ipynb (-p modality {modality}) or pass -p pretrain_run <run folder>")
        pretrain = str(found)
    if not (Path(pretrain) / "checkpoints" / "last.pt").is_file() and not Path(pretrain).is_file():
        raise PretrainRunNotFoundError(f"parameter 'pretrain_run': {pretrain} holds no checkpoints/last.pt")
    return pretrain


def _resolve_signal_inputs(cfg: FinetuneConfig) -> FinetuneConfig:
    """:func:`resolve_inputs` for the signal models: ``stmem`` finds its signal pretraining run (latest complete
    ``02_pretrain`` run with ``modality: signal`` when ``pretrain_run`` is None) and takes the checkpoint's size;
    ``image_size`` becomes None (signal models read no image)."""
    pretrain, size = cfg.pretrain_run, cfg.model_size
    if cfg.model == "stmem" and not cfg.weights:
        pretrain = _pretrain_run(cfg, "signal")
    if cfg.model == "stmem" and not size:
        ck = models.load_weights_file(models.resolve_pretrain_checkpoint(cfg.weights or pretrain))
        size = str(ck["backbone_config"]["size"])
    return dataclasses.replace(cfg, pretrain_run=pretrain if cfg.model == "stmem" else None, image_size=None,
                               model_size=size)


def model_weights(cfg: FinetuneConfig) -> str | None:
    """The weights argument of :func:`models.create_model` for ``cfg`` (None = offline cache / scratch)."""
    if models.model_family(cfg.model) == "signal":
        return (cfg.weights or cfg.pretrain_run or None) if cfg.model == "stmem" else None
    spec = models.model_spec(cfg.model)
    if spec.source is None:
        return None
    if spec.source == "pretrain_checkpoint":
        return cfg.weights or cfg.pretrain_run or None
    return cfg.weights or None


def _check_resolved(cfg: FinetuneConfig) -> None:
    if cfg.image_size is None and models.model_family(cfg.model) == "image":
        raise runs.ConfigError("image_size is None (automatic): pass the config through finetune.resolve_inputs first")
