"""Collecting 03_finetune runs (heartbeit_lib.pipeline.metrics), Tables 1-3, figures and the HTML report
(heartbeit_lib.report: tables, figures, html).

The fixtures are fake 03_finetune run folders that follow the cross-team contract
(``config.yaml``, ``run.json``, ``log.jsonl``, ``predictions.parquet``, ``metrics.json``) with
synthetic predictions (:func:`make_fake_sweep` in conftest.py, also used by ``test_notebook_04.py``).
Oracles: ``sklearn.metrics.roc_auc_score`` / ``average_precision_score`` (1e-12) for the numbers,
hand-computed counts for Table 1, and regular expressions for the cell layout.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from conftest import MODELS, fake_labels, make_fake_sweep, write_fake_run
from heartbeit_lib.pipeline import metrics as pm
from heartbeit_lib.report import figures, html, tables

@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return make_fake_sweep(tmp_path_factory.mktemp("sweep") / "03_finetune")


@pytest.fixture(scope="module")
def evaluated(sweep):
    preds = pm.collect_runs(sweep)
    res, diffs = pm.evaluate_predictions(preds, n_boot=60, seed=0, auprc_method="ap")
    return preds, res, diffs


@pytest.mark.slow
def test_collect_runs_reads_best_epoch_and_skips_incomplete(sweep):
    table = pm.list_runs(sweep)
    assert len(table) == 2 * 4 * 5 + 1 and table["complete"].sum() == 40
    bad = table[~table["complete"]]
    assert bad["model"].tolist() == ["resnet152_scratch"] and bad["missing"].iloc[0] == "metrics.json"
    preds = pm.collect_runs(sweep)
    assert set(preds["model"]) == set(MODELS)
    for (task, model, frac), g in preds.groupby(["task", "model", "fraction"]):
        met = json.loads((Path(g["run_dir"].iloc[0]) / "metrics.json").read_text())
        assert (g["epoch"] == met["best_epoch"]).all()
        t = g[g["split"] == "test"]
        # oracle: sklearn on the best-epoch predictions equals what the run reported
        assert roc_auc_score(t["label"], t["score"]) == pytest.approx(met["test_auroc"], abs=1e-12)
    assert set(preds.loc[preds["task"] == "stemi", "split"]) == {"val", "test"}


@pytest.mark.slow
def test_report_notes_name_non_paper_architectures(tmp_path, evaluated):
    """A micro model must not pass for BEiT-B/16 in the report: the notes name size and image size."""
    _, res, _ = evaluated
    d = write_fake_run(tmp_path, "hcm", "beit_b16_scratch", 1.0)
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    assert pm.list_runs(tmp_path)["model_size"].tolist() == ["base"]  # default: the paper's size
    assert not any("Architectures" in n for n in html.report_notes(res, pm.list_runs(tmp_path)))
    (d / "config.yaml").write_text(yaml.safe_dump({**cfg, "model_size": "micro", "image_size": 112}))
    notes = [n for n in html.report_notes(res, pm.list_runs(tmp_path)) if "Architectures" in n]
    assert notes == ["Architectures differ from the paper's base models at 224 px (labels name the model family): "
                     "beit_b16_scratch: size micro, 112 px."]
    # an incomplete run is not in the report: its architecture is not noted
    (d / "metrics.json").unlink()
    assert pm.list_runs(tmp_path)["complete"].tolist() == [False]
    assert not any("Architectures" in n for n in html.report_notes(res, pm.list_runs(tmp_path)))


def test_model_labels_and_order():
    assert tables.model_label("beit_b16_scratch") == "BEiT-B/16 (scratch)"
    assert tables.model_label("my_net") == "my_net"
    assert tables.order_models(["heartbeit", "zeta", "resnet152_scratch", "resnet152", "vit_b16"]) == [
        "vit_b16", "resnet152", "resnet152_scratch", "heartbeit", "zeta"]


def test_collect_runs_rejects_broken_predictions(tmp_path):
    d = write_fake_run(tmp_path, "hcm", "heartbeit", 1.0)
    pd.read_parquet(d / "predictions.parquet").drop(columns="score").to_parquet(d / "predictions.parquet")
    with pytest.raises(pm.RunFolderError, match="predictions.parquet.*score"):
        pm.collect_runs(tmp_path)
    with pytest.raises(FileNotFoundError, match="finetune_root"):
        pm.list_runs(tmp_path / "nope")


@pytest.mark.slow
def test_results_equal_sklearn_and_reported(evaluated):
    preds, res, diffs = evaluated
    assert len(res) == 4 * 5 * 3  # models x fractions x (hcm test, hcm external, stemi test)
    assert set(res["split"]) == {"test", "external"}
    assert (res["auroc"] - res["reported_auroc"]).abs().max() < 1e-12
    assert (res["auprc"] - res["reported_auprc"]).abs().max() < 1e-12
    assert ((res["auroc_lo"] <= res["auroc"]) & (res["auroc"] <= res["auroc_hi"])).all()
    assert len(diffs) == 3 * 5 * 3 and set(diffs["reference"]) == {"heartbeit"}
    # the difference equals the difference of the two rows' point estimates
    d = diffs.iloc[0]
    a = res[(res.task == d.task) & (res.split == d.split) & (res.fraction == d.fraction) & (res.model == "heartbeit")]
    b = res[(res.task == d.task) & (res.split == d.split) & (res.fraction == d.fraction) & (res.model == d.baseline)]
    assert d.auroc_diff == pytest.approx(a.auroc.iloc[0] - b.auroc.iloc[0], abs=1e-15)


@pytest.mark.slow
def test_tables_layout_and_bold(evaluated, tmp_path):
    preds, res, diffs = evaluated
    t = tables.metric_table(res, "auroc")
    assert list(t.cells.columns) == ["0.01", "0.1", "0.25", "0.5", "1"]
    assert t.cells.index.names == ["task", "split", "model"]
    # rows task x split x model in the paper's order (HeartBEiT last)
    rows = t.cells.index.to_frame(index=False)
    hcm_int = rows[(rows.task == "HCM") & (rows.split == "internal")]
    assert hcm_int.model.tolist() == ["ViT-B/16", "EfficientNet-B4", "ResNet-152", "HeartBEiT"]
    assert [k[:2] for k in t.cells.index[::4]] == [("HCM", "internal"), ("HCM", "external"), ("STEMI", "internal")]
    cell = re.compile(r"^\d\.\d\d \(\d\.\d\d - \d\.\d\d\)$")
    assert all(cell.match(v) for v in t.cells.to_numpy().ravel())
    # bold = highest point estimate per column within task/split (oracle: the results table)
    sub = res[(res.task == "hcm") & (res.split == "external") & (res.fraction == 0.1)]
    best = tables.model_label(sub.loc[sub.auroc.idxmax(), "model"])
    sel = ((rows.task == "HCM") & (rows.split == "external")).to_numpy()
    col = t.bold["0.1"].to_numpy()[sel]
    assert rows[sel].model[col].tolist() == [best]
    md = t.to_markdown()
    assert md.count("**") == 2 * int(t.bold.to_numpy().sum()) + 2  # + the caption
    assert "| task | split | model | 0.01 | 0.1 | 0.25 | 0.5 | 1 |" in md
    h = t.to_html()
    assert h.count("font-weight: bold") >= 1 and "<caption>" in h

    out = tables.write_tables(res, preds, tmp_path, run_table=pm.list_runs(Path(preds.run_dir.iloc[0]).parent),
                             differences=diffs)
    for name in ("table1", "table2_auroc", "table3_auprc"):
        for ext in ("csv", "md", "html"):
            assert (tmp_path / f"{name}.{ext}").stat().st_size > 100
    csv = pd.read_csv(tmp_path / "table3_auprc.csv", index_col=[0, 1, 2])
    assert csv.shape == (12, 5) and not csv.to_numpy().astype(str)[0, 0].startswith("**")


@pytest.mark.slow
def test_table1_counts(evaluated, sweep):
    preds, _, _ = evaluated
    t1 = tables.evaluation_table1(preds, pm.list_runs(sweep))
    row = t1[(t1.task == "HCM") & (t1.split == "external")].iloc[0]
    y = fake_labels("hcm", "external", 160, 0.39)  # oracle: the fixture's own labels
    assert (row.ecgs, row.patients, row.positives) == (160, 80, int(y.sum()))
    assert row["prevalence_%"] == round(100 * y.mean(), 1)
    train = t1[(t1.task == "STEMI") & t1.split.str.startswith("train")]
    assert train.ecgs.tolist() == [20, 200, 500, 1000, 2000]


@pytest.mark.slow
def test_several_seeds_need_a_choice(evaluated):
    _, res, _ = evaluated
    two = pd.concat([res, res.assign(seed=1)])
    with pytest.raises(tables.TableError, match="finetune_seed"):
        tables.metric_table(two, "auroc")
    assert len(tables.select_seed(two, 1)) == len(res)


@pytest.mark.slow
def test_figures_and_self_contained_report(evaluated, tmp_path):
    preds, res, diffs = evaluated
    res1 = res[res.task == "hcm"]
    paths = figures.write_figures(preds, res1, diffs, tmp_path / "figures", splits=("external",), dpi=50)
    assert [p.name for p in paths] == ["roc_pr_hcm_external.png", "fraction_hcm_external.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = figures.plot_fraction_panels(res1, diffs, "hcm", "external")
    assert len(fig.axes) == 4  # A/B performance, C/D differences
    fig = figures.plot_roc_pr(preds, "hcm", "external")
    assert len(fig.axes) == 2 * 5
    written = {"table2_auroc": {"html": tables.metric_table(res1, "auroc").to_html()}}
    rep = html.write_report(tmp_path, written, paths, config={"n_boot": 60}, notes=["note"])
    text = rep.read_text()
    assert text.count("data:image/png;base64,") == 2
    assert not re.search(r"src=\"(?!data:)", text)  # nothing linked from outside the file
    assert "Table 2. AUROC" in text


def test_caption_names_the_epoch_rule_of_each_model():
    """The tables' caption states how each run's epoch was chosen (oracle: the runs' select_on, written by hand)."""
    res = pd.DataFrame({"model": ["heartbeit", "xresnet1d101", "vit_b16"], "select_on": ["val", "last", None]})
    cap = tables.epoch_rule_caption(res)
    assert "validation rows" in cap and "except xresnet1d101: the last epoch, no selection" in cap
    assert "vit_b16" not in cap  # a run without select_on (older folders) used validation, the default
    only_last = tables.epoch_rule_caption(res[res.model == "xresnet1d101"])
    assert only_last == ". Each run's epoch is the last epoch, no selection (the PTB-XL benchmark's protocol)"
    two_rules = tables.epoch_rule_caption(pd.DataFrame({"model": ["a", "b"], "select_on": ["last", "test"]}))
    assert two_rules == (". Each run's epoch is a: the last epoch, no selection (the PTB-XL benchmark's protocol); "
                         "b: the best test epoch (the paper's optimistic choice)")
    assert tables.epoch_rule_caption(res.drop(columns="select_on")) == (
        ". Each run's epoch is " + tables.VALIDATION_RULE)
