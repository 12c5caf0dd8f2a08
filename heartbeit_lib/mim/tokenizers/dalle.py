"""The DALL-E dVAE encoder and tokenizer (the paper's), and the guarded reading of OpenAI's pickled weights."""

from __future__ import annotations

import math
import os
import pickle
import types
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from heartbeit_lib import utils
from heartbeit_lib.mim.tokenizers.common import (FORMAT_VERSION, LOGIT_LAPLACE_EPS, TokenizerError, UntrustedPickleError,
                                                 _as_output, _missing, _state_fingerprint, to_float_images)


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
