"""What every tokenizer shares: errors, kinds, image handling and the weights fingerprint."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch


KINDS = ("dalle", "ecg_kmeans")
LOGIT_LAPLACE_EPS = 0.1  # DALL-E's map_pixels constant
FORMAT_VERSION = 1


class TokenizerError(ValueError):
    """A tokenizer file, kind or input is invalid (the message names it and the reason)."""


class TokenizerFileNotFoundError(TokenizerError, FileNotFoundError):
    """The tokenizer weights file does not exist."""


class UntrustedPickleError(TokenizerError):
    """A weights file needs full unpickling (arbitrary code) and ``trust_pickle`` was not given."""


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
