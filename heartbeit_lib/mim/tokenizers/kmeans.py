"""The ECG-native k-means tokenizer: fit, save/load, codebook usage and reconstruction error."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import MiniBatchKMeans

from heartbeit_lib import utils
from heartbeit_lib.mim.tokenizers.common import (FORMAT_VERSION, TokenizerError, _as_output, _missing, _state_fingerprint,
                                                 to_float_images)


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
