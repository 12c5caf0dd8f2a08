"""Benchmark: training samples/s of the image and signal families side by side, and their data pipelines.

One run, same machine, same batch size, interleaved repetitions (medians; the machine may be shared):

* ``image``: the micro HeartBEiT architecture (``create_model("beit_b16_scratch", size="micro")``, the BEiT
  that ``heartbeit`` fine-tunes) on (B, 3, 112, 112) images, 2 classes;
* ``signal``: ``xresnet1d101``, ``inception1d`` and ``stmem_scratch`` (micro) on (B, 8, 500) signals
  (5 s at 100 Hz), 2 classes; plus one ST-MEM micro *pretraining* step (masked-patch reconstruction);

each as forward + cross-entropy (or reconstruction loss) + backward + AdamW step. Data pipelines,
one process, per batch from a store of float32 (N, 8, 2500) uV at 500 Hz:

* images: ``render.RenderedECGDataset.render_batch`` (store read + vectorised render at 112 px);
* signals: store read + ``signal_data.prepare_signals`` (resample_poly 500 -> 100 Hz, uV -> mV) +
  ``StoreSignalDataset`` items collated (with 2.5 s random crops off, the default).

Usage::

    .venv/bin/python benchmarks/bench_train_step.py                    # CPU, ~1-3 minutes on 2 cores
    .venv/bin/python benchmarks/bench_train_step.py --device cuda --batch 256 --steps 20
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from bench_pretrain import ArrayStore, ecg_like  # same folder: a script run puts benchmarks/ on sys.path
from heartbeit_lib import render
from heartbeit_lib.models import registry as models
from heartbeit_lib.classify import signal_data
from heartbeit_lib.models import stmem


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def classifier_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """One supervised step (forward, cross-entropy, backward, AdamW) as a closure."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def pretrain_step(model: stmem.STMEM, x: torch.Tensor) -> Callable[[], None]:
    """One ST-MEM masked-reconstruction step as a closure."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator(device=x.device).manual_seed(0)

    def step() -> None:
        loss = model(x, generator=gen)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def timed(fns: dict[str, Callable[[], None]], steps: int, dev: torch.device) -> dict[str, float]:
    """Median seconds per call of each function, repetitions interleaved, after one warm-up each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(steps):
        for name, fn in fns.items():
            _sync(dev)
            t0 = time.perf_counter()
            fn()
            _sync(dev)
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3, help="timed repetitions of each step")
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--signal-rate", type=float, default=100.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev, b, s = torch.device(args.device), args.batch, args.image_size
    print(f"device {dev} ({torch.get_num_threads()} CPU threads), batch {b}, images {s} px, "
          f"signals {args.signal_rate:g} Hz")

    store = ArrayStore(ecg_like(max(8 * b, 256)))
    rows = [np.random.default_rng(r).choice(len(store), b, replace=False) for r in range(args.steps + 1)]
    images_ds = render.RenderedECGDataset(store, np.arange(len(store)), size=s)

    def image_data() -> None:
        images_ds.render_batch(rows[0])

    def signal_data_batch() -> None:
        ds = signal_data.StoreSignalDataset(store, rows[0], np.zeros(len(rows[0]), dtype=np.int64), args.signal_rate)
        default_collate(ds.__getitems__(np.arange(len(ds))))

    data = timed({"image": image_data, "signal": signal_data_batch}, args.steps, torch.device("cpu"))

    torch.manual_seed(0)
    img = torch.rand(b, 3, s, s, device=dev)
    sig = torch.from_numpy(signal_data.prepare_signals(store.signals(rows[1]), signal_data.STORE_FS,
                                                       args.signal_rate)).to(dev)
    y = torch.randint(0, 2, (b,), device=dev)
    nets = {
        "image   heartbeit arch (BEiT micro, 112 px)":
            models.create_model("beit_b16_scratch", size="micro", img_size=s, num_classes=2),
        "signal  xresnet1d101": models.create_model("xresnet1d101", num_classes=2, in_chans=8),
        "signal  inception1d": models.create_model("inception1d", num_classes=2, in_chans=8),
        "signal  stmem_scratch (micro)": models.create_model("stmem_scratch", num_classes=2, size="micro",
                                                             signal_rate=args.signal_rate),
    }
    steps = {name: classifier_step(m.to(dev), img if "image" in name else sig, y) for name, m in nets.items()}
    pre = stmem.build_pretrainer("micro", num_leads=8, signal_rate=args.signal_rate).to(dev)
    steps["signal  stmem micro pretraining step"] = pretrain_step(pre, sig)
    params = {name: models.count_parameters(m) for name, m in nets.items()}
    params["signal  stmem micro pretraining step"] = models.count_parameters(pre)
    sec = timed(steps, args.steps, dev)

    print(f"{'training step (fwd+bwd+AdamW)':<46}{'params':>10}{'samples/s':>12}")
    for name, t in sec.items():
        print(f"{name:<46}{params[name]:>10,}{b / t:>12.1f}")
    print(f"{'data pipeline (1 process)':<46}{'':>10}{'samples/s':>12}")
    print(f"{'image   read + render 112 px':<46}{'':>10}{b / data['image']:>12.1f}")
    print(f"{'signal  read + resample_poly + mV + dataset':<46}{'':>10}{b / data['signal']:>12.1f}")


if __name__ == "__main__":
    main()
