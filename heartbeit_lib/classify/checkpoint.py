"""A fine-tuned model's weights and how to rebuild it from its run folder (here, once).

A finished ``03_finetune`` run folder holds ``model_best.pt`` (the chosen epoch's plain state dict, read with
``torch.load(..., weights_only=True)``) and ``model.json``, the architecture record written next to it:
``{model, family, size, image_size, patch_size, num_classes, layout, normalize_mean, normalize_std}`` (a signal
model: ``signal_rate`` and ``in_chans``, image fields None).  Runs written
before ``model.json`` existed are rebuilt from ``config.yaml`` (``model``, ``model_size``, ``image_size``,
``layout``; 16-px patches, the only patch size fine-tuning ever built) and ``metrics.json``
(``normalize_mean/std``).  Nothing is inferred from tensor shapes.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from heartbeit_lib import render, utils
from heartbeit_lib.config import read_run_config
from heartbeit_lib.models import registry as models
from heartbeit_lib.models import stmem

MODEL_RECORD = "model.json"
WEIGHTS = "model_best.pt"


class FinetuneRunError(ValueError):
    """A 03_finetune run folder cannot be read or rebuilt (names the folder/file and the reason)."""


def save_best_weights(model: nn.Module, run_dir: str | os.PathLike) -> Path:
    """``model_best.pt``: the model's state dict on the CPU, written atomically."""
    return utils.atomic_torch_save({k: v.detach().cpu() for k, v in model.state_dict().items()},
                                   Path(run_dir) / WEIGHTS)


def load_best_weights(run_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict of the chosen epoch (``model_best.pt``), read with ``weights_only=True``.

    Raises :class:`FinetuneRunError` naming the file when it is missing, corrupt, not a state dict or
    holds pickled objects (never unpickled)."""
    try:
        return models.load_weights_file(Path(run_dir) / WEIGHTS)
    except models.WeightsError as e:
        raise FinetuneRunError(str(e)) from None


def write_model_record(run_dir: str | os.PathLike, model: nn.Module, name: str, size: str | None,
                       image_size: int | None, layout: str | None, normalization: tuple, num_classes: int = 2,
                       signal_rate: float | None = None, ylim_mv: Sequence[float] | None = None,
                       classes: Sequence[str] | None = None, extra: dict | None = None) -> Path:
    """``model.json``: what :func:`load_finetune_run` needs to rebuild ``model`` (sizes as built, not inferred)
    and to draw its inputs (``layout``, ``ylim_mv`` (lo, hi) mV; None: ``render.DEFAULT_YLIM_MV``).

    ``family`` is ``"image"`` or ``"signal"`` (:func:`registry.model_family`); a signal model records
    ``signal_rate`` (Hz) and ``in_chans`` (leads) instead of ``image_size``/``patch_size``/``layout``/``ylim_mv``.
    A multi-label model records ``classes`` (its outputs, in order) and ``multilabel: true`` (sigmoid per class);
    ``extra`` adds input settings (e.g. the signal models' ``crop_seconds``, ``window_aggregate``).
    """
    family = models.model_family(name)
    if family == "signal":
        record = {"model": name, "family": family, "size": size or _signal_size(name, model),
                  "image_size": None, "patch_size": None, "num_classes": int(num_classes), "layout": None,
                  "signal_rate": float(signal_rate or 100.0), "in_chans": _in_chans(model)}
    else:
        patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
        record = {"model": name, "family": family, "size": size or "base", "image_size": int(image_size),
                  "patch_size": int(patch[0] if isinstance(patch, (tuple, list)) else patch) if patch else None,
                  "num_classes": int(num_classes), "layout": layout,
                  "ylim_mv": [float(v) for v in (render.DEFAULT_YLIM_MV if ylim_mv is None else ylim_mv)]}
    record.update(normalize_mean=[float(v) for v in normalization[0]],
                  normalize_std=[float(v) for v in normalization[1]])
    if classes:
        record.update(classes=[str(c) for c in classes], multilabel=True)
    record.update(extra or {})
    return utils.atomic_write_text(Path(run_dir) / MODEL_RECORD, json.dumps(record, indent=1) + "\n")


def _in_chans(model: nn.Module) -> int:
    """Input leads of a signal model: the ST-MEM encoder's ``num_leads``, else the first conv's in_channels."""
    enc = getattr(model, "encoder", None)
    if enc is not None and hasattr(enc, "num_leads"):
        return int(enc.num_leads)
    return int(next(m for m in model.modules() if isinstance(m, nn.Conv1d)).in_channels)


def _signal_size(name: str, model: nn.Module) -> str:
    """The ST-MEM size whose width and depth ``model`` has (``base`` for the CNNs, which have one)."""
    enc = getattr(model, "encoder", None)
    if enc is None:
        return "base"
    width, depth = enc.norm.normalized_shape[0], len(enc.blocks)
    return next(s for s, d in stmem.STMEM_SIZES.items() if d["embed_dim"] == width and d["depth"] == depth)


def _read_record(run_dir: Path) -> dict[str, Any]:
    """``model.json``, or the same fields from ``config.yaml`` + ``metrics.json`` of an older run."""
    cfg = read_run_config(run_dir)
    if (run_dir / MODEL_RECORD).is_file():
        return {**json.loads((run_dir / MODEL_RECORD).read_text()), "config": cfg}
    met_p = run_dir / "metrics.json"
    met = json.loads(met_p.read_text()) if met_p.is_file() else {}
    name = str(cfg.get("model", ""))
    norm = (met.get("normalize_mean"), met.get("normalize_std"))
    if not (norm[0] and norm[1]):
        try:
            norm = models.normalization_for(name, weights=cfg.get("weights") or cfg.get("pretrain_run") or None)
        except models.UnknownModelError:
            norm = (None, None)
    return {"model": name, "size": str(cfg.get("model_size") or "base"), "image_size": int(cfg.get("image_size") or 224),
            "patch_size": 16, "num_classes": 2, "layout": str(cfg.get("layout") or "stack8"),
            "normalize_mean": norm[0], "normalize_std": norm[1], "config": cfg}


def load_finetune_run(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a 03_finetune run's model at its chosen epoch (``model_best.pt``).

    The architecture is the one the run recorded (``model.json``, else ``config.yaml``), built without
    pretrained weights, then the saved state dict is loaded strictly.

    Returns
    -------
    (model in eval mode on ``device``,
     info: {model, size, image_size, patch_size, num_classes, layout,
            normalize: ((mean per channel), (std per channel)) applied to [0, 1] images, config: config.yaml dict})

    Raises
    ------
    FinetuneRunError : missing files, unknown model, or weights that do not fit.
    """
    run_dir = Path(run_dir)
    for f in ("config.yaml", WEIGHTS):
        if not (run_dir / f).is_file():
            raise FinetuneRunError(f"{run_dir}: no {f}; not a finished 03_finetune run folder")
    info = _read_record(run_dir)
    name, size, img, patch = info["model"], info["size"], info["image_size"], info["patch_size"] or 16
    try:
        family = models.model_family(name)
        spec = models.model_spec(name) if family == "image" else None
    except models.UnknownModelError as e:
        raise FinetuneRunError(f"{run_dir / 'config.yaml'}: {e}") from None
    if family == "signal":  # stmem's encoder comes from model_best.pt: rebuild as stmem_scratch
        model = models.create_model("stmem_scratch" if name == "stmem" else name, num_classes=info["num_classes"],
                                    size=size, in_chans=int(info.get("in_chans") or 8),
                                    signal_rate=float(info.get("signal_rate") or 100.0))
    elif spec.source == "pretrain_checkpoint":
        model = models.create_backbone(size, img_size=img, patch_size=patch)
        model.reset_classifier(info["num_classes"])
    else:
        arch = name if spec.source is None else f"{name}_scratch"
        model = models.create_model(arch, num_classes=info["num_classes"], size=size, img_size=img, patch_size=patch)
    weights = load_best_weights(run_dir)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        missing, unexpected = sorted(set(model.state_dict()) - set(weights)), sorted(set(weights) - set(model.state_dict()))
        raise FinetuneRunError(f"{run_dir / WEIGHTS} does not fit {name} (size {size}, {img} px): missing keys "
                               f"{missing[:5]}, unexpected keys {unexpected[:5]}; {str(e).splitlines()[0]}") from e
    info["normalize"] = (tuple(info.pop("normalize_mean") or ()), tuple(info.pop("normalize_std") or ()))
    info.setdefault("family", family)
    return model.to(device).eval(), info
