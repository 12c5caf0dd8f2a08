"""02_pretrain with ``modality: signal``: ST-MEM masked-patch pretraining on the image pretraining's rows.

The signal twin of ``pipeline.pretrain`` (same :class:`~heartbeit_lib.pipeline.PretrainConfig`, same
run folder layout), called by ``notebooks/02_pretrain.ipynb`` and ``python -m heartbeit_lib.pretrain`` when
``modality == "signal"``:

1. Rows: ``pretrain.common.split_rows(cfg, store)``, the very function the image pretraining uses (train +
   unassigned, held-out ``val``; ``max_train``/``max_val`` caps), so both families see exactly the same ECGs.
   The rows are saved as ``pretraining_rows.npy`` for the record.
2. Inputs: ``prepare_signals`` (store rows resampled to ``signal_rate`` Hz, millivolts), the fine-tuning input,
   streamed from the store per batch (``classify.signal_data.StoreSignalDataset``, as fine-tuning reads it).
3. Model: ``stmem.build_pretrainer(model_size, 8 leads, signal_rate)``; patches of 0.3 s and ``mask_ratio``
   0.75 per lead as in ST-MEM (Na et al. 2024); loss MSE on masked patches with per-patch normalised targets.
4. Optimisation: AdamW (betas 0.9/0.95 as MAE/ST-MEM, ``weight_decay``, none on 1-D parameters), per-step linear
   warmup + cosine (``mim.model.lr_factor``), gradient clipping, bf16 autocast on CUDA, DDP under torchrun
   (``heartbeit_lib.distributed.init_distributed``), ``mim.data.EpochSampler`` for the epoch order; a checkpoint every epoch
   (``mim.stmem_pretrain``) and resume from ``checkpoints/last.pt``.

Budget in the CPU recipe: the same epochs, batch size and rows as the image run
(``parameters/02_pretrain/cpu_small_signal.yaml`` beside ``cpu_small.yaml``).
Unused here: the tokenizer, image, layout and block-mask parameters (they belong to the image modality).
"""
from __future__ import annotations

import io
import json
import os
import random
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from heartbeit_lib import utils
from heartbeit_lib.classify.signal_data import StoreSignalDataset
from heartbeit_lib.cohorts import CohortStore
from heartbeit_lib.models import stmem
from heartbeit_lib.mim import stmem_pretrain as engine
from heartbeit_lib.mim.checkpoint import ResumeError, gather_rng  # noqa: F401  (ResumeError: public here)
from heartbeit_lib.mim.data import TRAIN_STREAM, VAL_STREAM, EpochSampler, PretrainError
from heartbeit_lib.mim.model import lr_factor
from heartbeit_lib.distributed import barrier, ignore_preemption_signals, init_distributed
from heartbeit_lib.pipeline import runs
from heartbeit_lib.report import figures
from heartbeit_lib.pipeline.pretrain.common import EXCLUSION_KEYS, micro_batch, resolve_device, split_rows
from heartbeit_lib.pipeline.pretrain.config import PretrainConfig


def _npy_bytes(a: np.ndarray) -> bytes:
    """``a`` in .npy format (np.save on a path would append ``.npy`` to the temporary name)."""
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def build_data(cfg: PretrainConfig, store: Any, rows: dict) -> tuple[engine.MaskedSignalDataset,
                                                                      engine.MaskedSignalDataset | None]:
    """(train, held-out or None) :class:`~heartbeit_lib.mim.stmem_pretrain.MaskedSignalDataset` of ``rows``."""
    _, n_patches = stmem.geometry(cfg.signal_rate)

    def ds(r: np.ndarray, stream: int) -> engine.MaskedSignalDataset:
        # streamed from the store's shards batch by batch (nothing of the cohort in memory)
        return engine.MaskedSignalDataset(StoreSignalDataset(store, r, None, cfg.signal_rate), n_patches,
                                          cfg.seed, stream)

    return ds(rows["train"], TRAIN_STREAM), (ds(rows["val"], VAL_STREAM) if len(rows["val"]) else None)


def _build(cfg: PretrainConfig, steps_per_epoch: int, device: torch.device, rank: int):
    """(STMEM, AdamW, per-step LambdaLR): weights from ``seed``, drop-path stream from ``seed + rank``."""
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    model = stmem.build_pretrainer(cfg.model_size, 8, cfg.signal_rate, cfg.drop_path).to(device)
    torch.manual_seed(cfg.seed + rank)
    opt = torch.optim.AdamW(engine.param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95))
    total, warmup = steps_per_epoch * cfg.epochs, int(round(cfg.warmup_epochs * steps_per_epoch))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, warmup, cfg.min_lr / cfg.lr))
    return model, opt, sched


def _loader(ds, sampler: EpochSampler, per_rank: int, cfg: PretrainConfig, device: torch.device,
            drop_last: bool) -> DataLoader:
    return DataLoader(ds, batch_size=per_rank, sampler=sampler, num_workers=cfg.num_workers, drop_last=drop_last,
                      pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(0),
                      worker_init_fn=ignore_preemption_signals)


def train(cfg: PretrainConfig, train_ds, val_ds, run_dir: str | os.PathLike, *,
          on_epoch_end: Callable[[int, dict], None] | None = None) -> dict:
    """Pretrain ST-MEM; ``checkpoints/``, ``log.jsonl`` in ``run_dir`` (rank 0).  ``on_epoch_end(epoch, line)``
    runs after each checkpoint (tests raise from it to simulate a kill).

    Returns {history, checkpoint (last.pt path), params (encoder parameters), resumed_from, world_size}.
    """
    run_dir, ckpt_dir = Path(run_dir), Path(run_dir) / "checkpoints"
    rank, world, local_rank = init_distributed()
    device = resolve_device(cfg.device, local_rank)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)  # see pretrain.train: shared CPUs contend
    amp = bool(cfg.amp and device.type == "cuda")
    if len(train_ds) < cfg.batch_size:
        raise PretrainError(f"batch_size {cfg.batch_size} exceeds the {len(train_ds)} pretraining ECGs")
    per_rank = cfg.batch_size // world
    micro = micro_batch(cfg, world)
    sampler = EpochSampler(len(train_ds), cfg.batch_size, cfg.seed, rank, world)
    steps_per_epoch = len(sampler) // per_rank
    model, opt, sched = _build(cfg, steps_per_epoch, device, rank)
    history, start_epoch, step, resumed_from = [], 0, 0, None
    if cfg.resume and (ckpt_dir / "last.pt").exists():
        start_epoch, step, history = engine.resume(ckpt_dir / "last.pt", model, opt, sched, cfg.to_dict(),
                                                   len(train_ds), rank, world)
        resumed_from = start_epoch
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        utils.atomic_write_text(run_dir / "log.jsonl", "".join(json.dumps(h) + "\n" for h in history))
    net: nn.Module = model if world == 1 else nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
    train_loader = _loader(train_ds, sampler, micro, cfg, device, drop_last=True)
    val_loader = None if val_ds is None else _loader(
        val_ds, EpochSampler(len(val_ds), world, cfg.seed, rank, world, shuffle=False, drop_last=False),
        micro, cfg, device, drop_last=False)
    epochs = range(start_epoch, cfg.epochs)
    for epoch in tqdm(epochs, desc="ST-MEM", leave=False) if cfg.progress and rank == 0 else epochs:
        sampler.set_epoch(epoch)
        ep, step = engine.train_one_epoch(net, train_loader, opt, sched, device, cfg.mask_ratio, amp,
                                          cfg.clip_grad, world, step, accum_steps=cfg.accum_steps)
        line = {"epoch": epoch + 1, "step": step, **ep,
                "ecgs_per_s": steps_per_epoch * cfg.batch_size / ep["epoch_time_s"]}
        if val_loader is not None:
            line["val_loss"] = engine.evaluate(net, val_loader, device, cfg.mask_ratio, amp, world)
        line["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        history.append(line)
        rng_all = gather_rng(world)
        if rank == 0:
            state = engine.checkpoint_state(model, cfg, opt, sched, epoch + 1, step, rng_all, history,
                                            len(train_ds), world)
            engine.save_checkpoint(state, ckpt_dir, (epoch + 1) % cfg.save_every == 0 or epoch + 1 == cfg.epochs)
            runs.append_jsonl(run_dir / "log.jsonl", line)
        barrier()
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, line)
    return {"history": history, "checkpoint": ckpt_dir / "last.pt", "resumed_from": resumed_from,
            "params": sum(p.numel() for p in model.encoder.parameters()), "world_size": world}


plot_curve = figures.plot_stmem_curve  # the figures live in report.figures


def summarize(result: dict, n_train: int, n_val: int, rows: dict | None = None) -> dict:
    """metrics.json content: final losses, sizes, throughput, and the evaluation-patient exclusion counts of
    ``rows`` (:func:`pretrain.split_rows`), as the image pretraining reports them."""
    last = result["history"][-1] if result["history"] else {}
    out = {"modality": "signal", "epochs_done": len(result["history"]), "backbone_params": result["params"],
           "world_size": result["world_size"], "resumed_from_epoch": result["resumed_from"],
           "n_train": n_train, "n_val": n_val, "ecgs_per_s_last_epoch": last.get("ecgs_per_s"),
           "train_time_s": sum(h["epoch_time_s"] for h in result["history"])}
    for key in ("train_loss", "val_loss"):
        if key in last:
            out[f"final_{key}"] = last[key]
    out.update({k: rows[k] for k in EXCLUSION_KEYS if rows and k in rows})
    return out


def run(cfg: PretrainConfig, run_dir: str | os.PathLike,
        on_epoch_end: Callable[[int, dict], None] | None = None) -> dict:
    """The whole signal pretraining into a started run folder (finished on rank 0); returns metrics."""
    if cfg.modality != "signal":
        raise PretrainError(f"pretrain_signal.run needs modality 'signal', got {cfg.modality!r}")
    run_dir = Path(run_dir)
    store = CohortStore(cfg.cohort_run)
    rows = split_rows(cfg, store)
    rank = init_distributed()[0]
    if rank == 0:
        utils.atomic_write(run_dir / "pretraining_rows.npy", lambda tmp: tmp.write_bytes(_npy_bytes(rows["train"])))
    train_ds, val_ds = build_data(cfg, store, rows)
    result = train(cfg, train_ds, val_ds, run_dir, on_epoch_end=on_epoch_end)
    metrics = summarize(result, len(rows["train"]), len(rows["val"]), rows)
    if rank == 0:
        plot_curve(result["history"], run_dir / "pretrain_curve.png")
        hashes = {"cohort manifest.parquet": runs.file_sha256(Path(store.root) / "manifest.parquet")}
        runs.finish_run(run_dir, metrics=metrics, data_hashes=hashes)
    return metrics
