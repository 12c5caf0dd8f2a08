"""Visual tokenizers for masked image modelling: image batch -> (B, h, w) int64 token ids.

Two kinds share one interface (``tokenize``, ``vocab_size``, ``grid_for``, ``fingerprint``):

``dalle``
    The DALL-E dVAE encoder (Ramesh et al. 2021) used by BEiT and the HeartBEiT paper: vocabulary
    8,192, applied to the *second view* of the image at half the model's resolution (112 x 112 for
    224 x 224 images) after the logit-Laplace pixel map ``x -> (1 - 2 eps) x + eps`` (eps = 0.1);
    its three 2x max-pools give one token per 8 x 8 pixels of the view, i.e. one per 16 x 16 patch
    of the model's image (14 x 14 tokens).  The architecture is re-implemented here (group-based
    ResNet: a 7 x 7 input conv, 4 groups of ``n_blk_per_group`` residual blocks of widths
    1, 2, 4, 8 x ``n_hid``, a 1 x 1 output conv to the vocabulary) with the same parameter names
    as OpenAI's ``dall_e`` package, so its weights copy over key for key.  OpenAI ships them as
    ``encoder.pkl``, a *pickled Python module*: loading it runs the unpickler, which can execute
    arbitrary code, so :func:`load_tokenizer` refuses it unless ``trust_pickle=True``.  With that
    flag the module is unpickled (its ``dall_e`` classes mapped onto local stand-ins, so the
    ``dall_e`` package need not be installed) and its ``state_dict`` copied into our encoder.
    :func:`convert_dalle_pickle` writes that state dict to a plain file, which later loads with
    ``torch.load(weights_only=True)`` (the recommended path).

``ecg_kmeans``
    An ECG-native tokenizer that the project fits itself (the DALL-E weights cannot be shipped and
    were made for natural images): a k-means codebook over the pixels of each 16 x 16 patch of a
    rendered ECG (grey levels in [0, 1], average-pooled by ``pool`` to (16/pool)^2 features);
    a patch's token is its nearest centroid.  :func:`fit_kmeans_tokenizer` fits it
    (scikit-learn ``MiniBatchKMeans``), :func:`codebook_report` measures codebook usage
    (codes used, perplexity) and reconstruction error (patch -> centroid MSE).

Token pre-computation: :func:`precompute_tokens` renders and tokenizes every ECG of a cohort store
once and caches the result as ``<store>/tokens/<key>.npy`` (int16, or int32 for vocabularies over
32,767 codes; (N, h, w) in store order), where ``key`` hashes the tokenizer's weights and the
render settings, so a new tokenizer or image size never reads stale tokens.

Images everywhere: uint8 in [0, 255] or float in [0, 1]; (B, H, W) grey, (B, H, W, C) or
(B, C, H, W) with C in {1, 3}; numpy arrays or torch tensors.  ``tokenize`` returns numpy int64 for
numpy input and a torch int64 tensor (on the tokenizer's device) for tensor input.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import types
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.cluster import MiniBatchKMeans
from tqdm.auto import tqdm

from heartbeit_lib import render, utils

__all__ = [
    "TokenizerError", "TokenizerFileNotFoundError", "UntrustedPickleError",
    "DalleEncoder", "DalleTokenizer", "KMeansTokenizer", "load_tokenizer", "convert_dalle_pickle",
    "fit_kmeans_tokenizer", "codebook_report", "codebook_usage", "to_float_images",
    "token_cache_path", "precompute_tokens", "KINDS",
]

KINDS = ("dalle", "ecg_kmeans")
LOGIT_LAPLACE_EPS = 0.1  # DALL-E's map_pixels constant
FORMAT_VERSION = 1


class TokenizerError(ValueError):
    """A tokenizer file, kind or input is invalid (the message names it and the reason)."""


class TokenizerFileNotFoundError(TokenizerError, FileNotFoundError):
    """The tokenizer weights file does not exist."""


class UntrustedPickleError(TokenizerError):
    """A weights file needs full unpickling (arbitrary code) and ``trust_pickle`` was not given."""


# ----------------------------------------------------------------------------- image handling


def to_float_images(images: Any, channels: int = 1, device: torch.device | str | None = None) -> torch.Tensor:
    """A batch of images as float32 (B, channels, H, W) in [0, 1].

    ``images`` is uint8 ([0, 255]) or float ([0, 1]): (B, H, W), (B, H, W, C) or (B, C, H, W) with
    C in {1, 3}; a numpy array or a torch tensor.  RGB is averaged to grey for ``channels=1`` and
    grey is repeated for ``channels=3``.
    """
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images))
    if device is not None:
        x = x.to(device)
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        if x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
            x = x.permute(0, 3, 1, 2)
        elif x.shape[1] not in (1, 3):
            raise TokenizerError(f"images: expected (B, H, W[, C]) or (B, C, H, W) with C in (1, 3), "
                                 f"got shape {tuple(x.shape)}")
    else:
        raise TokenizerError(f"images: expected a batch (B, H, W[, C]), got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    elif x.is_floating_point():
        x = x.float()
    else:
        raise TokenizerError(f"images: expected uint8 or float, got {x.dtype}")
    if x.shape[1] != channels:
        x = x.mean(1, keepdim=True) if channels == 1 else x.expand(-1, channels, -1, -1)
    return x.contiguous()


def _as_output(tokens: torch.Tensor, like: Any) -> Any:
    return tokens if isinstance(like, torch.Tensor) else tokens.cpu().numpy()


def _state_fingerprint(state: dict[str, torch.Tensor], extra: dict) -> str:
    h = hashlib.sha256(json.dumps(extra, sort_keys=True).encode())
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(k.encode() + b"\0" + str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# ----------------------------------------------------------------------------- DALL-E dVAE encoder


class _Conv(nn.Module):
    """Square 'same' convolution with DALL-E's parameter names ``w`` (out, in, k, k) and ``b`` (out,)."""

    def __init__(self, n_in: int, n_out: int, k: int):
        super().__init__()
        if k % 2 != 1:
            raise TokenizerError(f"kernel size must be odd, got {k}")
        self.w = nn.Parameter(torch.randn(n_out, n_in, k, k) / math.sqrt(n_in * k * k))
        self.b = nn.Parameter(torch.zeros(n_out))
        self.pad = (k - 1) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.w, self.b, padding=self.pad)


class _Block(nn.Module):
    """Residual block: ``id(x) + res(x) / n_layers^2``; ``res`` = 4 x (ReLU, conv) with a width/4 bottleneck."""

    def __init__(self, n_in: int, n_out: int, n_layers: int):
        super().__init__()
        hid = n_out // 4
        self.id_path = _Conv(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        self.res_path = nn.Sequential(OrderedDict([
            ("relu_1", nn.ReLU()), ("conv_1", _Conv(n_in, hid, 3)),
            ("relu_2", nn.ReLU()), ("conv_2", _Conv(hid, hid, 3)),
            ("relu_3", nn.ReLU()), ("conv_3", _Conv(hid, hid, 3)),
            ("relu_4", nn.ReLU()), ("conv_4", _Conv(hid, n_out, 1)),
        ]))
        self.post_gain = 1.0 / n_layers ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.id_path(x) + self.post_gain * self.res_path(x)


class DalleEncoder(nn.Module):
    """The DALL-E dVAE encoder: float32 (B, 3, S, S) mapped pixels -> logits (B, vocab, S/8, S/8).

    State-dict keys equal those of OpenAI's ``dall_e.encoder.Encoder`` (``blocks.input.w``,
    ``blocks.group_1.block_1.res_path.conv_1.w``, ..., ``blocks.output.conv.b``).  OpenAI's weights:
    ``n_hid=256, n_blk_per_group=2, vocab_size=8192`` (4 groups).
    """

    group_count = 4

    def __init__(self, n_hid: int = 256, n_blk_per_group: int = 2, input_channels: int = 3,
                 vocab_size: int = 8192):
        super().__init__()
        if n_hid % 4 or n_hid < 4:
            raise TokenizerError(f"n_hid must be a positive multiple of 4, got {n_hid}")
        self.n_hid, self.n_blk_per_group = n_hid, n_blk_per_group
        self.input_channels, self.vocab_size = input_channels, vocab_size
        n_layers = self.group_count * n_blk_per_group
        widths = [n_hid, n_hid, 2 * n_hid, 4 * n_hid, 8 * n_hid]  # input width, then each group's
        layers: list[tuple[str, nn.Module]] = [("input", _Conv(input_channels, n_hid, 7))]
        for g in range(1, self.group_count + 1):
            blocks = [(f"block_{i + 1}", _Block(widths[g - 1] if i == 0 else widths[g], widths[g], n_layers))
                      for i in range(n_blk_per_group)]
            if g < self.group_count:
                blocks.append(("pool", nn.MaxPool2d(kernel_size=2)))
            layers.append((f"group_{g}", nn.Sequential(OrderedDict(blocks))))
        layers.append(("output", nn.Sequential(OrderedDict([
            ("relu", nn.ReLU()), ("conv", _Conv(8 * n_hid, vocab_size, 1))]))))
        self.blocks = nn.Sequential(OrderedDict(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.input_channels:
            raise TokenizerError(f"DALL-E encoder input must be (B, {self.input_channels}, S, S), "
                                 f"got {tuple(x.shape)}")
        return self.blocks(x.float())

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], source: str = "state dict") -> "DalleEncoder":
        """Build an encoder whose sizes are read off ``state`` and load it (all keys must match)."""
        try:
            n_hid, in_ch = state["blocks.input.w"].shape[:2]
            vocab = state["blocks.output.conv.w"].shape[0]
        except KeyError as e:
            raise TokenizerError(f"{source}: not a DALL-E encoder state dict (missing key {e}); "
                                 f"found keys such as {sorted(state)[:5]}") from None
        n_blk = len({k.split(".")[2] for k in state if k.startswith("blocks.group_1.block_")})
        enc = cls(n_hid=int(n_hid), n_blk_per_group=n_blk, input_channels=int(in_ch), vocab_size=int(vocab))
        missing, unexpected = enc.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise TokenizerError(f"{source}: DALL-E encoder keys do not match (missing {missing[:5]}, "
                                 f"unexpected {unexpected[:5]})")
        return enc.eval().requires_grad_(False)


def map_pixels(x: torch.Tensor, eps: float = LOGIT_LAPLACE_EPS) -> torch.Tensor:
    """DALL-E's logit-Laplace input map: [0, 1] -> [eps, 1 - eps]."""
    return (1 - 2 * eps) * x + eps


class DalleTokenizer:
    """DALL-E dVAE tokens of the half-resolution second view: (B, H, W[, C]) -> (B, H/16, W/16) int64.

    The view is the image resized by ``view_scale`` (BEiT: 224 -> 112) with antialiased bicubic
    interpolation (BEiT used PIL's Lanczos; torch has none), clamped to [0, 1], grey replicated to RGB.
    ``amp`` (default: on CUDA) runs the encoder under bf16 autocast (~52 GFLOP per 112-px view); its tokens
    may differ from fp32 ones where two codes' logits nearly tie, so it is part of the fingerprint.
    """

    kind = "dalle"

    def __init__(self, encoder: DalleEncoder, view_scale: float = 0.5, device: str | torch.device = "cpu",
                 batch_size: int = 64, source: str = "", amp: bool | None = None):
        self.encoder = encoder.to(device).eval().requires_grad_(False)
        self.view_scale = float(view_scale)
        self.device = torch.device(device)
        self.amp = self.device.type == "cuda" if amp is None else bool(amp)
        self.batch_size = int(batch_size)
        self.source = source
        self._fp: str | None = None

    @property
    def vocab_size(self) -> int:
        return self.encoder.vocab_size

    @property
    def patch_size(self) -> int:
        return int(round(8 / self.view_scale))

    def grid_for(self, image_size: int) -> tuple[int, int]:
        """Token grid for square images of side ``image_size`` pixels."""
        view = int(round(image_size * self.view_scale))
        if view % 8:
            raise TokenizerError(f"image_size {image_size}: the DALL-E view ({view} px) must be a multiple of 8")
        return view // 8, view // 8

    @torch.no_grad()
    def tokenize(self, images: Any) -> Any:
        h, w = to_float_images(images[:1], channels=3).shape[-2:]  # one image's layout, for the view size
        vh, vw = int(round(h * self.view_scale)), int(round(w * self.view_scale))
        if vh % 8 or vw % 8:
            raise TokenizerError(f"images of {h}x{w} px give a {vh}x{vw} DALL-E view, not a multiple of 8")
        out = []
        for i in range(0, len(images), self.batch_size):
            v = to_float_images(images[i:i + self.batch_size], 3, self.device)  # uint8 crosses to the device
            if (vh, vw) != (h, w):
                v = F.interpolate(v, size=(vh, vw), mode="bicubic", antialias=True, align_corners=False)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                logits = self.encoder(map_pixels(v.clamp(0, 1)))
            out.append(logits.argmax(1))
        tokens = torch.cat(out) if out else torch.zeros((0, vh // 8, vw // 8), dtype=torch.int64)
        return _as_output(tokens.long(), images)

    def fingerprint(self) -> str:
        if self._fp is None:
            self._fp = _state_fingerprint(self.encoder.state_dict(),
                                          {"kind": self.kind, "view_scale": self.view_scale,
                                           "eps": LOGIT_LAPLACE_EPS, "v": FORMAT_VERSION,
                                           **({"amp": "bf16"} if self.amp else {})})
        return self._fp


# -- loading OpenAI's pickled module without the dall_e package and only when trusted


class _DalleStandIn(nn.Module):
    """Target for the ``dall_e`` classes inside a pickled encoder: holds the unpickled attributes.

    Unpickling an ``nn.Module`` restores its ``__dict__`` (``_parameters``, ``_modules``, ...) without
    calling ``__init__``, so a bare subclass is enough to read the ``state_dict`` back out.
    """

    def forward(self, *args, **kw):  # pragma: no cover - never called
        raise TokenizerError("a stand-in for an unpickled dall_e module cannot be run")


_DALLE_CLASSES = {("dall_e.encoder", "Encoder"), ("dall_e.encoder", "EncoderBlock"), ("dall_e.utils", "Conv2d")}


class _DalleUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module == "dall_e" or module.startswith("dall_e."):
            if (module, name) in _DALLE_CLASSES:
                return _DalleStandIn
            raise TokenizerError(f"pickled DALL-E file refers to {module}.{name}, which is not part of "
                                 f"the dVAE encoder (is this the decoder?)")
        return super().find_class(module, name)


_dalle_pickle = types.ModuleType("heartbeit_dalle_pickle")
_dalle_pickle.Unpickler = _DalleUnpickler  # type: ignore[attr-defined]
_dalle_pickle.load = lambda f, **kw: _DalleUnpickler(f, **kw).load()  # type: ignore[attr-defined]


_HOW_TO_PROVIDE = {
    "dalle": "download OpenAI's DALL-E dVAE encoder (https://cdn.openai.com/dall-e/encoder.pkl) on a "
             "machine with network access, copy it here and pass its path (tokenizer_path=...); "
             "convert it once with tokenizers.convert_dalle_pickle(src, dst) to a weights-only state dict",
    "ecg_kmeans": "fit one with tokenizers.fit_kmeans_tokenizer(images, vocab_size, seed) and save it "
                  "with .save(path), or leave tokenizer_path empty in 02_pretrain to fit it there",
}


def _missing(path: Path, kind: str) -> TokenizerFileNotFoundError:
    return TokenizerFileNotFoundError(f"{kind} tokenizer weights {str(path)!r} do not exist; "
                                      f"to provide them: {_HOW_TO_PROVIDE[kind]}")


def _load_dalle_state(path: Path, trust_pickle: bool) -> tuple[dict[str, torch.Tensor], str]:
    """State dict of a DALL-E encoder file: a plain state dict, or (trusted) a pickled module."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        how = "state dict (weights_only)"
    except pickle.UnpicklingError as e:
        if not trust_pickle:
            raise UntrustedPickleError(
                f"{str(path)!r} is a pickled Python object, not a plain state dict (OpenAI's encoder.pkl "
                f"pickles the whole dall_e Encoder module). Unpickling can run arbitrary code, so it is "
                f"refused. If you trust the file (e.g. OpenAI's encoder.pkl, sha256 checked), pass "
                f"trust_pickle=True, or convert it once with "
                f"tokenizers.convert_dalle_pickle(src, dst, trust_pickle=True) and load dst, which needs no "
                f"trust. (torch said: {str(e).splitlines()[0]})") from None
        obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_dalle_pickle)
        how = "pickled module (trusted)"
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise TokenizerError(f"{str(path)!r}: expected a DALL-E encoder module or state dict, "
                             f"got {type(obj).__name__}")
    return {k: v.float() for k, v in obj.items()}, how


def convert_dalle_pickle(src: str | os.PathLike, dst: str | os.PathLike, *, trust_pickle: bool = False) -> Path:
    """Convert OpenAI's pickled ``encoder.pkl`` to a state-dict file that loads with ``weights_only=True``."""
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise _missing(src, "dalle")
    state, _ = _load_dalle_state(src, trust_pickle)
    DalleEncoder.from_state_dict(state, str(src))  # validate before writing
    dst.parent.mkdir(parents=True, exist_ok=True)
    utils.atomic_torch_save(state, dst)
    return dst


# ----------------------------------------------------------------------------- ECG k-means tokenizer


def _patch_features(x: torch.Tensor, patch_size: int, pool: int) -> torch.Tensor:
    """(B, 1, H, W) grey in [0, 1] -> (B, H/p, W/p, (p/pool)^2) average-pooled patch pixels."""
    b, _, h, w = x.shape
    if h % patch_size or w % patch_size:
        raise TokenizerError(f"images of {h}x{w} px are not a whole number of {patch_size}-px patches")
    if pool > 1:
        x = F.avg_pool2d(x, pool)
    q = patch_size // pool
    gh, gw = h // patch_size, w // patch_size
    return x.reshape(b, gh, q, gw, q).permute(0, 1, 3, 2, 4).reshape(b, gh, gw, q * q)


class KMeansTokenizer:
    """Nearest-centroid tokens of 16 x 16 patches: (B, H, W[, C]) -> (B, H/16, W/16) int64.

    Parameters
    ----------
    centroids : (vocab, (patch_size/pool)^2) float32 grey levels in [0, 1].
    patch_size, pool : patch side in pixels and its average-pooling factor before matching.
    """

    kind = "ecg_kmeans"

    def __init__(self, centroids: torch.Tensor | np.ndarray, patch_size: int = 16, pool: int = 2,
                 device: str | torch.device = "cpu", batch_size: int = 256, info: dict | None = None):
        c = torch.as_tensor(centroids)
        if patch_size % pool:
            raise TokenizerError(f"pool {pool} must divide patch_size {patch_size}")
        if c.ndim != 2 or c.shape[1] != (patch_size // pool) ** 2:
            raise TokenizerError(f"centroids must be (vocab, {(patch_size // pool) ** 2}), got {tuple(c.shape)}")
        self.device = torch.device(device)
        self.centroids = c.float().to(self.device)
        self.patch_size, self.pool, self.batch_size = int(patch_size), int(pool), int(batch_size)
        self.info = dict(info or {})
        self._c2 = (self.centroids ** 2).sum(1)
        self._fp: str | None = None

    @property
    def vocab_size(self) -> int:
        return int(self.centroids.shape[0])

    def grid_for(self, image_size: int) -> tuple[int, int]:
        if image_size % self.patch_size:
            raise TokenizerError(f"image_size {image_size} is not a multiple of patch_size {self.patch_size}")
        return image_size // self.patch_size, image_size // self.patch_size

    def features(self, images: Any) -> torch.Tensor:
        """(B, h, w, F) float32 patch features of an image batch."""
        return _patch_features(to_float_images(images, 1, self.device), self.patch_size, self.pool)

    def _assign(self, f: torch.Tensor) -> torch.Tensor:
        # argmin ||f - c||^2 = argmin (||c||^2 - 2 f.c); chunked to bound memory
        out = []
        flat = f.reshape(-1, f.shape[-1])
        for i in range(0, len(flat), 65536):
            d = self._c2[None, :] - 2 * flat[i:i + 65536] @ self.centroids.T
            out.append(d.argmin(1))
        return (torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)).reshape(f.shape[:-1])

    @torch.no_grad()
    def tokenize(self, images: Any) -> Any:
        n = len(images)
        out = [self._assign(self.features(images[i:i + self.batch_size])) for i in range(0, n, self.batch_size)]
        if not out:
            raise TokenizerError("images: empty batch")
        return _as_output(torch.cat(out).long(), images)

    def state(self) -> dict:
        """Plain dict (tensors, numbers, strings) that ``torch.load(weights_only=True)`` reads back."""
        return {"kind": self.kind, "format_version": FORMAT_VERSION, "centroids": self.centroids.cpu(),
                "patch_size": self.patch_size, "pool": self.pool,
                "info": json.dumps(self.info, sort_keys=True, default=str)}

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".npz":
            np.savez(path, **{k: (v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v))
                              for k, v in self.state().items()})
        else:
            utils.atomic_torch_save(self.state(), path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "KMeansTokenizer":
        path = Path(path)
        if not path.exists():
            raise _missing(path, "ecg_kmeans")
        if path.suffix == ".npz":
            try:
                with np.load(path, allow_pickle=False) as z:
                    st = {k: z[k] for k in z.files}
            except Exception as e:  # BadZipFile, object arrays (pickles: refused), truncated members...
                raise TokenizerError(f"{str(path)!r} is not a readable .npz of plain arrays "
                                     f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
            st = {k: (v.item() if v.ndim == 0 else v) for k, v in st.items()}
        else:
            try:
                st = torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError:  # torch's message suggests weights_only=False: not passed on
                raise TokenizerError(f"{str(path)!r} is not a weights-only k-means tokenizer file: it holds "
                                     "pickled Python objects (refused: unpickling can run code)") from None
            except Exception as e:  # truncated, not a torch file
                raise TokenizerError(f"{str(path)!r} is not a readable k-means tokenizer file "
                                     f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        if not isinstance(st, dict) or st.get("kind") != cls.kind or "centroids" not in st:
            kind = st.get("kind") if isinstance(st, dict) else None
            raise TokenizerError(f"{str(path)!r}: not an ecg_kmeans tokenizer file (kind={kind!r})")
        return cls(st["centroids"], int(st["patch_size"]), int(st["pool"]), device=device,
                   info=json.loads(str(st.get("info", "{}"))))

    def fingerprint(self) -> str:
        if self._fp is None:
            self._fp = _state_fingerprint({"centroids": self.centroids},
                                          {"kind": self.kind, "patch_size": self.patch_size, "pool": self.pool,
                                           "v": FORMAT_VERSION})
        return self._fp


def fit_kmeans_tokenizer(images: Any, vocab_size: int = 512, seed: int = 0, *, patch_size: int = 16,
                         pool: int = 2, max_patches: int = 200_000, batch_size: int = 4096,
                         n_init: int = 3, max_iter: int = 100) -> KMeansTokenizer:
    """Fit a k-means codebook over the patches of rendered ECG images.

    Parameters
    ----------
    images : (N, H, W[, C]) uint8 or float images (see :func:`to_float_images`).
    vocab_size : number of codes (k), e.g. 512-8192.
    seed : seeds the patch subsample (``np.random.default_rng``) and ``MiniBatchKMeans``.
    max_patches : at most this many patches, drawn uniformly without replacement, are clustered.

    Returns
    -------
    KMeansTokenizer, with ``info`` recording the fit (patches used, inertia, seed).
    """
    dim = (patch_size // pool) ** 2
    # chunked: a float copy of 20,000 224-px images would need 4 GB, their pooled features 1 GB
    feats = np.concatenate([_patch_features(to_float_images(images[i:i + 512], 1), patch_size, pool)
                            .reshape(-1, dim).numpy() for i in range(0, len(images), 512)])
    if len(feats) < vocab_size:
        raise TokenizerError(f"vocab_size {vocab_size} exceeds the {len(feats)} patches given to fit it")
    rng = np.random.default_rng(seed)
    if len(feats) > max_patches:
        feats = feats[np.sort(rng.choice(len(feats), max_patches, replace=False))]
    km = MiniBatchKMeans(n_clusters=vocab_size, random_state=seed, batch_size=batch_size, n_init=n_init,
                         max_iter=max_iter, compute_labels=False)
    km.fit(feats)
    info = {"fit_patches": int(len(feats)), "fit_images": int(len(images)), "seed": int(seed),
            "n_iter": int(km.n_iter_), "vocab_size": int(vocab_size)}
    return KMeansTokenizer(km.cluster_centers_.astype(np.float32), patch_size, pool, info=info)


def codebook_usage(tokens: Any, vocab_size: int) -> dict:
    """Codebook usage of a token array: codes used, perplexity exp(H) of the code histogram (nats),
    and the majority code with its share."""
    t = np.asarray(tokens.cpu() if isinstance(tokens, torch.Tensor) else tokens).ravel()
    counts = np.bincount(t, minlength=vocab_size).astype(np.float64)
    p = counts / max(counts.sum(), 1.0)
    nz = p[p > 0]
    return {"vocab_size": int(vocab_size), "codes_used": int((counts > 0).sum()),
            "perplexity": float(np.exp(-(nz * np.log(nz)).sum())),
            "majority_code": int(counts.argmax()), "majority_share": float(p.max())}


def codebook_report(tokenizer: Any, images: Any) -> dict:
    """:func:`codebook_usage` of ``tokenizer`` on ``images``, plus (k-means) reconstruction MSE and the
    MSE of the all-patches-mean baseline, whose ratio is the unexplained share of patch variance."""
    if not isinstance(tokenizer, KMeansTokenizer):
        return codebook_usage(tokenizer.tokenize(images), tokenizer.vocab_size)
    if len(images) == 0:
        raise TokenizerError("images: empty batch")
    with torch.no_grad():  # features and their tokens once, for the usage and both errors
        f = tokenizer.features(images)
        t = tokenizer._assign(f)
        f = f.reshape(-1, f.shape[-1])
        rep = codebook_usage(t, tokenizer.vocab_size)
        rep["recon_mse"] = float(((f - tokenizer.centroids[t.reshape(-1)]) ** 2).mean())  # grey levels^2, [0, 1]
        rep["mean_patch_mse"] = float(((f - f.mean(0)) ** 2).mean())
    rep["recon_mse_ratio"] = rep["recon_mse"] / max(rep["mean_patch_mse"], 1e-12)
    return rep


# ----------------------------------------------------------------------------- factory


def load_tokenizer(kind: str, path: str | os.PathLike | None = None, *, trust_pickle: bool = False,
                   device: str | torch.device = "cpu", **kw) -> DalleTokenizer | KMeansTokenizer:
    """Load a tokenizer by kind from a local weights file.

    Parameters
    ----------
    kind : ``"dalle"`` (DALL-E dVAE; ``path`` = a state-dict file, or OpenAI's pickled ``encoder.pkl``
        with ``trust_pickle=True``) or ``"ecg_kmeans"`` (``path`` = a file written by
        :meth:`KMeansTokenizer.save`).
    trust_pickle : allow full unpickling of a pickled DALL-E module (it can execute code).
    device : where tokenization runs.
    kw : passed to the tokenizer (``view_scale``, ``batch_size``).
    """
    if kind not in KINDS:
        raise TokenizerError(f"tokenizer kind {kind!r} is unknown; choose one of {list(KINDS)}")
    if path is None or str(path) == "":
        raise TokenizerError(f"{kind} tokenizer: no weights path given; to provide them: {_HOW_TO_PROVIDE[kind]}")
    path = Path(path).expanduser()
    if not path.exists():
        raise _missing(path, kind)
    if kind == "ecg_kmeans":
        return KMeansTokenizer.load(path, device=device)
    state, how = _load_dalle_state(path, trust_pickle)
    enc = DalleEncoder.from_state_dict(state, str(path))
    return DalleTokenizer(enc, device=device, source=f"{path} ({how})", **kw)


# ----------------------------------------------------------------------------- token cache


def _render_version() -> str:
    return render.RENDER_VERSION


def token_cache_key(tokenizer: Any, size: int, layout: str, style: dict | None = None) -> str:
    """Hash of the tokenizer weights and every render setting that changes the images."""
    spec = {"tokenizer": tokenizer.fingerprint(), "size": int(size), "layout": layout,
            "style": style or {}, "render": _render_version()}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:20]


def token_cache_path(store_root: str | os.PathLike, tokenizer: Any, size: int, layout: str = "stack8",
                     style: dict | None = None) -> Path:
    """``<store_root>/tokens/<key>.npy`` for this tokenizer and render settings."""
    return Path(store_root) / "tokens" / f"{token_cache_key(tokenizer, size, layout, style)}.npy"


class _TokenBatches(torch.utils.data.Dataset):
    """Batch ``j`` of a store = (start row, uint8 (n, size, size) images): rendered in loader workers."""

    def __init__(self, store: Any, starts: Sequence[int], n: int, batch_size: int, size: int, layout: str,
                 style: dict, render_fn: Any):
        self.store, self.starts, self.n, self.batch_size = store, list(starts), n, batch_size
        self.size, self.layout, self.style, self.render_fn = size, layout, style, render_fn

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, j: int) -> tuple[int, torch.Tensor]:
        s = self.starts[j]
        idx = np.arange(s, min(s + self.batch_size, self.n))
        imgs = self.render_fn(self.store.signals(idx), size=self.size, layout=self.layout, **self.style)
        return s, torch.from_numpy(np.ascontiguousarray(np.asarray(imgs, np.uint8).reshape(len(idx), self.size,
                                                                                             self.size)))


def _rank_starts(n: int, batch_size: int, rank: int, world: int) -> list[int]:
    """Batch starts of rank ``rank``: a contiguous run of whole batches (the same batches as one process)."""
    starts = list(range(0, n, batch_size))
    per = -(-len(starts) // world)
    return starts[rank * per:(rank + 1) * per]


def _no_barrier() -> None:
    return None


def precompute_tokens(store: Any, tokenizer: Any, size: int = 224, layout: str = "stack8", *,
                      style: dict | None = None, batch_size: int = 64, cache_dir: str | os.PathLike | None = None,
                      progress: bool = False, render_fn: Any = None, rank: int = 0, world: int = 1,
                      barrier: Callable[[], None] = _no_barrier, num_workers: int = 0) -> np.ndarray:
    """Tokens of every ECG in a cohort store, rendered as in pretraining, cached on disk.

    Several processes share the work: each renders and tokenizes a contiguous run of whole batches of
    ``batch_size`` rows (the batches a single process would make) into one memory-mapped ``.npy`` that rank 0
    creates, then rank 0 renames it into place; the file equals a single-process run's byte for byte.
    ``barrier`` must synchronise all ranks without a short timeout (the lengthy part runs between two
    barriers: pass a gloo group with a long timeout, never an NCCL barrier with its 10-minute watchdog).
    Images are rendered as uint8 in ``num_workers`` DataLoader workers; on CUDA the tokenizer runs under bf16
    autocast when it supports it (``DalleTokenizer.amp``; part of the cache key).

    Parameters
    ----------
    store : a ``cohorts.CohortStore`` (``.root``, ``len()``, ``.signals(idx)`` float32 (n, 8, T) microvolts).
    tokenizer : any tokenizer of this module.
    size, layout, style : passed to ``render.render_ecg``; part of the cache key.
    cache_dir : folder for the cache (default ``<store.root>/tokens``).
    render_fn : ``render_fn(x (n, 8, T) microvolts, size=, layout=, **style) -> uint8 (n, size, size)``;
        default ``render.render_ecg`` (tests pass a stand-in; the cache key does not see it).
    rank, world, barrier : this process among ``world`` (all must call with the same arguments).

    Returns
    -------
    np.ndarray int16 (int32 when vocab > 32767) (len(store), h, w), row i = store row i; a read-only
    memmap of the cache file.
    """
    if render_fn is None:
        render_fn = render.render_ecg
    key = token_cache_key(tokenizer, size, layout, style)
    folder = Path(cache_dir) if cache_dir is not None else Path(store.root) / "tokens"
    path = folder / f"{key}.npy"
    n = len(store)
    h, w = tokenizer.grid_for(size)
    if path.exists():
        tokens = np.load(path, allow_pickle=False, mmap_mode="r")  # a large cache is paged in on demand
        if tokens.shape == (n, h, w):
            return tokens
    barrier()  # every rank has looked before rank 0 may start a new file
    dtype = np.int16 if tokenizer.vocab_size <= np.iinfo(np.int16).max + 1 else np.int32
    partial = folder / f"{key}.partial-{world}.npy"
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        np.lib.format.open_memmap(partial, mode="w+", dtype=dtype, shape=(n, h, w)).flush()
    barrier()
    out = np.lib.format.open_memmap(partial, mode="r+")
    batches = _TokenBatches(store, _rank_starts(n, batch_size, rank, world), n, batch_size, size, layout,
                            dict(style or {}), render_fn)
    dev = getattr(tokenizer, "device", torch.device("cpu"))
    loader = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=num_workers,
                                         pin_memory=dev.type == "cuda")
    for s, imgs in (tqdm(loader, desc=f"tokens (rank {rank})", unit="batch") if progress else loader):
        out[s:s + len(imgs)] = np.asarray(tokenizer.tokenize(imgs.to(dev, non_blocking=True)).cpu()).astype(dtype)
    out.flush()
    del out
    barrier()
    if rank == 0:
        os.replace(partial, path)
        meta = {"key": key, "tokenizer_kind": tokenizer.kind, "tokenizer_fingerprint": tokenizer.fingerprint(),
                "vocab_size": tokenizer.vocab_size, "size": size, "layout": layout, "style": style or {},
                "render": _render_version(), "shape": [n, h, w], "dtype": np.dtype(dtype).name}
        utils.atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2, default=str) + "\n")
    barrier()
    return np.load(path, allow_pickle=False, mmap_mode="r")
