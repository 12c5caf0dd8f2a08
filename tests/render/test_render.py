"""Tests of heartbeit_lib.render.

Oracles:
- parity: the matplotlib reference (``render_ecg_reference``: Agg at 4x, PIL bicubic resize) on real
  PTB-XL 500 Hz records (``../shared/data/ptbxl``, read with ``io.read_ecg``, preprocessed with
  ``signals.preprocess``); thresholds from the issue: mean |difference| <= 8 grey levels per image
  and IoU >= 0.8 of the dark masks (< 128) after a 3x3 dilation.
- numpy vs torch: equal to within 1 grey level (the same float32 operations, integer coverage).
- geometry: the darkness centroid of a constant signal sits where the layout's scale puts it
  (``y0 + (hi - v) / mv_per_px``), to 0.05 px for the fast renderer, 0.15 px for matplotlib; the
  clinical paper grid's 5-mm lines sit every 0.2 s (100 samples) at 25 mm/s.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from heartbeit_lib import render
from heartbeit_lib.render import numpy_renderer

N_PARITY = 20
MAD_MAX = 8.0
IOU_MIN = 0.8


@pytest.fixture(scope="module")
def ptbxl_x(ptbxl_root) -> np.ndarray:
    """(20, 8, 2500) float32 microvolts: the first 20 PTB-XL 500 Hz records, paper preprocessing."""
    from heartbeit_lib import io
    from heartbeit_lib import signals

    db = io.load_ptbxl(ptbxl_root, 500)
    out = []
    for path in db["path"].iloc[:N_PARITY]:
        rec = io.read_ecg(path)
        out.append(signals.preprocess(rec.signal, rec.fs, rec.leads)[0])
    return np.stack(out).astype(np.float32)


@pytest.fixture(scope="module")
def ptbxl_ref(ptbxl_x) -> np.ndarray:
    return render.render_ecg_reference(ptbxl_x)


def _toy(n: int = 3, t: int = 2500, seed: int = 0) -> np.ndarray:
    """(n, 8, t) microvolts: a spiky ECG-like wave plus noise (seeded)."""
    rng = np.random.default_rng(seed)
    tt = np.arange(t) / 500.0
    beat = np.exp(-(((tt % 0.8) - 0.4) / 0.012) ** 2) * 1200.0 - np.exp(-(((tt % 0.8) - 0.6) / 0.06) ** 2) * 200.0
    x = beat[None, None, :] * rng.uniform(0.3, 1.2, (n, 8, 1)) + rng.normal(0, 30, (n, 8, t))
    return x.astype(np.float32)


def _darkness_centroid(img: np.ndarray, y0: int, y1: int) -> float:
    """Centroid (continuous y, pixel centres at i + 0.5) of 255 - img over rows [y0, y1)."""
    dark = (255.0 - img[y0:y1].astype(np.float64)).sum(axis=1)
    return float(y0 + ((np.arange(y1 - y0) + 0.5) * dark).sum() / dark.sum())


# ------------------------------------------------------------------------------------ parity


@pytest.mark.slow
@pytest.mark.shared
def test_parity_with_matplotlib_on_ptbxl(ptbxl_x, ptbxl_ref):
    fast = render.render_ecg(ptbxl_x)
    assert fast.shape == ptbxl_ref.shape == (N_PARITY, 224, 224) and fast.dtype == np.uint8
    m = render.parity_metrics(ptbxl_ref, fast)
    assert m["mean_abs_diff"].max() <= MAD_MAX, m["mean_abs_diff"]
    assert m["iou_dilated"].min() >= IOU_MIN, m["iou_dilated"]
    # the images are not trivially white: both draw a trace of similar extent
    dark_ref, dark_fast = (ptbxl_ref < 128).mean(), (fast < 128).mean()
    assert 0.02 < dark_ref < 0.2 and abs(dark_fast - dark_ref) < 0.3 * dark_ref


@pytest.mark.shared
@pytest.mark.parametrize("layout", ["grid4x2", "clinical3x4"])
def test_parity_other_layouts(ptbxl_x, layout):
    x = ptbxl_x[:4]
    m = render.parity_metrics(render.render_ecg_reference(x, layout=layout), render.render_ecg(x, layout=layout))
    assert m["mean_abs_diff"].max() <= MAD_MAX and m["iou_dilated"].min() >= IOU_MIN, m


@pytest.mark.shared
def test_parity_detects_a_wrong_rendering(ptbxl_x, ptbxl_ref):
    """The metric can fail: leads in reverse order do not pass."""
    wrong = render.render_ecg(ptbxl_x[:, ::-1])
    m = render.parity_metrics(ptbxl_ref, wrong)
    assert m["iou_dilated"].mean() < IOU_MIN


@pytest.mark.shared
@pytest.mark.parametrize("layout,size,style", [
    ("stack8", 224, {}), ("grid4x2", 224, {}), ("clinical3x4", 224, {}), ("stack8", (100, 300), {"clip": False}),
    ("stack8", 512, {"oversample": 3, "linewidth": 1.7}), ("clinical3x4", 160, {"mv_per_px": 0.05}),
])
def test_torch_matches_numpy(ptbxl_x, layout, size, style):
    x = ptbxl_x[:8]
    ref = render.render_ecg(x, size, layout, **style).astype(np.int16)
    got = render.render_ecg_torch(torch.from_numpy(x), size, layout, **style)
    assert got.dtype == torch.uint8 and tuple(got.shape) == ref.shape
    assert np.abs(got.numpy().astype(np.int16) - ref).max() <= 1
    as_float = render.render_ecg_torch(torch.from_numpy(x), size, layout, out_dtype=torch.float32, **style)
    assert torch.equal(as_float, got.to(torch.float32) / 255.0)


# ------------------------------------------------------------------------------------ geometry


@pytest.mark.parametrize("renderer,tol", [(render.render_ecg, 0.05), (render.render_ecg_reference, 0.15)])
def test_constant_1mv_lands_on_the_scaled_row(renderer, tol):
    mv_per_px = 0.13  # 1 mV -> 7.69 px above the band centre: a fractional row
    x = np.full((8, 2500), 1000.0, np.float32)
    img = renderer(x, 224, mv_per_px=mv_per_px)
    geo = render.layout_geometry("stack8", 224, mv_per_px=mv_per_px)
    for k, ((y0, y1), (lo, hi)) in enumerate(zip(geo["bands"], geo["ylim_mv"])):
        expected = y0 + (hi - 1.0) / mv_per_px
        assert abs(_darkness_centroid(img[:, 10:-10], y0, y1) - expected) < tol, k
        assert (img[y0:y1, 10:-10] < 255).any(axis=1).sum() <= 3  # a 1-px line touches at most 2-3 rows


@pytest.mark.parametrize("renderer,style,tol", [
    (render.render_ecg, {}, 0.25), (render.render_ecg, {"oversample": 8}, 0.07),   # tol: 1 / (2 oversample) px
    (render.render_ecg_reference, {}, 0.15)])
def test_sample_lands_on_its_column(renderer, style, tol):
    """Sample t of a full-width panel is drawn at x = (t + 0.5) * W / T (xlim = (-0.5, T - 0.5))."""
    x = np.zeros((8, 2500), np.float32)
    t = 1237
    x[:, t] = 1800.0                                              # a one-sample spike in every lead
    img = renderer(x, 224, **style)
    y0, y1 = render.layout_geometry("stack8", 224)["bands"][2]
    dark = (255.0 - img[y0:y0 + 8].astype(np.float64)).sum(axis=0)   # rows above the baseline: spike only
    got = ((np.arange(224) + 0.5) * dark).sum() / dark.sum()
    assert abs(got - (t + 0.5) * 224 / 2500) < tol


def test_clinical_scale_is_10_mm_per_mv_at_25_mm_per_s():
    x = np.full((8, 2500), 1000.0, np.float32)                  # I = II = 1 mV: III = 0, aVR = -1, aVL = 0.5
    img = render.render_ecg(x, 224, "clinical3x4", grid=False)
    px_per_mm = 224 / (5.0 * 25.0)
    geo = render.layout_geometry("clinical3x4", 224)
    y0, y1 = geo["bands"][0]
    centre = (y0 + y1) / 2
    # row 0 = I (1 mV), aVR (-1 mV), V1 (1 mV), V4 (1 mV): columns of a quarter each
    cols = [(0, 56), (56, 112)]
    for (c0, c1), mv in zip(cols, (1.0, -1.0)):
        got = _darkness_centroid(img[:, c0 + 5:c1 - 5], y0, y1)
        assert abs(got - (centre - mv * 10 * px_per_mm)) < 0.05


def test_clipping_keeps_each_lead_in_its_band():
    geo = render.layout_geometry("stack8", 224)
    x = np.zeros((8, 2500), np.float32)
    x[3] = 5000.0                                                # 5 mV > the 2 mV top of the range
    geo = render.layout_geometry("stack8", 224, ylim_mv=(-2, 2))    # the paper's range (default: +-4 mV)
    clipped = render.render_ecg(x, 224, clip=True, ylim_mv=(-2, 2))
    y0, y1 = geo["bands"][3]
    rows = np.flatnonzero((clipped[y0:y1] < 200).any(axis=1)) + y0
    assert rows.min() == y0 and rows.max() == y0                 # drawn at the band's top edge, half cut
    assert (clipped[y0, 5:-5] < 140).all() and (clipped[y0, 5:-5] > 100).all()   # half of a 1-px line
    unclipped = render.render_ecg(x, 224, clip=False, ylim_mv=(-2, 2))  # 5 mV: 3 mV above band 3 = band 2's rows
    expected = y0 + (2.0 - 5.0) / geo["mv_per_px"][3]               # 63.0, band 2's own baseline is at 70
    assert abs(_darkness_centroid(unclipped[:, 10:-10], int(expected) - 4, int(expected) + 4) - expected) < 0.05
    ref = render.render_ecg_reference(x, 224, clip=True, ylim_mv=(-2, 2))
    # matplotlib clips too (the bilinear resize blurs the edge line into the one row above)
    assert np.array_equal(ref[y0 - 4:y0 - 1], np.full((3, 224), 255, np.uint8))


@pytest.mark.slow
def test_lead_order_top_to_bottom():
    base = np.zeros((8, 2500), np.float32)
    blank = render.render_ecg(base)
    blank_ref = render.render_ecg_reference(base)
    geo = render.layout_geometry("stack8", 224)
    assert [p["lead"] for p in geo["panels"]] == list(render.LEADS)
    spikes = np.zeros(2500, np.float32)
    spikes[200::400] = 1500.0
    for k in range(8):
        x = base.copy()
        x[k] = spikes
        for img, white in ((render.render_ecg(x), blank), (render.render_ecg_reference(x), blank_ref)):
            changed = np.flatnonzero((img != white).any(axis=1))
            y0, y1 = geo["bands"][k]
            assert changed.size and changed.min() >= y0 and changed.max() < y1, (k, changed)


def test_clinical_layout_derives_limb_leads_from_i_and_ii():
    x = np.zeros((8, 2500), np.float32)
    blank = render.render_ecg(x, 224, "clinical3x4")
    x[0, 100:110] = 1200.0                                        # a bump in lead I only (first quarter)
    img = render.render_ecg(x, 224, "clinical3x4")
    geo = render.layout_geometry("clinical3x4", 224)
    changed = {p["lead"] for p in geo["panels"]
               if p["band"] < 3 and (img[geo["bands"][p["band"]][0]:geo["bands"][p["band"]][1], p["x0"]:p["x1"]]
                                     != blank[geo["bands"][p["band"]][0]:geo["bands"][p["band"]][1], p["x0"]:p["x1"]]).any()}
    assert changed == {"I", "III"}                              # the bump is in the first column: I, II, III
    x[0] = 0.0
    x[1, 100:110] = 1200.0                                        # lead II: shows in II, III and the rhythm strip
    img = render.render_ecg(x, 224, "clinical3x4")
    r0, r1 = geo["bands"][3]
    assert (img[r0:r1] != blank[r0:r1]).any()
    assert sorted(render.layout_geometry("clinical3x4")["panels"][i]["lead"] for i in range(12)) == sorted(
        ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"])


def test_paper_grid_only_on_clinical_and_under_the_trace():
    x = np.zeros((1, 8, 2500), np.float32)
    stack8 = render.render_ecg(x, 224, "stack8")[0]
    assert np.array_equal(stack8, render.render_ecg(x, 224, "stack8", grid=False)[0])   # no grid by default
    assert not np.array_equal(stack8, render.render_ecg(x, 224, "stack8", grid=True)[0])
    clinical = render.render_ecg(x, 224, "clinical3x4")[0]
    no_grid = render.render_ecg(x, 224, "clinical3x4", grid=False)[0]
    assert set(np.unique(no_grid[no_grid > 250])) == {255}
    assert (clinical < 255).mean() > 0.1                         # grid lines every 5 mm = 8.96 px
    trace = no_grid < 128
    assert (clinical[trace] <= no_grid[trace] + 1).all()         # the trace stays dark over the grid
    # 5-mm lines every 100 samples = 8.96 px, 1 px wide; 1-mm lines (1.79 px apart) are not drawn.
    # Row 4 lies between the horizontal lines at y = 0 and 8.96 and far from the band-0 trace (y = 28).
    centres = np.arange(26) * 100 * 224 / 2500
    x_mid = np.arange(224) + 0.5
    dark = 255.0 - clinical[4]
    near = (np.abs(x_mid[:, None] - centres[None]) < 1).any(axis=1)
    assert (dark[~near] == 0).all()
    for c in centres[1:-1]:
        sel = np.abs(x_mid - c) < 1
        assert abs((x_mid[sel] * dark[sel]).sum() / dark[sel].sum() - c) < 0.05, c
        assert abs(dark[sel].sum() - (255 - 200)) <= 2            # one pixel's worth of grey-200 ink


# ------------------------------------------------------------------------------------ API behaviour


@pytest.mark.slow
def test_deterministic_and_batch_equals_single():
    x = _toy(n=2 * numpy_renderer._CHUNK + 3)                             # crosses chunk boundaries
    a = render.render_ecg(x)
    assert np.array_equal(a, render.render_ecg(x))
    for i in (0, numpy_renderer._CHUNK, len(x) - 1):
        assert np.array_equal(a[i], render.render_ecg(x[i]))
    t = render.render_ecg_torch(torch.from_numpy(x))
    assert torch.equal(t[5], render.render_ecg_torch(torch.from_numpy(x[5])))
    assert render.render_ecg(x[:1], channels=3).shape == (1, 224, 224, 3)
    ref = render.render_ecg_reference(x[:2])
    assert np.array_equal(ref[1], render.render_ecg_reference(x[1]))   # figure reuse changes nothing


def test_input_checks_name_the_problem():
    x = _toy(1)[0]
    with pytest.raises(render.RenderError, match="expected"):
        render.render_ecg(x[:6])
    bad = x.copy()
    bad[2, 7] = np.nan
    with pytest.raises(render.RenderError, match="NaN"):
        render.render_ecg(bad)
    with pytest.raises(render.RenderError, match="unknown style"):
        render.render_ecg(x, linewdith=2)
    with pytest.raises(render.RenderError, match="layout"):
        render.render_ecg(x, layout="stack12")
    with pytest.raises(render.RenderError, match="ylim_mv"):
        render.render_ecg(x, ylim_mv=(1, -1))
    with pytest.raises(render.RenderError, match="size"):
        render.render_ecg(x, size=4)
    with pytest.raises(render.RenderError, match="linewidth"):
        render.render_ecg(x, size=64, linewidth=9)
    with pytest.raises(ValueError):                                # RenderError is a ValueError
        render.render_ecg_torch(x)


# ------------------------------------------------------------------------------------ datasets


@pytest.fixture(scope="module")
def toy_store(tmp_path_factory):
    from heartbeit_lib import cohorts

    x = _toy(n=24, seed=1)
    meta = pd.DataFrame({"record_id": [f"r{i:03d}" for i in range(24)], "patient_id": [f"p{i // 2}" for i in range(24)],
                         "site": "toy", "label": np.arange(24) % 2})
    return cohorts.build_store_from_arrays(tmp_path_factory.mktemp("store"), x, meta, task="custom", seed=0)


def test_dataset_feeds_a_model_forward_backward(toy_store):
    from heartbeit_lib.models.registry import create_backbone

    torch.manual_seed(0)
    idx = toy_store.indices("train")
    ds = render.RenderedECGDataset(toy_store, idx, size=32, normalize={"mean": [0.5] * 3, "std": [0.5] * 3})
    img, lab = ds[1]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32 and lab.dtype == torch.int64
    assert -1.0 <= float(img.min()) and float(img.max()) <= 1.0 and float(img.max()) == 1.0   # white -> (1 - .5)/.5
    assert int(lab) == int(toy_store.manifest["label"].iloc[idx[1]])
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=False)   # batched through __getitems__
    images, labels = next(iter(loader))
    assert images.shape == (4, 3, 32, 32)
    assert torch.equal(images[1], img)                              # batched path == single item
    expected = render.render_ecg(toy_store.signals(idx[:4]), 32)
    assert torch.allclose(images[:, 0], (torch.from_numpy(expected).float() / 255 - 0.5) / 0.5)
    backbone = create_backbone("micro", img_size=32)
    head = torch.nn.Linear(backbone.num_features, 2)
    loss = torch.nn.functional.cross_entropy(head(backbone(images)), labels)
    loss.backward()
    grads = [p.grad for p in backbone.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_signal_dataset_and_gpu_style_transform_match(toy_store):
    idx = toy_store.indices("train")[:5]
    images, _ = render.RenderedECGDataset(toy_store, idx, size=48, channels=1).render_batch(range(5))
    sigs = torch.stack([s for s, _ in render.ECGSignalDataset(toy_store, idx).__getitems__(list(range(5)))])
    from_transform = render.RenderTransform(size=48, channels=1)(sigs)
    assert from_transform.shape == images.shape == (5, 1, 48, 48)
    assert (from_transform - images).abs().max() <= 1 / 255 + 1e-6


def test_export_writes_png_folders(toy_store, tmp_path):
    out = tmp_path / "pngs"
    assert render.main(["export", str(toy_store.root), str(out), "--size", "64", "--split", "train,test"]) == 0
    index = pd.read_csv(out / "index.csv", dtype={"record_id": str})
    man = toy_store.manifest
    assert len(index) == int(man["split"].isin(["train", "test"]).sum())
    row = index.iloc[0]
    png = np.asarray(Image.open(out / row["path"]))
    assert png.shape == (64, 64) and row["path"].startswith(f"{row['split']}/{row['label']}/")
    assert np.array_equal(png, render.render_ecg(toy_store.signals([row["row"]])[0], 64))
    with pytest.raises(render.RenderError, match="split"):
        render.export_pngs(toy_store.root, tmp_path / "x", splits=["nope"])


def test_comparison_figure_is_written(tmp_path):
    path = render.save_comparison_figure(_toy(2), tmp_path / "render", titles=["a", "b"])
    assert path.exists() and path.parent == tmp_path / "render"
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 500


@pytest.mark.parametrize("ylim", [None, (-3.0, 3.0), (-1.0, 5.0)])
def test_trace_row_linear_in_mv_inside_the_range_and_clipped_outside(ylim):
    """Issue 18 s.2. Oracle: the geometry rule row = y0 + (hi - v) / mv_per_px (a straight line in v) to
    0.05 px for constant leads inside the range; beyond it the ink sits on the band edge row, identical for
    every value beyond (clipped). None = the default range, -4..+4 mV."""
    style = {} if ylim is None else {"ylim_mv": ylim}
    geo = render.layout_geometry("stack8", 224, **style)
    (y0, y1), (lo, hi) = geo["bands"][3], geo["ylim_mv"][3]
    assert (lo, hi) == (ylim or render.DEFAULT_YLIM_MV)
    inside = np.linspace(lo + 0.3, hi - 0.3, 7)
    rows = []
    for v in inside:
        x = np.zeros((8, 2500), np.float32)
        x[3] = v * 1000.0
        rows.append(_darkness_centroid(render.render_ecg(x, 224, **style)[:, 10:-10], y0, y1))
    np.testing.assert_allclose(rows, y0 + (hi - inside) / geo["mv_per_px"][3], atol=0.05)
    slope = np.polyfit(inside, rows, 1)[0]
    assert abs(slope + 1 / geo["mv_per_px"][3]) < 1e-3  # linear: one slope, -px per mV
    beyond = []
    for v in (hi + 0.5, hi + 3.0, lo - 0.5, lo - 3.0):
        x = np.zeros((8, 2500), np.float32)
        x[3] = v * 1000.0
        beyond.append(render.render_ecg(x, 224, **style)[y0:y1, 10:-10])
    assert np.array_equal(beyond[0], beyond[1]) and np.array_equal(beyond[2], beyond[3])   # clipped
    assert (beyond[0][0] < 200).all() and (beyond[2][-1] < 200).all()                        # on the edge rows


def test_clip_fractions_counts_leads_and_ecgs():
    """Oracle: hand count. ECG 0 one lead at 4.5 mV, ECG 1 one lead at -2.5 mV, ECG 2 within 1 mV."""
    x = np.zeros((3, 8, 100), np.float32)
    x[0, 3, 50], x[1, 0, 10], x[2] = 4500.0, -2500.0, 900.0
    got = render.clip_fractions(x)  # default +-4 mV: only ECG 0 clips
    assert got == {"ylim_mv": [-4.0, 4.0], "clipped_lead_fraction": 1 / 24, "clipped_ecg_fraction": 1 / 3}
    got = render.clip_fractions(x, (-2, 2))
    assert got["clipped_lead_fraction"] == 2 / 24 and got["clipped_ecg_fraction"] == 2 / 3
    with pytest.raises(render.RenderError, match="ylim_mv"):
        render.clip_fractions(x, (2, -2))
