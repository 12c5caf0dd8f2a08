"""Fine-tuning sweeps: ``notebooks/03_finetune.ipynb`` once per (task, model, fraction, seed[, lr]).

Usage::

    python -m heartbeit_lib.sweep parameters/sweeps/paper.yaml                  # the file's executor
    python -m heartbeit_lib.sweep parameters/sweeps/paper_slurm.yaml --executor slurm
    python -m heartbeit_lib.sweep parameters/sweeps/cpu_tiny.yaml --executor local_parallel --parallel 4
    python -m heartbeit_lib.sweep status parameters/sweeps/paper.yaml           # one line per combination
    python -m heartbeit_lib.sweep parameters/sweeps/cpu_tiny.yaml --in-process  # runner inline (no kernel)
    python -m heartbeit_lib.sweep choose-lr parameters/sweeps/paper.yaml        # lr chosen on validation AUROC
    python -m heartbeit_lib.sweep parameters/sweeps/paper.yaml --only model=xresnet1d101 seed=0,1 fraction=1.0
    python -m heartbeit_lib.sweep parameters/sweeps/demo.yaml --out-root /tmp/o  # cohort_run/pretrain_run move too

``--only KEY=V[,V...]`` (any grid key, or ``lr``; several keys: all must match) keeps part of the grid for
running, ``status`` and ``choose-lr``; ``--out-root`` replaces the file's out_root and moves the file's relative
run paths (``*_run`` values ``<root>/<NN_notebook>/<run>``, e.g. ``outputs/01_preprocess/{task}``) under it.

A sweep file (plain YAML)::

    name: paper                 # names the summary file
    notebook: 03_finetune       # optional (default)
    out_root: outputs           # run folders: <out_root>/03_finetune/<task>-<model>-f<fraction>-s<seed>[-lr<lr>]/
    executor: sequential        # sequential (default) | local_parallel | slurm
    runner: papermill           # papermill (notebook + HTML, default) | inline (run_finetune in-process, no HTML)
    parallel: null              # local_parallel: combinations at once (None: one per GPU, else 2)
    grid:                       # lists; every combination runs (order: task, model, fraction, seed)
      task: [hcm]
      model: [heartbeit, vit_b16, efficientnet_b4, resnet152]
      fraction: [0.01, 0.1, 0.25, 0.5, 1.0]
      seed: [0]
    lr:                         # optional learning-rate grid: per model name, family (beit, vit, ..., signal) or `default`
      default: [1.0e-4, 3.0e-4, 1.0e-3]     # (a plain list: every model); omit for the fixed params.lr
    params:                     # fixed notebook parameters; "{task}" etc. are filled in per run
      cohort_run: outputs/01_preprocess/{task}
      pretrain_run: outputs/02_pretrain/paper
      epochs: 30
    per_model:                  # optional overrides for one model (e.g. a weights file)
      vit_b16: {weights: /data/weights/vit_b16.safetensors}
    resources:                  # slurm: per model name, registry family (beit, vit, efficientnet, resnet, signal) or default
      default: {partition: gpu, gpus: 1, cpus: 8, mem_gb: 64, time_min: 240, account: null, constraint: null,
                setup: ["source .venv/bin/activate"], sbatch: {qos: normal}}   # sbatch: extra sbatch options
      vit: {time_min: 480}
    array_parallelism: 16       # slurm: at most this many array tasks at once
    log_dir: null               # submitit logs (None: <out_root>/03_finetune/.sweep/<name>/logs)

Every key under ``grid``/``params``/``per_model`` must be a notebook parameter; all combinations
are validated against :class:`~heartbeit_lib.pipeline.finetune.FinetuneConfig` before the first one runs.
With an ``lr`` grid the run id ends in ``-lr<lr>`` and ``lr_start`` defaults to 0.3 x ``lr`` (the paper's
3e-4 / 1e-3) unless ``params`` sets it; :func:`choose_lr` then picks, for every (task, model, fraction,
seed), the rate with the best **validation** AUROC (never a test figure) and writes the table
``<out_root>/03_finetune/lr-choice-<name>.csv``. A fixed rate (the paper's) is ``params.lr`` without an
``lr`` grid.

Claims and states: a combination runs only while its process holds an exclusive lock on
``<out_root>/03_finetune/.sweep/<run_id>.lock`` (``fcntl.flock``: released by the kernel when the process
dies, so a killed job leaves no stale lock), so two sweeps over one grid never run or delete the same
combination twice; the loser skips it as running elsewhere. Next to the lock, ``<run_id>.json`` records
the state the submitter and the job last wrote (queued, running, failed with the error, done; job id
and log path). A combination's state (:func:`status`) is ``done`` (``run.json`` finished and
``metrics.json``), ``running`` (lock held), ``queued`` (submitted, its job still alive), ``failed`` (an
error recorded, a job that ended without a result, or a half-written folder) or ``missing``. Re-running
a sweep submits only the missing and failed ones; a failed one restarts from scratch, except under
``local_parallel``/``slurm`` where a folder with ``resume.pt`` (written every epoch with ``resume=True``)
continues from its last epoch. A Slurm job that is preempted or reaches its time limit is requeued by
submitit (:class:`ComboJob` is ``Checkpointable``) and resumes from its last epoch.
A failing combination is recorded (error type and message, in the summary file
``<out_root>/03_finetune/sweep-<name>.json``) and the sweep goes on; the exit code is 1 when any failed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import itertools
import json
import math
import os
import re
import socket
import string
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import pandas as pd
import submitit
import torch
import yaml
from tqdm.auto import tqdm

from heartbeit_lib import safety
from heartbeit_lib.models import registry
from heartbeit_lib.pipeline import finetune
from heartbeit_lib.pipeline import runs

GRID_KEYS = ("task", "model", "fraction", "seed")
NOTEBOOK = "03_finetune"
EXECUTOR_NAMES = ("sequential", "local_parallel", "slurm")
STATES = ("done", "queued", "running", "failed", "missing")
LR_START_RATIO = 0.3  # lr_start / lr of the paper's OneCycle (3e-4 / 1e-3), used with an lr grid
# resources key -> SlurmExecutor parameter (sbatch option); "sbatch" passes any other option through
SLURM_KEYS = {"partition": "partition", "gpus": "gpus_per_node", "cpus": "cpus_per_task", "mem_gb": "mem",
              "time_min": "time", "account": "account", "constraint": "constraint", "setup": "setup",
              "sbatch": "additional_parameters"}

_RESOURCE_KEY = {v: k for k, v in SLURM_KEYS.items()}  # SlurmExecutor parameter -> resources key (in errors)


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
    lr: dict[str, list] | None = None  # lr grid: model name / family / "default" -> rates
    executor: str = "sequential"
    runner: str = "papermill"
    parallel: int | None = None
    resources: dict[str, dict] = dataclasses.field(default_factory=dict)
    array_parallelism: int = 16
    log_dir: str | None = None
    only: dict[str, list] | None = None  # run only the combinations matching every key (see select)

    def lr_values(self, model: str) -> list | None:
        """The lr grid of ``model`` (model name, then its registry family, then ``default``), None: fixed."""
        if not self.lr:
            return None
        for key in (model, registry.sweep_family(model), "default"):
            if key in self.lr:
                return self.lr[key]
        raise SweepError(f"sweep {self.name!r}: lr grid has no entry for model {model!r} (nor its family "
                         f"{registry.sweep_family(model)!r} nor 'default')")

    def combinations(self) -> list[dict[str, Any]]:
        """One dict per run, in grid order (task, model, fraction, seed, then any extra grid keys, then lr);
        with :attr:`only`, the matching ones."""
        keys = list(GRID_KEYS) + [k for k in self.grid if k not in GRID_KEYS]
        out = []
        for vals in itertools.product(*(self.grid[k] for k in keys)):
            combo = dict(zip(keys, vals))
            lrs = self.lr_values(combo["model"])
            out += [combo] if lrs is None else [{**combo, "lr": float(lr)} for lr in lrs]
        if self.only:
            out = [c for c in out if all(c.get(k) in v for k, v in self.only.items())]
        return out

    def run_dir(self, combo: Mapping[str, Any]) -> Path:
        return Path(self.out_root) / NOTEBOOK / self.run_id(combo)

    def run_id(self, combo: Mapping[str, Any]) -> str:
        rid = finetune.run_name(combo["task"], combo["model"], combo["fraction"], combo["seed"])
        extra = [k for k in combo if k not in GRID_KEYS]
        return rid + "".join(f"-{k}{combo[k]:g}" if k == "lr" else f"-{k}{combo[k]}" for k in extra)

    def params_for(self, combo: Mapping[str, Any]) -> dict[str, Any]:
        """The notebook parameters of one combination (fixed params with ``{task}``, ``{model}``, ... filled in:
        :func:`fill_placeholders`)."""
        p = {k: fill_placeholders(f"params.{k}", v, combo) for k, v in self.params.items()}
        p.update({k: fill_placeholders(f"per_model.{combo['model']}.{k}", v, combo)
                  for k, v in self.per_model.get(combo["model"], {}).items()})
        p.update(combo)
        if "lr" in combo and self.lr and "lr_start" not in p:
            p["lr_start"] = combo["lr"] * LR_START_RATIO
        p.update(out_root=self.out_root, run_id=self.run_id(combo))
        return p

    @property
    def state_dir(self) -> Path:
        """Locks and per-combination state records, shared by every sweep writing into ``out_root``."""
        return Path(self.out_root) / NOTEBOOK / ".sweep"

    @property
    def logs(self) -> Path:
        return Path(self.log_dir) if self.log_dir else self.state_dir / self.name / "logs"


def fill_placeholders(key: str, value: Any, combo: Mapping[str, Any]) -> Any:
    """``value`` with its ``{name}`` placeholders replaced by the combination's values (``{{`` / ``}}``: literal
    braces); non-text values unchanged. Only plain names of the combination (``task``, ``model``, ``fraction``,
    ``seed``, ``lr`` and extra grid keys) with an optional format spec are placeholders: a positional ``{0}``,
    an attribute or index (``{task.x}``, ``{task[0]}``), a conversion (``{task!r}``), an unknown name or a
    stray brace raises :class:`SweepError` naming ``key``."""
    if not isinstance(value, str):
        return value
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(value) if name is not None]
    except ValueError as e:
        raise SweepError(f"sweep parameter {key}: {value!r} is not a valid format string ({e}); write a literal "
                         "brace as {{ or }}") from None
    for name, spec, conv in fields:
        if conv:
            raise SweepError(f"sweep parameter {key}: {value!r}: no conversion (!{conv}) in a placeholder")
        if name not in combo or "{" in (spec or ""):
            raise SweepError(f"sweep parameter {key}: {value!r}: placeholder {{{name}}} is not one of "
                             f"{sorted('{' + k + '}' for k in combo)}")
    try:
        return value.format_map(dict(combo))
    except (ValueError, TypeError) as e:
        raise SweepError(f"sweep parameter {key}: {value!r}: cannot format ({e})") from None


_TOP_KEYS = {"name", "notebook", "out_root", "grid", "params", "per_model", "lr", "executor", "runner", "parallel",
             "resources", "array_parallelism", "log_dir"}


def load_sweep(path: str | Path, out_root: str | None = None, only: Sequence[str] | None = None) -> SweepSpec:
    """Parse and validate a sweep YAML file.

    ``out_root`` replaces the file's, and moves its relative run paths with it (:func:`move_run_paths`);
    ``only`` (``KEY=V[,V...]`` items, :func:`parse_only`) keeps the matching combinations.

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
    if out_root is not None:
        params = move_run_paths(params, out_root)
        per_model = {m: move_run_paths(v, out_root) for m, v in per_model.items()}
    lr = _lr_grid(data.get("lr"), path)
    clash = set(params) & (set(grid) | ({"lr"} if lr else set()))
    if clash:
        raise SweepError(f"sweep file {path}: {sorted(clash)} given both in a grid and params")
    try:
        name = safety.safe_component("name", str(data.get("name") or path.stem))
        root = safety.no_control("out_root", str(out_root or data.get("out_root") or "outputs"))
        log_dir = None if data.get("log_dir") is None else safety.no_control("log_dir", str(data["log_dir"]))
    except runs.ConfigError as e:
        raise SweepError(f"sweep file {path}: {e}") from None
    spec = SweepSpec(name=name, grid=grid, params=params, per_model=per_model,
                     out_root=str(Path(root).resolve()),
                     notebook=str(data.get("notebook") or NOTEBOOK), source=str(path), lr=lr,
                     executor=str(data.get("executor") or "sequential"), runner=str(data.get("runner") or "papermill"),
                     parallel=data.get("parallel"), resources={str(k): dict(v or {}) for k, v in
                                                               (data.get("resources") or {}).items()},
                     array_parallelism=int(data.get("array_parallelism") or 16), log_dir=log_dir)
    if only:
        spec = dataclasses.replace(spec, only=parse_only(spec, only))
    validate(spec)
    return spec


RUN_PATH = re.compile(r"^(?:[^/]+/)*?(?P<run>\d\d_[A-Za-z0-9]+/.+)$")  # <root>/<NN_notebook>/<run>


def move_run_paths(params: Mapping[str, Any], out_root: str | os.PathLike) -> dict[str, Any]:
    """``params`` with every relative run path (a ``*_run`` value ``<root>/<NN_notebook>/<run id>``, e.g.
    ``outputs/01_preprocess/{task}``) moved under ``out_root`` (``<out_root>/01_preprocess/{task}``): a sweep
    run with ``--out-root`` reads the upstream runs made with the same out_root. Absolute paths, None and other
    parameters are kept."""
    out = dict(params)
    for k, v in params.items():
        if k.endswith("_run") and isinstance(v, str) and not Path(v).is_absolute() and (m := RUN_PATH.match(v)):
            out[k] = str(Path(out_root) / m["run"])
    return out


def parse_only(spec: SweepSpec, items: Sequence[str]) -> dict[str, list]:
    """``["model=xresnet1d101", "seed=0,1", "fraction=1.0"]`` -> ``{model: [...], seed: [0, 1], fraction: [1.0]}``
    (a key given twice: the union). Keys: the grid's and ``lr`` (with an lr grid); values are YAML scalars and
    must be among the file's (1 and 1.0 match). :class:`SweepError` names the key or value and what is allowed."""
    allowed = {**spec.grid, **({"lr": sorted({x for v in spec.lr.values() for x in v})} if spec.lr else {})}
    only: dict[str, list] = {}
    for item in items:
        key, sep, vals = str(item).partition("=")
        key = key.strip()
        if not sep or not key or not vals.strip():
            raise SweepError(f"--only {item!r}: expected KEY=VALUE[,VALUE...], e.g. model=xresnet1d101 seed=0,1")
        if key not in allowed:
            raise SweepError(f"--only {item!r}: {key!r} is not a grid key of {spec.source or spec.name}; "
                             f"choose from {sorted(allowed)}")
        for raw in vals.split(","):
            v = yaml.safe_load(raw.strip())
            if isinstance(v, str) and v not in allowed[key]:
                with contextlib.suppress(ValueError):
                    v = float(v)  # PyYAML reads 1e-3 (no dot) as a string
            if v not in allowed[key]:
                raise SweepError(f"--only {item!r}: {raw.strip()!r} is not among {key} {allowed[key]} of "
                                 f"{spec.source or spec.name}")
            only.setdefault(key, []).append(v)
    return only


def _lr_grid(value: Any, path: Path) -> dict[str, list] | None:
    """``lr:`` of a sweep file as {model / family / default: [rates]} (a plain list means every model)."""
    if value is None:
        return None
    grid = {"default": value} if isinstance(value, (list, tuple)) else value
    if not isinstance(grid, dict) or not all(isinstance(v, (list, tuple)) and v for v in grid.values()):
        raise SweepError(f"sweep file {path}: lr must be a list of rates or a mapping model/family -> list")
    try:
        return {str(k): [float(x) for x in v] for k, v in grid.items()}
    except (TypeError, ValueError) as e:
        raise SweepError(f"sweep file {path}: lr grid holds a non-number: {e}") from e


def validate(spec: SweepSpec) -> None:
    """Build every combination's :class:`FinetuneConfig` (names and types) before anything runs."""
    fields = {f.name for f in dataclasses.fields(finetune.FinetuneConfig)}
    for where, keys in (("grid", spec.grid), ("params", spec.params),
                        *((f"per_model.{m}", v) for m, v in spec.per_model.items())):
        bad = sorted(set(keys) - fields)
        if bad:
            raise SweepError(f"sweep {spec.name!r}: {where} has unknown notebook parameter(s) {bad}; "
                             f"valid names are {sorted(fields)}")
    for key, allowed in (("executor", EXECUTOR_NAMES), ("runner", tuple(RUNNERS))):
        if getattr(spec, key) not in allowed:
            raise SweepError(f"sweep {spec.name!r}: {key} {getattr(spec, key)!r} is not one of {allowed}")
    for fam, res in spec.resources.items():
        bad = sorted(set(res) - set(SLURM_KEYS))
        if bad:
            raise SweepError(f"sweep {spec.name!r}: resources.{fam} has unknown key(s) {bad}; "
                             f"allowed {sorted(SLURM_KEYS)} (other sbatch options go under 'sbatch')")
    for model in spec.grid["model"]:
        try:
            safety.check_sbatch(slurm_parameters(spec, model), spec.logs, f"sweep {spec.name!r} resources of {model}",
                               _RESOURCE_KEY)
        except runs.ConfigError as e:
            raise SweepError(str(e)) from None
    for combo in spec.combinations():
        try:
            safety.safe_component("run_id", spec.run_id(combo))  # task, model and extra grid values in it
            finetune.FinetuneConfig.from_dict(spec.params_for(combo))
        except (ValueError, KeyError, TypeError) as e:
            raise SweepError(f"sweep {spec.name!r}: combination {combo}: {e}") from e


# ---------------------------------------------------------------- runners (how one combination runs)


def papermill_executor(spec: SweepSpec, params: Mapping[str, Any], run_dir: Path, html: bool = True) -> None:
    """Execute the notebook with papermill (unknown names are rejected by ``runs.execute_notebook``)."""
    # the kernel runs in this process's working directory, so relative paths in the sweep file
    # (cohort_run, pretrain_run, ...) mean the same for both runners
    runs.execute_notebook(spec.notebook, dict(params), run_dir, html=html, cwd=os.getcwd())


def inline_executor(spec: SweepSpec, params: Mapping[str, Any], run_dir: Path, **kw) -> None:
    """The notebook's steps in this process through the stage's Python driver (:func:`finetune.run_finetune`):
    no papermill, no Jupyter kernel. Writes the same run folder as the notebook (config.yaml, run.json,
    log.jsonl, predictions.parquet, model_best.pt, metrics.json, learning_curves.png) minus the executed
    notebook and its HTML rendering."""
    cfg = finetune.FinetuneConfig.from_dict(dict(params))
    finetune.run_finetune(cfg, **kw)


inprocess_executor = inline_executor  # the name before the cluster executors
RUNNERS: dict[str, Callable] = {"papermill": papermill_executor, "inline": inline_executor,
                                "inprocess": inline_executor}
EXECUTORS = RUNNERS  # run_sweep's ``executor`` argument names a runner (kept for callers of the old API)


def is_done(run_dir: Path) -> bool:
    """A finished run: ``run.json`` records a finish time and ``metrics.json`` exists."""
    return runs.is_complete(run_dir) and (Path(run_dir) / "metrics.json").is_file()


# ---------------------------------------------------------------- claims and state records


@contextlib.contextmanager
def claim(spec: SweepSpec, run_id: str) -> Iterator[bool]:
    """Try to take the exclusive lock of a combination without waiting; yields whether this process holds it.

    ``fcntl.flock`` on ``<state_dir>/<run_id>.lock``: held until the block ends or the process dies (so a killed
    job never leaves a stale claim); on NFS, Linux maps it to a POSIX lock that the server arbitrates.
    """
    spec.state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(spec.state_dir / f"{run_id}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def is_claimed(spec: SweepSpec, run_id: str) -> bool:
    """True while another process holds the combination's lock."""
    if not (spec.state_dir / f"{run_id}.lock").exists():
        return False
    with claim(spec, run_id) as mine:
        return not mine


def read_record(spec: SweepSpec, run_id: str) -> dict:
    """The combination's last state record (``{}`` when none)."""
    try:
        return json.loads((spec.state_dir / f"{run_id}.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def write_record(spec: SweepSpec, run_id: str, **fields: Any) -> None:
    """Update the combination's state record (atomic; fields merged into the previous record)."""
    rec = {**read_record(spec, run_id), **fields, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    spec.state_dir.mkdir(parents=True, exist_ok=True)
    runs.write_json(spec.state_dir / f"{run_id}.json", rec)


def _job_alive(rec: Mapping[str, Any]) -> bool:
    """Whether the job of a ``queued`` record may still start (local: its controller pid; slurm: sacct/squeue)."""
    job_id, kind = rec.get("job_id"), rec.get("executor")
    if not job_id:
        return False
    if kind == "local_parallel":
        try:
            os.kill(int(job_id), 0)
            return rec.get("host") == socket.gethostname() and not _zombie(int(job_id))
        except (OSError, ValueError):
            return False
    if kind == "slurm":
        state = submitit.SlurmJob(folder=rec.get("folder", "."), job_id=str(job_id)).state
        return state.split()[0] not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY",
                                        "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE", "FINISHED", "INTERRUPTED")
    return False


def _zombie(pid: int) -> bool:
    """True for a process that has exited but was not reaped yet (Linux /proc state Z): its job is over."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _last_line(path: str | None) -> str:
    """Last non-empty line of a log file ('' when there is none)."""
    try:
        lines = [ln for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()] if path else []
    except OSError:
        return ""
    return lines[-1].strip()[:300] if lines else ""


def _error_line(text: str) -> str:
    """The last ``SomeError: message`` line of a traceback text ('' when there is none)."""
    lines = [ln.strip() for ln in text.splitlines() if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b", ln.strip())]
    return lines[-1][:300] if lines else ""


def combination_state(spec: SweepSpec, combo: Mapping[str, Any]) -> tuple[str, dict]:
    """(state, record) of one combination; state is one of :data:`STATES` (see the module docstring)."""
    rid = spec.run_id(combo)
    rec = read_record(spec, rid)
    if is_done(spec.run_dir(combo)):
        return "done", rec
    if is_claimed(spec, rid):
        return "running", rec
    st = rec.get("state")
    if st in ("queued", "running"):
        if st == "queued" and _job_alive(rec):
            return "queued", rec
        err = rec.get("error") or _last_line(rec.get("stderr")) or "the job ended without a result (killed?)"
        return "failed", {**rec, "error": err}
    if st == "failed" or spec.run_dir(combo).exists():
        return "failed", {**rec, "error": rec.get("error") or "half-written run folder (no finish time)"}
    return "missing", rec


def status(spec: SweepSpec) -> list[tuple[str, str, dict]]:
    """(run id, state, record) for every combination, in grid order."""
    return [(spec.run_id(c), *combination_state(spec, c)) for c in spec.combinations()]


def status_lines(spec: SweepSpec) -> list[str]:
    """``<state> <run id>  log=<path>  <last error line>``, one per combination."""
    out = []
    for rid, st, rec in status(spec):
        line = f"{st:9s} {rid}"
        if rec.get("log"):
            line += f"  log={rec['log']}"
        if st == "failed":
            line += f"  error={str(rec.get('error', '')).splitlines()[-1] if rec.get('error') else ''}"
        out.append(line)
    return out


# ---------------------------------------------------------------- one combination (in any process)


def run_combination(spec: SweepSpec, combo: Mapping[str, Any], runner: str | Callable = "papermill",
                    resume: bool = False, threads: int | None = None, **runner_kw: Any) -> str:
    """Claim, run and check one combination; returns ``ran``, ``skipped`` (done) or ``busy`` (claimed elsewhere).

    ``resume``: a half-written folder holding ``resume.pt`` continues from its last epoch (the notebook's
    ``resume`` parameter is set, so every epoch writes it); otherwise a half-written folder is deleted first.
    ``threads``: torch / OpenMP threads of this process and of a papermill kernel it starts.
    Raises what the runner raises (after recording it as ``failed``).
    """
    run = RUNNERS[runner] if isinstance(runner, str) else runner
    run_dir, rid = spec.run_dir(combo), spec.run_id(combo)
    if threads:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)
    with claim(spec, rid) as mine:
        if not mine:
            return "busy"
        if is_done(run_dir):
            return "skipped"
        write_record(spec, rid, state="running", host=socket.gethostname(), pid=os.getpid(), error=None)
        can_resume = resume and (run_dir / finetune.RESUME_FILE).is_file()
        if run_dir.exists() and not can_resume:  # half-written by a crash or an earlier failure: redo
            safety.remove_tree(run_dir, Path(spec.out_root) / NOTEBOOK)
        params = {**spec.params_for(combo), **({"resume": True} if resume else {})}
        try:
            run(spec, params, run_dir, **runner_kw)
            if not is_done(run_dir):
                raise RuntimeError(f"{run_dir}: the run ended without metrics.json / a finish time")
        except BaseException as e:
            runs.release_run_folder(run_dir)  # an in-process run that failed lets go of its folder's lock
            write_record(spec, rid, state="failed", error=f"{type(e).__name__}: {e}".strip())
            raise
        write_record(spec, rid, state="done", error=None)
        return "ran"


class ComboJob(submitit.helpers.Checkpointable):
    """A submitit job running one combination (:func:`run_combination` with ``resume=True``).

    ``Checkpointable``: on preemption or time-out submitit calls :meth:`checkpoint` and requeues the same job;
    the new process resumes from the run folder's ``resume.pt`` (written after every epoch).
    """

    def __init__(self, spec: SweepSpec, combo: Mapping[str, Any], runner: str, threads: int | None = None):
        self.spec, self.combo, self.runner, self.threads = spec, dict(combo), runner, threads

    def __call__(self) -> str:
        return run_combination(self.spec, self.combo, self.runner, resume=True, threads=self.threads)


class WarmJob(submitit.helpers.Checkpointable):
    """A submitit job that stays warm across combinations: it goes through ``combos`` in order and runs every one it
    can claim (:func:`run_combination` with ``resume=True``), in one process, so Python, torch and the in-process
    rendered-image cache (``finetune.IMAGE_CACHE``: one store, size and layout are rendered once) start once for
    several combinations. ``parallel`` such jobs given the same list share it like a queue: a combination another
    job holds is ``busy`` and skipped, one it finished is ``skipped``. Returns ``{run_id: outcome}`` (``ran``,
    ``skipped``, ``busy`` or ``failed: <error>``); a failure does not stop the job."""

    def __init__(self, spec: SweepSpec, combos: Sequence[Mapping[str, Any]], runner: str, threads: int | None = None,
                 cuda_device: str | None = None):
        self.spec, self.combos, self.runner, self.threads = spec, [dict(c) for c in combos], runner, threads
        self.cuda_device = cuda_device  # this job's CUDA_VISIBLE_DEVICES entry (None: as started)

    def __call__(self) -> dict[str, str]:
        if self.cuda_device is not None:
            # set before CUDA starts in this process (nothing of ours touches CUDA at import): the device list
            # is read once, at CUDA's initialisation
            if torch.cuda.is_initialized():
                raise RuntimeError("WarmJob: CUDA started before CUDA_VISIBLE_DEVICES could be set")
            os.environ["CUDA_VISIBLE_DEVICES"] = self.cuda_device
        out: dict[str, str] = {}
        for combo in self.combos:
            rid = self.spec.run_id(combo)
            try:
                out[rid] = run_combination(self.spec, combo, self.runner, resume=True, threads=self.threads)
            except Exception as e:  # recorded as failed by run_combination; the next combination still runs
                out[rid] = "failed: " + (_error_line(f"{type(e).__name__}: {e}") or repr(e))
        return out


def _merge_outcomes(results: Sequence[Mapping[str, str]], rids: Sequence[str]) -> dict[str, str]:
    """One outcome per run id over the warm jobs' results: failed > ran > skipped > busy (missing: not reached)."""
    rank = {"failed": 0, "ran": 1, "skipped": 2, "busy": 3}
    out: dict[str, str] = {}
    for rid in rids:
        seen = [r[rid] for r in results if rid in r]
        if seen:
            out[rid] = min(seen, key=lambda o: rank[o.split(":")[0]])
    return out


# ---------------------------------------------------------------- executors (where combinations run)


@dataclasses.dataclass
class SweepSummary:
    name: str
    total: int
    ran: list[str]
    skipped: list[str]
    failed: dict[str, str]
    seconds: float
    path: Path | None = None
    busy: list[str] = dataclasses.field(default_factory=list)  # claimed by another sweep while this one ran
    submitted: list[str] = dataclasses.field(default_factory=list)  # slurm: submitted, not waited for

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict:
        return {"name": self.name, "total": self.total, "ran": self.ran, "skipped": self.skipped,
                "failed": self.failed, "busy": self.busy, "submitted": self.submitted,
                "seconds": round(self.seconds, 2)}

    def __str__(self) -> str:
        lines = [f"sweep {self.name!r}: {self.total} combinations, {len(self.ran)} ran, "
                 f"{len(self.skipped)} skipped (complete or queued), {len(self.busy)} running elsewhere, "
                 f"{len(self.submitted)} submitted, {len(self.failed)} failed, {self.seconds:.0f} s"]
        lines += [f"  FAILED {k}: {v.splitlines()[0][:300]}" for k, v in self.failed.items()]
        if self.path:
            lines.append(f"  summary: {self.path}")
        return "\n".join(lines)


def _write_summary(spec: SweepSpec, summary: SweepSummary) -> SweepSummary:
    out = Path(spec.out_root) / NOTEBOOK / f"sweep-{spec.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    runs.write_json(out, summary.to_dict())
    summary.path = out
    return summary


def run_sweep(spec: SweepSpec, executor: str | Callable = "papermill", progress: bool = True,
              executor_kw: Mapping[str, Any] | None = None) -> SweepSummary:
    """The sequential executor: every combination that is not complete, one after another in this process.

    Parameters
    ----------
    executor : the runner: ``"papermill"`` (default: the notebook, with its HTML rendering), ``"inline"``
        (``"inprocess"``; :func:`finetune.run_finetune`, same steps) or a callable ``(spec, params, run_dir, **kw)``.
    progress : tqdm bar over the grid.

    Returns
    -------
    SweepSummary (also written to ``<out_root>/03_finetune/sweep-<name>.json``).
    """
    combos = spec.combinations()
    summary = SweepSummary(spec.name, len(combos), [], [], {}, 0.0)
    t0 = time.time()
    bar = tqdm(combos, desc=f"sweep {spec.name}", unit="run", disable=not progress)
    for combo in bar:
        rid = spec.run_id(combo)
        bar.set_postfix_str(rid)
        try:
            outcome = run_combination(spec, combo, executor, **dict(executor_kw or {}))
        except Exception as e:  # noqa: BLE001 - one combination's failure must not stop the sweep
            summary.failed[rid] = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"
            continue
        {"ran": summary.ran, "skipped": summary.skipped, "busy": summary.busy}[outcome].append(rid)
    bar.close()
    summary.seconds = time.time() - t0
    return _write_summary(spec, summary)


def _to_submit(spec: SweepSpec) -> tuple[list[dict], list[str]]:
    """(combinations to submit: missing or failed, run ids left alone: done, queued or running)."""
    todo, left = [], []
    for combo in spec.combinations():
        state, _ = combination_state(spec, combo)
        (todo.append(combo) if state in ("missing", "failed") else left.append(spec.run_id(combo)))
    return todo, left


def _record_submitted(spec: SweepSpec, combo: Mapping[str, Any], job: submitit.Job, executor: str) -> None:
    write_record(spec, spec.run_id(combo), state="queued", executor=executor, job_id=str(job.job_id),
                 host=socket.gethostname(), folder=str(spec.logs), log=str(job.paths.stdout),
                 stderr=str(job.paths.stderr), error=None)


def _cpu_count() -> int:
    """CPUs this process may run on (a Slurm allocation's, not the node's), at least 1."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def job_slots(jobs: int, n_gpu: int, visible: str | None, cpus: int) -> list[tuple[str | None, int]]:
    """(``CUDA_VISIBLE_DEVICES`` value or None on CPU, torch / OpenMP threads) for each of ``jobs`` parallel jobs.

    Job i runs on the i-th of the ``n_gpu`` GPUs this process sees (round robin when there are more jobs):
    the i-th entry of the inherited ``visible`` list ("2,5" from Slurm or a user: job 0 gets "2"; UUIDs and
    MIG names pass through), or index i when nothing was inherited.  Every job gets ``max(1, cpus // jobs)``
    threads, so the jobs' data loading and CPU ops do not oversubscribe a node's cores.
    """
    for name, value, low in (("jobs", jobs, 0), ("n_gpu", n_gpu, 0), ("cpus", cpus, 1)):
        if value < low:
            raise SweepError(f"job_slots: {name} must be >= {low}, got {value}")
    entries = [str(i) for i in range(n_gpu)] if visible is None else \
        [e.strip() for e in visible.split(",") if e.strip()][:n_gpu]
    threads = max(1, cpus // max(jobs, 1))
    return [(entries[i % len(entries)] if entries else None, threads) for i in range(jobs)]


def local_parallel_sweep(spec: SweepSpec, parallel: int | None = None, runner: str | None = None,
                         poll_s: float = 0.5, timeout_min: float = 24 * 60) -> SweepSummary:
    """Run the missing and failed combinations in ``parallel`` warm submitit local jobs (:class:`WarmJob`: each goes
    through the whole list, claiming what nobody else holds), so each job process starts once, not once per
    combination.

    Devices and threads per job: :func:`job_slots` (job i gets the i-th GPU this process sees, by its entry in
    an inherited ``CUDA_VISIBLE_DEVICES``; ``parallel`` defaults to the GPU count; the CPU cores are split
    between the jobs, GPU or not).  Waits for every job; a combination's error is recorded as its failure (a
    job that dies fails the combinations no other job finished).
    """
    n_gpu = torch.cuda.device_count()
    parallel = int(parallel or spec.parallel or n_gpu or 2)
    todo, left = _to_submit(spec)
    summary = SweepSummary(spec.name, len(spec.combinations()), [], list(left), {}, 0.0)
    ex = submitit.LocalExecutor(folder=spec.logs)
    # gpus_per_node 0: submitit would set CUDA_VISIBLE_DEVICES to physical indices; each job sets its own entry
    ex.update_parameters(timeout_min=timeout_min, gpus_per_node=0)
    t0, jobs = time.time(), []
    slots = job_slots(min(parallel, len(todo)), n_gpu, os.environ.get("CUDA_VISIBLE_DEVICES"), _cpu_count())
    for device, threads in slots:
        jobs.append(ex.submit(WarmJob(spec, todo, runner or spec.runner, threads, cuda_device=device)))
    for combo in todo:
        _record_submitted(spec, combo, jobs[0], "local_parallel")
    while not all(j.done() for j in jobs):
        time.sleep(poll_s)
    results, errors = [], []
    for job in jobs:
        err = job.exception()
        (errors.append(_error_line(str(err)) or repr(err)) if err is not None else results.append(job.result()))
    rids = [spec.run_id(c) for c in todo]
    outcome = _merge_outcomes(results, rids)
    for combo, rid in zip(todo, rids):  # busy in the surviving jobs because a job that died held it
        if errors and outcome.get(rid) == "busy" and not is_done(spec.run_dir(combo)) and not is_claimed(spec, rid):
            del outcome[rid]
    for rid in rids:
        o = outcome.get(rid, "failed: " + (errors[0] if errors else "no job reached it"))
        if o.startswith("failed"):
            summary.failed[rid] = o.partition(": ")[2] or o
            if rid not in outcome:
                write_record(spec, rid, state="failed", error=summary.failed[rid])
        else:
            {"ran": summary.ran, "skipped": summary.skipped, "busy": summary.busy}[o].append(rid)
    summary.seconds = time.time() - t0
    return _write_summary(spec, summary)


def slurm_parameters(spec: SweepSpec, model: str) -> dict[str, Any]:
    """SlurmExecutor parameters of ``model``'s jobs: ``resources.default`` updated with its family's, then its own."""
    res: dict[str, Any] = {}
    for key in ("default", registry.sweep_family(model), model):
        res.update(spec.resources.get(key, {}))
    out = {SLURM_KEYS[k]: v for k, v in res.items() if v is not None}
    if "mem" in out:
        mem = out["mem"]
        if isinstance(mem, bool) or not isinstance(mem, (int, float)) or not 0 < mem < 1e7:
            raise SweepError(f"sweep {spec.name!r}: resources mem_gb of {model}: expected a positive number of GB, "
                             f"got {mem!r}")
        out["mem"] = f"{mem}GB"
    out.update(job_name=f"{spec.name}-{registry.sweep_family(model)}", array_parallelism=spec.array_parallelism,
               signal_delay_s=120)  # USR2 two minutes before the limit: time to requeue
    return out


def slurm_executor(spec: SweepSpec, model: str) -> submitit.SlurmExecutor:
    """A SlurmExecutor (logs under ``spec.logs``) with ``model``'s resources; needs ``srun`` on the PATH."""
    params = safety.check_sbatch(slurm_parameters(spec, model), spec.logs, f"sweep {spec.name!r} resources of {model}",
                               _RESOURCE_KEY)
    ex = submitit.SlurmExecutor(folder=spec.logs, max_num_timeout=10)
    ex.update_parameters(**params)
    return ex


def slurm_sweep(spec: SweepSpec, runner: str | None = None) -> SweepSummary:
    """Submit the missing and failed combinations as Slurm job arrays (one per resource group) and return.

    Each array task runs :class:`ComboJob`; ``python -m heartbeit_lib.sweep status <yaml>`` follows them.
    """
    todo, left = _to_submit(spec)
    summary = SweepSummary(spec.name, len(spec.combinations()), [], list(left), {}, 0.0)
    groups: dict[str, list[dict]] = {}
    for combo in todo:  # one array per distinct resource set
        groups.setdefault(json.dumps(slurm_parameters(spec, combo["model"]), sort_keys=True), []).append(combo)
    t0 = time.time()
    for combos in groups.values():
        ex = slurm_executor(spec, combos[0]["model"])
        with ex.batch():
            jobs = [ex.submit(ComboJob(spec, c, runner or spec.runner)) for c in combos]
        for combo, job in zip(combos, jobs):
            _record_submitted(spec, combo, job, "slurm")
            summary.submitted.append(spec.run_id(combo))
    summary.seconds = time.time() - t0
    return _write_summary(spec, summary)


def execute(spec: SweepSpec, executor: str | None = None, runner: str | None = None, parallel: int | None = None,
            progress: bool = True) -> SweepSummary:
    """Run a sweep with ``executor`` (default: the file's) and ``runner`` (default: the file's)."""
    executor, runner = executor or spec.executor, runner or spec.runner
    if executor == "local_parallel":
        return local_parallel_sweep(spec, parallel, runner)
    if executor == "slurm":
        return slurm_sweep(spec, runner)
    return run_sweep(spec, runner, progress=progress)


# ---------------------------------------------------------------- learning-rate choice


def choose_lr(spec: SweepSpec, write: bool = True) -> pd.DataFrame:
    """For every (task, model, fraction, seed) of an lr-grid sweep, the rate with the best validation AUROC.

    Reads each run's ``metrics.json`` ``val_auroc`` (the AUROC at the epoch chosen on ``select_on``) and never a
    test figure; ties go to the smaller rate. A cell with an incomplete run gets no choice (``chosen_lr`` NaN)
    rather than a choice among the runs that happened to finish.

    Returns
    -------
    DataFrame, one row per combination: task, model, fraction, seed, lr, run_id, val_auroc, chosen (bool),
    chosen_lr; written to ``<out_root>/03_finetune/lr-choice-<name>.csv`` when ``write``.
    """
    if not spec.lr:
        raise SweepError(f"sweep {spec.name!r} has no lr grid: nothing to choose")
    rows = []
    for combo in spec.combinations():
        d = spec.run_dir(combo)
        val = json.loads((d / "metrics.json").read_text()).get("val_auroc") if is_done(d) else None
        rows.append({**{k: combo[k] for k in (*GRID_KEYS, "lr")}, "run_id": d.name,
                     "val_auroc": math.nan if val is None else float(val)})
    df = pd.DataFrame(rows)
    df["chosen"] = False
    df["chosen_lr"] = math.nan
    for _, g in df.groupby(list(GRID_KEYS), sort=False):
        if g["val_auroc"].isna().any():
            continue
        best = g.sort_values("lr", kind="stable")["val_auroc"].idxmax()  # first maximum: the smaller rate
        df.loc[best, "chosen"] = True
        df.loc[g.index, "chosen_lr"] = df.loc[best, "lr"]
    if write:
        out = Path(spec.out_root) / NOTEBOOK / f"lr-choice-{spec.name}.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        safety.write_csv(df, out, index=False)
    return df


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv[:1] and argv[0] in ("status", "choose-lr") else "run"
    ap = argparse.ArgumentParser(prog=f"python -m heartbeit_lib.sweep{'' if command == 'run' else ' ' + command}",
                                 description="Run notebooks/03_finetune.ipynb over a grid (resumable); "
                                             "'status <yaml>' lists the combinations' states.")
    ap.add_argument("sweep", help="sweep YAML, e.g. parameters/sweeps/cpu_tiny.yaml")
    ap.add_argument("--out-root", default=None,
                    help="override the file's out_root; relative run paths (cohort_run, pretrain_run) move with it")
    ap.add_argument("--only", nargs="+", default=None, metavar="KEY=V[,V]",
                    help="run only these combinations, e.g. --only model=xresnet1d101 seed=0,1 fraction=1.0")
    ap.add_argument("--executor", choices=EXECUTOR_NAMES, default=None, help="override the file's executor")
    ap.add_argument("--parallel", type=int, default=None, help="local_parallel: combinations at once")
    ap.add_argument("--in-process", action="store_true", help="runner inline: the notebook's steps without a kernel")
    ap.add_argument("--dry-run", action="store_true", help="same as the status command: run nothing")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    spec = load_sweep(args.sweep, out_root=args.out_root, only=args.only)
    if command == "status" or args.dry_run:
        print("\n".join(status_lines(spec)))
        return 0
    if command == "choose-lr":
        table = choose_lr(spec)
        print(table[table.chosen].to_string(index=False))
        return 0
    summary = execute(spec, args.executor, "inline" if args.in_process else None, args.parallel,
                      progress=not args.no_progress)
    print(summary)
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
