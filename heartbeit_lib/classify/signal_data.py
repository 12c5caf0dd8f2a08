"""Signal input for the 1-D models: store rows -> decimated, scaled float32 tensors.

The cohort store holds (N, 8, 2500) float32 microvolts at 500 Hz (5 s), already band-passed
0.5-40 Hz (``signals.preprocess``). The signal models read it as:

1. **Rate.** Resampled to ``signal_rate`` Hz (default 100, the PTB-XL benchmark's rate) with
   ``scipy.signal.resample_poly`` (500 -> 100 Hz: up 1, down 5). Why not every 5th sample: the store's
   4th-order 40 Hz low-pass attenuates 50 Hz by only 18 dB (55 Hz by ~24 dB), so content between 50
   and 60 Hz would fold back into 40-50 Hz. ``resample_poly`` applies a linear-phase FIR anti-alias
   filter (Kaiser window, cut-off at the new Nyquist, 50 Hz) with its delay compensated, so QRS
   timing does not move; measured through the whole chain, a 55 Hz tone aliases below -40 dB and
   60 Hz mains below -60 dB, and 10 Hz passes within 1 % (tests/classify/test_signal_data.py).
   ``scipy.signal.decimate``'s default, an order-8 Chebyshev IIR run forward-backward with its
   cut-off at 40 Hz, would also do, but ripples in the band and has filtfilt edge transients.
   Any rational rate works (250 Hz: up 1, down 2).
2. **Scale.** Divided by ``SCALE_UV`` = 1000 uV, i.e. millivolts: ECG amplitudes become O(1)
   (QRS ~0.5-3 mV) without any statistic of any split, so evaluation data never leaks into the
   input (the benchmark fitted a StandardScaler on its training fold; a fixed constant is the
   simpler leak-free choice and the networks start with BatchNorm/LayerNorm anyway).
3. **Crops (option, default off).** The benchmark trains on random 2.5 s crops and scores test
   records by sliding 2.5 s windows with stride 1.25 s, aggregating window outputs. Here
   ``crop_seconds=None`` (default) feeds the whole 5 s record in training and evaluation;
   ``crop_seconds=2.5`` turns on random crops in :class:`StoreSignalDataset` (training) and
   :func:`sliding_window_logits` does the test-time windows (mean of window logits by default,
   ``aggregate="max"`` is the benchmark's choice).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import scipy.signal
import torch
from torch.utils.data import Dataset

STORE_FS = 500.0       # Hz, the cohort store's rate
SIGNAL_RATE = 100.0    # Hz, default input rate of the signal models (PTB-XL benchmark)
SCALE_UV = 1000.0      # uV per input unit: inputs are millivolts
CROP_STRIDE = 0.5      # sliding-window stride as a fraction of the window (benchmark: 1.25 s of 2.5 s)


def prepare_signals(x: np.ndarray, fs: float = STORE_FS, signal_rate: float = SIGNAL_RATE) -> np.ndarray:
    """Resample and scale store signals for the signal models.

    Parameters
    ----------
    x : (N, leads, T) or (leads, T) float microvolts at ``fs`` Hz.
    signal_rate : output rate in Hz; ``fs / signal_rate`` must be a ratio of small integers.

    Returns
    -------
    float32 (N, leads, T * signal_rate / fs) millivolts (``resample_poly`` output length:
    ceil(T * up / down)).
    """
    x = np.asarray(x)
    if x.ndim not in (2, 3) or not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"signals must be float (N, leads, T) or (leads, T), got {x.dtype} {x.shape}")
    if signal_rate <= 0 or fs <= 0:
        raise ValueError(f"signal_rate and fs must be positive Hz, got signal_rate={signal_rate}, fs={fs}")
    ratio = Fraction(signal_rate / fs).limit_denominator(1000)
    if abs(float(ratio) - signal_rate / fs) > 1e-9:
        raise ValueError(f"signal_rate={signal_rate} Hz is not a small rational fraction of fs={fs} Hz")
    y = x.astype(np.float64) if ratio == 1 else scipy.signal.resample_poly(
        x.astype(np.float64), ratio.numerator, ratio.denominator, axis=-1)
    return (y / SCALE_UV).astype(np.float32)


def prepared_length(n_samples: int, fs: float, signal_rate: float = SIGNAL_RATE) -> int:
    """Samples per lead after :func:`prepare_signals` of ``n_samples`` at ``fs`` Hz (``resample_poly``'s
    ``ceil(n * up / down)``)."""
    ratio = Fraction(signal_rate / fs).limit_denominator(1000)
    return -(-int(n_samples) * ratio.numerator // ratio.denominator)


def crop_length(crop_seconds: float | None, signal_rate: float, n_samples: int) -> int:
    """Window length in samples (the whole record when ``crop_seconds`` is None)."""
    if crop_seconds is None:
        return n_samples
    n = int(round(crop_seconds * signal_rate))
    if not 1 <= n <= n_samples:
        raise ValueError(f"crop_seconds={crop_seconds} gives {n} samples; the records have {n_samples}")
    return n


def window_starts(n_samples: int, window: int, stride_fraction: float = CROP_STRIDE) -> list[int]:
    """Window starts covering ``n_samples``: every ``round(window * stride_fraction)`` samples, plus a
    last window flush with the end (the benchmark's TimeseriesDatasetCrops rule)."""
    stride = max(1, int(round(window * stride_fraction)))
    starts = list(range(0, n_samples - window + 1, stride))
    if starts[-1] != n_samples - window:
        starts.append(n_samples - window)
    return starts


@torch.no_grad()
def sliding_window_logits(model: torch.nn.Module, x: torch.Tensor, window: int,
                          stride_fraction: float = CROP_STRIDE, aggregate: str = "mean") -> torch.Tensor:
    """Test-time windows: (N, leads, T) -> (N, classes), the mean (or max) of the windows' logits.

    ``window >= T`` is one window, i.e. the plain forward pass.
    """
    if aggregate not in ("mean", "max"):
        raise ValueError(f"aggregate must be 'mean' or 'max', got {aggregate!r}")
    if window >= x.shape[-1]:
        return model(x)
    outs = torch.stack([model(x[..., s: s + window]) for s in window_starts(x.shape[-1], window, stride_fraction)])
    return outs.mean(0) if aggregate == "mean" else outs.amax(0)


class StoreSignalDataset(Dataset):
    """Store rows streamed as signal-model inputs: items ``(float32 (leads, T') millivolts at signal_rate Hz,
    target)``, read from the store's float16 shards batch by batch (``__getitems__``): nothing is held in memory
    beyond one batch, so fine-tuning at 17k (or 8.5 M) ECGs costs no more RAM than at 100.

    Each batch is ``prepare_signals(store.signals(rows), store.fs, signal_rate)`` (row by row the same values as
    preparing the whole split at once), then, with ``crop_samples``, a random crop per item whose start comes from
    ``np.random.default_rng((seed, epoch, i))`` (reproducible, independent of the batch and the number of loader
    workers; call :meth:`set_epoch` each epoch).

    Parameters
    ----------
    store : a ``CohortStore`` (any layout: ``store.shape``, ``store.fs``).
    indices : (n,) int64 store rows.
    targets : (n,) int64 class labels, or (n, C) float32 0/1 multi-label targets; None (pretraining): items are
        the signals alone.
    """

    def __init__(self, store, indices: np.ndarray, targets: np.ndarray | None, signal_rate: float = SIGNAL_RATE,
                 crop_samples: int | None = None, seed: int = 0):
        self.store, self.indices = store, np.asarray(indices, np.int64)
        if targets is not None:
            targets = np.asarray(targets)
            if len(targets) != len(self.indices):
                raise ValueError(f"{len(targets)} targets for {len(self.indices)} rows")
            targets = targets.astype(np.float32) if targets.ndim == 2 else targets.astype(np.int64)
        self.targets = targets
        self.signal_rate, self.fs = float(signal_rate), float(getattr(store, "fs", STORE_FS))
        n_out = prepared_length(store.shape[-1], self.fs, self.signal_rate)
        if crop_samples is not None and not 1 <= crop_samples <= n_out:
            raise ValueError(f"crop_samples={crop_samples} outside 1..{n_out}")
        self.n_samples, self.crop_samples, self.seed, self.epoch = n_out, crop_samples, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def prepared(self, pos) -> np.ndarray:
        """float32 (len(pos), leads, n_samples) millivolts at ``signal_rate`` Hz: the whole records of items ``pos``,
        one ``store.signals`` read (float16 shards -> float32) and :func:`prepare_signals` of that batch only."""
        return prepare_signals(self.store.signals(self.indices[np.asarray(pos, np.int64)]), self.fs,
                               self.signal_rate)

    def __getitems__(self, pos) -> list:
        pos = np.asarray(pos, np.int64)
        x = self.prepared(pos)
        c = self.crop_samples
        if c is not None and c < x.shape[-1]:
            starts = [np.random.default_rng((self.seed, self.epoch, int(i))).integers(0, x.shape[-1] - c + 1)
                      for i in pos]
            x = np.stack([x[k, :, s: s + c] for k, s in enumerate(starts)])
        xs = torch.from_numpy(np.ascontiguousarray(x)).unbind(0)
        if self.targets is None:
            return list(xs)
        return list(zip(xs, torch.from_numpy(self.targets[pos]).unbind(0)))

    def __getitem__(self, i: int):
        return self.__getitems__([i])[0]


def fit_standardizer(store, indices: np.ndarray, signal_rate: float = SIGNAL_RATE, chunk: int = 2048
                 ) -> tuple[float, float]:
    """Mean and standard deviation (ddof 0) of every value of the prepared signals of ``indices`` (millivolts
    at ``signal_rate``), one pair for all leads and samples: ``sklearn.preprocessing.StandardScaler`` fitted on
    the flattened training values, as the PTB-XL benchmark (``utils.preprocess_signals``). Streams the rows in
    chunks with float64 sums, so the split is never in memory at once."""
    indices = np.asarray(indices, np.int64)
    if not len(indices):
        raise ValueError("fit_standardizer: no rows")
    s1 = s2 = 0.0
    n = 0
    for a in range(0, len(indices), chunk):
        x = prepare_signals(store.signals(indices[a:a + chunk]), float(store.fs), signal_rate).astype(np.float64)
        s1 += float(x.sum())
        s2 += float(np.square(x).sum())
        n += x.size
    mean = s1 / n
    std = float(np.sqrt(max(s2 / n - mean * mean, 0.0)))
    return mean, std if std > 0 else 1.0


class SignalDatasetFactory:
    """The fine-tuning engine's dataset factory for the signal models.

    Same call as ``classify.data.default_dataset_factory`` (``(store, indices, image_size, layout) ->
    Dataset``; ``image_size`` and ``layout`` do not apply and are ignored), but yields
    ``(float32 (leads, T') millivolts at signal_rate Hz, target)`` streamed from the store
    (:class:`StoreSignalDataset`): no rendering, no image normalisation. ``crop_seconds`` crops training items
    (``train=True``); evaluation items are whole records (the engine windows them). ``targets`` maps store rows to
    targets (default: the manifest's ``label``).
    """

    def __init__(self, signal_rate: float = SIGNAL_RATE, crop_seconds: float | None = None, seed: int = 0):
        self.signal_rate, self.crop_seconds, self.seed = float(signal_rate), crop_seconds, seed

    def __call__(self, store, indices: np.ndarray, image_size=None, layout=None, targets: np.ndarray | None = None,
                 train: bool = False) -> StoreSignalDataset:
        targets = store.labels(indices) if targets is None else targets
        n = prepared_length(store.shape[-1], float(store.fs), self.signal_rate)
        crop = crop_length(self.crop_seconds, self.signal_rate, n) if (self.crop_seconds and train) else None
        return StoreSignalDataset(store, indices, targets, self.signal_rate, crop, self.seed)
