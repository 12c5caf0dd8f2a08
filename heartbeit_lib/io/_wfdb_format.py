"""WFDB format parsing (wfdb-python's ``io/_header.py`` role): the ``.hea`` header
(:func:`read_wfdb_header`) and the digital samples of ``.dat`` / ``.mat`` signal files.
:mod:`heartbeit_lib.io.wfdb` turns them into a microvolt :class:`~heartbeit_lib.io.ECGRecord`."""

from __future__ import annotations

import datetime as _dt
import math
import os
import re
import shutil
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import scipy.io

from .errors import (EmptyFileError, FileTooLargeError, HeaderSignalMismatchError, HeaderSyntaxError,
                     LeadMismatchError, MissingFileError, MissingWaveformError, UnknownSamplingRateError,
                     UnsafePathError, UnsupportedFormatError)
from .record import (FS_MAX_HZ, FS_MIN_HZ, MAX_HEADER_BYTES, MAX_LINE_CHARS, MAX_SIGNALS, MAX_TOTAL_SAMPLES, excerpt,
                     open_regular, read_bytes)


WFDB_SUFFIXES = (".hea", ".dat", ".mat")
#: Every signal-file format code of the WFDB specification.
_WFDB_FORMATS = {"8", "16", "24", "32", "61", "80", "160", "212", "310", "311", "508", "516", "524"}
# Formats decoded here with numpy: code -> (numpy dtype, offset added to the raw value).
_FAST_FORMATS = {"16": ("<i2", 0), "61": (">i2", 0), "80": ("u1", -128), "32": ("<i4", 0), "24": (None, 0)}
# Bytes per sample of the formats whose file size can be predicted.
_FMT_BYTES = {"8": 1.0, "80": 1.0, "16": 2.0, "61": 2.0, "160": 2.0, "24": 3.0, "32": 4.0, "212": 1.5, "310": 4 / 3, "311": 4 / 3}
# Digital value that marks an invalid sample (WFDB convention; wfdb.rdrecord maps it to NaN).
FMT_INVALID = {"80": -(2**7), "310": -(2**9), "311": -(2**9), "212": -(2**11), "16": -(2**15),
                "61": -(2**15), "160": -(2**15), "24": -(2**23), "32": -(2**31)}

# A decimal number. Unambiguous (no two quantifiers compete for the same digits), so a fullmatch
# over a long token is linear; ``\d+\.?\d*`` backtracked quadratically (20,000 digits: > 10 s).
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
#: Longest numeric token of a header (rate, gain, counts): more is no number a recorder writes.
MAX_NUMBER_CHARS = 40


def _wfdb_base(path: Path) -> Path:
    return path.with_suffix("") if path.suffix.lower() in WFDB_SUFFIXES else path


def _comment_fields(comments: Iterable[str]) -> dict[str, str]:
    """``Key: value`` comments -> {key: value}, first occurrence wins. Split with ``str.partition``
    (a regex with lazy groups took > 10 s on a value followed by 100,000 spaces)."""
    out: dict[str, str] = {}
    for c in comments:
        key, colon, value = c.partition(":")
        key = key.strip()
        if colon and re.fullmatch(r"[A-Za-z][A-Za-z0-9_ ]*", key) and key not in out:
            out[key] = value.strip()
    return out


def norm_sex(s: str | None) -> str | None:
    if not s:
        return None
    s = s.strip().lower()
    return "M" if s in ("m", "male") else "F" if s in ("f", "female") else None


def parse_dx(value: str | None) -> list[str] | None:
    """``#Dx:`` items in order, empty items and duplicates dropped; None when the line is absent."""
    if value is None:
        return None
    out: list[str] = []
    for item in value.split(","):
        item = item.strip()
        if item and item not in out:
            out.append(item)
    return out


def _wfdb_datetime(tokens: Sequence[str]) -> str | None:
    """Base time/date of a record line -> ISO 8601. WFDB writes ``HH:MM:SS DD/MM/YYYY``; the CinC
    headers write ``DD-Mon-YYYY HH:MM:SS`` (date first), which wfdb 4.3 mis-parses, so parse here."""
    date = time = None
    for tok in tokens:
        if time is None and re.fullmatch(r"\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?", tok):
            parts = [float(p) for p in tok.split(":")] + [0.0]
            try:
                time = _dt.time(int(parts[0]), int(parts[1]), int(parts[2]))
            except ValueError:
                return None
        elif date is None:
            for fmt in ("%d/%m/%Y", "%d-%b-%Y"):
                try:
                    date = _dt.datetime.strptime(tok, fmt).date()
                    break
                except ValueError:
                    continue
    if date is None:
        return None
    return _dt.datetime.combine(date, time or _dt.time(0, 0)).isoformat()


def _parse_signal_line(hea: Path, k: int, line: str) -> dict[str, Any]:
    """One WFDB signal line: ``file fmt[xspf][:skew][+offset] [gain[(baseline)][/units] [adcres
    [adczero [initval [checksum [blocksize [description]]]]]]]``."""
    tok = line.split()
    where = f"signal line {k + 1} {line[:80]!r}"
    if len(tok) < 2:
        raise HeaderSyntaxError(hea, f"{where}: needs at least a file name and a format")
    long_tok = next((t for t in tok[1:8] if len(t) > MAX_NUMBER_CHARS), None)
    if long_tok is not None:
        raise HeaderSyntaxError(hea, f"{where}: field {excerpt(long_tok)} is over {MAX_NUMBER_CHARS} characters")
    _check_signal_file_name(hea, where, tok[0])
    m = re.fullmatch(r"(\d+)(?:x(\d+))?(?::(\d+))?(?:\+(\d+))?", tok[1])
    if not m:
        raise HeaderSyntaxError(hea, f"{where}: format {excerpt(tok[1])} is not WFDB syntax")
    if m.group(1) not in _WFDB_FORMATS:
        raise UnsupportedFormatError(hea, f"{where}: {excerpt(m.group(1))} is not a WFDB signal format")
    sig: dict[str, Any] = {
        "file": tok[0], "fmt": m.group(1), "spf": int(m.group(2) or 1), "skew": int(m.group(3) or 0),
        "offset": int(m.group(4) or 0), "gain": None, "baseline": None, "units": None, "adczero": 0,
        "initval": None, "checksum": None, "name": " ".join(tok[8:]) if len(tok) > 8 else "",
    }
    if len(tok) > 2:
        g = re.fullmatch(rf"({_NUM})(?:\(([-+]?\d+)\))?(?:/(\S+))?", tok[2])
        if not g:
            raise HeaderSyntaxError(hea, f"{where}: gain {excerpt(tok[2])} is not 'gain(baseline)/units'")
        sig["gain"] = float(g.group(1))
        sig["baseline"] = int(g.group(2)) if g.group(2) is not None else None
        sig["units"] = g.group(3)
    for i, key in ((3, "adcres"), (4, "adczero"), (5, "initval"), (6, "checksum"), (7, "blocksize")):
        if len(tok) > i:
            if not re.fullmatch(r"[-+]?\d+", tok[i]):
                raise HeaderSyntaxError(hea, f"{where}: {key} {excerpt(tok[i])} is not an integer")
            sig[key] = int(tok[i])
    if sig["baseline"] is None:
        sig["baseline"] = sig["adczero"]  # WFDB: baseline defaults to the ADC zero
    return sig


def _check_signal_file_name(hea: Path, where: str, name: str) -> None:
    """Signal files stay in the header's folder: no absolute path, no ``..``, no backslash (a
    header must not make the reader open a file elsewhere on the machine)."""
    parts = name.split("/")
    if any(len(p.encode("utf-8", "replace")) > 255 for p in parts):  # open() would raise ENAMETOOLONG
        raise HeaderSyntaxError(hea, f"{where}: signal file name {excerpt(name)} is over 255 bytes")
    if name.startswith("/") or "\\" in name or ".." in parts or (parts and parts[0].endswith(":")):
        raise UnsafePathError(hea, f"{where}: signal file {excerpt(name, 40)} is outside the header's folder")


def read_wfdb_header(path: str | os.PathLike) -> dict[str, Any]:
    """Parse and check a WFDB header (``.hea``) without reading the signal.

    A strict parser of the WFDB header syntax (wfdb 4.3's parser costs ~15 ms per header under
    pandas 3 - more than reading the signal - and accepts things we must refuse). Refuses a
    missing sampling rate (WFDB would silently assume 250 Hz), a signal-line count that
    disagrees with the record line, multi-segment records; repairs the one quirk of the CinC
    Georgia headers (``E07500.mat`` as the record name on line 1), noting it in ``flags``.

    Returns
    -------
    dict with ``header_path``, ``base`` (record path without extension), ``record_name``,
    ``n_sig``, ``fs`` (Hz), ``sig_len`` (None when absent), ``acquisition_time``, ``signals``
    (one dict per signal line: ``file``, ``fmt``, ``spf``, ``skew``, ``offset``, ``gain``,
    ``baseline``, ``units``, ``initval``, ``checksum``, ``name``), ``comments``, ``fields``
    (``Key: value`` comments), ``flags``, ``fixed_text`` (repaired header text, or None).
    """
    path = Path(path)
    base = _wfdb_base(path)
    hea = base.with_name(base.name + ".hea")
    if not hea.exists():
        raise MissingFileError(hea, "WFDB header (.hea) does not exist")
    text = read_bytes(hea, "WFDB header", MAX_HEADER_BYTES).decode("latin-1")
    if re.search(r"[\x00-\x08\x0e-\x1f\x7f]", text):
        raise HeaderSyntaxError(hea, "binary bytes in the header: not a WFDB text header")
    lines = text.splitlines()
    longest = max(map(len, lines), default=0)
    if longest > MAX_LINE_CHARS:
        raise FileTooLargeError(hea, f"a header line of {longest} characters, over the cap of {MAX_LINE_CHARS}")
    spec_idx = [i for i, ln in enumerate(lines) if ln.strip() and not ln.strip().startswith("#")]
    comments = [ln.strip().lstrip("#").strip() for ln in lines if ln.strip().startswith("#")]
    if not spec_idx:
        raise HeaderSyntaxError(hea, "no record line (only comments)")
    record_line = lines[spec_idx[0]].split("#")[0].strip()
    tokens = record_line.split()
    flags: list[str] = []
    fixed_text = None
    m = re.fullmatch(r"([^/]+)\.(mat|dat|hea)", tokens[0], flags=re.I)
    if m:
        flags.append(f"record name {excerpt(tokens[0], 40)} on line 1 carried a file suffix (stripped)")
        tokens[0] = m.group(1)
        lines[spec_idx[0]] = " ".join(tokens)
        fixed_text = "\n".join(lines) + "\n"
    if "/" in tokens[0]:
        raise UnsupportedFormatError(hea, f"multi-segment record {excerpt(tokens[0])} is not supported")
    if len(tokens) < 2 or not _is_uint(tokens[1]):
        raise HeaderSyntaxError(hea, f"record line {excerpt(record_line)} has no signal count (expected 'name n_sig fs n_samples ...')")
    n_sig = int(tokens[1])
    if n_sig == 0:
        raise MissingWaveformError(hea, "header declares 0 signals")
    if n_sig > MAX_SIGNALS:
        raise FileTooLargeError(hea, f"header declares {n_sig} signals, over the cap of {MAX_SIGNALS}")
    if len(tokens) < 3:
        raise UnknownSamplingRateError(hea, f"record line {excerpt(record_line)} gives no sampling frequency (WFDB would silently assume 250 Hz)")
    fs_m = re.fullmatch(rf"({_NUM})(/{_NUM})?(\(.*\))?", tokens[2]) if len(tokens[2]) <= MAX_NUMBER_CHARS else None
    if not fs_m:
        raise UnknownSamplingRateError(hea, f"sampling frequency {excerpt(tokens[2])} on the record line is not a number")
    fs = float(fs_m.group(1))
    if not math.isfinite(fs) or fs <= 0:
        raise UnknownSamplingRateError(hea, f"sampling frequency {excerpt(tokens[2])} Hz must be finite and > 0")
    if not FS_MIN_HZ <= fs <= FS_MAX_HZ:
        raise UnknownSamplingRateError(hea, f"sampling frequency {fs:g} Hz outside {FS_MIN_HZ:g}-{FS_MAX_HZ:g} Hz")
    sig_len = None
    if len(tokens) > 3:
        if not _is_uint(tokens[3]):
            raise HeaderSyntaxError(hea, f"number of samples {excerpt(tokens[3])} on the record line is not an integer")
        sig_len = int(tokens[3])
        if sig_len * n_sig > MAX_TOTAL_SAMPLES:
            raise FileTooLargeError(hea, f"header declares {n_sig} signals x {sig_len} samples, over the cap of "
                                         f"{MAX_TOTAL_SAMPLES} samples")
    if len(spec_idx) - 1 != n_sig:
        raise LeadMismatchError(hea, f"record line declares {n_sig} signals but {len(spec_idx) - 1} signal lines follow")
    signals = [_parse_signal_line(hea, k, lines[i].strip()) for k, i in enumerate(spec_idx[1:])]
    return {
        "header_path": hea, "base": base, "record_name": tokens[0], "n_sig": n_sig, "fs": fs, "sig_len": sig_len,
        "acquisition_time": _wfdb_datetime(tokens[4:]), "signals": signals, "comments": comments,
        "fields": _comment_fields(comments), "flags": flags, "fixed_text": fixed_text,
    }


def _is_uint(text: str) -> bool:
    """ASCII digits only, at most 20 (``str.isdigit`` accepts superscripts that ``int`` refuses)."""
    return text.isascii() and text.isdigit() and len(text) <= 20


def signal_file_size(hea: Path, fname: str) -> int:
    """Bytes of the signal file ``fname`` named in ``hea``: a regular file (:func:`open_regular`: a FIFO,
    a directory or a device is a typed error) that resolves inside the header's folder (a symlink leaving it
    raises :class:`UnsafePathError`)."""
    f = hea.parent / fname
    if hea.parent.resolve() not in f.resolve().parents:
        raise UnsafePathError(hea, f"signal file {excerpt(fname, 40)} resolves outside the header's folder "
                                   "(a symlink leaving it): not read")
    fd = open_regular(f, f"signal file named in {hea.name}")
    try:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def _mat_largest_array(mat: Path, limit: int) -> int:
    """Most elements any variable of a MATLAB v5 file declares (product of its dimensions), read from each
    element's first bytes only (a compressed one: its first 64 bytes inflated), never inflating a variable: a
    70 kB file may declare 36 million zeros. Stops past ``limit`` or after 1,000 variables; 0 when the file is
    not MAT v5 (scipy decides then)."""
    with open(mat, "rb") as f:
        head = f.read(128)
        if len(head) < 128 or head[126:128] not in (b"IM", b"MI"):
            return 0
        order = "<" if head[126:128] == b"IM" else ">"
        largest = 0
        for _ in range(1000):
            tag = f.read(8)
            if len(tag) < 8:
                break
            typ, nbytes = struct.unpack(order + "II", tag)
            start = f.tell()
            first = f.read(min(nbytes, 4096))
            inner = zlib.decompressobj().decompress(first, 64) if typ == 15 else tag + first[:56]
            f.seek(start + nbytes + (0 if typ == 15 else -nbytes % 8))
            # miMATRIX: tag (8), array-flags element (16), dimensions element: tag (type, n bytes), int32 dims
            if len(inner) >= 32 and struct.unpack(order + "I", inner[:4])[0] == 14:
                n_dims = struct.unpack(order + "I", inner[28:32])[0] // 4
                dims = inner[32:32 + 4 * n_dims]
                if n_dims and len(dims) == 4 * n_dims:
                    largest = max(largest, math.prod(struct.unpack(order + f"{n_dims}i", dims)))
            if largest > limit:
                break
    return largest


def load_mat(mat: Path, hea: Path, n_sig: int, sig_len: int | None) -> np.ndarray:
    """Signal array ``(n_sig, sig_len)`` from a MATLAB file (CinC: variable ``val``, int16); the shapes the
    file declares (``scipy.io.whosmat``) are checked against :data:`MAX_TOTAL_SAMPLES` before any array is
    loaded (a small compressed file may declare a huge array)."""
    size = signal_file_size(hea, mat.name)
    if size == 0:
        raise EmptyFileError(mat, f"signal file is empty (named in {hea.name})")
    if size > 8 * MAX_TOTAL_SAMPLES:
        raise FileTooLargeError(mat, f"signal file holds {size} bytes, over the cap of {8 * MAX_TOTAL_SAMPLES}")
    if _mat_largest_array(mat, MAX_TOTAL_SAMPLES) > MAX_TOTAL_SAMPLES:
        raise FileTooLargeError(mat, f"declares an array over the cap of {MAX_TOTAL_SAMPLES} samples; named in "
                                     f"{hea.name}")
    try:
        scipy.io.matlab.matfile_version(str(mat))
        declared = scipy.io.whosmat(str(mat))
    except Exception as e:
        raise UnsupportedFormatError(mat, f"not a MATLAB file ({type(e).__name__}); named in {hea.name}") from None
    big = [(name, shape) for name, shape, _ in declared if math.prod(shape) > MAX_TOTAL_SAMPLES]
    if big:
        raise FileTooLargeError(mat, f"declares array {big[0][0][:20]!r} of shape {big[0][1]}, over the cap of "
                                     f"{MAX_TOTAL_SAMPLES} samples; named in {hea.name}")
    try:
        content = scipy.io.loadmat(str(mat))
    except Exception as e:
        raise HeaderSignalMismatchError(mat, f"corrupt or truncated MATLAB file ({type(e).__name__}: {e}); named in {hea.name}") from None
    arrays = {k: v for k, v in content.items() if not k.startswith("__") and isinstance(v, np.ndarray)}
    if "val" in arrays:
        arr = arrays["val"]
    elif len(arrays) == 1:
        arr = next(iter(arrays.values()))
    else:
        raise MissingWaveformError(mat, f"no 'val' signal array (variables: {sorted(arrays)}); named in {hea.name}")
    if arr.ndim != 2 or arr.dtype.kind not in "iuf":
        raise HeaderSignalMismatchError(mat, f"signal array has shape {arr.shape} dtype {arr.dtype}, expected 2-D numeric; named in {hea.name}")
    if arr.shape[0] != n_sig or (sig_len is not None and arr.shape[1] != sig_len):
        raise HeaderSignalMismatchError(
            mat, f"holds an array of shape {arr.shape} but header {hea.name} declares {n_sig} signals x {sig_len} samples"
        )
    return arr


def _check_dat_sizes(info: dict[str, Any], per_file: dict[str, list[int]], flags: list[str]) -> None:
    """Refuse a ``.dat`` file that is empty or shorter than its header declares; flag extra bytes."""
    hea, sigs, sig_len = info["header_path"], info["signals"], info["sig_len"]
    for fname, idx in per_file.items():
        if len({sigs[i]["fmt"] for i in idx}) > 1 or len({sigs[i]["offset"] for i in idx}) > 1:
            raise HeaderSyntaxError(hea, f"signals stored in {fname} disagree on format or byte offset")
        f = hea.parent / fname
        size = signal_file_size(hea, fname)
        if size == 0:
            raise EmptyFileError(f, f"signal file is empty (named in {hea.name})")
        fmt, offset = sigs[idx[0]]["fmt"], sigs[idx[0]]["offset"]
        if sig_len is None and size > offset + 4 * MAX_TOTAL_SAMPLES:  # at most 4 bytes a sample in any format
            raise FileTooLargeError(f, f"signal file holds {size} bytes, over the cap of {4 * MAX_TOTAL_SAMPLES} "
                                       f"after the byte offset (named in {hea.name})")
        if sig_len is not None and fmt in _FMT_BYTES:
            spf = sum(sigs[i]["spf"] for i in idx)
            expected = offset + math.ceil(sig_len * spf * _FMT_BYTES[fmt])
            if size < expected:
                raise HeaderSignalMismatchError(
                    f, f"holds {size} bytes but header {hea.name} declares {len(idx)} signals x {sig_len} samples "
                    f"in format {fmt} ({expected} bytes): short signal file"
                )
            if size > expected:
                flags.append(f"{fname}: {size - expected} bytes beyond what the header declares")


def _decode_fast(info: dict[str, Any], per_file: dict[str, list[int]]) -> np.ndarray:
    """Digital samples ``(n_sig, samples)`` float64 of formats 16/61/80/24/32, one sample per frame,
    no skew: frame-interleaved samples after the byte offset, decoded with numpy."""
    hea, sigs, n_sig, sig_len = info["header_path"], info["signals"], info["n_sig"], info["sig_len"]
    out = np.empty((n_sig, 0), dtype=np.float64)
    for fname, idx in per_file.items():
        fmt, offset = sigs[idx[0]]["fmt"], sigs[idx[0]]["offset"]
        width = int(_FMT_BYTES[fmt])
        size = signal_file_size(hea, fname)
        n_frames = max(size - offset, 0) // (width * len(idx)) if sig_len is None else sig_len
        if n_frames * n_sig > MAX_TOTAL_SAMPLES:
            raise FileTooLargeError(hea.parent / fname, f"{fname} holds {n_frames} frames of {n_sig} signals, over "
                                    f"the cap of {MAX_TOTAL_SAMPLES} samples")
        with open(hea.parent / fname, "rb") as fh:  # only the bytes the header declares
            fh.seek(offset)
            raw = fh.read(n_frames * width * len(idx))
        if fmt == "24":
            b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
            v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
            v = np.where(v >= 2**23, v - 2**24, v)
        else:
            dtype, shift = _FAST_FORMATS[fmt]
            v = np.frombuffer(raw, dtype=dtype).astype(np.int64) + shift
        block = v.reshape(n_frames, len(idx)).T.astype(np.float64)
        if out.shape[1] == 0:
            out = np.empty((n_sig, n_frames), dtype=np.float64)
        elif block.shape[1] != out.shape[1]:
            raise HeaderSignalMismatchError(hea, f"signal files hold different numbers of samples ({block.shape[1]} vs {out.shape[1]})")
        out[idx] = block
    return out


def _decode_with_wfdb(info: dict[str, Any], per_file: dict[str, list[int]]) -> np.ndarray:
    """Digital samples ``(n_sig, samples)`` float64 through ``wfdb.rdrecord(physical=False)`` (exotic
    formats 212, 310, 311, 8, 160, FLAC, multi-frame or skewed signals); a header that needed fixing
    is written with links to the signal files into a temporary folder first."""
    import wfdb  # deferred: heavy, and only these rare formats need it

    hea, n_sig = info["header_path"], info["n_sig"]
    try:
        if info["fixed_text"] is None:
            r = wfdb.rdrecord(str(info["base"]), physical=False)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / hea.name).write_text(info["fixed_text"], encoding="latin-1")
                for fname in per_file:
                    try:
                        os.symlink((hea.parent / fname).resolve(), Path(tmp) / fname)
                    except OSError:
                        shutil.copyfile(hea.parent / fname, Path(tmp) / fname)
                r = wfdb.rdrecord(str(Path(tmp) / info["base"].name), physical=False)
    except Exception as e:  # wfdb raises ValueError, IndexError, its own errors...
        raise HeaderSignalMismatchError(hea, f"wfdb could not read the signal: {type(e).__name__}: {e}") from None
    if r.d_signal is None or r.d_signal.shape[1] != n_sig:
        raise HeaderSignalMismatchError(hea, f"wfdb returned no signal or the wrong number of signals for {n_sig} declared")
    return np.asarray(r.d_signal, dtype=np.float64).T


def read_dat_files(info: dict[str, Any], flags: list[str]) -> np.ndarray:
    """Digital samples ``(n_sig, sig_len)`` float64 of a ``.dat`` record.

    Formats 16, 61, 80, 24, 32 with one sample per frame and no skew are decoded with numpy
    (frame-interleaved samples after the byte offset); anything else goes to
    ``wfdb.rdrecord(physical=False)``.
    """
    per_file: dict[str, list[int]] = {}
    for i, s in enumerate(info["signals"]):
        per_file.setdefault(s["file"], []).append(i)
    _check_dat_sizes(info, per_file, flags)
    if all(s["fmt"] in _FAST_FORMATS and s["spf"] == 1 and s["skew"] == 0 for s in info["signals"]):
        return _decode_fast(info, per_file)
    return _decode_with_wfdb(info, per_file)
