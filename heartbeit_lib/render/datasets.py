"""Datasets and transforms that render ECGs on the fly.

Dataset / export
----------------
:class:`RenderedECGDataset` renders from a :class:`heartbeit_lib.cohorts.CohortStore` on the fly
(batched: a ``DataLoader`` calls ``__getitems__`` with the whole batch, which reads the signals
in one call and renders them in one vectorised call; ``render_batch`` does the same directly).
:class:`RenderTransform` renders a batch of signal tensors on their device (a GPU training loop
feeds raw signals from :class:`ECGSignalDataset`). ``python -m heartbeit_lib.render export
<cohort_run> <out_dir> [--size --layout --split]`` writes PNG folders for users who want files.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from heartbeit_lib.render.geometry import LAYOUTS, RenderError, _image_size, _make_style
from heartbeit_lib.render.numpy_renderer import render_ecg
from heartbeit_lib.render.torch_renderer import render_ecg_torch


def _normalizer(normalize: Any, channels: int):
    """(mean, std) float32 arrays of shape (C, 1, 1) from None / dict / (mean, std) pair."""
    if normalize is None:
        return None
    if isinstance(normalize, Mapping):
        if "mean" not in normalize or "std" not in normalize:
            raise RenderError(f"normalize={normalize!r}: a dict needs keys 'mean' and 'std'")
        mean, std = normalize["mean"], normalize["std"]
    else:
        try:
            mean, std = normalize
        except (TypeError, ValueError) as e:
            raise RenderError(f"normalize={normalize!r}: expected None, {{'mean', 'std'}} or (mean, std)") from e
    mean = np.broadcast_to(np.asarray(mean, dtype=np.float32).reshape(-1), (channels,)) \
        if np.size(mean) in (1, channels) else None
    std = np.broadcast_to(np.asarray(std, dtype=np.float32).reshape(-1), (channels,)) \
        if np.size(std) in (1, channels) else None
    if mean is None or std is None:
        raise RenderError(f"normalize={normalize!r}: mean/std need 1 or {channels} values")
    if not (std > 0).all():
        raise RenderError(f"normalize={normalize!r}: std must be positive")
    return mean.reshape(-1, 1, 1).copy(), std.reshape(-1, 1, 1).copy()


def _check_channels(channels: int) -> int:
    if channels not in (1, 3):
        raise RenderError(f"channels={channels!r}: must be 1 or 3")
    return int(channels)


def _to_images(grey, channels: int, norm):
    """uint8 tensor (B, H, W) -> float32 tensor (B, C, H, W) in [0, 1], optionally normalised."""
    import torch

    img = grey.to(torch.float32).div_(255.0)[:, None].expand(-1, channels, -1, -1)
    if norm is not None:
        mean = torch.as_tensor(norm[0], device=img.device)
        std = torch.as_tensor(norm[1], device=img.device)
        img = (img - mean) / std
    return img.contiguous()


try:  # torch is a dependency; keep the module importable for numpy-only use all the same
    from torch.utils.data import Dataset as _TorchDataset
except ImportError:  # pragma: no cover
    _TorchDataset = object  # type: ignore[assignment,misc]


def _store_labels(store, indices: np.ndarray, where: str) -> np.ndarray:
    man = store.manifest
    if "label" not in man.columns:
        raise RenderError(f"{where}: the store's manifest has no 'label' column")
    n = len(man)
    if indices.size and (indices.min() < 0 or indices.max() >= n):
        raise RenderError(f"{where}: indices must be row numbers in 0..{n - 1} of the store's manifest")
    return man["label"].to_numpy()[indices].astype(np.int64)


def _read_signals(store, rows: np.ndarray) -> np.ndarray:
    """``store.signals`` for rows in any order (read sorted, which stores serve fastest)."""
    order = np.argsort(rows, kind="stable")
    got = np.asarray(store.signals(rows[order]), dtype=np.float32)
    if got.ndim != 3 or got.shape[0] != rows.size:
        raise RenderError(f"store.signals returned shape {got.shape} for {rows.size} rows; expected (n, 8, T)")
    out = np.empty_like(got)
    out[order] = got
    return out


class RenderedECGDataset(_TorchDataset):
    """Images rendered on the fly from a cohort store: no PNGs needed.

    Parameters
    ----------
    store : :class:`heartbeit_lib.cohorts.CohortStore` (or any object with ``.signals(idx) ->
        float32 (n, 8, T) microvolts`` and a ``.manifest`` DataFrame with a ``label`` column).
    indices : int row numbers of the store (e.g. ``store.indices("train")``).
    size, layout : as :func:`render_ecg`.
    channels : 3 (default; equal channels for ImageNet-shaped backbones) or 1.
    normalize : None -> images in [0, 1] (1 = white); ``{"mean": [...], "std": [...]}`` (as saved in a
        pretraining checkpoint) or ``(mean, std)`` -> ``(image - mean) / std`` per channel.
    **style : :class:`RenderStyle` fields.

    Items are ``(image float32 tensor (C, H, W), label int64 tensor ())``. A ``DataLoader`` calls
    :meth:`__getitems__` with the whole batch: one ``store.signals`` read and one vectorised render
    per batch (a fraction of a millisecond per ECG on one core at 224 px), so rendering keeps up
    with training in the loader's workers.
    """

    def __init__(self, store, indices, size: int | Sequence[int] = 224, layout: str = "stack8",
                 channels: int = 3, normalize: Any = None, **style) -> None:
        self.store = store
        self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        self.size = _image_size(size)
        self.layout = layout
        self.channels = _check_channels(channels)
        self.normalize = normalize
        self._norm = _normalizer(normalize, self.channels)
        self.style = dict(style)
        _make_style(self.style)
        if layout not in LAYOUTS:
            raise RenderError(f"layout={layout!r}: must be one of {list(LAYOUTS)}")
        self.labels = _store_labels(store, self.indices, "RenderedECGDataset")

    def __len__(self) -> int:
        return int(self.indices.size)

    def render_batch(self, positions: Sequence[int]):
        """Images (B, C, H, W) float32 and labels (B,) int64 for dataset positions (not store rows)."""
        import torch

        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        if pos.size and (pos.min() < -len(self) or pos.max() >= len(self)):
            raise IndexError(f"RenderedECGDataset: positions out of range 0..{len(self) - 1}")
        if pos.size == 0:
            h, w = self.size
            return torch.zeros((0, self.channels, h, w)), torch.zeros(0, dtype=torch.int64)
        sig = _read_signals(self.store, self.indices[pos])
        grey = torch.from_numpy(render_ecg(sig, self.size, self.layout, **self.style))
        return _to_images(grey, self.channels, self._norm), torch.from_numpy(self.labels[pos])

    def __getitem__(self, i: int):
        img, lab = self.render_batch([int(i)])
        return img[0], lab[0]

    def __getitems__(self, positions: Sequence[int]) -> list:
        img, lab = self.render_batch(positions)
        return list(zip(img.unbind(0), lab.unbind(0)))


class ECGSignalDataset(_TorchDataset):
    """Raw signals from a cohort store, for rendering on the GPU with :class:`RenderTransform`.

    Items are ``(signal float32 tensor (8, T) microvolts, label int64 tensor ())``; batched reads
    through ``__getitems__`` as in :class:`RenderedECGDataset`.
    """

    def __init__(self, store, indices) -> None:
        self.store = store
        self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        self.labels = _store_labels(store, self.indices, "ECGSignalDataset")

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitems__(self, positions: Sequence[int]) -> list:
        import torch

        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        sig = _read_signals(self.store, self.indices[pos])
        return list(zip(torch.from_numpy(sig).unbind(0), torch.from_numpy(self.labels[pos]).unbind(0)))

    def __getitem__(self, i: int):
        return self.__getitems__([int(i)])[0]


class RenderTransform:
    """Signals (B, 8, T) microvolts on any device -> images (B, C, H, W) float32 on that device.

    Same parameters as :class:`RenderedECGDataset`; uses :func:`render_ecg_torch`, so a training
    loop on a GPU renders its batches there (``images = transform(signals.to("cuda"))``).
    """

    def __init__(self, size: int | Sequence[int] = 224, layout: str = "stack8", channels: int = 3,
                 normalize: Any = None, **style) -> None:
        self.size = _image_size(size)
        self.layout = layout
        self.channels = _check_channels(channels)
        self._norm = _normalizer(normalize, self.channels)
        self.style = dict(style)
        _make_style(self.style)

    def __call__(self, x):
        grey = render_ecg_torch(x if x.dim() == 3 else x[None], self.size, self.layout, **self.style)
        return _to_images(grey, self.channels, self._norm)
