"""Fine-tuning sweeps: ``notebooks/03_finetune.ipynb`` once per (task, model, fraction, seed).

Usage::

    python -m heartbeit_lib.sweep parameters/sweeps/paper.yaml            # papermill, HTML per run
    python -m heartbeit_lib.sweep parameters/sweeps/cpu_tiny.yaml --dry-run
    python -m heartbeit_lib.sweep parameters/sweeps/cpu_tiny.yaml --in-process   # same steps, no kernel

A sweep file (plain YAML)::

    name: paper                 # names the summary file
    notebook: 03_finetune       # optional (default)
    out_root: outputs           # run folders: <out_root>/03_finetune/<task>-<model>-f<fraction>-s<seed>/
    grid:                       # lists; every combination runs (order: task, model, fraction, seed)
      task: [hcm]
      model: [heartbeit, vit_b16, efficientnet_b4, resnet152]
      fraction: [0.01, 0.1, 0.25, 0.5, 1.0]
      seed: [0]
    params:                     # fixed notebook parameters; "{task}" etc. are filled in per run
      cohort_run: outputs/01_preprocess/{task}
      pretrain_run: outputs/02_pretrain/paper
      epochs: 30
    per_model:                  # optional overrides for one model (e.g. a weights file)
      vit_b16: {weights: /data/weights/vit_b16.safetensors}

Every key under ``grid``/``params``/``per_model`` must be a notebook parameter; all combinations
are validated against :class:`~heartbeit_lib.pipeline.finetune.FinetuneConfig` before the first one runs.

Resumability: a combination whose run folder is complete (``runs.is_complete`` and a
``metrics.json``) is skipped; a folder left half-written by a crash or a failure is deleted and
the combination runs again. A failing combination is recorded (error type and message, in the
summary file ``<out_root>/03_finetune/sweep-<name>.json``) and the sweep goes on; the exit code is
1 when any failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml
from tqdm.auto import tqdm

from heartbeit_lib.pipeline import finetune
from heartbeit_lib.pipeline import runs

GRID_KEYS = ("task", "model", "fraction", "seed")
NOTEBOOK = "03_finetune"


class SweepError(runs.ConfigError):
    """A sweep file is malformed (unknown keys, missing grid entries, invalid parameter values)."""


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep file (see the module docstring)."""

    name: str
    grid: dict[str, list]
    params: dict[str, Any]
    per_model: dict[str, dict[str, Any]]
    out_root: str = "outputs"
    notebook: str = NOTEBOOK
    source: str = ""

    def combinations(self) -> list[dict[str, Any]]:
        """One dict per run, in grid order (task, model, fraction, seed, then any extra grid keys)."""
        keys = list(GRID_KEYS) + [k for k in self.grid if k not in GRID_KEYS]
        return [dict(zip(keys, vals)) for vals in itertools.product(*(self.grid[k] for k in keys))]

    def run_dir(self, combo: Mapping[str, Any]) -> Path:
        return Path(self.out_root) / NOTEBOOK / self.run_id(combo)

    def run_id(self, combo: Mapping[str, Any]) -> str:
        rid = finetune.run_name(combo["task"], combo["model"], combo["fraction"], combo["seed"])
        extra = [k for k in combo if k not in GRID_KEYS]
        return rid + "".join(f"-{k}{combo[k]}" for k in extra)

    def params_for(self, combo: Mapping[str, Any]) -> dict[str, Any]:
        """The notebook parameters of one combination (fixed params formatted with the combo)."""
        fmt = {k: v for k, v in combo.items()}
        p = {k: (v.format(**fmt) if isinstance(v, str) else v) for k, v in self.params.items()}
        p.update({k: (v.format(**fmt) if isinstance(v, str) else v)
                  for k, v in self.per_model.get(combo["model"], {}).items()})
        p.update(combo)
        p.update(out_root=self.out_root, run_id=self.run_id(combo))
        return p


_TOP_KEYS = {"name", "notebook", "out_root", "grid", "params", "per_model"}


def load_sweep(path: str | Path, out_root: str | None = None) -> SweepSpec:
    """Parse and validate a sweep YAML file.

    Raises
    ------
    SweepError : unknown top-level keys, a missing grid key, a parameter the notebook does not take,
        or a combination whose parameters fail :class:`FinetuneConfig` validation.
    """
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise SweepError(f"sweep file {path}: must hold a mapping")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise SweepError(f"sweep file {path}: unknown key(s) {sorted(unknown)}; allowed {sorted(_TOP_KEYS)}")
    grid = data.get("grid") or {}
    missing = [k for k in GRID_KEYS if k not in grid]
    if missing:
        raise SweepError(f"sweep file {path}: grid needs {list(GRID_KEYS)}, missing {missing}")
    grid = {k: (list(v) if isinstance(v, (list, tuple)) else [v]) for k, v in grid.items()}
    for k, v in grid.items():
        if not v:
            raise SweepError(f"sweep file {path}: grid.{k} is empty")
    params = dict(data.get("params") or {})
    per_model = {str(k): dict(v or {}) for k, v in (data.get("per_model") or {}).items()}
    clash = set(params) & set(grid)
    if clash:
        raise SweepError(f"sweep file {path}: {sorted(clash)} given both in grid and params")
    spec = SweepSpec(name=str(data.get("name") or path.stem), grid=grid, params=params, per_model=per_model,
                     out_root=str(Path(out_root or data.get("out_root") or "outputs").resolve()),
                     notebook=str(data.get("notebook") or NOTEBOOK), source=str(path))
    validate(spec)
    return spec


def validate(spec: SweepSpec) -> None:
    """Build every combination's :class:`FinetuneConfig` (names and types) before anything runs."""
    fields = {f.name for f in dataclasses.fields(finetune.FinetuneConfig)}
    for where, keys in (("grid", spec.grid), ("params", spec.params),
                        *((f"per_model.{m}", v) for m, v in spec.per_model.items())):
        bad = sorted(set(keys) - fields)
        if bad:
            raise SweepError(f"sweep {spec.name!r}: {where} has unknown notebook parameter(s) {bad}; "
                             f"valid names are {sorted(fields)}")
    for combo in spec.combinations():
        try:
            finetune.FinetuneConfig.from_dict(spec.params_for(combo))
        except (ValueError, KeyError) as e:
            raise SweepError(f"sweep {spec.name!r}: combination {combo}: {e}") from e


# ---------------------------------------------------------------- executors


def papermill_executor(spec: SweepSpec, params: Mapping[str, Any], run_dir: Path, html: bool = True) -> None:
    """Execute the notebook with papermill (unknown names are rejected by ``runs.execute_notebook``)."""
    # the kernel runs in this process's working directory, so relative paths in the sweep file
    # (cohort_run, pretrain_run, ...) mean the same for both executors
    runs.execute_notebook(spec.notebook, dict(params), run_dir, html=html, cwd=os.getcwd())


def inprocess_executor(spec: SweepSpec, params: Mapping[str, Any], run_dir: Path, **kw) -> None:
    """The notebook's steps in this process (:func:`finetune.run_finetune`): no kernel, no HTML."""
    cfg = finetune.FinetuneConfig.from_dict(dict(params))
    finetune.run_finetune(cfg, **kw)


EXECUTORS: dict[str, Callable] = {"papermill": papermill_executor, "inprocess": inprocess_executor}


def is_done(run_dir: Path) -> bool:
    """A finished run: ``run.json`` records a finish time and ``metrics.json`` exists."""
    return runs.is_complete(run_dir) and (Path(run_dir) / "metrics.json").is_file()


@dataclasses.dataclass
class SweepSummary:
    name: str
    total: int
    ran: list[str]
    skipped: list[str]
    failed: dict[str, str]
    seconds: float
    path: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict:
        return {"name": self.name, "total": self.total, "ran": self.ran, "skipped": self.skipped,
                "failed": self.failed, "seconds": round(self.seconds, 2)}

    def __str__(self) -> str:
        lines = [f"sweep {self.name!r}: {self.total} combinations, {len(self.ran)} ran, "
                 f"{len(self.skipped)} skipped (complete), {len(self.failed)} failed, {self.seconds:.0f} s"]
        lines += [f"  FAILED {k}: {v.splitlines()[0][:300]}" for k, v in self.failed.items()]
        if self.path:
            lines.append(f"  summary: {self.path}")
        return "\n".join(lines)


def run_sweep(spec: SweepSpec, executor: str | Callable = "papermill", progress: bool = True,
              executor_kw: Mapping[str, Any] | None = None) -> SweepSummary:
    """Run every combination that is not complete yet; record failures and go on.

    Parameters
    ----------
    executor : ``"papermill"`` (default: the notebook, with its HTML rendering), ``"inprocess"``
        (:func:`finetune.run_finetune`, same steps) or a callable ``(spec, params, run_dir, **kw)``.
    progress : tqdm bar over the grid.

    Returns
    -------
    SweepSummary (also written to ``<out_root>/03_finetune/sweep-<name>.json``).
    """
    run = EXECUTORS[executor] if isinstance(executor, str) else executor
    combos = spec.combinations()
    ran, skipped, failed = [], [], {}
    t0 = time.time()
    bar = tqdm(combos, desc=f"sweep {spec.name}", unit="run", disable=not progress)
    for combo in bar:
        run_dir = spec.run_dir(combo)
        rid = run_dir.name
        if is_done(run_dir):
            skipped.append(rid)
            continue
        bar.set_postfix_str(rid)
        if run_dir.exists():  # half-written by a crash or an earlier failure: redo from scratch
            shutil.rmtree(run_dir)
        try:
            run(spec, spec.params_for(combo), run_dir, **dict(executor_kw or {}))
            if not is_done(run_dir):
                raise RuntimeError(f"{run_dir}: the run ended without metrics.json / a finish time")
            ran.append(rid)
        except Exception as e:  # noqa: BLE001 - one combination's failure must not stop the sweep
            failed[rid] = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"
    bar.close()
    summary = SweepSummary(spec.name, len(combos), ran, skipped, failed, time.time() - t0)
    out = Path(spec.out_root) / NOTEBOOK / f"sweep-{spec.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    runs.write_json(out, summary.to_dict())
    summary.path = out
    return summary


def status(spec: SweepSpec) -> list[tuple[str, str]]:
    """(run id, ``complete``/``partial``/``missing``) for every combination."""
    out = []
    for combo in spec.combinations():
        d = spec.run_dir(combo)
        out.append((d.name, "complete" if is_done(d) else ("partial" if d.exists() else "missing")))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m heartbeit_lib.sweep",
                                 description="Run notebooks/03_finetune.ipynb over a grid (resumable).")
    ap.add_argument("sweep", help="sweep YAML, e.g. parameters/sweeps/cpu_tiny.yaml")
    ap.add_argument("--out-root", default=None, help="override the file's out_root")
    ap.add_argument("--in-process", action="store_true", help="run the notebook's steps in this process (no HTML)")
    ap.add_argument("--dry-run", action="store_true", help="list the combinations and their status, run nothing")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    spec = load_sweep(args.sweep, out_root=args.out_root)
    if args.dry_run:
        for rid, st in status(spec):
            print(f"{st:9s} {rid}")
        return 0
    summary = run_sweep(spec, "inprocess" if args.in_process else "papermill", progress=not args.no_progress)
    print(summary)
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
