"""Model registry: architectures, weight loading (timm-, torchvision- and HeartBEiT-style files), errors.

Oracles: the state dicts the tests write themselves (loaded weights must equal them exactly,
``torch.equal``), torchvision's own ``resnet152``/``efficientnet_b4`` key/shape layout (built on the
``meta`` device, no memory), and timm's pretrained configs for the normalisation statistics.
"""

from __future__ import annotations

import pickle

import pytest
import torch

from heartbeit_lib.models import registry as models

IMG = 32


def _backbone_keys_equal(model, sd, skip=("head.", "fc.", "classifier.")):
    own = model.state_dict()
    keys = [k for k in sd if not k.startswith(skip)]
    assert keys, "nothing compared"
    for k in keys:
        assert torch.equal(own[k], sd[k]), k
    return len(keys)


def test_registry_names_and_two_neuron_heads():
    names = models.list_models()
    for n in ("heartbeit", "vit_b16", "beit_b16", "efficientnet_b4", "resnet152",
              "vit_b16_scratch", "beit_b16_scratch", "efficientnet_b4_scratch", "resnet152_scratch"):
        assert n in names
    x = torch.rand(3, 3, IMG, IMG)
    for n in names:
        if n.endswith("_scratch"):
            m = models.create_model(n, size="micro", img_size=IMG)
            assert m(x).shape == (3, 2), n
            assert models.count_parameters(m) < 300_000, n  # micro really is micro
    with pytest.raises(models.UnknownModelError, match="vit_b61"):
        models.create_model("vit_b61")
    with pytest.raises(models.UnknownModelError, match="size 'huge'"):
        models.create_model("resnet152_scratch", size="huge")


@pytest.mark.slow
def test_paper_size_architectures_match_torchvision_and_timm_layouts():
    """Full-size models built on the meta device: keys and shapes equal torchvision's own models
    (so IMAGENET1K_V1 files load) and the parameter counts are the paper's (86M / 19M / 60M)."""
    import torchvision

    with torch.device("meta"):
        pairs = [(models.create_model("resnet152_scratch", num_classes=1000), torchvision.models.resnet152()),
                 (models.create_model("efficientnet_b4_scratch", num_classes=1000), torchvision.models.efficientnet_b4())]
        for ours, ref in pairs:
            a = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
            b = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
            assert a == b
        n = {name: models.count_parameters(models.create_model(f"{name}_scratch"))
             for name in ("vit_b16", "beit_b16", "efficientnet_b4", "resnet152")}
    assert 85e6 < n["vit_b16"] < 87e6 and 85e6 < n["beit_b16"] < 87e6
    assert 17e6 < n["efficientnet_b4"] < 18.5e6 and 58e6 < n["resnet152"] < 59e6


@pytest.mark.parametrize("name", ["vit_b16", "beit_b16"])
def test_timm_style_state_dict_loads_exactly(tmp_path, name):
    torch.manual_seed(1)
    src = models.create_model(f"{name}_scratch", size="micro", img_size=IMG, num_classes=1000)  # ImageNet head
    sd = src.state_dict()
    p = tmp_path / f"{name}.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, p)  # wrapped + DataParallel prefix
    m = models.create_model(name, size="micro", img_size=IMG, weights=p)
    assert _backbone_keys_equal(m, sd) > 10
    assert m.head.out_features == 2  # fresh 2-neuron head, not the 1000-class one
    # safetensors files too
    from safetensors.torch import save_file

    ps = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(ps))
    _backbone_keys_equal(models.create_model(name, size="micro", img_size=IMG, weights=ps), sd)


def test_torchvision_style_state_dict_loads_exactly(tmp_path):
    """efficientnet: a state dict written by torchvision's own EfficientNet class (micro config)."""
    from torchvision.models.efficientnet import EfficientNet, MBConvConfig

    torch.manual_seed(2)
    cfg = models.EFFICIENTNET_MICRO
    tv = EfficientNet([MBConvConfig(*s, width_mult=1.0, depth_mult=1.0) for s in cfg["stages"]],
                      dropout=0.2, last_channel=cfg["last_channel"], num_classes=1000)
    p = tmp_path / "effnet.pth"
    torch.save(tv.state_dict(), p)
    m = models.create_model("efficientnet_b4", size="micro", img_size=IMG, weights=p)
    assert _backbone_keys_equal(m, tv.state_dict()) > 10
    assert m.classifier[1].out_features == 2
    # resnet (torchvision key names): written by a 1000-class model of the same layout
    src = models.create_model("resnet152_scratch", size="micro", num_classes=1000)
    torch.save(src.state_dict(), tmp_path / "r.pth")
    _backbone_keys_equal(models.create_model("resnet152", size="micro", weights=tmp_path / "r.pth"), src.state_dict())


def test_mismatched_state_dict_lists_keys(tmp_path):
    src = models.create_model("resnet152_scratch", size="micro", num_classes=1000).state_dict()
    src.pop("layer1.0.conv1.weight")
    src["extra.weight"] = torch.zeros(1)
    p = tmp_path / "bad.pth"
    torch.save(src, p)
    with pytest.raises(models.WeightsMismatchError, match=r"layer1\.0\.conv1\.weight.*extra\.weight") as e:
        models.create_model("resnet152", size="micro", weights=p)
    assert str(p) in str(e.value)
    wrong = models.create_model("vit_b16_scratch", size="micro").state_dict()  # another architecture
    torch.save(wrong, p)
    with pytest.raises(models.WeightsMismatchError, match="missing key"):
        models.create_model("resnet152", size="micro", weights=p)


def test_heartbeit_checkpoint_file_and_run_folder(tmp_path, fake_pretrain_checkpoint):
    run = tmp_path / "02_pretrain" / "r1"
    ckpt = fake_pretrain_checkpoint(run / "checkpoints" / "last.pt")
    for w in (run, run / "checkpoints" / "last.pt"):
        m = models.create_model("heartbeit", weights=w, img_size=IMG)
        assert _backbone_keys_equal(m, ckpt["backbone"]) == len(ckpt["backbone"])  # every backbone key
        assert m(torch.rand(2, 3, IMG, IMG)).shape == (2, 2)
    assert models.normalization_for("heartbeit", weights=run) == ((0.9,) * 3, (0.2,) * 3)
    with pytest.raises(models.WeightsMismatchError, match="pretrained on 32 px"):
        models.create_model("heartbeit", weights=run, img_size=64)
    with pytest.raises(models.WeightsMismatchError, match="'micro' backbone"):
        models.create_model("heartbeit", weights=run, size="tiny", img_size=IMG)


def test_heartbeit_backbone_keys_are_strict(tmp_path, fake_pretrain_checkpoint):
    p = tmp_path / "ck.pt"
    ckpt = fake_pretrain_checkpoint(p)
    ckpt["backbone"].pop("blocks.0.attn.qkv.weight")
    ckpt["backbone"]["decoder.weight"] = torch.zeros(2)  # e.g. a pretraining head left in the backbone
    torch.save(ckpt, p)
    with pytest.raises(models.WeightsMismatchError) as e:
        models.create_model("heartbeit", weights=p, img_size=IMG)
    msg = str(e.value)
    assert str(p) in msg and "blocks.0.attn.qkv.weight" in msg and "decoder.weight" in msg
    bad = {"backbone": {}, "normalize": {"mean": [0.5], "std": [0.5]}}  # no backbone_config
    torch.save(bad, p)
    with pytest.raises(models.CheckpointFormatError, match="backbone_config"):
        models.create_model("heartbeit", weights=p, img_size=IMG)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_missing_and_corrupt_files_give_typed_errors(tmp_path, fake_pretrain_checkpoint):
    missing = tmp_path / "nope.pt"
    with pytest.raises(models.WeightsNotFoundError, match="nope.pt"):
        models.create_model("heartbeit", weights=missing)
    with pytest.raises(models.WeightsNotFoundError, match="checkpoints/last.pt"):
        models.create_model("heartbeit", weights=tmp_path)  # a folder that is not a pretraining run
    with pytest.raises(models.WeightsNotFoundError, match="needs weights"):
        models.create_model("heartbeit")
    with pytest.raises(models.WeightsNotFoundError, match="nope.pt"):
        models.create_model("resnet152", size="micro", weights=missing)
    trunc = tmp_path / "trunc.pt"
    fake_pretrain_checkpoint(trunc)
    trunc.write_bytes(trunc.read_bytes()[:200])
    with pytest.raises(models.CorruptWeightsError, match="trunc.pt"):
        models.create_model("heartbeit", weights=trunc, img_size=IMG)
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(models.CorruptWeightsError, match="junk.pth"):
        models.create_model("vit_b16", size="micro", img_size=IMG, weights=junk)

    class Evil:
        def __reduce__(self):
            return (print, ("pickle code ran",))

    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump(Evil(), f)
    with pytest.raises(models.CorruptWeightsError, match="evil.pth"):  # weights_only refuses it
        models.create_model("resnet152", size="micro", weights=evil)
    assert issubclass(models.WeightsError, ValueError)


def test_no_silent_random_init_without_cache(tmp_path, monkeypatch):
    """Empty caches: every pretrained name fails with the expected file and how to provide it."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for name, expect in (("vit_b16", "models--timm--vit_base_patch16_224.augreg_in1k"),
                         ("beit_b16", "models--timm--beit_base_patch16_224.in22k_ft_in22k_in1k"),
                         ("efficientnet_b4", "efficientnet_b4_rwightman-23ab8bcd.pth"),
                         ("resnet152", "resnet152-394f9c45.pth")):
        with pytest.raises(models.WeightsNotFoundError) as e:
            models.create_model(name)
        assert expect in str(e.value) and "weights=" in str(e.value) and "cache" in str(e.value)
    with pytest.raises(models.WeightsNotFoundError, match="no published weights"):
        models.create_model("vit_b16", size="micro")
    with pytest.raises(models.WeightsError, match="from scratch"):
        models.create_model("vit_b16_scratch", weights=tmp_path / "x.pth")


def test_offline_cache_is_used(tmp_path, monkeypatch):
    """A file pre-populated in the torch hub cache / HF hub cache layout is found without network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    path = models.expected_cache_files("resnet152")[0]
    assert str(tmp_path) in str(path)
    assert models.find_cached_weights("resnet152") is None
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x")
    assert models.find_cached_weights("resnet152") == path
    snap = tmp_path / "hf" / "models--timm--beit_base_patch16_224.in22k_ft_in22k_in1k"
    (snap / "refs").mkdir(parents=True)
    (snap / "refs" / "main").write_text("abc123")
    (snap / "snapshots" / "abc123").mkdir(parents=True)
    (snap / "snapshots" / "abc123" / "model.safetensors").write_bytes(b"x")
    assert models.find_cached_weights("beit_b16") == snap / "snapshots" / "abc123" / "model.safetensors"


def test_normalization():
    assert models.normalization_for("resnet152") == (models.IMAGENET_MEAN, models.IMAGENET_STD)
    assert models.normalization_for("efficientnet_b4") == (models.IMAGENET_MEAN, models.IMAGENET_STD)
    # timm's pretrained configs of both transformer baselines list mean = std = 0.5
    assert models.normalization_for("beit_b16") == ((0.5,) * 3, (0.5,) * 3)
    assert models.normalization_for("vit_b16") == ((0.5,) * 3, (0.5,) * 3)
    assert models.normalization_for("resnet152_scratch") == (models.DEFAULT_MEAN, models.DEFAULT_STD)
