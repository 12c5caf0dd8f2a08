"""Run folders, typed notebook configs, provenance and the papermill runner.

Every notebook follows the same shape::

    # cell tagged "parameters": literals only
    task: str = "mi"          # task name in parameters/tasks/
    fraction: float = 1.0     # training fraction
    ...
    # next cell
    from heartbeit_lib.pipeline import runs
    from heartbeit_lib.pipeline import finetune
    cfg = runs.config_from_globals(finetune.FinetuneConfig, globals())
    run_dir = runs.start_run("03_finetune", cfg)

``config_from_globals`` rejects names that are not fields of the config (papermill only
*warns* about unknown ``-p`` names, so a typo like ``-p fracton 0.1`` would silently run the
default) and coerces/validates the types of the fields (``-p flag false`` arrives as the
string ``"false"``).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import datetime as _dt
import fcntl
import hashlib
import importlib
import inspect
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import textwrap
import types
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Sequence

import nbformat
import numpy as np
import papermill
import yaml
from jupyter_client.manager import AsyncKernelManager
from jupyter_client.provisioning import LocalProvisioner
from nbconvert import HTMLExporter
from traitlets import default

from heartbeit_lib.config import (ConfigError, RunConfigError, TypedConfig, UnknownParameterError, _plain,  # noqa: F401
                                  read_run_config)  # (re-exported)
from heartbeit_lib.safety import UnsafeValueError, inside, no_control, safe_component

REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
PARAMETERS_DIR = REPO_ROOT / "parameters"


_IPYTHON_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}


def config_from_globals(cls: type[TypedConfig], namespace: Mapping[str, Any]) -> TypedConfig:
    """Build ``cls`` from a notebook's globals after its parameters (and injected) cells.

    Every public, non-module, non-callable global must be a field of ``cls``: anything else was
    injected by papermill under a name the notebook does not know, which is an error here.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    params, unknown = {}, []
    for k, v in namespace.items():
        if k.startswith("_") or k in _IPYTHON_NAMES:
            continue
        if isinstance(v, types.ModuleType) or callable(v):
            continue
        if k in names:
            params[k] = v
        else:
            unknown.append(k)
    if unknown:
        raise UnknownParameterError(
            f"unknown notebook parameter(s) {sorted(unknown)} for {cls.__name__}; "
            f"valid names are {sorted(names)}"
        )
    return cls(**params)


# ---------------------------------------------------------------- one declaration per parameter

# notebook -> "module:Config" of its stage (imported by name: the stage modules import this one)
NOTEBOOK_CONFIGS = {
    "01_preprocess": "heartbeit_lib.pipeline.preprocess:PreprocessConfig",
    "02_pretrain": "heartbeit_lib.pipeline.pretrain:PretrainConfig",
    "03_finetune": "heartbeit_lib.pipeline.finetune:FinetuneConfig",
    "04_metrics": "heartbeit_lib.pipeline.metrics:MetricsConfig",
    "05_wasserstein": "heartbeit_lib.pipeline.wasserstein:WassersteinConfig",
    "06_saliency": "heartbeit_lib.pipeline.saliency:SaliencyConfig",
    "07_predict": "heartbeit_lib.pipeline.predict:PredictConfig",
}


def notebook_config(notebook: str) -> type[TypedConfig]:
    """The Config class of a notebook (``'03_finetune'`` or its path)."""
    stem = Path(notebook).stem
    module, _, name = NOTEBOOK_CONFIGS[stem].partition(":")
    return getattr(importlib.import_module(module), name)


def _papermill_annotation(node: ast.expr) -> str:
    """A Config annotation as papermill's parser reads it: ``X | None`` -> ``Optional[X]``, ``tuple[X, ...]`` ->
    ``list[X]`` (papermill's regex reads words, brackets and commas only; a cell default is a list literal)."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        sides = [node.left, node.right]
        rest = [n for n in sides if not (isinstance(n, ast.Constant) and n.value is None)]
        if len(rest) == 1:
            return f"Optional[{_papermill_annotation(rest[0])}]"
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "tuple":
        elts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if len(elts) == 2 and isinstance(elts[1], ast.Constant) and elts[1].value is Ellipsis:
            return f"list[{_papermill_annotation(elts[0])}]"
    if isinstance(node, ast.Subscript):
        inner = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        return f"{ast.unparse(node.value)}[{', '.join(_papermill_annotation(n) for n in inner)}]"
    return ast.unparse(node)


def parameters_cell(cls: type[TypedConfig]) -> str:
    """The notebook ``parameters`` cell for ``cls``: one line ``name: type = literal  # comment`` per field.

    The lines are the class's field lines with the annotations papermill's parser reads (``Optional[str]`` for
    ``str | None``, ``list[str]`` and a list literal for ``tuple[str, ...]``; the notebook's imports cell
    imports ``Optional``, see :func:`write_parameters_cells`), so ``papermill --help-notebook`` shows every parameter with its type,
    default and help. Raises :class:`ConfigError` when a field is not one line ``name: type = literal  # comment``
    (a default that is not a literal, a ``field(...)``, a missing comment, an ``=`` in the comment, which makes
    papermill skip the line), so the cell can always be made from the class and holds literals only.
    """
    src = textwrap.dedent(inspect.getsource(cls))
    lines = src.splitlines()
    body = ast.parse(src).body[0].body
    fields = {f.name for f in dataclasses.fields(cls)}
    out = []
    for node in body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        name = node.target.id
        if name not in fields:
            continue  # ClassVar
        where = f"{cls.__name__}.{name}"
        if node.end_lineno != node.lineno or node.value is None:
            raise ConfigError(f"{where}: a parameter is one line `name: type = literal  # comment`")
        try:
            ast.literal_eval(node.value)
        except ValueError:
            raise ConfigError(f"{where}: the default must be a literal (got {ast.unparse(node.value)})") from None
        line = lines[node.lineno - 1]
        if "  # " not in line:
            raise ConfigError(f"{where}: say what the parameter is in a comment after two spaces and #")
        comment = line.split("  # ", 1)[1].strip()
        if "=" in comment:
            raise ConfigError(f"{where}: no '=' in the comment (papermill skips a line with two '=')")
        seg = line[node.value.col_offset:node.value.end_col_offset]
        if isinstance(node.value, ast.Tuple):
            seg = "[" + ", ".join(line[e.col_offset:e.end_col_offset] for e in node.value.elts) + "]"
        out.append(f"{name}: {_papermill_annotation(node.annotation)} = {seg}  # {comment}")
    missing = fields - {ln.split(":", 1)[0] for ln in out}
    if missing:
        raise ConfigError(f"{cls.__name__}: fields {sorted(missing)} are not declared in the class body")
    return "\n".join(out)


OPTIONAL_IMPORT = "from typing import Optional"  # in the imports cell: the parameters cell's annotations use it


def write_parameters_cells(notebooks: Sequence[str] | None = None) -> list[Path]:
    """Rewrite each notebook's ``parameters`` cell from its Config (``make params``); returns changed files."""
    changed = []
    for stem in notebooks or sorted(NOTEBOOK_CONFIGS):
        path = resolve_notebook(stem)
        nb = nbformat.read(str(path), as_version=4)
        at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
        cell, new = nb.cells[at], parameters_cell(notebook_config(stem))
        imports = next((c for c in reversed(nb.cells[:at]) if c.cell_type == "code"), None)
        dirty = cell.source != new
        if ": Optional[" in new and (imports is None or OPTIONAL_IMPORT not in imports.source.splitlines()):
            if imports is None:  # the annotations are evaluated when the cell runs: Optional must exist
                imports = nbformat.v4.new_code_cell("")
                nb.cells.insert(at, imports)
            imports.source = OPTIONAL_IMPORT + "\n" + imports.source.lstrip("\n") if imports.source else OPTIONAL_IMPORT
            dirty = True
        if dirty:
            cell.source = new
            nbformat.write(nb, str(path))
            changed.append(path)
    return changed


def cli_value(text: str) -> Any:
    """A ``-p NAME VALUE`` value from the command line: ``None``/``null`` -> None, ``[a, b]`` -> a YAML list,
    anything else the string (the Config coerces it, so ``-p run_id 007`` stays ``"007"``)."""
    if text.strip() in ("None", "null", "~"):
        return None
    return yaml.safe_load(text) if text.strip().startswith("[") else text


def config_from_cli(cls: type[TypedConfig], argv: Sequence[str] | None, description: str) -> TypedConfig:
    """``cls`` from ``-f file.yaml`` (repeatable, a later file wins) and ``-p name value`` (wins over files), the
    convention of every ``python -m heartbeit_lib.<stage>`` command line (papermill's own ``-f`` / ``-p``)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("-f", "--parameters", action="append", default=[], help="YAML parameter file(s), later wins")
    ap.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    args = ap.parse_args(argv)
    params = load_parameter_files(*args.parameters)
    params.update({k: cli_value(v) for k, v in args.param})
    return cls.from_dict(params)


# ---------------------------------------------------------------- provenance


def git_commit(repo: Path = REPO_ROOT) -> str:
    """Commit hash of the working tree (suffix ``-dirty`` with uncommitted changes), or ``unknown``."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                              text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except Exception:
        return "unknown"


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("heartbeit_lib", "torch", "torchvision", "timm", "numpy", "scipy", "pandas",
                 "scikit-learn", "wfdb", "pot", "grad-cam", "papermill"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_files(paths, root: str | os.PathLike | None = None) -> dict[str, str]:
    """sha256 of each file, keyed by its path relative to ``root`` when given."""
    out = {}
    for p in sorted(map(Path, paths)):
        key = str(p.relative_to(root)) if root is not None else str(p)
        out[key] = file_sha256(p)
    return out


def combined_hash(hashes: Mapping[str, str]) -> str:
    """One sha256 over a mapping of name -> hash (order independent)."""
    h = hashlib.sha256()
    for k in sorted(hashes):
        h.update(f"{k}\0{hashes[k]}\n".encode())
    return h.hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def default_run_id(cfg: TypedConfig | None = None) -> str:
    """Timestamp run id ``YYYYmmdd-HHMMSS`` (UTC)."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")


_HELD_LOCKS: dict[str, int] = {}  # resolved run folder -> descriptor of its lock, held by this process


class RunFolderBusyError(ConfigError):
    """Another process is writing the same run folder (two runs with one ``run_id``)."""


def lock_run_folder(run_dir: str | os.PathLike) -> None:
    """Hold an exclusive ``flock`` on ``.<name>.lock`` beside the run folder until :func:`finish_run` /
    :func:`release_run_folder` or the process ends (the kernel releases it: no stale lock after a kill; beside,
    not inside, so the folder may be renamed or replaced while it is held). A second process starting the same
    folder is refused with :class:`RunFolderBusyError` naming it; this process may restart its own run (a
    re-executed notebook).
    """
    run_dir = Path(run_dir)
    key = str(run_dir.resolve())
    if key in _HELD_LOCKS:
        os.close(_HELD_LOCKS.pop(key))
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir.parent / f".{run_dir.name}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunFolderBusyError(f"run folder {run_dir} (run_id {run_dir.name!r}) is being written by another "
                                 "process: wait for it to finish or pick another run_id") from None
    _HELD_LOCKS[key] = fd


def release_run_folder(run_dir: str | os.PathLike) -> None:
    """Let go of the lock :func:`lock_run_folder` took (nothing when this process holds none)."""
    fd = _HELD_LOCKS.pop(str(Path(run_dir).resolve()), None)
    if fd is not None:
        os.close(fd)


def start_run(notebook: str, cfg: TypedConfig, run_id: str = "", out_root: str | os.PathLike = "") -> Path:
    """Create ``<out_root>/<notebook>/<run_id>/``, lock it (:func:`lock_run_folder`) and write ``config.yaml``
    and ``run.json``.

    ``out_root`` defaults to ``cfg.out_root`` if the config has one, else ``outputs``
    (relative paths are taken from the current directory, which is the notebook folder's parent
    when run through :func:`execute_notebook`). The run folder never lies outside ``<out_root>/<notebook>``:
    ``cfg.run_id`` is one plain name (:func:`heartbeit_lib.safety.safe_component`, checked by the config) and
    a ``run_id`` argument (a caller's staging name) one component that resolves inside.
    """
    out_root = out_root or getattr(cfg, "out_root", "") or str(REPO_ROOT / "outputs")
    parent = Path(out_root) / safe_component("notebook", notebook)
    if run_id:
        if "/" in run_id or run_id in (".", "..") or len(run_id.encode()) > 240:
            raise UnsafeValueError(f"parameter 'run_id': {run_id!r} is not one folder name (at most 240 bytes)")
        inside("parameter 'run_id'", parent / run_id, parent)
    else:
        run_id = safe_component("parameter 'run_id'", getattr(cfg, "run_id", "") or default_run_id(cfg))
    run_dir = parent / no_control("parameter 'run_id'", run_id)
    lock_run_folder(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "config.yaml", "w") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
    info = {
        "notebook": notebook,
        "run_id": run_id,
        "git_commit": git_commit(),
        "versions": package_versions(),
        "host": platform.node(),
        "argv": sys.argv,
        "started": _now(),
        "finished": None,
        "data_hashes": {},
    }
    _write_json(run_dir / "run.json", info)
    return run_dir


def finish_run(run_dir: str | os.PathLike, metrics: Mapping[str, Any] | None = None,
               data_hashes: Mapping[str, str] | None = None) -> Path:
    """Record end time, data hashes and ``metrics.json`` in a run folder (marks it complete)."""
    run_dir = Path(run_dir)
    info = json.loads((run_dir / "run.json").read_text())
    info["finished"] = _now()
    if data_hashes:
        info["data_hashes"].update(dict(data_hashes))
    _write_json(run_dir / "run.json", info)
    if metrics is not None:
        _write_json(run_dir / "metrics.json", dict(metrics))
    release_run_folder(run_dir)
    return run_dir


def mark_failed(run_dir: str | os.PathLike, error: BaseException) -> None:
    """Record ``failed: "<ErrorClass>: <message>"`` (and no finish time) in a run folder's ``run.json``, so a run
    that stopped half-way never reads as finished; written even when the run failed before ``run.json`` existed."""
    p = Path(run_dir) / "run.json"
    try:
        info = json.loads(p.read_text()) if p.is_file() else {}
    except json.JSONDecodeError:
        info = {}
    info.update(finished=None, failed=f"{type(error).__name__}: {error}"[:2000], failed_at=_now())
    _write_json(p, info)
    release_run_folder(run_dir)  # a failed run no longer writes the folder: another may start it


def is_complete(run_dir: str | os.PathLike) -> bool:
    """True when ``run.json`` exists and records a finish time."""
    p = Path(run_dir) / "run.json"
    if not p.exists():
        return False
    try:
        return json.loads(p.read_text()).get("finished") is not None
    except json.JSONDecodeError:
        return False


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def _write_json(path: Path, obj: Any) -> None:
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (numpy scalars/arrays allowed)."""
    _write_json(Path(path), obj)


def append_jsonl(path: str | os.PathLike, obj: Mapping[str, Any]) -> None:
    """Append one JSON line (e.g. one epoch of a training log)."""
    with open(path, "a") as f:
        f.write(json.dumps(dict(obj), default=_json_default) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------- papermill runner


def load_parameter_files(*files: str | os.PathLike) -> dict[str, Any]:
    """Layer YAML parameter files (a later file wins), like ``papermill -f a.yaml -f b.yaml``."""
    params: dict[str, Any] = {}
    for f in files:
        data = yaml.safe_load(Path(f).read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{f}: parameter file must hold a mapping, got {type(data).__name__}")
        params.update(data)
    return params


def notebook_parameters(notebook: str | os.PathLike) -> dict[str, dict]:
    """Parameters of the notebook's ``parameters`` cell as papermill reads them (``papermill --help-notebook``):
    name -> {type, default, help}, in order."""
    nb = nbformat.read(str(notebook), as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ConfigError(f"{notebook}: expected one cell tagged 'parameters', found {len(cells)}")
    return {name: {"type": p["inferred_type_name"], "default": p["default"], "help": p["help"]}
            for name, p in papermill.inspect_notebook(str(notebook)).items()}


def check_parameters(notebook: str | os.PathLike, params: Mapping[str, Any]) -> None:
    """Raise :class:`UnknownParameterError` for names the notebook does not declare."""
    declared = notebook_parameters(notebook)
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise UnknownParameterError(
            f"{Path(notebook).name}: unknown parameter(s) {unknown}; declared: {sorted(declared)}"
        )


def resolve_notebook(name: str) -> Path:
    """``'03_finetune'`` or a path -> the notebook path."""
    p = Path(name)
    if p.suffix == ".ipynb" and p.exists():
        return p
    cands = sorted(NOTEBOOKS_DIR.glob(f"{name}*.ipynb"))
    if len(cands) != 1:
        raise ConfigError(f"notebook {name!r}: expected one match in {NOTEBOOKS_DIR}, found {cands}")
    return cands[0]


def ipc_prefix() -> str:
    """A unique path prefix for one kernel's Unix sockets, in the temporary folder.

    jupyter_client's default for ipc is "kernel-ipc" in the current folder: sockets kernel-ipc-<N> in the user's
    working directory, shared by every kernel started from it (two notebooks run in parallel from one folder would
    race for the same names, and a killed kernel leaves them behind). Short: a Unix socket path is limited to ~100 B.
    """
    return os.path.join(tempfile.gettempdir(), f"heartbeit-kernel-{uuid.uuid4().hex[:12]}-ipc")


class IPCProvisioner(LocalProvisioner):
    """The local kernel launcher with the kernel's sockets on IPC instead of TCP (issue 26).

    ipykernel >= 7 warns on every start that it "is running over TCP without encryption" unless the manager
    provisions CurveZMQ keys, which neither papermill's command line nor nbclient asks for. The kernelspec that
    ``make`` installs (:func:`install_kernelspec`) names this provisioner, so a bare ``papermill`` call, JupyterLab
    and :func:`execute_notebook` all start the kernel on Unix sockets that only this machine's user can reach. A
    manager that already chose IPC, or restarts a kernel whose connection file is written, is left as it is.

    It also drops the SIGINT that jupyter_client sends before asking a kernel to shut down, which made the idle
    kernel of every successful run log ``[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel`` (a busy kernel
    is still stopped: the shutdown request goes over the control channel, then the process is killed after the
    grace period). Interrupts a user asks for (JupyterLab's stop button) go through.
    """

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        km = self.parent
        if km is not None and km.transport == "tcp" and not km._connection_file_written:
            km.transport = "ipc"
            km.ip = ipc_prefix()
        return await super().pre_launch(**kwargs)

    async def send_signal(self, signum: int) -> None:
        if signum == signal.SIGINT and getattr(self.parent, "shutting_down", False):
            return
        await super().send_signal(signum)


KERNEL_PROVISIONER = "heartbeit-ipc-provisioner"  # pyproject's jupyter_client.kernel_provisioners entry point


def install_kernelspec(prefix: str | os.PathLike = sys.prefix, name: str = "python3") -> Path:
    """Install this environment's Python kernel as ``name`` under ``<prefix>/share/jupyter/kernels`` with the
    :class:`IPCProvisioner` (what ``make`` runs after ``pip install``). Returns the kernel.json path."""
    from ipykernel.kernelspec import install

    dest = Path(install(kernel_name=name, prefix=str(prefix))) / "kernel.json"
    spec = json.loads(dest.read_text())
    spec.setdefault("metadata", {})["kernel_provisioner"] = {"provisioner_name": KERNEL_PROVISIONER, "config": {}}
    dest.write_text(json.dumps(spec, indent=1) + "\n")
    return dest


class QuietKernelManager(AsyncKernelManager):
    """The kernel papermill starts, minus two alarming messages on every successful run (issue 26):

    - jupyter_client interrupts the (idle) kernel before asking it to shut down, and ipykernel logs
      ``[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel``: here no interrupt once shutdown began
      (a busy kernel is still stopped by the shutdown request, then killed after the grace period);
    - ipykernel warns that it runs "over TCP without encryption": here the kernel talks over IPC (Unix sockets in
      the Jupyter runtime folder, beside its connection file), which no other machine can reach.
    """

    @default("transport")
    def _transport_default(self) -> str:
        return "ipc"

    @default("ip")
    def _ip_default(self) -> str:
        return ipc_prefix()

    async def _async_interrupt_kernel(self) -> None:
        if getattr(self, "shutting_down", False):
            return
        await super()._async_interrupt_kernel()


def execute_notebook(notebook: str | os.PathLike, params: Mapping[str, Any], run_dir: str | os.PathLike,
                     html: bool = True, kernel_name: str = "python3", progress_bar: bool = False,
                     cwd: str | os.PathLike | None = None) -> Path:
    """Run a notebook with papermill into ``run_dir`` (created first) and render it to HTML.

    The notebook must write its artifacts into the same ``run_dir`` (pass ``out_root`` and
    ``run_id`` parameters so it does). Unknown parameters raise before anything runs.
    Returns the executed notebook path (``<run_dir>/<name>.ipynb``).
    """
    notebook = resolve_notebook(str(notebook))
    check_parameters(notebook, params)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    out_nb = run_dir / notebook.name
    try:
        papermill.execute_notebook(str(notebook), str(out_nb), parameters=dict(params),
                                   kernel_name=kernel_name, progress_bar=progress_bar,
                                   cwd=str(cwd or REPO_ROOT), kernel_manager_class=QuietKernelManager)
    except BaseException as e:  # the folder may hold half of the outputs: say so in run.json
        mark_failed(run_dir, e)
        raise
    if html:
        notebook_to_html(out_nb)
    return out_nb


def notebook_to_html(nb_path: str | os.PathLike) -> Path:
    """Render an executed notebook to HTML next to it."""
    nb = nbformat.read(str(nb_path), as_version=4)
    body, _ = HTMLExporter().from_notebook_node(nb)
    out = Path(nb_path).with_suffix(".html")
    out.write_text(body)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m heartbeit_lib.pipeline.runs params`` (``make params``) rewrites the parameters cells from the
    Configs; ``... runs kernelspec`` (``make``) installs the environment's kernel (:func:`install_kernelspec`);
    ``papermill --help-notebook notebooks/<name>.ipynb`` lists a notebook's parameters."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["params"]:
        for p in write_parameters_cells():
            print("rewrote", p)
        return 0
    if argv == ["kernelspec"]:
        print("installed", install_kernelspec())
        return 0
    print("usage: python -m heartbeit_lib.pipeline.runs params | kernelspec", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
