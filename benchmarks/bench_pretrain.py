"""Benchmark: BEiT MIM training step vs a plain timm BEiT step, and the data pipeline vs the step rate.

Measured side by side in one run, on the same batch:

* ``plain``: timm BEiT (``models.create_backbone(..., num_classes=2)``) forward, cross-entropy on 2
  classes, backward, AdamW step - the reference cost of the transformer itself;
* ``mim``: :class:`heartbeit_lib.mim.model.MIMModel` forward with a block mask (mask token, LayerNorm,
  linear head over the vocabulary on the masked patches only), cross-entropy, backward, AdamW step.
  Target: MIM overhead <= 10% over ``plain``;
* ``data``: the pretraining data pipeline for one batch in one process - read signals, render images
  (``render.RenderedECGDataset``), look up cached tokens, draw block masks (:class:`MIMDataset`).
  Target: >= 3x the MIM step's images/s (per loader worker);
* ``masks``: one batch of 128 at 224 px (14 x 14 grid, 75 masked) in one process: read + render, BEiT block
  masks by the per-sample Python loop (``masking.block_mask`` per item, as the data path drew them until
  issue 25) and by the batched ``masking.block_masks_batched`` the data path uses now, alternated (``--masks-only``);
* ``tokenize``: the k-means tokenizer on rendered images (run once per store, then cached);
* ``loader``: images/s of one DataLoader worker delivering batches to the training process (the
  worker renders, pickles the batch through shared memory; the main process receives it), before (float32
  (B, 3, H, W) from ``render.RenderedECGDataset``, as until issue 17) and after (uint8 (B, H, W) from
  ``mim.data.StoreImages``; the float RGB input is made on the device).

Timings alternate plain/mim repetitions and report medians (the machine may be shared).

Usage::

    .venv/bin/python benchmarks/bench_pretrain.py                       # CPU, tiny model, 112 px
    .venv/bin/python benchmarks/bench_pretrain.py --size base --image-size 224 --batch 256 \\
        --device cuda --amp --vocab 8192 --steps 20                      # GPU, paper size, bf16
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from heartbeit_lib.mim import masking
from heartbeit_lib.models import registry as models
from heartbeit_lib.mim.data import EpochSampler, MIMDataset, StoreImages, make_loader
from heartbeit_lib.mim.model import MIMModel, mim_targets, normalize
from heartbeit_lib import render
from heartbeit_lib.mim import tokenizers


class ArrayStore:
    """In-memory stand-in for ``cohorts.CohortStore``: ``signals(idx)``, ``manifest``, ``shape``, ``fs`` (500 Hz)."""

    def __init__(self, x: np.ndarray):
        self.x, self.shape, self.fs = x, x.shape, 500.0
        self.manifest = pd.DataFrame({"label": np.full(len(x), -1)})
        self.root = None

    def __len__(self) -> int:
        return len(self.x)

    def signals(self, idx) -> np.ndarray:
        return self.x[np.asarray(idx)]


def ecg_like(n: int, seed: int = 0) -> np.ndarray:
    """float32 (n, 8, 2500) microvolts: QRS-like spikes and T waves at 40-100 bpm, 500 Hz."""
    rng = np.random.default_rng(seed)
    t = np.arange(2500) / 500
    ph = (t[None] * rng.uniform(0.7, 1.7, (n, 1)) + rng.uniform(0, 1, (n, 1))) % 1
    amp_r = rng.uniform(300, 1500, (n, 8, 1))
    amp_t = rng.uniform(50, 400, (n, 8, 1))
    x = amp_r * np.exp(-((ph[:, None] - 0.3) / 0.012) ** 2) + amp_t * np.exp(-((ph[:, None] - 0.6) / 0.06) ** 2)
    return (x + rng.normal(0, 10, x.shape)).astype(np.float32)


def loader_rates(size: int = 224, batch: int = 128, n_batches: int = 12, workers: int = 1,
                 n_ecgs: int = 1024, after_only: bool = False) -> dict[str, float]:
    """Images/s delivered by ``workers`` DataLoader workers (per worker: divide by ``workers``), float32 RGB
    (before) vs uint8 grey (after; alone with ``after_only``), measured after the first batch (worker start-up
    excluded)."""
    store = ArrayStore(ecg_like(n_ecgs))
    grid = (size // 16, size // 16)
    k = masking.num_masked_for(grid)
    tokens = np.zeros((n_ecgs, *grid), np.int16)
    rows = np.arange(n_ecgs)
    out = {}
    paths = [("float32 (B, 3, H, W), before", render.RenderedECGDataset(store, rows, size=size)),
             ("uint8 (B, H, W), after", StoreImages(store, rows, size))]
    for name, images in paths[1:] if after_only else paths:
        ds = MIMDataset(images, tokens, k, max(1, round(16 * grid[0] * grid[1] / 196)), rows=rows)
        sampler = EpochSampler(n_ecgs, batch, seed=0)
        loader = make_loader(ds, sampler, batch, workers, torch.device("cpu"), drop_last=True)
        it = iter(loader)
        next(it)
        t0, n = time.perf_counter(), 0
        for _ in range(min(n_batches, n_ecgs // batch - 1)):
            n += len(next(it)[0])
        out[name] = n / (time.perf_counter() - t0)
        del it, loader
    return out


def batch_costs(batch: int = 128, size: int = 224, reps: int = 9) -> dict[str, tuple[float, float]]:
    """Median (wall ms, CPU ms) per batch of ``batch`` in one process, alternated ``reps`` times: read + render
    (uint8, the loader's ``StoreImages``), block masks by the per-sample loop, block masks batched (both make their
    per-item generators ``default_rng((0, 0, rep, i))`` inside the timing, as the dataset does).  CPU ms is this
    process's CPU time: on a shared machine it is the steadier figure."""
    grid = (size // 16, size // 16)
    k, min_block = masking.num_masked_for(grid), max(1, round(16 * grid[0] * grid[1] / 196))
    images = StoreImages(ArrayStore(ecg_like(batch)), np.arange(batch), size)
    images.uint8_batch(np.arange(batch))  # warm-up
    jobs = {"render": lambda r: images.uint8_batch(np.arange(batch)),
            "per-sample": lambda r: np.stack([masking.block_mask(np.random.default_rng((0, 0, r, i)), grid, k,
                                                                 min_block=min_block) for i in range(batch)]),
            "batched": lambda r: masking.block_masks_batched([np.random.default_rng((0, 0, r, i))
                                                              for i in range(batch)], grid, k, min_block=min_block)}
    t: dict[str, list] = {key: [] for key in jobs}
    for r in range(reps):
        for key, fn in jobs.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn(r)
            t[key].append((time.perf_counter() - w0, time.process_time() - c0))
    return {key: tuple(1e3 * statistics.median(x[j] for x in v) for j in (0, 1)) for key, v in t.items()}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="tiny", choices=sorted(models.BEIT_SIZES))
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=5, help="timed repetitions of each step kind")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    ap.add_argument("--masks-only", action="store_true", help="only the per-batch render and mask costs")
    ap.add_argument("--loader-only", action="store_true", help="only the masks and the loader's images/s per worker")
    ap.add_argument("--loader-batch", type=int, default=128, help="loader batch (per GPU) for the loader figure")
    ap.add_argument("--loader-size", type=int, default=224, help="image side for the loader figure")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    c = batch_costs(args.loader_batch, args.loader_size)
    print(f"one process, batch {args.loader_batch}, {args.loader_size}px, ms per batch (CPU ms): "
          + ", ".join(f"{name} {c[key][0]:.1f} ({c[key][1]:.1f})" for key, name in
                      (("render", "read+render"), ("per-sample", "block masks per-sample"),
                       ("batched", "block masks batched")))
          + f"; masks per-sample / batched {c['per-sample'][0] / c['batched'][0]:.1f}x wall, "
          f"{c['per-sample'][1] / c['batched'][1]:.1f}x CPU")
    if args.masks_only:
        return
    rates = loader_rates(args.loader_size, args.loader_batch)
    print(f"loader, 1 worker, {args.loader_size}px, batch {args.loader_batch}: "
          + ", ".join(f"{k}: {v:.0f} images/s" for k, v in rates.items()))
    if args.loader_only:
        return
    s, b = args.image_size, args.batch
    grid = (s // 16, s // 16)
    k = masking.num_masked_for(grid)
    min_block = max(1, round(16 * grid[0] * grid[1] / 196))
    amp = args.amp and dev.type == "cuda"
    print(f"device {dev} ({torch.get_num_threads()} CPU threads), BEiT-{args.size}, {s}px, batch {b}, "
          f"vocab {args.vocab}, {k} of {grid[0] * grid[1]} patches masked, bf16={amp}, compile={args.compile}")

    # ---- data: render + tokens + masks, one batch at a time in this process
    store = ArrayStore(ecg_like(max(4 * b, 256)))
    imgs_fit = render.render_ecg(store.signals(np.arange(64)), size=s)
    tok = tokenizers.fit_kmeans_tokenizer(imgs_fit, vocab_size=min(args.vocab, 512), seed=0, max_patches=20_000)
    all_imgs = render.render_ecg(store.signals(np.arange(len(store))), size=s)
    t0 = time.perf_counter()
    tokens = tok.tokenize(all_imgs)
    tok_rate = len(all_imgs) / (time.perf_counter() - t0)
    ds = MIMDataset(StoreImages(store, np.arange(len(store)), s), tokens, k, min_block, rows=np.arange(len(store)))
    data_times = []
    for r in range(args.steps + 1):
        keys = [(int(i), r) for i in np.random.default_rng(r).choice(len(ds), b, replace=False)]
        t0 = time.perf_counter()
        batch = ds.get_batch(keys)
        data_times.append(time.perf_counter() - t0)
    data_rate = b / statistics.median(data_times[1:])
    images, toks, mask = (t.to(dev) for t in batch)
    images = normalize(images.to(dev).float().div_(255)[:, None].expand(-1, 3, -1, -1))

    # ---- models
    torch.manual_seed(0)
    plain = models.create_backbone(args.size, img_size=s, num_classes=2, drop_path_rate=0.0).to(dev)
    torch.manual_seed(0)
    mim = MIMModel(models.create_backbone(args.size, img_size=s, drop_path_rate=0.0), args.vocab).to(dev)
    labels = torch.randint(0, 2, (b,), device=dev)
    mtoks = torch.randint(0, args.vocab, toks.shape, device=dev)  # full-vocab targets: the real head cost
    fused = {"fused": True} if dev.type == "cuda" else {}
    opt_p = torch.optim.AdamW(plain.parameters(), lr=1e-4, **fused)
    opt_m = torch.optim.AdamW([p for p in mim.parameters() if p.requires_grad], lr=1e-4, **fused)
    f_plain = torch.compile(plain) if args.compile else plain
    f_mim = torch.compile(mim) if args.compile else mim

    def step_plain():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            out = f_plain(images)
        loss = F.cross_entropy(out.float(), labels)
        opt_p.zero_grad(set_to_none=True)
        loss.backward()
        opt_p.step()

    def step_mim():
        target = mim_targets(mtoks, mask, k)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            out = f_mim(images, mask, k)
        loss = F.cross_entropy(out.float(), target)
        opt_m.zero_grad(set_to_none=True)
        loss.backward()
        opt_m.step()

    for fn in (step_plain, step_mim, step_plain, step_mim):  # warm-up (and compilation)
        fn()
    _sync(dev)
    tp, tm = [], []
    for _ in range(args.steps):
        for fn, acc in ((step_plain, tp), (step_mim, tm)):
            _sync(dev)
            t0 = time.perf_counter()
            fn()
            _sync(dev)
            acc.append(time.perf_counter() - t0)
    plain_rate, mim_rate = b / statistics.median(tp), b / statistics.median(tm)
    overhead = plain_rate / mim_rate - 1

    # what the FLOPs predict: linear layers of the blocks + attention vs the MIM head on k tokens
    d, depth, n = mim.backbone.embed_dim, mim.num_layers, grid[0] * grid[1] + 1
    backbone_macs = depth * (12 * n * d * d + 2 * n * n * d)
    head_macs = k * d * args.vocab

    print(f"{'what':<44}{'images/s':>12}")
    print(f"{'plain timm BEiT fwd+bwd+AdamW (reference)':<44}{plain_rate:>12.2f}")
    print(f"{'MIM step fwd+bwd+AdamW':<44}{mim_rate:>12.2f}")
    print(f"{'data: read+render+tokens+masks (1 process)':<44}{data_rate:>12.1f}")
    print(f"{'k-means tokenizer (once per store, cached)':<44}{tok_rate:>12.1f}")
    print(f"MIM overhead over plain step: {100 * overhead:+.1f}% (target <= +10%); the MIM head's FLOPs are "
          f"{100 * head_macs / backbone_macs:.1f}% of the backbone's")
    print(f"data pipeline / MIM step rate: {data_rate / mim_rate:.1f}x per loader process (target >= 3x)")


if __name__ == "__main__":
    main()
