"""Notebook 05 (Wasserstein distances, Supplementary Figure 9): its :class:`WassersteinConfig`, the spatial
summaries, the sample table, ``metrics.json`` (:func:`run_metrics`), the provenance hashes, and :func:`run`, the
notebook's steps in one call.

The distances themselves live in :mod:`heartbeit_lib.analysis.wasserstein`, the figures in
:mod:`heartbeit_lib.report.figures`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from heartbeit_lib import cohorts
from heartbeit_lib.analysis.wasserstein import (flatten_summary, load_image_folder, pair_summary, paper_distance_matrices,
                                                sample_ecg_images, spatial_distance_matrices)
from heartbeit_lib.pipeline import runs
from heartbeit_lib.report import figures


@dataclasses.dataclass(frozen=True)
class WassersteinConfig(runs.TypedConfig):
    """Parameters of ``notebooks/05_wasserstein.ipynb`` (its parameters cell is these field lines)."""

    cohort_run: str = "outputs/01_preprocess/demo"  # cohort store (01_preprocess run folder) to draw ECGs from
    image_dir: str = "../shared/data/imagenet-samples"  # folder of natural images (ImageNet samples)
    n_ecg: int = 1000  # ECG images drawn without replacement (paper: 1,000)
    allow_fewer: bool = False  # a store with fewer than n_ecg ECGs gives all of them instead of an error
    n_natural: int = 1000  # natural images drawn without replacement (paper: 1,000)
    seed: int = 0  # seeds the two samples and the bootstrap
    ecg_split: str | None = None  # draw ECGs from this split only; None: the whole store
    layout: str = "stack8"  # render.render_ecg layout (paper: 8 stacked leads)
    ylim_mv: tuple[float, ...] = (-4.0, 4.0)  # amplitude range (lo, hi) of each lead band in mV, clipped beyond; the paper: (-2, 2)
    image_size: int = 224  # image side in pixels (paper: 224)
    n_boot: int = 1000  # bootstrap replicates for the CIs; 0: no CIs
    include_self: bool = True  # same-set means over all n^2 pairs incl. the zero self-pairs as the paper; false: i, j distinct
    spatial: bool = True  # also compute spatial (2-D mass) sliced Wasserstein and exact EMD
    n_spatial: int = 20  # images per set for the spatial distances (cost grows with pairs)
    spatial_size: int = 28  # spatial grid side after downsampling; 28: 8x8-pixel cells at 224
    n_projections: int = 64  # directions for the sliced Wasserstein distance
    out_root: str = "outputs"  # root of run folders
    run_id: str | None = None  # run folder name; None: a timestamp

    def validate(self) -> None:
        for f in ("n_ecg", "n_natural"):
            if getattr(self, f) < 2:
                raise runs.ConfigError(f"parameter {f!r}: need at least 2 images for pairs, got {getattr(self, f)}")
        if len(self.ylim_mv) != 2 or not self.ylim_mv[0] < self.ylim_mv[1]:
            raise runs.ConfigError(f"parameter 'ylim_mv' must be two numbers lo < hi in mV, got {self.ylim_mv}")
        if self.n_boot < 0:
            raise runs.ConfigError(f"parameter 'n_boot': must be >= 0, got {self.n_boot}")
        if self.spatial and not 2 <= self.n_spatial <= min(self.n_ecg, self.n_natural):
            raise runs.ConfigError(f"parameter 'n_spatial': must be in 2..min(n_ecg, n_natural), got {self.n_spatial}")
        if self.spatial_size < 2 or self.spatial_size > self.image_size:
            raise runs.ConfigError(f"parameter 'spatial_size': must be in 2..image_size, got {self.spatial_size}")


def spatial_summaries(ecg: np.ndarray, natural: np.ndarray, cfg: WassersteinConfig):
    """Spatial (sliced and exact EMD) summaries on the first ``cfg.n_spatial`` images of each set.

    Returns ``(matrices, summary)``: ``{"sliced": {...}, "emd": {...}}`` and one DataFrame with a
    ``method`` column (distances in pixel units; ``paper`` is NaN: the paper has no spatial figure).
    The sampled sets are already random draws, so their first images are a random subset.
    """
    e, nat = ecg[:cfg.n_spatial], natural[:cfg.n_spatial]
    mats, tables = {}, []
    for method in ("sliced", "emd"):
        t0 = time.perf_counter()
        mats[method] = spatial_distance_matrices(e, nat, method, cfg.spatial_size, cfg.n_projections, cfg.seed)
        s = pair_summary(mats[method], cfg.n_boot, cfg.seed, cfg.include_self)
        s["paper"] = math.nan
        s.insert(0, "method", method)
        s["seconds"] = time.perf_counter() - t0
        tables.append(s)
    return mats, pd.concat(tables)


def sample_table(ecg_rows: Sequence[int], natural_paths: Sequence[Path], store=None) -> Any:
    """Which images were compared: ``set, position, row`` (ECG manifest row) / ``file`` (natural)."""
    ecg = pd.DataFrame({"set": "ECG", "position": np.arange(len(ecg_rows)), "row": np.asarray(ecg_rows)})
    if store is not None and "record_id" in getattr(store, "manifest", pd.DataFrame()).columns:
        ecg["record_id"] = store.manifest["record_id"].to_numpy()[np.asarray(ecg_rows)]
    nat = pd.DataFrame({"set": "ImageNet", "position": np.arange(len(natural_paths)),
                        "file": [Path(p).name for p in natural_paths]})
    return pd.concat([ecg, nat], ignore_index=True)


def run_metrics(summary, spatial_summary=None, cfg: WassersteinConfig | None = None) -> dict[str, Any]:
    """``metrics.json`` of notebook 05: the three pixel-intensity averages with CIs and the paper's
    values (``pixel_<comparison>_{mean,ci_low,ci_high,se,pair_std,n_pairs,paper}``), the spatial
    summaries when computed (``spatial_<method>_<comparison>_...``, pixel units), and the set sizes."""
    out: dict[str, Any] = {"distance": "1-D Wasserstein-1 between grey-level distributions (0-255)",
                           "greyscale": "ITU-R 601-2 luma, = Pillow convert('L')"}
    if cfg is not None:
        out.update(n_ecg=cfg.n_ecg, n_natural=cfg.n_natural, n_boot=cfg.n_boot, include_self=cfg.include_self)
    if "ECG-ImageNet" in summary.index:  # images actually compared (fewer ECGs with allow_fewer)
        out.update(n_ecg_used=int(summary.loc["ECG-ImageNet", "n_rows"]),
                   n_natural_used=int(summary.loc["ECG-ImageNet", "n_cols"]))
    out.update(flatten_summary(summary, "pixel"))
    if spatial_summary is not None:
        for method, sub in spatial_summary.groupby("method", sort=False):
            out.update(flatten_summary(sub.drop(columns="method"), f"spatial_{method}"))
        if cfg is not None:
            out.update(n_spatial=cfg.n_spatial, spatial_size=cfg.spatial_size)
    return out


def data_hashes(store, natural_paths: Sequence[str | Path]) -> dict[str, str]:
    """Provenance for ``run.json``: sha256 of the cohort store's ``store.json``/``manifest.parquet``
    and one combined sha256 over the natural image files used."""
    root = Path(store.root)
    out = runs.hash_files([p for p in (root / "store.json", root / "manifest.parquet") if p.exists()], root=root.parent)
    by_name = {Path(p).name: runs.file_sha256(p) for p in natural_paths}  # location-independent
    out[f"natural_images (combined sha256 of {len(by_name)} files)"] = runs.combined_hash(by_name)
    return out


def run(cfg: WassersteinConfig, run_dir: str | Path) -> dict[str, Any]:
    """The notebook's steps in order (sample, distances, figures, spatial summaries, metrics), finishing the run
    folder ``run_dir`` (made by ``runs.start_run``); returns ``metrics.json``'s content."""
    run_dir = Path(run_dir)
    store = cohorts.CohortStore(cfg.cohort_run)
    ecg, ecg_rows = sample_ecg_images(store, cfg.n_ecg, cfg.seed, split=cfg.ecg_split, size=cfg.image_size,
                                      layout=cfg.layout, allow_fewer=cfg.allow_fewer, ylim_mv=cfg.ylim_mv)
    natural, natural_paths = load_image_folder(cfg.image_dir, cfg.n_natural, cfg.seed, size=cfg.image_size,
                                               return_paths=True)
    sample_table(ecg_rows, natural_paths, store).to_csv(run_dir / "samples.csv", index=False)
    matrices = paper_distance_matrices(ecg, natural)
    summary = pair_summary(matrices, cfg.n_boot, cfg.seed, cfg.include_self)
    summary.to_csv(run_dir / "summary.csv")
    figures.plot_supp_fig9(summary, run_dir / "supp_fig9_wasserstein.png")
    figures.plot_pair_histograms(matrices, run_dir / "pair_histograms.png")
    spatial_summary = None
    if cfg.spatial:
        spatial_matrices, spatial_summary = spatial_summaries(ecg, natural, cfg)
        spatial_summary.to_csv(run_dir / "spatial_summary.csv")
        figures.plot_pair_histograms(spatial_matrices["emd"], run_dir / "spatial_emd_histograms.png",
                                     xlabel="exact EMD of darkness (pixels)", show_paper=False)
    metrics = run_metrics(summary, spatial_summary, cfg)
    runs.finish_run(run_dir, metrics=metrics, data_hashes=data_hashes(store, natural_paths))
    return metrics
