"""The package's layers, read from its imports (ast over every module, function-level imports included).

- nothing outside ``heartbeit_lib/pipeline`` imports ``heartbeit_lib.pipeline`` (the top-level alias modules
  that exist only to keep ``python -m heartbeit_lib.pretrain`` / ``.sweep`` working are the entry points);
- ``heartbeit_lib/io`` imports nothing of ours outside ``io``;
- ``heartbeit_lib/utils.py`` imports nothing of ours.
"""

from __future__ import annotations

import ast
from pathlib import Path

import heartbeit_lib

PKG = Path(heartbeit_lib.__file__).resolve().parent
ENTRY_POINTS = {"heartbeit_lib.pretrain", "heartbeit_lib.sweep", "heartbeit_lib.predict", "heartbeit_lib.launch"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute dotted names of every heartbeit_lib module or name imported by ``path``."""
    mod = _module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out |= {f"{target}.{a.name}" for a in node.names}
    return {n for n in out if n == "heartbeit_lib" or n.startswith("heartbeit_lib.")}


MODULES = {_module_name(p): _imports(p) for p in sorted(PKG.rglob("*.py"))}


def test_the_walk_sees_the_package():
    assert "heartbeit_lib.pipeline.runs" in MODULES and "heartbeit_lib.io" in MODULES
    assert any(i.startswith("heartbeit_lib.pipeline") for i in MODULES["heartbeit_lib.pipeline.demo"])


def test_nothing_below_pipeline_imports_pipeline():
    bad = {m: sorted(i for i in imps if i.startswith("heartbeit_lib.pipeline"))
           for m, imps in MODULES.items()
           if not m.startswith("heartbeit_lib.pipeline") and m not in ENTRY_POINTS}
    assert {m: v for m, v in bad.items() if v} == {}


def test_io_and_utils_import_nothing_of_ours():
    bad = {m: sorted(i for i in imps if not i.startswith("heartbeit_lib.io"))
           for m, imps in MODULES.items() if m == "heartbeit_lib.io" or m.startswith("heartbeit_lib.io.")}
    assert {m: v for m, v in bad.items() if v} == {}
    assert MODULES["heartbeit_lib.utils"] == set()


def test_moved_modules_warn_and_are_the_new_module():
    """The old top-level paths of moved modules still work but warn (FutureWarning names the new path)."""
    import importlib
    import sys
    import warnings

    for old, new in (("heartbeit_lib.masking", "heartbeit_lib.mim.masking"),
                     ("heartbeit_lib.metrics", "heartbeit_lib.analysis.metrics"),
                     ("heartbeit_lib.wasserstein", "heartbeit_lib.analysis.wasserstein")):
        sys.modules.pop(old, None)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            mod = importlib.import_module(old)
        assert mod is importlib.import_module(new)
        assert any(issubclass(w.category, FutureWarning) and new in str(w.message) for w in seen), old
