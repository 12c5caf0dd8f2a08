"""``make demo``: run the numbered notebooks in order on the embedded demo data.

Steps (each a papermill run with its HTML rendering, parameters from ``parameters/<notebook>/demo.yaml``, or
``ptbxl.yaml`` where one exists when ``PTBXL_ROOT`` is set, plus the upstream run folders):

1. ``01_preprocess`` -> ``outputs/01_preprocess/demo``: the synthetic deepfake-ecg cohort (or PTB-XL, task ``mi``,
   when ``PTBXL_ROOT`` points at a PTB-XL root).
2. ``02_pretrain``   -> ``outputs/02_pretrain/demo``: a micro HeartBEiT, masked image modelling.
3. ``03_finetune``  -> ``outputs/03_finetune/<task>-<model>-f<fraction>-s0``: the sweep ``parameters/sweeps/demo.yaml``
   (HeartBEiT at 100 % as a notebook, the other runs inline: the same run folders without a kernel each).
4. ``04_metrics``   -> ``outputs/04_metrics/demo``: tables, curves and the HTML report.
5. ``05_wasserstein`` -> ``outputs/05_wasserstein/demo`` (needs a natural-image folder: ``../shared/data/
   imagenet-samples`` or ``IMAGE_DIR``; skipped with a message otherwise).
6. ``06_saliency``  -> ``outputs/06_saliency/demo``.
7. ``07_predict``   -> ``outputs/07_predict/demo``: the HeartBEiT run at 100 % scores the held-apart external site.

The demo always starts fresh (it removes its own earlier run folders) and ends on ``outputs/demo_report.html``, one
page a person reads without clicking (:func:`write_demo_page`): what the data is, Table 2, the fraction curves,
the pretraining curve, rendered and masked examples, a saliency overlay, the Wasserstein bars, the prediction on
held-apart ECGs, then links to every run. Each stage's wall and CPU seconds are printed and kept in
``demo_timings.json``.
Usage: ``python -m heartbeit_lib.demo [--out-root outputs]``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from heartbeit_lib import safety
from heartbeit_lib.pipeline import runs
from heartbeit_lib.pipeline import sweep
from heartbeit_lib.report.summary_page import Link, PageFigure, PageTable, Section, write_summary_page

RUN_ID = "demo"
TIMINGS = "demo_timings.json"  # under out_root: the last demo's wall time per stage, cores and load
# the last measurement: `make demo` on 2 cores with nothing else running (load 1.9 at the start, 1.2 at the end),
# 2026-12-07: 417 s in the demo (431 s with make), 484 CPU s; per stage wall s (CPU s)
MEASURED_SECONDS = 417  # make demo's wall time on 2 quiet cores (2026-12-07); per stage below
MEASURED = (f"{MEASURED_SECONDS} s on 2 quiet cores: 01 45 (64), 02 221 (223), 03 67 (107; 8 runs), 04 18 (18), "
            "05 17 (18), 06 28 (34), 07 20 (20)")


def expected_duration(out_root: Path) -> str:
    """What the demo says before it starts: the last demo's wall time on this machine (its ``demo_timings.json``:
    seconds, cores, load average at its start; also the CPU seconds of each stage) when there is one, else the
    documented measurement (:data:`MEASURED`)."""
    try:
        last = json.loads((out_root / TIMINGS).read_text())
        return (f"about {last['seconds'] / 60:.0f} min: the last demo here took {last['seconds']:.0f} s on "
                f"{last['cpu_count']} cores at load {last['load_start']:.1f} (now {os.getloadavg()[0]:.1f})")
    except (OSError, ValueError, KeyError, TypeError):
        return (f"about {MEASURED_SECONDS / 60:.0f} min: {MEASURED}; a busier machine takes longer "
                f"(load now {os.getloadavg()[0]:.1f})")


DEFAULT_IMAGES = runs.REPO_ROOT.parent / "shared" / "data" / "imagenet-samples"


def _params(nb: str, variant: str) -> dict:
    d = runs.PARAMETERS_DIR / nb
    f = d / f"{variant}.yaml"
    if not f.exists():
        f = d / "demo.yaml"
    return runs.load_parameter_files(f) if f.exists() else {}


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its children that have ended (the notebook kernels and,
    through them, their worker processes)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


STAGE_TIMES: dict[str, dict[str, float]] = {}  # stage -> wall_s, cpu_s of this demo (written to TIMINGS)


@contextlib.contextmanager
def _timed(name: str):
    """Record the stage's wall and CPU seconds in :data:`STAGE_TIMES` and print them. CPU seconds travel between
    machines better than wall time on a shared one: with one thread per process, a quiet machine's wall time is
    about the CPU time (less where 01's two build workers overlap)."""
    t0, c0 = time.perf_counter(), cpu_seconds()
    print(f"[demo] {name} ...", flush=True)
    yield
    STAGE_TIMES[name] = {"wall_s": time.perf_counter() - t0, "cpu_s": cpu_seconds() - c0}
    print(f"[demo] {name} done in {STAGE_TIMES[name]['wall_s']:.0f} s ({STAGE_TIMES[name]['cpu_s']:.0f} CPU s)",
          flush=True)


def _step(nb: str, params: dict, out_root: Path) -> Path:
    run_dir = out_root / nb / RUN_ID
    if run_dir.exists():
        safety.remove_tree(run_dir, out_root)  # the demo always starts fresh (only inside out_root)
    with _timed(nb):
        runs.execute_notebook(nb, {**params, "out_root": str(out_root), "run_id": RUN_ID}, run_dir)
    return run_dir


def _finetune_sweep(out_root: Path, task: str, cohort: Path, pretrain: Path) -> Path:
    """The demo sweep: HeartBEiT at 100 % through the 03 notebook (papermill, with its HTML: the notebook the demo
    shows), the other runs inline (``sweep.inline_executor``: the same run folders without a Jupyter kernel each,
    whose start-up, imports and HTML rendering cost about as much as a micro model's 10 epochs)."""
    spec = sweep.load_sweep(runs.PARAMETERS_DIR / "sweeps" / "demo.yaml", out_root=str(out_root))
    spec = dataclasses.replace(spec, grid={**spec.grid, "task": [task]},
                               params={**spec.params, "cohort_run": str(cohort), "pretrain_run": str(pretrain)})
    for combo in spec.combinations():
        if spec.run_dir(combo).exists():
            safety.remove_tree(spec.run_dir(combo), out_root)
    shown = dataclasses.replace(spec, only={"model": ["heartbeit"], "fraction": [max(spec.grid["fraction"])]})
    with _timed(f"03_finetune ({len(spec.combinations())} runs, 1 as a notebook)"):
        for part, runner in ((shown, "papermill"), (spec, "inline")):  # the second skips the complete first
            summary = sweep.run_sweep(part, executor=runner, progress=False)
            if not summary.ok:
                raise RuntimeError(f"demo fine-tuning runs failed:\n{summary}")
    return out_root / "03_finetune"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-root", default=str(runs.REPO_ROOT / "outputs"))
    args = ap.parse_args(argv)
    out_root = Path(args.out_root).resolve()
    ptbxl = os.environ.get("PTBXL_ROOT", "")
    variant = "ptbxl" if ptbxl else "demo"
    image_dir = Path(os.environ.get("IMAGE_DIR", DEFAULT_IMAGES))
    print(f"[demo] notebooks 01-07 on {'PTB-XL' if ptbxl else 'the synthetic demo data'}: "
          f"{expected_duration(out_root)}", flush=True)
    t0, load_start, cpu0 = time.time(), os.getloadavg()[0], cpu_seconds()

    p01 = _params("01_preprocess", "ptbxl_subset_mi" if ptbxl else "demo")
    if ptbxl:
        p01.update(source="ptbxl", data_root=ptbxl)
    cohort = _step("01_preprocess", p01, out_root)
    task = p01.get("task", "demo")
    pretrain = _step("02_pretrain", {**_params("02_pretrain", "demo"), "cohort_run": str(cohort)}, out_root)
    ft_root = _finetune_sweep(out_root, task, cohort, pretrain)
    ft_runs = sorted(p for p in ft_root.glob(f"{task}-*-s0") if runs.is_complete(p))
    metrics = _step("04_metrics", {**_params("04_metrics", "demo"), "finetune_root": str(ft_root)}, out_root)
    stages: dict[str, Path] = {"01_preprocess": cohort, "02_pretrain": pretrain, "04_metrics": metrics}
    if image_dir.is_dir():
        stages["05_wasserstein"] = _step("05_wasserstein", {**_params("05_wasserstein", variant),
                                                            "cohort_run": str(cohort), "image_dir": str(image_dir)},
                                         out_root)
    else:
        print(f"[demo] 05_wasserstein skipped: no natural-image folder at {image_dir} (set IMAGE_DIR)", flush=True)
    stages["06_saliency"] = _step("06_saliency", {**_params("06_saliency", "demo"), "cohort_run": str(cohort),
                                                  "finetune_runs": [str(r) for r in ft_runs]}, out_root)

    ref = _predict_run(ft_runs)
    if ref is not None:
        held_apart = "test" if ptbxl else "external"  # PTB-XL folds have no external site: fold 10 stands in
        stages["07_predict"] = _step("07_predict", {**_params("07_predict", "demo"), "cohort_run": str(cohort),
                                                    "split": held_apart, "finetune_runs": [str(ref)]}, out_root)
    index = write_demo_page(out_root / "demo_report.html", stages, ft_runs, synthetic=not ptbxl)
    cpu = cpu_seconds() - cpu0
    print(f"[demo] finished in {time.time() - t0:.0f} s ({cpu:.0f} CPU s)")
    runs.write_json(out_root / TIMINGS, {"seconds": time.time() - t0, "cpu_seconds": cpu,
                                         "cpu_count": os.cpu_count(), "load_start": load_start,
                                         "load_end": os.getloadavg()[0], "stages": STAGE_TIMES})
    print(f"[demo] report: {index}")
    print(f"[demo] metrics report: {metrics / 'report.html'}")
    return 0


def _predict_run(ft_runs: Sequence[Path]) -> Path | None:
    """The run 07 scores the held-apart ECGs with: HeartBEiT at 100 % of the training data, else the first image
    model at 100 % (signal models have no rendering to reproduce), else None."""
    full = [r for r in ft_runs if "-f1.0-" in r.name]
    image = [r for r in full if (r / "model.json").is_file()]
    return next((r for r in image if _run_config(r).get("model") == "heartbeit"), image[0] if image else None)


def _run_config(run_dir: Path) -> dict:
    return runs.read_run_config(run_dir) if (Path(run_dir) / "config.yaml").is_file() else {}


def _first(folder: Path | None, pattern: str) -> list[Path]:
    """The first file matching ``pattern`` under ``folder`` (a list of 0 or 1 paths)."""
    found = sorted(folder.glob(pattern)) if folder is not None and folder.is_dir() else []
    return found[:1]


def _figures(items: Sequence[tuple[list[Path], str]]) -> list[PageFigure]:
    return [PageFigure(p, caption) for paths, caption in items for p in paths]


def _table(path: Path, caption: str, columns: Sequence[str] | None = None) -> list[PageTable]:
    if not path.is_file():
        return []
    df = pd.read_csv(path)
    df = df.rename(columns=lambda c: f"{float(c) * 100:g} % of training data" if _is_number(c) else c)  # fractions
    if columns is not None:
        df = df[[c for c in columns if c in df.columns]]
    return [PageTable(df, caption)]


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


PREDICT_COLUMNS = ("data", "n", "n_pos", "auroc", "auroc_lo", "auroc_hi", "auprc", "brier", "ece", "slope",
                   "sensitivity", "specificity", "ppv", "npv")


def demo_sections(stages: Mapping[str, Path], ft_runs: Sequence[Path]) -> list[Section]:
    """The page's sections from the run folders (a stage that did not run, or a file it did not write, is
    left out, never shown as a broken image)."""
    m, pre, sal, was, pred = (stages.get(k) for k in ("04_metrics", "02_pretrain", "06_saliency", "05_wasserstein",
                                                      "07_predict"))
    models = sorted({str(_run_config(r).get("model", r.name)) for r in ft_runs})
    secs = [Section("Table 2: AUROC by model and training fraction",
                    f"Fine-tuned models: {', '.join(models) or 'none'}. 95 % bootstrap intervals; the best model "
                    "of each column in the 04_metrics report is bold.",
                    _table(m / "tables" / "table2_auroc.csv", "Table 2 (AUROC, 95 % CI)") if m else [],
                    _figures([(_first(m, "figures/fraction_*_test.png"), "AUROC against training fraction, "
                               "internal test split"),
                              (_first(m, "figures/fraction_*_external.png"), "... and the external site")])),
            Section("Pretraining (masked image modelling)", "",
                    figures=_figures([(_first(pre, "pretrain_curve.png"), "pretraining loss and masked-token accuracy"),
                                      (_first(pre, "examples.png"), "rendered ECG images and their masked patches")])),
            Section("Saliency", "Where a fine-tuned model looks on one positive ECG (06_saliency).",
                    figures=_figures([(_first(sal, "overlays/*.png"), "saliency overlay")])),
            Section("Wasserstein distances", "How far ECG images are from natural images (05_wasserstein).",
                    figures=_figures([(_first(was, "supp_fig9_wasserstein.png"), "mean pixel Wasserstein distance "
                                       "per comparison")]))]
    if pred is not None:
        secs.append(Section("Prediction on held-apart ECGs (07_predict)",
                            "ECGs held apart from training and model selection (the demo's external site; fold 10 "
                            "with PTBXL_ROOT), scored by one trained run; the threshold was chosen on that run's "
                            "validation split.",
                            _table(pred / "validation.csv", "internal test split vs held-apart ECGs", PREDICT_COLUMNS),
                            _figures([(_first(pred, "reliability.png"), "reliability diagram"),
                                      (_first(pred, "pictures/*.png"), "the highest-scoring held-apart ECG")])))
    return [s for s in secs if s.tables or s.figures]


def write_demo_page(path: str | os.PathLike, stages: Mapping[str, Path], ft_runs: Sequence[Path],
                    synthetic: bool = True) -> Path:
    """``demo_report.html``: the one page the demo ends on (sections of :func:`demo_sections`, figures embedded),
    then links to every run's HTML pages (relative to the page)."""
    path = Path(path)
    intro = ("The numbered notebooks 01-07 run end to end on a small cohort: build the store, pretrain a micro "
             "HeartBEiT by masked image modelling, fine-tune it and models trained from scratch at several training "
             "fractions, compare them with bootstrap intervals, measure image distances, explain the models and "
             "score held-apart ECGs with a trained model.")
    notice = ("Synthetic data: the ECGs are generated (deepfake-ecg) and the positives carry an injected anterior ST "
              "elevation. The models are tiny and trained for minutes; nothing here says anything clinical."
              if synthetic else "PTB-XL subset with tiny CPU models: a smoke test, not a benchmark.")
    links = []
    for run_dir in [*(stages[k] for k in sorted(stages)), *ft_runs]:
        for h in sorted(Path(run_dir).glob("*.html")):
            links.append(Link(os.path.relpath(h, path.parent), os.path.relpath(h, path.parent)))
    return write_summary_page(path, "HeartBEiT demo", intro, demo_sections(stages, ft_runs), links, notice=notice)


if __name__ == "__main__":
    sys.exit(main())
