"""One declaration per parameter: each notebook's parameters cell is its stage Config, verbatim.

Oracle: the Config class source (``runs.parameters_cell``) for the cells; ``TypedConfig.from_dict`` for the
parameter files; papermill itself for the rejection of an unknown injected name.
"""

from __future__ import annotations

import dataclasses

import nbformat
import papermill
import pytest
import yaml

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
    declared = runs.notebook_parameters(runs.resolve_notebook(stem))
    assert list(declared) == [f.name for f in dataclasses.fields(cls)]


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
