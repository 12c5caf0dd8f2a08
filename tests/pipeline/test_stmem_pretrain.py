"""ST-MEM pretraining data (issue 25 item 1): streamed from the store per batch, equal to the in-memory inputs.

Oracles: ``prepare_signals`` of the whole split at once (the former in-memory path; exact, resample_poly acts row
by row), ``np.random.default_rng((seed, stream, i, epoch))`` for the mask noise, and ``tracemalloc`` for what the
data build allocates (numpy reports its buffers to it)."""

from __future__ import annotations

import dataclasses
import tracemalloc

import numpy as np
import torch

from heartbeit_lib import cohorts
from heartbeit_lib.classify.signal_data import prepare_signals
from heartbeit_lib.mim.data import TRAIN_STREAM, EpochSampler
from heartbeit_lib.mim import stmem_pretrain
from heartbeit_lib.models import stmem
from heartbeit_lib.pipeline import pretrain
from heartbeit_lib.pipeline.pretrain import signal as pretrain_signal


def test_signal_pretraining_data_streams_from_the_store(tmp_path, make_toy_store):
    store = make_toy_store(tmp_path, n=120)
    store = cohorts.CohortStore(store.root)
    cfg = pretrain.PretrainConfig(cohort_run=str(store.root), modality="signal", model_size="micro", seed=3,
                                  batch_size=8, device="cpu", progress=False)
    rows = pretrain.split_rows(cfg, store)
    tracemalloc.start()
    train, val = pretrain_signal.build_data(cfg, store, rows)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # the in-memory path allocated the split as float64 (n x 8 x 2500 x 8 B = 160 kB per ECG): here ~ the row ids
    per_ecg = 8 * store.shape[-1] * 8
    assert peak < 0.05 * per_ecg * len(rows["train"]), peak
    assert len(train) == len(rows["train"]) and len(val) == len(rows["val"])

    want = prepare_signals(store.signals(rows["train"]), store.fs, cfg.signal_rate)  # the whole split at once
    _, n_patches = stmem.geometry(cfg.signal_rate)
    sampler = EpochSampler(len(train), 8, cfg.seed)
    sampler.set_epoch(2)
    loader = pretrain_signal._loader(train, sampler, 8, cfg, torch.device("cpu"), drop_last=True)
    keys = list(sampler)
    got_x, got_noise = map(torch.cat, zip(*loader))
    assert got_x.dtype == torch.float32 and len(got_x) == len(keys)
    for k, (i, e) in enumerate(keys):
        np.testing.assert_array_equal(got_x[k].numpy(), want[i])
        noise = np.random.default_rng((cfg.seed, TRAIN_STREAM, i, e)).random((8, n_patches), dtype=np.float32)
        np.testing.assert_array_equal(got_noise[k].numpy(), noise)


def test_accumulated_micro_batches_follow_the_large_batch(tmp_path, make_toy_store):
    """Issue 25 item 6, the ST-MEM driver. Oracle: the run with the whole batch per forward; per-epoch losses
    to rtol 1e-5 and the final encoder to atol 3e-5 (float summation order differs)."""
    torch.set_num_threads(1)
    store = cohorts.CohortStore(make_toy_store(tmp_path, n=120).root)
    cfg = pretrain.PretrainConfig(cohort_run=str(store.root), modality="signal", model_size="micro", epochs=2,
                                  batch_size=16, warmup_epochs=0.5, drop_path=0.0, device="cpu", progress=False,
                                  threads=1, save_every=1)
    rows = pretrain.split_rows(cfg, store)
    runs = {}
    for accum in (1, 4):
        train, val = pretrain_signal.build_data(cfg, store, rows)
        runs[accum] = pretrain_signal.train(dataclasses.replace(cfg, accum_steps=accum), train, val,
                                            tmp_path / f"accum{accum}")
    for key in ("train_loss", "val_loss", "lr", "step"):
        np.testing.assert_allclose([h[key] for h in runs[4]["history"]], [h[key] for h in runs[1]["history"]],
                                   rtol=1e-5, err_msg=key)
    a, b = (torch.load(r["checkpoint"], weights_only=True)["backbone"] for r in (runs[1], runs[4]))
    for k, v in a.items():
        torch.testing.assert_close(b[k], v, rtol=0, atol=3e-5, msg=k)


def test_held_out_loss_is_summed_on_the_device(host_reads):
    """Issue 25 item 10b. Oracle: the per-batch host loop it replaced (``float(loss) * len(x)`` summed in Python,
    divided by the count): equal to the last bit (the same float64 operations), and one host read per call
    (the end), not one per batch."""
    torch.manual_seed(0)
    net = stmem.build_pretrainer("micro", 8, 100.0)
    gen = torch.Generator().manual_seed(1)
    n_patches = stmem.geometry(100.0)[1]
    batches = [(torch.randn(b, 8, 30 * n_patches, generator=gen), torch.rand(b, 8, n_patches, generator=gen))
               for b in (4, 4, 3)]  # a partial last batch: the weights matter
    dev = torch.device("cpu")
    got = stmem_pretrain.evaluate(net, batches, dev, 0.75)
    assert len(host_reads) == 1
    tot = 0.0
    with torch.no_grad():
        for x, noise in batches:
            tot += float(net(x, mask_ratio=0.75, noise=noise)["loss"]) * len(x)
    assert got == tot / 11
