"""Issue 24 item 1: 03 refuses a pretraining run that trained on ECGs of its own cohort's evaluation patients.

Oracle: the two cohort manifests, read here with pandas (a patient is an evaluation patient of a cohort when one
of their ECGs is in its val/test/external split; 02 trains on train + unassigned rows minus its own store's
evaluation patients)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from heartbeit_lib import cohorts
from heartbeit_lib.pipeline import finetune, overlap, runs
from heartbeit_lib.pipeline import pretrain as P

EVAL = ["val", "test", "external"]


def _store(root: Path, task: str, seed: int, signals, salt: str = "s"):
    x, meta = signals(96)
    tc = cohorts.TaskConfig(name=task, external_site="B", val_size=0.25)
    return cohorts.build_store_from_arrays(root / "01_preprocess" / task, x, meta, task=tc, seed=seed, salt=salt)


def _pretrain_run(root: Path, store, make_ckpt, **kw) -> Path:
    """A 02_pretrain run folder as 02 leaves it (config.yaml by runs.start_run, checkpoints/last.pt), without the
    training itself (a micro checkpoint): 03 reads only the config and the weights."""
    cfg = P.PretrainConfig(cohort_run=str(store.root), model_size="micro", image_size=32, num_masked=2, min_block=1,
                           out_root=str(root),
                           run_id=kw.pop("run_id", "pre"), **kw)
    run_dir = runs.start_run("02_pretrain", cfg)
    make_ckpt(run_dir / "checkpoints" / "last.pt", size="micro", img_size=32)
    runs.finish_run(run_dir, metrics={})
    return run_dir


def _expected(pre, ft) -> tuple[int, int]:
    m, f = pre.manifest, ft.manifest
    own_eval = set(m.patient_hash[m.split.isin(EVAL)])
    rows = m[m.split.isin(["train", "unassigned"]) & ~m.patient_hash.isin(own_eval)]
    hit = rows.patient_hash.isin(set(f.patient_hash[f.split.isin(EVAL)]))
    return int(hit.sum()), int(rows.patient_hash[hit].nunique())


def _cfg(root: Path, task: str, pre: Path, **kw) -> finetune.FinetuneConfig:
    return finetune.FinetuneConfig(task=task, model="heartbeit", pretrain_run=str(pre), epochs=1, batch_size=16,
                                   out_root=str(root), device="cpu", cache_images=True,
                                   run_id=kw.pop("run_id", task), **kw)


def test_finetune_refuses_a_pretraining_run_that_saw_its_evaluation_patients(tmp_path, toy_signals,
                                                                           fake_pretrain_checkpoint):
    mi = _store(tmp_path, "mi", 0, toy_signals)
    stemi = _store(tmp_path, "stemi", 1, toy_signals)  # same archive, another patient split
    pre = _pretrain_run(tmp_path, mi, fake_pretrain_checkpoint)  # 02 on mi's store with defaults
    n_ecg, n_pat = _expected(mi, stemi)
    assert n_ecg > 0  # the fixture leaks, else the test proves nothing
    with pytest.raises(overlap.PretrainOverlapError, match=rf"{n_ecg} ECGs of {n_pat} patients"):
        finetune.run_finetune(_cfg(tmp_path, "stemi", pre), figure=False)
    # the control: fine-tuning on mi itself from the same run
    res = finetune.run_finetune(_cfg(tmp_path, "mi", pre), figure=False)
    assert res.metrics["pretrain_overlap_ecgs"] == 0 and res.metrics["pretrain_overlap_patients"] == 0
    assert res.metrics["pretrain_rows"] == len(P.split_rows(P.PretrainConfig(cohort_run=str(mi.root)), mi)["train"])
    # allowed on request, with the counts in metrics.json
    res = finetune.run_finetune(_cfg(tmp_path, "stemi", pre, run_id="stemi-allowed", allow_pretrain_overlap=True),
                                figure=False)
    got = json.loads((res.run_dir / "metrics.json").read_text())
    assert (got["pretrain_overlap_ecgs"], got["pretrain_overlap_patients"]) == (n_ecg, n_pat)
    assert got["allow_pretrain_overlap"] is True


def test_stores_with_other_salts_are_refused_not_counted_as_zero(tmp_path, toy_signals, fake_pretrain_checkpoint):
    mi = _store(tmp_path, "mi", 0, toy_signals)
    other = _store(tmp_path, "stemi", 1, toy_signals, salt="another")
    pre = _pretrain_run(tmp_path, mi, fake_pretrain_checkpoint)
    with pytest.raises(overlap.SaltMismatchError, match="salt"):
        finetune.resolve_inputs(_cfg(tmp_path, "stemi", pre))
    cfg = finetune.resolve_inputs(_cfg(tmp_path, "stemi", pre, allow_pretrain_overlap=True))
    assert finetune.pretrain_overlap(cfg)["pretrain_overlap"] == "unverified"
    assert other.manifest.patient_hash.iloc[0] != mi.manifest.patient_hash.iloc[0]


def test_signal_rows_file_and_pretraining_mix_are_traced_to_patients(tmp_path, toy_signals, fake_pretrain_checkpoint):
    """A signal run's pretraining_rows.npy is what counts; a mix's rows are traced back to their source records."""
    mi = _store(tmp_path, "mi", 0, toy_signals)
    stemi = _store(tmp_path, "stemi", 1, toy_signals)
    sig = _pretrain_run(tmp_path, mi, fake_pretrain_checkpoint, run_id="sig", modality="signal")
    m, f = mi.manifest, stemi.manifest
    every = np.flatnonzero(m.split.isin(["train", "unassigned", "val"]).to_numpy())  # a run that kept everything
    np.save(sig / "pretraining_rows.npy", every)
    hit = m.patient_hash.iloc[every].isin(set(f.patient_hash[f.split.isin(EVAL)]))
    got = overlap.count_overlap(sig, stemi.root)
    assert (got["pretrain_overlap_ecgs"], got["pretrain_rows"]) == (int(hit.sum()), len(every))
    # a mix of mi's train ECGs (re-hashed patients): traced to mi's records, so stemi's patients are still found
    mix = cohorts.build_pretraining_mix(mi.root, tmp_path / "mix")
    pre = _pretrain_run(tmp_path, mix, fake_pretrain_checkpoint, run_id="mixrun")
    rows = P.split_rows(P.PretrainConfig(cohort_run=str(mix.root)), mix)["train"]
    src = set(mix.manifest.record_id.iloc[rows])
    key = m.site.astype(str) + "_" + m.record_id.astype(str)
    pats = m.patient_hash[key.isin(src)]
    want = int(pats.isin(set(f.patient_hash[f.split.isin(EVAL)])).sum())
    assert want > 0
    assert overlap.count_overlap(pre / "checkpoints" / "last.pt", stemi.root)["pretrain_overlap_ecgs"] == want


def test_07_names_scored_ecgs_external_only_when_checked_against_the_training_stores(tmp_path, toy_signals):
    """Issue 24 item 4: 07's validation row is 'external' only for patients verified absent from the training runs'
    stores (outside their external split); overlap is named with counts; other salts are 'unverified'.
    Oracle: the manifests' splits and patient hashes."""
    from types import SimpleNamespace

    from heartbeit_lib.pipeline import predict

    train = _store(tmp_path, "mi", 0, toy_signals)
    members = [SimpleNamespace(config={"cohort_run": str(train.root)})]
    m = train.manifest
    ext = m.patient_hash[m.split == "external"].to_numpy()
    assert predict.scored_data_name(members, train, ext) == "external (scored ECGs)"
    test = m.patient_hash[m.split == "test"].to_numpy()
    assert predict.scored_data_name(members, train, test) == (
        f"scored ECGs (overlaps training: {len(set(test))} patients / {len(test)} ECGs)")
    other = _store(tmp_path, "stemi", 1, toy_signals, salt="another")
    got = predict.scored_data_name(members, other, other.manifest.patient_hash[other.manifest.split == "external"])
    assert got == "scored ECGs (overlap with training unverified)"
    assert predict.scored_data_name(members, None, ext) == "scored ECGs (overlap with training unverified)"


def test_04_lists_runs_allowed_to_overlap_in_its_report_notes(tmp_path):
    """04 reads the overlap counts 03 recorded (metrics.json) and names those runs in the report notes."""
    import pandas as pd

    from heartbeit_lib.report import html

    table = pd.DataFrame({"run_dir": ["a/stemi-heartbeit", "a/control-run"], "complete": [True, True],
                          "pretrain_overlap_ecgs": [12, 0], "pretrain_overlap_patients": [6, 0],
                          "pretrain_overlap": [None, None]})
    notes = html.report_notes(pd.DataFrame(), table)
    assert any("stemi-heartbeit: 12 ECGs of 6 patients" in n for n in notes)
    assert not any("control-run" in n for n in notes)
