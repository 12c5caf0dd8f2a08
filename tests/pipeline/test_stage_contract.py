"""One stage contract: every ``pipeline/<stage>`` module of a notebook exposes its Config (the one declaration of
the notebook's parameters) and ``run(cfg, run_dir)``, which does the notebook's steps and returns ``metrics.json``'s
content (tests/pipeline/test_notebook_0N.py check that it writes the notebook's metrics).

Oracle: the signatures, read with ``inspect``.
"""

from __future__ import annotations

import importlib
import inspect

import pytest

from heartbeit_lib.pipeline import runs


@pytest.mark.parametrize("stem", sorted(runs.NOTEBOOK_CONFIGS))
def test_stage_exposes_config_and_run(stem):
    module_name, _, config_name = runs.NOTEBOOK_CONFIGS[stem].partition(":")
    module = importlib.import_module(module_name)
    assert issubclass(getattr(module, config_name), runs.TypedConfig)
    params = list(inspect.signature(module.run).parameters)
    assert params[:2] == ["cfg", "run_dir"], f"{module_name}.run{inspect.signature(module.run)}"
