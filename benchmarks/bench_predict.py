"""Benchmark of 07_predict: ECGs per second from MUSE XML files on disk to scores, split into stages.

Run from the repository root::

    .venv/bin/python benchmarks/bench_predict.py            # ~1-2 minutes on 2 CPU cores

Data: the real MUSE XML files of ``../shared/data/muse`` (the readable ones), cycled to ``--n`` inputs. Stages, each
timed on its own over the whole batch, the way 07_predict runs them:

- **read**: ``io.read_ecg(path)`` per file (defusedxml parse + base64 decode of the leads);
- **preprocess**: ``signals.preprocess`` with the paper's settings (band-pass 0.5-40 Hz, median 3, first 2,500
  samples at 500 Hz; what ``parameters/01_preprocess/*.yaml`` record in store.json), per record, then the float16
  storage round trip of the cohort store;
- **render**: ``render.render_ecg`` at 224 px, stack8 layout, batches of 256;
- **model**: softmax probabilities of a randomly initialised ``vit_b16_scratch`` (weights do not change the speed),
  size ``micro`` (2 blocks, width 64) and ``base`` (the paper's ViT-B/16, 86 M parameters), batch 64, float32,
  ``torch.no_grad``.

ECGs/s per stage = n / seconds; end to end = n / (sum of the stages of that model). Wall time on a shared machine;
CPU threads as printed. A CUDA device, when present (``--device cuda``), runs the model stage there.
Writes ``outputs/predict/bench_predict.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from heartbeit_lib import io, render, signals
from heartbeit_lib.models import registry as models

REPO = Path(__file__).resolve().parents[1]
MUSE = REPO.parent / "shared" / "data" / "muse"
PREPROCESS_KW = {"band": (0.5, 40.0), "order": 4, "median_kernel": 3, "start": 0, "pad": False}


def readable_files(root: Path) -> list[Path]:
    """The XML files under ``root`` that ``io.read_ecg`` reads and preprocess accepts (others would be rejects)."""
    ok = []
    for p in sorted(root.rglob("*.xml")):
        try:
            r = io.read_ecg(p)
            signals.preprocess(r.signal, r.fs, list(r.leads), **PREPROCESS_KW)
            ok.append(p)
        except (io.ECGReadError, signals.SignalError):
            continue
    return ok


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def stage_read(paths: list[Path]):
    return [io.read_ecg(p) for p in paths]


def stage_preprocess(recs) -> np.ndarray:
    x = np.concatenate([np.reshape(signals.preprocess(r.signal, r.fs, list(r.leads), **PREPROCESS_KW), (-1, 8, 2500))
                        for r in recs])
    return x.astype(np.float16).astype(np.float32)  # the cohort store keeps float16


def stage_render(x: np.ndarray, size: int) -> np.ndarray:
    return np.concatenate([render.render_ecg(x[s:s + 256], size, "stack8") for s in range(0, len(x), 256)])


@torch.no_grad()
def stage_model(model: torch.nn.Module, grey: np.ndarray, device: torch.device, batch: int = 64) -> np.ndarray:
    out = []
    for s in range(0, len(grey), batch):
        x = torch.from_numpy(grey[s:s + batch]).to(device).float().div(255.0)[:, None].expand(-1, 3, -1, -1)
        out.append(torch.softmax(model((x - 0.5) / 0.5), dim=1)[:, 1].cpu())
    if device.type == "cuda":
        torch.cuda.synchronize()
    return torch.cat(out).numpy()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256, help="ECGs (the MUSE files, cycled)")
    ap.add_argument("--n-base", type=int, default=64, help="ECGs through the base ViT (slow on a CPU)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(REPO / "outputs" / "predict" / "bench_predict.json"))
    args = ap.parse_args()
    device = torch.device(args.device)
    files = readable_files(MUSE)
    paths = [files[i % len(files)] for i in range(args.n)]
    recs, t_read = timed(lambda: stage_read(paths))
    x, t_pre = timed(lambda: stage_preprocess(recs))
    grey, t_render = timed(lambda: stage_render(x, args.size))
    res = {"n": args.n, "muse_files": len(files), "size": args.size, "device": str(device),
           "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
           "ecg_per_s": {"read": args.n / t_read, "preprocess": args.n / t_pre, "render": args.n / t_render}}
    for size, n in (("micro", args.n), ("base", args.n_base)):
        torch.manual_seed(0)
        model = models.create_model("vit_b16_scratch", num_classes=2, size=size, img_size=args.size).to(device).eval()
        stage_model(model, grey[:2], device)  # warm-up
        _, t_model = timed(lambda: stage_model(model, grey[:n], device))
        per = {"read": t_read / args.n, "preprocess": t_pre / args.n, "render": t_render / args.n, "model": t_model / n}
        res[f"vit_{size}"] = {"model_ecg_per_s": n / t_model, "n_model": n,
                              "end_to_end_ecg_per_s": 1.0 / sum(per.values()),
                              "share": {k: v / sum(per.values()) for k, v in per.items()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
