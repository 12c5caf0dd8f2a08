"""02_pretrain, the image story: BEiT masked-image-model (MIM) pretraining of the HeartBEiT backbone on rendered ECGs.

Pipeline (``notebooks/02_pretrain.ipynb``, or ``torchrun -m heartbeit_lib.pretrain`` on several GPUs):

1. :func:`split_rows` - pretraining rows of a cohort store (``train_splits``, default train +
   unassigned, by :func:`pretraining_rows`: minus every ECG of a patient who has a val, test or external row,
   whatever split the ECG carries, and minus the evaluation patients named in ``eval_patients_of``) and
   held-out rows (``val``; when the store has none, a seeded ``val_fraction`` of the training *patients*).
   The same rows fit the tokenizer.  Test and external rows are never seen.
2. :func:`prepare_tokenizer` - load the DALL-E dVAE or an ECG k-means tokenizer, or fit the latter
   on rendered training ECGs; report codebook usage and reconstruction error.
3. :func:`build_data` - tokens of every stored ECG, computed once and cached next to the store
   (:func:`tokenizers.precompute_tokens`), and :class:`MIMDataset` s that render images on the fly
   (``render.RenderedECGDataset``) and draw a BEiT block mask per image (``mim.data``).
4. :func:`train` - the driver: AdamW (BEiT's betas 0.9/0.999, weight decay 0.05), per-step linear warmup +
   cosine decay, gradient clipping, optional layer-wise lr decay, bf16 autocast on CUDA, optional
   ``torch.compile``, DistributedDataParallel under ``torchrun``; each epoch is one call of
   ``mim.engine.train_one_epoch`` / ``evaluate``; one JSON line per epoch in ``log.jsonl`` (loss,
   masked-token accuracy, lr, images/s), a tqdm bar, and a checkpoint every epoch (``mim.checkpoint``:
   ``checkpoints/last.pt``; ``epoch-XXXX.pt`` every ``save_every`` epochs and at the end).
5. :func:`plot_curve` - the pretraining curve (the paper's Supplementary Figure 1).

Determinism: masks and epoch order are functions of (seed, epoch, row) only (``mim.data``); every checkpoint
stores the optimizer, scheduler and torch/numpy/python RNG states of every rank.  Resuming after a kill therefore
repeats the uninterrupted run's losses, and a DDP run with the same global batch follows the single-process loss
trajectory (up to float summation order) when ``drop_path`` is 0 (drop-path draws per-rank random numbers).
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from scipy import ndimage
from tqdm.auto import tqdm

from heartbeit_lib import render, utils
from heartbeit_lib.models import registry as models
from heartbeit_lib.cohorts import CohortStore
from heartbeit_lib.mim import engine, tokenizers
from heartbeit_lib.mim.checkpoint import (TRAJECTORY_FIELDS, ResumeError, checkpoint_state, gather_rng,  # noqa: F401
                                          load_mim_model, resume, save_checkpoint)
from heartbeit_lib.mim.data import (AUGMENTATIONS, DEEPFAKE_SITES, TRAIN_STREAM, VAL_STREAM, EpochSampler, MIMData,  # noqa: F401
                                    MIMDataset, PretrainError, StoreImages, collate, make_loader, pretraining_rows,
                                    read_eval_patients)
from heartbeit_lib.mim.engine import evaluate  # noqa: F401  (public path pretrain.evaluate)
from heartbeit_lib.mim.model import (NORMALIZE, MIMModel, lr_factor, masked_positions, mim_targets,  # noqa: F401
                                     normalize, param_groups)
from heartbeit_lib.pipeline import runs
from heartbeit_lib.report import figures
from heartbeit_lib.distributed import barrier as _barrier, init_distributed, long_barrier  # noqa: F401
from heartbeit_lib.distributed import cap_compile_threads
from heartbeit_lib.pipeline.pretrain.common import (EXCLUSION_KEYS, cpu_threads, micro_batch, resolve_device,  # noqa: F401
                                                    split_rows)
from heartbeit_lib.pipeline.pretrain.config import PretrainConfig


# ============================================================================ training driver


def _check_data(cfg: PretrainConfig, data: MIMData) -> None:
    if data.train.grid != cfg.grid:
        raise PretrainError(f"token grid {data.train.grid} does not match image_size {cfg.image_size} "
                            f"(grid {cfg.grid}); tokenize at the training image size")
    if len(data.train) < cfg.batch_size:
        raise PretrainError(f"batch_size {cfg.batch_size} exceeds the {len(data.train)} pretraining ECGs")


def _build(cfg: PretrainConfig, vocab_size: int, steps_per_epoch: int, device: torch.device, rank: int):
    """(model, AdamW, per-step LambdaLR) seeded as every run is: weights from ``seed``, drop-path from ``seed + rank``."""
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    backbone = models.create_backbone(cfg.model_size, img_size=cfg.image_size, drop_path_rate=cfg.drop_path)
    model = MIMModel(backbone, vocab_size).to(device)
    torch.manual_seed(cfg.seed + rank)  # per-rank stream for drop-path
    opt_kw = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay, cfg.layer_decay), lr=cfg.lr,
                            betas=(0.9, 0.999), **opt_kw)
    for g in opt.param_groups:
        g["lr"] = cfg.lr * g["lr_scale"]
    total = steps_per_epoch * cfg.epochs
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    min_ratio = cfg.min_lr / cfg.lr
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, warmup, min_ratio))
    return model, opt, sched


def _log_line(line: dict) -> dict:
    return {k: v for k, v in line.items() if k != "step_losses"}


def _wrap(model: MIMModel, cfg: PretrainConfig, world: int, device: torch.device) -> nn.Module:
    """The module the training steps call: DDP over several processes, ``torch.compile`` when asked.

    Compiled with ``dynamic=False`` for the one shape it sees (whole micro-batches: the training loader drops the
    last partial batch), and inductor's compile workers capped per rank (``distributed.cap_compile_threads``).
    Held-out evaluation runs ``model`` itself, not this: in eval mode and on a partial last batch the compiled
    module would compile twice more, for 0.2 % of an epoch's images at paper scale (20,000 of 8.5 M).
    """
    net: nn.Module = model
    if world > 1:
        # the backbone's buffers (relative-position indices) are constant: no 3.76 MB broadcast per step
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                                  broadcast_buffers=False)
    if not cfg.compile:
        return net
    cap_compile_threads()
    return torch.compile(net, dynamic=False)


def _val_loader(cfg: PretrainConfig, data: MIMData, per_rank: int, rank: int, world: int, device: torch.device):
    """Held-out loader in a fixed order (every rank a strided share), or None without held-out ECGs."""
    if data.val is None or not len(data.val):
        return None
    vs = EpochSampler(len(data.val), world, cfg.seed, rank, world, shuffle=False, drop_last=False)
    return make_loader(data.val, vs, per_rank, cfg.num_workers, device, drop_last=False)


def _end_epoch(cfg: PretrainConfig, run_dir: Path, state: dict, line: dict, show: bool) -> None:
    """Rank 0 after an epoch: checkpoint (``epoch-XXXX.pt`` too every ``save_every`` and at the end), then the
    ``log.jsonl`` line (so the log never runs ahead of the checkpoint)."""
    epoch = state["epoch"]
    save_checkpoint(state, run_dir / "checkpoints", epoch % cfg.save_every == 0 or epoch == cfg.epochs)
    runs.append_jsonl(run_dir / "log.jsonl", _log_line(line))
    if show:
        tqdm.write(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in _log_line(line).items()}))


def train(cfg: PretrainConfig, data: MIMData, run_dir: str | os.PathLike, *,
          on_epoch_end: Callable[[int, dict], None] | None = None, record_steps: bool = False) -> dict:
    """Pretrain a :class:`MIMModel`; checkpoints, ``log.jsonl`` in ``run_dir``.

    Parameters
    ----------
    cfg : the run's :class:`PretrainConfig` (model, optimisation, masking, device, resume fields).
    data : :class:`MIMData` (train / held-out datasets, vocabulary).
    run_dir : run folder; ``checkpoints/`` and ``log.jsonl`` go here (written by rank 0).
    on_epoch_end : called as ``on_epoch_end(epoch, log_line)`` after each epoch's checkpoint is saved
        (tests raise from it to simulate a kill).
    record_steps : keep each step's loss (averaged over ranks) in ``history[i]["step_losses"]``.

    Returns
    -------
    dict with ``history`` (one dict per epoch), ``checkpoint`` (path of last.pt), ``params``
    (backbone parameter count), ``resumed_from`` (epoch or None), ``world_size``.
    """
    run_dir, ckpt_dir = Path(run_dir), Path(run_dir) / "checkpoints"
    rank, world, local_rank = init_distributed()
    device = resolve_device(cfg.device, local_rank)
    if cfg.threads:
        # on a shared or small CPU, intra-op threads contend (measured on a shared 2-core machine: >10x slower)
        torch.set_num_threads(cfg.threads)
    amp = bool(cfg.amp and device.type == "cuda")
    _check_data(cfg, data)
    per_rank = cfg.batch_size // world
    sampler = EpochSampler(len(data.train), cfg.batch_size, cfg.seed, rank, world)
    steps_per_epoch = len(sampler) // per_rank
    micro = micro_batch(cfg, world)
    model, opt, sched = _build(cfg, data.vocab_size, steps_per_epoch, device, rank)

    history: list[dict] = []
    start_epoch, step, resumed_from = 0, 0, None
    if cfg.resume and (ckpt_dir / "last.pt").exists():
        start_epoch, step, history = resume(ckpt_dir / "last.pt", model, opt, sched, cfg.to_dict(), data.tokenizer,
                                            len(data.train), rank, world)
        resumed_from = start_epoch
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        # the checkpoint's history is the truth (a kill may fall between log line and checkpoint)
        utils.atomic_write_text(run_dir / "log.jsonl", "".join(json.dumps(_log_line(h)) + "\n" for h in history))

    net = _wrap(model, cfg, world, device)
    train_loader = make_loader(data.train, sampler, micro, cfg.num_workers, device, drop_last=True)
    val_loader = _val_loader(cfg, data, micro, rank, world, device)

    show = cfg.progress and rank == 0
    for epoch in range(start_epoch, cfg.epochs):
        sampler.set_epoch(epoch)
        # worker seeds derive from the loader's generator: make them a function of the epoch
        train_loader.generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        ep, step = engine.train_one_epoch(net, train_loader, opt, sched, device, num_masked=cfg.num_masked, amp=amp,
                                          clip_grad=cfg.clip_grad, world=world, step=step, record_steps=record_steps,
                                          desc=f"epoch {epoch + 1}/{cfg.epochs}" if show else None,
                                          norm=data.normalize, accum_steps=cfg.accum_steps)
        line = {"epoch": epoch + 1, "step": step, "train_loss": ep["train_loss"], "train_acc": ep["train_acc"],
                "lr": ep["lr"], "images_per_s": steps_per_epoch * cfg.batch_size / ep["epoch_time_s"],
                "epoch_time_s": ep["epoch_time_s"], "data_wait_s": ep["data_wait_s"]}
        if device.type == "cuda":  # peak of this process since it started (GB)
            line["max_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
        if val_loader is not None:
            ev = engine.evaluate(model, val_loader, device, cfg.num_masked, amp, world, norm=data.normalize)
            line.update(val_loss=ev["loss"], val_acc=ev["acc"])
        line["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        if record_steps:
            line["step_losses"] = ep["step_losses"]
        history.append(line)
        rng_all = gather_rng(world)
        if rank == 0:
            state = checkpoint_state(model, cfg, opt, sched, epoch + 1, step, rng_all, history, data.tokenizer,
                                     data.normalize)
            state.update(n_train=len(data.train), world_size=world)
            _end_epoch(cfg, run_dir, state, line, show)
        _barrier()
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, line)
    n_params = sum(p.numel() for p in model.backbone.parameters())
    return {"history": history, "checkpoint": ckpt_dir / "last.pt", "params": n_params, "resumed_from": resumed_from,
            "world_size": world}


def render_rows(store: Any, rows: np.ndarray, cfg: PretrainConfig, batch: int = 256) -> np.ndarray:
    """uint8 (n, S, S) images of store rows, rendered as in pretraining."""
    out = np.empty((len(rows), cfg.image_size, cfg.image_size), np.uint8)
    for s in range(0, len(rows), batch):
        out[s:s + batch] = render.render_ecg(store.signals(rows[s:s + batch]), size=cfg.image_size, layout=cfg.layout,
                                             ylim_mv=cfg.ylim_mv)
    return out


def prepare_tokenizer(cfg: PretrainConfig, store: Any, rows: dict, run_dir: str | os.PathLike,
                      device: str | None = None) -> tuple[Any, dict]:
    """Load (``tokenizer_path``) or fit (``ecg_kmeans`` without a path) the tokenizer.

    A fitted k-means tokenizer is saved to ``<run_dir>/tokenizer.pt``.  The report (codebook usage,
    perplexity, reconstruction MSE on up to 256 held-out ECGs) goes to ``tokenizer_report.json``.
    """
    run_dir = Path(run_dir)
    rank, _, local_rank = init_distributed()
    device = device or str(resolve_device(cfg.device, local_rank))
    fitted = run_dir / "tokenizer.pt"
    if cfg.tokenizer_path:
        tok = tokenizers.load_tokenizer(cfg.tokenizer, cfg.tokenizer_path, trust_pickle=cfg.trust_pickle,
                                        device=device)
    elif cfg.tokenizer == "dalle":
        raise PretrainError("tokenizer='dalle' needs tokenizer_path=<DALL-E encoder file> (OpenAI's encoder.pkl "
                            "with trust_pickle=true, or a state dict from tokenizers.convert_dalle_pickle)")
    else:
        if rank == 0 and not fitted.exists():
            rng = np.random.default_rng(cfg.seed)
            n = min(cfg.tokenizer_fit_images, len(rows["train"]))
            fit_rows = np.sort(rng.choice(rows["train"], n, replace=False))
            t0 = time.perf_counter()
            with cpu_threads(cfg.threads):
                tok = tokenizers.fit_kmeans_tokenizer(render_rows(store, fit_rows, cfg), cfg.vocab_size, cfg.seed)
            tok.info["fit_seconds"] = time.perf_counter() - t0
            tok.save(fitted)
        long_barrier()  # rank 0 fits (minutes at paper scale) while the others wait: gloo, long timeout
        tok = tokenizers.load_tokenizer("ecg_kmeans", fitted, device=device)
    if tok.grid_for(cfg.image_size) != cfg.grid:
        raise PretrainError(f"tokenizer {cfg.tokenizer} gives a {tok.grid_for(cfg.image_size)} grid for "
                            f"{cfg.image_size}-px images, the model needs {cfg.grid}")
    eval_rows = rows["val"] if len(rows["val"]) else rows["train"]
    with cpu_threads(cfg.threads):
        report = tokenizers.codebook_report(tok, render_rows(store, eval_rows[:256], cfg))
    report.update(kind=tok.kind, fingerprint=tok.fingerprint(), source=str(cfg.tokenizer_path or fitted),
                  evaluated_on=f"{min(256, len(eval_rows))} held-out ECGs", info=getattr(tok, "info", {}))
    if rank == 0:
        runs.write_json(run_dir / "tokenizer_report.json", report)
    return tok, report


def build_data(cfg: PretrainConfig, store: Any, tokenizer: Any, rows: dict, progress: bool = False) -> MIMData:
    """Cached tokens of the store and the train / held-out :class:`MIMDataset` s (images rendered on the fly)."""
    rank, world, _ = init_distributed()
    with cpu_threads(cfg.threads):  # every rank tokenizes its share of the store (uint8 renders in workers)
        tokens = tokenizers.precompute_tokens(store, tokenizer, cfg.image_size, cfg.layout, style=_style(cfg),
                                              progress=progress, rank=rank, world=world, barrier=long_barrier,
                                              num_workers=cfg.num_workers)

    def ds(r: np.ndarray, stream: int) -> MIMDataset:
        # uint8 (H, W); the float RGB input is made on the device
        images = StoreImages(store, r, cfg.image_size, cfg.layout, ylim_mv=cfg.ylim_mv)
        return MIMDataset(images, tokens, cfg.num_masked, cfg.min_block, cfg.seed, stream, rows=r)

    val = ds(rows["val"], VAL_STREAM) if len(rows["val"]) else None
    site = store.manifest["site"].astype(str).to_numpy() if "site" in store.manifest.columns else None
    val_source = None if site is None else np.where(np.isin(site[rows["val"]], DEEPFAKE_SITES), "deepfake", "real")
    info = {"n_train": int(len(rows["train"])), "n_val": int(len(rows["val"])), "held_out": rows["held_out"],
            "token_cache": str(tokenizers.token_cache_path(store.root, tokenizer, cfg.image_size, cfg.layout,
                                                           _style(cfg))),
            "augmentations": AUGMENTATIONS,
            **{k: rows[k] for k in EXCLUSION_KEYS if k in rows}}
    return MIMData(ds(rows["train"], TRAIN_STREAM), val, tokenizer.vocab_size,
                   {"kind": tokenizer.kind, "fingerprint": tokenizer.fingerprint(),
                    "vocab_size": tokenizer.vocab_size},
                   info, val_source, normalize=image_normalization(cfg, store, rows["train"]))


def nearest_unmasked_tokens(tokens: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Each patch's token replaced by that of its nearest unmasked patch (Euclidean on the grid; ties go to
    ``scipy.ndimage.distance_transform_edt``'s choice): (n, h, w) int -> (n, h, w).  Unmasked patches keep
    their own token.  An image with every patch masked keeps its tokens (never the case in BEiT masking)."""
    out = np.array(tokens, copy=True)
    for i, m in enumerate(masks):
        if m.any() and not m.all():
            _, (iy, ix) = ndimage.distance_transform_edt(m, return_indices=True)
            out[i] = tokens[i][iy, ix]
    return out


def _style(cfg: PretrainConfig) -> dict:
    """Render style of the run (part of the token cache key: tokens of other amplitude ranges are not reused)."""
    return {"ylim_mv": [float(v) for v in cfg.ylim_mv]}


def image_normalization(cfg: PretrainConfig, store: Any, train_rows: np.ndarray) -> dict:
    """{mean, std} (3 channels) of the run's rendered pretraining images (``render.image_stats``, 256 rows,
    seed 0): the model's input normalisation, stored in the checkpoint and used again by fine-tuning."""
    st = render.image_stats(store, train_rows, cfg.image_size, cfg.layout, ylim_mv=cfg.ylim_mv)
    return {"mean": st["mean"] * 3, "std": st["std"] * 3}


BASELINE_MAX_VAL = 20_000  # held-out ECGs the token baselines use (a Python loop per ECG: ~0.8 ms each)


def token_baselines(data: MIMData, max_val: int = BASELINE_MAX_VAL) -> dict:
    """Masked-token accuracy of three predictors on the held-out masks (epoch 0), computed once, on at most
    ``max_val`` held-out ECGs (evenly spaced over the held-out order; all of them when fewer; ``baseline_n_val``).

    ``majority``: the most frequent training token everywhere.  ``position_majority``: the most
    frequent training token at each grid position (ECG images have a fixed layout).
    ``nearest_unmasked``: each masked patch's token is its nearest unmasked neighbour's (the image's own
    context, without learning).  With ``data.val_source``, each is also given on the ``real`` and
    ``deepfake`` held-out ECGs (keys ``<name>_acc_<source>``).
    """
    if data.val is None:
        return {}
    tr = data.train.all_tokens(limit=200_000)
    counts = np.bincount(tr.ravel(), minlength=data.vocab_size)
    majority = int(counts.argmax())
    flat = tr.reshape(len(tr), -1)
    pos_major = np.array([np.bincount(flat[:, j], minlength=data.vocab_size).argmax() for j in range(flat.shape[1])])
    pos = np.unique(np.linspace(0, len(data.val) - 1, min(max_val, len(data.val))).round().astype(np.int64))
    va = data.val.all_tokens()[pos]
    masks = data.val.masks([(int(i), 0) for i in pos])
    nn_pred = nearest_unmasked_tokens(va, masks).reshape(len(va), -1)
    va, masks = va.reshape(len(va), -1), masks.reshape(len(va), -1)
    hits = {"majority_acc": va == majority, "position_majority_acc": va == pos_major[None, :],
            "nearest_unmasked_acc": va == nn_pred}
    out: dict = {"majority_token": majority, "n_val": int(len(pos))}
    groups = {"": np.ones(len(va), bool)}
    if data.val_source is not None:
        groups.update({f"_{g}": data.val_source[pos] == g for g in ("real", "deepfake")})
    for suffix, sel in groups.items():
        if sel.any():
            out.update({k + suffix: float(h[sel][masks[sel]].mean()) for k, h in hits.items()})
    return out


def heldout_by_source(cfg: PretrainConfig, data: MIMData, result: dict, device: str | None = None) -> dict:
    """Masked-token loss/accuracy of the final model on the real and the deepfake held-out ECGs separately
    (same images, tokens and masks as the per-epoch held-out evaluation), one process.

    Returns ``{val_acc_real, val_loss_real, n_val_real, ... _deepfake}`` for each source present ({} without
    a held-out set or sources).
    """
    if data.val is None or data.val_source is None or not result.get("history"):
        return {}
    dev = resolve_device(device or cfg.device)
    model = load_mim_model(result["checkpoint"], dev)
    out = {}
    for src in ("real", "deepfake"):
        pos = np.flatnonzero(data.val_source == src)
        if len(pos) == 0:
            continue
        sub = data.val.subset(pos)
        keys = EpochSampler(len(sub), 1, cfg.seed, shuffle=False, drop_last=False)  # epoch 0: the fixed val masks
        loader = make_loader(sub, keys, cfg.batch_size, 0, dev, drop_last=False)
        ev = engine.evaluate(model, loader, dev, cfg.num_masked, bool(cfg.amp and dev.type == "cuda"),
                             norm=data.normalize)
        out.update({f"val_acc_{src}": ev["acc"], f"val_loss_{src}": ev["loss"], f"n_val_{src}": int(len(pos))})
    return out


plot_curve = figures.plot_pretrain_curve  # the figures live in report.figures
plot_examples = figures.plot_mim_examples


def data_hashes(store: Any, run_dir: str | os.PathLike, cfg: PretrainConfig) -> dict[str, str]:
    """sha256 of the inputs of this run: the store manifest and the tokenizer weights."""
    files = {"cohort manifest.parquet": Path(store.root) / "manifest.parquet"}
    tok = Path(cfg.tokenizer_path) if cfg.tokenizer_path else Path(run_dir) / "tokenizer.pt"
    files[f"tokenizer {tok.name}"] = tok
    return {k: runs.file_sha256(p) for k, p in files.items() if p.exists()}


def summarize(result: dict, data: MIMData, tokenizer_report: dict, baselines: dict,
              by_source: dict | None = None) -> dict:
    """metrics.json content: final losses/accuracies (also per held-out source, :func:`heldout_by_source`),
    baselines, throughput, tokenizer usage, and the evaluation-patient exclusion counts."""
    last = result["history"][-1] if result["history"] else {}
    out = {"epochs_done": len(result["history"]), "backbone_params": result["params"],
           "world_size": result["world_size"], "resumed_from_epoch": result["resumed_from"],
           "n_train": data.info.get("n_train"), "n_val": data.info.get("n_val"),
           "images_per_s_last_epoch": last.get("images_per_s"),
           "tokenizer_codes_used": tokenizer_report.get("codes_used"),
           "tokenizer_perplexity": tokenizer_report.get("perplexity"),
           "tokenizer_recon_mse": tokenizer_report.get("recon_mse"),
           "augmentations": AUGMENTATIONS,
           **{k: data.info[k] for k in EXCLUSION_KEYS if k in data.info},
           **(by_source or {})}
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
        if key in last:
            out[f"final_{key}"] = last[key]
    out.update({f"baseline_{k}": v for k, v in baselines.items()})
    return out


def run(cfg: PretrainConfig, run_dir: str | os.PathLike, device: str = "cpu") -> dict:
    """The image story whole (what the notebook does, finishing the run folder on rank 0)."""
    run_dir = Path(run_dir)
    store = CohortStore(cfg.cohort_run)
    rows = split_rows(cfg, store)
    tok, tok_report = prepare_tokenizer(cfg, store, rows, run_dir, device=device)
    data = build_data(cfg, store, tok, rows, progress=cfg.progress)
    rank = init_distributed()[0]
    baselines = token_baselines(data) if rank == 0 else {}  # once, not on every rank (a Python loop per ECG)
    if rank == 0:
        plot_examples(data, run_dir / "examples.png")
    # the other ranks wait here in gloo with a long timeout, not in DDP's first NCCL collective (10 minutes)
    long_barrier()
    result = train(cfg, data, run_dir)
    by_source = heldout_by_source(cfg, data, result, device) if rank == 0 else {}
    metrics = summarize(result, data, tok_report, baselines, by_source)
    if rank == 0:
        plot_curve(result["history"], run_dir / "pretrain_curve.png", baselines)
        runs.finish_run(run_dir, metrics=metrics, data_hashes=data_hashes(store, run_dir, cfg))
    return metrics
