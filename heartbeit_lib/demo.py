"""``make demo``: run the numbered notebooks in order on the embedded demo data.

Each step runs one notebook with papermill, parameters layered from ``parameters/<notebook>/demo.yaml``
(or ``ptbxl.yaml`` when ``PTBXL_ROOT`` is set) plus the upstream run folders, into
``outputs/<notebook>/demo/``. The chain ends with an index page linking every run's HTML rendering.

Usage: ``python -m heartbeit_lib.demo [--out-root outputs] [--only 01,02]``
"""

from __future__ import annotations

import argparse
import html
import os
import shutil
import sys
import time
from pathlib import Path

from . import runs

RUN_ID = "demo"


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-root", default=str(runs.REPO_ROOT / "outputs"))
    args = ap.parse_args(argv)
    out_root = Path(args.out_root).resolve()
    ptbxl = os.environ.get("PTBXL_ROOT", "")
    variant = "ptbxl" if ptbxl else "demo"
    available = {p.stem.split("_")[0]: p.stem for p in runs.NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb")}
    done: dict[str, Path] = {}
    t0 = time.time()

    if "01" in available:
        p = _params(available["01"], variant)
        if ptbxl:
            p.update(source="ptbxl", data_root=ptbxl)
        done["01"] = _step(available["01"], p, out_root)
    for key, upstream in (("02", {"cohort_run": "01"}),):
        if key in available and all(v in done for v in upstream.values()):
            p = _params(available[key], variant)
            p.update({k: str(done[v]) for k, v in upstream.items()})
            done[key] = _step(available[key], p, out_root)

    out_root.mkdir(parents=True, exist_ok=True)
    index = out_root / "demo_report.html"
    rows = []
    for key in sorted(done):
        for h in sorted(done[key].glob("*.html")):
            rows.append(f'<li><a href="{html.escape(os.path.relpath(h, out_root))}">{html.escape(h.stem)}</a>'
                        f" &mdash; {html.escape(str(done[key]))}</li>")
    index.write_text("<html><head><meta charset='utf-8'><title>HeartBEiT demo</title></head><body>"
                     "<h1>HeartBEiT demo report</h1><ul>" + "\n".join(rows) + "</ul></body></html>\n")
    print(f"[demo] finished in {time.time() - t0:.0f} s. Report: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
