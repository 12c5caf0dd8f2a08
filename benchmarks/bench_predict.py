"""Benchmark of 07_predict: ECGs per second from MUSE XML files on disk to scores, split into stages.

Run from the repository root::

    .venv/bin/python benchmarks/bench_predict.py            # ~1-2 minutes on 2 CPU cores

Data: the real MUSE XML files of ``../shared/data/muse`` (the readable ones), cycled to ``--n`` inputs. Stages, each
timed on its own over the whole batch, the way 07_predict runs them:

- **read**: ``io.read_ecg(path)`` per file (defusedxml parse + base64 decode of the leads), in this process; and
  **read_2_processes**: the same files split between two processes forked inside the timing (07's readers,
  ``cohorts.build_shards_in_order``; only a count comes back, as 07's readers write their signals to the store),
  and **read_2_spawn_processes**: the same with ``spawn`` (what ``cohorts.build_store``'s workers pay: Python
  start and the imports of the reader and the filters in each);
- **preprocess**: ``signals.preprocess`` with the paper's settings (band-pass 0.5-40 Hz, median 3, first 2,500
  samples at 500 Hz; what ``parameters/01_preprocess/*.yaml`` record in store.json) on batches of
  ``cohorts.build.PREPROCESS_CHUNK`` (16) records, as the store build runs it, then the float16 storage round trip
  of the cohort store; and **preprocess_per_record** (one call per record, for the ratio);
- **render**: ``render.render_ecg`` at 224 px, stack8 layout, batches of 256;
- **model**: softmax probabilities of a randomly initialised ``vit_b16_scratch`` (weights do not change the speed),
  size ``micro`` (2 blocks, width 64) and ``base`` (the paper's ViT-B/16, 86 M parameters), batch 64, float32,
  ``torch.no_grad``, on the normalised 3-channel images (as 03 feeds it), and side by side **model_grey_input** (as
  07 scores it: ``predict.ensemble.grey_input_model``, one grey channel, the normalisation folded into the patch
  embedding; the same probabilities to 1e-5, checked);
- **signal model**: ``xresnet1d101`` (random init) on the same preprocessed signals, resampled to 100 Hz and scaled
  as 03/07 feed it (``classify.signal_data.prepare_signals``), batch 64;
- **07 end to end**: ``predict.run`` itself (``pictures: none``; threshold, its bootstrap interval and the operating
  points included) on a folder of the MUSE files copied to ``--n-e2e`` names, for the micro ViT and for
  xresnet1d101 (finished run folders written here with random weights), with ``workers: 1`` and ``workers: 2``:
  that many forked reader processes build the store in shards of 64 files while this process scores each shard's
  ECGs as it comes in (``predict.prepare_and_score``), side by side; ``--reps N`` repeats the four N times,
  interleaved, and reports medians (every round's ECGs/s kept).

ECGs/s per stage = n / seconds; end to end = n / (sum of the stages of that model: read in 2 processes, batched
preprocessing); 07's ECGs/s = n / its wall time.
Wall time on a shared machine: the load average before and after and the torch threads are printed with the
figures (ratios measured in the same run travel; absolute rates under load do not).
A CUDA device, when present (``--device cuda``), runs the model stages there.
Writes ``outputs/predict/bench_predict.json``. What a change is worth: ``benchmarks/ab_predict.py`` runs 07 for two
checkouts in interleaved rounds (the paired ratio travels; this machine's absolute rates drift by 15-30 %).

Measured 2026-12-07 (2 cores, training paused, two other nice-19 jobs: load 2.9-3.3, 2 torch threads; "before" is
the code of commit ea58da0, run from a copy of it in the same window): 07 end to end micro ViT
161.6 ECG/s with 1 reader, 157.6 with 2 (before 113.0, 97.9); xresnet1d101 160.6 and 136.8 (before 103.7, 87.6);
CPU per ECG scoring + reading 4.75 + 5.07 ms (micro ViT), 6.06 + 4.49 ms (xresnet1d101). Stages: read 313 ECG/s
(before 258), 2 forked readers 498 (1.59x one; 2 spawn processes 98), batched preprocessing 884 (2.47x per record;
before 368, 0.66x), render 4,905, micro ViT 622, xresnet1d101 352. See docs/experiments.md.
Then (quiet, 2 torch threads) with the micro ViT scored on grey images through its folded patch embedding
(``predict.ensemble.grey_input_model``; the **model** stage below still times the 3-channel input): 07 micro ViT
161.4 / 172.3 ECG/s with 1 reader, 180.1 / 213.5 with 2 (512 files), 167.7 and 197.2 on 2,048; scoring 3.1-4.1 CPU ms
per ECG (before 4.1-4.6).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from heartbeit_lib import io, signals
from heartbeit_lib.cohorts.build import PREPROCESS_CHUNK

if __name__ != "__mp_main__":  # spawn workers (read_2_processes) re-run this file's imports: they read files only
    import torch

    from heartbeit_lib import render
    from heartbeit_lib.classify import checkpoint
    from heartbeit_lib.classify.signal_data import prepare_signals
    from heartbeit_lib.models import registry as models
    from heartbeit_lib.pipeline import predict
    from heartbeit_lib.pipeline.predict.ensemble import grey_input_model

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


def _read_count(paths: list[Path]) -> int:
    """Samples read from ``paths`` (the signals stay in the worker, as 07's readers keep theirs for the store)."""
    return sum(int(np.size(io.read_ecg(p).signal)) for p in paths)


def stage_read_parallel(paths: list[Path], workers: int = 2, method: str = "fork") -> int:
    """The files split into ``workers`` interleaved parts, each read in its own process started inside the timing:
    ``fork`` (07's readers, ``cohorts.build_shards_in_order``) or ``spawn`` (``cohorts.build_store``'s workers).
    Only a count comes back (07's readers write their signals to the store)."""
    ctx = multiprocessing.get_context(method)
    parts = [paths[k::workers] for k in range(workers)]
    with cf.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        return sum(pool.map(_read_count, parts))


def stage_preprocess_per_record(recs) -> np.ndarray:
    x = np.concatenate([np.reshape(signals.preprocess(r.signal, r.fs, list(r.leads), **PREPROCESS_KW), (-1, 8, 2500))
                        for r in recs])
    return x.astype(np.float16).astype(np.float32)  # the cohort store keeps float16


def stage_preprocess(recs) -> np.ndarray:
    """Batches of ``PREPROCESS_CHUNK`` records of one rate and lead set (the store build's ``_preprocess_records``)."""
    out = []
    for s in range(0, len(recs), PREPROCESS_CHUNK):
        part = recs[s:s + PREPROCESS_CHUNK]
        same = {(r.fs, tuple(r.leads), np.shape(r.signal)) for r in part}
        assert len(same) == 1, "the shared MUSE files are one rate and lead set"
        x = np.stack([np.asarray(r.signal, np.float32) for r in part])
        out.append(np.asarray(signals.preprocess(x, part[0].fs, list(part[0].leads), **PREPROCESS_KW), np.float32))
    return np.concatenate(out).astype(np.float16).astype(np.float32)


def stage_render(x: np.ndarray, size: int) -> np.ndarray:
    return np.concatenate([render.render_ecg(x[s:s + 256], size, "stack8") for s in range(0, len(x), 256)])


def stage_model(model: torch.nn.Module, grey: np.ndarray, device: torch.device, batch: int = 64,
                folded: bool = False) -> np.ndarray:
    """Probabilities of the uint8 images ``grey`` (n, H, W): normalised to the ViT's 3 channels (as 03 feeds it),
    or, ``folded``, as 07 scores them: (B, 1, H, W) in [0, 1] into ``predict.ensemble.grey_input_model``."""
    out = []
    for s in range(0, len(grey), batch):
        x = torch.from_numpy(grey[s:s + batch]).to(device).float().div(255.0)[:, None]
        with torch.no_grad():
            logits = model(x) if folded else model((x.expand(-1, 3, -1, -1) - 0.5) / 0.5)
        out.append(torch.softmax(logits, dim=1)[:, 1].cpu())
    if device.type == "cuda":
        torch.cuda.synchronize()
    return torch.cat(out).numpy()


def stage_signal_model(model: torch.nn.Module, x: np.ndarray, device: torch.device, batch: int = 64) -> np.ndarray:
    """(n, 8, 2500) uV at 500 Hz -> probabilities, through the signal models' input path (100 Hz, mV)."""
    out = []
    for s in range(0, len(x), batch):
        xb = torch.from_numpy(prepare_signals(x[s:s + batch], 500.0, 100.0)).to(device)
        with torch.no_grad():
            out.append(torch.softmax(model(xb), dim=1)[:, 1].cpu())
    return torch.cat(out).numpy()


def finished_run(root: Path, name: str, size: str, image_size: int | None) -> Path:
    """A finished 03_finetune run folder of ``name`` with random weights (speed does not depend on them): weights,
    model.json, config.yaml, run.json, metrics.json, 100 validation scores, and the store.json of its 'cohort'
    (the preprocessing 07 applies to the raw files)."""
    store = root / "01_preprocess" / "bench"
    store.mkdir(parents=True, exist_ok=True)
    (store / "store.json").write_text(json.dumps({"preprocess_kw": PREPROCESS_KW, "task": "unlabelled", "fs": 500}))
    run = root / "03_finetune" / f"bench-{name}"
    run.mkdir(parents=True)
    torch.manual_seed(0)
    signal = models.model_family(name) == "signal"
    if signal:
        model = models.create_model(name, num_classes=2, size=size, in_chans=8, signal_rate=100.0)
        norm = ((0.0,), (1.0,))
    else:
        model = models.create_model(name, num_classes=2, size=size, img_size=image_size)
        norm = ((0.5,) * 3, (0.5,) * 3)
    checkpoint.save_best_weights(model, run)
    checkpoint.write_model_record(run, model, name, size, image_size, None if signal else "stack8", norm,
                                  signal_rate=100.0 if signal else None)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": name, "model_size": size, "image_size": image_size,
                                                     "layout": "stack8", "cohort_run": str(store)}))
    (run / "run.json").write_text(json.dumps({"notebook": "03_finetune", "finished": "bench"}))
    (run / "metrics.json").write_text(json.dumps({"best_epoch": 1}))
    rng = np.random.default_rng(0)
    pd.DataFrame({"record_id": [f"v{i}" for i in range(100)], "patient_hash": "p", "split": "val", "epoch": 1,
                  "label": np.arange(100) % 2, "score": rng.random(100)}).to_parquet(run / "predictions.parquet")
    return run


def _children_cpu() -> float:
    """User + system CPU seconds of this process's finished children (07's reader processes, once joined)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def end_to_end(files: list[Path], n: int, device: str, reps: int = 1) -> dict:
    """07's ECGs/s (``predict.run``, pictures off) for the micro ViT and xresnet1d101, workers 1 and 2, and the CPU
    milliseconds per ECG of this process (scoring) and of its readers; ``reps`` rounds of the four, interleaved
    (each figure is the median of its rounds, every round's ECGs/s under ``ecg_per_s_runs``: on a shared virtual
    machine runs a minute apart differ by up to 30 %)."""
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "muse"
        folder.mkdir()
        for i in range(n):
            shutil.copy(files[i % len(files)], folder / f"{i:05d}_{files[i % len(files)].name}")
        models_ = {"vit_micro": ("vit_b16_scratch", "micro", 224), "xresnet1d101": ("xresnet1d101", "base", None)}
        run_dirs = {key: finished_run(tmp, *spec) for key, spec in models_.items()}
        for r in range(reps):
            for key, run in run_dirs.items():
                for workers in (1, 2):
                    cfg = predict.PredictConfig(finetune_runs=(str(run),), data_root=str(folder), source="muse",
                                                pictures="none", device=device, workers=workers, n_boot=500,
                                                out_root=str(tmp / "out"), run_id=f"{key}-w{workers}-r{r}")
                    t0, c0, k0 = time.perf_counter(), time.process_time(), _children_cpu()
                    res = predict.run(cfg)
                    wall = time.perf_counter() - t0
                    cpu = {"this_process": time.process_time() - c0, "readers": _children_cpu() - k0}
                    runs.setdefault(f"{key}_workers{workers}", []).append(
                        {"ecg_per_s": res["n_scored"] / wall, "n_scored": res["n_scored"],
                         "n_rejected": res["n_rejected"], "seconds": wall,
                         "cpu_ms_per_ecg": {k: 1e3 * v / n for k, v in cpu.items()}})
    out: dict = {}
    for name, rs in runs.items():
        med = lambda f: float(np.median([f(x) for x in rs]))  # noqa: E731
        out[name] = {"ecg_per_s": med(lambda x: x["ecg_per_s"]), "n_scored": rs[0]["n_scored"],
                     "n_rejected": rs[0]["n_rejected"], "seconds": med(lambda x: x["seconds"]),
                     "cpu_ms_per_ecg": {k: med(lambda x: x["cpu_ms_per_ecg"][k]) for k in rs[0]["cpu_ms_per_ecg"]},
                     "ecg_per_s_runs": [x["ecg_per_s"] for x in rs]}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256, help="ECGs (the MUSE files, cycled)")
    ap.add_argument("--n-base", type=int, default=64, help="ECGs through the base ViT (slow on a CPU)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n-e2e", type=int, default=512, help="MUSE files (copies) scored by 07 end to end")
    ap.add_argument("--reps", type=int, default=1, help="rounds of 07 end to end (medians reported)")
    ap.add_argument("--out", default=str(REPO / "outputs" / "predict" / "bench_predict.json"))
    args = ap.parse_args()
    device = torch.device(args.device)
    load_before = os.getloadavg()
    files = readable_files(MUSE)
    paths = [files[i % len(files)] for i in range(args.n)]
    recs, t_read1 = timed(lambda: stage_read(paths))
    _, t_read = timed(lambda: stage_read_parallel(paths, 2))
    _, t_read_spawn = timed(lambda: stage_read_parallel(paths, 2, "spawn"))
    x1, t_pre1 = timed(lambda: stage_preprocess_per_record(recs))
    x, t_pre = timed(lambda: stage_preprocess(recs))
    np.testing.assert_allclose(x, x1, atol=0.5)  # the batch is the same preprocessing (float16 storage: ~0.03 uV)
    grey, t_render = timed(lambda: stage_render(x, args.size))
    res = {"n": args.n, "muse_files": len(files), "size": args.size, "device": str(device),
           "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
           "ecg_per_s": {"read": args.n / t_read1, "read_2_processes": args.n / t_read,
                         "read_2_spawn_processes": args.n / t_read_spawn,
                         "preprocess_per_record": args.n / t_pre1, "preprocess": args.n / t_pre,
                         "render": args.n / t_render},
           "ratios": {"read_2_processes_vs_1": t_read1 / t_read, "read_2_spawn_processes_vs_1": t_read1 / t_read_spawn,
                      "preprocess_batch_vs_per_record": t_pre1 / t_pre}}
    for size, n in (("micro", args.n), ("base", args.n_base)):
        torch.manual_seed(0)
        model = models.create_model("vit_b16_scratch", num_classes=2, size=size, img_size=args.size).to(device).eval()
        stage_model(model, grey[:2], device)  # warm-up
        p3, t_model = timed(lambda: stage_model(model, grey[:n], device))
        folded = grey_input_model(model, ((0.5,) * 3, (0.5,) * 3))
        stage_model(folded, grey[:2], device, folded=True)  # warm-up
        p1, t_grey = timed(lambda: stage_model(folded, grey[:n], device, folded=True))
        np.testing.assert_allclose(p1, p3, atol=1e-5)  # the same probabilities (float32 rounding)
        per = {"read": t_read / args.n, "preprocess": t_pre / args.n, "render": t_render / args.n, "model": t_model / n}
        res[f"vit_{size}"] = {"model_ecg_per_s": n / t_model, "n_model": n,
                              "model_grey_input_ecg_per_s": n / t_grey, "grey_input_vs_3_channels": t_model / t_grey,
                              "end_to_end_ecg_per_s": 1.0 / sum(per.values()),
                              "share": {k: v / sum(per.values()) for k, v in per.items()}}
    torch.manual_seed(0)
    xres = models.create_model("xresnet1d101", num_classes=2, size="base", in_chans=8, signal_rate=100.0)
    xres = xres.to(device).eval()
    stage_signal_model(xres, x[:2], device)  # warm-up
    _, t_sig = timed(lambda: stage_signal_model(xres, x, device))
    per = {"read": t_read / args.n, "preprocess": t_pre / args.n, "model": t_sig / args.n}
    res["xresnet1d101"] = {"model_ecg_per_s": args.n / t_sig, "n_model": args.n,
                           "end_to_end_ecg_per_s": 1.0 / sum(per.values()),
                           "share": {k: v / sum(per.values()) for k, v in per.items()}}
    res["07_end_to_end"] = end_to_end(files, args.n_e2e, args.device, args.reps)
    for key in ("vit_micro", "xresnet1d101"):
        one, two = (res["07_end_to_end"][f"{key}_workers{w}"]["ecg_per_s"] for w in (1, 2))
        res["07_end_to_end"][f"{key}_speedup_workers2"] = two / one
    res["load_average_1min"] = {"before": load_before[0], "after": os.getloadavg()[0]}
    res["cpu_count"] = os.cpu_count()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
