"""Shared test fixtures.

``shared_data``: the real data folder ``../shared/data``. Missing locally -> skip; missing under
``CI=true`` -> fail, so CI can never go green by skipping the real-data tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
