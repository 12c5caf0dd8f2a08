"""One pretraining epoch and one held-out evaluation (MAE's ``engine_pretrain`` shape): one loop, one step, logging.

The driver (``heartbeit_lib.pipeline.pretrain.train``) builds data, model, optimiser and scheduler and calls
these once per epoch.  Sums are reduced over ranks, so under DDP every rank returns the same numbers.
"""
from __future__ import annotations

import contextlib
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from heartbeit_lib.distributed import all_reduce
from heartbeit_lib.mim.model import DeviceImages, mim_targets


def train_one_epoch(net: nn.Module, loader: DataLoader, opt: torch.optim.Optimizer, sched, device: torch.device, *,
                    num_masked: int, amp: bool, clip_grad: float, world: int = 1, step: int = 0,
                    record_steps: bool = False, desc: str | None = None, norm: dict | None = None,
                    accum_steps: int = 1) -> tuple[dict, int]:
    """Train ``net`` (the MIM model, possibly DDP/compiled) for one pass over ``loader``.

    Each batch: images uint8 (B, H, W) grey or float (B, 3, H, W) in [0, 1] (made the model's input on the
    device, :class:`DeviceImages`, with ``norm`` {mean, std}; None: 0.5 / 0.5), tokens int64 (B, h, w), masks bool
    (B, h, w); loss = cross-entropy of the ``num_masked`` masked positions per image.  No host sync per step:
    sums stay on the device until the end of the epoch (``record_steps`` and the progress bar, every 10th step,
    read the loss).  ``accum_steps`` > 1: the loader yields micro-batches and every ``accum_steps`` of them make
    one optimizer step, each backpropagating ``loss / accum_steps`` (every image has ``num_masked`` targets, so
    the summed gradients equal the large batch's); DDP reduces gradients on the last micro-batch only
    (``no_sync``).  ``clip_grad`` 0 = no clipping; ``desc`` not None shows a tqdm bar with that title.  Returns (log line with ``train_loss``, ``train_acc``, ``lr``,
    ``epoch_time_s``, ``data_wait_s``, and ``step_losses`` (rank-averaged) with ``record_steps``; global step).
    """
    net.train()
    prep = DeviceImages(device, norm)
    tot = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    step_losses: list[float] = []
    t0 = time.perf_counter()
    data_time = 0.0
    t_data = time.perf_counter()
    it = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True) if desc is not None else loader
    no_sync = getattr(net, "no_sync", None)  # DDP (a compiled DDP forwards it too)
    step_loss = torch.zeros((), dtype=torch.float64, device=device)
    opt.zero_grad(set_to_none=True)
    for k, (images, tokens, mask) in enumerate(it):
        data_time += time.perf_counter() - t_data
        images = prep(images)
        tokens, mask = tokens.to(device, non_blocking=True), mask.to(device, non_blocking=True)
        target = mim_targets(tokens, mask, num_masked)
        last = (k + 1) % accum_steps == 0
        with no_sync() if (no_sync is not None and not last) else contextlib.nullcontext():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = net(images, mask, num_masked)
            loss = F.cross_entropy(logits.float(), target)
            (loss / accum_steps).backward()
        with torch.no_grad():
            tot[0] += loss.detach().double() * target.numel()
            tot[1] += (logits.argmax(-1) == target).sum()
            tot[2] += target.numel()
            step_loss += loss.detach().double() / accum_steps
        if not last:
            t_data = time.perf_counter()
            continue
        if clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), clip_grad)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        if record_steps:
            step_losses.append(float(all_reduce(step_loss.clone(), world) / world))
        step_loss.zero_()
        if desc is not None and step % 10 == 0:
            it.set_postfix(loss=f"{float(loss):.3f}", lr=f"{opt.param_groups[-1]['lr']:.2e}")
        t_data = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    train_time = time.perf_counter() - t0
    all_reduce(tot, world)
    n = max(float(tot[2]), 1.0)
    line = {"train_loss": float(tot[0] / n), "train_acc": float(tot[1] / n),
            "lr": float(max(g["lr"] for g in opt.param_groups)), "epoch_time_s": train_time,
            "data_wait_s": data_time}
    if record_steps:
        line["step_losses"] = step_losses
    return line, step


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, num_masked: int, amp: bool,
             world: int = 1, norm: dict | None = None) -> dict:
    """Masked-token loss and accuracy over a loader (sums reduced over ranks): {loss, acc, count}."""
    was = model.training
    model.eval()
    prep = DeviceImages(device, norm)
    tot = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    for images, tokens, mask in loader:
        images = prep(images)
        tokens, mask = tokens.to(device, non_blocking=True), mask.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(images, mask, num_masked)
        target = mim_targets(tokens, mask, num_masked)
        tot[0] += F.cross_entropy(logits.float(), target, reduction="sum").double()
        tot[1] += (logits.argmax(-1) == target).sum()
        tot[2] += target.numel()
    all_reduce(tot, world)
    model.train(was)
    n = max(float(tot[2]), 1.0)
    return {"loss": float(tot[0]) / n, "acc": float(tot[1]) / n, "count": int(tot[2])}
