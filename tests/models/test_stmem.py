"""ST-MEM (heartbeit_lib.models.stmem): geometry, masking, loss, checkpoint -> classifier loading.

Oracles: the paper's configuration (bakqui/ST-MEM ``configs/pretrain/st_mem.yaml``: 75-sample
patches at 250 Hz, mask ratio 0.75, norm_pix_loss); a NumPy re-computation of the masked,
per-patch-normalised MSE (rtol 1e-5); exact tensor equality for loaded weights and for the
"encoder never sees masked patches" check.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from heartbeit_lib.models import registry as models
from heartbeit_lib.models import stmem


def test_geometry_keeps_the_papers_patch_duration():
    assert stmem.geometry(250) == (75, 16)  # the paper's 75-sample patches; 16 fit in 5 s
    assert stmem.geometry(100) == (30, 16)  # default input rate: same 0.3 s patches
    assert stmem.geometry(500) == (150, 16)
    pe = stmem.sincos_1d(64, 16)
    assert pe.shape == (18, 64) and pe[0].abs().sum() == 0 and pe[-1].abs().sum() == 0
    assert torch.allclose(pe[1, 32:], torch.ones(32))  # cos(0) = 1 at position 0


@pytest.mark.parametrize("shape", [(2, 8, 500), (3, 8, 250), (2, 12, 500)])
def test_classifier_shapes(shape):
    torch.manual_seed(0)
    m = models.create_model("stmem_scratch", num_classes=4, size="micro", in_chans=shape[1]).eval()
    assert m(torch.randn(*shape)).shape == (shape[0], 4) and m.family == "signal"
    with pytest.raises(ValueError, match=r"\(N, %d, T\)" % shape[1]):
        m(torch.randn(2, shape[1], 1000))  # 10 s at 100 Hz: beyond the 5 s positional table


def test_masking_keeps_a_quarter_of_each_lead_and_loss_matches_numpy():
    torch.manual_seed(0)
    model = stmem.build_pretrainer("micro", num_leads=8, signal_rate=100)
    x = torch.randn(3, 8, 500)
    out = model(x, generator=torch.Generator().manual_seed(5))
    mask = out["mask"]
    assert mask.shape == (3, 8, 16) and out["pred"].shape == (3, 8, 16, 30)
    assert (mask.sum(-1) == 12).all()  # 0.75 of 16 patches masked in every lead
    assert not torch.equal(mask[0, 0], mask[0, 1])  # leads masked independently
    target = x[..., :480].reshape(3, 8, 16, 30).double().numpy()
    target = (target - target.mean(-1, keepdims=True)) / np.sqrt(target.var(-1, ddof=1, keepdims=True) + 1e-6)
    err = ((out["pred"].detach().double().numpy() - target) ** 2).mean(-1)
    expected = (err * mask.numpy()).sum() / mask.numpy().sum()
    assert np.isclose(out["loss"].item(), expected, rtol=1e-5)


def test_encoder_never_sees_masked_patches():
    """Changing the samples of masked patches leaves every prediction unchanged (same mask seed)."""
    torch.manual_seed(0)
    model = stmem.build_pretrainer("micro", num_leads=8, signal_rate=100).eval()
    x = torch.randn(2, 8, 480)
    a = model(x, generator=torch.Generator().manual_seed(1))
    x2 = x.clone().reshape(2, 8, 16, 30)
    m = a["mask"].bool()
    x2[m] = torch.randn(int(m.sum()), 30)
    b = model(x2.reshape(2, 8, 480), generator=torch.Generator().manual_seed(1))
    assert torch.equal(a["mask"], b["mask"]) and torch.equal(a["pred"], b["pred"])
    assert b["loss"] != a["loss"]  # the targets did change


@pytest.mark.slow
def test_pretraining_steps_reduce_reconstruction_loss():
    torch.manual_seed(0)
    model = stmem.build_pretrainer("micro", num_leads=8, signal_rate=100)
    t = torch.arange(500) / 100.0
    x = torch.sin(2 * torch.pi * 1.2 * t + torch.rand(16, 8, 1) * 6.28) + 0.05 * torch.randn(16, 8, 500)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(30):
        loss = model(x, generator=torch.Generator().manual_seed(step))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses


def _save_checkpoint(path, size="micro", signal_rate=100.0, num_leads=8, seed=0):
    torch.manual_seed(seed)
    pre = stmem.build_pretrainer(size, num_leads=num_leads, signal_rate=signal_rate)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**stmem.checkpoint_payload(pre, size, signal_rate), "epoch": 2, "optimizer": {}}, path)
    return pre


def test_checkpoint_loads_into_classifier_with_every_backbone_key(tmp_path):
    pre = _save_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    clf = models.create_model("stmem", num_classes=3, weights=tmp_path / "run")  # run folder form
    backbone = pre.encoder.state_dict()
    own = clf.state_dict()
    assert {k for k in own if k.startswith("encoder.")} == {f"encoder.{k}" for k in backbone}
    for k, v in backbone.items():
        assert torch.equal(own[f"encoder.{k}"], v), k
    assert set(own) - {f"encoder.{k}" for k in backbone} == {"head.weight", "head.bias"}
    assert clf(torch.randn(2, 8, 500)).shape == (2, 3)
    scratch = models.create_model("stmem_scratch", num_classes=3, size="micro")
    assert set(scratch.state_dict()) == set(own)  # same architecture, same keys


def test_bad_checkpoints_give_typed_errors(tmp_path):
    p = tmp_path / "c.pt"
    _save_checkpoint(p)
    with pytest.raises(models.WeightsMismatchError, match="signal_rate"):
        models.create_model("stmem", weights=p, signal_rate=250.0)
    with pytest.raises(models.WeightsMismatchError, match="num_leads"):
        models.create_model("stmem", weights=p, in_chans=12)
    ck = torch.load(p, weights_only=True)
    ck["backbone"].pop("blocks.0.attn.qkv.weight")
    torch.save(ck, tmp_path / "missing.pt")
    with pytest.raises(models.WeightsMismatchError, match="blocks.0.attn.qkv.weight"):
        models.create_model("stmem", weights=tmp_path / "missing.pt")
    torch.save({"backbone": {}, "backbone_config": {"size": "micro", "img_size": 32}}, tmp_path / "image.pt")
    with pytest.raises(models.CheckpointFormatError, match="not a signal"):
        models.create_model("stmem", weights=tmp_path / "image.pt")
    with pytest.raises(models.WeightsNotFoundError):
        models.create_model("stmem")


def test_paper_size_encoder_is_vit_b():
    with torch.device("meta"):
        enc = stmem.build_encoder("base", num_leads=12, signal_rate=250)
        n = sum(p.numel() for p in enc.parameters())
    assert enc.patch_size == 75 and enc.num_patches == 16
    assert 85.0e6 < n < 86.5e6, n  # ViT-B/75: 12 x 7.09M blocks + embeddings
