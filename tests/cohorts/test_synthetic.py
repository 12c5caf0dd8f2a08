"""Tests for heartbeit_lib.cohorts.synthetic (DeepFake ECG demo data and the synthetic ST task).

Oracles: the injected marker is measured back on the signal with ``st_deviation`` (ST segment
q+80..160 ms minus PR segment q-100..-60 ms around each detected QRS) and compared with the
injected amplitude x lead weight (the plateau covers the whole ST window, so the expected
ratio is 1 up to float32 rounding: tolerance 0.5%; after preprocessing, where the 0.5 Hz
high-pass bends the plateau slightly, 3%). Generator amplitudes are compared with ranges
seen in real PTB-XL records (median peak-to-peak 1.1-2.3 mV per lead).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from heartbeit_lib import signals
from heartbeit_lib.cohorts import synthetic as Y

N = 16


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread: on a shared 2-core machine, oversubscribed threads are far slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ecgs(one_torch_thread) -> np.ndarray:
    return Y.generate_ecgs(N, seed=0, batch_size=16)


@pytest.mark.slow
def test_checkpoint_is_loaded_with_weights_only(monkeypatch):
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    Y.load_generator.cache_clear()
    try:
        Y.load_generator("cpu")
    finally:
        Y.load_generator.cache_clear()
    assert calls and all(c.get("weights_only") is True for c in calls)


@pytest.mark.slow
def test_generator_leaves_global_torch_rng_alone():
    Y.load_generator.cache_clear()
    torch.manual_seed(123)
    before = torch.get_rng_state().clone()
    Y.generate_ecgs(1, seed=5)  # builds the module (Kaiming init) and draws noise
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.slow
def test_shape_dtype_and_determinism(ecgs):
    assert ecgs.shape == (N, 8, 5000) and ecgs.dtype == np.float32
    assert np.isfinite(ecgs).all()
    again = Y.generate_ecgs(3, seed=0)
    np.testing.assert_array_equal(again, Y.generate_ecgs(3, seed=0))
    # record i of a seed does not depend on batch composition (float32 conv round-off only)
    np.testing.assert_allclose(again, ecgs[:3], rtol=0, atol=0.1)
    np.testing.assert_allclose(Y.generate_ecgs(2, seed=0, start_index=10), ecgs[10:12], rtol=0, atol=0.1)
    assert np.abs(Y.generate_ecgs(1, seed=1) - ecgs[:1]).max() > 100  # another seed, another ECG
    assert Y.generate_ecgs(0).shape == (0, 8, 5000)


def test_amplitudes_and_rhythm_look_like_real_ecgs(ecgs):
    p2p = np.median(ecgs.max(-1) - ecgs.min(-1), axis=0)  # per lead, uV
    assert np.all((p2p > 500) & (p2p < 4000)), p2p
    baseline = np.abs(np.median(ecgs, axis=-1))  # per record and lead, uV
    assert baseline.max() < 300 and np.median(baseline) < 60  # near 0 uV (T waves shift V2-V4 a bit)
    beats = np.array([len(q) for q in Y.detect_qrs(ecgs)])
    assert np.all((beats >= 6) & (beats <= 20)), beats  # 36-120 bpm over 10 s
    lead_ii = ecgs[:, 1]
    assert 300 < np.median(lead_ii.max(-1)) < 2500  # R waves of a few hundred uV to ~2 mV


def test_marker_is_in_positives_only_and_where_documented(ecgs):
    task = Y.make_demo_task(ecgs, seed=1, prevalence=0.3)
    pos = task.labels == 1
    assert task.labels.dtype == np.int64 and pos.sum() == round(0.3 * N)
    assert np.all((task.st_uv[pos] >= 150) & (task.st_uv[pos] <= 350)) and np.all(task.st_uv[~pos] == 0)
    np.testing.assert_array_equal(task.signals[~pos], ecgs[~pos])  # negatives untouched

    qrs = Y.detect_qrs(ecgs)
    delta = Y.st_deviation(task.signals, qrs=qrs) - Y.st_deviation(ecgs, qrs=qrs)  # (N, V1-V4)
    weights = np.array(list(Y.ST_LEAD_WEIGHTS.values()))
    np.testing.assert_allclose(delta[pos], task.st_uv[pos, None] * weights, rtol=5e-3)
    assert np.all(delta[~pos] == 0)
    # other leads (I, II, V5, V6) untouched, and the PR segment / QRS (q-100..q+40 ms) untouched
    np.testing.assert_array_equal(task.signals[:, [0, 1, 6, 7]], ecgs[:, [0, 1, 6, 7]])
    diff = task.signals - ecgs
    for r in np.flatnonzero(pos):
        for q in qrs[r]:
            assert np.all(diff[r, :, max(q - 50, 0):q + 20] == 0)
    # measured on the signals alone (no access to the originals): positives have higher ST in V2+V3
    st = Y.st_deviation(task.signals)
    assert st[pos][:, 1:3].mean() - st[~pos][:, 1:3].mean() > 100


def test_marker_survives_preprocessing(ecgs):
    task = Y.make_demo_task(ecgs, seed=2, prevalence=0.5)
    pos = task.labels == 1
    a = signals.preprocess(ecgs, 500, Y.DEEPFAKE_LEADS)
    b = signals.preprocess(task.signals, 500, Y.DEEPFAKE_LEADS)
    qrs = Y.detect_qrs(a)
    delta = Y.st_deviation(b, qrs=qrs) - Y.st_deviation(a, qrs=qrs)
    np.testing.assert_allclose(delta[pos][:, 1], task.st_uv[pos], rtol=0.03)  # V2, weight 1
    assert np.all(delta[~pos] == 0)


@pytest.mark.slow
def test_demo_cohort_metadata(ecgs):
    x, meta = Y.make_demo_cohort(20, seed=0, prevalence=0.3, n_unlabelled=4)
    assert x.shape == (24, 8, 5000) and x.dtype == np.float32
    assert list(meta.columns[:4]) == ["record_id", "patient_id", "site", "label"]
    assert meta.record_id.is_unique and len(meta) == 24
    assert meta.groupby("patient_id").site.nunique().max() == 1
    assert meta.groupby("patient_id").label.nunique().max() == 1  # labels are per patient
    assert meta.patient_id.nunique() < 24  # several ECGs per patient
    assert meta.groupby("patient_id").size().max() <= 5
    assert set(meta.site) == set(Y.SITES)
    assert (meta.label.iloc[20:] == -1).all() and meta.label.iloc[:20].isin([0, 1]).all()
    assert not set(meta.patient_id.iloc[20:]) & set(meta.patient_id.iloc[:20])
    assert ((meta.st_uv > 0) == (meta.label == 1)).all()
    # signals = generator output (same seed) + marker, times the site gain
    gain = meta.site.map(Y.SITE_GAINS).to_numpy()
    neg = (meta.label != 1).to_numpy()
    np.testing.assert_allclose(x[:N][neg[:N]] / gain[:N][neg[:N], None, None], ecgs[neg[:N]],
                               rtol=1e-6, atol=0.1)
    x2, meta2 = Y.make_demo_cohort(20, seed=0, prevalence=0.3, n_unlabelled=4)
    np.testing.assert_array_equal(x2, x)
    assert meta2.equals(meta)


@pytest.mark.parametrize("call,match", [
    (lambda e: Y.make_demo_task(e, prevalence=1.5), "prevalence"),
    (lambda e: Y.make_demo_task(e, amplitude_uv=(0.0, 10.0)), "amplitude_uv"),
    (lambda e: Y.make_demo_task(e[0, 0]), "x"),
    (lambda e: Y.generate_ecgs(-1), "n"),
    (lambda e: Y.generate_ecgs(2, batch_size=0), "batch_size"),
    (lambda e: Y.inject_st_elevation(e[:2], np.ones(3)), "amplitudes_uv"),
    (lambda e: Y.make_demo_cohort(5, max_ecgs_per_patient=0), "max_ecgs_per_patient"),
])
def test_bad_arguments_raise(ecgs, call, match):
    with pytest.raises(Y.SyntheticError, match=match):
        call(ecgs)
