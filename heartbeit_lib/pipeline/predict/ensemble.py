"""07, step 1: the trained model(s) of ``finetune_runs``, what they were trained with, and how each member reads and
scores its input (03's own scoring code)."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from heartbeit_lib import render, safety
from heartbeit_lib.classify import engine
from heartbeit_lib.classify.checkpoint import FinetuneRunError, MODEL_RECORD, WEIGHTS, load_finetune_run, read_metrics
from heartbeit_lib.classify.signal_data import crop_length, prepare_signals
from heartbeit_lib.cohorts import STORE_FS
from heartbeit_lib.pipeline import runs

from heartbeit_lib.pipeline.predict.config import MismatchError, PICTURE_SIZE, PredictConfig


@dataclasses.dataclass(frozen=True)
class Rendering:
    """What the ensemble was trained on: for its image models the image side (px), layout and amplitude range (mV,
    None = layout default), all None when every member is a signal model; the preprocessing keyword arguments of the
    cohort store (``store.json``), its task and its signal rate ``fs`` (Hz)."""

    image_size: int | None
    layout: str | None
    ylim_mv: tuple[float, float] | None
    preprocess_kw: dict | None
    task: str
    fs: float = float(STORE_FS)
    classes: tuple[str, ...] = ()  # a multi-label ensemble's classes (labels CSV columns of raw files), () binary


IMAGE_FIELDS = ("image_size", "layout", "ylim_mv")


@dataclasses.dataclass
class Member:
    """One trained run: its folder, model (eval mode), normalisation and recorded files; ``family`` image (reads
    rendered images) or signal (reads the store's signals resampled to ``signal_rate`` Hz)."""

    run_dir: Path
    name: str
    model: nn.Module
    normalize: tuple
    config: dict
    metrics: dict
    rendering: Rendering
    family: str = "image"
    signal_rate: float | None = None
    classes: tuple[str, ...] = ()  # a multi-label model's classes (one sigmoid each, model.json order); () binary
    crop_seconds: float | None = None  # signal models trained on crops: scored on windows of this length (as 03)
    window_aggregate: str = "mean"  # how the windows' outputs are combined (03's ``window_aggregate``)
    grey_model: nn.Module | None = None  # ``model`` reading grey images directly (:func:`grey_input_model`)

    @property
    def multilabel(self) -> bool:
        return bool(self.classes)


def _resolve(path: str) -> Path:
    """A path as given, else relative to the repository root (run folders record paths relative to it)."""
    p = Path(path)
    return p if p.exists() or p.is_absolute() else runs.REPO_ROOT / p


def check_finetune_run(run_dir: Path) -> None:
    """A finished 03_finetune run folder, or :class:`FinetuneRunError` naming the missing file (a flat list of
    checks): ``config.yaml``, ``model_best.pt``, ``run.json`` with a finish time, ``metrics.json`` with
    ``best_epoch``, ``predictions.parquet`` (the validation scores the threshold is chosen on)."""
    if not run_dir.is_dir():
        raise FinetuneRunError(f"parameter 'finetune_runs': {run_dir} is not a folder")
    for f in ("config.yaml", WEIGHTS, "run.json", "metrics.json", "predictions.parquet"):
        if not (run_dir / f).is_file():
            raise FinetuneRunError(f"{run_dir / f}: missing; {run_dir} is not a finished 03_finetune run")
    info = _run_file(safety.read_json_mapping, run_dir / "run.json")
    if info.get("notebook", "03_finetune") != "03_finetune":
        raise FinetuneRunError(f"{run_dir / 'run.json'}: written by {info.get('notebook')!r}, not 03_finetune")
    if not info.get("finished"):
        raise FinetuneRunError(f"{run_dir / 'run.json'}: no finish time; the 03_finetune run did not finish")
    if "best_epoch" not in read_metrics(run_dir):
        raise FinetuneRunError(f"{run_dir / 'metrics.json'}: no best_epoch; not a finished 03_finetune run")


def _run_file(read: Any, path: Path) -> dict:
    """``read(path)`` (a :mod:`heartbeit_lib.safety` reader) with its error as :class:`FinetuneRunError`."""
    try:
        return read(path)
    except safety.RunFileError as e:
        raise FinetuneRunError(str(e)) from None


def _recorded_rendering(run_dir: Path, info: dict) -> Rendering:
    """The rendering of ``model.json`` (checked against ``config.yaml``; a signal model has none) and the store's
    preprocessing and rate."""
    cfg = info["config"]
    signal = info.get("family") == "signal"
    for key, rec in (("image_size", info["image_size"]), ("layout", info["layout"])):
        if not signal and cfg.get(key) not in (None, rec) and (run_dir / MODEL_RECORD).is_file():
            raise MismatchError(f"{run_dir}: {MODEL_RECORD} records {key} {rec!r} but config.yaml {cfg.get(key)!r}")
    ylim = None if signal else render.saved_ylim_mv(info.get("ylim_mv", cfg.get("ylim_mv")))
    cohort = cfg.get("cohort_run")
    if not cohort or not (_resolve(cohort) / "store.json").is_file():
        raise FinetuneRunError(f"{run_dir / 'config.yaml'}: its cohort store {cohort!r} (cohort_run) is not found; "
                               "its store.json records the preprocessing the model was trained with")
    store_info = _run_file(safety.read_json_mapping, _resolve(cohort) / "store.json")
    return Rendering(None if signal else int(info["image_size"]), None if signal else str(info["layout"]),
                     None if ylim is None else tuple(float(v) for v in ylim),
                     store_info.get("preprocess_kw"), str(store_info.get("task", cfg.get("task", ""))),
                     float(store_info.get("fs", STORE_FS)))


def _recorded_outputs(run_dir: Path, info: dict) -> dict:
    """A member's classes (``model.json`` ``classes`` when ``multilabel``) and its test-time windows
    (``crop_seconds``, ``window_aggregate``: signal models trained on crops were scored by 03 on windows)."""
    out: dict[str, Any] = {}
    if info.get("multilabel"):
        classes = info.get("classes")
        if (not isinstance(classes, list) or not classes or len(classes) != info["num_classes"]
                or not all(isinstance(c, str) and 0 < len(c) <= 64 for c in classes) or len(set(classes)) < len(classes)):
            raise FinetuneRunError(f"{run_dir / MODEL_RECORD}: multilabel with classes {str(classes)[:80]!r}, not "
                                   f"{info['num_classes']} distinct class names (num_classes)")
        out["classes"] = tuple(classes)
    crop = info.get("crop_seconds")
    if crop is not None and info.get("family") == "signal":
        agg = info.get("window_aggregate", "mean")
        if not isinstance(crop, (int, float)) or isinstance(crop, bool) or not 0 < crop <= 3600 or agg not in ("mean", "max"):
            raise FinetuneRunError(f"{run_dir / MODEL_RECORD}: crop_seconds {crop!r} / window_aggregate {agg!r} are "
                                   "not a positive number of seconds and mean or max")
        out.update(crop_seconds=float(crop), window_aggregate=agg)
    return out


def _same(what: str, a: Any, b: Any, where_a: str, where_b: str) -> None:
    if json.dumps(a, sort_keys=True, default=list) != json.dumps(b, sort_keys=True, default=list):
        raise MismatchError(f"{what}: {a!r} ({where_a}) != {b!r} ({where_b})")


def load_ensemble(cfg: PredictConfig, device: str | torch.device = "cpu") -> tuple[list[Member], Rendering]:
    """The members of ``cfg.finetune_runs`` and their common :class:`Rendering`.

    Raises
    ------
    FinetuneRunError : a folder that is not a finished 03_finetune run, or weights that do not fit.
    MismatchError : members trained differently, or ``image_size``/``layout``/``ylim_mv`` set to another value.
    """
    members: list[Member] = []
    for entry in [e for e in cfg.finetune_runs if e.strip()]:
        run_dir = _resolve(entry)
        check_finetune_run(run_dir)
        model, info = load_finetune_run(run_dir, device)
        r = _recorded_rendering(run_dir, info)
        met = read_metrics(run_dir)
        family = str(info.get("family", "image"))
        rate = float(info.get("signal_rate") or 100.0) if family == "signal" else None
        members.append(Member(run_dir, run_dir.name, model, info["normalize"], info["config"], met, r, family, rate,
                              **_recorded_outputs(run_dir, info),
                              grey_model=grey_input_model(model, info["normalize"]) if family == "image" else None))
    first = members[0]
    for m in members[1:]:  # one store preprocessing and task for all; one rendering for the image members
        for key in ("preprocess_kw", "task", "fs"):
            _same(f"ensemble {key}", getattr(first.rendering, key), getattr(m.rendering, key),
                  str(first.run_dir), str(m.run_dir))
        if m.classes != first.classes:  # averaged class by class: the same classes in the same order
            raise MismatchError(f"ensemble classes: {list(first.classes) or 'binary'} ({first.run_dir / MODEL_RECORD})"
                                f" != {list(m.classes) or 'binary'} ({m.run_dir / MODEL_RECORD}); an ensemble averages "
                                "runs of the same classes only")
    images = [m for m in members if m.family == "image"]
    for m in images[1:]:
        for key in IMAGE_FIELDS:
            _same(f"ensemble {key}", getattr(images[0].rendering, key), getattr(m.rendering, key),
                  str(images[0].run_dir), str(m.run_dir))
    rec = dataclasses.replace(images[0].rendering if images else first.rendering, classes=first.classes)
    for key in IMAGE_FIELDS:
        forced = getattr(cfg, key)
        if forced is not None and not images:
            raise MismatchError(f"parameter {key!r}: {forced!r}, but every model of finetune_runs is a signal model "
                                f"(trained on signals, no {key}; {first.run_dir / MODEL_RECORD})")
        if forced is not None:
            _same(f"parameter {key!r}", forced, getattr(rec, key), "parameter",
                  f"trained with, {images[0].run_dir / MODEL_RECORD}")
    return members, rec


def render_images(signals: np.ndarray, rendering: Rendering) -> np.ndarray:
    """(n, leads, T) microvolts -> (n, H, W) uint8, exactly as the training dataset rendered them (signal-only
    ensembles, which read no image: the pictures' default, :data:`PICTURE_SIZE` px ``stack8``)."""
    style = {} if rendering.ylim_mv is None else {"ylim_mv": rendering.ylim_mv}
    return render.render_ecg(signals, rendering.image_size or PICTURE_SIZE, rendering.layout or "stack8", **style)


def member_inputs(member: Member, signals: np.ndarray, grey: np.ndarray | None, rendering: Rendering) -> torch.Tensor:
    """What ``member`` reads: (n, 3, H, W) images in [0, 1] from ``grey`` (image models), or (n, leads, T')
    millivolts at its ``signal_rate`` from the store ``signals`` at ``rendering.fs`` Hz (signal models, exactly
    ``classify.signal_data.prepare_signals`` as in training)."""
    if member.family == "signal":
        return torch.from_numpy(prepare_signals(signals, rendering.fs, member.signal_rate))
    return torch.from_numpy(grey).float().div(255.0)[:, None].expand(-1, 3, -1, -1)


def member_score_inputs(member: Member, signals: np.ndarray, grey: np.ndarray | None, rendering: Rendering
                        ) -> torch.Tensor:
    """What :func:`member_probabilities` scores: the uint8 grey images (n, 1, H, W) for a member with a
    ``grey_model`` (:func:`grey_input_model`), else :func:`member_inputs`."""
    if member.grey_model is not None:
        return torch.from_numpy(grey)[:, None]
    return member_inputs(member, signals, grey, rendering)


def member_normalization(member: Member, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The member's input normalisation as 03 applied it on the device (``(x - mean) / std``): per channel
    (1, 3, 1, 1) of an image model's [0, 1] images, per lead (1, leads|1, 1) of a signal model's millivolts (its
    recorded ``standardize`` statistics, identity when none were recorded)."""
    mean, std = member.normalize or ((), ())
    if not len(mean):
        mean, std = (0.0,), (1.0,)
    shape = (1, -1, 1) if member.family == "signal" else (1, -1, 1, 1)
    return (torch.tensor(mean, dtype=torch.float32, device=device).view(shape),
            torch.tensor(std, dtype=torch.float32, device=device).view(shape))


def member_windows(member: Member, n_samples: int) -> engine.Windows | None:
    """03's test-time windows for a signal member trained on ``crop_seconds`` crops of inputs ``n_samples`` long at
    its rate (``crop_length``; outputs combined by its ``window_aggregate``), None for whole-record models."""
    if member.family != "signal" or not member.crop_seconds:
        return None
    return engine.Windows(crop_length(member.crop_seconds, float(member.signal_rate), n_samples),
                          member.window_aggregate)


@torch.no_grad()
def grey_input_model(model: nn.Module, normalize: tuple) -> nn.Module | None:
    """``model`` reading a grey image ``g`` in [0, 1], (B, 1, H, W), instead of its normalised 3-channel copy
    ``(g - mean_c) / std_c``: the patch embedding's convolution with the normalisation folded into it, one input
    channel (weights ``sum_c W_c / std_c``, bias ``b - sum_c mean_c / std_c * sum(W_c)``; exact algebra, float32
    rounding aside). Its input is a third of the pixels and needs no normalising pass: the micro ViT scores
    1.70-1.74x as many ECGs per second at 224 px, ViT-B/16 1.01-1.04x (``benchmarks/bench_predict.py``, side by side).

    A shallow copy sharing every other module and parameter with ``model`` (no extra memory but the new
    convolution). None where the algebra does not hold: no timm ``patch_embed.proj`` convolution with 3 input
    channels and no padding (resnet152 and efficientnet_b4 pad their stem: padding zeros are not normalised).
    """
    pe = getattr(model, "patch_embed", None)
    conv = getattr(pe, "proj", None)
    if not (isinstance(conv, nn.Conv2d) and conv.in_channels == 3 and conv.groups == 1
            and all(p == 0 for p in conv.padding) and conv.padding_mode == "zeros"):
        return None
    mean, std = normalize or ((0.0,), (1.0,))
    w64 = conv.weight.detach().double()
    scale = 1.0 / torch.as_tensor(std, dtype=torch.float64, device=w64.device).expand(3)
    shift = torch.as_tensor(mean, dtype=torch.float64, device=w64.device).expand(3) * scale
    grey = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, 0, conv.dilation, bias=True,
                     device=conv.weight.device, dtype=conv.weight.dtype)
    grey.weight.copy_((w64 * scale.view(1, 3, 1, 1)).sum(1, keepdim=True))
    bias = conv.bias.detach().double() if conv.bias is not None else w64.new_zeros(conv.out_channels)
    grey.bias.copy_(bias - (w64.sum((2, 3)) * shift.view(1, 3)).sum(1))
    new_pe = copy.copy(pe)
    new_pe._modules = dict(pe._modules)  # the copy's own children: replacing proj leaves ``model`` as it was
    new_pe.proj = grey
    out = copy.copy(model)
    out._modules = dict(model._modules)
    out.patch_embed = new_pe
    return out.eval()


@torch.no_grad()
def member_probabilities(member: Member, x: torch.Tensor, batch_size: int) -> np.ndarray:
    """What 03 scored for ``member``'s inputs ``x`` (:func:`member_inputs`), with 03's own code
    (``classify.engine.predict``: its normalisation, test-time windows, softmax or sigmoid): (n,) float64 probability
    of class 1 (softmax over the two logits) of a binary model, (n, classes) float64 sigmoid per class of a
    multi-label one. ``x`` may also be an image member's uint8 grey images (n, 1, H, W) when it has a
    ``grey_model`` (:func:`member_score_inputs`; 03's probabilities to float32 rounding, tested to 1e-5)."""
    device = next(member.model.parameters()).device
    if member.grey_model is not None and x.dtype == torch.uint8:  # member_score_inputs' grey images
        model, mean, std = member.grey_model, torch.zeros(1, 1, 1, 1, device=device), torch.ones(1, 1, 1, 1, device=device)
    else:
        model, (mean, std) = member.model, member_normalization(member, device)
    batches = ((x[i:i + batch_size], None) for i in range(0, len(x), batch_size))
    out = engine.predict(model, batches, mean, std, device, multilabel=member.multilabel,
                         windows=member_windows(member, x.shape[-1]))
    return out.reshape(0, len(member.classes)) if member.multilabel and not len(out) else out
