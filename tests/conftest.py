"""Shared test fixtures.

``shared_data``: the real data folder ``../shared/data``. Missing locally -> skip; missing under
``CI=true`` -> fail, so CI can never go green by skipping the real-data tests.
``chromium``: headless Chromium for tests that open an HTML page in a real browser (Debian:
``apt-get install -y chromium``); missing locally -> skip, missing under ``CI=true`` -> fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
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


def _ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


#: appended to a copy of a page: after the load event, [complete, naturalWidth] of every <img> in a <pre>
_IMAGE_PROBE = ("<script>window.addEventListener('load',()=>{const r=[...document.images].map(i=>[i.complete,"
                "i.naturalWidth]);const p=document.createElement('pre');p.id='image-probe';"
                "p.textContent=JSON.stringify(r);document.body.appendChild(p);});</script>")


class Chromium:
    """Headless Chromium (no network, no sandbox: tests run as root in containers), one fresh profile per call."""

    FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync")

    def __init__(self, exe: str, work_dir: Path):
        self.exe, self.work_dir, self.calls = exe, Path(work_dir), 0

    def run(self, *args: str, timeout: float = 120) -> str:
        """Run chromium with :attr:`FLAGS` and ``args``; its stdout (fails the test on a non-zero exit)."""
        self.calls += 1
        profile = self.work_dir / f"chromium-profile-{self.calls}"
        res = subprocess.run([self.exe, *self.FLAGS, f"--user-data-dir={profile}", *args],
                             capture_output=True, text=True, timeout=timeout)
        assert res.returncode == 0, f"chromium failed ({res.returncode}): {res.stderr[-2000:]}"
        return res.stdout

    def image_states(self, page: Path) -> list[list]:
        """``[complete, naturalWidth]`` of every <img> of ``page`` after its load event (a probe script is
        appended to a copy next to it, so relative image paths still resolve)."""
        probe = page.with_name("probe-" + page.name)
        probe.write_text(page.read_text().replace("</body>", _IMAGE_PROBE + "</body>"))
        dom = self.run("--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
        m = re.search(r'<pre id="image-probe">(.*?)</pre>', dom, re.S)
        assert m, f"the load probe did not run; DOM tail: {dom[-500:]}"
        return json.loads(m.group(1))

    def screenshot(self, page: Path, png: Path, size: tuple[int, int] = (1200, 2000)) -> Path:
        """PNG screenshot of ``page`` in a ``size`` = (width, height) window."""
        self.run("--hide-scrollbars", f"--screenshot={png}", f"--window-size={size[0]},{size[1]}", page.as_uri())
        return png


@pytest.fixture
def chromium(tmp_path) -> Chromium:
    """A :class:`Chromium` (skip when not installed; fail under CI=true)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        msg = "chromium is not installed (Debian: apt-get install -y chromium)"
        if _ci():
            pytest.fail(msg + " - under CI=true this is a failure, not a skip")
        pytest.skip(msg)
    return Chromium(exe, tmp_path)
