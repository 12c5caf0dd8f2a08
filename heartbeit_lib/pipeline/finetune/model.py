"""Notebook 03's model: built by name with its head and seeded init (:func:`build_model`), and the normalisation of
its inputs (the weights' own, the rendered training images' for transformers from scratch, identity or the training
values' standardisation for the signal models)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from heartbeit_lib import render
from heartbeit_lib.classify.data import require_paper_layout
from heartbeit_lib.classify.signal_data import fit_standardizer
from heartbeit_lib.cohorts.store import N_LEADS
from heartbeit_lib.models import registry as models
from heartbeit_lib.models.signal_models import benchmark_weight_init
from heartbeit_lib.pipeline import runs
from heartbeit_lib.pipeline.finetune.config import TRANSFORMER_FAMILIES, FinetuneConfig
from heartbeit_lib.pipeline.finetune.inputs import _check_resolved, model_weights

SIGNAL_NORMALIZATION = ((0.0,), (1.0,))  # signal models: identity (prepare_signals scales by a fixed constant)


def build_model(cfg: FinetuneConfig, store=None) -> tuple[nn.Module, tuple[tuple[float, ...], tuple[float, ...]]]:
    """The model (2-neuron head, seeded init) and the (mean, std) normalisation of its inputs.

    Pretrained models: the normalisation their weights expect (heartbeit: its checkpoint's, ImageNet models:
    ImageNet's). Transformers from scratch (``vit_b16_scratch``, ``beit_b16_scratch``, ``heartbeit_scratch``)
    with ``store``: the rendered training images' own mean/std (:func:`scratch_normalization`); at 0.5 / 0.5 they
    stay at the prevalence loss (issue 18). CNNs from scratch keep 0.5 / 0.5: BatchNorm after their stem removes
    the input offset, and their results stay comparable with earlier runs.
    """
    _check_resolved(cfg)
    torch.manual_seed(cfg.seed)
    weights = model_weights(cfg)
    n_out = len(store.classes) if getattr(store, "multilabel", False) else 2
    if models.model_family(cfg.model) == "signal":  # inputs are millivolts already (signal_data.SCALE_UV)
        in_chans = store.shape[0] if store is not None and hasattr(store, "shape") else N_LEADS
        model = models.create_model(cfg.model, num_classes=n_out, weights=weights, size=cfg.model_size or None,
                                    in_chans=in_chans, signal_rate=float(cfg.signal_rate))
        if cfg.signal_init == "benchmark":
            benchmark_weight_init(model)
        return model, signal_normalization(cfg, store)
    if store is not None:
        require_paper_layout(store)
    model = models.create_model(cfg.model, num_classes=n_out, weights=weights, size=cfg.model_size or None,
                                img_size=cfg.image_size)
    spec = models.model_spec(cfg.model)
    if store is not None and spec.source is None and spec.family in TRANSFORMER_FAMILIES:
        return model, scratch_normalization(cfg, store)
    return model, models.normalization_for(cfg.model, weights=weights)


def signal_normalization(cfg: FinetuneConfig, store) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean,), (std,) of a signal model's millivolt inputs: identity, or with ``standardize`` the mean and standard
    deviation of every value of the run's training rows (``signal_data.fit_standardizer``: the PTB-XL benchmark's
    StandardScaler, fitted on the training split only, so no evaluation value reaches the input)."""
    if not cfg.standardize:
        return SIGNAL_NORMALIZATION
    if store is None:
        raise runs.ConfigError("parameter 'standardize': needs the cohort store to fit the training statistics")
    idx = np.asarray(store.indices("train", cfg.fraction), np.int64)
    idx = idx[store.labels(idx) >= 0]
    mean, std = fit_standardizer(store, idx, float(cfg.signal_rate))
    return (mean,), (std,)


def scratch_normalization(cfg: FinetuneConfig, store) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) x 3 channels of the rendered images of the store's whole training split (256 rows drawn with
    seed 0, ``render.image_stats``): one normaliser per (cohort, layout, size, ylim_mv), the same at every fraction."""
    st = render.image_stats(store, store.indices("train"), cfg.image_size, cfg.layout, ylim_mv=cfg.ylim_mv)
    return tuple(st["mean"] * 3), tuple(st["std"] * 3)
