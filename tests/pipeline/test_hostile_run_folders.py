"""Issue 27 item 7: run folders given to 04/06/07 are inputs too.

A real (micro, 32 px) fine-tuned model folder is written with the library's own writers
(``checkpoint.save_best_weights`` / ``write_model_record``), then one file is made hostile at a time.
Oracle: typed errors naming the file and the key; the untouched folder loads (positive control).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import write_fake_run
from heartbeit_lib.classify import checkpoint
from heartbeit_lib.models import registry as models
from heartbeit_lib.pipeline import metrics as pm


@pytest.fixture
def run_dir(tmp_path):
    d = tmp_path / "toy-vit_b16_scratch-f1.0-s0"
    d.mkdir()
    torch.manual_seed(0)
    m = models.create_model("vit_b16_scratch", size="micro", img_size=32, num_classes=2)
    checkpoint.save_best_weights(m, d)
    checkpoint.write_model_record(d, m, "vit_b16_scratch", "micro", 32, "stack8", ((0.5,) * 3, (0.25,) * 3))
    (d / "config.yaml").write_text(yaml.safe_dump({"task": "toy", "model": "vit_b16_scratch", "model_size": "micro",
                                                   "image_size": 32, "fraction": 1.0, "seed": 0}))
    (d / "metrics.json").write_text(json.dumps({"best_epoch": 2}))
    return d


def _edit_record(d: Path, **kw) -> None:
    rec = json.loads((d / "model.json").read_text())
    rec.update(kw)
    (d / "model.json").write_text(json.dumps(rec))


def test_the_untouched_folder_loads(run_dir):
    model, info = checkpoint.load_finetune_run(run_dir)
    assert info["image_size"] == 32 and info["normalize"] == ((0.5,) * 3, (0.25,) * 3)


@pytest.mark.parametrize("text, match", [("not json {", "not JSON"), ("[1, 2]", "not an object"),
                                         ('{"a": NaN}', "not JSON"), ("[" * 100_000, "not JSON")])
def test_model_json_that_is_not_an_object(run_dir, text, match):
    (run_dir / "model.json").write_text(text)
    with pytest.raises(checkpoint.FinetuneRunError, match=match) as e:
        checkpoint.load_finetune_run(run_dir)
    assert "model.json" in str(e.value)


@pytest.mark.parametrize("key, value", [("num_classes", "two"), ("num_classes", 30_000_000), ("num_classes", 0),
                                        ("image_size", 200_000), ("image_size", 32.5), ("patch_size", -1),
                                        ("normalize_mean", []), ("normalize_mean", "text"),
                                        ("normalize_std", [0.0, 0.25, 0.25]), ("normalize_std", [1e300] * 3),
                                        ("ylim_mv", [-1e9, 1e9]), ("ylim_mv", [1, 1]), ("ylim_mv", [0]),
                                        ("layout", "<img>"), ("model", ["x"]), ("model", "")])
def test_model_json_values_no_trained_run_can_have(run_dir, key, value):
    _edit_record(run_dir, **{key: value})
    t0 = time.perf_counter()
    with pytest.raises(checkpoint.FinetuneRunError, match=key if key != "model" else "model") as e:
        checkpoint.load_finetune_run(run_dir)
    assert "model.json" in str(e.value) and time.perf_counter() - t0 < 10  # refused before allocating


def test_a_huge_model_json_is_refused_by_size(run_dir):
    with open(run_dir / "model.json", "r+b") as f:
        f.truncate(64 * 2**20)
    with pytest.raises(checkpoint.FinetuneRunError, match="over the cap"):
        checkpoint.load_finetune_run(run_dir)


@pytest.mark.parametrize("text, match", [
    ("!!python/object/apply:os.system ['echo hi']", "not valid YAML"),
    ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b, *b, *b, *b]\n",
     "aliases"),
    ("- just\n- a list\n", "not a mapping"), ("a: [\n", "not valid YAML")])
def test_config_yaml_that_is_not_a_plain_mapping(run_dir, text, match):
    (run_dir / "config.yaml").write_text(text)
    with pytest.raises(checkpoint.FinetuneRunError, match=match) as e:
        checkpoint.load_finetune_run(run_dir)
    assert "config.yaml" in str(e.value)


def test_a_fifo_as_config_yaml_is_typed_not_a_hang(run_dir):
    (run_dir / "config.yaml").unlink()
    os.mkfifo(run_dir / "config.yaml")
    with pytest.raises(checkpoint.FinetuneRunError, match="config.yaml"):
        checkpoint.load_finetune_run(run_dir)


@pytest.mark.parametrize("best", ["last", -1, 2.5, None, [1]])
def test_metrics_best_epoch_that_is_not_an_epoch(run_dir, best):
    (run_dir / "metrics.json").write_text(json.dumps({"best_epoch": best}))
    with pytest.raises(checkpoint.FinetuneRunError, match="best_epoch") as e:
        checkpoint.read_metrics(run_dir)
    assert "metrics.json" in str(e.value)


def test_04_reads_hostile_run_folders_with_typed_errors(tmp_path):
    d = write_fake_run(tmp_path, "mi", "heartbeit", 1.0)
    pm.list_runs(tmp_path)  # positive control
    (d / "metrics.json").write_text(json.dumps({"best_epoch": "last"}))
    with pytest.raises(pm.RunFolderError, match="best_epoch"):
        pm.list_runs(tmp_path)
    (d / "config.yaml").write_text(yaml.safe_dump({"task": "mi", "model": "heartbeit", "fraction": "all", "seed": 0}))
    with pytest.raises(pm.RunFolderError, match="config.yaml"):
        pm.list_runs(tmp_path)
    (d / "config.yaml").write_text("!!python/name:os.system\n")
    with pytest.raises(pm.RunFolderError, match="config.yaml"):
        pm.list_runs(tmp_path)


@pytest.mark.parametrize("text", ["[1]", "not json", '{"format": "x"}', "{}"])
def test_a_hostile_store_json_is_a_typed_store_error(tmp_path, text):
    from heartbeit_lib import cohorts
    (tmp_path / "store.json").write_text(text if text != "{}" else json.dumps({"format": cohorts.store.STORE_FORMAT}))
    (tmp_path / "manifest.parquet").write_text("x")
    with pytest.raises(cohorts.StoreError, match="store.json"):
        cohorts.CohortStore(tmp_path)
