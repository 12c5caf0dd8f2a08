"""Preprocessing throughput: vectorised ``signals.preprocess`` vs a naive per-record scipy loop.

Two measurements, fast path and reference side by side in the same run, ratio printed:

(a) read + preprocess + store on the PTB-XL subset in ``../shared/data/ptbxl`` (150 records at
    500 Hz from ``records500`` and 840 at 100 Hz from ``records100``): every record is read
    with ``heartbeit_lib.io.read_ecg``, preprocessed
    to float32 (N, 8, 2500) and written as one float16 ``.npy`` shard into a temporary folder.
    Fast: read all, one ``signals.preprocess`` call per sampling rate, one shard write.
    Naive: read, run the per-record scipy chain, append; same shard write. The file cache is
    warmed first so both sides read from memory.
(b) filter + median + truncate on an in-memory batch of ``--n-batch`` 12-lead 10 s records at
    500 Hz (real PTB-XL records tiled, or seeded random noise without the shared data).
    Fast: ``signals.preprocess(x, 500, leads)``. Naive: for each record, select I, II, V1-V6,
    ``scipy.signal.sosfiltfilt`` (the same SOS), ``scipy.ndimage.median_filter`` over the whole
    record, keep the first 2500 samples. Outputs are compared (max abs difference printed).

Usage: ``.venv/bin/python benchmarks/bench_preprocess.py [--n-batch 2000] [--data-root PATH]``
Single-threaded by design (scipy's IIR filter holds the GIL; the cohort builder parallelises
over processes). Target: >= 1,000 ECGs/s for (b) on a 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.ndimage
import scipy.signal

from heartbeit_lib import io as hio
from heartbeit_lib import signals

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PTBXL = REPO_ROOT.parent / "shared" / "data" / "ptbxl"
LEADS12 = ("I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6")


def read_record(path: Path) -> tuple[np.ndarray, float, tuple[str, ...]]:
    """(leads, samples) float32 microvolts, fs, lead names."""
    rec = hio.read_ecg(path)
    return rec.signal, float(rec.fs), tuple(rec.leads)


def naive_one(rec: np.ndarray, fs: float, leads: tuple[str, ...]) -> np.ndarray:
    """The straightforward per-record chain of scipy calls, float32 (8, 2500)."""
    idx = signals.lead_indices(leads)
    r = rec[idx].astype(np.float64)
    up, down = signals.rational_factors(fs, 500)
    if up != down:
        r = scipy.signal.resample_poly(r, up, down, axis=-1, padtype="line")
    r = scipy.signal.sosfiltfilt(SOS, r, axis=-1)
    r = scipy.ndimage.median_filter(r, size=(1, signals.MEDIAN_KERNEL), mode="nearest")
    return r[:, :signals.N_SAMPLES].astype(np.float32)


SOS = signals.butter_sos(500.0, signals.BAND, signals.ORDER)


def _timed(fn):
    """(result, wall seconds, CPU seconds of this process)."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def bench_ptbxl(root: Path) -> None:
    files = sorted((root / "records500").glob("*/*_hr.hea")) + sorted((root / "records100").glob("*/*_lr.hea"))
    if not files:
        print(f"(a) skipped: no PTB-XL records under {root}")
        return
    for f in files:  # warm the file cache so neither side pays for the disk
        f.read_bytes()
        f.with_suffix(".dat").read_bytes()

    def fast_side(tmp: Path) -> tuple[np.ndarray, dict[str, float]]:
        phases = {}
        recs, phases["read"], _ = _timed(lambda: [read_record(f) for f in files])
        groups: dict[tuple, list[int]] = {}
        for i, (_, fs, leads) in enumerate(recs):
            groups.setdefault((fs, leads), []).append(i)
        out = np.empty((len(recs), 8, signals.N_SAMPLES), np.float32)

        def run() -> None:
            for (fs, leads), ids in groups.items():  # one vectorised call per sampling rate
                out[ids] = signals.preprocess(np.stack([recs[i][0] for i in ids]), fs, leads)

        _, phases["preprocess"], _ = _timed(run)
        _, phases["store"], _ = _timed(lambda: np.save(tmp / "fast.npy", out.astype(np.float16)))
        return out, phases

    def naive_side(tmp: Path) -> np.ndarray:
        out = []
        for f in files:
            x, fs, leads = read_record(f)
            out.append(naive_one(x, fs, leads))
        out = np.stack(out)
        np.save(tmp / "naive.npy", out.astype(np.float16))
        return out

    with tempfile.TemporaryDirectory() as tmp:
        (fast, phases), wf, cf = _timed(lambda: fast_side(Path(tmp)))
        naive, wn, cn = _timed(lambda: naive_side(Path(tmp)))

    n = len(files)
    n500 = sum(1 for f in files if f.name.endswith("_hr.hea"))
    print(f"(a) PTB-XL read+preprocess+store, {n} records ({n500} at 500 Hz, {n - n500} at 100 Hz -> resampled):")
    print(f"    fast : {n / wf:8.0f} ECGs/s wall, {n / cf:6.0f} ECGs/s per CPU-second  (wall per phase: "
          + ", ".join(f"{k} {n / v:.0f}/s" for k, v in phases.items()) + "; store = one float16 .npy shard)")
    print(f"    naive: {n / wn:8.0f} ECGs/s wall, {n / cn:6.0f} ECGs/s per CPU-second  (per-record read + scipy chain)")
    print(f"    ratio fast/naive: {wn / wf:.2f}x wall, {cn / cf:.2f}x CPU   "
          f"max |fast - naive| = {np.abs(fast - naive).max():.2e} uV")


def bench_memory(n: int, root: Path, repeats: int) -> None:
    files = sorted((root / "records500").glob("*/*_hr.hea"))
    if files:
        recs = [read_record(f) for f in files[:150]]
        base = np.stack([r[0] for r in recs])
        leads = recs[0][2]
        src = f"{len(base)} real PTB-XL 500 Hz records tiled"
    else:
        base = np.random.default_rng(0).normal(0, 300, size=(150, 12, 5000)).astype(np.float32)
        leads = LEADS12
        src = "seeded random noise (no shared data)"
    x = np.ascontiguousarray(np.resize(base, (n,) + base.shape[1:]))  # (n, 12, 5000) float32 uV

    signals.preprocess(x[:64], 500, leads)  # warm-up (imports, caches)
    best = {"fast": (np.inf, np.inf), "naive": (np.inf, np.inf)}
    for _ in range(repeats):  # alternate the two sides so both see the same machine load
        fast, wf, cf = _timed(lambda: signals.preprocess(x, 500, leads))
        naive, wn, cn = _timed(lambda: np.stack([naive_one(rec, 500.0, leads) for rec in x]))
        best["fast"] = (min(best["fast"][0], wf), min(best["fast"][1], cf))
        best["naive"] = (min(best["naive"][0], wn), min(best["naive"][1], cn))
    (wf, cf), (wn, cn) = best["fast"], best["naive"]

    print(f"(b) filter+median+truncate in memory, {n} x (12, 5000) float32 at 500 Hz ({src}), "
          f"best of {repeats}:")
    print(f"    fast : {n / wf:8.0f} ECGs/s wall, {n / cf:6.0f} ECGs/s per CPU-second  "
          f"(signals.preprocess, chunks of {signals.CHUNK_SIZE}, one process)")
    print(f"    naive: {n / wn:8.0f} ECGs/s wall, {n / cn:6.0f} ECGs/s per CPU-second  "
          f"(per-record sosfiltfilt + ndimage.median_filter + slice)")
    print(f"    ratio fast/naive: {wn / wf:.2f}x wall, {cn / cf:.2f}x CPU   "
          f"max |fast - naive| = {np.abs(fast - naive).max():.2e} uV   "
          f"target >= 1000 ECGs/s wall: {'met' if n / wf >= 1000 else 'NOT met'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-batch", type=int, default=2000, help="records in the in-memory batch of (b)")
    ap.add_argument("--repeats", type=int, default=2, help="repeats of (b); the best time of each side is kept")
    ap.add_argument("--data-root", type=Path, default=DEFAULT_PTBXL, help="PTB-XL root (records500/, records100/)")
    args = ap.parse_args(argv)
    print(f"load average before the run: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores "
          f"(other processes share the CPUs; per-CPU-second figures are less sensitive to that)")
    bench_ptbxl(args.data_root)
    bench_memory(args.n_batch, args.data_root, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
