"""``make demo``: run the numbered notebooks in order on the embedded demo data.

Steps (each a papermill run with its HTML rendering, parameters from ``parameters/<notebook>/demo.yaml``, or
``ptbxl.yaml`` where one exists when ``PTBXL_ROOT`` is set, plus the upstream run folders):

1. ``01_preprocess`` -> ``outputs/01_preprocess/demo``: the synthetic deepfake-ecg cohort (or PTB-XL, task ``mi``,
   when ``PTBXL_ROOT`` points at a PTB-XL root).
2. ``02_pretrain``   -> ``outputs/02_pretrain/demo``: a micro HeartBEiT, masked image modelling.
3. ``03_finetune``  -> ``outputs/03_finetune/<task>-<model>-f<fraction>-s0``: the sweep ``parameters/sweeps/demo.yaml``.
4. ``04_metrics``   -> ``outputs/04_metrics/demo``: tables, curves and the HTML report.
5. ``05_wasserstein`` -> ``outputs/05_wasserstein/demo`` (needs a natural-image folder: ``../shared/data/
   imagenet-samples`` or ``IMAGE_DIR``; skipped with a message otherwise).
6. ``06_saliency``  -> ``outputs/06_saliency/demo``.

The demo always starts fresh (it removes its own earlier run folders) and ends by printing where the report is.
Usage: ``python -m heartbeit_lib.demo [--out-root outputs]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import os
import shutil
import sys
import time
from pathlib import Path

from heartbeit_lib.pipeline import runs
from heartbeit_lib.pipeline import sweep

RUN_ID = "demo"
DEFAULT_IMAGES = runs.REPO_ROOT.parent / "shared" / "data" / "imagenet-samples"


def _params(nb: str, variant: str) -> dict:
    d = runs.PARAMETERS_DIR / nb
    f = d / f"{variant}.yaml"
    if not f.exists():
        f = d / "demo.yaml"
    return runs.load_parameter_files(f) if f.exists() else {}


def _step(nb: str, params: dict, out_root: Path) -> Path:
    run_dir = out_root / nb / RUN_ID
    if run_dir.exists():
        shutil.rmtree(run_dir)  # the demo always starts fresh
    t0 = time.time()
    print(f"[demo] {nb} ...", flush=True)
    runs.execute_notebook(nb, {**params, "out_root": str(out_root), "run_id": RUN_ID}, run_dir)
    print(f"[demo] {nb} done in {time.time() - t0:.0f} s -> {run_dir}", flush=True)
    return run_dir


def _finetune_sweep(out_root: Path, task: str, cohort: Path, pretrain: Path) -> Path:
    spec = sweep.load_sweep(runs.PARAMETERS_DIR / "sweeps" / "demo.yaml", out_root=str(out_root))
    spec = dataclasses.replace(spec, grid={**spec.grid, "task": [task]},
                               params={**spec.params, "cohort_run": str(cohort), "pretrain_run": str(pretrain)})
    for combo in spec.combinations():
        if spec.run_dir(combo).exists():
            shutil.rmtree(spec.run_dir(combo))
    t0 = time.time()
    print(f"[demo] 03_finetune sweep ({len(spec.combinations())} runs) ...", flush=True)
    summary = sweep.run_sweep(spec, executor="papermill", progress=False)
    if not summary.ok:
        raise RuntimeError(f"demo fine-tuning runs failed:\n{summary}")
    print(f"[demo] 03_finetune done in {time.time() - t0:.0f} s", flush=True)
    return out_root / "03_finetune"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-root", default=str(runs.REPO_ROOT / "outputs"))
    args = ap.parse_args(argv)
    out_root = Path(args.out_root).resolve()
    ptbxl = os.environ.get("PTBXL_ROOT", "")
    variant = "ptbxl" if ptbxl else "demo"
    image_dir = Path(os.environ.get("IMAGE_DIR", DEFAULT_IMAGES))
    t0 = time.time()
    pages: list[Path] = []

    p01 = _params("01_preprocess", "ptbxl_subset_mi" if ptbxl else "demo")
    if ptbxl:
        p01.update(source="ptbxl", data_root=ptbxl)
    cohort = _step("01_preprocess", p01, out_root)
    task = p01.get("task", "demo")
    pretrain = _step("02_pretrain", {**_params("02_pretrain", "demo"), "cohort_run": str(cohort)}, out_root)
    ft_root = _finetune_sweep(out_root, task, cohort, pretrain)
    ft_runs = sorted(p for p in ft_root.glob(f"{task}-*-s0") if runs.is_complete(p))
    metrics = _step("04_metrics", {**_params("04_metrics", "demo"), "finetune_root": str(ft_root)}, out_root)
    pages += [cohort, pretrain, *ft_runs, metrics]
    if image_dir.is_dir():
        pages.append(_step("05_wasserstein", {**_params("05_wasserstein", variant), "cohort_run": str(cohort),
                                              "image_dir": str(image_dir)}, out_root))
    else:
        print(f"[demo] 05_wasserstein skipped: no natural-image folder at {image_dir} (set IMAGE_DIR)", flush=True)
    pages.append(_step("06_saliency", {**_params("06_saliency", "demo"), "cohort_run": str(cohort),
                                       "finetune_runs": [str(r) for r in ft_runs]}, out_root))

    index = out_root / "demo_report.html"
    rows = []
    for run_dir in pages:
        for h in sorted(run_dir.glob("*.html")):
            rows.append(f'<li><a href="{html.escape(os.path.relpath(h, out_root))}">'
                        f"{html.escape(os.path.relpath(h, out_root))}</a></li>")
    index.write_text("<html><head><meta charset='utf-8'><title>HeartBEiT demo</title></head><body>"
                     "<h1>HeartBEiT demo report</h1><p>Synthetic demo data unless PTBXL_ROOT was set.</p><ul>"
                     + "\n".join(rows) + "</ul></body></html>\n")
    print(f"[demo] finished in {time.time() - t0:.0f} s")
    print(f"[demo] report: {index}")
    print(f"[demo] metrics report: {metrics / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
