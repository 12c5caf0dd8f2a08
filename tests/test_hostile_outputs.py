"""Text from inputs in HTML and figures, and loaders given hostile files (issue 16).

Oracles: :func:`html.escape` (an id must appear escaped, never as markup); matplotlib's own text
layout (a title with ``$`` must draw, and read back verbatim); for the loaders, the typed error of
the library naming the file, no trace of torch's ``weights_only=False`` advice (message, cause or
displayed context) and a payload that never ran (its marker file is never written).
"""

from __future__ import annotations

import html
import io as _io
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from heartbeit_lib import cohorts
from heartbeit_lib.analysis import metrics
from heartbeit_lib.classify import checkpoint as ccheckpoint
from heartbeit_lib.mim import checkpoint as mcheckpoint
from heartbeit_lib.mim import tokenizers
from heartbeit_lib.report import html as rhtml
from heartbeit_lib.report import qc
from heartbeit_lib.report import tables

EVIL_ID = '<img src=x onerror="alert(1)">$\\frac{$'


class _Payload:
    """Writes a marker file when unpickled: proves whether a loader ran the pickle."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "ran"))


def test_table_to_html_escapes_cells_index_header_and_caption():
    df = pd.DataFrame({"<b>model</b>": [EVIL_ID]}, index=pd.Index(["<script>x</script>"], name="task"))
    out = tables.table_to_html(df, None, caption="<i>cap</i>")
    assert "<img" not in out and "<script>" not in out and "<b>model" not in out and "<i>cap" not in out
    assert html.escape("<img src=x") in out and html.escape("<i>cap</i>") in out


def test_saliency_browser_caption_escapes_the_record_id(monkeypatch):
    monkeypatch.setattr(rhtml, "overlay_png", lambda *a: b"")
    records = pd.DataFrame({"record_id": [EVIL_ID], "label": [1]})
    result = SimpleNamespace(runs=[SimpleNamespace(info={"task": "<t>"}, records=records, maps={"ig": None})])
    box = rhtml.browser(result)
    caption = box.children[2].value
    assert "<img" not in caption and html.escape(EVIL_ID) in caption and "&lt;t&gt;" in caption


def test_qc_figure_draws_a_dollar_record_id_verbatim(tmp_path):
    """A ``$`` in a record id (a file name) must not start mathtext: the title draws and reads back
    verbatim (before: matplotlib raised ValueError on the unbalanced ``\\frac``)."""
    x = np.random.default_rng(0).normal(0, 300, (1, 8, 2500)).astype(np.float32)
    meta = pd.DataFrame({"record_id": [EVIL_ID], "patient_id": ["p"], "site": ["s"], "label": [0]})
    store = cohorts.build_store_from_arrays(tmp_path, x, meta, salt="s")
    fig = qc.qc_figure(store, cohorts.ArrayReader(x, 500, ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")), rows=[0])
    fig.savefig(_io.BytesIO(), format="png")
    assert fig.axes[0].get_title().startswith(EVIL_ID)


def _no_unsafe_advice(err: BaseException) -> None:
    assert "weights_only=False" not in str(err) and "weights_only = False" not in str(err)
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)  # not displayed either


@pytest.mark.parametrize("content", ["pickle", "garbage", "missing", "not_a_dict"])
def test_load_best_weights_gives_a_typed_error_naming_the_file(tmp_path, content):
    marker = tmp_path / "ran.txt"
    f = tmp_path / ccheckpoint.WEIGHTS
    if content == "pickle":
        torch.save({"w": torch.zeros(1), "x": _Payload(marker)}, f)
    elif content == "garbage":
        f.write_bytes(b"PK\x03\x04 not really a zip")
    elif content == "not_a_dict":
        torch.save(torch.zeros(3), f)
    with pytest.raises(ccheckpoint.FinetuneRunError) as info:
        ccheckpoint.load_best_weights(tmp_path)
    assert str(f) in str(info.value)
    _no_unsafe_advice(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("content", ["pickle", "garbage", "missing_keys"])
def test_load_mim_model_gives_a_typed_error_naming_the_file(tmp_path, content):
    marker = tmp_path / "ran.txt"
    f = tmp_path / "last.pt"
    if content == "pickle":
        torch.save({"backbone": {}, "x": _Payload(marker)}, f)
    elif content == "garbage":
        f.write_bytes(pickle.dumps([1, 2, 3]) * 3)
    else:
        torch.save({"backbone": {}}, f)
    with pytest.raises(mcheckpoint.CheckpointError) as info:
        mcheckpoint.load_mim_model(f)
    assert str(f) in str(info.value)
    _no_unsafe_advice(info.value)
    assert not marker.exists()


def test_array_loaders_refuse_object_arrays_with_typed_errors(tmp_path):
    """``.npz`` tokenizer files and saved bootstrap indices holding an object (pickled) array."""
    npz = tmp_path / "tok.npz"
    np.savez(npz, centroids=np.array([{"a": 1}], dtype=object), kind=np.array("ecg_kmeans"))
    with pytest.raises(tokenizers.TokenizerError, match="tok.npz"):
        tokenizers.KMeansTokenizer.load(npz)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(tokenizers.TokenizerError, match="bad.npz"):
        tokenizers.KMeansTokenizer.load(tmp_path / "bad.npz")
    evil_pt = tmp_path / "tok.pt"
    torch.save({"kind": "ecg_kmeans", "x": _Payload(tmp_path / "ran.txt")}, evil_pt)
    with pytest.raises(tokenizers.TokenizerError, match="tok.pt") as info:
        tokenizers.KMeansTokenizer.load(evil_pt)
    assert "weights_only=False" not in str(info.value) and not (tmp_path / "ran.txt").exists()

    ids = ["a", "b", "c"]
    metrics.save_bootstrap_indices(tmp_path, "boot", np.zeros((4, 3), np.int64), ids)
    npy = next(tmp_path.glob("boot*.npy"))
    np.save(npy, np.array([object()] * 3, dtype=object), allow_pickle=True)
    with pytest.raises(metrics.BootstrapIndicesError, match=npy.name):
        metrics.load_bootstrap_indices(tmp_path, "boot", ids)
