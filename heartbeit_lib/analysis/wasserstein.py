"""Wasserstein distances between ECG images and natural images (notebook 05, Supplementary Figure 9).

The paper samples 1,000 ECG images and 1,000 ImageNet images (224x224), averages a Wasserstein
distance over all 10^6 pairs of each combination and reports ECG-ECG 2.14, ImageNet-ImageNet
45.48 and ECG-ImageNet 128.44 on a 0-255 scale. Those magnitudes are the **1-D Wasserstein-1
distance between the grey-level distributions of two images**, i.e.
``scipy.stats.wasserstein_distance(a.ravel(), b.ravel())``; this module computes it exactly and
fast (:func:`pixel_wasserstein`), and adds a spatial variant that treats an image as a 2-D mass
distribution over pixel positions (:func:`sliced_wasserstein`, :func:`emd_wasserstein`), because
the grey-level reading ignores where the ink is.

Conventions
-----------
- **Grey levels.** Images are uint8 stacks ``(n, H, W)`` (grey) or ``(n, H, W, 3)`` (RGB). RGB is
  converted with ITU-R 601-2 luma exactly as Pillow's ``Image.convert("L")``:
  ``L = (R*19595 + G*38470 + B*7471 + 0x8000) >> 16``, the 16-bit fixed-point form of
  ``R*299/1000 + G*587/1000 + B*114/1000`` rounded half up (:func:`to_grey_uint8`; a test checks all
  2^24 colours against Pillow).
- **Exactness.** For integer levels 0..255 with unit spacing,
  ``W1(a, b) = sum_{k=0}^{254} |F_a(k) - F_b(k)|`` with ``F`` the empirical CDF. With ``c_a(k)`` the
  cumulative pixel counts and ``N_a`` the pixel count, ``W1 = sum_k |c_a(k) N_b - c_b(k) N_a| / (N_a N_b)``:
  the numerator is a sum of integers whose partial sums stay below ``2^53`` (exact in float64), so
  every entry is the correctly rounded float64 of the exact rational distance (for
  ``255 N_a N_b < 2^53``; larger images fall back to float64 CDFs).
- **Self-pairs.** "All 10^6 pairs" of a 1,000-image set with itself is the full 1000x1000 matrix,
  which includes the 1,000 zero self-pairs (and counts every other pair twice). ``include_self=True``
  (default) reproduces that; ``include_self=False`` averages the n(n-1) pairs i != j (= the mean over
  unordered pairs i < j). The difference is a factor (n-1)/n, 0.1% at n = 1,000.
- **Bootstrap.** :func:`bootstrap_pair_mean` resamples *images*, not pairs: for two different sets
  the rows and the columns of the distance matrix are resampled independently (two-sample
  bootstrap); for a set with itself one resample of the images indexes both rows and columns.
  Percentile intervals.
- **Spatial mass.** Darkness ``255 - L`` normalised to sum 1 over the pixel grid; distances are in
  pixel units of the input image (cell centres of a downsampled grid are scaled back).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from PIL import Image
from scipy.spatial.distance import cdist, pdist, squareform

from heartbeit_lib import render

#: The paper's reported averages (Supplementary Figure 9), 0-255 grey-level scale.
PAPER_VALUES: dict[str, float] = {"ECG-ECG": 2.14, "ImageNet-ImageNet": 45.48, "ECG-ImageNet": 128.44}
#: Comparison name -> (row set, column set, same_set).
COMPARISONS: dict[str, tuple[str, str, bool]] = {
    "ECG-ECG": ("ECG", "ECG", True),
    "ImageNet-ImageNet": ("ImageNet", "ImageNet", True),
    "ECG-ImageNet": ("ECG", "ImageNet", False),
}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_LEVELS = 256


class WassersteinInputError(ValueError):
    """An image stack, distance matrix, folder or parameter is unusable (the message says which and why)."""


# ---------------------------------------------------------------- greyscale and histograms


def to_grey_uint8(x: np.ndarray, name: str = "x") -> np.ndarray:
    """RGB -> grey levels exactly as Pillow's ``Image.convert("L")`` (ITU-R 601-2 luma).

    Parameters
    ----------
    x : uint8 array (..., 3), channels R, G, B.

    Returns
    -------
    uint8 array (...): ``(R*19595 + G*38470 + B*7471 + 0x8000) >> 16``, i.e.
    ``R*299/1000 + G*587/1000 + B*114/1000`` in 16-bit fixed point, rounded half up.
    (A float ``round(0.299 R + 0.587 G + 0.114 B)`` differs from Pillow on 9,716 of the 2^24 colours.)
    """
    x = np.asarray(x)
    if x.dtype != np.uint8:
        raise WassersteinInputError(f"{name}: expected uint8 RGB values 0-255, got dtype {x.dtype}")
    if x.ndim < 1 or x.shape[-1] != 3:
        raise WassersteinInputError(f"{name}: expected a trailing RGB axis of length 3, got shape {x.shape}")
    flat = x.reshape(-1, 3)
    out = np.empty(len(flat), np.uint8)
    step = 1 << 20  # pixels per chunk: bounds the uint32 temporaries to a few MB for any stack size
    for s in range(0, len(flat), step):
        c = flat[s:s + step].astype(np.uint32)
        out[s:s + step] = (c[:, 0] * 19595 + c[:, 1] * 38470 + c[:, 2] * 7471 + 0x8000) >> 16
    return out.reshape(x.shape[:-1])


def as_grey_stack(x: np.ndarray, name: str = "images") -> np.ndarray:
    """Validate an image stack and return it as uint8 grey ``(n, H, W)``.

    ``(n, H, W)`` is taken as grey, ``(n, H, W, 3)`` as RGB (converted by :func:`to_grey_uint8`).
    Non-uint8 input is rejected: a float image has no unambiguous 0-255 scale.
    """
    x = np.asarray(x)
    if x.dtype != np.uint8:
        raise WassersteinInputError(f"{name}: expected a uint8 image stack (0-255), got dtype {x.dtype}")
    if x.ndim == 4 and x.shape[-1] == 3:
        x = to_grey_uint8(x, name)
    elif x.ndim != 3:
        raise WassersteinInputError(
            f"{name}: expected shape (n, H, W) grey or (n, H, W, 3) RGB, got {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0 or x.shape[2] == 0:
        raise WassersteinInputError(f"{name}: empty image stack, shape {x.shape}")
    return x


def grey_histograms(images: np.ndarray, name: str = "images") -> np.ndarray:
    """Per-image grey-level counts.

    Parameters
    ----------
    images : uint8 (n, H, W) or (n, H, W, 3).

    Returns
    -------
    int64 (n, 256): ``h[i, k]`` = number of pixels of image i with grey level k; rows sum to H*W.
    """
    g = as_grey_stack(images, name)
    flat = g.reshape(len(g), -1)
    return np.stack([np.bincount(row, minlength=_LEVELS) for row in flat]).astype(np.int64)


def _check_hist(h: np.ndarray, name: str) -> np.ndarray:
    h = np.asarray(h)
    if h.ndim != 2 or h.shape[1] != _LEVELS:
        raise WassersteinInputError(f"{name}: expected histograms of shape (n, 256), got {h.shape}")
    if not np.issubdtype(h.dtype, np.integer):
        raise WassersteinInputError(f"{name}: histograms must hold integer pixel counts, got {h.dtype}")
    if (h < 0).any() or (h.sum(1) == 0).any():
        raise WassersteinInputError(f"{name}: histograms need non-negative counts and at least one pixel each")
    return h.astype(np.int64)


def wasserstein_from_histograms(ha: np.ndarray, hb: np.ndarray) -> np.ndarray:
    """All-pairs exact 1-D Wasserstein-1 distances from grey-level histograms.

    Parameters
    ----------
    ha : int (n, 256) pixel counts per level; hb : int (m, 256). Pixel counts may differ.

    Returns
    -------
    float64 (n, m) distances in grey levels (0-255 scale).

    Notes
    -----
    When every image of ``ha`` has ``N_a`` pixels and every image of ``hb`` has ``N_b`` (any stack),
    the distance is ``sum_k |c_a(k) N_b - c_b(k) N_a| / (N_a N_b)`` with cumulative counts ``c``: an
    L1 distance (``scipy.spatial.distance.cdist(..., "cityblock")``) of integer vectors whose every
    partial sum is an integer below ``2^53``, hence exact in float64; about 0.1-0.2 s per 10^6 pairs
    on one core (``ha is hb``: each pair once, ``pdist``). Otherwise (histograms of mixed sizes, or
    ``255 N_a N_b >= 2^53``) normalised float64 CDFs are used (relative error ~1e-15).
    """
    same = ha is hb
    ha = _check_hist(ha, "ha")
    hb = ha if same else _check_hist(hb, "hb")
    na, nb = ha.sum(1), hb.sum(1)
    ca, cb = np.cumsum(ha, 1)[:, :-1], np.cumsum(hb, 1)[:, :-1]  # levels 0..254; F(255) = 1 for both
    uniform = (na == na[0]).all() and (nb == nb[0]).all()
    if uniform and (_LEVELS - 1) * int(na[0]) * int(nb[0]) < 2**53:
        Na, Nb = int(na[0]), int(nb[0])
        fa, fb, scale = (ca * Nb).astype(np.float64), (cb * Na).astype(np.float64), float(Na * Nb)
    else:
        fa, fb, scale = ca / na[:, None].astype(np.float64), cb / nb[:, None].astype(np.float64), 1.0
    num = squareform(pdist(fa, "cityblock")) if same else cdist(fa, fb, "cityblock")
    return num / scale


def pixel_wasserstein(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact 1-D pixel-intensity Wasserstein-1 distance for all pairs of two image stacks.

    Parameters
    ----------
    a : uint8 (n, H, W) grey or (n, H, W, 3) RGB (converted as Pillow ``convert("L")``).
    b : uint8 (m, H', W') or (m, H', W', 3); the pixel count may differ from ``a``'s.

    Returns
    -------
    float64 (n, m): ``D[i, j] = scipy.stats.wasserstein_distance(a[i].ravel(), b[j].ravel())`` in grey
    levels (0-255 scale), computed from per-image 256-level CDFs (see module notes).

    Examples
    --------
    >>> x = np.zeros((1, 2, 2), np.uint8); y = np.full((1, 2, 2), 10, np.uint8)
    >>> float(pixel_wasserstein(x, y)[0, 0])
    10.0
    """
    ha = grey_histograms(a, "a")
    return wasserstein_from_histograms(ha, ha if b is a else grey_histograms(b, "b"))


# ---------------------------------------------------------------- pair means, bootstrap


def _as_generator(seed: int | np.random.Generator | None) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _check_matrix(D: np.ndarray, same_set: bool) -> np.ndarray:
    D = np.asarray(D, dtype=np.float64)
    if D.ndim != 2 or D.size == 0:
        raise WassersteinInputError(f"D: expected a non-empty (n, m) distance matrix, got shape {D.shape}")
    if same_set and D.shape[0] != D.shape[1]:
        raise WassersteinInputError(f"D: same_set=True needs a square matrix, got shape {D.shape}")
    if same_set and D.shape[0] < 2:
        raise WassersteinInputError("D: a set compared with itself needs at least 2 images")
    return D


def pair_mean(D: np.ndarray, same_set: bool, include_self: bool = True) -> float:
    """Mean distance over pairs.

    Parameters
    ----------
    D : (n, m) distance matrix (float).
    same_set : True when rows and columns are the same images (square, zero diagonal).
    include_self : same-set only. True (the paper's "all 10^6 pairs" of 1,000 images): mean of all
        n^2 entries, self-pairs included. False: mean over the n(n-1) pairs i != j.
    """
    D = _check_matrix(D, same_set)
    if not same_set or include_self:
        return float(D.mean())
    n = D.shape[0]
    return float((D.sum() - np.trace(D)) / (n * (n - 1)))


def pair_values(D: np.ndarray, same_set: bool) -> np.ndarray:
    """The distinct pairwise distances: upper triangle i < j for a set with itself, all entries otherwise."""
    D = _check_matrix(D, same_set)
    return D[np.triu_indices(D.shape[0], 1)] if same_set else D.ravel()


def replicate_pair_means(D: np.ndarray, W: np.ndarray, V: np.ndarray | None = None,
                         include_self: bool = True) -> np.ndarray:
    """Pair means of bootstrap replicates given as image draw counts.

    Parameters
    ----------
    D : (n, m) distance matrix.
    W : (B, n) counts: how often each row image was drawn in each replicate (rows sum to n).
    V : (B, m) counts for the column images, or None for a set compared with itself (``V = W``).
    include_self : see :func:`bootstrap_pair_mean`.

    Returns
    -------
    float64 (B,). With ``I_b = repeat(arange(n), W[b])`` (``J_b`` likewise from ``V[b]``) and the
    expanded matrix ``E = D[I_b][:, J_b]``: two different sets give ``E.mean()``; a set with itself
    gives the mean of ``E`` over position pairs holding two *different* images
    (``I_b[s] != I_b[t]``), times ``(n - 1) / n`` when ``include_self`` (the paper's n^2-pair mean
    has a fraction 1/n of zero self-pairs). Leaving out pairs of a drawn image with a copy of
    itself matters: a replicate has about 2n such zero pairs, which would bias the replicates down
    by a relative 1/n (5% at n = 20) against the full-sample estimate.
    """
    D = np.asarray(D, dtype=np.float64)
    same = V is None
    W = np.atleast_2d(np.asarray(W, dtype=np.float64))
    V = W if same else np.atleast_2d(np.asarray(V, dtype=np.float64))
    n, m = D.shape
    tot = np.einsum("bj,bj->b", W @ D, V)
    if not same:
        return tot / (n * m)
    w2 = W * W
    den = W.sum(1) ** 2 - w2.sum(1)  # number of position pairs holding different images
    with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 = NaN: one image drawn n times
        distinct = (tot - w2 @ np.diag(D)) / den
    return distinct * ((n - 1) / n if include_self else 1.0)


def bootstrap_pair_mean(D: np.ndarray, same_set: bool, n_boot: int = 1000,
                        seed: int | np.random.Generator | None = 0, include_self: bool = True,
                        level: float = 0.95, chunk: int = 256) -> dict[str, float]:
    """Point estimate and bootstrap CI of :func:`pair_mean`, resampling images.

    Parameters
    ----------
    D : (n, m) distance matrix; ``same_set``, ``include_self`` as :func:`pair_mean`.
    n_boot : bootstrap replicates (0: no interval, NaN bounds).
    seed : int or ``np.random.Generator``.
    level : central interval coverage (percentile method).

    Returns
    -------
    dict with ``mean`` (on the full matrix), ``ci_low``, ``ci_high``, ``se`` (bootstrap sd),
    ``pair_std`` (sd of the distinct pair values), ``n_pairs`` (pairs averaged), ``n_rows``, ``n_cols``
    (images per set), ``n_boot``, ``level``.

    Notes
    -----
    A replicate draws the images with replacement: multinomial counts ``w`` (n) for rows and ``v``
    (m) for columns, independent for two different sets, ``v = w`` for a set with itself. The
    replicate mean is ``w^T D v / (n m)`` for two sets; for a set with itself it is the mean over
    pairs of two different drawn images, ``sum_{i != j} w_i w_j D_ij / sum_{i != j} w_i w_j``, scaled
    by (n-1)/n for ``include_self`` (see :func:`replicate_pair_means` for why). All replicates are
    one matrix product, so 1,000 replicates of a 1000x1000 matrix take well under a second.
    """
    D = _check_matrix(D, same_set)
    if n_boot < 0:
        raise WassersteinInputError(f"n_boot: must be >= 0, got {n_boot}")
    if not 0 < level < 1:
        raise WassersteinInputError(f"level: must be in (0, 1), got {level}")
    n, m = D.shape
    est = pair_mean(D, same_set, include_self)
    n_pairs = n * n if (same_set and include_self) else (n * (n - 1) if same_set else n * m)
    vals = pair_values(D, same_set)
    out = dict(mean=est, ci_low=math.nan, ci_high=math.nan, se=math.nan,
               pair_std=float(vals.std(ddof=1)) if vals.size > 1 else math.nan,
               n_pairs=int(n_pairs), n_rows=int(n), n_cols=int(m), n_boot=int(n_boot), level=float(level))
    if n_boot == 0:
        return out
    rng = _as_generator(seed)
    stats = np.empty(n_boot)
    for s in range(0, n_boot, chunk):
        b = min(chunk, n_boot - s)
        W = rng.multinomial(n, np.full(n, 1.0 / n), size=b)
        V = None if same_set else rng.multinomial(m, np.full(m, 1.0 / m), size=b)
        stats[s:s + b] = replicate_pair_means(D, W, V, include_self)
    stats = stats[np.isfinite(stats)]  # a replicate of one image drawn n times has no pairs (tiny n only)
    if stats.size == 0:
        return out
    alpha = (1 - level) / 2
    lo, hi = np.quantile(stats, [alpha, 1 - alpha])
    out.update(ci_low=float(lo), ci_high=float(hi), se=float(stats.std(ddof=1)) if stats.size > 1 else math.nan)
    return out


def paper_distance_matrices(ecg: np.ndarray, natural: np.ndarray) -> dict[str, np.ndarray]:
    """The three pixel-intensity distance matrices of Supplementary Figure 9.

    Parameters
    ----------
    ecg : uint8 (n, H, W[, 3]) ECG images; natural : uint8 (m, H', W'[, 3]) natural images.

    Returns
    -------
    ``{"ECG-ECG": (n, n), "ImageNet-ImageNet": (m, m), "ECG-ImageNet": (n, m)}`` float64 matrices
    (histograms are computed once per image, so this is n^2 + m^2 + n m pair evaluations).
    """
    he, hn = grey_histograms(ecg, "ecg"), grey_histograms(natural, "natural")
    return {"ECG-ECG": wasserstein_from_histograms(he, he),
            "ImageNet-ImageNet": wasserstein_from_histograms(hn, hn),
            "ECG-ImageNet": wasserstein_from_histograms(he, hn)}


def is_same_set(name: str) -> bool:
    """Rows and columns are one image set: from :data:`COMPARISONS`, else the two names around ``-`` are equal."""
    return COMPARISONS[name][2] if name in COMPARISONS else len(set(name.split("-"))) == 1


def pair_summary(matrices: Mapping[str, np.ndarray], n_boot: int = 1000,
              seed: int | np.random.Generator | None = 0, include_self: bool = True,
              level: float = 0.95):
    """One row per comparison: mean over pairs, bootstrap CI, the paper's value.

    Parameters
    ----------
    matrices : name -> distance matrix; names in :data:`COMPARISONS` decide ``same_set``
        (others: same set iff the two names around ``-`` are equal).

    Returns
    -------
    pandas DataFrame indexed by comparison with columns ``mean, ci_low, ci_high, se, pair_std,
    n_pairs, n_rows, n_cols, n_boot, level, same_set, include_self, paper``.
    """
    rng = _as_generator(seed)
    rows = {}
    for name, D in matrices.items():
        same = is_same_set(name)
        r = bootstrap_pair_mean(D, same, n_boot, rng, include_self, level)
        r.update(same_set=same, include_self=bool(include_self and same), paper=PAPER_VALUES.get(name, math.nan))
        rows[name] = r
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = "comparison"
    return df


def flatten_summary(summary, prefix: str = "pixel") -> dict[str, Any]:
    """Flatten a :func:`pair_summary` table to ``{"<prefix>_ecg_ecg_mean": ..., "..._ci_low": ...}`` for metrics.json."""
    out: dict[str, Any] = {}
    for name, r in summary.iterrows():
        key = f"{prefix}_{name.lower().replace('-', '_')}"
        for col in ("mean", "ci_low", "ci_high", "se", "pair_std", "n_pairs"):
            v = r[col]
            out[f"{key}_{col}"] = None if isinstance(v, float) and math.isnan(v) else v
        if not math.isnan(r["paper"]):
            out[f"{key}_paper"] = r["paper"]
    return out


# ---------------------------------------------------------------- data


def list_image_files(path: str | Path) -> list[Path]:
    """Image files (``IMAGE_SUFFIXES``, case-insensitive) directly in ``path``, sorted by name."""
    p = Path(path)
    if not p.is_dir():
        raise WassersteinInputError(f"image_dir: {p} is not a folder")
    files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise WassersteinInputError(f"image_dir: no image files ({', '.join(IMAGE_SUFFIXES)}) in {p}")
    return files


def load_grey_image(path: str | Path, size: int = 224) -> np.ndarray:
    """One image file -> uint8 grey (size, size).

    Decoded with Pillow to RGB, then (only when it is not already size x size) resized so the shorter
    side is ``size`` (bicubic) and centre-cropped (torchvision ``CenterCrop`` offsets), the transform
    of ``../shared/data/imagenet-samples``; grey by Pillow ``convert("L")`` (= :func:`to_grey_uint8`).
    """
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
    except Exception as e:  # Pillow raises several types for unreadable files
        raise WassersteinInputError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from e
    w, h = im.size
    if (w, h) != (size, size):
        s = size / min(w, h)
        nw, nh = max(size, round(w * s)), max(size, round(h * s))
        im = im.resize((nw, nh), Image.BICUBIC)
        left, top = round((nw - size) / 2), round((nh - size) / 2)
        im = im.crop((left, top, left + size, top + size))
    return np.asarray(im.convert("L"))  # = to_grey_uint8 (ITU-R 601-2 luma, tested on all colours)


def load_image_folder(path: str | Path, n: int | None, seed: int | np.random.Generator | None = 0,
                      size: int = 224, return_paths: bool = False):
    """Sample ``n`` images from a folder as uint8 grey (n, size, size).

    Parameters
    ----------
    path : folder of image files (see :func:`list_image_files`; sorted by name, which for
        ``imagenet-samples`` is the ImageNet class-index order).
    n : number of images, drawn without replacement by ``default_rng(seed).choice(len(files), n,
        replace=False)`` (so ``n=200, seed=0`` is the 200-image sample of the folder's README);
        ``None`` takes every file in name order.
    seed : int or ``np.random.Generator``.
    size : output side in pixels (see :func:`load_grey_image`).
    return_paths : also return the list of chosen files.

    Returns
    -------
    uint8 (n, size, size) [, list[Path]].
    """
    files = list_image_files(path)
    if n is None:
        chosen = files
    else:
        if not 1 <= n <= len(files):
            raise WassersteinInputError(f"n: need 1 <= n <= {len(files)} (files in {path}), got {n}")
        idx = _as_generator(seed).choice(len(files), n, replace=False)
        chosen = [files[i] for i in idx]
    out = np.empty((len(chosen), size, size), dtype=np.uint8)
    for i, f in enumerate(chosen):
        out[i] = load_grey_image(f, size)
    return (out, chosen) if return_paths else out


def sample_ecg_images(store, n: int, seed: int | np.random.Generator | None = 0, split: str = "",
                      size: int = 224, layout: str = "stack8", batch_size: int = 256,
                      allow_fewer: bool = False, **style) -> tuple[np.ndarray, np.ndarray]:
    """Render ``n`` ECGs sampled from a cohort store.

    Parameters
    ----------
    store : ``heartbeit_lib.cohorts.CohortStore``.
    n : number of ECGs, drawn without replacement with ``default_rng(seed)`` from all rows
        (``split=""``) or from ``store.indices(split)``, then sorted (store order).
    allow_fewer : when the pool holds fewer than ``n`` ECGs, take all of them instead of raising
        (e.g. the 150- or 840-record PTB-XL subsets against ``n = 1000``).
    size, layout, **style : passed to ``heartbeit_lib.render.render_ecg``.

    Returns
    -------
    images uint8 (n, size, size) (255 = white) and rows int64 (n,) (manifest row indices).
    """
    pool = np.arange(len(store), dtype=np.int64) if not split else np.asarray(store.indices(split), np.int64)
    if allow_fewer and len(pool) >= 1:
        n = min(n, len(pool))
    if not 1 <= n <= len(pool):
        where = f"split {split!r}" if split else "the store"
        raise WassersteinInputError(f"n_ecg: need 1 <= n <= {len(pool)} (ECGs in {where} at {store.root}), got {n}")
    rows = np.sort(_as_generator(seed).choice(pool, n, replace=False))
    out = np.empty((n, size, size), dtype=np.uint8)
    for s in range(0, n, batch_size):
        chunk = rows[s:s + batch_size]
        out[s:s + len(chunk)] = render.render_ecg(store.signals(chunk), size=size, layout=layout, **style)
    return out, rows


# ---------------------------------------------------------------- spatial variant (POT)


def darkness_mass(images: np.ndarray, size: int | None = None, name: str = "images") -> np.ndarray:
    """Images as 2-D mass distributions over pixel positions.

    Parameters
    ----------
    images : uint8 (n, H, W[, 3]) or a single (H, W) image.
    size : downsample to (size, size) by summing mass over cells (exact block sums when H and W are
        multiples of size, else Pillow's area-weighted ``BOX`` resize); None keeps the pixel grid.

    Returns
    -------
    float64 (n, h, w) (or (h, w) for a single image), each summing to 1; mass = darkness ``255 - L``.
    """
    single = np.asarray(images).ndim == 2
    g = as_grey_stack(np.asarray(images)[None] if single else images, name)
    n, H, W = g.shape
    mass = 255.0 - g.astype(np.float64)
    if size is not None and (H, W) != (size, size):
        if size < 1 or size > min(H, W):
            raise WassersteinInputError(f"size: must be in 1..{min(H, W)} for {name} of {H}x{W}, got {size}")
        if H % size == 0 and W % size == 0:
            mass = mass.reshape(n, size, H // size, size, W // size).sum((2, 4))
        else:
                    mass = np.stack([np.asarray(Image.fromarray(m.astype(np.float32), "F").resize((size, size), Image.BOX),
                                        dtype=np.float64) for m in mass])
    tot = mass.sum((1, 2))
    if (tot <= 0).any():
        raise WassersteinInputError(
            f"{name}: image(s) {np.flatnonzero(tot <= 0).tolist()[:10]} are all white; no mass to transport")
    mass /= tot[:, None, None]
    return mass[0] if single else mass


def _cell_centres(shape_in: tuple[int, int], shape_out: tuple[int, int]) -> np.ndarray:
    """(h*w, 2) row/column coordinates of grid cell centres in pixel units of the input image."""
    (H, W), (h, w) = shape_in, shape_out
    r = (np.arange(h) + 0.5) * (H / h)
    c = (np.arange(w) + 0.5) * (W / w)
    return np.stack(np.meshgrid(r, c, indexing="ij"), -1).reshape(-1, 2)


def _spatial_inputs(a, b, size):
    """Grey stacks -> flattened masses (n, h*w), (m, h*w), shared cell centres (h*w, 2), single-pair flag."""
    sa, sb = np.asarray(a), np.asarray(b)
    single = sa.ndim == 2 and sb.ndim == 2
    ga = as_grey_stack(sa[None] if sa.ndim == 2 else sa, "a")
    gb = as_grey_stack(sb[None] if sb.ndim == 2 else sb, "b")
    if ga.shape[1:] != gb.shape[1:]:
        raise WassersteinInputError(f"a, b: spatial distances need images of one size, got {ga.shape[1:]} and {gb.shape[1:]}")
    A, B = darkness_mass(ga, size, "a"), darkness_mass(gb, size, "b")
    X = _cell_centres(ga.shape[1:], A.shape[1:])
    return A.reshape(len(A), -1), B.reshape(len(B), -1), X, single


def _pairs(n: int, m: int, same: bool):
    return [(i, j) for i in range(n) for j in range(m) if (not same or i < j)]


def sliced_wasserstein(a: np.ndarray, b: np.ndarray | None = None, n_projections: int = 64,
                       seed: int | None = 0, p: int = 2, size: int | None = 56,
                       directions: str = "even"):
    """Sliced Wasserstein-p distance between images seen as 2-D darkness distributions (POT).

    Parameters
    ----------
    a, b : uint8 single images (H, W) or stacks (n, H, W[, 3]) / (m, ...) of one pixel size; ``b=None``
        compares ``a`` with itself (symmetric, zero diagonal, each pair computed once).
    n_projections : number of 1-D directions.
    seed : fixes the directions (the same directions for every pair).
    p : order; ``ot.sliced_wasserstein_distance`` returns ``(mean_theta W_p^p)^(1/p)``.
    size : downsample to (size, size) first (:func:`darkness_mass`); None for the full pixel grid.
    directions : ``"even"``: angles ``pi (j + u) / K``, j = 0..K-1, one random offset u from ``seed``
        (a randomly rotated, evenly spaced set: unbiased, and for p = 2 exact for any K >= 3 because
        the mean of ``cos^2`` over evenly spaced angles is 1/2); ``"random"``: POT's Gaussian directions.

    Returns
    -------
    float (two single images) or float64 (n, m), in pixel units of the input images. A point
    mass moved by a vector d has sliced W_2 = |d| / sqrt(2) with ``"even"`` directions.
    """
    import ot  # POT: a heavy import (about 1 s on top of torch: it probes its array backends), only needed here

    if n_projections < 1:
        raise WassersteinInputError(f"n_projections: must be >= 1, got {n_projections}")
    same = b is None
    A, B, X, single = _spatial_inputs(a, a if same else b, size)
    if directions == "even":
        u = np.random.default_rng(seed).random()
        th = np.pi * (np.arange(n_projections) + u) / n_projections
        proj = np.stack([np.cos(th), np.sin(th)])
    elif directions == "random":
        proj = ot.sliced.get_random_projections(2, n_projections, seed)
    else:
        raise WassersteinInputError(f"directions: {directions!r} is not one of ['even', 'random']")
    D = np.zeros((len(A), len(B)))
    for i, j in _pairs(len(A), len(B), same):
        sa, sb = A[i] > 0, B[j] > 0
        D[i, j] = ot.sliced_wasserstein_distance(X[sa], X[sb], A[i][sa], B[j][sb], p=p, projections=proj)
    if same:
        D = D + D.T
    return float(D[0, 0]) if single else D


def emd_wasserstein(a: np.ndarray, b: np.ndarray | None = None, size: int | None = 28,
                    num_iter_max: int = 10_000_000):
    """Exact 2-D earth mover's (Wasserstein-1) distance between darkness distributions (``ot.emd2``).

    Parameters
    ----------
    a, b : as :func:`sliced_wasserstein` (``b=None``: a set with itself).
    size : downsample to (size, size) first (28 for 224-px images: 8x8 cells, 784 positions; the LP
        grows as positions^2, so full 224x224 grids are out of reach).
    num_iter_max : network-simplex iteration cap (POT's default 100,000 is too low for ~1,000 cells).

    Returns
    -------
    float or float64 (n, m): minimal mean transport distance, Euclidean ground cost between cell
    centres in pixel units of the input images. A point mass moved by d costs |d|.
    """
    import ot  # POT: a heavy import (about 1 s on top of torch: it probes its array backends), only needed here

    same = b is None
    A, B, X, single = _spatial_inputs(a, a if same else b, size)
    D = np.zeros((len(A), len(B)))
    for i, j in _pairs(len(A), len(B), same):
        sa, sb = A[i] > 0, B[j] > 0
        M = cdist(X[sa], X[sb])
        wa, wb = A[i][sa], B[j][sb]
        D[i, j] = ot.emd2(wa / wa.sum(), wb / wb.sum(), M, numItermax=num_iter_max)
    if same:
        D = D + D.T
    return float(D[0, 0]) if single else D


def spatial_distance_matrices(ecg: np.ndarray, natural: np.ndarray, method: str = "sliced",
                              size: int = 28, n_projections: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    """The three comparisons of :func:`paper_distance_matrices` with a spatial distance.

    ``method``: ``"sliced"`` (:func:`sliced_wasserstein`, p = 2) or ``"emd"`` (:func:`emd_wasserstein`),
    both on (size, size) darkness grids; values in pixel units of the input images. Cost grows
    with the number of pairs, so pass small subsets (tens of images).
    """
    if method == "sliced":
        f = lambda x, y=None: sliced_wasserstein(x, y, n_projections=n_projections, seed=seed, size=size)  # noqa: E731
    elif method == "emd":
        f = lambda x, y=None: emd_wasserstein(x, y, size=size)  # noqa: E731
    else:
        raise WassersteinInputError(f"method: {method!r} is not one of ['sliced', 'emd']")
    return {"ECG-ECG": f(ecg), "ImageNet-ImageNet": f(natural), "ECG-ImageNet": f(ecg, natural)}
