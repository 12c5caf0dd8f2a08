"""Shared test fixtures.

``shared_data``: the real data folder ``../shared/data``. Missing locally -> skip; missing under
``CI=true`` -> fail, so CI can never go green by skipping the real-data tests.
``chromium``: headless Chromium for tests that open an HTML page in a real browser (Debian:
``apt-get install -y chromium``); missing locally -> skip, missing under ``CI=true`` -> fail.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from sklearn.metrics import average_precision_score, roc_auc_score

from heartbeit_lib import cohorts
from heartbeit_lib.models import registry as models
from heartbeit_lib.cohorts import synthetic
from heartbeit_lib.pipeline import finetune
from heartbeit_lib.pipeline import pretrain as P

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    """Test tiers: a test that runs a notebook or opens a browser starts processes, so it is ``slow`` too
    (``make test-fast`` = ``-m "not slow"``; tests that start processes otherwise are marked ``slow`` by hand)."""
    for item in items:
        if item.get_closest_marker("notebooks") or "chromium" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


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


# ---------------------------------------------------------------- fake 03_finetune sweeps (04_metrics, report)


FRACTIONS = (0.01, 0.1, 0.25, 0.5, 1.0)
MODELS = ("vit_b16", "efficientnet_b4", "resnet152", "heartbeit")
# class separation (logit shift between classes) per model at 100% of the training data
STRENGTH = {"vit_b16": 0.9, "efficientnet_b4": 1.2, "resnet152": 1.3, "heartbeit": 1.7}
TASKS = {  # task: sizes of (val, test, external), prevalence
    "hcm": ((80, 240, 160), 0.39),
    "stemi": ((80, 260, 0), 0.2),
}


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng(int(hashlib.sha256(repr(key).encode()).hexdigest()[:12], 16))


def write_fake_run(root: Path, task: str, model: str, fraction: float, seed: int = 0, epochs: int = 3,
                   complete: bool = True, sizes=(80, 240, 160), prevalence: float = 0.3) -> Path:
    """One fake ``<task>-<model>-f<fraction>-s<seed>`` run folder with synthetic predictions.

    Records and labels depend only on the task (the same evaluation sets for every model and
    fraction); scores separate the classes by ``STRENGTH[model]`` (less at small fractions) plus
    noise, rounded to 2 decimals so there are ties. The best epoch is the one with the highest
    validation AUROC (sklearn), and ``metrics.json`` reports sklearn's AUROC/AP at that epoch.
    """
    d = root / f"{task}-{model}-f{float(fraction)!r}-s{seed}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.yaml").write_text(yaml.safe_dump({"task": task, "model": model, "fraction": float(fraction),
                                                   "seed": seed, "epochs": epochs, "select_on": "val"}))
    (d / "run.json").write_text(json.dumps({"notebook": "03_finetune", "finished": None}))
    frames, log = [], []
    for epoch in range(1, epochs + 1):
        row = {"epoch": epoch}
        for split, n in zip(("val", "test", "external"), sizes):
            if n == 0:
                continue
            y = fake_labels(task, split, n, prevalence)
            r = _rng(task, model, fraction, seed, epoch, split)
            strength = STRENGTH.get(model, 1.0) * (0.55 + 0.45 * (1 + np.log10(fraction) / 2)) * (0.8 + 0.1 * epoch)
            score = 1 / (1 + np.exp(-(strength * (2 * y - 1) + r.normal(size=n))))
            score = np.round(score, 2)
            frames.append(pd.DataFrame({"record_id": [f"{task}-{split}-{i:05d}" for i in range(n)],
                                        "patient_hash": [f"p{task}{split}{i // 2:05d}" for i in range(n)],
                                        "split": split, "epoch": epoch, "label": y, "score": score}))
            row[f"{split}_auroc"] = roc_auc_score(y, score)
            row[f"{split}_auprc"] = average_precision_score(y, score)
        log.append(row)
    (d / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    pd.concat(frames, ignore_index=True).to_parquet(d / "predictions.parquet", index=False)
    if complete:
        best = max(log, key=lambda r: (r["val_auroc"], r["epoch"]))  # the later epoch on ties, as 03
        met = {"best_epoch": best["epoch"], "select_on": "val", "task": task, "model": model,
               "fraction": fraction, "seed": seed, "n_train": int(round(2000 * fraction)),
               "prevalence_train": prevalence}
        met.update({k: v for k, v in best.items() if k != "epoch"})
        (d / "metrics.json").write_text(json.dumps(met))
        (d / "run.json").write_text(json.dumps({"notebook": "03_finetune", "finished": "now"}))
    return d


def fake_labels(task: str, split: str, n: int, prevalence: float) -> np.ndarray:
    y = (_rng(task, split, "labels").random(n) < prevalence).astype(np.int64)
    y[:2] = (0, 1)  # both classes always present
    return y


def make_fake_sweep(root: Path, tasks=None, models=MODELS, fractions=FRACTIONS, seeds=(0,),
                    incomplete: int = 1) -> Path:
    """A fake sweep folder: every (task, model, fraction, seed) complete, plus ``incomplete``
    extra run folders without ``metrics.json`` (a crashed / running run) that must be skipped."""
    tasks = tasks or TASKS
    for task, (sizes, prev) in tasks.items():
        for model in models:
            for f in fractions:
                for s in seeds:
                    write_fake_run(root, task, model, f, s, sizes=sizes, prevalence=prev)
    for k in range(incomplete):
        write_fake_run(root, next(iter(tasks)), "resnet152_scratch", 0.5 + k / 10, complete=False)
    return root


# ---------------------------------------------------------------- synthetic ECGs and tiny runs (06_saliency)


def synth_ecgs(n: int, rng: np.random.Generator, t: int = 2500, fs: float = 500.0):
    """(n, 8, t) float32 microvolts: Gaussian P (150 uV, -160 ms), R (1000 uV, sigma 12 ms) and
    T waves (300 uV, +300 ms) at 55-100 bpm, per-lead gains (V1 negative), 20 uV noise; and the true
    R-peak samples of each record."""
    tt = np.arange(t) / fs
    gains = np.array([1, 1.2, -0.8, 1.5, 1.5, 1.3, 1.1, 0.9])
    x = np.zeros((n, 8, t), np.float32)
    peaks = []
    for i in range(n):
        rr = 60.0 / rng.uniform(55, 100)
        r = np.arange(rng.uniform(0.1, rr), t / fs - 0.05, rr)
        beat = sum(1000 * np.exp(-0.5 * ((tt - c) / 0.012) ** 2) + 150 * np.exp(-0.5 * ((tt - c + 0.16) / 0.025) ** 2)
                   + 300 * np.exp(-0.5 * ((tt - c - 0.3) / 0.05) ** 2) for c in r)
        x[i] = (rng.uniform(0.5, 1.5, 8) * gains)[:, None] * beat[None] + rng.normal(0, 20, (8, t))
        peaks.append(np.round(r * fs).astype(np.int64))
    return x, peaks


def toy_store(root, n: int = 96, task: str = "toy"):
    """A cohort store from synthetic ECGs; positives get +300 uV ST elevation in V1-V4
    (``synthetic.inject_st_elevation``), 2 ECGs per patient, the last sixth from site B (external)."""
    rng = np.random.default_rng(0)
    x, _ = synth_ecgs(n, rng)
    label = (np.arange(n) // 2) % 2
    x = synthetic.inject_st_elevation(x, np.where(label == 1, 300.0, 0.0))
    meta = pd.DataFrame({"record_id": [f"r{i:04d}" for i in range(n)], "patient_id": [f"p{i // 2}" for i in range(n)],
                         "site": ["A"] * (n - n // 6) + ["B"] * (n // 6), "label": label})
    tc = cohorts.TaskConfig(name=task, external_site="B", val_size=0.25)
    return cohorts.build_store_from_arrays(root / "01_preprocess" / task, x, meta, task=tc, seed=0)


def tiny_run(root, model: str, fraction: float = 1.0, task: str = "toy", **kw) -> finetune.FitResult:
    cfg = finetune.FinetuneConfig(task=task, model=model, model_size=kw.pop("model_size", "micro"), fraction=fraction,
                                  epochs=kw.pop("epochs", 1), batch_size=16, image_size=kw.pop("image_size", 32),
                                  out_root=str(root), device="cpu", cache_images=kw.pop("cache_images", True), **kw)
    return finetune.run_finetune(cfg, figure=False)


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


@pytest.fixture
def host_reads(monkeypatch) -> list:
    """Counts reads of tensor values into Python (``item``, ``float``, ``int``, ``bool``, ``tolist``): on a GPU
    each one waits for the device (a host sync).  The list gains one entry per read while the test runs."""
    reads: list = []
    for name in ("item", "__float__", "__int__", "__bool__", "tolist"):
        orig = getattr(torch.Tensor, name)

        def counted(self, *a, _orig=orig, _name=name, **k):
            reads.append(_name)
            return _orig(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counted)
    return reads


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


@pytest.fixture(autouse=True)
def _private_salt_file(tmp_path_factory, monkeypatch):
    """Every test gets its own default patient-hash salt file (never the user's ~/.local/share one);
    notebooks run by papermill inherit it through the environment."""
    monkeypatch.setenv("HEARTBEIT_SALT_FILE", str(tmp_path_factory.mktemp("salt") / "salt"))  # cohorts.ids.SALT_ENV
# ---------------------------------------------------------------- tiny trained runs and raw files (07_predict)

PREDICT_PREPROCESS = {"band": (0.5, 40.0), "order": 4, "median_kernel": 3, "start": 0, "pad": False}
WFDB_LEADS = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")


def predict_runs(root: Path, seeds=(0, 1)) -> list[Path]:
    """A preprocessed toy cohort store (``signals.preprocess`` with :data:`PREDICT_PREPROCESS`, recorded in its
    store.json) under ``root/01_preprocess/toypp`` and one 1-epoch micro ViT (32 px) run per seed on it."""
    rng = np.random.default_rng(0)
    n = 96
    x, _ = synth_ecgs(n, rng)
    label = (np.arange(n) // 2) % 2
    x = synthetic.inject_st_elevation(x, np.where(label == 1, 300.0, 0.0))
    meta = pd.DataFrame({"record_id": [f"r{i:04d}" for i in range(n)], "patient_id": [f"p{i // 2}" for i in range(n)],
                         "site": ["A"] * (n - n // 6) + ["B"] * (n // 6), "label": label})
    tc = cohorts.TaskConfig(name="toypp", external_site="B", val_size=0.25)
    cohorts.build_store_from_arrays(root / "01_preprocess" / "toypp", x, meta, task=tc, seed=0, preprocess=True,
                                    preprocess_kw=PREDICT_PREPROCESS)
    out = []
    for s in seeds:
        tiny_run(root, "vit_b16_scratch", task="toypp", seed=s, cohort_run=str(root / "01_preprocess" / "toypp"))
        out.append(root / "03_finetune" / f"toypp-vit_b16_scratch-f1.0-s{s}")
    return out


def write_wfdb_folder(folder: Path, n: int = 6, seed: int = 1) -> pd.DataFrame:
    """``n`` synthetic 8-lead WFDB records (10 s at 500 Hz, mV, format 16) ``ecg000..`` under ``folder`` (half with
    +300 uV ST elevation in V1-V4) and ``labels.csv`` (record_id, label); returns the labels table."""
    import wfdb  # only the tests that write WFDB files need it

    folder.mkdir(parents=True, exist_ok=True)
    x, _ = synth_ecgs(n, np.random.default_rng(seed), t=5000)
    label = np.arange(n) % 2
    x = synthetic.inject_st_elevation(x, np.where(label == 1, 300.0, 0.0))
    for i in range(n):
        wfdb.wrsamp(f"ecg{i:03d}", fs=500, units=["mV"] * 8, sig_name=list(WFDB_LEADS),
                    p_signal=(x[i].T / 1000.0).astype(np.float64), fmt=["16"] * 8, write_dir=str(folder))
    tab = pd.DataFrame({"record_id": [f"ecg{i:03d}" for i in range(n)], "label": label})
    tab.to_csv(folder / "labels.csv", index=False)
    return tab


# ---------------------------------------------------------------- distributed pretraining (test_ddp, test_launch)


def tiny_pretrain_config():
    """A 2-epoch micro MIM run on 32-px images: the same trajectory for every process layout."""
    return P.PretrainConfig(model_size="micro", image_size=32, epochs=2, batch_size=8, num_masked=2, min_block=1,
                            warmup_epochs=0.5, lr=2e-3, drop_path=0.0, device="cpu", progress=False, save_every=1)


def tiny_mim_data():
    """40 seeded random images with 2x2 tokens of a 16-code vocabulary: 32 to train, 8 held out."""
    g = torch.Generator().manual_seed(7)
    images = torch.rand(40, 3, 32, 32, generator=g)
    tokens = torch.randint(0, 16, (40, 2, 2), generator=g).numpy()
    return P.MIMData(P.MIMDataset(images[:32], tokens[:32], 2, 1, 0, P.TRAIN_STREAM),
                     P.MIMDataset(images[32:], tokens[32:], 2, 1, 0, P.VAL_STREAM),
                     16, {"kind": "test", "fingerprint": "ddp", "vocab_size": 16})


def free_port() -> int:
    """A free localhost TCP port for a process group's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def gloo_rank(rank: int, world: int, port: int):
    """Inside a worker process of a test's process group: the torchrun environment of ``rank`` of ``world`` on
    localhost ``port``, one torch thread; the process group (if the body started one) destroyed on the way out."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist

    try:
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
