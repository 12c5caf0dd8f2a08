"""heartbeit_lib.report.ecg_page: the per-ECG page (12-lead paper print + model input + decision).

Oracles and tolerances:
- limb leads: ``heartbeit_lib.signals.derive_limb_leads`` (the one lead algebra) -> exact;
- paper scale: the figure geometry itself (axes size in inches x 25.4 == mm of paper) -> 1e-9 mm,
  trace coordinates (25 mm/s, 10 mm/mV) -> 1e-9 mm;
- saliency upsampling: ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` -> 1e-5;
- literal text: matplotlib's SVG backend with ``svg.fonttype="none"`` writes text as <text> elements,
  so the id appears verbatim in one of them exactly when mathtext did not parse it;
- PDF: the page count (``/Count``) and page size (``/MediaBox``, points) written by matplotlib.
"""

from __future__ import annotations

import html
import io as stdio
import re

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from heartbeit_lib import signals
from heartbeit_lib.report import ecg_page as ep

FS = 500.0


def _signal(n_leads: int = 8, seconds: float = 4.0, seed: int = 0) -> np.ndarray:
    """(n_leads, T) microvolts: a 1 Hz 'beat' (a 1 mV narrow bump) plus noise, distinct per lead."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * FS)) / FS
    beat = 1000.0 * np.exp(-0.5 * ((t % 1.0 - 0.3) / 0.01) ** 2)
    return np.stack([beat * (1 + 0.1 * k) + rng.normal(0, 20, t.size) for k in range(n_leads)])


def _image(h: int = 64, w: int = 64) -> np.ndarray:
    img = np.full((h, w), 255, np.uint8)
    img[h // 2, :] = 0
    return img


def _page(**kw) -> Figure:
    args = dict(record_id="rec-1", score=0.7, threshold=0.4)
    args.update(kw)
    return ep.ecg_page_figure(args.pop("signal", _signal()), FS, args.pop("image", _image()), **args)


def test_eight_leads_get_the_limb_leads_of_signals_derive_limb_leads():
    x = _signal(8)
    leads = ep.twelve_leads(x)
    assert list(leads) == list(signals.TWELVE_LEADS)
    ref = signals.derive_limb_leads(x[0].astype(np.float64), x[1].astype(np.float64))
    for name in ("III", "AVR", "AVL", "AVF"):
        np.testing.assert_array_equal(leads[name], getattr(ref, name))
    np.testing.assert_array_equal(leads["V6"], x[7])


def test_twelve_leads_pass_through_and_named_rows_are_reordered():
    x = _signal(12)
    leads = ep.twelve_leads(x)
    for k, name in enumerate(signals.TWELVE_LEADS):
        np.testing.assert_array_equal(leads[name], x[k])
    names = list(reversed(signals.OUTPUT_LEADS))  # rows given in another order, mixed case
    y = _signal(8)[::-1]
    leads = ep.twelve_leads(y, [n.lower() for n in names])
    np.testing.assert_array_equal(leads["I"], y[-1])


@pytest.mark.parametrize("x,leads,match", [
    (np.zeros((8,)), None, "shape"),
    (np.zeros((5, 100)), None, "5 lead rows"),
    (np.zeros((3, 100)), ["I", "V1", "V2"], "missing"),
    (np.zeros((8, 100)), ["I", "II"], "2 names"),
    (np.full((8, 100), np.nan), None, "NaN"),
])
def test_bad_signals_raise(x, leads, match):
    with pytest.raises(ep.ECGPageError, match=match):
        ep.twelve_leads(x, leads)


def test_bad_page_inputs_raise():
    with pytest.raises(ep.ECGPageError, match="image"):
        _page(image=np.zeros((8, 8), np.float32))
    with pytest.raises(ep.ECGPageError, match="saliency"):
        _page(saliency=np.zeros((2, 2, 2)))
    with pytest.raises(ep.ECGPageError, match="fs"):
        ep.ecg_page_figure(_signal(), 0.0, _image(), record_id="r", score=0.5, threshold=0.5)


def test_paper_is_true_size_with_1_and_5_mm_grid():
    fig = _page(signal=_signal(seconds=4.0))
    paper = fig.axes[0]
    x0, x1 = paper.get_xlim()
    y0, y1 = paper.get_ylim()
    assert (x1 - x0) == pytest.approx(ep.PULSE_MM + 4.0 * ep.MM_PER_S, abs=1e-9)
    assert (y1 - y0) == pytest.approx(4 * ep.ROW_MM, abs=1e-9)
    width_in = paper.get_position().width * fig.get_figwidth()
    height_in = paper.get_position().height * fig.get_figheight()
    assert width_in * 25.4 == pytest.approx(x1 - x0, abs=1e-9)   # 1 mm on the page is 1 mm of paper
    assert height_in * 25.4 == pytest.approx(y1 - y0, abs=1e-9)
    minor = paper.xaxis.get_minor_locator().tick_values(0, 20)
    major = paper.yaxis.get_major_locator().tick_values(0, 20)
    assert np.allclose(np.diff(minor), 1.0) and np.allclose(np.diff(major), 5.0)


def test_trace_scale_is_25_mm_per_s_and_10_mm_per_mv():
    fig = Figure()
    ax = fig.add_subplot()
    v = np.array([0.0, 0.0, 1000.0, 0.0, 0.0])  # one 1 mV sample; median 0
    ep._trace(ax, v, FS, x0_mm=10.0, base_mm=50.0)
    line = ax.lines[-1]
    np.testing.assert_allclose(np.diff(line.get_xdata()), 25.0 / FS, rtol=0, atol=1e-9)
    np.testing.assert_allclose(line.get_ydata(), [50, 50, 60, 50, 50], rtol=0, atol=1e-9)
    ep._pulse(ax, base_mm=20.0)
    pulse = ax.lines[-1]
    assert np.ptp(pulse.get_ydata()) == pytest.approx(10.0)       # 1 mV
    xs = pulse.get_xdata()
    assert xs[3] - xs[1] == pytest.approx(5.0)                     # 0.2 s


def test_layout_prints_every_lead_once_and_the_rhythm_strip():
    fig = _page(signal=_signal(12))
    labels = [t.get_text() for t in fig.axes[0].texts]
    expected = ["I", "aVR", "V1", "V4", "II", "aVL", "V2", "V5", "III", "aVF", "V3", "V6", "II"]
    assert sorted(labels[:-1]) == sorted(expected) and "25 mm/s" in labels[-1]
    n = _signal(12).shape[1]
    traces = [ln for ln in fig.axes[0].lines if len(ln.get_xdata()) > 10]
    lengths = sorted(len(ln.get_xdata()) for ln in traces)
    assert lengths == [n // 4] * 12 + [n]  # 12 quarter-record segments + the full rhythm strip


def test_saliency_is_upsampled_like_torch_bilinear():
    rng = np.random.default_rng(1)
    smap = rng.random((7, 5))
    out = ep._upsample(smap, (64, 48))
    ref = torch.nn.functional.interpolate(torch.tensor(smap)[None, None], size=(64, 48), mode="bilinear",
                                          align_corners=False)[0, 0].numpy()
    ref = (ref - ref.min()) / (ref.max() - ref.min())
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5)
    assert not ep._upsample(np.ones((3, 3)), (9, 9)).any()  # constant map -> zeros


def test_saliency_panel_has_a_colour_bar_and_the_trace_on_top():
    fig = _page(saliency=np.random.default_rng(0).random((14, 14)))
    ax_in = fig.axes[1]
    assert len(ax_in.images) == 3 and len(fig.axes) == 3  # grey, map, trace ink; + colour bar axes
    ink = ax_in.images[2].get_array()
    assert ink.shape == (64, 64, 4) and ink[32, :, 3].min() == 1.0 and ink[0, :, 3].max() == 0.0
    assert len(_page().axes) == 2  # no map, no colour bar


def _svg_text(fig: Figure) -> str:
    """The contents of the SVG's <text> elements (not its comments, which quote every string raw)."""
    buf = stdio.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buf, format="svg")
    return " | ".join(html.unescape(t) for t in re.findall(r"<text\b[^>]*>(.*?)</text>", buf.getvalue(), re.S))


@pytest.mark.slow
@pytest.mark.parametrize("record_id", ["a$b_c^d", "$x_1^2$ and $y$", r"id\alpha{}%#&<>"])
def test_record_id_and_note_are_printed_literally(record_id):
    svg = _svg_text(_page(record_id=record_id, note=record_id + " note", decision="$flag$"))
    assert f"ECG {record_id}" in svg
    assert f"{record_id} note" in svg and "$flag$" in svg
    # the test can fail: the same string through mathtext does not appear verbatim
    fig = Figure()
    fig.text(0.1, 0.5, "$x_1^2$")
    assert "$x_1^2$" not in _svg_text(fig)


@pytest.mark.parametrize("decision,score,expected", [(None, 0.7, "POSITIVE"), (None, 0.1, "negative"),
                                                     (True, 0.1, "POSITIVE"), ("refer", 0.1, "refer")])
def test_title_states_score_threshold_and_decision(decision, score, expected):
    fig = _page(score=score, decision=decision)
    texts = " | ".join(t.get_text() for t in fig.texts)
    assert "ECG rec-1" in texts and f"score {score:.3f}" in texts and "threshold 0.400" in texts
    assert f"decision: {expected}" in texts
    assert (">=" in texts) == (score >= 0.4)


@pytest.mark.slow
def test_png_and_multi_page_pdf(tmp_path):
    fig = _page()
    png = ep.save_png(fig, tmp_path / "one.png", dpi=50)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pages = [ep.ECGPage(signal=_signal(seed=k), fs=FS, image=_image(), record_id=f"r{k}", score=0.1 * k,
                        threshold=0.25, saliency=np.ones((4, 4)) if k else None) for k in range(3)]
    pdf = ep.save_pdf(pages, tmp_path / "all.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and re.search(rb"/Count 3\b", pdf)
    box = [float(v) for v in re.search(rb"/MediaBox \[\s*([\d.\s]+)\]", pdf).group(1).split()]
    assert box[2] == pytest.approx(fig.get_figwidth() * 72, abs=0.01)  # true size: inches x 72 points
    with pytest.raises(ep.ECGPageError, match="no pages"):
        ep.save_pdf([], tmp_path / "none.pdf")
    assert not (tmp_path / "none.pdf").exists()


@pytest.mark.slow
@pytest.mark.shared
def test_real_ptbxl_record_page(ptbxl_root, tmp_path):
    from heartbeit_lib import io, render

    rec = io.read_ecg(ptbxl_root / "records500" / "00000" / "00008_hr.hea")
    full = signals.preprocess(rec.signal, rec.fs, rec.leads, out_leads=signals.TWELVE_LEADS,
                              n_samples=rec.signal.shape[1])[0]
    image = render.render_ecg(signals.preprocess(rec.signal, rec.fs, rec.leads)[0], 224)
    fig = ep.ecg_page_figure(full, rec.fs, image, record_id=rec.meta["record_id"], score=0.9, threshold=0.5,
                             saliency=np.random.default_rng(0).random((14, 14)))
    out = ep.save_png(fig, tmp_path / "page.png", dpi=80)
    assert out.stat().st_size > 50_000  # a drawn page, not a blank one (a blank page is ~10 kB)


@pytest.mark.parametrize("layout,n_labels", [("stack8", 8), ("grid4x2", 8), ("clinical3x4", 13), (None, 0)])
def test_model_input_lead_names_follow_the_render_layout(layout, n_labels):
    fig = Figure()
    ax = fig.add_subplot()
    ep.draw_model_input(ax, _image(224, 224), None, layout)
    assert len(ax.texts) == n_labels  # oracle: render.layout_geometry's panels (12 leads + rhythm II in 3x4)
