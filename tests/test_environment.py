"""The conda environment.yml and pyproject.toml declare the same dependencies (same names, same pins)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _norm(req: str) -> tuple[str, str]:
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", req)
    assert m, req
    return m.group(1).lower().replace("_", "-"), m.group(2).replace(" ", "")


def test_environment_matches_pyproject():
    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    py_deps = dict(_norm(r) for r in proj["dependencies"] + proj["optional-dependencies"]["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    env_deps = dict(_norm(r) for r in pip_section)
    assert env_deps == py_deps
    assert "python=3.11" in env["dependencies"]


def test_torch_pins():
    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = dict(_norm(r) for r in proj["dependencies"])
    assert deps["torch"] == "==2.14.1" and deps["torchvision"] == "==0.29.1"
