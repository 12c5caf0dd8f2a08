"""A one-page, self-contained HTML summary that a person reads top to bottom without clicking.

Plain data in, one HTML file out: a title, a paragraph on what the data is (and an optional notice,
e.g. "synthetic data: says nothing clinical"), then sections of text, tables (pandas DataFrames) and
figures (image files with captions), then a list of links. The demo's last page and the 07_predict
report fill it; this module knows nothing about runs.

* Every text that comes from inputs (title, paragraphs, captions, table headers and cells, link
  texts and targets) is escaped with :func:`html.escape`; the page has no scripts.
* Figures are embedded as base64 ``data:`` URIs by default (one file to mail or archive), or linked
  by their path relative to the page (``embed=False``; URL-quoted), for pages with many large images.
  A missing figure, or a file type a browser cannot show, is an error naming the file, never a
  broken image on the page.
* Links are relative paths or ``http(s)`` URLs; any other scheme (``javascript:``, ``data:``) is
  refused.
"""

from __future__ import annotations

import base64
import html
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from heartbeit_lib.utils import atomic_write_text

#: image types a browser shows, by file suffix
MIME_TYPES: dict[str, str] = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
                              ".gif": "image/gif", ".svg": "image/svg+xml", ".webp": "image/webp"}
LINK_SCHEMES: tuple[str, ...] = ("", "http", "https")

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1100px;margin:auto;padding:1em 1.5em;
     color:#222;line-height:1.45}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.15em;margin-top:1.6em}
.notice{background:#fff4d6;border-left:4px solid #e0a800;padding:.6em .9em;margin:1em 0}
.figures{display:flex;flex-wrap:wrap;gap:.5em 1.5em;align-items:flex-start}
figure{margin:.6em 0;flex:0 1 auto;max-width:100%} figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.92em;color:#444;margin-top:.3em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.92em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right} th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left} caption{caption-side:top;text-align:left;font-weight:600;
     padding-bottom:.3em}
"""


class SummaryPageError(ValueError):
    """Bad input to the summary page (the message names the file or field and the reason)."""


@dataclass(frozen=True)
class PageFigure:
    """An image file (PNG, JPEG, GIF, SVG, WebP) and its caption."""

    path: str | os.PathLike
    caption: str = ""


@dataclass(frozen=True)
class PageTable:
    """A table: its cells are shown as ``str(value)`` (floats with ``float_format``; NaN as an en dash)."""

    frame: pd.DataFrame
    caption: str = ""
    float_format: str = "{:.3f}"


@dataclass(frozen=True)
class Section:
    """A heading, paragraphs (a str is one paragraph), then tables, then figures."""

    heading: str
    text: str | Sequence[str] = ()
    tables: Sequence[PageTable] = ()
    figures: Sequence[PageFigure] = ()


@dataclass(frozen=True)
class Link:
    """``href``: a path relative to the page, or an http(s) URL; ``text``: what the reader sees."""

    href: str
    text: str = ""


def _paragraphs(text: str | Sequence[str]) -> str:
    items = [text] if isinstance(text, str) else list(text)
    return "".join(f"<p>{html.escape(t)}</p>" for t in items if t)


def _cell(value, float_format: str) -> str:
    """Escaped text of one cell: missing values (None, NaN, NA) as an en dash, floats formatted."""
    if pd.api.types.is_scalar(value) and pd.isna(value):
        return "\u2013"
    if isinstance(value, (float, np.floating)):
        return html.escape(float_format.format(value))
    return html.escape(str(value))


def _label(key) -> str:
    """A header / index label; MultiIndex tuples are joined with ' / '."""
    return html.escape(" / ".join(map(str, key)) if isinstance(key, tuple) else str(key))


def table_html(table: PageTable) -> str:
    """``<table>`` of ``table.frame``; the index is shown unless it is a default RangeIndex."""
    df = table.frame
    if not isinstance(df, pd.DataFrame):
        raise SummaryPageError(f"table {table.caption!r}: expected a pandas DataFrame, got {type(df).__name__}")
    show_index = not isinstance(df.index, pd.RangeIndex)
    head = ([f"<th>{_label(df.index.name or '')}</th>"] if show_index else []) + [
        f"<th>{_label(c)}</th>" for c in df.columns]
    rows = []
    for key, row in zip(df.index, df.itertuples(index=False, name=None)):
        cells = ([f"<th>{_label(key)}</th>"] if show_index else []) + [
            f"<td>{_cell(v, table.float_format)}</td>" for v in row]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    caption = f"<caption>{html.escape(table.caption)}</caption>" if table.caption else ""
    return (f"<table>{caption}<thead><tr>{''.join(head)}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _img_src(path: Path, page_dir: Path, embed: bool) -> str:
    """The ``src`` of an image: a data URI, or the path relative to the page, URL-quoted."""
    if not path.is_file():
        raise SummaryPageError(f"figure {path}: no such file")
    mime = MIME_TYPES.get(path.suffix.lower())
    if mime is None:
        raise SummaryPageError(f"figure {path}: {path.suffix!r} is not an image type a browser shows "
                               f"({sorted(MIME_TYPES)})")
    if embed:
        return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"
    rel = Path(os.path.relpath(path.resolve(), page_dir.resolve())).as_posix()
    return urllib.parse.quote(rel)


def figure_html(fig: PageFigure, page_dir: Path, embed: bool = True) -> str:
    """``<figure>`` with the image and its caption (also the image's alt text)."""
    path = Path(fig.path)
    src = _img_src(path, page_dir, embed)
    alt = fig.caption or path.name
    caption = f"<figcaption>{html.escape(fig.caption)}</figcaption>" if fig.caption else ""
    return f'<figure><img src="{html.escape(src)}" alt="{html.escape(alt)}">{caption}</figure>'


def link_html(link: Link | tuple[str, str] | str) -> str:
    """``<li><a>`` for a :class:`Link`, an ``(href, text)`` pair or a bare href."""
    if isinstance(link, str):
        link = Link(link)
    elif isinstance(link, tuple):
        link = Link(*link)
    scheme = urllib.parse.urlsplit(link.href).scheme.lower()
    if scheme not in LINK_SCHEMES:
        raise SummaryPageError(f"link {link.href!r}: scheme {scheme!r} is not allowed (relative paths, http, https)")
    return f'<li><a href="{html.escape(link.href)}">{html.escape(link.text or link.href)}</a></li>'


def summary_html(title: str, intro: str | Sequence[str], sections: Sequence[Section] = (),
                 links: Sequence[Link | tuple[str, str] | str] = (), *, page_dir: str | os.PathLike = ".",
                 notice: str = "", embed: bool = True) -> str:
    """The page as a string (see the module docstring).

    Parameters
    ----------
    title : page title and top heading.
    intro : what the data is (one paragraph, or several).
    sections : shown in order; each heading, text, tables, figures.
    links : the list at the end ("Runs and files").
    page_dir : the folder the page will be written to (relative figure paths and links start there).
    notice : a highlighted warning under the intro (e.g. that the data are synthetic), or "".
    embed : True -> figures as base64 data URIs; False -> relative paths.
    """
    page_dir = Path(page_dir)
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>", _paragraphs(intro)]
    if notice:
        parts.append(f'<div class="notice">{html.escape(notice)}</div>')
    for sec in sections:
        parts.append(f"<section><h2>{html.escape(sec.heading)}</h2>{_paragraphs(sec.text)}")
        parts.extend(table_html(t) for t in sec.tables)
        if sec.figures:  # side by side while they fit the width, one per row when wide
            parts.append('<div class="figures">' + "".join(figure_html(f, page_dir, embed) for f in sec.figures)
                         + "</div>")
        parts.append("</section>")
    if links:
        parts.append("<section><h2>Runs and files</h2><ul>" + "".join(link_html(k) for k in links) + "</ul></section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_summary_page(path: str | os.PathLike, title: str, intro: str | Sequence[str],
                       sections: Sequence[Section] = (), links: Sequence[Link | tuple[str, str] | str] = (), *,
                       notice: str = "", embed: bool = True) -> Path:
    """Write :func:`summary_html` to ``path`` (atomically). Figure paths are file paths (absolute or from the
    working directory); link hrefs are relative to the page's folder."""
    path = Path(path)
    page = summary_html(title, intro, sections, links, page_dir=path.parent, notice=notice, embed=embed)
    return atomic_write_text(path, page)
