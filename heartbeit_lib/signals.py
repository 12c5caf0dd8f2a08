"""ECG signal preprocessing: lead selection, resampling, band-pass, median filter, truncation.

The paper (HeartBEiT, Vaid et al. 2023) states only: 12-lead ECGs at 500 Hz, truncated to
2,500 samples (5 s), "Butterworth band-pass 0.5-40 Hz, then a median filter". Everything the
paper leaves open is a keyword argument of :func:`preprocess` with a documented default.

Order of operations in :func:`preprocess`::

    select leads -> resample to target_fs -> band-pass (zero phase) -> median -> truncate

Resampling and band-pass run on the *whole* record before truncation, so the kept window sees
settled filters (only a window touching the record's own start or end carries the
``sosfiltfilt`` odd-extension edge handling). The output equals the straightforward
per-record chain of scipy calls (``sosfiltfilt`` then ``ndimage.median_filter(mode="nearest")``
then slicing) bit for bit; it is vectorised over chunks of records and computes the median
only over the kept window. Measured (``benchmarks/bench_preprocess.py``): about 1,100 ECGs per
CPU-second for (12, 5000) -> (8, 2500), 2.1-2.5x the per-record loop (chunks kept under 4 MiB:
see ``chunk_size``); the two IIR passes are
~75% of the time and scipy's ``sosfilt`` holds the GIL, so parallelise across processes.

Defaults and why
----------------
``order=4``
    scipy's ``butter(4, (0.5, 40), btype="band")``: 4th order per edge (8 poles), stored as
    second-order sections and run forward and backward (``sosfiltfilt``), so the magnitude
    response is ``|H|**2`` (zero phase, -6 dB at 0.5 and 40 Hz). Measured at 500 Hz: 0.1 Hz is
    attenuated by 113 dB, 50 Hz by 18 dB, 60 Hz (mains) by 31 dB, 10 Hz passes within 0.001 dB.
    Order 2 would give only 17 dB at 60 Hz, order 3 24 dB; 4 is the smallest order with a
    comfortable margin over the 20 dB requirement.
``median_kernel=3``
    A 3-sample (6 ms at 500 Hz) running median, edges handled by repeating the edge sample.
    What it removes, measured (tests/test_signals.py pins these numbers): applied on its own it
    deletes any 1-sample spike completely and lowers the apex of a QRS-like Gaussian pulse
    (sigma 10 ms) by only 2%. In the paper's order (band-pass *first*), though, the 40 Hz
    low-pass has already smeared a 1-sample spike into a ~10-sample ripple of 16% of its
    height, which a 3-sample median then reduces by only another 5%. So in this pipeline the
    median filter is a gentle peak-trimming smoother (sample-to-sample jitter, quantisation
    steps); it is kept because the paper uses it, and its kernel is a parameter
    (``median_kernel=1`` disables it).
``start=0, n_samples=2500``
    The first 5 s at 500 Hz, as in the paper.
Resampling
    ``scipy.signal.resample_poly`` with the exact rational factor ``target_fs / fs`` (100 Hz
    PTB-XL -> x5; 257 Hz INCART -> x500/257) and ``padtype="line"`` so that a DC offset or
    baseline slope does not ring at the record edges.

Units: inputs and outputs are microvolts; outputs are float32, computation is float64
(a float32 band-pass was measured to be off by up to 0.4 uV on PTB-XL records).
"""

from __future__ import annotations

import functools
from fractions import Fraction
from typing import Sequence

import numpy as np
import scipy.ndimage
import scipy.signal

from heartbeit_lib.io.leads import (  # noqa: F401  (LimbLeads, derive_limb_leads: re-exported)
    LeadError, LimbLeads, SignalError, SignalShapeError, canonical_lead_name,
    derive_limb_leads)

#: Output lead order of :func:`preprocess` (the 8 independent leads of a 12-lead ECG).
OUTPUT_LEADS: tuple[str, ...] = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
#: Canonical names of the standard 12 leads.
TWELVE_LEADS: tuple[str, ...] = ("I", "II", "III", "AVR", "AVL", "AVF",
                                 "V1", "V2", "V3", "V4", "V5", "V6")

TARGET_FS: float = 500.0      # Hz, the paper's sampling rate
N_SAMPLES: int = 2500         # samples kept (5 s at 500 Hz)
BAND: tuple[float, float] = (0.5, 40.0)  # Hz, Butterworth band-pass edges (paper)
ORDER: int = 4                # Butterworth order per edge (scipy's N); see module docstring
MEDIAN_KERNEL: int = 3        # samples; see module docstring for what it removes
CHUNK_SIZE: int = 32          # records per vectorised chunk at most (fits the CPU caches; measured best)
WORK_BYTES: int = 3 << 20     # and at most this many bytes of float64 work buffer per chunk; see preprocess


# --------------------------------------------------------------------------- errors
# SignalError, SignalShapeError and LeadError are defined with the lead algebra in io/leads.py (imported above).
class NonFiniteSignalError(SignalError):
    """The signal holds NaN or +-inf."""


class SignalTooShortError(SignalError):
    """The (resampled) record is shorter than ``start + n_samples``."""


class SignalParameterError(SignalError):
    """A numeric parameter (fs, band, order, kernel, ...) is out of range."""


# --------------------------------------------------------------------------- leads
def lead_indices(leads: Sequence[str], out_leads: Sequence[str] = OUTPUT_LEADS) -> np.ndarray:
    """Row indices into ``leads`` for each of ``out_leads`` (canonical names, no derivation).

    Raises :class:`LeadError` when a name is duplicated or an output lead is missing.
    """
    if isinstance(leads, str):
        raise LeadError(f"leads: expected a sequence of lead names, got the string {leads!r}")
    names = [canonical_lead_name(n) for n in leads]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise LeadError(f"leads: duplicated lead names {dup} in {list(leads)}")
    want = [canonical_lead_name(n) for n in out_leads]
    missing = [n for n in want if n not in names]
    if missing:
        raise LeadError(f"leads: required lead(s) {missing} missing from {names} "
                        f"(leads are selected, not derived; use derive_limb_leads for limb leads)")
    return np.array([names.index(n) for n in want], dtype=np.intp)


# --------------------------------------------------------------------------- parameters
def _check_fs(value: float, name: str) -> float:
    try:
        fs = float(value)
    except (TypeError, ValueError):
        raise SignalParameterError(f"{name}: expected a sampling rate in Hz, got {value!r}") from None
    if not np.isfinite(fs) or fs <= 0:
        raise SignalParameterError(f"{name}: sampling rate must be a finite number > 0 Hz, got {value!r}")
    return fs


def _check_int(value: int, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise SignalParameterError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def rational_factors(fs: float, target_fs: float = TARGET_FS, max_denominator: int = 10_000) -> tuple[int, int]:
    """``(up, down)`` with ``up / down == target_fs / fs`` for ``scipy.signal.resample_poly``.

    ``Fraction`` of the two floats is exact; ``limit_denominator`` keeps the polyphase filter
    small for rates like 257 Hz (-> 500/257). Rates whose ratio cannot be represented within
    1e-9 relative error with a denominator <= ``max_denominator`` raise
    :class:`SignalParameterError`.
    """
    fs = _check_fs(fs, "fs")
    target_fs = _check_fs(target_fs, "target_fs")
    ratio = (Fraction(target_fs) / Fraction(fs)).limit_denominator(max_denominator)
    exact = target_fs / fs
    if abs(float(ratio) - exact) > 1e-9 * exact:
        raise SignalParameterError(f"fs: resampling {fs} Hz -> {target_fs} Hz needs a rational factor with a "
                                   f"denominator > {max_denominator}; closest is {ratio}")
    return ratio.numerator, ratio.denominator


def butter_sos(fs: float = TARGET_FS, band: tuple[float, float] = BAND, order: int = ORDER) -> np.ndarray:
    """Butterworth band-pass as second-order sections, ``(order, 6)`` float64 (a fresh copy).

    Same as ``scipy.signal.butter(order, band, btype="band", fs=fs, output="sos")``.
    """
    fs = _check_fs(fs, "fs")
    order = _check_int(order, "order", 1)
    try:
        lo, hi = (float(b) for b in band)
    except (TypeError, ValueError):
        raise SignalParameterError(f"band: expected (low_hz, high_hz), got {band!r}") from None
    if not (0 < lo < hi < fs / 2):
        raise SignalParameterError(f"band: need 0 < low < high < fs/2 = {fs / 2} Hz, got {band!r}")
    return _butter_sos_cached(fs, lo, hi, order).copy()  # copy: sosfilt needs a writable buffer


@functools.lru_cache(maxsize=64)
def _butter_sos_cached(fs: float, lo: float, hi: float, order: int) -> np.ndarray:
    return scipy.signal.butter(order, (lo, hi), btype="band", fs=fs, output="sos")


# --------------------------------------------------------------------------- filters
def _padlen(sos: np.ndarray) -> int:
    # scipy.signal.sosfiltfilt's default pad length (3 * ntaps, trailing zero taps discounted).
    n_sections = sos.shape[0]
    ntaps = 2 * n_sections + 1
    ntaps -= min(int((sos[:, 2] == 0).sum()), int((sos[:, 5] == 0).sum()))
    return 3 * ntaps


def _sosfiltfilt_ext(sos: np.ndarray, ext: np.ndarray, p: int) -> np.ndarray:
    """Zero-phase filtering of the rows of ``ext[:, p:-p]``; ``ext`` (rows, n + 2p) float64 is a
    work buffer whose ``p`` samples at each end are overwritten. Returns (rows, n) float64.

    The algorithm of ``scipy.signal.sosfiltfilt`` (odd extension of ``p`` samples,
    ``sosfilt_zi`` initial conditions scaled by the first sample, forward pass, backward
    pass), written so the caller can fill the buffer without temporaries; bit-identical to
    scipy's on the tested inputs (tests/test_signals.py).
    """
    n = ext.shape[1] - 2 * p
    x = ext[:, p:p + n]
    ext[:, :p] = 2 * x[:, :1] - x[:, p:0:-1]
    ext[:, p + n:] = 2 * x[:, -1:] - x[:, -2:-p - 2:-1]
    zi = scipy.signal.sosfilt_zi(sos)  # (sections, 2)
    y, _ = scipy.signal.sosfilt(sos, ext, axis=-1, zi=zi[:, None, :] * ext[None, :, 0, None])
    y = y[:, ::-1]
    y, _ = scipy.signal.sosfilt(sos, y, axis=-1, zi=zi[:, None, :] * y[None, :, 0, None])
    return y[:, ::-1][:, p:p + n]


def bandpass(x: np.ndarray, fs: float, band: tuple[float, float] = BAND, order: int = ORDER) -> np.ndarray:
    """Zero-phase Butterworth band-pass along the last axis.

    Parameters
    ----------
    x : array_like, (..., samples)
        Microvolts at ``fs`` Hz; more than ``3 * (2 * order + 1)`` samples.
    fs : float
        Sampling rate in Hz.
    band, order
        See :func:`butter_sos`.

    Returns
    -------
    np.ndarray, float64, same shape as ``x``
        Equal to ``scipy.signal.sosfiltfilt(butter_sos(fs, band, order), x, axis=-1)``.
    """
    x = np.asarray(x, dtype=np.float64)
    sos = butter_sos(_check_fs(fs, "fs"), tuple(band), order)
    p = _padlen(sos)
    if x.ndim == 0 or x.shape[-1] <= p:
        raise SignalTooShortError(f"x: band-pass needs more than {p} samples along the last axis, "
                                  f"got shape {x.shape}")
    return scipy.signal.sosfiltfilt(sos, x, axis=-1)


def _check_kernel(kernel: int) -> int:
    k = _check_int(kernel, "median_kernel", 1)
    if k % 2 == 0:
        raise SignalParameterError(f"median_kernel: must be odd (centred window), got {kernel!r}")
    return k


def _median_valid(xp: np.ndarray, k: int) -> np.ndarray:
    """Running median of width ``k`` over the last axis, 'valid' mode (output length n - k + 1).

    k = 3 and 5 use min/max selection networks (exact, branch-free, ~10x faster than
    ``scipy.ndimage.median_filter``); other widths use ``scipy.ndimage.median_filter``.
    """
    m = xp.shape[-1] - k + 1
    if k == 1:
        return xp.copy()
    if k == 3:
        a, b, c = xp[..., 0:m], xp[..., 1:m + 1], xp[..., 2:m + 2]
        lo = np.minimum(a, b)
        hi = np.maximum(a, b)
        np.minimum(hi, c, out=hi)
        return np.maximum(lo, hi, out=lo)
    if k == 5:
        a, b, c, d, e = (xp[..., i:m + i] for i in range(5))
        f = np.maximum(np.minimum(a, b), np.minimum(c, d))  # 2nd smallest of a..d or larger
        g = np.minimum(np.maximum(a, b), np.maximum(c, d))  # 2nd largest of a..d or smaller
        # median of 5 = median of (e, f, g)
        lo = np.minimum(f, g)
        hi = np.maximum(f, g)
        np.minimum(hi, e, out=hi)
        return np.maximum(lo, hi, out=lo)
    h = k // 2
    size = (1,) * (xp.ndim - 1) + (k,)
    return scipy.ndimage.median_filter(xp, size=size, mode="nearest")[..., h:xp.shape[-1] - h]


def median_filter(x: np.ndarray, kernel: int = MEDIAN_KERNEL) -> np.ndarray:
    """Running median of odd width ``kernel`` samples along the last axis, same length.

    Edges repeat the first/last sample, i.e. the result equals
    ``scipy.ndimage.median_filter(x, size=(1, ..., kernel), mode="nearest")``.
    """
    x = np.asarray(x)
    k = _check_kernel(kernel)
    h = k // 2
    if h == 0:
        return x.copy()
    pad = [(0, 0)] * (x.ndim - 1) + [(h, h)]
    return _median_valid(np.pad(x, pad, mode="edge"), k)


def _median_window(y: np.ndarray, k: int, start: int, stop: int) -> np.ndarray:
    """``median_filter(y, k)[..., start:stop]`` computing only the needed samples."""
    h = k // 2
    n = y.shape[-1]
    lo, hi = max(start - h, 0), min(stop + h, n)
    seg = y[..., lo:hi]
    pad_l, pad_r = h - (start - lo), h - (hi - stop)
    if pad_l or pad_r:
        seg = np.pad(seg, [(0, 0)] * (y.ndim - 1) + [(pad_l, pad_r)], mode="edge")
    return _median_valid(seg, k)


def resample(x: np.ndarray, fs: float, target_fs: float = TARGET_FS) -> np.ndarray:
    """Resample along the last axis from ``fs`` to ``target_fs`` Hz (polyphase, exact ratio).

    Returns float64 ``(..., ceil(samples * up / down))``; ``x`` itself (as float64) when the
    rates are equal. Uses ``scipy.signal.resample_poly(x, up, down, axis=-1, padtype="line")``.
    """
    up, down = rational_factors(fs, target_fs)
    x = np.asarray(x, dtype=np.float64)
    if up == down:
        return x
    return scipy.signal.resample_poly(x, up, down, axis=-1, padtype="line")


# --------------------------------------------------------------------------- pipeline
def _as_batch(x) -> np.ndarray:
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as e:
        raise SignalShapeError(f"x: cannot be converted to an array ({e})") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise SignalShapeError(f"x: expected real numbers (microvolts), got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise SignalShapeError(f"x: expected (N, leads, samples) or (leads, samples), got shape {np.shape(x)}")
    return arr


def preprocess(x: np.ndarray, fs: float, leads: Sequence[str], *,
               out_leads: Sequence[str] = OUTPUT_LEADS,
               target_fs: float = TARGET_FS,
               n_samples: int = N_SAMPLES,
               start: int = 0,
               band: tuple[float, float] | None = BAND,
               order: int = ORDER,
               median_kernel: int = MEDIAN_KERNEL,
               pad: bool = False,
               chunk_size: int = CHUNK_SIZE) -> np.ndarray:
    """Paper preprocessing of a batch of ECGs: select leads, resample, band-pass, median, truncate.

    Parameters
    ----------
    x : array_like, (N, L, T) or (L, T)
        Microvolts at ``fs`` Hz; L lead rows named by ``leads``. Must be finite in the
        selected leads (other rows are ignored).
    fs : float
        Sampling rate of ``x`` in Hz (> 0).
    leads : sequence of str, length L
        Lead names of the rows of ``x`` (case-insensitive: ``aVR`` == ``AVR``).
    out_leads : sequence of str
        Leads to keep, in output order (default I, II, V1-V6). Selected, never derived.
    target_fs : float
        Output sampling rate in Hz (default 500); resampled with :func:`resample` if needed.
    n_samples : int
        Output length in samples at ``target_fs`` (default 2500 = 5 s).
    start : int
        First kept sample, at ``target_fs`` (default 0). Filtering runs on the whole record
        first, then ``[start, start + n_samples)`` is kept.
    band, order : see :func:`bandpass` (default 0.5-40 Hz, order 4). ``band=None``: no band-pass (the raw
        signal, as the PTB-XL benchmark feeds its models).
    median_kernel : int
        Odd running-median width in samples at ``target_fs`` (default 3; 1 disables it).
    pad : bool
        If True, records shorter than ``start + n_samples`` (after resampling) are zero-padded
        at the end (after filtering); if False (default) they raise :class:`SignalTooShortError`.
    chunk_size : int
        Records processed per vectorised chunk at most (memory/cache trade-off only; results do
        not depend on it); fewer when their float64 work buffer would exceed :data:`WORK_BYTES`
        (3 MiB: 9 records of 8 x 5,000 samples). numpy asks the kernel for transparent huge pages
        for arrays from 4 MiB, and where THP defrag is ``madvise`` each fault may stall in direct
        compaction: at 32 records (10 MB buffers) the system time measured 0.25-1.9 ms per record,
        more than the filtering, on the shared 2-core machine; at 9 records, ~0.

    Returns
    -------
    np.ndarray, float32, (N, len(out_leads), n_samples)
        Microvolts at ``target_fs``. A single (L, T) record gives N = 1 (the batch axis is
        always present).

    Raises
    ------
    SignalError
        :class:`SignalShapeError`, :class:`LeadError`, :class:`NonFiniteSignalError`,
        :class:`SignalTooShortError` or :class:`SignalParameterError`; the message names the
        offending parameter.
    """
    arr = _as_batch(x)
    n_rec, n_leads, n_in = arr.shape
    if isinstance(leads, str) or len(leads) != n_leads:
        raise SignalShapeError(f"leads: {0 if isinstance(leads, str) else len(leads)} names for "
                               f"{n_leads} lead rows of x (shape {arr.shape})")
    idx = lead_indices(leads, out_leads)
    fs = _check_fs(fs, "fs")
    target_fs = _check_fs(target_fs, "target_fs")
    n_samples = _check_int(n_samples, "n_samples", 1)
    start = _check_int(start, "start", 0)
    chunk_size = _check_int(chunk_size, "chunk_size", 1)
    k = _check_kernel(median_kernel)
    sos = None if band is None else butter_sos(target_fs, tuple(band), order)
    up, down = rational_factors(fs, target_fs)
    n_res = -(-n_in * up // down)  # resample_poly output length: ceil(T * up / down)
    stop = start + n_samples
    if n_res < stop and not pad:
        raise SignalTooShortError(
            f"x: record has {n_res} samples at {target_fs:g} Hz ({n_in} at {fs:g} Hz), fewer than "
            f"start + n_samples = {start} + {n_samples} = {stop}; pass pad=True to zero-pad")
    p = 0 if sos is None else _padlen(sos)
    if n_res <= max(start, p):
        raise SignalTooShortError(
            f"x: record has {n_res} samples at {target_fs:g} Hz, nothing to keep from start={start} "
            f"(the band-pass also needs > {p} samples)")
    keep = min(stop, n_res) - start

    out = np.zeros((n_rec, len(idx), n_samples), dtype=np.float32)
    chunk_size = max(1, min(chunk_size, WORK_BYTES // (len(idx) * (n_res + 2 * p) * 8)))
    for c0 in range(0, n_rec, chunk_size):
        chunk = arr[c0:c0 + chunk_size]
        nc = chunk.shape[0]
        # float64 work buffer (record*lead rows, samples + odd-extension pads), filled in place
        ext = np.empty((nc, len(idx), n_res + 2 * p), dtype=np.float64)
        if up == down:
            for j, li in enumerate(idx):
                ext[:, j, p:p + n_res] = chunk[:, li, :]
        else:
            ext[:, :, p:p + n_res] = scipy.signal.resample_poly(
                chunk[:, idx, :].astype(np.float64), up, down, axis=-1, padtype="line")
        finite = np.isfinite(ext[:, :, p:p + n_res]).all(axis=(1, 2))
        if not finite.all():
            bad = c0 + int(np.flatnonzero(~finite)[0])
            raise NonFiniteSignalError(f"x: record {bad} has NaN or inf samples in the selected leads")
        y = ext if sos is None else _sosfiltfilt_ext(sos, ext.reshape(nc * len(idx), -1), p).reshape(nc, len(idx), n_res)
        out[c0:c0 + nc, :, :keep] = _median_window(y, k, start, start + keep)
    return out


# --------------------------------------------------------------------------- QRS detection
QRS_SMOOTH_S: float = 0.04    # s, moving-average width of the slope-energy envelope
QRS_MIN_RR_S: float = 0.3     # s, minimum distance between QRS complexes (<= 200 bpm)
QRS_REL_HEIGHT: float = 0.2   # peak threshold, fraction of the envelope's 99th percentile


def detect_qrs(x: np.ndarray, fs: float) -> np.ndarray:
    """QRS centres of one ECG: the library's one QRS detector.

    The envelope is the squared first difference summed over leads, smoothed over
    :data:`QRS_SMOOTH_S`; its peaks at least :data:`QRS_MIN_RR_S` apart and above
    :data:`QRS_REL_HEIGHT` x its 99th percentile are the QRS centres. Simple, and adequate for
    clean or band-passed ECGs; not a clinical detector.

    Measured against ``wfdb.processing`` on 60 shared PTB-XL records (preprocessed, 8 x 2500 at
    500 Hz; beats matched within 50 ms): F1 0.93 with XQRS and 0.82 with GQRS on lead II (0.89
    between XQRS and GQRS), at 0.5 ms per record against 34 ms (XQRS) and 31 ms (GQRS). Without
    reference annotations neither library detector is measured more accurate, and this one
    places the synthetic demo's ST segments (:mod:`heartbeit_lib.cohorts.synthetic`).

    Parameters
    ----------
    x : (samples,) or (leads, samples) float, microvolts at ``fs`` Hz.
    fs : sampling rate, Hz.

    Returns
    -------
    sorted int64 sample indices of the QRS centres, shape (beats,).
    """
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2:
        raise SignalShapeError(f"x: expected (samples,) or (leads, samples), got shape {np.shape(x)}")
    fs = _check_fs(fs, "fs")
    d = np.diff(arr, axis=-1, prepend=arr[..., :1])
    env = scipy.ndimage.uniform_filter1d((d * d).sum(axis=0), max(int(round(QRS_SMOOTH_S * fs)), 1), axis=-1)
    thr = QRS_REL_HEIGHT * np.percentile(env, 99)
    peaks, _ = scipy.signal.find_peaks(env, height=thr if thr > 0 else None,
                                       distance=max(int(QRS_MIN_RR_S * fs), 1))
    return peaks.astype(np.int64)
