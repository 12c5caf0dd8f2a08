"""Tests for heartbeit_lib.signals.

Oracles: per-record ``scipy.signal.sosfiltfilt(scipy.signal.butter(order, band, "band",
fs=500, output="sos"), ...)``, ``scipy.ndimage.median_filter(..., mode="nearest")`` and
``scipy.signal.resample_poly(..., padtype="line")``; tolerance 1e-3 uV absolute on float32
outputs of up to a few thousand uV (the fast path is the same arithmetic in float64, so the
only difference allowed is the final float32 rounding, <= 2.5e-4 uV at 4000 uV).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import scipy.signal

from heartbeit_lib import signals as S

FS = 500
LEADS12 = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
IDX8 = [0, 1, 6, 7, 8, 9, 10, 11]  # I, II, V1-V6 within LEADS12
ATOL_UV = 1e-3


def ecg_like(n: int, fs: float = FS, seconds: float = 10.0, seed: int = 0) -> np.ndarray:
    """(n, 12, samples) microvolts: 72 bpm Gaussian 'QRS' pulses, noise, DC offset, 0.2 Hz wander."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * fs))) / fs
    beats = sum(np.exp(-0.5 * ((t - c) / 0.012) ** 2) for c in np.arange(0.3, seconds, 60 / 72))
    gain = rng.uniform(-1500, 1500, size=(n, 12, 1))
    wander = 300 * np.sin(2 * np.pi * 0.2 * t + rng.uniform(0, 6, size=(n, 12, 1)))
    return gain * beats + wander + rng.normal(0, 20, size=(n, 12, t.size)) + rng.uniform(-500, 500, (n, 12, 1))


def reference(x: np.ndarray, fs: float, order: int = S.ORDER, kernel: int = S.MEDIAN_KERNEL,
              start: int = 0, n: int = 2500, band=(0.5, 40.0)) -> np.ndarray:
    """The straightforward per-record chain of scipy calls (the oracle)."""
    sos = scipy.signal.butter(order, band, btype="band", fs=500, output="sos")
    up, down = S.rational_factors(fs, 500)
    out = []
    for rec in x:
        r = rec[IDX8].astype(np.float64)
        if up != down:
            r = scipy.signal.resample_poly(r, up, down, axis=-1, padtype="line")
        r = scipy.signal.sosfiltfilt(sos, r, axis=-1)
        r = scipy.ndimage.median_filter(r, size=(1, kernel), mode="nearest")
        out.append(r[:, start:start + n])
    return np.stack(out).astype(np.float32)


# --------------------------------------------------------------------------- reference parity
@pytest.mark.parametrize("kernel,order,start", [(3, 4, 0), (5, 4, 1200), (7, 2, 2500), (1, 3, 7)])
def test_preprocess_matches_per_record_scipy_chain(kernel, order, start):
    x = ecg_like(5, seed=kernel)
    got = S.preprocess(x, FS, LEADS12, median_kernel=kernel, order=order, start=start, chunk_size=2)
    want = reference(x, FS, order=order, kernel=kernel, start=start)
    assert got.shape == (5, 8, 2500) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL_UV)


def test_preprocess_resamples_100hz_like_resample_poly():
    x = ecg_like(3, fs=100, seed=3)  # (3, 12, 1000) at 100 Hz -> 5000 samples at 500 Hz
    got = S.preprocess(x, 100, LEADS12)
    np.testing.assert_allclose(got, reference(x, 100), rtol=0, atol=ATOL_UV)


def test_bandpass_equals_scipy_sosfiltfilt():
    x = np.random.default_rng(0).normal(0, 300, size=(2, 3, 1200)) + 800
    sos = scipy.signal.butter(3, (1.0, 30.0), btype="band", fs=250, output="sos")
    want = scipy.signal.sosfiltfilt(sos, x, axis=-1)
    np.testing.assert_allclose(S.bandpass(x, 250, (1.0, 30.0), 3), want, rtol=0, atol=1e-9)


@pytest.mark.parametrize("kernel", [1, 3, 5, 7, 9])
def test_median_filter_equals_ndimage_nearest(kernel):
    # small integers -> many ties, the hard case for selection networks
    x = np.random.default_rng(kernel).integers(-3, 4, size=(4, 3, 301)).astype(np.float64)
    want = scipy.ndimage.median_filter(x, size=(1, 1, kernel), mode="nearest")
    np.testing.assert_array_equal(S.median_filter(x, kernel), want)
    # interior also equals scipy.signal.medfilt (which zero-pads the edges)
    h = kernel // 2
    med = scipy.signal.medfilt(x[0, 0], kernel)
    np.testing.assert_array_equal(S.median_filter(x[0, 0], kernel)[h:-h or None], med[h:-h or None])


def test_rational_factors():
    assert S.rational_factors(100) == (5, 1)
    assert S.rational_factors(257) == (500, 257)  # INCART
    assert S.rational_factors(1000) == (1, 2)
    assert S.rational_factors(500) == (1, 1)
    with pytest.raises(S.SignalParameterError, match="fs"):
        S.rational_factors(np.pi * 100)


def test_resample_preserves_an_in_band_sinusoid():
    t_lr = np.arange(1000) / 100
    x = 1000 * np.sin(2 * np.pi * 5 * t_lr)
    y = S.resample(x, 100, 500)
    t_hr = np.arange(5000) / 500
    mid = slice(500, 4500)
    np.testing.assert_allclose(y[mid], 1000 * np.sin(2 * np.pi * 5 * t_hr[mid]), atol=5.0)  # 0.5% of amplitude


# --------------------------------------------------------------------------- frequency response
def gain_db(f_hz: float, order: int = S.ORDER) -> float:
    """Steady-state gain of bandpass() for a sinusoid: RMS ratio over the middle 60 s of 120 s."""
    t = np.arange(120 * FS) / FS
    x = 1000 * np.sin(2 * np.pi * f_hz * t)
    y = S.bandpass(x, FS, order=order)
    mid = slice(30 * FS, 90 * FS)  # whole number of periods for 0.1, 10 and 60 Hz
    return 20 * np.log10(np.sqrt(np.mean(y[mid] ** 2)) / np.sqrt(np.mean(x[mid] ** 2)))


def test_frequency_response_of_default_bandpass():
    assert gain_db(0.1) <= -20
    assert gain_db(60) <= -20
    assert abs(gain_db(10)) <= 1
    # the figures the module docstring quotes (and the reason order 2 is not the default)
    assert gain_db(0.1) < -100
    assert -32 < gain_db(60) < -29
    assert gain_db(60, order=2) > -20


def test_frequency_response_through_full_preprocess():
    t = np.arange(60 * FS) / FS
    lead_x = np.stack([1000 * np.sin(2 * np.pi * f * t) for f in (0.1, 10.0, 60.0)])
    x = np.zeros((8, t.size))
    x[:3] = lead_x
    y = S.preprocess(x, FS, S.OUTPUT_LEADS, start=27 * FS)[0]  # 5 s window in the middle
    assert np.abs(y[0]).max() <= 100  # 0.1 Hz: half a period in the window, peak >= 20 dB down
    rms_in = 1000 / np.sqrt(2)
    assert abs(20 * np.log10(np.sqrt(np.mean(y[1] ** 2)) / rms_in)) <= 1  # 10 Hz
    assert 20 * np.log10(np.sqrt(np.mean(y[2] ** 2)) / rms_in) <= -20  # 60 Hz


# --------------------------------------------------------------------------- median: what it removes
def test_median_default_effect_on_spike_and_qrs_pulse():
    t = np.arange(5000) / FS
    spike = np.zeros(5000)
    spike[2000] = 1000.0
    qrs = 1000 * np.exp(-0.5 * ((t - 4.0) / 0.010) ** 2)  # QRS-like pulse, sigma 10 ms
    # on its own a 3-sample median deletes a 1-sample spike and barely trims a QRS apex
    assert np.abs(S.median_filter(spike, 3)).max() == 0
    assert 0.97 <= S.median_filter(qrs, 3).max() / qrs.max() < 1.0
    # in the paper's order (band-pass first) the spike is already smeared; the median trims ~5%
    x = np.stack([spike, qrs] + [np.zeros(5000)] * 6)
    with_med = S.preprocess(x, FS, S.OUTPUT_LEADS, n_samples=5000)[0]
    no_med = S.preprocess(x, FS, S.OUTPUT_LEADS, n_samples=5000, median_kernel=1)[0]
    assert 0.14 < no_med[0].max() / 1000 < 0.18  # low-passed spike residue: ~16% of its height
    assert 0.90 < with_med[0].max() / no_med[0].max() < 1.0
    assert 0.97 < with_med[1].max() / no_med[1].max() < 1.0


# --------------------------------------------------------------------------- leads
def test_derive_limb_leads_identities():
    rng = np.random.default_rng(0)
    i, ii = rng.normal(0, 500, size=(2, 3, 100))
    d = S.derive_limb_leads(i, ii)
    np.testing.assert_allclose(d.III, ii - i)
    np.testing.assert_allclose(d.AVR, -(i + ii) / 2)
    np.testing.assert_allclose(d.AVL, i - ii / 2)
    np.testing.assert_allclose(d.AVF, ii - i / 2)
    np.testing.assert_allclose(i + d.III, ii, atol=1e-9)  # Einthoven
    np.testing.assert_allclose(d.AVR + d.AVL + d.AVF, 0, atol=1e-9)  # Goldberger
    iii, avr, avl, avf = d  # plain tuple unpacking works
    assert avf is d.AVF
    with pytest.raises(S.SignalShapeError, match="lead_ii"):
        S.derive_limb_leads(i, ii[:, :50])


@pytest.mark.shared
def test_derived_limb_leads_match_recorded_ptbxl_leads(ptbxl_root):
    wfdb = pytest.importorskip("wfdb")
    rec = wfdb.rdrecord(str(ptbxl_root / "records500" / "00000" / "00001_hr"))
    sig = rec.p_signal.T * 1000  # mV -> uV; PTB-XL stores 1 uV per ADC unit
    names = [S.canonical_lead_name(n) for n in rec.sig_name]
    d = S.derive_limb_leads(sig[names.index("I")], sig[names.index("II")])
    for lead in ("III", "AVR", "AVL", "AVF"):  # within the 1 uV quantisation (+ rounding of /2)
        assert np.abs(getattr(d, lead) - sig[names.index(lead)]).max() <= 1.5 + 1e-9


@pytest.mark.shared
def test_ptbxl_100hz_and_500hz_versions_agree_after_preprocess(ptbxl_root):
    wfdb = pytest.importorskip("wfdb")
    hr = wfdb.rdrecord(str(ptbxl_root / "records500" / "00000" / "00002_hr"))
    lr = wfdb.rdrecord(str(ptbxl_root / "records100" / "00000" / "00002_lr"))
    a = S.preprocess(hr.p_signal.T * 1000, hr.fs, hr.sig_name)[0]
    b = S.preprocess(lr.p_signal.T * 1000, lr.fs, lr.sig_name)[0]
    mid = slice(50, 2450)
    for k in range(8):  # measured: r >= 0.992 on the first five shared records
        assert np.corrcoef(a[k, mid], b[k, mid])[0, 1] > 0.98


def test_lead_order_case_and_selection():
    x = ecg_like(2, seed=5)
    base = S.preprocess(x, FS, LEADS12)
    perm = np.random.default_rng(1).permutation(12)
    shuffled = S.preprocess(x[:, perm], FS, [LEADS12[p].lower() for p in perm])
    np.testing.assert_array_equal(shuffled, base)
    two = S.preprocess(x, FS, LEADS12, out_leads=("v6", "I"))
    np.testing.assert_array_equal(two, base[:, [7, 0]])


def test_shapes_dtypes_and_chunking(monkeypatch):
    x = ecg_like(5, seed=6)
    one = S.preprocess(x[0], FS, LEADS12)
    assert one.shape == (1, 8, 2500) and one.dtype == np.float32
    batch = S.preprocess(x, FS, LEADS12, chunk_size=32)
    np.testing.assert_array_equal(S.preprocess(x, FS, LEADS12, chunk_size=1), batch)
    assert S.WORK_BYTES // (8 * (5000 + 2 * 27) * 8) == 9  # the paper's records: 9 per chunk, under 4 MiB of work
    monkeypatch.setattr(S, "WORK_BYTES", 2 * 8 * (5000 + 2 * 27) * 8)  # 2 records per chunk: 3 chunks for 5
    np.testing.assert_array_equal(S.preprocess(x, FS, LEADS12, chunk_size=32), batch)
    np.testing.assert_array_equal(one[0], batch[0])
    as_int = np.round(x).astype(np.int16)
    np.testing.assert_allclose(S.preprocess(as_int, FS, LEADS12), S.preprocess(as_int.astype(float), FS, LEADS12))
    assert S.preprocess(np.zeros((0, 12, 5000)), FS, LEADS12).shape == (0, 8, 2500)
    assert S.preprocess(x, FS, LEADS12, n_samples=1000, start=10).shape == (5, 8, 1000)


def test_nan_in_unselected_lead_is_ignored():
    x = ecg_like(2, seed=7)
    y = x.copy()
    y[1, 2, 100] = np.nan  # lead III is not an output lead
    np.testing.assert_array_equal(S.preprocess(y, FS, LEADS12), S.preprocess(x, FS, LEADS12))


def test_pad_true_zero_pads_after_filtering():
    x = ecg_like(2, seconds=4.0, seed=8)  # 2000 samples < 2500
    got = S.preprocess(x, FS, LEADS12, pad=True)
    assert got.shape == (2, 8, 2500)
    assert np.all(got[..., 2000:] == 0)
    np.testing.assert_allclose(got[..., :2000], reference(x, FS, n=2000), rtol=0, atol=ATOL_UV)


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(x=np.zeros(5000)), S.SignalShapeError, "x"),
    (dict(x=np.zeros((1, 1, 12, 5000))), S.SignalShapeError, "x"),
    (dict(x=np.zeros((12, 5000), dtype=complex)), S.SignalShapeError, "dtype"),
    (dict(leads=LEADS12[:11]), S.SignalShapeError, "leads"),
    (dict(leads="I II"), S.SignalShapeError, "leads"),
    (dict(leads=LEADS12[:11] + ["I"]), S.LeadError, "duplicated"),
    (dict(leads=LEADS12[:11] + ["X"]), S.LeadError, "V6"),
    (dict(fs=0), S.SignalParameterError, "fs"),
    (dict(fs=-500), S.SignalParameterError, "fs"),
    (dict(fs=float("nan")), S.SignalParameterError, "fs"),
    (dict(fs="fast"), S.SignalParameterError, "fs"),
    (dict(x=np.zeros((12, 2000))), S.SignalTooShortError, "2000 samples"),
    (dict(start=4000), S.SignalTooShortError, "start"),
    (dict(start=6000, pad=True), S.SignalTooShortError, "start=6000"),
    (dict(median_kernel=4), S.SignalParameterError, "median_kernel"),
    (dict(median_kernel=0), S.SignalParameterError, "median_kernel"),
    (dict(order=0), S.SignalParameterError, "order"),
    (dict(band=(0.5, 300.0)), S.SignalParameterError, "band"),
    (dict(band=(40.0, 0.5)), S.SignalParameterError, "band"),
    (dict(n_samples=0), S.SignalParameterError, "n_samples"),
    (dict(start=-1), S.SignalParameterError, "start"),
])
def test_bad_inputs_raise_typed_errors(kwargs, exc, match):
    args = dict(x=np.zeros((12, 5000)), fs=FS, leads=LEADS12)
    args.update(kwargs)
    x, fs, leads = args.pop("x"), args.pop("fs"), args.pop("leads")
    with pytest.raises(exc, match=match) as info:
        S.preprocess(x, fs, leads, **args)
    assert isinstance(info.value, S.SignalError) and isinstance(info.value, ValueError)


def test_nan_and_inf_raise_naming_the_record():
    x = ecg_like(4, seed=9)
    x[2, 7, 10] = np.nan
    with pytest.raises(S.NonFiniteSignalError, match="record 2"):
        S.preprocess(x, FS, LEADS12, chunk_size=2)
    x[2, 7, 10] = 0
    x[3, 0, 0] = np.inf
    with pytest.raises(S.NonFiniteSignalError, match="record 3"):
        S.preprocess(x, FS, LEADS12)


# --------------------------------------------------------------------------- QRS detection
def test_detect_qrs_finds_known_beats():
    """Oracle: Gaussian QRS-like pulses (20 ms wide, 1 mV) placed at known samples on a 0.1 mV sine
    baseline; every pulse found within 10 ms, nothing else; 1-D and (leads, samples) agree."""
    fs, n = 500.0, 5000
    truth = np.array([300, 720, 1180, 1600, 2050, 2480, 2900, 3350, 3790, 4200, 4640])
    t = np.arange(n)
    x = 100 * np.sin(2 * np.pi * 0.3 * t / fs)
    for q in truth:
        x = x + 1000 * np.exp(-0.5 * ((t - q) / (0.01 * fs)) ** 2)
    found = S.detect_qrs(x, fs)
    assert found.dtype == np.int64 and (np.diff(found) > 0).all()
    assert len(found) == len(truth) and np.abs(found - truth).max() <= 0.010 * fs
    np.testing.assert_array_equal(S.detect_qrs(np.stack([x, 0.5 * x]), fs), found)
    with pytest.raises(S.SignalShapeError):
        S.detect_qrs(np.zeros((2, 3, 100)), fs)


@pytest.mark.shared
def test_detect_qrs_agrees_with_wfdb_xqrs_on_ptbxl(ptbxl_root):
    """Oracle: wfdb.processing.xqrs_detect on lead II of the preprocessed record; beats matched within
    50 ms, F1 >= 0.8 on each of 5 shared PTB-XL records (mean measured on 60 records: 0.93)."""
    processing = pytest.importorskip("wfdb.processing")

    for k in ("00001", "00002", "00004", "00006", "00007"):
        rec = pytest.importorskip("wfdb").rdrecord(str(ptbxl_root / "records500" / "00000" / f"{k}_hr"))
        x = S.preprocess(rec.p_signal.T[None] * 1000, 500, rec.sig_name)[0]  # mV -> uV
        ours = S.detect_qrs(x, 500)
        ref = np.sort(processing.xqrs_detect(x[1] / 1000, fs=500, verbose=False))
        hits = sum(np.abs(ref - q).min() <= 25 for q in ours) if len(ref) else 0
        assert 2 * hits / (len(ours) + len(ref)) >= 0.8, (k, ours, ref)
