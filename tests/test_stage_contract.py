"""One stage contract: every ``pipeline/<stage>`` module of a notebook exposes its Config (the one declaration of
the notebook's parameters) and ``run(cfg, run_dir)``, which does the notebook's steps and returns ``metrics.json``'s
content (tests/test_notebook_05.py and _06.py check that it writes the notebook's metrics).

Oracle: the signatures, read with ``inspect``.
"""

from __future__ import annotations

import importlib
import inspect

import pytest

from heartbeit_lib.pipeline import runs

# stages whose module does not have run(cfg, run_dir) yet (their drivers are under other work this session:
# preprocess builds through build_from_config + finish, finetune through run_finetune, metrics in the notebook)
NOT_YET = {"01_preprocess", "03_finetune", "04_metrics"}


@pytest.mark.parametrize("stem", sorted(runs.NOTEBOOK_CONFIGS))
def test_stage_exposes_config_and_run(stem):
    module_name, _, config_name = runs.NOTEBOOK_CONFIGS[stem].partition(":")
    module = importlib.import_module(module_name)
    assert issubclass(getattr(module, config_name), runs.TypedConfig)
    if stem in NOT_YET:
        assert not hasattr(module, "run"), f"{stem} has run(): take it out of NOT_YET"
        return
    params = list(inspect.signature(module.run).parameters)
    assert params[:2] == ["cfg", "run_dir"], f"{module_name}.run{inspect.signature(module.run)}"
