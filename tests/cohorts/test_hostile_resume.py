"""Issue 27 item 11: a resumed store build notices inputs that changed; workers die with their parent.

Oracles: a fresh build of the changed inputs in another folder (the resumed store's shards must equal its
bytes), the untouched shard's file (not rewritten), and /proc (no worker outlives a SIGKILLed parent).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from heartbeit_lib import cohorts
from heartbeit_lib.cohorts import build

PTBXL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "ptbxl" / "records500" / "00000"


def _data(tmp_path: Path) -> Path:
    if not PTBXL.is_dir():
        pytest.skip("shared PTB-XL records are not here")
    root = tmp_path / "data"
    root.mkdir()
    for stem in sorted({p.stem for p in PTBXL.glob("*.hea")})[:4]:
        for ext in (".hea", ".dat"):
            shutil.copy(PTBXL / f"{stem}{ext}", root / f"{stem}{ext}")
    return root


def _build(root: Path, run: Path):
    src = cohorts.wfdb_source(root, cohorts.load_task("unlabelled"))
    return cohorts.build_store(src.inputs, src.reader, run, task_cfg="unlabelled", preprocess_kw={}, salt="s",
                               shard_size=2, workers=1, progress=False)


def test_a_resumed_build_rebuilds_the_shard_whose_input_changed(tmp_path):
    root = _data(tmp_path)
    first = _build(root, tmp_path / "run")
    assert len(first) == 4
    shard0, shard1 = (tmp_path / "run" / "store" / f"{build.shard_name(i)}.npy" for i in (0, 1))
    before0, before1 = shard0.stat().st_mtime_ns, shard1.read_bytes()
    stems = sorted(p.stem for p in root.glob("*.hea"))
    time.sleep(0.01)  # record 3 (in shard 1) becomes a copy of record 0's signal: other bytes, a new mtime
    shutil.copy(root / f"{stems[0]}.dat", root / f"{stems[3]}.dat")
    (root / f"{stems[3]}.hea").write_text((root / f"{stems[0]}.hea").read_text().replace(stems[0], stems[3]))
    resumed = _build(root, tmp_path / "run")
    fresh = _build(root, tmp_path / "fresh")
    assert shard0.stat().st_mtime_ns == before0  # unchanged inputs: the shard is kept
    assert shard1.read_bytes() != before1
    for i in (0, 1):
        name = f"{build.shard_name(i)}.npy"
        assert (tmp_path / "run" / "store" / name).read_bytes() == (tmp_path / "fresh" / "store" / name).read_bytes()
    assert len(resumed) == len(fresh) == 4
    np.testing.assert_array_equal(resumed.signals(np.arange(4)), fresh.signals(np.arange(4)))


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def test_workers_die_with_their_parent(tmp_path):
    code = ("import time\nfrom heartbeit_lib.cohorts import build\n"
            "if __name__ == '__main__':\n"
            "    print('start', flush=True)\n"
            "    list(build._map_in_processes(time.sleep, iter([120, 120]), 2, 2))\n")
    (tmp_path / "parent.py").write_text(code)
    parent = subprocess.Popen([sys.executable, str(tmp_path / "parent.py")], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(cohorts.__file__).parents[2])})
    try:
        assert parent.stdout.readline().strip() == "start"
        workers: list[int] = []
        deadline = time.time() + 60
        while time.time() < deadline and len(workers) < 2:  # the spawn workers (a resource tracker may be there too)
            workers = [c for c in _children(parent.pid)
                       if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text(errors="replace")]
            time.sleep(0.2)
        assert len(workers) == 2
        deadline = time.time() + 180
        while time.time() < deadline and not all(_state(w) == "S" for w in workers):
            time.sleep(0.2)  # imported, initialised, asleep in time.sleep (the case that outlived its parent)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 10
        while time.time() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.2)
        assert not any(_alive(w) for w in workers)
    finally:
        for w in _children(parent.pid):
            os.kill(w, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
