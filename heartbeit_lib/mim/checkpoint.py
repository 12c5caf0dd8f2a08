"""Pretraining checkpoints: save, resume, load (``torch.load(weights_only=True)`` throughout).

Checkpoint (``checkpoints/last.pt``), the contract with fine-tuning (``models.create_model``):
``backbone`` (state dict of ``models.create_backbone(size, img_size, patch_size)``),
``backbone_config`` {size, img_size, patch_size}, ``normalize`` {mean, std} (applied to [0, 1]
images; the rendered pretraining images' own mean/std since issue 18), ``render`` {layout, ylim_mv}
(checkpoints before issue 18 lack it: drawn at +-2 mV), plus ``mim`` (mask token, norm, head), ``optimizer``,
``scheduler``, ``epoch`` (completed),
``step``, ``rng`` (per rank), ``config``, ``history``, ``tokenizer`` {kind, fingerprint, vocab_size}.
Every value is a tensor, number, string, list or dict, so ``weights_only`` loading reads it; the RNG states of
every rank are stored (on CUDA: of the rank's own device only, so a process that sees fewer GPUs, one per Slurm
task, can resume) so that a resumed run repeats the uninterrupted run's losses.  Resumed with another number of
processes, every rank is reseeded from (seed, rank, epoch) instead (:func:`reseed`).
"""
from __future__ import annotations

import os
import random
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.distributed as dist

from heartbeit_lib import render, utils
from heartbeit_lib.models import registry as models
from heartbeit_lib.mim.data import PretrainError
from heartbeit_lib.mim.model import NORMALIZE, MIMModel

# the config fields that define the training trajectory: a resumed run must agree on them
TRAJECTORY_FIELDS = ("model_size", "image_size", "epochs", "batch_size", "lr", "min_lr", "warmup_epochs",
                     "weight_decay", "layer_decay", "clip_grad", "drop_path", "num_masked", "min_block", "seed",
                     "layout", "ylim_mv")
# what an epoch-XXXX.pt keeps (no optimiser or RNG state: not resumable, small)
_EPOCH_KEYS = ("backbone", "backbone_config", "normalize", "render", "mim", "epoch", "step", "config", "tokenizer")


class ResumeError(PretrainError):
    """A checkpoint cannot be resumed with the current configuration."""


class CheckpointError(PretrainError):
    """A checkpoint file is missing, corrupt, holds pickled objects or is not a 02_pretrain checkpoint."""


def rng_state() -> dict:
    """torch / numpy / python (and CUDA) RNG states of this process, as tensors, numbers and lists."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    st = {"torch": torch.get_rng_state(),
          "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)), "numpy_pos": int(np_state[2]),
          "numpy_has_gauss": int(np_state[3]), "numpy_gauss": float(np_state[4]),
          "python_version": int(py_state[0]), "python_state": list(py_state[1]),
          "python_gauss": py_state[2]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state()  # this process's device only
    return st


def set_rng_state(st: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(st["torch"])
    np.random.set_state(("MT19937", st["numpy_keys"].numpy().astype(np.uint32), st["numpy_pos"],
                         st["numpy_has_gauss"], st["numpy_gauss"]))
    random.setstate((st["python_version"], tuple(st["python_state"]), st["python_gauss"]))
    cuda = st.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if isinstance(cuda, (list, tuple)):  # older checkpoints: every visible device's state, take ours if seen
            dev = torch.cuda.current_device()
            cuda = cuda[dev] if dev < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda)


def reseed(seed: int, rank: int, epoch: int) -> None:
    """Seed torch (CPU and CUDA), numpy and python from (seed, rank, epoch): distinct per rank."""
    s = (int(seed) * 1_000_003 + int(rank) * 7_919 + int(epoch)) % 2 ** 32
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


def gather_rng(world: int) -> list[dict]:
    """:func:`rng_state` of every rank (rank order)."""
    st = rng_state()
    if world == 1:
        return [st]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, st)
    return out


def checkpoint_state(model: MIMModel, cfg: Any, opt: torch.optim.Optimizer, sched: Any, epoch: int,
                     step: int, rng: list[dict], history: list[dict], tokenizer: dict,
                     normalize: dict | None = None) -> dict:
    """The checkpoint dict of ``cfg`` (a ``PretrainConfig``) after ``epoch`` epochs (only tensors, numbers, strings, lists, dicts: ``weights_only`` loadable).

    ``normalize`` {mean, std}: the input normalisation the model trained with (None: :data:`NORMALIZE`);
    ``render`` {layout, ylim_mv}: how the images were drawn, which fine-tuning must repeat.
    """
    norm = normalize or NORMALIZE
    full = model.state_dict()
    return {
        "backbone": {k.removeprefix("backbone."): v.detach().cpu() for k, v in full.items()
                     if k.startswith("backbone.")},
        "backbone_config": {"size": cfg.model_size, "img_size": cfg.image_size, "patch_size": 16},
        "normalize": {"mean": [float(v) for v in norm["mean"]], "std": [float(v) for v in norm["std"]]},
        "render": {"layout": cfg.layout, "ylim_mv": [float(v) for v in render.DEFAULT_YLIM_MV]
                   if getattr(cfg, "ylim_mv", None) is None else [float(v) for v in cfg.ylim_mv]},
        "mim": {k: v.detach().cpu() for k, v in full.items() if not k.startswith("backbone.")},
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "epoch": int(epoch),
        "step": int(step),
        "rng": rng,
        "config": cfg.to_dict(),
        "history": [dict(h) for h in history],
        "tokenizer": dict(tokenizer),
        "format_version": 1,
    }


def load_mim_model(checkpoint: str | os.PathLike, device: str | torch.device = "cpu") -> MIMModel:
    """The :class:`MIMModel` (backbone + MIM head) of a pretraining checkpoint, in eval mode.

    Raises :class:`CheckpointError` naming the file when it is missing, corrupt, holds pickled objects
    (never unpickled) or lacks the checkpoint's entries."""
    ck = load_checkpoint_file(checkpoint, ("backbone_config", "backbone", "mim"))
    bc = ck["backbone_config"]
    vocab = ck["mim"]["head.weight"].shape[0]
    model = MIMModel(models.create_backbone(bc["size"], img_size=int(bc["img_size"]),
                                            patch_size=int(bc.get("patch_size", 16))), vocab)
    model.load_state_dict({**{f"backbone.{k}": v for k, v in ck["backbone"].items()}, **ck["mim"]})
    return model.to(device).eval()



def load_checkpoint_file(path: str | os.PathLike, keys: tuple[str, ...]) -> dict[str, Any]:
    """A checkpoint dict read with ``weights_only=True`` holding ``keys``, else :class:`CheckpointError`."""
    try:
        ck = models.load_weights_file(path)
    except models.WeightsError as e:
        raise CheckpointError(str(e)) from None
    missing = [k for k in keys if k not in ck]
    if missing:
        raise CheckpointError(f"{path}: not a 02_pretrain checkpoint (missing {missing})")
    return ck


def save_checkpoint(state: dict, ckpt_dir: Path, keep_epoch: bool, epoch_keys: tuple[str, ...] = _EPOCH_KEYS) -> None:
    """Write ``state`` to ``ckpt_dir/last.pt`` atomically; with ``keep_epoch`` also ``epoch-XXXX.pt`` holding only
    ``epoch_keys`` (weights, no optimiser or RNG state)."""
    utils.atomic_torch_save(state, ckpt_dir / "last.pt")
    if keep_epoch:
        utils.atomic_torch_save({k: state[k] for k in epoch_keys}, ckpt_dir / f"epoch-{state['epoch']:04d}.pt")


def check_resumable(ck: Mapping[str, Any], path: Path, config: Mapping[str, Any], n_train: int,
                    fields: tuple[str, ...] = TRAJECTORY_FIELDS, diff: Mapping[str, tuple] | None = None) -> None:
    """Raise :class:`ResumeError` naming every setting that differs from the checkpoint's: ``fields`` of the
    config, ``n_train`` and the caller's own ``diff`` entries (checkpoint value, current value)."""
    diff = dict(diff or {})
    diff.update({f: (ck["config"].get(f), config.get(f)) for f in fields if ck["config"].get(f) != config.get(f)})
    if ck.get("n_train", n_train) != n_train:
        diff["n_train"] = (ck["n_train"], n_train)
    if diff:
        raise ResumeError(f"{path}: cannot resume, these settings differ from the checkpoint's "
                          f"(checkpoint, now): {diff}; use a new run_id or resume=false")


def restore_training_state(ck: Mapping[str, Any], path: Path, opt: torch.optim.Optimizer, sched: Any,
                           config: Mapping[str, Any], rank: int = 0, world: int = 1) -> tuple[int, int, list[dict]]:
    """Optimiser, scheduler and this rank's RNGs from a checked checkpoint (a changed world size reseeds each
    rank from (seed, rank, epoch)); returns (epochs done, step, history)."""
    opt.load_state_dict(ck["optimizer"])
    sched.load_state_dict(ck["scheduler"])
    rng = ck["rng"]
    if len(rng) == world:
        set_rng_state(rng[rank])
    else:
        warnings.warn(f"{path}: saved by {len(rng)} process(es), resumed by {world}: same data order and "
                      "masks, but each rank is reseeded from (seed, rank, epoch), so drop-path random numbers "
                      "differ from an uninterrupted run")
        reseed(int(config.get("seed", 0)), rank, int(ck["epoch"]))
    return int(ck["epoch"]), int(ck["step"]), list(ck["history"])


def resume(path: Path, model: MIMModel, opt: torch.optim.Optimizer, sched: Any, config: Mapping[str, Any],
           tokenizer: Mapping[str, Any], n_train: int, rank: int = 0, world: int = 1) -> tuple[int, int, list[dict]]:
    """Load ``path`` (a ``last.pt``) into model, optimiser, scheduler and this rank's RNGs.

    ``config`` is the run's config dict; it, the tokenizer fingerprint and ``n_train`` must match the
    checkpoint's (:data:`TRAJECTORY_FIELDS`), else :class:`ResumeError`.  Returns (epochs done, step, history).
    """
    ck = load_checkpoint_file(path, ("config", "tokenizer", "backbone", "mim", "optimizer", "scheduler", "rng",
                                      "epoch", "step", "history"))
    fp = (ck["tokenizer"].get("fingerprint"), tokenizer.get("fingerprint"))
    check_resumable(ck, path, config, n_train, diff={"tokenizer": fp} if fp[0] != fp[1] else None)
    model.load_state_dict({**{f"backbone.{n}": v for n, v in ck["backbone"].items()}, **ck["mim"]})
    return restore_training_state(ck, path, opt, sched, config, rank, world)
