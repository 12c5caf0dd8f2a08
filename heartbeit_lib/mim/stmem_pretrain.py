"""ST-MEM pretraining pieces: signal dataset with per-sample masks, one epoch, held-out loss, checkpoints.

The driver is ``pipeline.pretrain.signal``; this module holds what it calls, the signal twin of
``mim.data`` / ``mim.engine`` / ``mim.checkpoint``:

- :class:`MaskedSignalDataset` - prepared signals (``classify.signal_data.prepare_signals``: store rows at
  ``signal_rate`` Hz, millivolts, read per batch) keyed by ``(i, epoch)`` as ``mim.data.EpochSampler`` yields them, each with
  the uniform noise (leads, patches) that chooses its masked patches.  The noise is a function of
  (seed, stream, row, epoch) only, so masks do not depend on the batch, the number of processes or a resume.
- :func:`train_one_epoch` / :func:`evaluate` - masked-patch MSE (``models.stmem.STMEM``), AdamW steps, gradient
  clipping, bf16 autocast on CUDA, losses averaged over DDP ranks.
- :func:`checkpoint_state` / :func:`resume` - ``checkpoints/last.pt``: :func:`models.stmem.checkpoint_payload`
  (``backbone``, ``backbone_config``, ``modality: signal``, what ``registry.create_model("stmem")`` reads) plus
  ``decoder``, optimiser, scheduler, per-rank RNG states (``mim.checkpoint.gather_rng``), config, history.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset

from heartbeit_lib.distributed import mean_over_ranks
from heartbeit_lib.models import stmem
from heartbeit_lib.mim import checkpoint
from heartbeit_lib.mim.checkpoint import (ResumeError, check_resumable, load_checkpoint_file,  # noqa: F401
                                         restore_training_state)

# config fields that define the signal pretraining trajectory: a resumed run must agree on them
TRAJECTORY_FIELDS = ("model_size", "signal_rate", "mask_ratio", "epochs", "batch_size", "lr", "min_lr",
                     "warmup_epochs", "weight_decay", "clip_grad", "drop_path", "seed")
_EPOCH_KEYS = ("backbone", "backbone_config", "modality", "decoder", "epoch", "step", "config")


class MaskedSignalDataset(Dataset):
    """Items ``(x float32 (leads, T), noise float32 (leads, n_patches))`` for keys ``(i, epoch)``, streamed.

    Nothing of the cohort is held here: each batch of keys (``__getitems__``) is one read of its rows through
    ``signals.prepared`` (``classify.signal_data.StoreSignalDataset``: the store's float16 shards -> float32
    millivolts at ``signal_rate`` Hz, per batch), so a rank's memory does not grow with the cohort (the
    in-memory float64 path cost 273 kB per ECG per rank, ~18 TB per node at 8.5 M ECGs).

    Parameters
    ----------
    signals : any object with ``len()`` and ``prepared(pos) -> float32 (len(pos), leads, T)`` (a
        ``StoreSignalDataset`` of the pretraining rows; item ``i`` is its row ``i``).
    n_patches : patches per lead (``stmem.geometry``); the noise covers them.
    seed, stream : the noise of item i in epoch e comes from ``np.random.default_rng((seed, stream, i, e))``.
    """

    def __init__(self, signals, n_patches: int, seed: int = 0, stream: int = 0):
        self.signals, self.n_patches, self.seed, self.stream = signals, n_patches, seed, stream

    def __len__(self) -> int:
        return len(self.signals)

    def __getitems__(self, keys) -> list[tuple[torch.Tensor, torch.Tensor]]:
        keys = [(int(i), int(e)) for i, e in keys]
        x = torch.from_numpy(np.ascontiguousarray(self.signals.prepared([i for i, _ in keys]), np.float32))
        return [(x[k], torch.from_numpy(np.random.default_rng((self.seed, self.stream, i, e)).random(
                    (x.shape[1], self.n_patches), dtype=np.float32)))
                for k, (i, e) in enumerate(keys)]

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.__getitems__([key])[0]


def train_one_epoch(net: nn.Module, loader, opt: torch.optim.Optimizer, sched, device: torch.device,
                    mask_ratio: float, amp: bool = False, clip_grad: float = 0.0, world: int = 1,
                    step: int = 0, accum_steps: int = 1) -> tuple[dict, int]:
    """One pass: per batch the masked-patch MSE, backward, clip, AdamW and scheduler step.  With ``accum_steps``
    > 1 the loader yields micro-batches and every ``accum_steps`` of them make one step (``loss / accum_steps``
    each: equal micro-batches, so the summed gradients are the large batch's; DDP syncs on the last only).
    The losses stay on the device until the end of the epoch (no host sync per step).

    Returns ({train_loss (mean over the epoch's steps and ranks), lr, epoch_time_s}, global step).
    """
    net.train()
    no_sync = getattr(net, "no_sync", None)
    t0, n = time.time(), 0
    tot = torch.zeros((), dtype=torch.float64, device=device)
    opt.zero_grad(set_to_none=True)
    for k, (x, noise) in enumerate(loader):
        x, noise = x.to(device, non_blocking=True), noise.to(device, non_blocking=True)
        last = (k + 1) % accum_steps == 0
        with no_sync() if (no_sync is not None and not last) else contextlib.nullcontext():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = net(x, mask_ratio=mask_ratio, noise=noise)["loss"]
            (loss / accum_steps).backward()
        tot += loss.detach().double() / accum_steps
        if not last:
            continue
        if clip_grad > 0:
            nn.utils.clip_grad_norm_(net.parameters(), clip_grad)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        n += 1
    return {"train_loss": mean_over_ranks(float(tot), n, world, device), "lr": sched.get_last_lr()[0],
            "epoch_time_s": time.time() - t0}, step


@torch.no_grad()
def evaluate(net: nn.Module, loader, device: torch.device, mask_ratio: float, amp: bool = False,
             world: int = 1) -> float:
    """Masked-patch MSE on held-out ECGs (fixed masks), weighted by batch size, averaged over ranks.  The sum
    stays on the device until the end (no host sync per batch)."""
    net.eval()
    tot, n = torch.zeros((), dtype=torch.float64, device=device), 0
    for x, noise in loader:
        x, noise = x.to(device, non_blocking=True), noise.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = net(x, mask_ratio=mask_ratio, noise=noise)["loss"]
        tot += loss.double() * len(x)
        n += len(x)
    return mean_over_ranks(float(tot), n, world, device)


def param_groups(model: stmem.STMEM, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on biases, norms and embeddings (1-D parameters), as MAE/ST-MEM."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1 and p is not model.encoder.lead_embed]
    no_decay = [p for p in model.parameters() if p.requires_grad and all(p is not q for q in decay)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def checkpoint_state(model: stmem.STMEM, cfg: Any, opt, sched, epoch: int, step: int, rng: list[dict],
                     history: list[dict], n_train: int, world: int) -> dict:
    """``last.pt`` content (tensors, numbers, strings, lists, dicts only: ``weights_only`` loadable)."""
    state = stmem.checkpoint_payload(model, cfg.model_size, cfg.signal_rate)
    state["backbone"] = {k: v.detach().cpu() for k, v in state["backbone"].items()}
    state.update(decoder={k: v.detach().cpu() for k, v in model.state_dict().items() if not k.startswith("encoder.")},
                 optimizer=opt.state_dict(), scheduler=sched.state_dict(), epoch=int(epoch), step=int(step), rng=rng,
                 config=cfg.to_dict(), history=[dict(h) for h in history], n_train=int(n_train), world_size=world,
                 format_version=1)
    return state


def save_checkpoint(state: dict, ckpt_dir: Path, keep_epoch: bool) -> None:
    """``last.pt`` atomically; with ``keep_epoch`` also ``epoch-XXXX.pt`` (weights only, not resumable)."""
    checkpoint.save_checkpoint(state, ckpt_dir, keep_epoch, _EPOCH_KEYS)


def resume(path: Path, model: stmem.STMEM, opt, sched, config: Mapping[str, Any], n_train: int,
           rank: int = 0, world: int = 1) -> tuple[int, int, list[dict]]:
    """Load ``last.pt`` into model, optimiser, scheduler and this rank's RNGs (:func:`mim.checkpoint.
    restore_training_state`); returns (epochs done, step, history).

    Raises :class:`ResumeError` when :data:`TRAJECTORY_FIELDS`, the modality or ``n_train`` differ, and
    :class:`CheckpointError` naming the file when it is not a readable pretraining checkpoint.
    """
    ck = load_checkpoint_file(path, ("config", "backbone", "decoder", "optimizer", "scheduler", "rng",
                                      "epoch", "step", "history"))
    modality = ck.get("modality", "image")
    check_resumable(ck, path, config, n_train, TRAJECTORY_FIELDS,
                    diff=None if modality == "signal" else {"modality": (modality, "signal")})
    model.load_state_dict({**{f"encoder.{k}": v for k, v in ck["backbone"].items()}, **ck["decoder"]})
    return restore_training_state(ck, path, opt, sched, config, rank, world)
