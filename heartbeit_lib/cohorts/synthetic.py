"""Embedded demo data: DeepFake ECGs (``deepfake-ecg``) and a synthetic labelled task.

Everything in this module is **synthetic**. It exists so that ``make demo`` and the tests can
run every stage (pretraining, fine-tuning, metrics, saliency, external validation) without any
real data. Nothing learnt from it says anything about real patients.

Signals
-------
:func:`generate_ecgs` runs the Pulse2Pulse generator shipped in the ``deepfake-ecg`` package
(Thambawita et al., Sci Rep 2021; checkpoint ``deepfakeecg/checkpoints/g_stat.pt``, loaded with
``torch.load(..., weights_only=True)``). Its output is ``tanh(...) * 6000`` (the package's own
``generate()`` applies the same factor and then writes integer text files, which is slow, so it
is not used). Output format, from the package README and checked here:

* 8 leads in the order I, II, V1, V2, V3, V4, V5, V6 (= ``signals.OUTPUT_LEADS``);
* 500 Hz, 5000 samples (10 s);
* **microvolts**: after the x6000 scale the amplitudes match real 12-lead ECGs. Measured on 32
  generated ECGs vs the first 40 PTB-XL 500 Hz records of ``../shared/data/ptbxl`` (median
  per-record peak-to-peak, uV): I 933 vs 1164, II 1141 vs 1238, V1 1285 vs 1350, V2 2153 vs
  2274, V3 2114 vs 2106, V4 1992 vs 2105, V5 1647 vs 1910, V6 1331 vs 1532; R waves in lead II
  of a few hundred to ~1400 uV; 10-16 beats per 10 s.

Record ``i`` of seed ``s`` is generated from its own noise stream (a ``torch.Generator``
seeded from ``numpy.random.SeedSequence(s, spawn_key=(0, i))``), so it does not depend on
``n``, ``batch_size`` or which other records are generated with it (up to float32 round-off
of batched convolutions); shards can be generated independently with ``start_index``.

Synthetic task (``make_demo_task``, ``make_demo_cohort``)
--------------------------------------------------------
Positives carry an injected **anterior ST elevation** (the pattern of an anterior STEMI):
after every QRS complex (located by :func:`detect_qrs`) a raised-cosine plateau is added to
V1-V4 with weights ``ST_LEAD_WEIGHTS`` (V1 0.5, V2 1.0, V3 1.0, V4 0.7) times the record's
amplitude ``A`` (uniform in ``amplitude_uv``, default 150-350 uV, i.e. 1.5-3.5 mm at the
usual 10 mm/mV, around the >= 2 mm V2-V3 STEMI criterion). Timing relative to the QRS centre
``q``: ramp up from q+40 ms to q+80 ms (J point), plateau to q+200 ms, ramp down to q+320 ms
(or 100 ms before the next QRS if that is earlier). Negatives are left untouched. The
generator's own ST level in V2-V3 already varies by ~100 uV between records, so the task is
learnable but not trivially separable. :func:`st_deviation` measures the marker on a signal.

:func:`make_demo_cohort` adds synthetic patients (1-5 ECGs each; labels are per patient) and
three synthetic sites ``site_a``/``site_b``/``site_c`` (50/30/20% of patients) with a per-site
amplitude gain (``SITE_GAINS``: 1.00/0.90/1.10, a mild acquisition shift for external
validation).
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import pandas as pd
import torch

from heartbeit_lib import signals
from heartbeit_lib.signals import OUTPUT_LEADS, lead_indices

DEEPFAKE_LEADS: tuple[str, ...] = OUTPUT_LEADS  # I, II, V1-V6 (package README)
DEEPFAKE_FS: float = 500.0                      # Hz
DEEPFAKE_SAMPLES: int = 5000                    # 10 s
DEEPFAKE_SCALE_UV: float = 6000.0               # generator tanh output -> microvolts
ST_LEAD_WEIGHTS: dict[str, float] = {"V1": 0.5, "V2": 1.0, "V3": 1.0, "V4": 0.7}
AMPLITUDE_UV: tuple[float, float] = (150.0, 350.0)  # ST elevation in V2/V3 of positives, uV
SITES: tuple[str, ...] = ("site_a", "site_b", "site_c")
SITE_WEIGHTS: tuple[float, ...] = (0.5, 0.3, 0.2)
SITE_GAINS: dict[str, float] = {"site_a": 1.0, "site_b": 0.9, "site_c": 1.1}

# ST marker timing relative to the QRS centre, seconds (see module docstring)
_ST_ON0, _ST_ON1, _ST_OFF0, _ST_OFF1, _ST_GAP = 0.040, 0.080, 0.200, 0.320, 0.100
# st_deviation windows relative to the QRS centre, seconds
_MEAS_ST = (0.080, 0.160)      # ST segment (J+30 .. J+110 ms)
_MEAS_BASE = (-0.100, -0.060)  # PR segment


class SyntheticError(ValueError):
    """Invalid argument to a synthetic-data function (the message names the parameter)."""


# --------------------------------------------------------------------------- generator
def checkpoint_path() -> Path:
    """Path of the Pulse2Pulse generator weights shipped inside ``deepfakeecg``."""
    import deepfakeecg

    return Path(deepfakeecg.__file__).resolve().parent / "checkpoints" / "g_stat.pt"


@functools.lru_cache(maxsize=4)
def load_generator(device: str = "cpu") -> torch.nn.Module:
    """The ``deepfake-ecg`` generator in eval mode on ``device`` (cached per device).

    The checkpoint is a dict ``{"stat_dict": state_dict}`` read with ``weights_only=True``
    (no pickled code runs). Building the module draws Kaiming initialisations from torch's
    global RNG; that happens inside ``torch.random.fork_rng`` so callers' global RNG state is
    unchanged.
    """
    from deepfakeecg import Generator

    state = torch.load(checkpoint_path(), map_location=device, weights_only=True)
    if not isinstance(state, dict) or "stat_dict" not in state:
        raise SyntheticError(f"{checkpoint_path()}: expected a dict with key 'stat_dict', got "
                             f"{type(state).__name__} {list(state)[:5] if isinstance(state, dict) else ''}")
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the package calls nn.init.kaiming_normal
        net = Generator()
    net.load_state_dict(state["stat_dict"])
    net.to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _record_seed(seed: int, index: int) -> int:
    lo, hi = np.random.SeedSequence(seed, spawn_key=(0, index)).generate_state(2, dtype=np.uint32)
    return ((int(hi) << 32) | int(lo)) & (2**63 - 1)


def _check_count(value: int, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise SyntheticError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def generate_ecgs(n: int, seed: int = 0, batch_size: int = 64, device: str = "cpu",
                  start_index: int = 0) -> np.ndarray:
    """Generate ``n`` DeepFake ECGs.

    Parameters
    ----------
    n : int
        Number of ECGs (>= 0).
    seed : int
        Seed; record ``start_index + i`` of a seed is always the same ECG.
    batch_size : int
        Records per forward pass (memory only; ~13 MB of activations per record).
    device : str
        Torch device for the generator (``"cpu"``, ``"cuda"``).
    start_index : int
        Index of the first record (to generate shards of one long sequence independently).

    Returns
    -------
    np.ndarray, float32, (n, 8, 5000)
        Microvolts, leads I, II, V1-V6, 500 Hz, 10 s. Measured on this project's 2-core
        machine: ~97 ECGs/s when idle (torch using both cores), 20-65 ECGs/s while shared.
    """
    n = _check_count(n, "n")
    batch_size = _check_count(batch_size, "batch_size", 1)
    start_index = _check_count(start_index, "start_index")
    seed = _check_count(seed, "seed")
    out = np.empty((n, len(DEEPFAKE_LEADS), DEEPFAKE_SAMPLES), dtype=np.float32)
    if n == 0:
        return out
    net = load_generator(device)
    shape = (len(DEEPFAKE_LEADS), DEEPFAKE_SAMPLES)
    for b0 in range(0, n, batch_size):
        noise = torch.empty((min(batch_size, n - b0),) + shape)
        for j in range(noise.shape[0]):
            g = torch.Generator().manual_seed(_record_seed(seed, start_index + b0 + j))
            noise[j].uniform_(-1.0, 1.0, generator=g)
        with torch.inference_mode():
            y = net(noise.to(device)) * DEEPFAKE_SCALE_UV
        out[b0:b0 + noise.shape[0]] = y.float().cpu().numpy()
    return out


# --------------------------------------------------------------------------- beats and ST
def _as_batch(x, name: str = "x") -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or not np.issubdtype(arr.dtype, np.number):
        raise SyntheticError(f"{name}: expected numeric (N, leads, samples) or (leads, samples), got shape "
                             f"{np.shape(x)} dtype {arr.dtype}")
    return arr


def detect_qrs(x: np.ndarray, fs: float = DEEPFAKE_FS) -> list[np.ndarray]:
    """QRS centres of each record by :func:`heartbeit_lib.signals.detect_qrs` (the library's one detector).

    Parameters
    ----------
    x : (N, leads, samples) or (leads, samples), microvolts at ``fs`` Hz.

    Returns
    -------
    list of N sorted int64 arrays of sample indices.
    """
    return [signals.detect_qrs(rec, fs) for rec in _as_batch(x)]


def st_profile(qrs: np.ndarray, n_samples: int, fs: float = DEEPFAKE_FS) -> np.ndarray:
    """Unit-height ST-elevation profile (samples,) float64 for QRS centres ``qrs``.

    Raised-cosine ramp up q+40..q+80 ms, plateau to q+200 ms, ramp down to q+320 ms (or to
    100 ms before the next QRS when that comes first); zero elsewhere.
    """
    t = np.arange(n_samples) / fs
    prof = np.zeros(n_samples)
    qs = np.sort(np.asarray(qrs, dtype=np.int64))
    for j, q in enumerate(qs):
        tq = q / fs
        on0, on1, off0, off1 = tq + _ST_ON0, tq + _ST_ON1, tq + _ST_OFF0, tq + _ST_OFF1
        if j + 1 < len(qs):
            off1 = min(off1, qs[j + 1] / fs - _ST_GAP)
            off0 = min(off0, off1 - 0.020)
        if off0 <= on1:
            continue  # RR too short for an ST segment
        up = (t >= on0) & (t < on1)
        prof[up] = np.maximum(prof[up], 0.5 - 0.5 * np.cos(np.pi * (t[up] - on0) / (on1 - on0)))
        flat = (t >= on1) & (t < off0)
        prof[flat] = 1.0
        down = (t >= off0) & (t < off1)
        prof[down] = np.maximum(prof[down], 0.5 + 0.5 * np.cos(np.pi * (t[down] - off0) / (off1 - off0)))
    return prof


def st_deviation(x: np.ndarray, fs: float = DEEPFAKE_FS, leads: Sequence[str] = DEEPFAKE_LEADS,
                 measure_leads: Sequence[str] = tuple(ST_LEAD_WEIGHTS),
                 qrs: list[np.ndarray] | None = None) -> np.ndarray:
    """ST level relative to the PR segment, per record and lead, microvolts.

    For every QRS centre q with both windows inside the record: mean over q+80..q+160 ms
    minus mean over q-100..q-60 ms; averaged over beats (NaN when no beat qualifies).

    Parameters
    ----------
    x : (N, L, T) or (L, T) microvolts at ``fs`` Hz with rows named ``leads``.
    measure_leads : leads to report (default V1-V4).
    qrs : optional QRS centres per record (default: :func:`detect_qrs` on ``x``).

    Returns
    -------
    np.ndarray float64 (N, len(measure_leads))
    """
    arr = _as_batch(x)
    if len(leads) != arr.shape[1]:
        raise SyntheticError(f"leads: {len(leads)} names for {arr.shape[1]} lead rows of x")
    idx = lead_indices(leads, measure_leads)
    if qrs is None:
        qrs = detect_qrs(arr, fs)
    s0, s1 = (int(round(v * fs)) for v in _MEAS_ST)
    b0, b1 = (int(round(v * fs)) for v in _MEAS_BASE)
    out = np.full((arr.shape[0], len(idx)), np.nan)
    T = arr.shape[-1]
    for r, (rec, qs) in enumerate(zip(arr, qrs)):
        vals = [rec[idx, q + s0:q + s1].mean(-1) - rec[idx, q + b0:q + b1].mean(-1)
                for q in qs if q + b0 >= 0 and q + s1 <= T]
        if vals:
            out[r] = np.mean(vals, axis=0)
    return out


def inject_st_elevation(x: np.ndarray, amplitudes_uv: np.ndarray, fs: float = DEEPFAKE_FS,
                        leads: Sequence[str] = DEEPFAKE_LEADS,
                        weights: dict[str, float] | None = None) -> np.ndarray:
    """Add the synthetic ST-elevation marker to each record with a non-zero amplitude.

    Parameters
    ----------
    x : (N, L, T) microvolts at ``fs`` Hz, rows named ``leads``.
    amplitudes_uv : (N,) float, elevation in the weight-1 leads (0 leaves a record untouched).
    weights : lead -> weight (default ``ST_LEAD_WEIGHTS``: V1 0.5, V2 1, V3 1, V4 0.7).

    Returns
    -------
    np.ndarray float32 (N, L, T), a modified copy.
    """
    arr = _as_batch(x)
    amps = np.asarray(amplitudes_uv, dtype=np.float64)
    if amps.shape != (arr.shape[0],) or not np.isfinite(amps).all():
        raise SyntheticError(f"amplitudes_uv: expected {arr.shape[0]} finite values, got shape {amps.shape}")
    if len(leads) != arr.shape[1]:
        raise SyntheticError(f"leads: {len(leads)} names for {arr.shape[1]} lead rows of x")
    weights = dict(ST_LEAD_WEIGHTS if weights is None else weights)
    idx = lead_indices(leads, list(weights))
    w = np.array(list(weights.values()), dtype=np.float64)[:, None]
    out = arr.astype(np.float32, copy=True)
    pos = np.flatnonzero(amps != 0)
    if pos.size == 0:
        return out
    qrs = detect_qrs(arr[pos], fs)
    for r, qs in zip(pos, qrs):
        prof = st_profile(qs, arr.shape[-1], fs)
        out[r, idx] += (amps[r] * w * prof[None, :]).astype(np.float32)
    return out


def _check_prevalence(prevalence: float) -> float:
    p = float(prevalence)
    if not 0.0 <= p <= 1.0:
        raise SyntheticError(f"prevalence: expected a fraction in [0, 1], got {prevalence!r}")
    return p


def _check_amplitude(amplitude_uv: tuple[float, float]) -> tuple[float, float]:
    lo, hi = (float(a) for a in amplitude_uv)
    if not (0 < lo <= hi):
        raise SyntheticError(f"amplitude_uv: expected (low, high) with 0 < low <= high uV, got {amplitude_uv!r}")
    return lo, hi


class DemoTask(NamedTuple):
    """Synthetic labelled task: modified signals, labels, injected amplitudes."""

    signals: np.ndarray  # float32 (N, 8, T) microvolts
    labels: np.ndarray   # int64 (N,) 0/1
    st_uv: np.ndarray    # float64 (N,) injected V2/V3 ST elevation, 0 for negatives


def make_demo_task(x: np.ndarray, seed: int = 0, prevalence: float = 0.3,
                   amplitude_uv: tuple[float, float] = AMPLITUDE_UV,
                   fs: float = DEEPFAKE_FS, leads: Sequence[str] = DEEPFAKE_LEADS) -> DemoTask:
    """Label ``round(prevalence * N)`` random records positive and inject ST elevation into them.

    Parameters
    ----------
    x : (N, L, T) microvolts at ``fs`` Hz (e.g. from :func:`generate_ecgs`).
    seed : int
        Seeds the choice of positives and their amplitudes.
    prevalence : float in [0, 1]
    amplitude_uv : (low, high)
        Uniform range of the ST elevation in V2/V3 of each positive (default 150-350 uV).

    Returns
    -------
    DemoTask(signals float32 (N, L, T), labels int64 (N,), st_uv float64 (N,))
    """
    arr = _as_batch(x)
    p = _check_prevalence(prevalence)
    lo, hi = _check_amplitude(amplitude_uv)
    rng = np.random.default_rng(np.random.SeedSequence(_check_count(seed, "seed"), spawn_key=(2,)))
    n = arr.shape[0]
    labels = np.zeros(n, dtype=np.int64)
    labels[rng.permutation(n)[:int(round(p * n))]] = 1
    amps = np.where(labels == 1, rng.uniform(lo, hi, size=n), 0.0)
    return DemoTask(inject_st_elevation(arr, amps, fs, leads), labels, amps)


def make_demo_cohort(n: int, seed: int = 0, prevalence: float = 0.3, *, n_unlabelled: int = 0,
                     amplitude_uv: tuple[float, float] = AMPLITUDE_UV, max_ecgs_per_patient: int = 5,
                     batch_size: int = 64, device: str = "cpu") -> tuple[np.ndarray, pd.DataFrame]:
    """A synthetic multi-site cohort: DeepFake ECGs, patients, sites, ST-elevation labels.

    ``n`` labelled ECGs come first, then ``n_unlabelled`` ECGs with label -1 (for pretraining)
    from other patients. Patients have 1..``max_ecgs_per_patient`` ECGs (1 + Poisson(1),
    capped); a patient's ECGs share its site and label; ``round(prevalence * patients)``
    labelled patients are positive, and each of their ECGs gets the ST marker with its own
    amplitude. Signals are then scaled by the site's gain (``SITE_GAINS``).

    Returns
    -------
    x : np.ndarray float32 (n + n_unlabelled, 8, 5000)
        Microvolts, leads I, II, V1-V6, 500 Hz.
    meta : pandas.DataFrame, one row per ECG in the order of ``x``
        ``record_id`` str (``demo000000``...), ``patient_id`` str (``P00000``...), ``site`` str,
        ``label`` int64 (1/0, -1 unlabelled), ``st_uv`` float (injected V2/V3 elevation after the
        site gain, uV; 0 for negatives and unlabelled).
    """
    n = _check_count(n, "n")
    n_unlabelled = _check_count(n_unlabelled, "n_unlabelled")
    seed = _check_count(seed, "seed")
    max_per = _check_count(max_ecgs_per_patient, "max_ecgs_per_patient", 1)
    p = _check_prevalence(prevalence)
    lo, hi = _check_amplitude(amplitude_uv)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))

    def patients(count: int) -> np.ndarray:
        sizes = []
        while sum(sizes) < count:
            sizes.append(int(min(1 + rng.poisson(1.0), max_per)))
        if sizes:
            sizes[-1] -= sum(sizes) - count
        return np.repeat(np.arange(len(sizes)), sizes)

    pat_l = patients(n)
    pat_u = patients(n_unlabelled)
    n_pl = int(pat_l.max()) + 1 if n else 0
    n_pu = int(pat_u.max()) + 1 if n_unlabelled else 0
    pos_pat = np.zeros(n_pl, dtype=np.int64)
    pos_pat[rng.permutation(n_pl)[:int(round(p * n_pl))]] = 1
    site_idx = rng.choice(len(SITES), size=n_pl + n_pu, p=SITE_WEIGHTS)
    patient = np.concatenate([pat_l, pat_u + n_pl]).astype(np.int64)
    label = np.concatenate([pos_pat[pat_l], -np.ones(n_unlabelled, dtype=np.int64)])
    amps = np.where(label == 1, rng.uniform(lo, hi, size=label.size), 0.0)

    x = generate_ecgs(n + n_unlabelled, seed=seed, batch_size=batch_size, device=device)
    x = inject_st_elevation(x, amps)
    sites = np.array(SITES)[site_idx[patient]]
    gain = np.array([SITE_GAINS[s] for s in sites], dtype=np.float64)
    x *= gain.astype(np.float32)[:, None, None]
    meta = pd.DataFrame({
        "record_id": [f"demo{i:06d}" for i in range(x.shape[0])],
        "patient_id": [f"P{j:05d}" for j in patient],
        "site": sites,
        "label": label,
        "st_uv": amps * gain,
    })
    return x, meta
