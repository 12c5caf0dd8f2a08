"""The pretraining hold-out (issue 25 item 5): with ``max_val`` only the evaluated patients leave training.

Oracle: counts from the store's manifest (ECGs per patient) and the uncapped draw of the same seed."""

from __future__ import annotations

import numpy as np

from heartbeit_lib import cohorts
from conftest import REPO_ROOT
from heartbeit_lib.pipeline import pretrain, runs


def test_max_val_holds_out_only_the_evaluated_patients(tmp_path, make_toy_store):
    store = cohorts.CohortStore(make_toy_store(tmp_path, n=120).root)
    cfg = pretrain.PretrainConfig(cohort_run=str(store.root), val_split=None, val_fraction=0.5, seed=1)
    full = pretrain.split_rows(cfg, store)  # half of the training patients held out
    capped = pretrain.split_rows(cfg.__class__(**{**cfg.to_dict(), "max_val": 5}), store)
    everything = np.union1d(full["train"], full["val"])
    patient = store.manifest["patient_hash"].to_numpy()
    held = np.flatnonzero(np.isin(patient, patient[capped["val"]]))  # every ECG of the held-out patients
    assert len(capped["val"]) == 5
    assert set(patient[capped["val"]]) <= set(patient[full["val"]])  # the first patients of the same draw
    assert len(held) == 6  # 3 patients of 2 ECGs reach 5; before the fix 15 patients (30 ECGs) left training
    np.testing.assert_array_equal(capped["train"], np.setdiff1d(everything, held))
    assert not set(patient[capped["train"]]) & set(patient[capped["val"]])  # patient-disjoint
    assert len(full["val"]) == 30 and "until max_val 5" in capped["held_out"]


def test_paper_files_cap_the_held_out_set():
    for name in ("paper.yaml", "paper_ecg_kmeans.yaml"):
        assert runs.load_parameter_files(REPO_ROOT / "parameters/02_pretrain" / name).get("max_val"), name


def test_token_baselines_use_at_most_max_val_held_out_ecgs():
    """Issue 25 item 9: rank 0 computed the baselines on every held-out ECG (694 s at 850k) while the other ranks
    waited in DDP's first NCCL collective.  Oracle: the majority-token accuracy recomputed by hand on the evenly
    spaced held-out items."""
    from conftest import tiny_mim_data

    data = tiny_mim_data()  # 8 held-out images
    full = pretrain.token_baselines(data)
    assert full["n_val"] == 8 and full == pretrain.token_baselines(data, max_val=100)
    capped = pretrain.token_baselines(data, max_val=3)
    pos = [0, 4, 7]  # np.linspace(0, 7, 3) rounded
    va = data.val.all_tokens()[pos]
    masks = np.stack([data.val.mask(i) for i in pos])
    assert capped["n_val"] == 3
    assert capped["majority_acc"] == float((va == capped["majority_token"])[masks].mean())
