"""heartbeit_lib.cohorts.benchmark_labels against the PTB-XL benchmark's own rules.

Oracle: a line-for-line transcription of ``utils.compute_label_aggregations`` and ``utils.select_data`` of
helme/ecg_ptbxl_benchmarking (``code/utils/utils.py``, min_samples=0) with sklearn's ``MultiLabelBinarizer``, run on
the whole PTB-XL v1.0.1 table (../shared/data/ptbxl-full: 21,837 records, nearly all never used by the developers'
tests), compared exactly (0/1 integers). Published counts as a second oracle: the PTB-XL paper's superclass counts
(NORM 9,528, MI 5,486, STTC 5,250, CD 4,907, HYP 2,655) and the benchmark's class numbers (71/44/23/5/19/12).
"""

from __future__ import annotations

import ast

import numpy as np
import pandas as pd
import pytest
from sklearn.preprocessing import MultiLabelBinarizer

from heartbeit_lib import cohorts
from heartbeit_lib.cohorts.benchmark import BENCHMARK_TASKS


def _oracle(df, aggregation_df, ctype):
    """compute_label_aggregations + select_data(min_samples=0) of the benchmark, transcribed (``table.loc[key]
    [column]`` read through a dict of the same column: the same value, 50x faster)."""
    diag_agg_df = aggregation_df[aggregation_df.diagnostic == 1.0]

    def agg(y_dic, table, column):
        tmp = []
        index, col = set(table.index), (None if column is None else table[column].to_dict())
        for key in y_dic.keys():
            if key in index:
                c = key if column is None else col[key]
                if str(c) != "nan":
                    tmp.append(c)
        return list(set(tmp))

    if ctype == "diagnostic":
        labels = df.scp_codes.apply(lambda d: agg(d, diag_agg_df, None))
    elif ctype == "subdiagnostic":
        labels = df.scp_codes.apply(lambda d: agg(d, diag_agg_df, "diagnostic_subclass"))
    elif ctype == "superdiagnostic":
        labels = df.scp_codes.apply(lambda d: agg(d, diag_agg_df, "diagnostic_class"))
    elif ctype in ("form", "rhythm"):
        table = aggregation_df[aggregation_df[ctype] == 1.0]
        labels = df.scp_codes.apply(lambda d: agg(d, table, None))
    else:
        labels = df.scp_codes.apply(lambda x: list(set(x.keys())))
    if ctype != "diagnostic":  # select_data: the min_samples filter (every class of count > 0 survives)
        counts = pd.Series(np.concatenate(labels.values)).value_counts()
        counts = counts[counts > 0]
        labels = labels.apply(lambda x: list(set(x).intersection(set(counts.index.values))))
    labels = labels[labels.apply(len) > 0]
    mlb = MultiLabelBinarizer()
    y = mlb.fit_transform(labels.values)
    return pd.DataFrame(y, index=labels.index, columns=list(mlb.classes_))


@pytest.fixture(scope="module")
def full(shared_data):
    return shared_data / "ptbxl-full"


@pytest.fixture(scope="module")
def tables(full):
    df = pd.read_csv(full / "ptbxl_database.csv", index_col="ecg_id")
    df.scp_codes = df.scp_codes.apply(lambda x: ast.literal_eval(x))
    return df, pd.read_csv(full / "scp_statements.csv", index_col=0)


N_CLASSES = {"all": 71, "diagnostic": 44, "subdiagnostic": 23, "superdiagnostic": 5, "form": 19, "rhythm": 12}


@pytest.mark.slow
@pytest.mark.parametrize("task", BENCHMARK_TASKS)
def test_benchmark_labels_equal_the_benchmark_code(full, tables, task):
    got = cohorts.benchmark_labels(full / "ptbxl_database.csv", task)
    want = _oracle(*tables, task)
    assert got.shape[1] == N_CLASSES[task]
    assert got.index.name == "ecg_id" and got.index.dtype == np.int64
    assert list(got.columns) == list(want.columns)  # sorted, MultiLabelBinarizer's order
    assert np.array_equal(got.index.to_numpy(), want.index.to_numpy())
    assert np.array_equal(got.to_numpy(), want.to_numpy()) and got.dtypes.eq(np.int64).all()
    assert (got.sum(axis=1) > 0).all()


def test_superdiagnostic_counts_equal_the_published_ones(full):
    got = cohorts.benchmark_labels(full / "ptbxl_database.csv", "superdiagnostic",
                                   scp_statements_csv=full / "scp_statements.csv")
    assert got.sum().to_dict() == {"CD": 4907, "HYP": 2655, "MI": 5486, "NORM": 9528, "STTC": 5250}


def test_unknown_task_is_a_typed_error_listing_the_six(full):
    with pytest.raises(cohorts.TaskError, match="superdiagnostic") as e:
        cohorts.benchmark_labels(full / "ptbxl_database.csv", "superdiag")
    assert all(t in str(e.value) for t in BENCHMARK_TASKS)


def test_hostile_scp_codes_is_a_typed_error_naming_the_record(tmp_path, full):
    db = pd.read_csv(full / "ptbxl_database.csv", nrows=3)
    db.loc[1, "scp_codes"] = "{[1]: 2}"
    db.to_csv(tmp_path / "ptbxl_database.csv", index=False)
    with pytest.raises(cohorts.TaskError, match=f"ecg_id {db.loc[1, 'ecg_id']}"):
        cohorts.benchmark_labels(tmp_path / "ptbxl_database.csv", "all", full / "scp_statements.csv")
    with pytest.raises(cohorts.TaskError, match="is not a file"):
        cohorts.benchmark_labels(tmp_path / "ptbxl_database.csv", "all")  # no scp_statements.csv beside it
