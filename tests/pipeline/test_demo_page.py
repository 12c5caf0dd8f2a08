"""The demo's last page (heartbeit_lib.pipeline.demo.write_demo_page) from small fake run folders, opened in headless
Chromium.

Oracles: the browser itself (every <img> complete with a natural width > 0 after the load event: embedded images
that decode), the number of figures the fake runs hold, the synthetic-data notice and Table 2's cells in the DOM,
one link per HTML page of the runs, and a stage that did not run (05) leaving no section behind.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from matplotlib.figure import Figure

from heartbeit_lib.pipeline import demo


def _png(path, colour="C0"):
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(3, 2))
    fig.subplots().plot(np.arange(5), np.arange(5) ** 2, color=colour)
    fig.savefig(path, dpi=50)


def fake_demo(root):
    """Run folders of 02, 03 (a ViT and a signal model), 04, 06 and 07; 05 did not run."""
    st = {k: root / k / "demo" for k in ("01_preprocess", "02_pretrain", "04_metrics", "06_saliency", "07_predict")}
    for d in st.values():
        d.mkdir(parents=True)
        (d / f"{d.parent.name}.html").write_text("<html><body>run</body></html>")
    _png(st["02_pretrain"] / "pretrain_curve.png")
    _png(st["02_pretrain"] / "examples.png", "C1")
    (st["04_metrics"] / "tables").mkdir()
    pd.DataFrame({"model": ["HeartBEiT", "ViT-B/16 (scratch)", "ECG-CNN (signal)"],
                  "1%": ["0.71 (0.60-0.80)", "0.55 (0.44-0.66)", "0.60 (0.50-0.70)"],
                  "100%": ["0.93 (0.90-0.96)", "0.80 (0.74-0.86)", "0.88 (0.84-0.92)"]}
                 ).to_csv(st["04_metrics"] / "tables" / "table2_auroc.csv", index=False)
    _png(st["04_metrics"] / "figures" / "fraction_demo_test.png")
    _png(st["04_metrics"] / "figures" / "fraction_demo_external.png")
    _png(st["06_saliency"] / "overlays" / "demo-r0001-fullgrad.png", "C2")
    pd.DataFrame({"data": ["internal (training runs' test split)", "external (scored ECGs)"], "n": [40, 30],
                  "n_pos": [12, 9], "auroc": [0.9, 0.85], "auroc_lo": [0.8, 0.7], "auroc_hi": [0.97, 0.95],
                  "sensitivity": [0.8, 0.7], "note": ["", ""]}).to_csv(st["07_predict"] / "validation.csv", index=False)
    _png(st["07_predict"] / "reliability.png")
    _png(st["07_predict"] / "pictures" / "000_r0042.png", "C3")
    ft = []
    for model in ("vit_b16_scratch", "ecg_cnn"):
        d = root / "03_finetune" / f"demo-{model}-f1.0-s0"
        d.mkdir(parents=True)
        (d / "config.yaml").write_text(yaml.safe_dump({"model": model}))
        (d / "03_finetune.html").write_text("<html></html>")
        ft.append(d)
    return st, ft


@pytest.mark.slow
def test_demo_page_loads_with_its_images(tmp_path, chromium):
    st, ft = fake_demo(tmp_path)
    page = demo.write_demo_page(tmp_path / "demo_report.html", st, ft)
    states = chromium.image_states(page)
    # 2 fraction curves, pretraining curve, examples, overlay, reliability, one ECG page
    assert len(states) == 7 and all(ok and width > 0 for ok, width in states), states
    dom = chromium.run("--dump-dom", page.as_uri())
    assert "Synthetic data" in dom and "nothing here says anything clinical" in dom
    assert "0.93 (0.90-0.96)" in dom and "ECG-CNN (signal)" in dom and "ecg_cnn, vit_b16_scratch" in dom
    assert "Wasserstein" not in dom  # 05 did not run: no empty section
    assert dom.count('<li><a href="') == 5 + 2  # every run's HTML: 5 stages + 2 fine-tuning runs
    png = chromium.screenshot(page, tmp_path / "shot.png")
    assert png.stat().st_size > 10_000


def test_predict_run_prefers_heartbeit_at_full_data(tmp_path):
    runs_ = []
    for model, f in (("resnet152_scratch", "1.0"), ("heartbeit", "0.1"), ("heartbeit", "1.0"), ("ecg_cnn", "1.0")):
        d = tmp_path / f"demo-{model}-f{f}-s0"
        d.mkdir()
        (d / "config.yaml").write_text(yaml.safe_dump({"model": model}))
        if model != "ecg_cnn":
            (d / "model.json").write_text("{}")
        runs_.append(d)
    assert demo._predict_run(runs_).name == "demo-heartbeit-f1.0-s0"
    assert demo._predict_run(runs_[:2] + runs_[3:]).name == "demo-resnet152_scratch-f1.0-s0"


def test_demo_says_how_long_it_will_take(tmp_path):
    """Before anything runs: the last demo's own timing on this machine when recorded, else the documented one."""
    said = demo.expected_duration(tmp_path)
    assert said.startswith("about 7 min") and "417 s on 2 quiet cores" in said
    (tmp_path / demo.TIMINGS).write_text('{"seconds": 540.4, "cpu_count": 2, "load_start": 0.3, "load_end": 1.1}')
    said = demo.expected_duration(tmp_path)
    assert said.startswith("about 9 min") and "540 s on 2 cores at load 0.3" in said


def test_stage_timing_counts_the_cpu_of_finished_child_processes():
    """A stage that runs a child process (as papermill runs a kernel) records that child's CPU seconds; oracle: the
    child's own ``time.process_time()``, printed by it (the parent's share is small and only adds)."""
    import subprocess
    import sys

    code = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\nprint(time.process_time())"
    with demo._timed("child"):
        child_cpu = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                         check=True).stdout)
    rec = demo.STAGE_TIMES.pop("child")
    assert child_cpu >= 0.3 and rec["cpu_s"] >= child_cpu - 0.02 and rec["wall_s"] >= rec["cpu_s"] / 2
