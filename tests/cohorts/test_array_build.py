"""Store build as a job array: three independent tasks (concurrent processes) plus the merge step equal the
single-process :func:`cohorts.build_store` byte for byte.

Oracle: ``build_store`` in one process on the same inputs, salt and parameters; every file of both run folders
(shards, per-shard parts, manifest, rejects, store.json, build_spec.json) is compared as bytes (tolerance: none).
"""

from __future__ import annotations

import multiprocessing

import pytest

from heartbeit_lib import cohorts
from heartbeit_lib.pipeline.preprocess import PreprocessConfig

KW = dict(task_cfg="demo", seed=0, shard_size=8, preprocess_kw=PreprocessConfig().preprocess_kw(), salt="test-salt")


def _inputs():
    src = cohorts.demo_source(60, 0, 0.3, 0)
    inputs = src.inputs.copy()
    inputs.loc[[5, 33], "reject"] = "label missing"  # two rejects, in two different tasks' shards
    return inputs, src.reader


def _task(run_dir: str, index: int) -> None:
    inputs, reader = _inputs()
    cohorts.build_shard_range(inputs, reader, run_dir, task_index=index, n_tasks=3, **KW)


def _files(root):
    """Every file of a store folder but the build lock (a single-process build's `.build.lock`: who builds,
    not what was built)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".build.lock"}


@pytest.mark.slow
def test_three_array_tasks_plus_merge_equal_the_single_build(tmp_path):
    inputs, reader = _inputs()
    single = cohorts.build_store(inputs, reader, tmp_path / "single", workers=1, progress=False, **KW)
    assert cohorts.shard_ranges(8, 3) == [range(0, 3), range(3, 6), range(6, 8)]
    assert cohorts.shard_ranges(2, 3)[2] == range(2, 2)

    array = tmp_path / "array"
    cohorts.plan_build(inputs, array, **KW)  # the submitter: build_spec.json written once, before the tasks
    ctx = multiprocessing.get_context("spawn")  # fork can deadlock on locks held by torch threads
    procs = [ctx.Process(target=_task, args=(str(array), i)) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    with pytest.raises(cohorts.StoreError):  # merging before every shard exists is refused
        shard = array / "store" / "shard-00004.npy"
        saved = shard.read_bytes()
        shard.unlink()
        cohorts.merge_store(inputs, array, **KW)
    # the task is resumable: it rebuilds only the missing shard
    built = cohorts.build_shard_range(inputs, reader, array, task_index=1, n_tasks=3, **KW)
    assert [c["shard"] for c in built] == [4] and shard.read_bytes() == saved
    store = cohorts.merge_store(inputs, array, **KW)

    assert len(inputs) == len(store.manifest) + len(store.rejects) and len(store.rejects) == 2
    a, b = _files(tmp_path / "single"), _files(array)
    assert sorted(a) == sorted(b) and len(a) > 20
    assert [k for k in a if a[k] != b[k]] == []
    assert single.manifest.equals(store.manifest)
