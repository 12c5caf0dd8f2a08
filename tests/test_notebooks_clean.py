"""Committed notebooks are stripped and have a literal, typed ``parameters`` cell (papermill)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stripped_and_parametrised(nb_path):
    nb = json.loads(nb_path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    for c in code:
        assert not c.get("outputs") and c.get("execution_count") is None, f"{nb_path.name}: outputs committed"
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{nb_path.name}: needs exactly one cell tagged 'parameters'"
    tree = ast.parse("".join(tagged[0]["source"]))
    names = set()
    for stmt in tree.body:
        assert isinstance(stmt, ast.AnnAssign), f"{nb_path.name}: parameters must be `name: type = literal`"
        ast.literal_eval(stmt.value)  # literals only: papermill injects after this cell
        names.add(stmt.target.id)
    assert {"out_root", "run_id"} <= names, f"{nb_path.name}: every notebook takes out_root and run_id"
    assert not any(isinstance(n, (ast.FunctionDef, ast.ClassDef))
                   for c in code for n in ast.walk(ast.parse(_src(c)))), "define functions in heartbeit_lib"


def _src(cell) -> str:
    # IPython magics are not Python; drop them before parsing
    return "\n".join(line for line in "".join(cell["source"]).splitlines() if not line.lstrip().startswith(("%", "!")))


def test_notebooks_exist():
    assert NOTEBOOKS, "no notebooks found"
