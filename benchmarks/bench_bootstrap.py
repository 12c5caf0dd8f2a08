"""Bootstrap AUROC + AUPRC: heartbeit_lib.analysis.metrics against a loop of scikit-learn calls.

The paper's LVEF internal test set: 128,687 predictions at 18.6% prevalence, 500 resamples.
Both sides use the same resample indices in the same run; the script prints both times, the
ratio and the largest absolute difference between the two sets of numbers.

    .venv/bin/python benchmarks/bench_bootstrap.py                        # full comparison
    .venv/bin/python benchmarks/bench_bootstrap.py --sklearn-resamples 50 # time 50 sklearn resamples, extrapolate

Scores are float32 probabilities (as a model writes them), so there are ties.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

from heartbeit_lib.analysis import metrics


def synthetic(n: int, prevalence: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(np.int64)
    logit = rng.normal(size=n) + 1.8 * y - 1.5
    return y, (1 / (1 + np.exp(-logit))).astype(np.float32).astype(np.float64)


def sklearn_loop(y: np.ndarray, s: np.ndarray, idx: np.ndarray, auprc_method: str) -> np.ndarray:
    out = np.empty((idx.shape[0], 2))
    for b, i in enumerate(idx):
        yy, ss = y[i], s[i]
        if auprc_method == "ap":
            pr = average_precision_score(yy, ss)
        else:
            p, r, _ = precision_recall_curve(yy, ss)
            pr = auc(r, p)
        out[b] = roc_auc_score(yy, ss), pr
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=128_687, help="predictions (paper's LVEF test set)")
    ap.add_argument("--prevalence", type=float, default=0.186)
    ap.add_argument("--n-boot", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--auprc-method", choices=metrics.AUPRC_METHODS, default="ap")
    ap.add_argument("--sklearn-resamples", type=int, default=None,
                    help="time sklearn on the first K resamples only and extrapolate (default: all)")
    ap.add_argument("--repeats", type=int, default=3, help="best of R timings for the project side")
    args = ap.parse_args(argv)

    y, s = synthetic(args.n, args.prevalence, args.seed)
    print(f"n={args.n:,} prevalence={y.mean():.3f} distinct scores={np.unique(s).size:,} "
          f"resamples={args.n_boot} auprc_method={args.auprc_method}")

    t0 = time.perf_counter()
    idx = metrics.bootstrap_indices(args.n, args.n_boot, seed=args.seed)
    t_idx = time.perf_counter() - t0

    times = []
    for _ in range(max(1, args.repeats)):
        t0 = time.perf_counter()
        st = metrics.bootstrap_metrics(y, s, idx, auprc_method=args.auprc_method)
        times.append(time.perf_counter() - t0)
    t_ours = min(times)

    k = args.n_boot if args.sklearn_resamples is None else max(1, min(args.sklearn_resamples, args.n_boot))
    t0 = time.perf_counter()
    ref = sklearn_loop(y, s, idx[:k], args.auprc_method)
    t_sk = time.perf_counter() - t0
    t_sk_full = t_sk * args.n_boot / k

    d_auroc = np.abs(st.boot_auroc[:k] - ref[:, 0]).max()
    d_auprc = np.abs(st.boot_auprc[:k] - ref[:, 1]).max()
    print(f"draw indices ({args.n_boot} x {args.n:,} int32):        {t_idx:8.3f} s")
    print(f"heartbeit_lib.analysis.metrics.bootstrap_metrics (best of {len(times)}): {t_ours:8.3f} s  "
          f"(with drawing the indices: {t_ours + t_idx:.3f} s)")
    extra = "" if k == args.n_boot else f"  (measured {t_sk:.2f} s on {k} resamples, extrapolated)"
    print(f"sklearn loop roc_auc_score + {'average_precision_score' if args.auprc_method == 'ap' else 'auc(pr curve)'}: "
          f"{t_sk_full:8.3f} s{extra}")
    print(f"speed-up: {t_sk_full / t_ours:.1f}x  (incl. index drawing: {t_sk_full / (t_ours + t_idx):.1f}x)")
    print(f"max |diff| on the {k} compared resamples: AUROC {d_auroc:.2e}, AUPRC {d_auprc:.2e}")
    print(f"resamples with both classes: {int(st.valid.sum())}/{args.n_boot}")
    ok = d_auroc < 1e-12 and d_auprc < 1e-12
    print("identical to 1e-12:", "yes" if ok else "NO")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
