"""heartbeit_lib.report.summary_page: the one-page HTML summary, checked as text and in a real browser.

Oracles:
- structure and escaping: the standard library's ``html.parser`` (tags, attributes and text as a
  browser's tokenizer sees them);
- embedded images: ``base64.b64decode`` of the data URI == the file's bytes; linked images: the
  URL-unquoted ``src`` resolved from the page's folder is the file;
- loading: headless Chromium (the ``chromium`` fixture of conftest.py; Debian: ``apt-get install -y
  chromium``) opens the page from ``file://``; a load-event probe appended to a copy of the page
  records ``complete`` and ``naturalWidth`` of every <img>, compared with the PNG widths read by PIL;
  a screenshot of the page differs from one of a blank page. A page with a deleted image is the
  negative control (the probe reports width 0). Without chromium the browser tests skip locally and
  FAIL under ``CI=true``.
"""

from __future__ import annotations

import base64
import html
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from PIL import Image

from heartbeit_lib.report import summary_page as sp

EVIL = "<script>alert('x')</script> & \"quoted\""


class _Tags(HTMLParser):
    """Start tags with their attributes, and the page's text, as html.parser tokenizes them."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def all(self, name: str) -> list[dict]:
        return [a for t, a in self.tags if t == name]


def _png(path: Path, width_in: float = 3.0, k: int = 1) -> Path:
    fig = Figure(figsize=(width_in, 2.0))
    fig.add_subplot().plot(np.arange(10) ** k)
    fig.savefig(path, dpi=50)
    return path


@pytest.fixture
def figures(tmp_path) -> list[sp.PageFigure]:
    d = tmp_path / "figs & more"  # a space and an ampersand in the path: quoted in links
    d.mkdir()
    return [sp.PageFigure(_png(d / f"fig {k}.png", 2.0 + k, k + 1), f"Caption {k} {EVIL}") for k in range(3)]


def _sections(figures) -> list[sp.Section]:
    table = pd.DataFrame({"model": ["HeartBEiT", EVIL], "AUROC": [0.91234, np.nan], "n": [120, 80]})
    return [sp.Section("Table 2", "AUROC with 95% CI.", [sp.PageTable(table, "Table 2: AUROC")]),
            sp.Section("Curves", ["First paragraph.", "Second."], figures=figures)]


def _page(tmp_path, figures, embed=True, name="page.html") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return sp.write_summary_page(path, f"Demo {EVIL}",
                                 f"What the data is: {EVIL}", _sections(figures),
                                 [("runs/01 a&b.html", f"run {EVIL}"), "https://example.org/x?a=1&b=2"],
                                 notice="Synthetic data: says nothing clinical.", embed=embed)


# ------------------------------------------------------------------------ as text
def test_every_input_text_is_escaped(tmp_path, figures):
    page = _page(tmp_path, figures).read_text()
    tags = _Tags(page)
    assert not tags.all("script")  # no script element from any input
    assert "<script>" not in page and html.escape(EVIL) in page
    text = "".join(tags.text)
    assert f"Demo {EVIL}" in text and f"What the data is: {EVIL}" in text and f"run {EVIL}" in text
    assert f"Caption 0 {EVIL}" in text
    assert [a["alt"] for a in tags.all("img")] == [f"Caption {k} {EVIL}" for k in range(3)]


def test_table_cells_and_headers(tmp_path):
    df = pd.DataFrame([[0.5, "a"], [np.nan, "b"]], columns=pd.MultiIndex.from_tuples([("AUROC", "val"), ("x", "y")]),
                      index=pd.Index(["m1", "m2"], name="model"))
    tags = _Tags(sp.table_html(sp.PageTable(df, "cap", float_format="{:.2f}")))
    cells = [t for t in tags.text if t.strip()]
    assert cells == ["cap", "model", "AUROC / val", "x / y", "m1", "0.50", "a", "m2", "\u2013", "b"]
    plain = _Tags(sp.table_html(sp.PageTable(pd.DataFrame({"a": [1, None], "b": np.float32([0.25, 1])}))))
    assert [t for t in plain.text if t.strip()] == ["a", "b", "1.000", "0.250", "\u2013", "1.000"]  # no RangeIndex
    with pytest.raises(sp.SummaryPageError, match="DataFrame"):
        sp.table_html(sp.PageTable([1, 2]))


def test_embedded_images_are_the_files(tmp_path, figures):
    tags = _Tags(_page(tmp_path, figures, embed=True).read_text())
    srcs = [a["src"] for a in tags.all("img")]
    for src, fig in zip(srcs, figures):
        head, data = src.split(",", 1)
        assert head == "data:image/png;base64"
        assert base64.b64decode(data) == Path(fig.path).read_bytes()


def test_linked_images_resolve_from_the_page_folder(tmp_path, figures):
    page = _page(tmp_path, figures, embed=False, name="sub/page.html")  # figures live in a sibling folder
    tags = _Tags(page.read_text())
    for a, fig in zip(tags.all("img"), figures):
        assert not a["src"].startswith("data:") and " " not in a["src"]
        assert (page.parent / urllib.parse.unquote(a["src"])).resolve() == Path(fig.path).resolve()
    hrefs = [a["href"] for a in tags.all("a")]
    assert hrefs == ["runs/01 a&b.html", "https://example.org/x?a=1&b=2"]


@pytest.mark.parametrize("name,match", [("missing.png", "no such file"), ("notes.txt", "not an image type")])
def test_bad_figures_raise_naming_the_file(tmp_path, name, match):
    (tmp_path / "notes.txt").write_text("not an image")
    fig = sp.PageFigure(tmp_path / name)
    with pytest.raises(sp.SummaryPageError, match=match) as e:
        sp.summary_html("t", "i", [sp.Section("s", figures=[fig])], page_dir=tmp_path)
    assert str(Path(fig.path)) in str(e.value)


@pytest.mark.parametrize("href", ["javascript:alert(1)", "data:text/html,<b>x</b>", "JavaScript:x"])
def test_links_with_other_schemes_are_refused(href):
    with pytest.raises(sp.SummaryPageError, match="scheme"):
        sp.summary_html("t", "i", links=[href])


# ------------------------------------------------------------------------ in a browser
@pytest.mark.slow
@pytest.mark.parametrize("embed", [True, False])
def test_page_loads_with_every_image_in_chromium(tmp_path, figures, embed, chromium):
    page = _page(tmp_path, figures, embed=embed)
    widths = [Image.open(f.path).size[0] for f in figures]
    assert chromium.image_states(page) == [[True, w] for w in widths]


@pytest.mark.slow
def test_a_missing_image_is_detected_by_the_browser_check(tmp_path, figures, chromium):
    page = _page(tmp_path, figures, embed=False)
    Path(figures[1].path).unlink()  # negative control: the check can fail
    assert [w for _, w in chromium.image_states(page)] == [
        Image.open(figures[0].path).size[0], 0, Image.open(figures[2].path).size[0]]


@pytest.mark.slow
def test_screenshot_is_not_blank(tmp_path, figures, chromium):
    page = _page(tmp_path, figures, embed=True)
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    shots = []
    for src in (page, blank):
        png = chromium.screenshot(src, tmp_path / f"{src.stem}.png", size=(1200, 2000))
        shots.append(np.asarray(Image.open(png).convert("L"), dtype=np.int16))
    page_px, blank_px = shots
    assert page_px.shape == blank_px.shape == (2000, 1200)
    assert np.ptp(blank_px) == 0  # a blank page is one colour
    assert (np.abs(page_px - blank_px) > 30).mean() > 0.01  # text, tables and figures drawn
