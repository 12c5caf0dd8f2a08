"""Shared test fixtures.

``shared_data``: the real data folder ``../shared/data``. Missing locally -> skip; missing under
``CI=true`` -> fail, so CI can never go green by skipping the real-data tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from heartbeit_lib import cohorts
from heartbeit_lib.classify import registry as models

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def require_shared(sub: str = "") -> Path:
    path = SHARED_DATA / sub
    if not path.exists():
        msg = f"shared data folder {path} is missing (tests that need ../shared/data)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg + " - under CI=true this is a failure, not a skip")
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ``../shared/data`` (fails under CI=true when missing)."""
    return require_shared()


@pytest.fixture(scope="session")
def ptbxl_root() -> Path:
    return require_shared("ptbxl")


# ---------------------------------------------------------------- builders shared by the pretraining / fine-tuning tests
# (fixtures that return the builder, so no test file imports another)


def _smooth_ecgs(n: int, seed: int = 0):
    """float32 (n, 8, 2500) microvolts: periodic QRS-like spikes and T-like waves at 500 Hz."""
    rng = np.random.default_rng(seed)
    t = np.arange(2500) / 500
    x = np.zeros((n, 8, 2500), np.float32)
    for i in range(n):
        ph = (t * rng.uniform(0.8, 1.6) + rng.uniform()) % 1
        for lead in range(8):
            x[i, lead] = (rng.uniform(300, 1200) * np.exp(-((ph - 0.3) / 0.015) ** 2)
                          + rng.uniform(50, 300) * np.exp(-((ph - 0.6) / 0.06) ** 2))
    return x


def _toy_signals(n: int = 120, seed: int = 0, effect: float = 400.0):
    """(n, 8, 2500) float32 microvolts: a 3 Hz wave whose amplitude is 600 + effect * label +- 300 uV
    (a weak, learnable cue), 2 ECGs per patient, the last n/6 from site B (external)."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n)
    t = np.arange(2500) / 500
    amp = 600 + effect * label + rng.normal(0, 300, n)
    phase = rng.uniform(0, 2 * np.pi, n)
    x = amp[:, None, None] * np.sin(2 * np.pi * 3 * t[None, None, :] + phase[:, None, None]) * np.ones((1, 8, 1))
    x = (x + rng.normal(0, 100, (n, 8, 2500))).astype(np.float32)
    meta = pd.DataFrame({"record_id": [f"r{i:04d}" for i in range(n)], "patient_id": [f"p{i // 2}" for i in range(n)],
                         "site": ["A"] * (n - n // 6) + ["B"] * (n // 6), "label": label})
    return x, meta


def _make_toy_store(out_root, n: int = 120, task: str = "toy"):
    """A cohort store at ``<out_root>/01_preprocess/<task>`` (the 03 notebook's default cohort_run)."""
    x, meta = _toy_signals(n)
    tc = cohorts.TaskConfig(name=task, external_site="B", val_size=0.25)
    return cohorts.build_store_from_arrays(Path(out_root) / "01_preprocess" / task, x, meta, task=tc, seed=0)


def _fake_pretrain_checkpoint(path, size="micro", img_size=32, seed=0, mean=(0.9, 0.9, 0.9), std=(0.2, 0.2, 0.2)):
    """A checkpoint in the 02_pretrain contract format (backbone, backbone_config, normalize + state)."""
    torch.manual_seed(seed)
    bb = models.create_backbone(size, img_size=img_size)
    ckpt = {"backbone": bb.state_dict(), "backbone_config": {"size": size, "img_size": img_size, "patch_size": 16},
            "normalize": {"mean": list(mean), "std": list(std)}, "epoch": 3, "optimizer": {}}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return ckpt


@pytest.fixture(scope="session")
def smooth_ecgs():
    """``smooth_ecgs(n, seed=0)`` -> float32 (n, 8, 2500) microvolts of ECG-like beats."""
    return _smooth_ecgs


@pytest.fixture(scope="session")
def toy_signals():
    """``toy_signals(n=120, seed=0, effect=400.0)`` -> (signals, meta) of a learnable two-class toy cohort."""
    return _toy_signals


@pytest.fixture(scope="session")
def make_toy_store():
    """``make_toy_store(out_root, n=120, task="toy")`` -> the toy cohort store under ``out_root/01_preprocess``."""
    return _make_toy_store


@pytest.fixture(scope="session")
def fake_pretrain_checkpoint():
    """``fake_pretrain_checkpoint(path, size="micro", img_size=32, ...)`` writes a 02_pretrain-format checkpoint."""
    return _fake_pretrain_checkpoint
