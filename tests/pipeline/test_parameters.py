"""One declaration per parameter: each notebook's parameters cell is its stage Config, verbatim.

Oracle: the Config class source (``runs.parameters_cell``) for the cells; ``papermill.inspect_notebook`` (what
``papermill --help-notebook`` prints) for every field's name, type, default and help; ``TypedConfig.from_dict`` for
the parameter files; papermill itself for the rejection of an unknown injected name.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import typing
from typing import Optional

import nbformat
import papermill
import pytest
import yaml

from heartbeit_lib.config import _coerce
from heartbeit_lib.pipeline import runs

NOTEBOOKS = sorted(runs.NOTEBOOK_CONFIGS)


def _cell(stem: str) -> str:
    nb = nbformat.read(str(runs.resolve_notebook(stem)), as_version=4)
    return next(c.source for c in nb.cells if "parameters" in c.metadata.get("tags", []))


def test_every_notebook_has_a_config():
    assert sorted(p.stem for p in runs.NOTEBOOKS_DIR.glob("*.ipynb")) == NOTEBOOKS


@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_parameters_cell_equals_its_config(stem):
    """Names, defaults, types and comments: the cell is the class's field lines (`make params` rewrites it)."""
    cls = runs.notebook_config(stem)
    assert _cell(stem) == runs.parameters_cell(cls), f"{stem}: stale parameters cell; run `make params`"
    nb = nbformat.read(str(runs.resolve_notebook(stem)), as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    before = "\n".join(c.source for c in nb.cells[:at] if c.cell_type == "code").splitlines()
    if ": Optional[" in _cell(stem):  # the cell's annotations are evaluated when it runs
        assert runs.OPTIONAL_IMPORT in before, f"{stem}: the imports cell must import Optional; run `make params`"


def _same_type(papermill_type, config_type) -> bool:
    """Equal annotations, reading a Config's ``tuple[X, ...]`` as the cell's ``list[X]``."""
    origin, args = typing.get_origin(config_type), typing.get_args(config_type)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        config_type, origin, args = list[args[0]], list, args[:1]
    if origin is None:
        return papermill_type == config_type
    p_args = typing.get_args(papermill_type)
    union = (typing.Union, __import__("types").UnionType)
    same_origin = typing.get_origin(papermill_type) == origin or (
        typing.get_origin(papermill_type) in union and origin in union)
    return same_origin and len(p_args) == len(args) and all(map(_same_type, p_args, args))


@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_papermill_help_shows_every_parameter(stem):
    """`papermill --help-notebook` (papermill.inspect_notebook) lists every Config field, in order, with its type,
    its default and its comment as help."""
    cls = runs.notebook_config(stem)
    seen = papermill.inspect_notebook(str(runs.resolve_notebook(stem)))
    fields = dataclasses.fields(cls)
    assert list(seen) == [f.name for f in fields]
    hints = typing.get_type_hints(cls)
    for f in fields:
        p = seen[f.name]
        tp = eval(p["inferred_type_name"], {"Optional": Optional})  # noqa: S307 (our own cell's annotation)
        assert _same_type(tp, hints[f.name]), (f.name, p["inferred_type_name"], hints[f.name])
        coerce = functools.partial(_coerce, f.name, tp=hints[f.name])  # the Config's own coercion
        assert coerce(ast.literal_eval(p["default"])) == coerce(f.default), f.name
        assert p["help"] and "=" not in p["help"], f.name
    assert runs.notebook_parameters(runs.resolve_notebook(stem)) == {
        k: {"type": v["inferred_type_name"], "default": v["default"], "help": v["help"]} for k, v in seen.items()}


@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_parameter_files_validate_against_the_config(stem):
    """Every YAML under parameters/<notebook>/ is a mapping of known names with values of the declared types."""
    cls = runs.notebook_config(stem)
    files = sorted((runs.PARAMETERS_DIR / stem).glob("*.yaml"))
    for f in files:
        params = yaml.safe_load(f.read_text()) or {}
        try:
            cls.from_dict(params)
        except runs.ConfigError as e:
            pytest.fail(f"{f.relative_to(runs.REPO_ROOT)}: {e}")


@pytest.mark.notebooks
@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_unknown_parameter_is_rejected(stem, tmp_path):
    """papermill only warns about `-p fracton 0.1`; the notebook itself must stop with the name."""
    with pytest.raises(papermill.PapermillExecutionError, match="fracton"):
        papermill.execute_notebook(str(runs.resolve_notebook(stem)), str(tmp_path / "out.ipynb"),
                                   parameters={"fracton": 0.1, "out_root": str(tmp_path)},
                                   kernel_name="python3", progress_bar=False, cwd=str(runs.REPO_ROOT))
