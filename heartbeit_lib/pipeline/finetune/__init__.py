"""Fine-tuning a registered model on a labelled cohort store (notebook ``03_finetune``).

The paper's recipe (Vaid et al. 2023): a 2-neuron head, CrossEntropy, Adam with a OneCycle
schedule between 3e-4 and 1e-3, 30 epochs, training fractions 1/10/25/50/100 %, the same
patients in the same splits for every model. Here:

- **Splits** come from the cohort store (``store.indices(split, fraction)``), saved once by
  ``01_preprocess``: identical across models, seeds and runs, and the fraction subsets of ``train``
  are nested. Nothing is re-drawn here.
- **Schedule**: ``torch.optim.Adam(lr=lr_start, weight_decay=...)`` with
  ``OneCycleLR(max_lr=lr, div_factor=lr / lr_start)``: the learning rate starts at ``lr_start``
  (3e-4), rises to ``lr`` (1e-3) over the first 30 % of the steps (``pct_start``), then anneals
  (cosine) to ``lr_start / 1e4``. Adam's beta1 cycles 0.95 -> 0.85 -> 0.95 (OneCycle default).
- **Engine**: ``classify.engine.train_one_epoch`` / ``evaluate`` per epoch; this module is the driver.
- **Two model families** (``registry.model_family``): image models read rendered ECGs; the signal models
  (``xresnet1d101``, ``inception1d``, ``stmem``, ``stmem_scratch``) read the store's signals at ``signal_rate`` Hz
  (``classify.signal_data.SignalDatasetFactory``: no rendering, no image normalisation, whole 5-s records) through
  the same engine, epoch selection, outputs and ``model.json`` (with ``family`` and ``signal_rate``).
- **Every epoch** the model scores the ``val``, ``test`` and ``external`` splits; the scores
  (probability of class 1) are appended to ``predictions.parquet`` so every metric can be recomputed
  later, and ``log.jsonl`` gets one line (train loss, learning rate, per-split AUROC/AUPRC).
- **Best epoch**: chosen on ``select_on`` (default ``"val"``, the patient-disjoint validation split; at a small
  fraction its nested subset of at least 50 ECGs per class, ``cohorts.splits.VAL_MIN_PER_CLASS``); ties go to the
  later epoch (``engine.select_best_epoch``, which the online choice must equal).
  ``select_on="test"`` reproduces the paper / authors' code, which picked the epoch on the test set
  itself: optimistic, allowed only when named. The weights of the chosen epoch are saved as
  ``model_best.pt`` (a plain state dict, ``torch.load(..., weights_only=True)``).
- **Determinism**: ``torch.manual_seed(seed)`` before the model is built (random heads and scratch
  models) and a seeded ``torch.Generator`` for the shuffling order; identical runs give identical
  logs on CPU.

Per-epoch AUROC is ``sklearn.metrics.roc_auc_score``; AUPRC is average precision
(``sklearn.metrics.average_precision_score``; the authors' code used the trapezoidal
``auc(recall, precision)``). The metrics notebook recomputes both, with bootstrap CIs, from
``predictions.parquet``.

Modules, one idea each: :mod:`.config` (the parameters), :mod:`.inputs` (upstream runs, the overlap refusal),
:mod:`.model` (model and input normalisation), :mod:`.fit` (the training driver), :mod:`.resume` (``resume.pt``);
the learning curves are drawn by :func:`heartbeit_lib.report.curves.plot_learning_curves`. This module is the
stage: :func:`run` and :func:`run_finetune`, and every public name of the package, importable from here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from heartbeit_lib import cohorts
from heartbeit_lib.classify import engine  # noqa: F401 (tests patch finetune.engine.train_one_epoch)
from heartbeit_lib.classify.checkpoint import load_best_weights, save_best_weights, write_model_record  # noqa: F401
from heartbeit_lib.classify.data import (EVAL_SPLITS, ImageCache, Split, SplitError,  # noqa: F401
                                         default_dataset_factory, describe_splits, make_loader, make_splits,
                                         require_paper_layout, records_sha256)
from heartbeit_lib.classify.engine import predict, select_best_epoch, split_metrics  # noqa: F401
from heartbeit_lib.models import registry as models
from heartbeit_lib.pipeline import runs
from heartbeit_lib.pipeline.finetune.config import (DEFAULT_IMAGE_SIZE, PAPER_FRACTIONS,  # noqa: F401
                                                    TRANSFORMER_FAMILIES, CohortNotFoundError, FinetuneConfig,
                                                    PretrainRunNotFoundError, run_name)
from heartbeit_lib.pipeline.finetune.fit import (CNN_FAMILIES, CUDA_EVAL_BATCH, IMAGE_CACHE, FitResult,  # noqa: F401
                                                 _nan_to_none, fit, make_optimizer, optimizer_params, resolve_device)
from heartbeit_lib.pipeline.finetune.inputs import (checkpoint_ylim, model_weights, pretrain_overlap,  # noqa: F401
                                                    resolve_inputs)
from heartbeit_lib.pipeline.finetune.model import (SIGNAL_NORMALIZATION, build_model,  # noqa: F401
                                                   scratch_normalization, signal_normalization)
from heartbeit_lib.pipeline.finetune.resume import (RESUME_FILE, load_resume_state,  # noqa: F401
                                                    restore_resume_state, save_resume_state)
from heartbeit_lib.report.curves import plot_learning_curves


# ---------------------------------------------------------------- whole run (the notebook's steps)


def run(cfg: FinetuneConfig, run_dir: str | os.PathLike, dataset_factory: Callable | None = None, store=None,
        figure: bool = True, image_cache: ImageCache | None = None) -> dict[str, Any]:
    """The notebook's steps after its config cell (store, splits, model, training, learning curves, metrics),
    finishing the run folder ``run_dir`` (made by ``runs.start_run`` from ``cfg``); returns ``metrics.json``'s
    content. ``cfg`` is resolved already (:func:`resolve_inputs`, as the notebook does before ``start_run`` so that
    ``config.yaml`` names the upstream runs); the keywords are :func:`run_finetune`'s."""
    return _run_steps(cfg, run_dir, dataset_factory, store, figure, image_cache).metrics


def _run_steps(cfg: FinetuneConfig, run_dir: str | os.PathLike, dataset_factory: Callable | None, store,
               figure: bool, image_cache: ImageCache | None) -> FitResult:
    run_dir = Path(run_dir)
    if store is None:
        store = open_store(cfg)
    splits = make_splits(store, cfg.fraction, cfg.val_fraction)
    model, norm = build_model(cfg, store)
    result = fit(cfg, model, store, splits, run_dir, normalization=norm, dataset_factory=dataset_factory,
                 image_cache=image_cache)
    if figure:
        plot_learning_curves(result.log, result.best_epoch, run_dir / "learning_curves.png", title=cfg.run_id)
    runs.finish_run(run_dir, metrics=result.metrics, data_hashes={**result.data_hashes, **input_hashes(cfg)})
    return result


def run_finetune(cfg: FinetuneConfig, dataset_factory: Callable | None = None, store=None,
                 figure: bool = True, image_cache: ImageCache | None = None) -> FitResult:
    """The notebook's steps in-process: resolve inputs, start the run folder, then :func:`run`'s steps.

    Used by the sweep's in-process executor and tests; ``notebooks/03_finetune.ipynb`` calls the
    same functions cell by cell. ``figure=False`` skips ``learning_curves.png`` (about 0.3 s of
    matplotlib per run, the largest cost of a tiny CPU run).
    """
    cfg = resolve_inputs(cfg)
    run_dir = runs.start_run("03_finetune", cfg)
    return _run_steps(cfg, run_dir, dataset_factory, store, figure, image_cache)


def open_store(cfg: FinetuneConfig):
    """``cohorts.CohortStore(cfg.cohort_run)``, checked to hold ``cfg.task``."""
    store = cohorts.CohortStore(cfg.cohort_run)
    if getattr(store, "task", cfg.task) != cfg.task:
        raise runs.ConfigError(f"parameter 'task': {cfg.task!r} but cohort_run {cfg.cohort_run} holds task "
                               f"{store.task!r}")
    return store


def input_hashes(cfg: FinetuneConfig) -> dict[str, str]:
    """sha256 of the weights file the model was initialised from (if any)."""
    w = model_weights(cfg)
    signal = models.model_family(cfg.model) == "signal"
    if w is None:
        p = models.find_cached_weights(cfg.model) if not signal and models.model_spec(cfg.model).source else None
    elif signal or models.model_spec(cfg.model).source == "pretrain_checkpoint":
        p = models.resolve_pretrain_checkpoint(w)
    else:
        p = Path(w)
    return {"weights": runs.file_sha256(p)} if p is not None and Path(p).is_file() else {}
