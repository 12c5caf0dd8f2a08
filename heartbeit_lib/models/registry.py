"""Model registry shared by pretraining (02) and fine-tuning (03).

Two entry points:

- :func:`create_backbone` (used by ``pretrain``): a timm BEiT without a classifier head, in one of
  the :data:`BEIT_SIZES`. ``base`` is the paper's BEiT-B/16 (12 layers, width 768, 12 heads,
  about 86M parameters); smaller sizes run the same code on a CPU.
- :func:`create_model` (used by ``finetune``): a classifier by name, with a ``num_classes``-neuron
  head (2 in the paper) and its pretrained weights, plus :func:`normalization_for` giving the
  per-channel mean/std the weights expect on images in [0, 1].

Registered names (``<name>_scratch`` = same architecture, random init, no weights needed):

============================  =============================================================
``heartbeit``                 BEiT backbone from a ``02_pretrain`` checkpoint (``weights`` = the
                              checkpoint file or the run folder -> ``checkpoints/last.pt``); the
                              size and image size come from the checkpoint's ``backbone_config``.
``vit_b16``                   timm ``vit_base_patch16_224.augreg_in1k`` (supervised ViT-B/16
                              trained on ImageNet-1k only, the paper's baseline).
``beit_b16``                  timm ``beit_base_patch16_224.in22k_ft_in22k_in1k``: BEiT-B/16
                              pretrained on ImageNet-22k, fine-tuned on 1k - what the authors'
                              code actually used as its "ViT-B/16".
``efficientnet_b4``           torchvision EfficientNet-B4, ``IMAGENET1K_V1`` weights.
``resnet152``                 ResNet-152, torchvision ``IMAGENET1K_V1`` weights (built with timm's
                              ``ResNet`` class, whose state-dict keys and shapes are torchvision's).
============================  =============================================================

Sizes: ``size="base"`` (default) is the paper architecture. ``size="micro"`` (and, for the
transformers, ``tiny``/``small``) builds the same class with a smaller configuration, so CPU tests
exercise the code the paper-size models run. Published weights exist for ``base`` only; a smaller
pretrained variant needs ``weights=<path>``.

Weights are never downloaded and never silently replaced by a random init: they come from
``weights=<path>`` (timm- or torchvision-style state dict, ``.pt/.pth/.bin`` loaded with
``torch.load(weights_only=True)`` or ``.safetensors``) or, when ``weights`` is None, from a
pre-populated offline cache (Hugging Face hub cache for the timm models, torch hub
``checkpoints/`` for torchvision). Otherwise :class:`WeightsNotFoundError` says which file it
expected and how to provide it.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from pathlib import Path
from typing import Any, Callable, Mapping

import timm
import torch
import torch.nn as nn
import torchvision.models as tvm
from safetensors.torch import load_file
from timm.models.beit import checkpoint_filter_fn as beit_checkpoint_filter_fn
from timm.models.resnet import Bottleneck, ResNet
from timm.models.vision_transformer import checkpoint_filter_fn as vit_checkpoint_filter_fn
from torchvision.models import get_weight
from torchvision.models.efficientnet import EfficientNet, MBConvConfig

from heartbeit_lib.models import signal_models
from heartbeit_lib.models import stmem

# name -> timm Beit keyword overrides of beit_base_patch16_224
BEIT_SIZES: dict[str, dict] = {
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "micro": dict(embed_dim=64, depth=2, num_heads=2),  # tests: ~0.1M parameters
}

# name -> timm VisionTransformer overrides of vit_base_patch16_224 (same widths as BEIT_SIZES)
VIT_SIZES: dict[str, dict] = {k: dict(v) for k, v in BEIT_SIZES.items()}

# ResNet-152 (torchvision v1.5: stride on the 3x3 conv) and a micro variant of the same class.
RESNET_SIZES: dict[str, dict] = {
    "base": dict(layers=(3, 8, 36, 3), channels=(64, 128, 256, 512), stem_width=64),
    "micro": dict(layers=(1, 1, 1, 1), channels=(8, 16, 32, 64), stem_width=16),  # ~0.2M params
}

# EfficientNet: "base" is torchvision's efficientnet_b4; micro is 3 MBConv stages of the same class.
# tuples are torchvision MBConvConfig(expand_ratio, kernel, stride, in_channels, out_channels, layers)
EFFICIENTNET_MICRO = dict(stages=[(1, 3, 1, 16, 8, 1), (6, 3, 2, 8, 16, 1), (6, 5, 2, 16, 24, 1)],
                          last_channel=64, dropout=0.2)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.5, 0.5, 0.5)

PRETRAIN_CHECKPOINT_KEYS = ("backbone", "backbone_config", "normalize")


# ---------------------------------------------------------------- errors


class UnknownModelError(ValueError):
    """A model name (or size) that the registry does not define."""


class WeightsError(ValueError):
    """Base class: pretrained weights could not be used."""


class WeightsNotFoundError(WeightsError):
    """The weights file is missing (no local path, nothing in the offline cache)."""


class CorruptWeightsError(WeightsError):
    """The weights file exists but cannot be read (truncated, not a checkpoint, unsafe pickle)."""


class CheckpointFormatError(WeightsError):
    """A 02_pretrain checkpoint lacks required entries (``backbone``, ``backbone_config``, ...)."""


class WeightsMismatchError(WeightsError):
    """The state dict does not match the architecture: missing/unexpected keys or wrong shapes."""


# ---------------------------------------------------------------- backbone (pretraining)


def create_backbone(size: str = "base", img_size: int = 224, patch_size: int = 16,
                    drop_path_rate: float = 0.1, **kw) -> nn.Module:
    """A timm ``Beit`` (relative position bias, layer scale) without a classifier head.

    Parameters
    ----------
    size : one of :data:`BEIT_SIZES`.
    img_size : input images are (B, 3, img_size, img_size); the token grid is img_size // patch_size square.
    """
    if size not in BEIT_SIZES:
        raise ValueError(f"unknown BEiT size {size!r}; choose one of {sorted(BEIT_SIZES)}")
    args = dict(BEIT_SIZES[size], img_size=img_size, patch_size=patch_size,
                drop_path_rate=drop_path_rate, num_classes=0,
                use_abs_pos_emb=False, use_rel_pos_bias=True, init_values=0.1)
    args.update(kw)
    return timm.create_model("beit_base_patch16_224", pretrained=False, **args)


# ---------------------------------------------------------------- registry


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One registered name.

    family : architecture builder key (``beit``, ``vit``, ``efficientnet``, ``resnet``).
    source : where pretrained weights come from: ``pretrain_checkpoint`` (02_pretrain run),
        ``timm`` (a timm pretrained tag, Hugging Face hub cache), ``torchvision`` (torch hub
        checkpoint file) or None (random init).
    tag : the timm pretrained tag or torchvision weights enum name.
    """

    name: str
    family: str
    source: str | None
    tag: str | None = None
    description: str = ""


_PRETRAINED = [
    ModelSpec("heartbeit", "beit", "pretrain_checkpoint", None,
              "BEiT backbone from a 02_pretrain checkpoint (HeartBEiT)"),
    ModelSpec("vit_b16", "vit", "timm", "vit_base_patch16_224.augreg_in1k",
              "ViT-B/16, supervised ImageNet-1k (timm augreg_in1k)"),
    ModelSpec("beit_b16", "beit", "timm", "beit_base_patch16_224.in22k_ft_in22k_in1k",
              "BEiT-B/16 ImageNet-22k pretrained, 1k fine-tuned (the authors' code)"),
    ModelSpec("efficientnet_b4", "efficientnet", "torchvision", "EfficientNet_B4_Weights.IMAGENET1K_V1",
              "EfficientNet-B4, torchvision IMAGENET1K_V1"),
    ModelSpec("resnet152", "resnet", "torchvision", "ResNet152_Weights.IMAGENET1K_V1",
              "ResNet-152, torchvision IMAGENET1K_V1"),
]

MODELS: dict[str, ModelSpec] = {s.name: s for s in _PRETRAINED}
MODELS.update({f"{s.name}_scratch": ModelSpec(f"{s.name}_scratch", s.family, None, None,
                                              f"{s.description}; random init")
               for s in _PRETRAINED if s.source != "pretrain_checkpoint"})

_FAMILY_SIZES = {"beit": BEIT_SIZES, "vit": VIT_SIZES, "resnet": RESNET_SIZES,
                 "efficientnet": {"base": {}, "micro": EFFICIENTNET_MICRO}}


def list_models() -> list[str]:
    """Registered model names."""
    return sorted(MODELS)


def model_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``name`` or :class:`UnknownModelError`."""
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModelError(f"model {name!r} is not registered; choose one of {list_models()}") from None


def model_sizes(name: str) -> list[str]:
    """Sizes accepted by ``create_model(name, size=...)``."""
    if name in SIGNAL_MODELS:  # ST-MEM has the ViT sizes; the benchmark CNNs one configuration
        return sorted(stmem.STMEM_SIZES) if name.startswith("stmem") else ["base"]
    return sorted(_FAMILY_SIZES[model_spec(name).family])


# ---------------------------------------------------------------- architectures


def _build(family: str, size: str, num_classes: int, img_size: int, patch_size: int,
           drop_path_rate: float | None, **kw) -> nn.Module:
    """An architecture with a fresh ``num_classes`` head; random init."""
    sizes = _FAMILY_SIZES[family]
    if size not in sizes:
        raise UnknownModelError(f"size {size!r} is not defined for {family} models; choose one of {sorted(sizes)}")
    if family == "beit":
        model = create_backbone(size, img_size=img_size, patch_size=patch_size,
                                drop_path_rate=0.1 if drop_path_rate is None else drop_path_rate, **kw)
        model.reset_classifier(num_classes)
        return model
    if family == "vit":
        args = dict(VIT_SIZES[size], img_size=img_size, patch_size=patch_size, num_classes=num_classes,
                    drop_path_rate=0.1 if drop_path_rate is None else drop_path_rate)
        args.update(kw)
        return timm.create_model("vit_base_patch16_224", pretrained=False, **args)
    if family == "resnet":
        cfg = RESNET_SIZES[size]
        return ResNet(block=Bottleneck, layers=cfg["layers"], channels=cfg["channels"],
                      stem_width=cfg["stem_width"], num_classes=num_classes,
                      drop_path_rate=drop_path_rate or 0.0, **kw)
    if family == "efficientnet":
        if size == "base":
            if drop_path_rate is not None:
                kw["stochastic_depth_prob"] = drop_path_rate
            return tvm.efficientnet_b4(weights=None, num_classes=num_classes, **kw)
        stages = [MBConvConfig(*s, width_mult=1.0, depth_mult=1.0) for s in EFFICIENTNET_MICRO["stages"]]
        return EfficientNet(stages, dropout=EFFICIENTNET_MICRO["dropout"],
                            last_channel=EFFICIENTNET_MICRO["last_channel"], num_classes=num_classes,
                            stochastic_depth_prob=0.2 if drop_path_rate is None else drop_path_rate, **kw)
    raise UnknownModelError(f"unknown model family {family!r}")  # pragma: no cover - registry bug


def _classifier_prefixes(family: str) -> tuple[str, ...]:
    """State-dict key prefixes of the classification head (dropped from pretrained files)."""
    return {"beit": ("head.",), "vit": ("head.",), "resnet": ("fc.",),
            "efficientnet": ("classifier.",)}[family]


# ---------------------------------------------------------------- weight files


def _hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at call time (HF_HUB_CACHE, HF_HOME)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "hub"


def expected_cache_files(name: str) -> list[Path]:
    """Where the offline cache would hold ``name``'s published weights (existing or not)."""
    spec = model_spec(name)
    if spec.source == "timm":
        cfg = timm.models.get_pretrained_cfg(spec.tag)
        repo = cfg.hf_hub_id
        folder = _hf_cache_dir() / ("models--" + repo.replace("/", "--"))
        return [folder / "snapshots" / "<revision>" / f for f in ("model.safetensors", "pytorch_model.bin")]
    if spec.source == "torchvision":
        url = get_weight(spec.tag).url
        return [Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]]
    return []


def find_cached_weights(name: str) -> Path | None:
    """The cached published weights file of ``name``, or None. Never touches the network."""
    spec = model_spec(name)
    if spec.source == "timm":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in this process may download
        from huggingface_hub import try_to_load_from_cache  # after HF_HUB_OFFLINE is set: it reads it on import

        repo = timm.models.get_pretrained_cfg(spec.tag).hf_hub_id
        for fname in ("model.safetensors", "pytorch_model.bin"):
            hit = try_to_load_from_cache(repo, fname, cache_dir=str(_hf_cache_dir()))
            if isinstance(hit, str) and Path(hit).is_file():
                return Path(hit)
        return None
    if spec.source == "torchvision":
        p = expected_cache_files(name)[0]
        return p if p.is_file() else None
    return None


def _how_to_provide(name: str) -> str:
    spec = model_spec(name)
    if spec.source == "timm":
        fetch = f"timm.create_model('{spec.tag}', pretrained=True)"
    else:
        fetch = f"torchvision.models.get_model('{name}', weights='{spec.tag.split('.')[-1]}')"
    return (f"either pass weights=<path to a state dict> (notebook: -p weights /path/file.pth), or pre-populate "
            f"the offline cache by running `{fetch}` on a machine with network access and copying the cache "
            f"folder to the same place here")


def load_weights_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint/state-dict file safely.

    ``.safetensors`` via ``safetensors.torch.load_file``; anything else via
    ``torch.load(weights_only=True, map_location="cpu")`` (no arbitrary pickles).

    Raises
    ------
    WeightsNotFoundError : the file does not exist.
    CorruptWeightsError : it cannot be read or does not hold a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError, BadZipFile, ..., safetensors' SafetensorError
        raise CorruptWeightsError(f"weights file {path} cannot be read: {load_error_reason(e)}") from None
    if not isinstance(obj, Mapping):
        raise CorruptWeightsError(f"weights file {path} holds a {type(obj).__name__}, not a state dict")
    return dict(obj)


def load_error_reason(e: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` (or safetensors) refused a file, in one line, without
    torch's advice to retry with ``weights_only=False``: that would unpickle, i.e. run, the file."""
    if isinstance(e, pickle.UnpicklingError) or "weights_only" in str(e):
        return ("it holds pickled Python objects, not only tensors; refused (weights_only=True): unpickling "
                "an untrusted file can run code")
    first = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _unwrap_state_dict(obj: Mapping[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """Accept a bare state dict or one nested under ``state_dict``/``model``/``module``;
    strip a DataParallel ``module.`` prefix."""
    for key in ("state_dict", "model", "module"):
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    sd = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise CorruptWeightsError(f"weights file {path}: entry {k!r} is a {type(v).__name__}, "
                                      "not a tensor; expected a (timm/torchvision-style) state dict")
        sd[k[len("module."):] if k.startswith("module.") else k] = v
    return sd


def resolve_pretrain_checkpoint(weights: str | os.PathLike) -> Path:
    """A 02_pretrain run folder or checkpoint file -> the checkpoint file (``checkpoints/last.pt``)."""
    p = Path(weights)
    if p.is_dir():
        ckpt = p / "checkpoints" / "last.pt"
        if not ckpt.is_file():
            raise WeightsNotFoundError(f"pretraining run folder {p} has no checkpoints/last.pt (expected {ckpt}); "
                                       "run notebooks/02_pretrain.ipynb to completion or pass a checkpoint file")
        return ckpt
    if not p.is_file():
        raise WeightsNotFoundError(f"HeartBEiT checkpoint {p} does not exist: pass a 02_pretrain run folder "
                                   "(outputs/02_pretrain/<run_id>) or its checkpoints/<name>.pt file")
    return p


def load_pretrain_checkpoint(weights: str | os.PathLike, mmap: bool = False) -> dict[str, Any]:
    """Read and check a 02_pretrain checkpoint (dict with ``backbone``, ``backbone_config``, ``normalize``)."""
    path = resolve_pretrain_checkpoint(weights)
    if mmap:  # cheap peek at small entries (normalize, config) of a large file
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:
            obj = load_weights_file(path)
    else:
        obj = load_weights_file(path)
    if not isinstance(obj, Mapping):
        raise CorruptWeightsError(f"HeartBEiT checkpoint {path} holds a {type(obj).__name__}, not a dict")
    missing = [k for k in PRETRAIN_CHECKPOINT_KEYS if k not in obj]
    if missing:
        raise CheckpointFormatError(f"HeartBEiT checkpoint {path} lacks {missing} (has {sorted(obj)}); "
                                    "expected a 02_pretrain checkpoint with backbone, backbone_config, normalize")
    bc = obj["backbone_config"]
    if not isinstance(bc, Mapping) or "size" not in bc or "img_size" not in bc:
        raise CheckpointFormatError(f"HeartBEiT checkpoint {path}: backbone_config {bc!r} needs size and img_size")
    norm = obj["normalize"]
    if not isinstance(norm, Mapping) or "mean" not in norm or "std" not in norm:
        raise CheckpointFormatError(f"HeartBEiT checkpoint {path}: normalize {norm!r} needs mean and std")
    obj = dict(obj)
    obj["path"] = path
    return obj


def _load_into(model: nn.Module, sd: Mapping[str, torch.Tensor], path: Path, head_prefixes: tuple[str, ...],
               filter_fn: Callable | None = None) -> None:
    """Load every non-head key of ``sd`` into ``model``; all backbone keys must match exactly."""
    if filter_fn is not None:
        sd = filter_fn(dict(sd), model)
    sd = {k: v for k, v in sd.items() if not k.startswith(head_prefixes)}
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not k.startswith(head_prefixes)]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
              for k, v in sd.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        raise WeightsMismatchError(
            f"weights file {path} does not match the architecture: {len(missing)} missing key(s) {missing[:10]}, "
            f"{len(unexpected)} unexpected key(s) {unexpected[:10]}, {len(shapes)} shape mismatch(es) {shapes[:5]}")
    model.load_state_dict(sd, strict=False)


def _timm_filter(family: str) -> Callable | None:
    """timm's own checkpoint filters (resize position embeddings / relative position tables when
    ``img_size`` differs from 224, drop non-persistent buffers of original checkpoints)."""
    if family == "vit":
        return vit_checkpoint_filter_fn
    if family == "beit":
        return beit_checkpoint_filter_fn
    return None


# ---------------------------------------------------------------- signal models (issue 13)
# 1-D models on (N, leads, T) signals share create_model's names. model_family(name) tells "image"
# from "signal" (ModelSpec.family is the image *architecture* key: beit, vit, resnet, efficientnet).

SIGNAL_MODELS: dict[str, str] = {
    "xresnet1d101": "xresnet1d101 of the PTB-XL benchmark (kernel 5, head [128], dropout 0.5); random init",
    "inception1d": "inception1d of the PTB-XL benchmark (kernel 40, depth 6, 32 filters, residual); random init",
    "stmem": "ST-MEM ViT encoder from a signal pretraining checkpoint (Na et al. 2024)",
    "stmem_scratch": "ST-MEM ViT encoder; random init",
}


def model_family(name: str) -> str:
    """``"signal"`` for the 1-D models (input (N, leads, T)), ``"image"`` for the rest ((N, 3, H, W))."""
    if name in SIGNAL_MODELS:
        return "signal"
    model_spec(name)  # UnknownModelError for unregistered names
    return "image"


def sweep_family(name: str) -> str:
    """The key sweep files group ``name`` by (lr grids, Slurm resources): its image architecture (``beit``,
    ``vit``, ``resnet``, ``efficientnet``) or ``signal`` for the 1-D models."""
    return "signal" if name in SIGNAL_MODELS else model_spec(name).family


def _create_signal_model(name: str, num_classes: int, weights, size: str | None, drop_path_rate: float | None,
                         in_chans: int | None = None, signal_rate: float | None = None, **kw) -> nn.Module:
    """A signal classifier (N, in_chans, T) -> (N, num_classes); ``stmem`` loads its encoder strictly."""
    if name == "stmem":
        return _load_stmem(num_classes, weights, size, drop_path_rate, in_chans, signal_rate, **kw)
    if weights not in (None, ""):
        raise WeightsError(f"model {name!r} is trained from scratch; got weights={weights!r}")
    in_chans = 8 if in_chans is None else in_chans  # the cohort store's leads
    if name == "stmem_scratch":
        return stmem.build_classifier(num_classes, size or "base", in_chans, signal_rate or 100.0,
                                      0.1 if drop_path_rate is None else drop_path_rate, **kw)
    if size not in (None, "base"):
        raise UnknownModelError(f"size {size!r} is not defined for {name}; it has only 'base'")
    build = {"xresnet1d101": signal_models.xresnet1d101, "inception1d": signal_models.inception1d}[name]
    return build(num_classes, in_chans, **kw)


def _load_stmem(num_classes: int, weights, size, drop_path_rate, in_chans, signal_rate, **kw) -> nn.Module:
    """``stmem``: classifier whose ``encoder.*`` keys all come from the checkpoint's ``backbone``."""
    if weights in (None, ""):
        raise WeightsNotFoundError("model 'stmem' needs weights=<signal pretraining run folder or checkpoint>")
    path = resolve_pretrain_checkpoint(weights)
    ckpt = load_weights_file(path)
    bc = ckpt.get("backbone_config")
    if ckpt.get("modality") != "signal" or "backbone" not in ckpt or not isinstance(bc, Mapping):
        raise CheckpointFormatError(f"checkpoint {path} is not a signal (ST-MEM) pretraining checkpoint: needs "
                                    f"modality='signal', backbone, backbone_config (has {sorted(ckpt)})")
    for key, want in (("size", size), ("num_leads", in_chans), ("signal_rate", signal_rate)):
        if want not in (None, "") and bc.get(key) != want:
            raise WeightsMismatchError(f"checkpoint {path} has {key}={bc.get(key)!r}, but {want!r} was requested")
    model = stmem.build_classifier(num_classes, bc["size"], int(bc["num_leads"]), float(bc["signal_rate"]),
                                   0.1 if drop_path_rate is None else drop_path_rate, **kw)
    _load_into(model.encoder, _unwrap_state_dict(ckpt["backbone"], path), path, head_prefixes=())
    return model


# ---------------------------------------------------------------- public API


def create_model(name: str, num_classes: int = 2, weights: str | os.PathLike | None = None, *,
                 size: str | None = None, img_size: int = 224, patch_size: int = 16,
                 drop_path_rate: float | None = None, **kw) -> nn.Module:
    """A registered classifier with a fresh ``num_classes``-neuron head and its pretrained weights.

    Parameters
    ----------
    name : one of :func:`list_models`.
    num_classes : width of the new classification head (2 in the paper: CrossEntropy on 2 logits).
    weights : for ``heartbeit``: the 02_pretrain run folder or checkpoint file (required). For the
        ImageNet models: a state-dict file (timm-style for ``vit_b16``/``beit_b16``, torchvision-style
        for ``efficientnet_b4``/``resnet152``); None looks in the offline cache. Must be None for
        ``*_scratch``.
    size : architecture size (:func:`model_sizes`); default ``base``. For ``heartbeit`` the size comes
        from the checkpoint (a different ``size`` is an error).
    img_size : input images are (B, 3, img_size, img_size).
    patch_size : transformer patch size in pixels.

    Returns
    -------
    torch.nn.Module mapping (B, 3, img_size, img_size) float images to (B, num_classes) logits.

    Raises
    ------
    UnknownModelError, WeightsNotFoundError, CorruptWeightsError, CheckpointFormatError,
    WeightsMismatchError
    """
    if name in SIGNAL_MODELS:  # 1-D models: img_size and patch_size do not apply
        return _create_signal_model(name, num_classes, weights, size, drop_path_rate, **kw)
    spec = model_spec(name)
    if spec.source is None:
        if weights not in (None, ""):
            raise WeightsError(f"model {name!r} is trained from scratch; got weights={weights!r} (use {name[:-8]!r})")
        return _build(spec.family, size or "base", num_classes, img_size, patch_size, drop_path_rate, **kw)

    if spec.source == "pretrain_checkpoint":
        if weights in (None, ""):
            raise WeightsNotFoundError("model 'heartbeit' needs weights=<02_pretrain run folder or checkpoint "
                                       "file> (notebook: -p pretrain_run outputs/02_pretrain/<run_id>)")
        ckpt = load_pretrain_checkpoint(weights)
        bc = ckpt["backbone_config"]
        if size not in (None, "", bc["size"]):
            raise WeightsMismatchError(f"checkpoint {ckpt['path']} holds a {bc['size']!r} backbone, "
                                       f"but size={size!r} was requested")
        if int(bc["img_size"]) != int(img_size):
            raise WeightsMismatchError(f"checkpoint {ckpt['path']} was pretrained on {bc['img_size']} px images, "
                                       f"but img_size={img_size}; fine-tune at the pretraining size")
        model = create_backbone(bc["size"], img_size=int(bc["img_size"]),
                                patch_size=int(bc.get("patch_size", 16)),
                                drop_path_rate=0.1 if drop_path_rate is None else drop_path_rate, **kw)
        backbone = ckpt["backbone"]
        if not isinstance(backbone, Mapping):
            raise CheckpointFormatError(f"checkpoint {ckpt['path']}: 'backbone' is a {type(backbone).__name__}")
        try:
            model.load_state_dict(_unwrap_state_dict(backbone, ckpt["path"]), strict=True)
        except RuntimeError as e:
            raise WeightsMismatchError(f"checkpoint {ckpt['path']}: backbone keys do not match "
                                       f"create_backbone({bc['size']!r}, {bc['img_size']}): {e}") from e
        model.reset_classifier(num_classes)
        return model

    size = size or "base"
    if weights in (None, ""):
        if size != "base":
            raise WeightsNotFoundError(f"model {name!r} size {size!r} has no published weights: pass "
                                       f"weights=<path to a state dict of that size>, or use {name}_scratch")
        path = find_cached_weights(name)
        if path is None:
            expected = " or ".join(str(p) for p in expected_cache_files(name))
            raise WeightsNotFoundError(f"pretrained weights for {name!r} ({spec.tag}) not found: expected {expected}. "
                                       f"No download is attempted; {_how_to_provide(name)}")
    else:
        path = Path(weights)
        if path.is_dir():
            raise WeightsNotFoundError(f"weights for {name!r} must be a state-dict file, got the folder {path}")
        if not path.is_file():
            raise WeightsNotFoundError(f"weights file {path} for {name!r} does not exist; {_how_to_provide(name)}")
    sd = _unwrap_state_dict(load_weights_file(path), path)  # fail on a bad file before building
    model = _build(spec.family, size, num_classes, img_size, patch_size, drop_path_rate, **kw)
    try:
        _load_into(model, sd, path, _classifier_prefixes(spec.family), _timm_filter(spec.family))
    except (RuntimeError, KeyError, AttributeError) as e:  # raised inside timm's filters on odd files
        raise WeightsMismatchError(f"weights file {path} does not fit {name!r}: {type(e).__name__}: {e}") from e
    return model


def normalization_for(name: str, weights: str | os.PathLike | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) for images in [0, 1] that the model's weights expect.

    - ``heartbeit``: the pretraining normalisation stored in the checkpoint (``weights`` required).
    - timm models (``vit_b16``, ``beit_b16``): the statistics of their pretrained config (timm lists
      mean = std = 0.5 for both; the authors' code used ImageNet statistics for its BEiT baseline).
    - torchvision models (``efficientnet_b4``, ``resnet152``): ImageNet mean/std.
    - ``*_scratch``: mean = std = 0.5 (images mapped to [-1, 1]); fine-tuning replaces it for the transformers
      (``vit_b16_scratch``, ``beit_b16_scratch``, ``heartbeit_scratch``) by the rendered training images' own
      statistics (``pipeline.finetune.scratch_normalization``, issue 18), CNNs keep it.
    """
    spec = model_spec(name)
    if spec.source == "pretrain_checkpoint":
        if weights in (None, ""):
            raise WeightsNotFoundError("normalization_for('heartbeit') needs the 02_pretrain checkpoint (weights=...)")
        norm = load_pretrain_checkpoint(weights, mmap=True)["normalize"]
        mean, std = [float(v) for v in norm["mean"]], [float(v) for v in norm["std"]]
        if len(mean) == 1:
            mean, std = mean * 3, std * 3
        return tuple(mean), tuple(std)
    if spec.source == "timm":
        cfg = timm.models.get_pretrained_cfg(spec.tag)
        return tuple(float(v) for v in cfg.mean), tuple(float(v) for v in cfg.std)
    if spec.source == "torchvision":
        return IMAGENET_MEAN, IMAGENET_STD
    return DEFAULT_MEAN, DEFAULT_STD


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
