"""Issue 27 items 3, 4, 6, 9, 10: the salt never reaches an output, special and huge files are typed errors,
spreadsheet cells are neutralised.

Oracles: the bytes of every file a build writes (the salt must not occur in them), the error classes of
:mod:`heartbeit_lib.io`, wall-clock and peak-memory bounds (``resource.getrusage`` of a child process), and
OWASP's CSV-injection rule (a cell starting with ``= + - @``, tab or CR is prefixed with ``'``).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.io

import heartbeit_lib
from heartbeit_lib import cohorts, io, safety
from heartbeit_lib.cohorts import ids

BROKEN = Path(__file__).resolve().parent / "data" / "broken"
OK = BROKEN / "ok"
SALT = "0123456789abcdef0123456789abcdef"


def _private_salt(path: Path, text: str = SALT) -> Path:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def _wfdb_copy(folder: Path, name: str = "rec") -> Path:
    """A copy of the ok WFDB record as ``<folder>/<name>.hea/.dat``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.dat").write_bytes((OK / "wfdb_mini.dat").read_bytes())
    (folder / f"{name}.hea").write_text((OK / "wfdb_mini.hea").read_text().replace("wfdb_mini", name))
    return folder / f"{name}.hea"


# ---------------------------------------------------------------- item 3: the salt


def test_a_header_symlinked_to_the_salt_never_puts_it_into_an_output(tmp_path):
    salt_file = _private_salt(tmp_path / "salt")
    root = tmp_path / "data"
    _wfdb_copy(root)
    (root / "readme.hea").symlink_to(salt_file)
    src = cohorts.wfdb_source(root, cohorts.load_task("unlabelled"))
    store = cohorts.build_store(src.inputs, src.reader, tmp_path / "run", task_cfg="unlabelled", preprocess_kw={},
                                salt_file=salt_file, workers=1, progress=False)
    readme = store.rejects[store.rejects["record_id"] == "readme"]
    assert len(readme) == 1 and "outside data_root" in readme["reason"].iloc[0]
    for p in (tmp_path / "run").rglob("*"):
        if p.is_file():
            assert SALT.encode() not in p.read_bytes() and SALT[:12].encode() not in p.read_bytes(), p


def test_a_signal_file_symlinked_outside_the_data_root_is_not_read(tmp_path):
    hea = _wfdb_copy(tmp_path / "data")
    (tmp_path / "outside.dat").write_bytes((hea.parent / "rec.dat").read_bytes())
    (hea.parent / "rec.dat").unlink()
    (hea.parent / "rec.dat").symlink_to(tmp_path / "outside.dat")
    with pytest.raises(io.UnsafePathError, match="resolves outside"):
        io.read_ecg(hea)


def test_header_errors_quote_at_most_a_short_escaped_excerpt(tmp_path):
    (tmp_path / "x.hea").write_text(SALT + "\n")
    with pytest.raises(io.HeaderSyntaxError) as e:
        io.read_ecg(tmp_path / "x.hea")
    assert SALT not in str(e.value) and SALT[:16] in str(e.value)


@pytest.mark.parametrize("kind", ["directory", "dangling", "fifo", "dev_zero", "world_readable", "huge", "two_lines"])
def test_the_salt_file_must_be_a_private_regular_file(tmp_path, kind):
    p = tmp_path / "salt"
    if kind == "directory":
        p.mkdir()
    elif kind == "dangling":
        p.symlink_to(tmp_path / "nowhere")
    elif kind == "fifo":
        os.mkfifo(p, 0o600)
    elif kind == "dev_zero":
        p = Path("/dev/zero")
    elif kind == "world_readable":
        p.write_text(SALT)
        p.chmod(0o644)
    elif kind == "huge":
        _private_salt(p, "a" * 10_000)
    else:
        _private_salt(p, "a\nb")
    t0 = time.perf_counter()
    with pytest.raises(ids.SaltFileError, match=str(p)):
        ids.read_or_create_salt(tmp_path / "run", p)
    assert time.perf_counter() - t0 < 5  # no hang
    if kind in ("directory", "dangling", "fifo", "dev_zero"):
        os.environ[ids.SALT_ENV] = str(p)
        try:
            with pytest.raises(ids.SaltFileError):
                ids.read_or_create_salt(tmp_path / "run")
        finally:
            del os.environ[ids.SALT_ENV]


def test_a_private_salt_file_reads():
    pass  # covered by tests/cohorts/test_cohorts.py::test_salt_file_and_missing_patient_ids (mode 0600)


# ---------------------------------------------------------------- item 4: spreadsheet cells


def test_csv_cells_that_start_a_formula_are_neutralised(tmp_path):
    df = pd.DataFrame({"record_id": ["=HYPERLINK(\"http://x\")", "+cmd|' /C calc'!A0", "@SUM(1+1)", "-2+3",
                                     "\tx", "ok", "a=b"], "score": [0.1, -0.5, 0.2, 0.3, 0.4, 0.5, 0.6]})
    safety.write_csv(df, tmp_path / "p.csv", index=False)
    back = pd.read_csv(tmp_path / "p.csv")
    assert back["record_id"].tolist() == ["'=HYPERLINK(\"http://x\")", "'+cmd|' /C calc'!A0", "'@SUM(1+1)", "'-2+3",
                                          "'\tx", "ok", "a=b"]
    assert back["score"].tolist() == df["score"].tolist()  # numbers stay numbers (-0.5 too)


def test_every_csv_the_project_writes_goes_through_the_one_helper():
    """Oracle: the source (ast) of the package: no DataFrame ``.to_csv`` to a file outside safety.write_csv."""
    pkg = Path(heartbeit_lib.__file__).parent
    bad = []
    for path in pkg.rglob("*.py"):
        if path.name == "safety.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "to_csv" and (node.args or any(
                    k.arg == "path_or_buf" for k in node.keywords)):
                bad.append(f"{path.relative_to(pkg)}:{node.lineno}")
    assert bad == []


# ---------------------------------------------------------------- items 6, 9, 10: special and huge files


def _child_peak_mb(code: str, timeout: float = 60) -> tuple[str, float, float]:
    """(output, seconds, peak MB that ``code`` allocated: ``tracemalloc``, which numpy reports to) of ``code`` run
    in a fresh interpreter after importing the package."""
    wrapper = ("import sys, tracemalloc\nfrom heartbeit_lib import io\ntracemalloc.start()\n" + code +
               "\nprint('PEAK', tracemalloc.get_traced_memory()[1] / 2**20)")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "PYTHONPATH": str(Path(heartbeit_lib.__file__).parents[1])})
    dt = time.perf_counter() - t0
    peak = float(out.stdout.rsplit("PEAK", 1)[1]) if "PEAK" in out.stdout else float("nan")
    return out.stdout + out.stderr, dt, peak


@pytest.mark.parametrize("what", ["fifo_hea", "fifo_xml", "fifo_dat", "dir_dat", "dot_dat", "fifo_npy"])
def test_special_files_are_typed_errors_never_hangs(tmp_path, what):
    hea = _wfdb_copy(tmp_path)
    if what == "fifo_hea":
        target = tmp_path / "f.hea"
        os.mkfifo(target)
    elif what == "fifo_xml":
        target = tmp_path / "f.xml"
        os.mkfifo(target)
    elif what == "fifo_npy":
        target = tmp_path / "f.npy"
        os.mkfifo(target)
    else:
        (tmp_path / "rec.dat").unlink()
        if what == "fifo_dat":
            os.mkfifo(tmp_path / "rec.dat")
        elif what == "dir_dat":
            (tmp_path / "rec.dat").mkdir()
        else:  # the header names "." as its signal file
            hea.write_text(hea.read_text().replace("rec.dat", "."))
        target = hea
    t0 = time.perf_counter()
    with pytest.raises(io.ECGReadError):
        io.read_ecg(target, **({"fs": 500, "leads": ["I", "II"]} if what == "fifo_npy" else {}))
    assert time.perf_counter() - t0 < 5


def test_a_fifo_in_a_scanned_data_root_is_a_reject_not_a_hang(tmp_path):
    _wfdb_copy(tmp_path / "data")
    os.mkfifo(tmp_path / "data" / "pipe.hea")
    src = cohorts.wfdb_source(tmp_path / "data", cohorts.load_task("unlabelled"))
    store = cohorts.build_store(src.inputs, src.reader, tmp_path / "run", task_cfg="unlabelled", preprocess_kw={},
                                salt="s", workers=1, progress=False)
    pipe = store.rejects[store.rejects["record_id"] == "pipe"]
    assert pipe["error_type"].tolist() == ["UnreadableFileError"] and len(store) + len(store.rejects) == 2


def test_a_header_with_50000_signals_is_refused_at_once(tmp_path):
    lines = ["big 50000 500 5000"] + ["b.dat 16" for i in range(50_000)]  # 450 kB, under the header cap
    (tmp_path / "big.hea").write_text("\n".join(lines) + "\n")
    t0 = time.perf_counter()
    with pytest.raises(io.FileTooLargeError, match="50000 signals"):
        io.read_ecg(tmp_path / "big.hea")
    assert time.perf_counter() - t0 < 5  # > 60 s before


def test_a_sparse_dat_without_a_sample_count_is_refused_before_allocating(tmp_path):
    hea = _wfdb_copy(tmp_path)
    text = hea.read_text().splitlines()
    first = text[0].split()
    text[0] = " ".join(first[:3])  # no sample count: the file size decides
    hea.write_text("\n".join(text) + "\n")
    with open(tmp_path / "rec.dat", "r+b") as f:
        f.truncate(512 * 2**20)  # sparse: 512 MiB of zeros on disk for free
    out, dt, peak = _child_peak_mb(
        "from heartbeit_lib import io\ntry:\n    io.read_ecg(sys.argv[0] if False else %r)\n"
        "except io.ECGReadError as e:\n    print('TYPED', type(e).__name__)" % str(hea))
    assert "TYPED FileTooLargeError" in out, out
    assert peak < 50 and dt < 30  # 2 GiB and a MemoryError before


def test_a_dat_is_read_only_as_far_as_its_header_declares(tmp_path):
    hea = _wfdb_copy(tmp_path)
    n = int(hea.read_text().split()[3])
    ref = io.read_ecg(hea)
    with open(tmp_path / "rec.dat", "r+b") as f:
        f.truncate(400 * 2**20)  # 400 MiB beyond the declared samples (sparse)
    out, dt, peak = _child_peak_mb(
        "from heartbeit_lib import io\nr = io.read_ecg(%r)\nprint('SHAPE', r.signal.shape)" % str(hea))
    assert f"SHAPE {ref.signal.shape}" in out and ref.signal.shape[1] == n, out
    assert peak < 50  # the whole 400 MiB file was read before


def test_a_small_mat_declaring_a_huge_array_is_refused_before_loading(tmp_path):
    hea = tmp_path / "m.hea"
    hea.write_text((OK / "mat_mini.hea").read_text().replace("mat_mini", "m"))
    scipy.io.savemat(tmp_path / "m.mat", {"val": np.zeros((12, 3_000_000), np.int16)}, do_compression=True)
    assert (tmp_path / "m.mat").stat().st_size < 5 * 2**20
    out, dt, peak = _child_peak_mb(
        "from heartbeit_lib import io\ntry:\n    io.read_ecg(%r)\n"
        "except io.ECGReadError as e:\n    print('TYPED', type(e).__name__)" % str(hea))
    assert "TYPED FileTooLargeError" in out, out
    assert peak < 50


@pytest.mark.parametrize("exponent", ["+-1", "--1", "-+2", "1e1"])
def test_muse_sample_exponent_that_is_not_an_integer_is_typed(tmp_path, exponent):
    text = (OK / "muse_mini.xml").read_text()
    assert "<SampleExponent>" in text or "<SampleBase>" in text
    text = text.replace("<SampleBase>", f"<SampleExponent>{exponent}</SampleExponent><SampleBase>", 1) \
        if "<SampleExponent>" not in text else \
        text.replace(text[text.index("<SampleExponent>"):text.index("</SampleExponent>")],
                     f"<SampleExponent>{exponent}", 1)
    (tmp_path / "x.xml").write_text(text)
    with pytest.raises(io.UnknownSamplingRateError, match="SampleExponent"):
        io.read_ecg(tmp_path / "x.xml")


@pytest.mark.parametrize("literal", ["{[1]: 2}", "[" * 300 + "]" * 300, "{'a': {'b': 1}}", "{1: 2}",
                                     "{'SR': float('nan')}", "{'SR': 1e999}", "x" * 5000, "{'a': 1, " * 200 + "}"])
def test_hostile_scp_codes_literals_are_typed(literal):
    with pytest.raises(io.MetadataError, match="scp_codes"):
        io.parse_scp_codes(literal, "db.csv", "ecg_id 1")


def test_a_file_name_that_is_not_utf8_is_a_reject(tmp_path):
    root = tmp_path / "data"
    _wfdb_copy(root)
    hea = _wfdb_copy(root, "x")
    hea.rename(root / os.fsdecode(b"bad\xff.hea"))  # the header (and its record id) named in non-UTF-8 bytes
    src = cohorts.wfdb_source(root, cohorts.load_task("unlabelled"))
    store = cohorts.build_store(src.inputs, src.reader, tmp_path / "run", task_cfg="unlabelled", preprocess_kw={},
                                salt="s", workers=1, progress=False)
    bad_rows = store.rejects[store.rejects["reason"].str.contains("UTF-8")]
    assert len(bad_rows) == 1 and bad_rows["record_id"].iloc[0] == "bad\\xff"
    assert len(store) + len(store.rejects) == 2
    pd.read_csv(tmp_path / "run" / "rejects.csv")  # written, readable


def test_a_hostile_task_name_is_text_in_the_markdown_table_and_its_html_rendering():
    """Oracle: nbconvert's own Markdown -> HTML filter (what the executed 04 notebook's HTML shows)."""
    from nbconvert.filters.markdown_mistune import markdown2html_mistune

    from heartbeit_lib.report.tables import table_to_markdown
    evil = "<img src=x onerror=alert(1)>"
    cells = pd.DataFrame({"AUROC": ["0.70 [0.60-0.80]", "[click](javascript:alert(1))"]},
                         index=pd.Index([evil, "a|b *c*"], name="task"))
    md = table_to_markdown(cells, caption=evil)
    page = markdown2html_mistune(md)
    assert "<img" not in page and "javascript:" not in page.replace("(javascript:", "") and "<a " not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "<em>" not in page
    assert md.count("\n") == 2 + 2 + 2  # caption, blank, header, rule, two rows: no cell broke the table


def test_a_250_character_record_id_makes_a_short_distinct_file_name():
    """Item 9: 07 crashed after scoring on a 250-character record id (file name too long)."""
    from heartbeit_lib.render import export as render
    from heartbeit_lib.pipeline import predict
    a, b = "x" * 249 + "a", "x" * 249 + "b"
    for name in (predict._safe_name, render._safe_name):
        na, nb = name(a), name(b)
        assert len(na) <= 100 and na != nb
        assert name("ok-id_1.2") == "ok-id_1.2" and name("../..") not in ("..", "", ".")
    assert len(f"999_{predict._safe_name('é' * 250)}.png".encode()) < 255


def test_a_symlinked_folder_leaving_the_data_root_is_never_read(tmp_path):
    _wfdb_copy(tmp_path / "secret", "leak")
    root = tmp_path / "data"
    _wfdb_copy(root)
    (root / "linked").symlink_to(tmp_path / "secret")
    src = cohorts.wfdb_source(root, cohorts.load_task("unlabelled"))
    leaked = src.inputs[src.inputs["record_id"].str.contains("leak")]
    assert (leaked["reject"].str.contains("outside data_root")).all()  # listed or not, never read
    assert not any("secret" in str(f) for f in src.files)


def test_a_60_mib_xml_is_refused_before_it_is_read(tmp_path):
    p = tmp_path / "big.xml"
    with open(p, "wb") as f:
        f.write(b"<RestingECG>")
        f.truncate(60 * 2**20)
    t0 = time.perf_counter()
    with pytest.raises(io.FileTooLargeError, match="over the cap"):
        io.read_ecg(p)
    assert time.perf_counter() - t0 < 1  # 19-27 s and up to 2.4 GB before


def _outside_root_per_path(paths, root):
    """The per-path definition (the code before folders were listed once): lstat, stat and resolve of each file
    and sibling."""
    top, out = root.resolve(), []
    for s in paths:
        p, why = Path(s), ""
        for f in (p, *(p.with_suffix(e) for e in (".hea", ".dat", ".mat") if e != p.suffix)):
            if (f.is_symlink() or f.exists()) and top not in f.resolve().parents:
                why = f"{f.name} resolves outside data_root {root} (a symlink or '..' leaving it): not read"
                break
        out.append(why)
    return out


def _record_files_per_path(paths):
    out = set()
    for s in paths:
        p = Path(s)
        if p.is_file():
            out.add(p)
            out.update(q for q in (p.with_suffix(".dat"), p.with_suffix(".mat")) if q.is_file())
    return sorted(out)


def test_listed_folders_refuse_and_keep_what_per_path_checks_do(tmp_path):
    """``sources._outside_root`` and ``_record_files`` list each folder once; oracle: the per-path stat/resolve
    definition above, on regular files, siblings, links inside and outside the root (file, sibling, folder),
    a dangling link, a FIFO, a '..' path and a missing file."""
    from heartbeit_lib.cohorts import sources
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.dat").write_bytes(b"s")
    for name in ("a.xml", "f.hea", "f.dat", "f.mat", "sub/g.hea", "sub/g.dat", "h.hea"):
        (root / name).write_bytes(b"x")
    (root / "b.xml").symlink_to(root / "a.xml")
    (root / "c.xml").symlink_to(outside / "secret.dat")
    (root / "h.dat").symlink_to(outside / "secret.dat")
    (root / "e.xml").symlink_to(tmp_path / "nowhere")
    (root / "linked").symlink_to(outside)
    os.mkfifo(root / "p.hea")
    paths = [str(root / n) for n in ("a.xml", "b.xml", "c.xml", "e.xml", "f.hea", "sub/g.hea", "h.hea", "p.hea",
                                     "linked/secret.dat", "sub/../a.xml", "sub/../../outside/secret.dat", "none.hea")]
    got = sources._outside_root(paths, root)
    assert got == _outside_root_per_path(paths, root)
    assert [bool(w) for w in got] == [False, False, True, True, False, False, True, False, True, False, True, False]
    assert sources._record_files(paths) == _record_files_per_path(paths)


def test_input_stamps_stat_each_file_and_list_no_folder(tmp_path, monkeypatch):
    """``build.input_stamps`` (taken per shard) stats the files of its rows and lists no folder: a listing per shard
    of a folder of a million records would cost the whole folder for each shard. Oracle: ``os.stat`` of the files
    that exist, by hand; a missing record, a dangling link and an in-memory path give what the docstring says."""
    from heartbeit_lib.cohorts import build
    root = tmp_path / "root"
    root.mkdir()
    for name in ("a.xml", "f.hea", "f.dat"):
        (root / name).write_bytes(b"x" * len(name))
    (root / "a.dat").symlink_to(tmp_path / "nowhere")
    monkeypatch.setattr(os, "scandir", lambda *a: pytest.fail("input_stamps listed a folder"))
    rows = [{"source_path": str(root / n)} for n in ("a.xml", "f.hea", "none.xml")] + [{"source_path": "demo:3"}]

    def stamp(name):
        st = os.stat(root / name)
        return [str(root / name), st.st_size, st.st_mtime_ns]

    assert build.input_stamps(rows) == [[stamp("a.xml")], [stamp("f.hea"), stamp("f.dat")],
                                        [[str(root / "none.xml"), -1, -1]], [["demo:3", -1, -1]]]


class _Listing(list):
    """What ``os.scandir`` gives for a folder of ``names`` (entries with a ``name``), as a context manager."""

    def __init__(self, names):
        super().__init__(type("Entry", (), {"name": n})() for n in names)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_sibling_is_skipped_only_when_surely_absent():
    """``sources._may_exist`` (False: no stat call) and ``sources._sibling_names``; oracle: ``Path.with_suffix``."""
    from heartbeit_lib.cohorts import sources
    listed = ("k.xml", "K.HEA", "straße.xml", "x\u037ey.dat", "\u212a.mat")
    with pytest.MonkeyPatch.context() as mp:  # the listing of a folder holding those names
        mp.setattr(os, "scandir", lambda folder: _Listing(listed))
        _, names, folded = sources._folder_entries({}, "any")
    assert not sources._may_exist("k.dat", names, folded)
    assert sources._may_exist("k.hea", names, folded)  # K.HEA: the same file where case does not count
    assert sources._may_exist("x;y.dat", names, folded)  # U+037E is ';' to a normalisation-insensitive file system
    assert sources._may_exist("K.mat", names, folded) and sources._may_exist("k.mat", names, folded)  # the Kelvin sign
    assert sources._may_exist("k.xml", names, folded) and sources._may_exist("é.hea", names, folded)  # listed; not ASCII
    assert sources._may_exist("k.dat", {}, None)  # unreadable folder: always asked
    for name in ("a.xml", "a.tar.gz", ".bashrc", "noext", "x.", "sub/r.hea"):
        p = Path(name)
        assert sources._sibling_names(p, (".hea", ".dat")) == [p.with_suffix(e).name for e in (".hea", ".dat")]
    with pytest.raises(ValueError):
        sources._sibling_names(Path("."), (".hea",))
