"""Notebook 03's ``resume.pt``: the training state written after every epoch of a run with ``resume=True`` and read
back by an interrupted run with the same parameters, so that it continues exactly as an uninterrupted one (CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from heartbeit_lib import utils
from heartbeit_lib.pipeline import runs
from heartbeit_lib.pipeline.finetune.config import FinetuneConfig

RESUME_FILE = "resume.pt"  # per-epoch training state of a run with resume=True; deleted when the run finishes


def _resume_key(cfg: FinetuneConfig) -> dict[str, Any]:
    """The config fields a resumed run must share with the interrupted one (all but ``resume``)."""
    return {k: v for k, v in cfg.to_dict().items() if k != "resume"}


def save_resume_state(run_dir: Path, cfg: FinetuneConfig, epoch: int, log: list[dict], best_epoch: int | None,
                      best_value: float, model: nn.Module, opt, sched, scaler, train_loader) -> None:
    """``resume.pt`` after ``epoch``: weights, optimiser, schedule, scaler, RNG and shuffling-generator states, the
    log so far and the best epoch, so that a resumed run continues exactly as an uninterrupted one (on CPU)."""
    state = {"config": _resume_key(cfg), "epoch": epoch, "log": log, "best_epoch": best_epoch,
             "best_value": best_value, "model": model.state_dict(), "opt": opt.state_dict(),
             "sched": sched.state_dict(), "scaler": scaler.state_dict(), "rng_cpu": torch.get_rng_state(),
             "rng_loader": train_loader.generator.get_state(),
             # the current device's state only: a requeued job may see another number of GPUs
             "rng_cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}
    utils.atomic_torch_save(state, run_dir / RESUME_FILE)


def load_resume_state(run_dir: Path, cfg: FinetuneConfig) -> dict | None:
    """The ``resume.pt`` of an interrupted run with the same config, else None (start clean).

    Raises
    ------
    runs.ConfigError : the folder's ``resume.pt`` was written with other parameters.
    """
    path = Path(run_dir) / RESUME_FILE
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    old, new = state["config"], _resume_key(cfg)
    defaults = _resume_key(FinetuneConfig(model=cfg.model))
    # a parameter added to FinetuneConfig after the run started resumes when it is at its default (the run used it)
    diff = sorted(k for k in set(old) | set(new)
                  if ((old[k] != new.get(k)) if k in old else (new[k] != defaults.get(k))))
    if diff:
        raise runs.ConfigError(f"{path}: written by a run with other parameters ({diff}); delete the run folder "
                               "or run with resume=False")
    return state


def restore_resume_state(state: dict, model: nn.Module, opt, sched, scaler, train_loader
                         ) -> tuple[int, list[dict], int | None, float]:
    """Load ``state`` into the training objects; returns (first epoch to run, log, best epoch, best value)."""
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng_cpu"])
    train_loader.generator.set_state(state["rng_loader"])
    if state["rng_cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["rng_cuda"])
    return state["epoch"] + 1, list(state["log"]), state["best_epoch"], float(state["best_value"])
