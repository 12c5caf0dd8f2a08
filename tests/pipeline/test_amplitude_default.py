"""Issue 24 item 5: one amplitude rule for a run saved without ``ylim_mv``: 03 (pretraining checkpoint), 06
(fine-tuning run config) and 07 (model record) all take ``render.saved_ylim_mv`` = the pre-issue-18 range +-2 mV
(what such runs were drawn at). Oracle: the range stated in render.geometry (LEGACY_YLIM_MV)."""

from __future__ import annotations

import json

from heartbeit_lib import render
from heartbeit_lib.pipeline import finetune, predict, saliency


def test_a_run_saved_without_ylim_is_read_at_one_range_by_03_06_07(tmp_path):
    want = (-2.0, 2.0)
    assert render.LEGACY_YLIM_MV == want and render.saved_ylim_mv(None) == want
    assert render.saved_ylim_mv([-4, 4]) == (-4.0, 4.0)  # a recorded range wins
    assert finetune.checkpoint_ylim({}, None, "ck.pt") == want  # 03: a checkpoint without a render record
    assert saliency.run_ylim({}, None, tmp_path) == want  # 06: a fine-tuning run's config.yaml without ylim_mv
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "store.json").write_text(json.dumps({"task": "toy", "fs": 500}))
    info = {"config": {"cohort_run": str(tmp_path / "store")}, "image_size": 32, "layout": "stack8"}
    assert predict._recorded_rendering(tmp_path, info).ylim_mv == want  # 07: model record without ylim_mv
    info["ylim_mv"] = [-4.0, 4.0]
    assert predict._recorded_rendering(tmp_path, info).ylim_mv == (-4.0, 4.0)
