"""Every command in the README (and docs/*.md) and in the comments of the 07 parameter files runs as written after
the commands before it (issue 26, item 4).

What "runs" means here, per command, without training anything:
- ``python -m heartbeit_lib.sweep [status|choose-lr] FILE [--only ...] [--out-root ...]``: the sweep's own CLI with
  ``--dry-run`` (file, grid, ``--only`` values and every combination's parameters validated); its run folders
  become "made".
- ``python -m heartbeit_lib.predict|pretrain ... -f FILE -p NAME VALUE``: the stage Config built from exactly those
  files and values (names, types, choices); papermill commands: the notebook exists and its Config accepts the
  ``-f``/``-p`` parameters. ``-p run_id X`` makes ``outputs/<notebook>/X``.
- every ``outputs/03_finetune/<run>`` a command reads (``finetune_runs``, ...) was made by a command before it (``make
  demo`` makes the demo sweep's runs; cohorts and pretraining runs are not checked: paper-scale commands read the
  user's own); every ``parameters/...`` path exists;
  ``python -m heartbeit_lib.pipeline.runs help NB`` runs; ``make X`` is a Makefile target.
Placeholders (``<run>``, ``/data/...``) are only parsed. The oracle is the code's own parsers and the files on disk.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import papermill
import pytest
import yaml

from conftest import REPO_ROOT
from heartbeit_lib.pipeline import finetune, runs, sweep

DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md")), REPO_ROOT / "parameters" / "README.md"]
CLI_NOTEBOOK = {"heartbeit_lib.predict": "07_predict", "heartbeit_lib.pretrain": "02_pretrain",
                "heartbeit_lib.pipeline.predict": "07_predict", "heartbeit_lib.pipeline.pretrain": "02_pretrain"}
RUN_KEYS = ("cohort_run", "pretrain_run", "finetune_runs")
OUT_PATH = re.compile(r"^outputs/(\d\d_[a-z]+)/([^/<>*{}]+)$")


def bash_blocks(text: str) -> list[str]:
    """The ```bash blocks of a Markdown text."""
    return re.findall(r"```(?:bash|sh|console)\n(.*?)```", text, flags=re.S)


def commands(block: str) -> list[list[str]]:
    """Shell words of each command line (``\\`` continuations joined, comments dropped)."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append(words)
    return out


def comment_commands(path: Path) -> list[list[str]]:
    """The commands written in a parameter file's comments (``#   python -m ...`` / ``#   papermill ...`` lines and
    their ``\\`` continuations)."""
    lines, out, cur = path.read_text().splitlines(), [], ""
    for line in lines:
        if not line.startswith("#"):
            continue
        body = line.lstrip("#").strip()
        if cur:
            cur += " " + body
        elif body.startswith(("python -m heartbeit_lib", "papermill ", "make ")):
            cur = body
        else:
            continue
        if cur.endswith("\\"):
            cur = cur[:-1]
            continue
        out.append(shlex.split(cur, comments=True))
        cur = ""
    return out


class Session:
    """The runs made so far by the commands already checked (``outputs/<notebook>/<run>`` strings)."""

    def __init__(self):
        self.made: set[str] = set()

    def need(self, value, where: str) -> None:
        for v in value if isinstance(value, (list, tuple)) else [value]:
            m = OUT_PATH.match(str(v)) if isinstance(v, str) else None
            if m and m[1] == "03_finetune":  # cohorts and pretraining of paper-scale commands come from user data
                assert v in self.made, f"{where}: reads {v}, which no command before it makes"

    def check(self, words: list[str], where: str) -> None:
        where = f"{where}: {' '.join(words)[:160]}"
        for w in words:
            if w.startswith("parameters/") and not any(c in w for c in "<>*$"):
                assert (REPO_ROOT / w).exists(), f"{where}: {w} does not exist"
        if words[:2] == ["make", "demo"]:
            spec = sweep.load_sweep(REPO_ROOT / "parameters" / "sweeps" / "demo.yaml")
            self.made |= {"outputs/01_preprocess/demo", "outputs/02_pretrain/demo"}
            self.made |= {f"outputs/03_finetune/{spec.run_id(c)}" for c in spec.combinations()}
        elif words[0] == "make" and len(words) > 1:
            targets = re.findall(r"^([A-Za-z-]+):", (REPO_ROOT / "Makefile").read_text(), flags=re.M)
            assert words[1] in targets, f"{where}: no Makefile target {words[1]!r}"
        elif words[:3] == ["python", "-m", "heartbeit_lib.sweep"]:
            self._sweep(words[3:], where)
        elif words[:3] == ["python", "-m", "heartbeit_lib.pipeline.runs"]:
            assert runs.main(words[3:]) == 0, where
        elif words[:2] == ["python", "-m"] and words[2] in CLI_NOTEBOOK:
            self._stage(CLI_NOTEBOOK[words[2]], words[3:], where)
        elif words[0] == "papermill":
            k = next(i for i, w in enumerate(words) if w.endswith(".ipynb"))
            nb = REPO_ROOT / words[k]
            assert nb.is_file(), f"{where}: no notebook {words[k]}"
            if "--help-notebook" in words:
                assert papermill.inspect_notebook(str(nb)), where
            else:
                self._stage(nb.stem, words[k + 2:], where)

    def _stage(self, notebook: str, args: list[str], where: str) -> None:
        files, params, i = [], {}, 0
        while i < len(args):
            if args[i] in ("-f", "--parameters"):
                files.append(str(REPO_ROOT / args[i + 1]))
                i += 2
            elif args[i] in ("-p", "--param"):
                params[args[i + 1]] = runs.cli_value(args[i + 2])
                i += 3
            else:
                i += 1
        merged = {**runs.load_parameter_files(*files), **params}
        if any("<" in str(v) or "$" in str(v) for v in merged.values()):
            return  # a placeholder the reader fills in: nothing to build
        cfg = runs.notebook_config(notebook).from_dict(merged)
        for key in RUN_KEYS:
            if getattr(cfg, key, None):
                self.need(getattr(cfg, key), where)
        if merged.get("run_id"):
            self.made.add(f"outputs/{notebook}/{merged['run_id']}")
        elif notebook == "03_finetune":  # its default run id
            self.made.add(f"outputs/03_finetune/{finetune.run_name(cfg.task, cfg.model, cfg.fraction, cfg.seed)}")

    def _sweep(self, args: list[str], where: str) -> None:
        cmd = args[0] if args[0] in ("status", "choose-lr") else "run"
        rest = args[1:] if cmd != "run" else args
        assert sweep.main(["status", *rest]) == 0, where  # --dry-run of the same command line
        only, out_root, i = [], None, 1
        while i < len(rest):
            if rest[i] == "--only":
                i += 1
                while i < len(rest) and not rest[i].startswith("--"):
                    only.append(rest[i])
                    i += 1
            elif rest[i] == "--out-root":
                out_root, i = rest[i + 1], i + 2
            else:
                i += 1
        spec = sweep.load_sweep(REPO_ROOT / rest[0], out_root=out_root, only=only or None)
        for combo in spec.combinations():
            p = spec.params_for(combo)
            for key in ("cohort_run", "pretrain_run"):
                if p.get(key) and Path(p[key]).parts[0] == "outputs":
                    self.need(p[key], where)
        if cmd == "run" and out_root is None:
            self.made |= {f"outputs/03_finetune/{spec.run_id(c)}" for c in spec.combinations()}


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)  # commands are written for the repository root


def test_docs_commands_run_in_order():
    """README then docs/*.md, each bash block's commands in order, one session (a later page may use an earlier
    page's runs, as the README's reader would)."""
    s = Session()
    n = 0
    for doc in DOCS:
        for block in bash_blocks(doc.read_text()):
            for words in commands(block):
                s.check(words, doc.name)
                n += 1
    assert n >= 8


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "parameters" / "07_predict").glob("*.yaml")), ids=lambda p: p.stem)
def test_predict_parameter_files_name_runs_their_commands_make(path):
    """A 07 parameter file's comment lists the commands before it (``make demo`` for the demo file); after them,
    every run it names exists and the file itself is a valid 07 configuration."""
    s = Session()
    for words in comment_commands(path):
        s.check(words, path.name)
    s.check(["python", "-m", "heartbeit_lib.predict", "-f", str(path.relative_to(REPO_ROOT))], path.name)
    cfg = yaml.safe_load(path.read_text())
    assert all(r in s.made for r in cfg["finetune_runs"])


def test_a_run_nobody_makes_is_caught():
    """The checker itself: the README's old example (a run id without the sweep's -lr suffix) fails."""
    s = Session()
    s.check(shlex.split("python -m heartbeit_lib.sweep parameters/sweeps/ptbxl_signal_vs_image.yaml "
                        "--only task=mi model=xresnet1d101 fraction=1.0 seed=0"), "x")
    assert "outputs/03_finetune/mi-xresnet1d101-f1.0-s0-lr0.001" in s.made
    with pytest.raises(AssertionError, match="no command before it makes"):
        s.check(shlex.split("python -m heartbeit_lib.predict -p finetune_runs outputs/03_finetune/mi-vit_b16_scratch-f1.0-s0"
                            " -p data_root /data/x -p source muse"), "x")
