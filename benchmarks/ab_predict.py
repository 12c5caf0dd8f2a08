"""07 end to end for two checkouts side by side: ECGs/s of the code in A and in B, in interleaved rounds, and the
median of the paired ratios B / A (what a speed change is worth on a machine whose speed drifts between minutes).

Run from the repository root, with another checkout of this repository (``git worktree add /tmp/old <commit>``)::

    .venv/bin/python benchmarks/ab_predict.py /tmp/old . --reps 6        # ~3.5 minutes on 2 CPU cores

Each round runs ``predict.run`` (``pictures: none``) once per checkout, in the order A, B, each in a new Python
process importing that checkout's ``heartbeit_lib`` (checked), on one folder of ``--n`` copies of the readable shared
MUSE files; the micro ViT run folder (random weights) is written by each checkout's own
``benchmarks/bench_predict.finished_run``. ``workers`` is each checkout's default unless ``--workers-a`` /
``--workers-b`` give it. Prints every round (ECGs/s, CPU ms per ECG in the scoring process and in its reader
processes) and writes ``outputs/predict/ab_predict.json``.

Measured 2026-12-08 (2 cores, quiet: load 0.65 at the start; 512 files, 6 rounds, 3.4 minutes): A = commit ea58da0
(before the speed work; its default 1 worker reads in the scoring process) 99.1 ECG/s median, B = df2c6a8 (2 forked
readers) 190.1; paired ratio 2.03x (rounds 1.63-2.43x); CPU per ECG A 11.9-15.5 ms, B 2.9-4.2 + 4.5-6.7 ms.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import resource, sys, time
from pathlib import Path
code, folder, out, workers = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
sys.path[:0] = [code, code + "/benchmarks"]
import bench_predict as bp
import heartbeit_lib
from heartbeit_lib.pipeline import predict
assert Path(heartbeit_lib.__file__).resolve().is_relative_to(Path(code).resolve()), heartbeit_lib.__file__
run = bp.finished_run(out, "vit_b16_scratch", "micro", 224)
kw = {} if workers == "default" else {"workers": int(workers)}
cfg = predict.PredictConfig(finetune_runs=(str(run),), data_root=str(folder), source="muse", pictures="none",
                            device="cpu", n_boot=500, out_root=str(out / "out"), run_id="ab", **kw)
children = lambda: (lambda r: r.ru_utime + r.ru_stime)(resource.getrusage(resource.RUSAGE_CHILDREN))
n = len(list(folder.iterdir()))
t0, c0, k0 = time.perf_counter(), time.process_time(), children()
predict.run(cfg)
wall = time.perf_counter() - t0
print(n / wall, 1e3 * (time.process_time() - c0) / n, 1e3 * (children() - k0) / n)
"""


def one_run(code: Path, folder: Path, workers: str) -> dict:
    """ECGs/s and CPU ms per ECG of one ``predict.run`` of the checkout ``code`` (a new Python process)."""
    with tempfile.TemporaryDirectory() as out:
        res = subprocess.run([sys.executable, "-c", CHILD, str(code), str(folder), out, workers],
                             capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"{code}: predict.run failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    ecg_s, main_ms, readers_ms = map(float, res.stdout.split()[-3:])
    return {"ecg_per_s": ecg_s, "cpu_ms_per_ecg": {"this_process": main_ms, "readers": readers_ms}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", type=Path, help="checkout A (e.g. the older commit)")
    ap.add_argument("b", type=Path, help="checkout B (e.g. this one)")
    ap.add_argument("--n", type=int, default=512, help="MUSE files (copies of the shared ones)")
    ap.add_argument("--reps", type=int, default=6, help="interleaved rounds")
    ap.add_argument("--workers-a", default="default")
    ap.add_argument("--workers-b", default="default")
    ap.add_argument("--out", default=str(REPO / "outputs" / "predict" / "ab_predict.json"))
    args = ap.parse_args()
    for code in (args.a, args.b):
        if not (code / "heartbeit_lib").is_dir() or not (code / "benchmarks" / "bench_predict.py").is_file():
            ap.error(f"{code}: not a checkout of this repository (no heartbeit_lib/ or benchmarks/bench_predict.py)")
    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_predict as bp  # the readable shared MUSE files (imports torch: after the arguments are checked)

    files = bp.readable_files(bp.MUSE)
    if not files:
        ap.error(f"no readable MUSE files under {bp.MUSE}")
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "muse"
        folder.mkdir()
        for i in range(args.n):
            shutil.copy(files[i % len(files)], folder / f"{i:05d}_{files[i % len(files)].name}")
        for r in range(args.reps):
            a = one_run(args.a.resolve(), folder, args.workers_a)
            b = one_run(args.b.resolve(), folder, args.workers_b)
            rounds.append({"a": a, "b": b, "ratio": b["ecg_per_s"] / a["ecg_per_s"]})
            print(f"round {r + 1}: A {a['ecg_per_s']:.1f} ECG/s, B {b['ecg_per_s']:.1f}, B/A {rounds[-1]['ratio']:.2f}"
                  f" (CPU ms per ECG A {a['cpu_ms_per_ecg']}, B {b['cpu_ms_per_ecg']})", flush=True)
    result = {
        "a": str(args.a.resolve()), "b": str(args.b.resolve()), "n": args.n, "reps": args.reps,
        "workers": {"a": args.workers_a, "b": args.workers_b},
        "median_ecg_per_s": {k: statistics.median(x[k]["ecg_per_s"] for x in rounds) for k in ("a", "b")},
        "median_ratio_b_over_a": statistics.median(x["ratio"] for x in rounds),
        "rounds": rounds,
    }
    print(json.dumps({k: result[k] for k in ("median_ecg_per_s", "median_ratio_b_over_a")}, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
