"""Signal input (heartbeit_lib.classify.signal_data): rate, scale, crops, sliding windows.

Oracles: ``scipy.signal.resample_poly`` (rtol 1e-6 after the float32 cast) and the spectrum of
pure tones through the store's band-pass and then the decimation (a 10 Hz tone keeps its amplitude
within 1 %, a 55 Hz tone - above the new 50 Hz Nyquist - aliases to 45 Hz below 1 %, where plain
``x[..., ::5]`` leaves more than 3 %).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import torch

from heartbeit_lib import signals
from heartbeit_lib.classify import signal_data as sd


def test_prepare_equals_scipy_resample_poly_in_millivolts():
    x = np.random.default_rng(0).normal(0, 500, size=(3, 8, 2500)).astype(np.float32)
    y = sd.prepare_signals(x)
    assert y.dtype == np.float32 and y.shape == (3, 8, 500)
    ref = scipy.signal.resample_poly(x.astype(np.float64), 1, 5, axis=-1) / 1000.0
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-7)
    assert sd.prepare_signals(x, signal_rate=250).shape == (3, 8, 1250)
    np.testing.assert_allclose(sd.prepare_signals(x, signal_rate=500), x / 1000.0, rtol=1e-6)


def _amplitude(y, f, fs):
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y)))) / (np.hanning(len(y)).sum() / 2)
    return spec[int(round(f * len(y) / fs))]


def test_anti_alias_keeps_the_band_and_rejects_above_nyquist():
    """Store chain (signals.bandpass at 500 Hz) then prepare_signals, on pure tones."""
    t = np.arange(5000) / 500.0  # 10 s, so tone bins are exact at both rates

    def chain(f):
        x = signals.bandpass(1000 * np.sin(2 * np.pi * f * t)[None], 500.0)
        return x, sd.prepare_signals(x[None])[0, 0][100:-100]

    assert abs(_amplitude(chain(10)[1], 10, 100) - 1.0) < 0.01  # 1 mV in, 1 mV out
    band55, out55 = chain(55)
    assert _amplitude(out55, 45, 100) < 0.01  # 55 Hz would alias to 45 Hz: below 1 % (-40 dB)
    assert _amplitude(band55[0, ::5][100:-100] / 1000, 45, 100) > 0.03  # plain x[::5] keeps it
    assert _amplitude(chain(60)[1], 40, 100) < 0.001  # mains: below -60 dB


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="float"):
        sd.prepare_signals(np.zeros((2, 8, 100), dtype=np.int16))
    with pytest.raises(ValueError, match="rational"):
        sd.prepare_signals(np.zeros((8, 100)), signal_rate=100 * np.pi)
    with pytest.raises(ValueError, match="crop_seconds"):
        sd.crop_length(6.0, 100, 500)


class _ArrayStore:
    """In-memory stand-in for a cohort store: ``shape``, ``fs`` and ``signals(rows)``."""

    def __init__(self, x: np.ndarray, fs: float):
        self.x, self.fs, self.shape = x, fs, x.shape

    def signals(self, rows) -> np.ndarray:
        return self.x[np.asarray(rows)]


def test_dataset_whole_records_and_reproducible_crops():
    """Oracle: prepare_signals of the record (whole items), true slices of it (crops)."""
    x = np.random.default_rng(1).normal(size=(5, 8, 500)).astype(np.float32)
    store, labels = _ArrayStore(x, 100.0), np.array([0, 1, 0, 1, 1])
    prep = sd.prepare_signals(x, 100.0, 100.0)
    whole = sd.StoreSignalDataset(store, np.arange(5), labels, 100.0)
    xi, yi = whole[3]
    assert xi.dtype == torch.float32 and torch.equal(xi, torch.from_numpy(prep[3])) and yi == 1
    assert [int(y) for _, y in whole.__getitems__([4, 0])] == [1, 0]
    assert torch.equal(sd.StoreSignalDataset(store, np.arange(5), None, 100.0)[2], torch.from_numpy(prep[2]))

    crops = sd.StoreSignalDataset(store, np.arange(5), labels, 100.0, crop_samples=sd.crop_length(2.5, 100, 500),
                                  seed=7)
    a, _ = crops[2]
    assert a.shape == (8, 250)
    start = int(np.flatnonzero((prep[2, 0, :251] == a[0, 0].item()))[0])
    assert torch.equal(a, torch.from_numpy(prep[2, :, start: start + 250]))  # a true slice of the record
    assert torch.equal(crops[2][0], a)  # same epoch -> same crop
    assert torch.equal(crops.__getitems__([0, 2])[1][0], a)  # the crop does not depend on the batch
    starts = set()
    for epoch in range(8):
        crops.set_epoch(epoch)
        c = crops[2][0]
        starts.add(int(np.flatnonzero(prep[2, 0] == c[0, 0].item())[0]))
    assert len(starts) > 1  # crops move between epochs


def test_sliding_windows_average_the_window_logits():
    assert sd.window_starts(500, 250) == [0, 125, 250]
    assert sd.window_starts(500, 200) == [0, 100, 200, 300]
    assert sd.window_starts(510, 250) == [0, 125, 250, 260]  # last window flush with the end

    class MeanModel(torch.nn.Module):
        def forward(self, x):  # (N, C, T) -> (N, 2): per-window means of leads 0 and 1
            return x[:, :2].mean(-1)

    x = torch.randn(3, 8, 500)
    got = sd.sliding_window_logits(MeanModel(), x, 250)
    want = torch.stack([x[:, :2, s: s + 250].mean(-1) for s in (0, 125, 250)]).mean(0)
    assert torch.allclose(got, want, atol=1e-6)
    got_max = sd.sliding_window_logits(MeanModel(), x, 250, aggregate="max")
    assert torch.equal(got_max, torch.stack([x[:, :2, s: s + 250].mean(-1) for s in (0, 125, 250)]).amax(0))
    assert torch.equal(sd.sliding_window_logits(MeanModel(), x, 500), x[:, :2].mean(-1))  # one window


@pytest.mark.parametrize("n, fs, rate", [(2500, 500, 100), (1000, 100, 100), (2500, 500, 250), (1001, 500, 100)])
def test_prepared_length_equals_prepare_signals(n, fs, rate):
    """Oracle: the output length of prepare_signals (scipy.signal.resample_poly) itself."""
    assert sd.prepared_length(n, fs, rate) == sd.prepare_signals(np.zeros((1, 1, n), np.float32), fs, rate).shape[-1]
