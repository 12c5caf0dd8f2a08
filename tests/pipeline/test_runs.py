"""Typed configs, unknown-parameter rejection and run folders (heartbeit_lib.pipeline.runs)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
import typing

import pytest
import yaml

from heartbeit_lib.pipeline import runs


@dataclasses.dataclass(frozen=True)
class _Cfg(runs.TypedConfig):
    task: str = "mi"
    fraction: float = 1.0
    epochs: int = 3
    flag: bool = False
    models: tuple[str, ...] = ("heartbeit",)
    choices = {"task": ("mi", "stemi", "hcm")}


def test_coercion_of_papermill_strings():
    cfg = _Cfg(task="stemi", fraction="0.1", epochs="5", flag="false", models="[a, b]")
    assert cfg.fraction == 0.1 and cfg.epochs == 5 and cfg.flag is False and cfg.models == ("a", "b")
    assert _Cfg(models=["a"]).models == ("a",)  # a YAML list from a parameter file
    assert _Cfg(flag="True").flag is True
    assert _Cfg(fraction=1).fraction == 1.0 and isinstance(_Cfg(fraction=1).fraction, float)


@pytest.mark.parametrize("kw", [dict(epochs="x"), dict(epochs=2.5), dict(flag="maybe"), dict(task="xyz"),
                                dict(fraction=True), dict(models="a,b"), dict(task=None)])
def test_bad_values_raise(kw):
    with pytest.raises(runs.ConfigError, match=next(iter(kw))):
        _Cfg(**kw)


def test_unknown_names_rejected():
    with pytest.raises(runs.UnknownParameterError, match="fracton"):
        _Cfg.from_dict({"fracton": 0.1})
    ns = {"task": "mi", "fracton": 0.1, "runs": runs, "_hidden": 1, "In": [], "print": print}
    with pytest.raises(runs.UnknownParameterError, match="fracton"):
        runs.config_from_globals(_Cfg, ns)
    ns.pop("fracton")
    assert runs.config_from_globals(_Cfg, ns).task == "mi"


def test_run_folder(tmp_path):
    cfg = _Cfg(epochs=2)
    run_dir = runs.start_run("03_finetune", cfg, run_id="r1", out_root=tmp_path)
    assert run_dir == tmp_path / "03_finetune" / "r1"
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["epochs"] == 2
    assert not runs.is_complete(run_dir)
    f = tmp_path / "data.bin"
    f.write_bytes(b"abc")
    runs.finish_run(run_dir, metrics={"auroc": 0.5}, data_hashes=runs.hash_files([f], root=tmp_path))
    info = json.loads((run_dir / "run.json").read_text())
    # oracle: sha256("abc") from FIPS 180-2 test vectors
    assert info["data_hashes"]["data.bin"] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert runs.is_complete(run_dir) and json.loads((run_dir / "metrics.json").read_text()) == {"auroc": 0.5}
    runs.append_jsonl(run_dir / "log.jsonl", {"epoch": 0})
    runs.append_jsonl(run_dir / "log.jsonl", {"epoch": 1})
    assert [r["epoch"] for r in runs.read_jsonl(run_dir / "log.jsonl")] == [0, 1]


def test_parameter_files_layer(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("epochs: 3\ntask: mi\n")
    b.write_text("epochs: 5\n")
    assert runs.load_parameter_files(a, b) == {"epochs": 5, "task": "mi"}
    a.write_text("- 1\n")
    with pytest.raises(runs.ConfigError, match="a.yaml"):
        runs.load_parameter_files(a)


@dataclasses.dataclass(frozen=True)
class _Declared(runs.TypedConfig):
    """Doc."""

    choices = {"mode": ("a", "b")}
    mode: str = "a"  # which mode
    size: int | None = None  # image side in pixels (None: the checkpoint's)
    splits: tuple[str, ...] = ("val", "test")  # splits to score


def test_parameters_cell_is_the_class_field_lines():
    cell = runs.parameters_cell(_Declared)
    assert cell.splitlines() == [  # annotations papermill's regex reads; tuples become list literals
        'mode: str = "a"  # which mode',
        "size: Optional[int] = None  # image side in pixels (None: the checkpoint's)",
        'splits: list[str] = ["val", "test"]  # splits to score',
    ]
    ns: dict = {"Optional": typing.Optional}  # the notebook's imports cell imports it (write_parameters_cells)
    exec(cell, ns)  # the cell is valid Python holding the defaults
    assert runs.config_from_globals(_Declared, {k: v for k, v in ns.items() if k not in ("__builtins__", "Optional")}) == _Declared()


def test_parameters_cell_refuses_what_a_cell_cannot_hold():
    @dataclasses.dataclass(frozen=True)
    class NoComment(runs.TypedConfig):
        x: int = 1

    @dataclasses.dataclass(frozen=True)
    class NotLiteral(runs.TypedConfig):
        x: tuple = dataclasses.field(default=(1,))  # computed

    @dataclasses.dataclass(frozen=True)
    class EqualsInComment(runs.TypedConfig):
        x: int = 1  # at least x >= 1 (papermill skips a line holding two '=')

    for cls, msg in ((NoComment, "comment"), (NotLiteral, "literal"), (EqualsInComment, "'='")):
        with pytest.raises(runs.ConfigError, match=msg):
            runs.parameters_cell(cls)


def _tiny_notebook(path, body: str) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python",
                                                           "display_name": "Python 3"},
                                            "language_info": {"name": "python"}})
    cell = nbformat.v4.new_code_cell("x = 1  # a number")
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, str(path))


@pytest.mark.notebooks
def test_a_successful_notebook_run_prints_nothing_alarming(tmp_path, capfd):
    """Issue 26: no ``[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel`` (jupyter_client interrupted the idle
    kernel before shutting it down) and no "TCP without encryption" warning (the kernel talks over IPC). Oracle: the
    process's own stderr/stdout at file-descriptor level (the kernel writes there directly); the unpatched
    papermill call printed the TCP warning on every run."""
    nb = tmp_path / "t.ipynb"
    _tiny_notebook(nb, "import time\nfor _ in range(3):\n    time.sleep(0.05)\nprint(x + 1)")
    out = runs.execute_notebook(nb, {"x": 2}, tmp_path / "run", html=False)
    text = "".join(capfd.readouterr())
    assert '"text": [\n     "3\\n"' in out.read_text() or "3\\n" in out.read_text()
    for bad in ("ERROR", "KeyboardInterrupt", "without encryption", "Traceback"):
        assert bad not in text, text[-2000:]
    assert not list(tmp_path.glob("*ipc*")) and not list(runs.REPO_ROOT.glob("kernel-*ipc*"))


@pytest.mark.notebooks
def test_bare_papermill_with_the_installed_kernelspec_prints_nothing_alarming(tmp_path):
    """Issue 26: the README's bare ``papermill`` command (not :func:`runs.execute_notebook`) printed ipykernel's "TCP
    without encryption" warning and ``[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel`` on every successful
    run. The kernelspec from :func:`runs.install_kernelspec` (what ``make`` installs) names the IPC provisioner.
    Oracle: the papermill process's stderr, and the executed notebook's output; the same call with ipykernel's own
    kernelspec printed both messages (checked by hand, 2026-12-07)."""
    prefix = tmp_path / "prefix"
    spec = runs.install_kernelspec(prefix=prefix, name="heartbeit-test")
    assert json.loads(spec.read_text())["metadata"]["kernel_provisioner"]["provisioner_name"] == runs.KERNEL_PROVISIONER
    nb, out = tmp_path / "t.ipynb", tmp_path / "o.ipynb"
    _tiny_notebook(nb, "print(x + 1)")
    env = dict(os.environ, JUPYTER_PATH=str(prefix / "share" / "jupyter"))
    proc = subprocess.run([str(Path(sys.executable).parent / "papermill"), str(nb), str(out), "-p", "x", "2",
                           "-k", "heartbeit-test"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "3\\n" in out.read_text()
    for bad in ("ERROR", "KeyboardInterrupt", "without encryption", "Traceback"):
        assert bad not in proc.stderr + proc.stdout, proc.stderr[-2000:]


def test_make_installs_the_kernelspec_with_the_ipc_provisioner():
    """``make``'s install step runs ``python -m heartbeit_lib.pipeline.runs kernelspec``: the environment's python3
    kernel names the provisioner, and jupyter_client finds it through the package's entry point."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.provisioning import KernelProvisionerFactory

    spec = KernelSpecManager().get_kernel_spec("python3")
    assert spec.metadata["kernel_provisioner"]["provisioner_name"] == runs.KERNEL_PROVISIONER
    assert KernelProvisionerFactory.instance().is_provisioner_available(spec)


def test_kernel_sockets_are_unique_and_outside_the_working_folder(tmp_path, monkeypatch):
    """jupyter_client's ipc default is 'kernel-ipc' in the current folder for every kernel (parallel notebooks from
    one folder race for the same socket names; killed kernels leave them in the user's folder)."""
    monkeypatch.chdir(tmp_path)
    a, b = runs.QuietKernelManager(), runs.QuietKernelManager()
    assert a.transport == "ipc" and a.ip != b.ip
    assert Path(a.ip).parent == Path(tempfile.gettempdir()) and len(a.ip) < 100


@pytest.mark.notebooks
def test_a_failed_notebook_run_is_marked_failed(tmp_path):
    nb = tmp_path / "t.ipynb"
    _tiny_notebook(nb, "raise ValueError('broken input: x')")
    with pytest.raises(Exception, match="broken input"):
        runs.execute_notebook(nb, {"x": 2}, tmp_path / "run", html=False)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["finished"] is None and "broken input" in info["failed"] and not runs.is_complete(tmp_path / "run")


def test_read_run_config_is_the_one_typed_reader(tmp_path):
    """Oracle: what start_run wrote; typed errors name the file."""
    cfg = _Declared(size=3)
    run_dir = runs.start_run("00_test", cfg, out_root=tmp_path, run_id="r")
    assert runs.read_run_config(run_dir) == {"mode": "a", "size": 3, "splits": ["val", "test"]}
    assert runs.read_run_config(run_dir, _Declared) == cfg  # typed: lists back to tuples
    with pytest.raises(runs.RunConfigError, match="no such file"):
        runs.read_run_config(tmp_path)
    (tmp_path / "config.yaml").write_text("- a\n- b\n")
    with pytest.raises(runs.RunConfigError, match=r"config\.yaml: holds a list"):
        runs.read_run_config(tmp_path)
    (tmp_path / "config.yaml").write_text("a: [1\n")
    with pytest.raises(runs.RunConfigError, match="not valid YAML"):
        runs.read_run_config(tmp_path)
