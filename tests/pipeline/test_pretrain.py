"""MIM model, optimiser set-up, schedule, checkpoints/resume and the store -> tokens -> training pipeline.

Oracles: timm's ``Beit.forward_features`` (our masked encoder with nothing masked must equal it),
``torch.nn.functional.cross_entropy`` on hand-gathered masked tokens, the closed-form warmup/cosine
schedule, an uninterrupted run (a killed-and-resumed run must repeat its losses exactly: same
process-local CPU arithmetic, tolerance 0), and ``models.create_backbone`` / ``models.create_model``
loading the checkpoint with every key matched (strict loading).
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from heartbeit_lib import render
from heartbeit_lib.models import registry as models
from heartbeit_lib.pipeline import pretrain as P
from heartbeit_lib.pipeline import runs


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tiny_cfg(**kw) -> P.PretrainConfig:
    base = dict(model_size="micro", image_size=32, epochs=3, batch_size=8, num_masked=2, min_block=1,
                warmup_epochs=1, lr=1e-3, min_lr=1e-5, device="cpu", progress=False, save_every=1)
    base.update(kw)
    return P.PretrainConfig(**base)


def _tiny_data(n=40, size=32, vocab=16, seed=0, n_val=8) -> P.MIMData:
    g = torch.Generator().manual_seed(seed)
    # each image has one brightness level, each 16-px patch deviates slightly; the token is the patch's
    # brightness bin, so a masked patch's token is predictable from the visible patches
    level = torch.rand(n, 1, 1, 1, generator=g)
    patch = (level + 0.03 * torch.randn(n, 1, size // 16, size // 16, generator=g)).clamp(0, 0.999)
    images = patch.repeat_interleave(16, 2).repeat_interleave(16, 3).expand(-1, 3, -1, -1)
    images = (images + 0.02 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)
    tokens = (patch[:, 0] * vocab).long().clamp(0, vocab - 1).numpy()
    k = 2
    return P.MIMData(P.MIMDataset(images[: n - n_val], tokens[: n - n_val], k, 1, seed, P.TRAIN_STREAM),
                     P.MIMDataset(images[n - n_val:], tokens[n - n_val:], k, 1, seed, P.VAL_STREAM),
                     vocab, {"kind": "test", "fingerprint": "abc", "vocab_size": vocab})


def _micro_model(vocab=16, size=32, drop_path=0.0) -> P.MIMModel:
    torch.manual_seed(0)
    return P.MIMModel(models.create_backbone("micro", img_size=size, drop_path_rate=drop_path), vocab).eval()


def test_encoder_without_mask_equals_timm_forward_features():
    model = _micro_model(size=64)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = model.encode(x, torch.zeros(2, 4, 4, dtype=torch.bool))
        ref = model.backbone.forward_features(x)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)


def test_masked_patches_leak_nothing_and_paths_agree():
    model = _micro_model(size=64)
    rng = np.random.default_rng(0)
    from heartbeit_lib.mim import masking

    mask = torch.from_numpy(np.stack([masking.block_mask(rng, (4, 4), 6, min_block=2) for _ in range(3)]))
    x = torch.randn(3, 3, 64, 64)
    # change pixels inside masked patches only: masked embeddings are replaced, so no output may change
    pix = mask.repeat_interleave(16, 1).repeat_interleave(16, 2)[:, None].expand(-1, 3, -1, -1)
    x2 = torch.where(pix, torch.randn_like(x) * 5, x)
    with torch.no_grad():
        a = model(x, mask, 6)
        b = model(x2, mask, 6)
        c = model(x, mask)  # boolean-indexing path
    assert a.shape == (18, 16)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, c, rtol=0, atol=0)
    # unmasking one patch whose pixels changed does change the output
    with torch.no_grad():
        assert not torch.equal(model.encode(x, torch.zeros_like(mask)), model.encode(x2, torch.zeros_like(mask)))


def test_targets_and_loss_are_masked_positions_only():
    tokens = torch.arange(2 * 9).reshape(2, 3, 3)
    mask = torch.zeros(2, 3, 3, dtype=torch.bool)
    mask[0, 0, 1] = mask[0, 2, 2] = mask[1, 1, 0] = mask[1, 1, 1] = True
    t = P.mim_targets(tokens, mask, 2)
    assert t.tolist() == [1, 8, 12, 13]
    assert P.mim_targets(tokens, mask).tolist() == [1, 8, 12, 13]
    logits = torch.randn(4, 20)
    ref = -torch.log_softmax(logits, -1)[torch.arange(4), t].mean()
    torch.testing.assert_close(F.cross_entropy(logits, t), ref)


def test_param_groups_decay_and_layer_scales():
    model = _micro_model()
    groups = P.param_groups(model, 0.05, layer_decay=0.5)
    seen = [id(p) for g in groups for p in g["params"]]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(seen) == len(set(seen)) == len(trainable)
    assert not model.backbone.fc_norm.weight.requires_grad  # unused by MIM, frozen
    names = {id(p): n for n, p in model.named_parameters()}
    for g in groups:
        for p in g["params"]:
            n = names[id(p)]
            no_decay = p.ndim <= 1 or n.endswith(("cls_token", "mask_token")) or "relative_position" in n
            assert g["weight_decay"] == (0.0 if no_decay else 0.05), n
    scale = {names[id(p)]: g["lr_scale"] for g in groups for p in g["params"]}
    L = model.num_layers  # 2 for micro
    assert scale["head.weight"] == 1.0
    assert scale["backbone.blocks.1.mlp.fc1.weight"] == 0.5 ** (L - 1)
    assert scale["backbone.blocks.0.mlp.fc1.weight"] == 0.5 ** L
    assert scale["backbone.patch_embed.proj.weight"] == scale["mask_token"] == 0.5 ** (L + 1)


def test_lr_schedule_closed_form():
    total, warm, r = 100, 10, 0.02
    f = [P.lr_factor(s, total, warm, r) for s in range(total + 1)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0)
    assert f[55] == pytest.approx(r + (1 - r) * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f[100] == pytest.approx(r)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))


def test_sampler_shards_union_equals_single_process_batches():
    single = list(P.EpochSampler(37, 8, seed=3))
    assert len(single) == 32
    ranks = [list(P.EpochSampler(37, 8, seed=3, rank=r, world=2)) for r in range(2)]
    for j in range(4):  # global batch j = union of the ranks' batch j (4 items each)
        glob = {k[0] for k in single[8 * j: 8 * j + 8]}
        assert glob == {k[0] for r in range(2) for k in ranks[r][4 * j: 4 * j + 4]}
    s = P.EpochSampler(37, 8, seed=3)
    s.set_epoch(1)
    assert [k[0] for k in s] != [k[0] for k in single] and all(k[1] == 1 for k in s)


def test_masks_depend_only_on_seed_stream_epoch_row():
    d = _tiny_data()
    a = d.train[(5, 2)][2]
    assert torch.equal(a, d.train[(5, 2)][2]) and int(a.sum()) == 2
    assert any(not torch.equal(a, d.train[(5, e)][2]) for e in range(3, 10))
    assert np.array_equal(d.train.mask(5, 2), a.numpy())
    # a batch's masks are each item's own (the batch is split over processes and workers)
    keys = [(5, 2), (1, 0), (7, 2)]
    assert np.array_equal(d.train.get_batch(keys)[2].numpy(), np.stack([d.train.mask(i, e) for i, e in keys]))


@pytest.mark.slow
def test_resume_after_kill_repeats_losses_and_checkpoint_contract(tmp_path):
    data = _tiny_data()
    cfg = _tiny_cfg(drop_path=0.1)  # drop-path consumes torch RNG: exercises the RNG restore
    ref = P.train(cfg, data, tmp_path / "ref", record_steps=True)

    class Killed(Exception):
        pass

    def kill_after_first(epoch, line):
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        P.train(cfg, data, tmp_path / "run", record_steps=True, on_epoch_end=kill_after_first)
    torch.manual_seed(12345)  # a fresh process would have a different RNG state: resume must restore it
    res = P.train(cfg, data, tmp_path / "run", record_steps=True)
    assert res["resumed_from"] == 1
    got = [h["step_losses"] for h in res["history"][1:]]
    exp = [h["step_losses"] for h in ref["history"][1:]]
    assert got == exp  # exact: same arithmetic on the same CPU
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
        assert [h[key] for h in res["history"]] == [h[key] for h in ref["history"]], key
    a = torch.load(tmp_path / "ref/checkpoints/last.pt", weights_only=True)
    b = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    for k, v in a["backbone"].items():
        assert torch.equal(v, b["backbone"][k]), k
    log = [line for line in (tmp_path / "run/log.jsonl").read_text().splitlines() if line]
    assert len(log) == 3

    # contract: weights_only checkpoint, backbone loads into models.create_backbone with all keys matched
    bc = b["backbone_config"]
    assert bc == {"size": "micro", "img_size": 32, "patch_size": 16}
    assert b["normalize"] == {"mean": [0.5] * 3, "std": [0.5] * 3}  # MIMData without normalize: the old 0.5
    assert b["render"] == {"layout": "stack8", "ylim_mv": [-4.0, 4.0]}  # the images' amplitude range, for fine-tuning
    bb = models.create_backbone(bc["size"], bc["img_size"], bc["patch_size"])
    result = bb.load_state_dict(b["backbone"], strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert set(b["backbone"]) == set(bb.state_dict())
    assert (tmp_path / "run/checkpoints/epoch-0001.pt").exists()

    # the fine-tuning entry point takes the run folder and reproduces the pretrained features
    clf = models.create_model("heartbeit", num_classes=2, weights=tmp_path / "run", img_size=32).eval()
    mim = P.load_mim_model(tmp_path / "run/checkpoints/last.pt")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(clf.forward_features(x), mim.encode(x), rtol=0, atol=0)

    # resuming with a different trajectory setting is refused, naming the field
    with pytest.raises(P.ResumeError, match="lr"):
        P.train(_tiny_cfg(drop_path=0.1, lr=2e-3, epochs=4), data, tmp_path / "run")


@pytest.mark.slow
def test_training_learns_image_dependent_tokens(tmp_path):
    """Tokens = patch brightness bins: the MIM model must beat the majority token on held-out images."""
    data = _tiny_data(n=320, vocab=8, seed=1, n_val=64)
    cfg = _tiny_cfg(epochs=4, batch_size=32, lr=3e-3, warmup_epochs=0.5, num_masked=2, drop_path=0.0,
                    save_every=100)
    res = P.train(cfg, data, tmp_path)
    base = P.token_baselines(data)
    hist = res["history"]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    # measured on this seed: val_acc 0.26 vs majority 0.11 and per-position majority 0.09
    assert hist[-1]["val_acc"] > 1.5 * max(base["majority_acc"], base["position_majority_acc"])
    P.plot_curve(tmp_path / "log.jsonl", tmp_path / "curve.png", base)
    assert (tmp_path / "curve.png").stat().st_size > 1000


@pytest.mark.slow
def test_store_pipeline_tokens_match_training_images(tmp_path, smooth_ecgs):
    """cohort store -> split -> fitted k-means tokenizer -> cached tokens -> rendered MIM batches."""
    from heartbeit_lib import cohorts
    from heartbeit_lib.mim import tokenizers

    n = 30
    meta = pd.DataFrame({"record_id": [f"r{i}" for i in range(n)], "patient_id": [f"p{i // 2}" for i in range(n)],
                         "site": "a", "label": -1})
    store = cohorts.build_store_from_arrays(tmp_path / "store", smooth_ecgs(n), meta, task="unlabelled")
    cfg = _tiny_cfg(cohort_run=str(store.root), image_size=64, num_masked=6, min_block=2, vocab_size=16,
                    tokenizer_fit_images=20, epochs=1, val_fraction=0.2)
    rows = P.split_rows(cfg, store)
    assert rows["held_out"] != "split" and len(rows["val"]) > 0
    pat = store.manifest["patient_hash"].to_numpy()
    assert not set(pat[rows["train"]]) & set(pat[rows["val"]])  # patient-disjoint hold-out
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    tok, report = P.prepare_tokenizer(cfg, store, rows, run_dir)
    assert (run_dir / "tokenizer.pt").exists() and report["codes_used"] >= 2
    data = P.build_data(cfg, store, tok, rows)
    # input normalisation: the rendered pretraining images' own statistics (issue 18), saved in the checkpoint
    st = render.image_stats(store, rows["train"], 64, "stack8", ylim_mv=cfg.ylim_mv)
    assert data.normalize == {"mean": st["mean"] * 3, "std": st["std"] * 3} and data.normalize["mean"][0] > 0.7
    # the amplitude range is part of the cache key: tokens of other ranges are never reused
    cache = tokenizers.token_cache_path(store.root, tok, 64, "stack8", {"ylim_mv": list(cfg.ylim_mv)})
    assert cache != tokenizers.token_cache_path(store.root, tok, 64, "stack8", {"ylim_mv": [-2.0, 2.0]})
    assert cache.exists()
    img, toks, mask = data.train[(0, 0)]
    # workers ship uint8 grey (H, W); the float RGB input is made on the device (mim.model.DeviceImages)
    assert img.shape == (64, 64) and img.dtype == torch.uint8 and toks.shape == (4, 4) and int(mask.sum()) == 6
    # the cached tokens are the tokens of exactly the image the model is trained on
    np.testing.assert_array_equal(tok.tokenize(img[None]).numpy()[0], toks.numpy())
    # the token cache stays a memmap and travels to loader workers by file name, not by value
    assert isinstance(data.train.tokens, np.memmap)
    clone = pickle.loads(pickle.dumps(data.train))
    assert isinstance(clone.tokens, np.memmap) and os.path.samefile(clone.tokens.filename, cache)
    np.testing.assert_array_equal(clone.token_grid(3), data.train.token_grid(3))
    # a batch holds the tokens of its items in key order (repeats allowed); oracle: the tokenizer on its images
    img_b, toks_b, _ = data.train.get_batch([(3, 0), (0, 1), (3, 2)])
    np.testing.assert_array_equal(toks_b.numpy(), tok.tokenize(img_b).numpy())
    np.testing.assert_array_equal(toks_b[0].numpy(), toks_b[2].numpy())
    res = P.train(dataclasses.replace(cfg, num_workers=1), data, run_dir)
    assert res["history"][0]["epoch"] == 1 and "val_acc" in res["history"][0]


def test_held_out_patients_do_not_depend_on_the_salt(tmp_path, smooth_ecgs):
    """Two builds of the same ECGs with different salts hold out the same rows (seed decides, not the salt);
    another seed holds out other rows."""
    from heartbeit_lib import cohorts

    n = 40
    meta = pd.DataFrame({"record_id": [f"r{i}" for i in range(n)], "patient_id": [f"p{i // 2}" for i in range(n)],
                         "site": "a", "label": -1})
    x = smooth_ecgs(n)
    held = {}
    for salt in ("salt-one", "salt-two"):
        store = cohorts.build_store_from_arrays(tmp_path / salt, x, meta, task="unlabelled", salt=salt)
        for seed in (0, 1):
            rows = P.split_rows(_tiny_cfg(cohort_run=str(store.root), val_fraction=0.25, seed=seed), store)
            held[salt, seed] = rows["val"].tolist()
            assert len(rows["val"]) == 10 and len(rows["train"]) == 30  # 5 of 20 patients, 2 ECGs each
    assert held["salt-one", 0] == held["salt-two", 0] and held["salt-one", 1] == held["salt-two", 1]
    assert held["salt-one", 0] != held["salt-one", 1]


def test_cli_parameter_values():
    """``-p`` values: None/null -> None, YAML lists -> tuples in the config, other strings kept for the Config's
    coercion (a run_id "007" must not become the int 7)."""
    cfg = P.PretrainConfig.from_dict({k: runs.cli_value(v) for k, v in
                                      (("train_splits", "[train, val]"), ("run_id", "007"), ("max_train", "None"),
                                       ("epochs", "3"))})
    assert (cfg.train_splits, cfg.run_id, cfg.max_train, cfg.epochs) == (("train", "val"), "007", None, 3)


def test_compiled_training_compiles_once(tmp_path, monkeypatch):
    """Issue 25 item 10c: with ``compile: true`` the training module is compiled once for two epochs and the
    held-out evaluation (eval mode, no_grad, a partial last batch of 3): dynamic=False on whole micro-batches,
    and evaluation on the uncompiled model.  Oracle: a counting torch.compile backend (dynamo traces, no
    inductor code generation): one graph in all (before: a second one, dynamo's 'grad_mode' guard failing in
    evaluation)."""
    graphs = []
    real = torch.compile

    def backend(gm, example_inputs):
        graphs.append(len(gm.graph.nodes))
        return gm.forward
    monkeypatch.setattr(torch, "compile", lambda m, **kw: real(m, backend=backend, **kw))
    P.train(_tiny_cfg(compile=True, epochs=2), _tiny_data(n=44, n_val=11), tmp_path)
    assert len(graphs) == 1
