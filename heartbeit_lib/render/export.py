"""PNG export of a cohort store and the ``python -m heartbeit_lib.render export`` command line."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from heartbeit_lib.render.geometry import LAYOUTS, RenderError
from heartbeit_lib.render.numpy_renderer import render_ecg


def _safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(s)).strip("._") or "ecg"


def export_pngs(cohort_run: str | os.PathLike, out_dir: str | os.PathLike, size: int = 224,
                layout: str = "stack8", splits: Sequence[str] | None = None, batch_size: int = 256,
                **style) -> Path:
    """Write ``out_dir/<split>/<label>/<record_id>.png`` for a cohort store, plus ``out_dir/index.csv``.

    Parameters
    ----------
    cohort_run : an ``outputs/01_preprocess/<run_id>/`` folder (read with ``cohorts.CohortStore``).
    out_dir : destination folder (created). Label folders are ``0``/``1`` and ``unlabelled`` (-1),
        i.e. ``torchvision.datasets.ImageFolder``-ready per split.
    splits : splits to export (default: every split in the manifest).

    Returns
    -------
    Path of ``index.csv`` (record_id, split, label, path relative to ``out_dir``, store row).
    """
    import pandas as pd
    from PIL import Image

    from heartbeit_lib import cohorts

    store = cohorts.CohortStore(cohort_run)
    man = store.manifest
    split_of = man["split"].astype(str).to_numpy()
    labels = man["label"].to_numpy()
    record_ids = man["record_id"].astype(str).to_numpy()
    available = list(dict.fromkeys(split_of))
    wanted = available if not splits else list(splits)
    bad = [s for s in wanted if s not in available]
    if bad:
        raise RenderError(f"--split {bad}: not in the store {cohort_run} (splits there: {available})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records, used = [], set()
    for split in wanted:
        rows = np.flatnonzero(split_of == split)
        for k in range(0, rows.size, batch_size):
            chunk = rows[k:k + batch_size]
            imgs = render_ecg(store.signals(chunk), size, layout, **style)
            for row, img in zip(chunk, imgs):
                label = int(labels[row])
                folder = out / split / (str(label) if label >= 0 else "unlabelled")
                folder.mkdir(parents=True, exist_ok=True)
                rel = folder.relative_to(out) / f"{_safe_name(record_ids[row])}.png"
                if str(rel) in used:  # duplicate record ids stay distinct files
                    rel = rel.with_name(f"{rel.stem}-row{row}.png")
                used.add(str(rel))
                Image.fromarray(img).save(out / rel)
                records.append(dict(record_id=record_ids[row], split=split, label=label,
                                    path=str(rel), row=int(row)))
    index = out / "index.csv"
    pd.DataFrame(records, columns=["record_id", "split", "label", "path", "row"]).to_csv(index, index=False)
    return index


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m heartbeit_lib.render export <cohort_run> <out_dir> [--size --layout --split]``."""
    parser = argparse.ArgumentParser(prog="python -m heartbeit_lib.render",
                                     description="ECG image rendering utilities.")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="write PNG folders <out_dir>/<split>/<label>/<record_id>.png")
    ex.add_argument("cohort_run", help="cohort store folder (outputs/01_preprocess/<run_id>)")
    ex.add_argument("out_dir", help="destination folder")
    ex.add_argument("--size", type=int, default=224, help="image size in pixels (square)")
    ex.add_argument("--layout", default="stack8", choices=LAYOUTS)
    ex.add_argument("--split", action="append", default=None,
                    help="split to export (repeatable or comma-separated; default: all)")
    ex.add_argument("--linewidth", type=float, default=1.0, help="trace width in output pixels")
    args = parser.parse_args(argv)
    splits = None if not args.split else [s for arg in args.split for s in arg.split(",") if s]
    try:
        index = export_pngs(args.cohort_run, args.out_dir, size=args.size, layout=args.layout, splits=splits,
                            linewidth=args.linewidth)
    except ValueError as e:  # RenderError, cohorts.StoreError, ...: a message, not a traceback
        parser.exit(2, f"{parser.prog} export: error: {e}\n")
    print(f"wrote {index}")
    return 0


