"""Tests of heartbeit_lib.analysis.wasserstein.

Oracles: ``scipy.stats.wasserstein_distance`` (1-D grey-level distance, relative 1e-9),
Pillow ``Image.convert("L")`` (greyscale, exact on all 2^24 colours), explicit index resampling
(bootstrap algebra, 1e-12), ``scipy.optimize.linear_sum_assignment`` and closed forms for the
spatial distances (1e-9), and the shared ImageNet README's published 42.72 (rounded to 0.01).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist
from scipy.stats import wasserstein_distance

from heartbeit_lib.analysis import wasserstein as W
from heartbeit_lib.pipeline import runs
from heartbeit_lib.pipeline import wasserstein as PW
from heartbeit_lib.report import figures


def _rel(a, b):
    return abs(a - b) / max(abs(b), 1e-300)


def _skewed_stack(rng, n, h, w):
    """uint8 images with varied, non-uniform grey-level distributions (some levels absent)."""
    out = np.empty((n, h, w), np.uint8)
    for i in range(n):
        kind = i % 3
        if kind == 0:  # mostly white with a few dark strokes, like a rendered ECG
            x = np.full((h, w), 255, np.uint8)
            x.flat[rng.choice(h * w, size=max(1, h * w // 20), replace=False)] = rng.integers(0, 120)
        elif kind == 1:
            x = np.clip(rng.normal(rng.uniform(40, 200), rng.uniform(5, 60), (h, w)), 0, 255).astype(np.uint8)
        else:
            x = rng.integers(0, 256, (h, w)).astype(np.uint8)
        out[i] = x
    return out


# ---------------------------------------------------------------- greyscale


@pytest.mark.slow
def test_to_grey_matches_pillow_convert_L_on_all_colours():
    # oracle: Pillow Image.convert("L"), every one of the 2^24 RGB colours, exact equality
    rgb = np.empty((256, 256, 256, 3), np.uint8)
    lv = np.arange(256, dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = lv[:, None, None], lv[None, :, None], lv[None, None, :]
    rgb = rgb.reshape(4096, 4096, 3)
    ref = np.asarray(Image.fromarray(rgb, "RGB").convert("L"))
    np.testing.assert_array_equal(W.to_grey_uint8(rgb), ref)


def test_rgb_stack_is_converted_before_the_distance():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (3, 9, 11, 3)).astype(np.uint8)
    grey = np.stack([np.asarray(Image.fromarray(x, "RGB").convert("L")) for x in rgb])
    np.testing.assert_array_equal(W.pixel_wasserstein(rgb, rgb[::-1]), W.pixel_wasserstein(grey, grey[::-1]))


@pytest.mark.parametrize("bad, msg", [
    (np.zeros((2, 4, 4), np.float32), "uint8"),
    (np.zeros((4, 4), np.uint8), "shape"),
    (np.zeros((2, 4, 4, 4), np.uint8), "shape"),
    (np.zeros((0, 4, 4), np.uint8), "empty"),
])
def test_bad_stacks_raise_typed_errors(bad, msg):
    with pytest.raises(W.WassersteinInputError, match=msg):
        W.pixel_wasserstein(bad, np.zeros((1, 4, 4), np.uint8))


# ---------------------------------------------------------------- 1-D pixel distance


def test_pixel_wasserstein_agrees_with_scipy_on_random_pairs_of_different_sizes():
    # oracle: scipy.stats.wasserstein_distance(a.ravel(), b.ravel()), relative 1e-9 (exact path: ~1e-16)
    rng = np.random.default_rng(0)
    a, b = _skewed_stack(rng, 6, 31, 40), _skewed_stack(rng, 5, 17, 23)
    D = W.pixel_wasserstein(a, b)
    assert D.shape == (6, 5) and D.dtype == np.float64
    for i in range(6):
        for j in range(5):
            assert _rel(D[i, j], wasserstein_distance(a[i].ravel(), b[j].ravel())) < 1e-9, (i, j)


def test_mixed_pixel_counts_within_a_set_use_the_float_path_and_agree_with_weighted_scipy():
    # histograms of images of different sizes inside one set; oracle: scipy with level weights
    rng = np.random.default_rng(2)
    ha = np.stack([np.bincount(rng.integers(0, 256, s), minlength=256) for s in (50, 700, 3001)])
    hb = np.stack([np.bincount(rng.integers(60, 90, s), minlength=256) for s in (10, 999)])
    D = W.wasserstein_from_histograms(ha, hb)
    lv = np.arange(256)
    for i in range(3):
        for j in range(2):
            assert _rel(D[i, j], wasserstein_distance(lv, lv, ha[i], hb[j])) < 1e-9
    S = W.wasserstein_from_histograms(ha, ha)                     # a set with itself, float path
    for i in range(3):
        for j in range(3):
            assert _rel(S[i, j], wasserstein_distance(lv, lv, ha[i], ha[j])) < 1e-9 or (i == j and S[i, j] == 0)


def test_closed_forms_symmetry_and_exact_zero_diagonal():
    const = np.stack([np.full((5, 7), v, np.uint8) for v in (0, 10, 255)])
    np.testing.assert_array_equal(W.pixel_wasserstein(const, const),
                                  np.abs(np.subtract.outer([0, 10, 255], [0, 10, 255])).astype(float))
    # half the pixels at 0 and half at 100 vs all at 50: every unit of mass moves 50
    half = np.zeros((1, 2, 2), np.uint8)
    half[0, 0] = 100
    assert W.pixel_wasserstein(half, np.full((1, 3, 3), 50, np.uint8))[0, 0] == 50.0
    rng = np.random.default_rng(3)
    x = _skewed_stack(rng, 7, 20, 20)
    D = W.pixel_wasserstein(x, x)
    np.testing.assert_array_equal(D, D.T)
    np.testing.assert_array_equal(np.diag(D), 0.0)
    # one set with itself (each pair computed once) gives the very numbers of two equal sets, and scipy's
    np.testing.assert_array_equal(D, W.pixel_wasserstein(x, x.copy()))
    for i, j in ((0, 1), (2, 6), (5, 3)):
        assert _rel(D[i, j], wasserstein_distance(x[i].ravel(), x[j].ravel())) < 1e-9


@pytest.mark.slow
@pytest.mark.shared
def test_real_imagenet_samples_reproduce_the_readme_figure_and_scipy(shared_data):
    folder = shared_data / "imagenet-samples"
    imgs, paths = W.load_image_folder(folder, 200, seed=0, return_paths=True)
    assert imgs.shape == (200, 224, 224) and imgs.dtype == np.uint8
    # decoding oracle: Pillow's own convert("L") of the file
    for k in (0, 57, 199):
        np.testing.assert_array_equal(imgs[k], np.asarray(Image.open(paths[k]).convert("L")))
    D = W.pixel_wasserstein(imgs, imgs)
    # imagenet-samples/README.md: default_rng(0).choice(1000, 200), all 19,900 pairs i<j: 42.72
    assert abs(W.pair_mean(D, same_set=True, include_self=False) - 42.72) < 0.005
    rng = np.random.default_rng(5)
    for i, j in rng.integers(0, 200, (15, 2)):
        assert _rel(D[i, j], wasserstein_distance(imgs[i].ravel(), imgs[j].ravel())) < 1e-9 or i == j


def test_load_grey_image_resizes_shorter_side_and_centre_crops(tmp_path):
    # 300x224 (w x h): black 38-px borders left and right must be cropped away (offset round(76/2) = 38)
    x = np.full((224, 300, 3), 255, np.uint8)
    x[:, :38] = 0
    x[:, -38:] = 0
    Image.fromarray(x).save(tmp_path / "wide.png")
    # 112x112 upscaled to 224x224
    Image.fromarray(np.full((112, 112, 3), 7, np.uint8)).save(tmp_path / "small.png")
    imgs, paths = W.load_image_folder(tmp_path, None, return_paths=True)
    assert [p.name for p in paths] == ["small.png", "wide.png"]
    assert imgs.shape == (2, 224, 224)
    assert (imgs[0] == 7).all()
    assert (imgs[1] == 255).all()
    with pytest.raises(W.WassersteinInputError, match="n: need 1 <= n <= 2"):
        W.load_image_folder(tmp_path, 3, seed=0)
    with pytest.raises(W.WassersteinInputError, match="not a folder"):
        W.load_image_folder(tmp_path / "missing", 1)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(W.WassersteinInputError, match="broken.jpg: cannot decode"):
        W.load_image_folder(tmp_path, None)


# ---------------------------------------------------------------- pair means and bootstrap


def test_pair_mean_self_pairs_as_the_paper_and_without():
    D = np.array([[0.0, 1.0, 2.0], [1.0, 0.0, 4.0], [2.0, 4.0, 0.0]])
    assert W.pair_mean(D, same_set=True, include_self=True) == pytest.approx(14 / 9, abs=1e-15)
    assert W.pair_mean(D, same_set=True, include_self=False) == pytest.approx(14 / 6, abs=1e-15)
    assert W.pair_mean(D[:2], same_set=False) == pytest.approx(8 / 6, abs=1e-15)
    with pytest.raises(W.WassersteinInputError, match="square"):
        W.pair_mean(D[:2], same_set=True)


@pytest.mark.parametrize("same, include_self", [(True, True), (True, False), (False, True)])
def test_replicate_means_equal_explicit_index_resampling(same, include_self):
    # oracle: expand D by the drawn indices and average the kept position pairs directly
    rng = np.random.default_rng(7)
    n, m = 6, 6 if same else 5
    D = rng.random((n, m))
    if same:
        D = D + D.T
        np.fill_diagonal(D, 0.0)
    Wc = rng.multinomial(n, np.full(n, 1 / n), size=20)
    Vc = None if same else rng.multinomial(m, np.full(m, 1 / m), size=20)
    got = W.replicate_pair_means(D, Wc, Vc, include_self)
    for b in range(20):
        I = np.repeat(np.arange(n), Wc[b])
        J = I if same else np.repeat(np.arange(m), Vc[b])
        E = D[np.ix_(I, J)]
        if same:  # pairs of two different images; the paper's n^2 mean holds 1/n zero self-pairs
            want = E[I[:, None] != I[None, :]].mean() * ((n - 1) / n if include_self else 1.0)
        else:
            want = E.mean()
        assert abs(got[b] - want) < 1e-12


@pytest.mark.slow
def test_bootstrap_resamples_images_not_pairs():
    # D_ij = x_i + y_j: the pair mean is mean(x) + mean(y), whose sampling sd is
    # sqrt(var x / n + var y / m); a bootstrap over pairs would give ~ sd(D) / sqrt(n m), 30x smaller.
    rng = np.random.default_rng(11)
    x, y = rng.normal(0, 3, 200), rng.normal(0, 1, 150)
    D = x[:, None] + y[None, :]
    r = W.bootstrap_pair_mean(D, same_set=False, n_boot=2000, seed=0)
    want = math.sqrt(x.var() / 200 + y.var() / 150)
    assert abs(r["se"] / want - 1) < 0.1
    assert r["ci_low"] < r["mean"] < r["ci_high"]
    assert r["mean"] == pytest.approx(x.mean() + y.mean(), abs=1e-12)
    assert r["n_pairs"] == 200 * 150
    r0 = W.bootstrap_pair_mean(D, same_set=False, n_boot=0)
    assert math.isnan(r0["ci_low"]) and math.isnan(r0["se"])
    # a set with itself: replicates centre on the full-sample estimate even for small n (no
    # downward bias from pairs of an image with its own copy), for both self-pair conventions
    z = rng.normal(0, 1, 20)
    S = np.abs(z[:, None] - z[None, :])
    for inc in (True, False):
        Wc = rng.multinomial(20, np.full(20, 1 / 20), size=4000)
        reps = W.replicate_pair_means(S, Wc, None, inc)
        assert abs(reps.mean() / W.pair_mean(S, True, inc) - 1) < 0.02
    # seeded: same numbers twice
    assert W.bootstrap_pair_mean(D, False, 50, seed=3) == W.bootstrap_pair_mean(D, False, 50, seed=3)


@pytest.mark.slow
def test_summarize_and_metrics_and_figures(tmp_path):
    rng = np.random.default_rng(4)
    ecg, nat = _skewed_stack(rng, 6, 16, 16), _skewed_stack(rng, 5, 16, 16)
    mats = W.paper_distance_matrices(ecg, nat)
    assert {k: v.shape for k, v in mats.items()} == {"ECG-ECG": (6, 6), "ImageNet-ImageNet": (5, 5),
                                                      "ECG-ImageNet": (6, 5)}
    s = W.pair_summary(mats, n_boot=100, seed=0)
    assert list(s.index) == ["ECG-ECG", "ImageNet-ImageNet", "ECG-ImageNet"]
    assert s.loc["ECG-ECG", "mean"] == pytest.approx(mats["ECG-ECG"].mean(), abs=1e-12)
    assert s.loc["ECG-ImageNet", "paper"] == 128.44 and not s.loc["ECG-ImageNet", "include_self"]
    m = W.flatten_summary(s)
    assert m["pixel_imagenet_imagenet_paper"] == 45.48
    assert m["pixel_ecg_imagenet_mean"] == pytest.approx(mats["ECG-ImageNet"].mean(), abs=1e-12)
    fig = figures.plot_supp_fig9(s, tmp_path / "fig9.png")
    ours = [p.get_height() for p in fig.axes[0].patches[:3]]
    np.testing.assert_allclose(ours, s["mean"].to_numpy())
    figures.plot_pair_histograms(mats, tmp_path / "hist.png")
    assert (tmp_path / "fig9.png").stat().st_size > 10_000 and (tmp_path / "hist.png").stat().st_size > 10_000


def test_config_rejects_bad_values():
    with pytest.raises(runs.ConfigError, match="n_ecg"):
        PW.WassersteinConfig(n_ecg=1)
    with pytest.raises(runs.ConfigError, match="n_spatial"):
        PW.WassersteinConfig(n_ecg=10, n_natural=10, n_spatial=11)
    assert PW.WassersteinConfig(spatial="false").spatial is False


# ---------------------------------------------------------------- spatial (POT)


def _dots(shape, points, value=0):
    x = np.full(shape, 255, np.uint8)
    for r, c in points:
        x[r, c] = value
    return x


@pytest.mark.slow
@pytest.mark.parametrize("d", [(0, 5), (3, 4), (-7, 0)])
def test_moved_dark_pixel_has_distance_equal_to_the_shift(d):
    a = _dots((20, 20), [(8, 8)])
    b = _dots((20, 20), [(8 + d[0], 8 + d[1])])
    k = math.hypot(*d)
    assert abs(W.emd_wasserstein(a, b, size=None) - k) < 1e-9
    # evenly spaced directions: mean cos^2 = 1/2 exactly, so sliced W2 = |d| / sqrt(2)
    assert abs(W.sliced_wasserstein(a, b, n_projections=7, seed=3, size=None) - k / math.sqrt(2)) < 1e-9
    # POT's random directions approach the same value
    r = W.sliced_wasserstein(a, b, n_projections=3000, seed=0, size=None, directions="random")
    assert abs(r / (k / math.sqrt(2)) - 1) < 0.05


def test_downsampled_grid_keeps_pixel_units():
    # an 8x8 dark block moved by 24 px on a 224 image: 28x28 cells of 8 px -> exactly 24
    a = np.full((224, 224), 255, np.uint8)
    b = a.copy()
    a[16:24, 40:48] = 0
    b[16:24, 64:72] = 0
    assert abs(W.emd_wasserstein(a, b, size=28) - 24) < 1e-9
    assert abs(W.sliced_wasserstein(a, b, size=28, n_projections=16) - 24 / math.sqrt(2)) < 1e-9
    m = W.darkness_mass(np.stack([a, b]), size=28)
    assert m.shape == (2, 28, 28) and np.allclose(m.sum((1, 2)), 1)


def test_emd_equals_optimal_assignment_of_equal_dots():
    # oracle: scipy.optimize.linear_sum_assignment on 6 equal-mass dots per image
    rng = np.random.default_rng(8)
    pa = [tuple(p) for p in rng.choice(24, (6, 2))]
    pb = [tuple(p) for p in rng.choice(24, (6, 2))]
    pa, pb = list(dict.fromkeys(pa)), list(dict.fromkeys(pb))  # distinct pixels
    pa, pb = pa[:min(len(pa), len(pb))], pb[:min(len(pa), len(pb))]
    C = cdist(np.array(pa, float), np.array(pb, float))
    r, c = linear_sum_assignment(C)
    got = W.emd_wasserstein(_dots((24, 24), pa), _dots((24, 24), pb), size=None)
    assert abs(got - C[r, c].mean()) < 1e-9


def test_spatial_stacks_same_set_matrix_and_errors():
    rng = np.random.default_rng(9)
    x = _skewed_stack(rng, 4, 16, 16)
    S = W.emd_wasserstein(x, size=8)
    np.testing.assert_allclose(S, W.emd_wasserstein(x, x, size=8), atol=1e-9)
    assert (np.diag(S) == 0).all() and np.allclose(S, S.T)
    mats = W.spatial_distance_matrices(x[:2], x[2:], "sliced", size=8, n_projections=8)
    assert mats["ECG-ImageNet"].shape == (2, 2)
    with pytest.raises(W.WassersteinInputError, match="all white"):
        W.emd_wasserstein(np.full((8, 8), 255, np.uint8), x[0, :8, :8], size=None)
    with pytest.raises(W.WassersteinInputError, match="one size"):
        W.sliced_wasserstein(x[0], x[0, :8, :8], size=None)
    with pytest.raises(W.WassersteinInputError, match="method"):
        W.spatial_distance_matrices(x, x, "l2")
