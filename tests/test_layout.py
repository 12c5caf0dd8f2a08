"""The package's layers, read from its imports (ast over every module, function-level imports included).

Oracle: the rank table below. A module may import its own group and any group of lower rank, never one above:
data flows up from the readers to the notebooks' drivers. Modules import no cycle of each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import heartbeit_lib

PKG = Path(heartbeit_lib.__file__).resolve().parent

#: rank -> groups (a group: a sub-package or top-level module of heartbeit_lib), lowest first
RANKS: list[tuple[str, ...]] = [
    ("utils", "config", "safety", "distributed"),  # typed configs, atomic writes, path safety, process groups
    ("io",),            # readers: one record type
    ("signals",),       # filters, resampling, QRS
    ("cohorts",),       # tasks, stores, splits, the evaluation-patient rule
    ("render",),        # ECG -> image
    ("models",),        # backbones, weights, the spec table
    ("analysis",),      # metrics, calibration, Wasserstein, saliency
    ("mim",),           # masked image modelling (pretraining engine)
    ("classify",),      # fine-tuning engine and data
    ("report",),        # tables, figures, pages
    ("pipeline",),      # one module per notebook, runs, sweeps, demo
    ("launch", "pretrain", "sweep", "predict", "masking", "metrics", "wasserstein"),  # command lines, moved paths
]
RANK = {g: r for r, groups in enumerate(RANKS) for g in groups} | {"core": 0}
#: known cycles, each with its reason (a cycle is a module pair that should be one idea or be split further)
ALLOWED_CYCLES = {
    # config.TypedConfig checks path-like fields with safety.safe_component (a function-level import), and
    # safety's errors derive from config.ConfigError
    ("heartbeit_lib.config", "heartbeit_lib.safety"),
}


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


def _group(name: str) -> str | None:
    """The rank-table group of a dotted name; the lowest rank's modules form one group (they may use each other)."""
    parts = name.split(".")
    if len(parts) < 2:
        return None
    return "core" if parts[1] in RANKS[0] else parts[1]


def _resolve(name: str) -> str:
    """The module an imported dotted name lives in (``heartbeit_lib.render.render_ecg`` -> ``heartbeit_lib.render``)."""
    while name not in MODULES and "." in name:
        name = name.rpartition(".")[0]
    return name


def test_the_walk_sees_the_package():
    assert "heartbeit_lib.pipeline.runs" in MODULES and "heartbeit_lib.io" in MODULES
    assert any(i.startswith("heartbeit_lib.pipeline") for i in MODULES["heartbeit_lib.pipeline.demo"])


def test_every_group_has_a_rank():
    assert {_group(m) for m in MODULES if _group(m)} <= set(RANK)


def test_every_import_goes_down_the_rank_table():
    up = {}
    for mod, imps in MODULES.items():
        g = _group(mod)
        if g is None:
            continue
        bad = sorted(i for i in imps if _group(i) and _group(i) != g and RANK[_group(i)] >= RANK[g])
        if bad:
            up[mod] = bad
    assert up == {}, "imports that do not go down the rank table"


def test_no_import_cycles():
    """No module reaches itself through imports (function-level ones included): e.g. no pretrain <-> signal."""
    graph = {m: {_resolve(i) for i in imps} - {m, "heartbeit_lib"} for m, imps in MODULES.items()}
    cycles = []

    def visit(node, stack, on_stack, done):
        on_stack.add(node)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in on_stack:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in done:
                visit(nxt, stack, on_stack, done)
        stack.pop()
        on_stack.discard(node)
        done.add(node)

    done: set = set()
    for m in sorted(graph):
        if m not in done:
            visit(m, [], set(), done)
    # a package __init__ that re-exports its submodules, imported by them, is not a cycle of ideas
    cycles = [c for c in cycles if not any(a.startswith(b + ".") or b.startswith(a + ".") for a, b in zip(c, c[1:]))]
    cycles = [c for c in cycles if tuple(sorted(set(c))) not in ALLOWED_CYCLES]
    assert cycles == []


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
