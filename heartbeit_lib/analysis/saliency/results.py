"""Result containers of the saliency analysis: the maps of each fine-tuning run and the long tables built from them
(what :func:`heartbeit_lib.pipeline.saliency.compute` returns and :mod:`heartbeit_lib.report` draws)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd


@dataclasses.dataclass
class RunMaps:
    """Saliency of one fine-tuning run on the selected records."""

    info: dict                          # run_dir, task, model, fraction, seed, image_size, layout, ...
    records: pd.DataFrame               # row, record_id, label, prob (model's probability of target_class)
    images: np.ndarray                  # uint8 (n, H, W) the rendered ECGs (255 = white)
    maps: dict[str, np.ndarray]         # method -> float16 (n, H, W) in [0, 1] (half the memory; for display)


@dataclasses.dataclass
class SaliencyResult:
    runs: list[RunMaps]
    attribution: pd.DataFrame           # long: one row per run x method x record x lead x segment
    faithfulness: pd.DataFrame          # one row per run x method x record
    skipped: list[str]                  # (run, method) pairs not applicable, with the reason
