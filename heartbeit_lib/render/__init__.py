"""ECG images: the 8 stored leads drawn as a greyscale picture, fast enough to render on the fly.

HeartBEiT plots each preprocessed ECG (leads I, II, V1-V6, 2,500 samples = 5 s at 500 Hz) with
matplotlib and resizes the plot to 224x224 (PAPER.md, "Preprocessing" and "Images"). This module
has three renderers with one geometry:

- :func:`render_ecg_reference` - the paper's approach, with matplotlib: one axes per lead on an
  Agg canvas ``ref_scale`` (4) times larger than the output (black trace on white, no axes, no
  grid, fixed amplitude range, clipping), then resized to the output size with PIL's
  ``Image.resize`` and its default filter (bicubic, antialiased when downscaling): the paper
  plots, then resizes to 224 with PIL (PAPER.md lists PIL; the filter is not stated, so
  ``resample="bilinear"``, ``torchvision.transforms.Resize``'s choice, is available and measured
  by the benchmark too). Tens of milliseconds per ECG.
- :func:`render_ecg` - numpy, vectorised over a batch, a few hundred times faster than a figure
  per ECG (``benchmarks/bench_render.py``): antialiased line segments between consecutive samples
  by per-column min/max envelopes (see :mod:`.numpy_renderer`).
- :func:`render_ecg_torch` - the same algorithm in torch (CPU or GPU tensors); on the same input
  it gives the numpy renderer's pixels (the same float32 operations, then integer arithmetic;
  tested to within 1 grey level). Deterministic on every device: no atomics.

All three are pure functions of the signal and the parameters (no files, no global state apart
from a cache of layout geometry). Output: ``uint8`` (H, W), or (N, H, W) for a batch, 255 = white.

Where things are: :mod:`.geometry` (constants, :class:`RenderStyle`, the layouts and their pixel geometry),
:mod:`.numpy_renderer`, :mod:`.torch_renderer`, :mod:`.reference` (matplotlib, and the parity checks against it),
:mod:`.stats` (clipped share, image statistics for the normaliser), :mod:`.datasets` (render on the fly from a
cohort store), :mod:`.export` (PNG folders; ``python -m heartbeit_lib.render export``). Every public name is
importable from ``heartbeit_lib.render``.
"""

from heartbeit_lib.render.geometry import (DEFAULT_YLIM_MV, LEGACY_YLIM_MV, saved_ylim_mv, LAYOUTS, LEADS, RENDER_VERSION, RESAMPLE_FILTERS,
                                          RenderError, RenderStyle, layout_geometry)
from heartbeit_lib.render.numpy_renderer import render_ecg
from heartbeit_lib.render.torch_renderer import render_ecg_torch
from heartbeit_lib.render.reference import parity_metrics, render_ecg_reference, save_comparison_figure
from heartbeit_lib.render.datasets import ECGSignalDataset, RenderedECGDataset, RenderTransform
from heartbeit_lib.render.stats import clip_fractions, image_stats
from heartbeit_lib.render.export import export_pngs, main

__all__ = [
    "DEFAULT_YLIM_MV", "LEGACY_YLIM_MV", "saved_ylim_mv", "LAYOUTS", "LEADS", "RENDER_VERSION", "RESAMPLE_FILTERS", "RenderError", "RenderStyle",
    "layout_geometry", "render_ecg", "render_ecg_torch", "render_ecg_reference", "parity_metrics",
    "save_comparison_figure", "clip_fractions", "image_stats", "RenderedECGDataset", "ECGSignalDataset",
    "RenderTransform", "export_pngs", "main",
]
