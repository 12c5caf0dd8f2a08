"""Issue 17 (GPU readiness at paper scale) and issue 18 sections 1 and 6, tested on CPU (gloo).

Oracles: a single-process token precompute (byte-for-byte file equality), ``/proc/self/fd`` (open descriptors),
today's float path ``render.RenderedECGDataset`` + ``mim.model.normalize`` (exact tensor equality), a brute-force
nearest-neighbour search on the token grid, and hand-built manifests with known evaluation patients.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp

from conftest import free_port, gloo_rank

from heartbeit_lib import cohorts, render
from heartbeit_lib.classify import data as cdata
from heartbeit_lib.cohorts import store as store_mod
from heartbeit_lib.mim import checkpoint, tokenizers
from heartbeit_lib.mim.model import DeviceImages, normalize
from heartbeit_lib.pipeline import pretrain as P
from heartbeit_lib.pipeline import preprocess


def _store(root, n=40, shard_size=512, seed=0, labelled=False):
    rng = np.random.default_rng(seed)
    t = np.arange(2500) / 500
    x = (800 * np.sin(2 * np.pi * rng.uniform(0.8, 2, (n, 8, 1)) * t) + rng.normal(0, 20, (n, 8, 2500)))
    meta = pd.DataFrame({"record_id": [f"r{i}" for i in range(n)], "patient_id": [f"p{i // 2}" for i in range(n)],
                         "site": "a", "label": (np.arange(n) // 2) % 2 if labelled else -1})
    return cohorts.build_store_from_arrays(root, x.astype(np.float32), meta,
                                           task="custom" if labelled else "unlabelled", shard_size=shard_size)


# ---------------------------------------------------------------- item 1: distributed token precompute


def _precompute_worker(rank: int, world: int, port: int, store_dir: str, tok_path: str, cache: str) -> None:
    with gloo_rank(rank, world, port):
        r, w, _ = P.init_distributed()
        tok = tokenizers.load_tokenizer("ecg_kmeans", tok_path)
        tokenizers.precompute_tokens(cohorts.CohortStore(store_dir), tok, 32, cache_dir=cache, batch_size=8,
                                     rank=r, world=w, barrier=P.long_barrier)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_process_token_precompute_equals_single_process_byte_for_byte(tmp_path):
    store = _store(tmp_path / "store", n=37)  # 5 batches of 8: rank 0 takes 3, rank 1 takes 2 (one partial)
    tok = tokenizers.fit_kmeans_tokenizer(render.render_ecg(store.signals(np.arange(20)), size=32), 16, seed=0)
    tok_path = tok.save(tmp_path / "tok.pt")
    one = tokenizers.precompute_tokens(store, tok, 32, cache_dir=tmp_path / "one", batch_size=8)
    mp.start_processes(_precompute_worker, args=(2, free_port(), str(store.root), str(tok_path),
                                                 str(tmp_path / "two")), nprocs=2, join=True, start_method="spawn")
    name = os.path.basename(one.filename)
    assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    assert sorted(os.listdir(tmp_path / "two")) == sorted(os.listdir(tmp_path / "one"))  # no partial file left
    # and the tokens are those of the rendered images (oracle: the tokenizer on render_ecg)
    np.testing.assert_array_equal(one, tok.tokenize(render.render_ecg(store.signals(np.arange(37)), size=32)))


# ---------------------------------------------------------------- item 2: open shard cap


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd to count descriptors")
def test_random_reads_over_hundreds_of_shards_keep_at_most_the_cap_open(tmp_path):
    store = _store(tmp_path / "store", n=300, shard_size=1)  # 300 shards
    assert store.info["n_shards"] == 300
    store.max_open_shards = 16
    rng = np.random.default_rng(0)
    base = _open_fds()
    peak = 0
    for _ in range(30):
        idx = rng.choice(len(store), 64, replace=False)
        x = store.signals(idx)
        peak = max(peak, _open_fds() - base)
    assert 0 < peak <= 16 and len(store._shards) == 16
    # the rows are still right after evictions (oracle: a fresh store without a cap)
    fresh = cohorts.CohortStore(store.root)
    fresh.max_open_shards = 10_000
    np.testing.assert_array_equal(x, fresh.signals(idx))
    assert store_mod.MAX_OPEN_SHARDS <= 256  # well under a 1,024 soft limit with 8 loader workers... per process


# ---------------------------------------------------------------- item 3: resume with fewer devices


def test_checkpoint_of_a_process_that_saw_more_devices_resumes(tmp_path, monkeypatch):
    cfg = P.PretrainConfig(model_size="micro", image_size=32, epochs=2, batch_size=8, num_masked=2, min_block=1,
                           warmup_epochs=0.5, drop_path=0.0, device="cpu", progress=False, save_every=1)
    g = torch.Generator().manual_seed(0)
    data = P.MIMData(P.MIMDataset(torch.rand(16, 3, 32, 32, generator=g),
                                  torch.randint(0, 8, (16, 2, 2), generator=g).numpy(), 2, 1),
                     None, 8, {"kind": "test", "fingerprint": "x", "vocab_size": 8})
    run = tmp_path / "run"

    def stop(epoch, line):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        P.train(cfg, data, run, on_epoch_end=stop)
    ck_path = run / "checkpoints" / "last.pt"
    ck = torch.load(ck_path, weights_only=True)
    # as written by rank 0 of 2 processes that each saw 8 GPUs (the old format saved all of them)
    ck["rng"] = [dict(ck["rng"][0], cuda=[torch.zeros(16, dtype=torch.uint8)] * 8), dict(ck["rng"][0])]
    torch.save(ck, ck_path)
    seen = []

    def set_rng_state(state, device="cuda"):  # a process that sees one GPU: index 1..7 would not exist
        seen.append(state)

    with monkeypatch.context() as mpatch:
        mpatch.setattr(torch.cuda, "is_available", lambda: True)
        mpatch.setattr(torch.cuda, "device_count", lambda: 1)
        mpatch.setattr(torch.cuda, "current_device", lambda: 0)
        mpatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
        mpatch.setattr(torch.cuda, "set_rng_state_all", lambda states: [set_rng_state(s, i)
                                                                         for i, s in enumerate(states)])
        model, opt, sched = P._build(cfg, 8, 2, torch.device("cpu"), 0)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            epoch, _, _ = checkpoint.resume(ck_path, model, opt, sched, cfg.to_dict(), data.tokenizer, 16, 0, 1)
        assert epoch == 1
        assert any("reseeded" in str(x.message) for x in w)  # world size 2 -> 1: reseeded, not rank 0's state
        # same world size, old format: this process's own device state only
        checkpoint.set_rng_state(dict(ck["rng"][0], cuda=[torch.full((16,), i, dtype=torch.uint8)
                                                          for i in range(8)]))
        assert len(seen) == 1 and int(seen[0][0]) == 0
    res = P.train(cfg, data, run)  # and the run finishes from there
    assert res["resumed_from"] == 1 and len(res["history"]) == 2
    # reseeding differs per rank
    checkpoint.reseed(0, 0, 1)
    a = torch.rand(3)
    checkpoint.reseed(0, 1, 1)
    assert not torch.equal(a, torch.rand(3))


# ---------------------------------------------------------------- items 4/5: uint8 loader, on-device normalisation


def test_uint8_loader_and_device_normalisation_equal_the_float_path(tmp_path):
    store = _store(tmp_path / "store", n=12)
    rows = np.arange(12)
    old = normalize(render.RenderedECGDataset(store, rows, size=48, channels=3).render_batch(range(12))[0])
    tokens = np.zeros((12, 3, 3), np.int16)
    ds = P.MIMDataset(P.StoreImages(store, rows, 48), tokens, 2, 1, rows=rows)
    loader = P.make_loader(ds, P.EpochSampler(12, 4, shuffle=False, drop_last=False), 4, 0,
                           torch.device("cpu"), drop_last=False)
    batches = [b[0] for b in loader]
    assert all(b.dtype == torch.uint8 and b.shape == (4, 48, 48) for b in batches)
    new = torch.cat([DeviceImages("cpu")(b) for b in batches])
    assert torch.equal(new, old)  # bit for bit
    # fine-tuning: GreyImageDataset + device_images == RenderedECGDataset + (x - mean) / std
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, -1, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, -1, 1, 1)
    f_old = render.RenderedECGDataset(store, rows, size=48, channels=3).render_batch(range(12))[0]
    x, _ = next(iter(torch.utils.data.DataLoader(cdata.default_dataset_factory(store, rows, 48, "stack8"),
                                                 batch_size=12)))
    assert x.dtype == torch.uint8
    assert torch.equal(cdata.device_images(x, mean, std), (f_old - mean) / std)
    # the cache holds uint8 and gives the same model input
    cached = cdata._CachedDataset(cdata.default_dataset_factory(store, rows, 48, "stack8"))
    assert cached.x.dtype == torch.uint8 and torch.equal(cached.x, x)
    assert torch.equal(cdata.device_images(cached.x, mean, std, channels_last=True), (f_old - mean) / std)


def test_building_the_image_cache_leaves_the_global_rng_alone(tmp_path):
    """A DataLoader without its own generator draws a base seed from the global torch RNG on every iteration, so
    building the cache moved every later global draw (model init, dropout) of a run with cache_images. Oracle:
    torch.get_rng_state() before and after, byte for byte."""
    store = _store(tmp_path / "store", n=6)
    torch.manual_seed(5)
    before = torch.get_rng_state()
    cdata._CachedDataset(cdata.default_dataset_factory(store, np.arange(6), 32, "stack8"))
    assert torch.equal(torch.get_rng_state(), before)


def test_cache_images_refuses_a_split_above_the_cap(tmp_path, monkeypatch):
    store = _store(tmp_path / "store", n=6)
    monkeypatch.setattr(cdata, "MAX_CACHED_IMAGES", 5)
    with pytest.raises(cdata.SplitError, match="cache_images.*num_workers"):
        cdata._CachedDataset(cdata.default_dataset_factory(store, np.arange(6), 32, "stack8"))


# ---------------------------------------------------------------- issue 18 section 1: no evaluation patient


def test_unassigned_rows_of_test_patients_are_not_pretrained_on():
    man = pd.DataFrame({"split": ["train", "train", "unassigned", "unassigned", "unassigned", "test", "val",
                                  "external", "unassigned", "train"],
                        "patient_hash": ["a", "b", "a", "t", "v", "t", "v", "x", "x", "c"]})
    # oracle by hand: t, v, x have evaluation rows; a's unassigned row is fine; c is dropped by hash
    np.testing.assert_array_equal(P.pretraining_rows(man), [0, 1, 2, 9])
    np.testing.assert_array_equal(P.pretraining_rows(man, exclude_hashes={"c"}), [0, 1, 2])
    np.testing.assert_array_equal(P.pretraining_rows(man, splits=("train",)), [0, 1, 9])
    np.testing.assert_array_equal(P.pretraining_rows(man, exclude_patients_of=()), [0, 1, 2, 3, 4, 8, 9])
    import heartbeit_lib.pretrain as alias

    assert alias.pretraining_rows is P.pretraining_rows


def test_split_rows_drop_eval_patients_and_count_them(tmp_path, capsys):
    store = _store(tmp_path / "store", n=40)
    man = store.manifest
    pats = man["patient_hash"].to_numpy()
    # make the store look like a fine-tuning cohort whose unassigned rows belong to test patients
    man["split"] = np.where(np.arange(40) < 20, "train", np.where(np.arange(40) < 30, "unassigned", "test"))
    man.loc[20:25, "patient_hash"] = pats[30:36]  # 6 unassigned ECGs of test patients
    cfg = P.PretrainConfig(cohort_run=str(store.root), val_split=None, val_fraction=0.0)
    rows = P.split_rows(cfg, store)
    assert rows["eval_patient_overlap_ecgs"] == 0 and rows["eval_patient_dropped_ecgs"] == 6
    assert not set(man["patient_hash"].to_numpy()[rows["train"]]) & set(pats[30:])
    # a pretraining store built from another source: eval_patients.txt of the fine-tuning cohort drops them
    (tmp_path / "ft").mkdir()
    (tmp_path / "ft" / "eval_patients.txt").write_text("\n".join(pats[0:4]) + "\n")  # patients p0, p1
    rows2 = P.split_rows(P.PretrainConfig(cohort_run=str(store.root), val_split=None, val_fraction=0.0,
                                          eval_patients_of=(str(tmp_path / "ft"),)), store)
    assert rows2["eval_patient_dropped_ecgs"] == 10 and not set(rows2["train"]) & {0, 1, 2, 3}
    # the old behaviour needs the explicit parameter, and says so
    old = P.split_rows(P.PretrainConfig(cohort_run=str(store.root), val_split=None, val_fraction=0.0,
                                        keep_eval_patients=True), store)
    assert old["eval_patient_overlap_ecgs"] == 6 and len(old["train"]) == 30
    assert "keep_eval_patients=True" in capsys.readouterr().err
    # a pretraining mix re-hashed its patients: eval_patients_of would find none, so it is refused by name, and
    # the exclusion the mix build made is carried into the counts
    (Path(store.root) / "mix.json").write_text(json.dumps({"eval_patient_ecgs_dropped": {"cohort_b": 7}}))
    with pytest.raises(P.PretrainError, match="eval_patients_of.*mix"):
        P.split_rows(P.PretrainConfig(cohort_run=str(store.root), val_split=None, val_fraction=0.0,
                                      eval_patients_of=(str(tmp_path / "ft"),)), store)
    rows3 = P.split_rows(P.PretrainConfig(cohort_run=str(store.root), val_split=None, val_fraction=0.0), store)
    assert rows3["mix_eval_patient_ecgs_dropped"] == {"cohort_b": 7}


def test_preprocess_writes_the_eval_patients_file(tmp_path):
    store = _store(tmp_path / "store", n=40, labelled=True)
    n = preprocess.write_eval_patients(tmp_path / "store", store)
    m = store.manifest
    want = sorted(set(m.loc[m["split"].isin(["val", "test", "external"]), "patient_hash"]))
    assert n == len(want) > 0
    assert P.read_eval_patients(tmp_path / "store") == set(want)


# ---------------------------------------------------------------- issue 18 section 6: baselines, real vs deepfake


def test_nearest_unmasked_neighbour_baseline_against_brute_force():
    rng = np.random.default_rng(0)
    tok = rng.integers(0, 50, (20, 5, 5))
    masks = rng.random((20, 5, 5)) < 0.4
    got = P.nearest_unmasked_tokens(tok, masks)
    for i in range(20):
        un = np.argwhere(~masks[i])
        for y, x in np.argwhere(masks[i]):
            d = ((un - [y, x]) ** 2).sum(1)
            cands = {int(tok[i][tuple(u)]) for u in un[d == d.min()]}  # any nearest neighbour is a valid answer
            assert int(got[i, y, x]) in cands
        np.testing.assert_array_equal(got[i][~masks[i]], tok[i][~masks[i]])


def test_baselines_and_accuracy_are_reported_for_real_and_deepfake(tmp_path):
    store = _store(tmp_path / "store", n=40)
    store.manifest["site"] = np.where(np.arange(40) % 4 == 0, "deepfake", "ptbxl")
    cfg = P.PretrainConfig(cohort_run=str(store.root), model_size="micro", image_size=32, epochs=1, batch_size=8,
                           num_masked=2, min_block=1, vocab_size=8, tokenizer_fit_images=20, val_split=None,
                           val_fraction=0.3, device="cpu", progress=False, threads=1, drop_path=0.0)
    rows = P.split_rows(cfg, store)
    run = tmp_path / "run"
    run.mkdir()
    tok, _ = P.prepare_tokenizer(cfg, store, rows, run)
    data = P.build_data(cfg, store, tok, rows)
    base = P.token_baselines(data)
    src = data.val_source
    assert set(src) == {"real", "deepfake"}
    for k in ("majority_acc", "position_majority_acc", "nearest_unmasked_acc"):
        # the overall figure is the masked-patch-weighted mean of the two sources (same masks)
        w = (src == "real").mean()
        assert base[k] == pytest.approx(w * base[k + "_real"] + (1 - w) * base[k + "_deepfake"])
    res = P.train(cfg, data, run)
    by = P.heldout_by_source(cfg, data, res)
    assert by["n_val_real"] + by["n_val_deepfake"] == len(rows["val"])
    n = by["n_val_real"] + by["n_val_deepfake"]
    acc = (by["val_acc_real"] * by["n_val_real"] + by["val_acc_deepfake"] * by["n_val_deepfake"]) / n
    assert acc == pytest.approx(res["history"][-1]["val_acc"], abs=1e-9)  # same images, tokens and masks
    loss = (by["val_loss_real"] * by["n_val_real"] + by["val_loss_deepfake"] * by["n_val_deepfake"]) / n
    assert loss == pytest.approx(res["history"][-1]["val_loss"], rel=1e-5)  # and the same input normalisation
    m = P.summarize(res, data, {}, base, by)
    assert m["eval_patient_overlap_ecgs"] == 0 and "val_acc_real" in m
