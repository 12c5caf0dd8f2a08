"""Benchmark of ECG rendering: speed on one core and parity with the matplotlib reference.

Run from the repository root::

    .venv/bin/python benchmarks/bench_render.py            # ~1 minute on one core

Data: 200 real PTB-XL records from ``../shared/data/ptbxl``: the 150 shipped at 500 Hz, plus the
first 50 records that exist only at 100 Hz, resampled to 500 Hz by ``signals.preprocess`` (the
100 Hz files keep everything below 50 Hz and the pipeline band-passes at 0.5-40 Hz, so they are
faithful inputs; the data README says so). All go through the paper preprocessing
(``io.read_ecg`` + ``signals.preprocess``: 8 leads, 2,500 samples at 500 Hz).

Speed (single process, ``torch.set_num_threads(1)``, BLAS/OpenMP threads 1), on the same batch of
ECGs in the same run, in interleaved rounds (median over rounds; the machine is shared, so CPU time
is printed next to wall time):

- matplotlib reference, one figure per ECG (``render_ecg_reference(x[i])``: what a plot-and-save
  pipeline does; the issue's "about 60 ms per ECG"),
- matplotlib reference, one figure reused for the whole batch (``render_ecg_reference(x)``: the
  fastest honest use of matplotlib),
- the numpy renderer (``render_ecg``) and the torch renderer on the CPU (``render_ecg_torch``).

Ratios: numpy vs each reference. Target: >= 200x the matplotlib reference. A CUDA GPU, when
present, adds the torch renderer's throughput at batch 1024 (no GPU on the development machine:
GPU figures come from the lead's run on a lent GPU).

Parity on all 200 records: per-image mean |difference| (0-255) and IoU of the dark masks (< 128)
after a 3x3 dilation, numpy vs matplotlib (thresholds <= 8 and >= 0.8) and numpy vs torch (<= 1
grey level), for the three layouts (reference resized with PIL's default bicubic filter), and for
stack8 also against a reference resized with torchvision's bilinear filter. Writes ``outputs/render/bench_render.json`` and the
side-by-side figure ``outputs/render/render_comparison.png`` (plus one per other layout).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from heartbeit_lib import io  # noqa: E402
from heartbeit_lib import render
from heartbeit_lib import signals

REPO = Path(__file__).resolve().parents[1]
PTBXL = REPO.parent / "shared" / "data" / "ptbxl"


def load_ptbxl_200(root: Path) -> tuple[np.ndarray, list[str], list[int]]:
    """(200, 8, 2500) float32 microvolts: 150 records at 500 Hz + 50 at 100 Hz resampled; ids; rates."""
    hr = io.load_ptbxl(root, 500)
    lr = io.load_ptbxl(root, 100, database="ptbxl_database_100hz.csv")
    lr_only = lr[lr["filename_hr"].isna()].iloc[:50]
    xs, ids, rates = [], [], []
    for table, rate in ((hr, 500), (lr_only, 100)):
        for ecg_id, path in zip(table.index, table["path"]):
            rec = io.read_ecg(path)
            xs.append(signals.preprocess(rec.signal, rec.fs, rec.leads)[0])
            ids.append(f"ptbxl-{ecg_id}@{rate}Hz")
            rates.append(rate)
    return np.stack(xs).astype(np.float32), ids, rates


def _timed(fn, repeat: int = 1) -> tuple[float, float]:
    """(wall, cpu) seconds of ``repeat`` calls of ``fn``."""
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(repeat):
        fn()
    return time.perf_counter() - w0, time.process_time() - c0


def bench_speed(x: np.ndarray, rounds: int) -> dict:
    n = len(x)
    xt = torch.from_numpy(x)
    runners = {
        "matplotlib_fresh_figure": (lambda: [render.render_ecg_reference(x[i]) for i in range(n)], 1),
        "matplotlib_reused_figure": (lambda: render.render_ecg_reference(x), 1),
        "numpy": (lambda: render.render_ecg(x), 20),
        "torch_cpu": (lambda: render.render_ecg_torch(xt), 5),
    }
    for fn, _ in runners.values():  # warm-up: imports, layout caches, matplotlib font cache
        fn()
    per_ecg: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in runners}
    for _ in range(rounds):  # interleaved, so load from other processes hits every renderer alike
        for name, (fn, rep) in runners.items():
            wall, cpu = _timed(fn, rep)
            per_ecg[name]["wall"].append(wall / (rep * n))
            per_ecg[name]["cpu"].append(cpu / (rep * n))
    out = {}
    for name, t in per_ecg.items():
        out[name] = {"ms_per_ecg_wall": 1e3 * statistics.median(t["wall"]),
                     "ms_per_ecg_cpu": 1e3 * statistics.median(t["cpu"]),
                     "ecg_per_s_wall": 1.0 / statistics.median(t["wall"]),
                     "ecg_per_s_cpu": 1.0 / statistics.median(t["cpu"])}
    for ref in ("matplotlib_fresh_figure", "matplotlib_reused_figure"):
        for clock in ("wall", "cpu"):
            out[f"ratio_numpy_vs_{ref}_{clock}"] = out[ref][f"ms_per_ecg_{clock}"] / out["numpy"][f"ms_per_ecg_{clock}"]
    return out


def bench_gpu(x: np.ndarray, batch: int = 1024) -> dict | None:
    if not torch.cuda.is_available():
        return None
    dev = torch.device("cuda")
    xt = torch.from_numpy(np.resize(x, (batch,) + x.shape[1:])).to(dev)
    for _ in range(3):
        render.render_ecg_torch(xt)
    torch.cuda.synchronize()
    reps = 20
    t0 = time.perf_counter()
    for _ in range(reps):
        render.render_ecg_torch(xt)
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / reps
    same = np.abs(render.render_ecg_torch(xt[:64]).cpu().numpy().astype(int)
                  - render.render_ecg(x[:64] if len(x) >= 64 else np.resize(x, (64,) + x.shape[1:])).astype(int)).max()
    return {"device": torch.cuda.get_device_name(0), "batch": batch, "ecg_per_s": batch / dt,
            "ms_per_batch": 1e3 * dt, "max_diff_vs_numpy": int(same)}


def bench_parity(x: np.ndarray, rates: list[int]) -> dict:
    out = {}
    rates_a = np.asarray(rates)
    xt = torch.from_numpy(x)
    fast_by_layout = {}
    for layout in render.LAYOUTS:
        ref = render.render_ecg_reference(x, layout=layout)
        fast = fast_by_layout[layout] = render.render_ecg(x, layout=layout)
        tor = render.render_ecg_torch(xt, layout=layout).numpy()
        m = render.parity_metrics(ref, fast)
        mad, iou = m["mean_abs_diff"], m["iou_dilated"]
        res = {"n": len(x), "mad_mean": float(mad.mean()), "mad_median": float(np.median(mad)),
               "mad_max": float(mad.max()), "iou_mean": float(iou.mean()), "iou_min": float(iou.min()),
               "n_mad_over_8": int((mad > 8).sum()), "n_iou_under_0.8": int((iou < 0.8).sum()),
               "numpy_vs_torch_max_diff": int(np.abs(fast.astype(int) - tor.astype(int)).max()),
               "numpy_vs_torch_pixels_differing": int((fast != tor).sum()),
               "dark_fraction_reference": float((ref < 128).mean()), "dark_fraction_fast": float((fast < 128).mean())}
        for rate in (500, 100):
            sel = rates_a == rate
            res[f"mad_mean_{rate}hz"] = float(mad[sel].mean())
            res[f"iou_mean_{rate}hz"] = float(iou[sel].mean())
        out[layout] = res
    # the same with torchvision's resize filter (bilinear) in the reference, for comparison
    m = render.parity_metrics(render.render_ecg_reference(x, resample="bilinear"), fast_by_layout["stack8"])
    out["stack8_reference_bilinear"] = {"n": len(x), "mad_mean": float(m["mean_abs_diff"].mean()),
                                        "mad_max": float(m["mean_abs_diff"].max()),
                                        "iou_mean": float(m["iou_dilated"].mean()),
                                        "iou_min": float(m["iou_dilated"].min())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-time", type=int, default=32, help="ECGs in the timed batch")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (median)")
    ap.add_argument("--out", default=str(REPO / "outputs" / "render"), help="folder for the JSON and figures")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if not PTBXL.exists():
        raise SystemExit(f"{PTBXL} is missing: the benchmark needs the shared PTB-XL subset")
    t0 = time.perf_counter()
    x, ids, rates = load_ptbxl_200(PTBXL)
    print(f"loaded {len(x)} PTB-XL ECGs ({rates.count(500)} at 500 Hz, {rates.count(100)} at 100 Hz "
          f"resampled to 500 Hz) in {time.perf_counter() - t0:.1f} s; shape {x.shape}")

    speed = bench_speed(x[:args.n_time], args.rounds)
    print(f"\nspeed, one core, {args.n_time} ECGs, median of {args.rounds} interleaved rounds (224x224, stack8):")
    print(f"  {'renderer':28s} {'ms/ECG wall':>12s} {'ECG/s wall':>11s} {'ms/ECG cpu':>11s} {'ECG/s cpu':>10s}")
    for name in ("matplotlib_fresh_figure", "matplotlib_reused_figure", "numpy", "torch_cpu"):
        r = speed[name]
        print(f"  {name:28s} {r['ms_per_ecg_wall']:12.3f} {r['ecg_per_s_wall']:11.0f} "
              f"{r['ms_per_ecg_cpu']:11.3f} {r['ecg_per_s_cpu']:10.0f}")
    for ref in ("matplotlib_fresh_figure", "matplotlib_reused_figure"):
        print(f"  ratio numpy vs {ref:26s}: {speed[f'ratio_numpy_vs_{ref}_wall']:7.1f}x wall, "
              f"{speed[f'ratio_numpy_vs_{ref}_cpu']:7.1f}x cpu   (target >= 200x vs the reference)")

    gpu = bench_gpu(x)
    if gpu is None:
        print("\nGPU: no CUDA device here; torch renderer GPU throughput at batch 1024 comes from the lead's run")
    else:
        print(f"\nGPU {gpu['device']}: torch renderer {gpu['ecg_per_s']:.0f} ECG/s at batch {gpu['batch']} "
              f"({gpu['ms_per_batch']:.2f} ms/batch; max diff vs numpy {gpu['max_diff_vs_numpy']})")

    parity = bench_parity(x, rates)
    print(f"\nparity on {len(x)} PTB-XL records (thresholds: mean |diff| <= 8, dilated dark IoU >= 0.8):")
    for layout, p in parity.items():
        if layout not in render.LAYOUTS:
            print(f"  {layout}: mean|diff| mean {p['mad_mean']:.2f} max {p['mad_max']:.2f}; "
                  f"IoU mean {p['iou_mean']:.3f} min {p['iou_min']:.3f}")
            continue
        print(f"  {layout:12s} mean|diff| mean {p['mad_mean']:.2f} median {p['mad_median']:.2f} max {p['mad_max']:.2f}"
              f" (500 Hz {p['mad_mean_500hz']:.2f}, 100 Hz {p['mad_mean_100hz']:.2f}); "
              f"IoU mean {p['iou_mean']:.3f} min {p['iou_min']:.3f}; over/under threshold "
              f"{p['n_mad_over_8']}/{p['n_iou_under_0.8']}; numpy vs torch max {p['numpy_vs_torch_max_diff']} "
              f"({p['numpy_vs_torch_pixels_differing']} px differ)")

    out = Path(args.out)
    figs = [str(render.save_comparison_figure(x[[0, 1, 150]], out, titles=[ids[0], ids[1], ids[150]]))]
    for layout in ("grid4x2", "clinical3x4"):
        figs.append(str(render.save_comparison_figure(x[[0, 150]], out, layout=layout, titles=[ids[0], ids[150]],
                                                      filename=f"render_comparison_{layout}.png")))
    result = {"data": {"n": len(x), "n_500hz": rates.count(500), "n_100hz_resampled": rates.count(100)},
              "speed_224_stack8_one_core": speed, "gpu": gpu, "parity": parity, "figures": figs,
              "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                          "numpy": np.__version__, "torch": torch.__version__}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_render.json").write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out / 'bench_render.json'} and {', '.join(figs)}")


if __name__ == "__main__":
    main()
