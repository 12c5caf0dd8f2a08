"""Typed errors of the metrics and the checks of their inputs (binary labels, finite scores, index arrays, method
names)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


AUPRC_METHODS = ("ap", "trapezoid")
CI_METHODS = ("percentile", "bca")


# ------------------------------------------------------------------------------------ errors


class MetricsInputError(ValueError):
    """Invalid input to a metric; ``argument`` names the offending parameter."""

    def __init__(self, argument: str, reason: str):
        self.argument = argument
        super().__init__(f"{argument}: {reason}")


class LengthMismatchError(MetricsInputError):
    """Arrays that must be aligned have different lengths (or are not 1-D)."""


class NonFiniteScoreError(MetricsInputError):
    """A score is NaN or infinite."""


class LabelValueError(MetricsInputError):
    """A label is not 0 or 1."""


class SingleClassError(MetricsInputError):
    """The labels hold only one class, so AUROC/AUPRC are undefined."""


class BootstrapIndicesError(MetricsInputError):
    """Bootstrap indices with the wrong shape, dtype or range."""


class BootstrapIndexMismatchError(BootstrapIndicesError):
    """Saved bootstrap indices belong to a different evaluation set (record ids differ)."""


class RunMismatchError(ValueError):
    """Runs that should share an evaluation set (same task and split) do not."""


class DegenerateIntervalWarning(RuntimeWarning):
    """An interval could not be computed (e.g. BCa with a constant bootstrap distribution)."""


# ------------------------------------------------------------------------------------ validation


def _check_labels(y: Any, argument: str = "y_true") -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise LengthMismatchError(argument, f"must be 1-D, got shape {y.shape}")
    if y.size == 0:
        raise LengthMismatchError(argument, "is empty")
    if y.dtype == bool:
        return y.astype(np.int8)
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise LabelValueError(argument, f"labels must be numeric 0/1, got dtype {y.dtype}")
    bad = ~((y == 0) | (y == 1))  # NaN compares False -> bad
    if bad.any():
        vals = np.unique(y[bad])[:5]
        raise LabelValueError(argument, f"labels must be 0 or 1; found {vals.tolist()} "
                                        f"({int(bad.sum())} of {y.size} values)")
    return y.astype(np.int8)


def _check_scores(s: Any, n: int, argument: str = "y_score") -> np.ndarray:
    s = np.asarray(s)
    if s.ndim != 1:
        raise LengthMismatchError(argument, f"must be 1-D, got shape {s.shape}")
    if s.shape[0] != n:
        raise LengthMismatchError(argument, f"has {s.shape[0]} scores but y_true has {n} labels")
    if not (np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer)
            or s.dtype == bool):
        raise NonFiniteScoreError(argument, f"scores must be numeric, got dtype {s.dtype}")
    s = s.astype(np.float64)
    bad = ~np.isfinite(s)
    if bad.any():
        raise NonFiniteScoreError(argument, f"{int(bad.sum())} of {n} scores are NaN or infinite "
                                            f"(first at position {int(np.flatnonzero(bad)[0])})")
    return s


def validate_binary(y_true: Any, y_score: Any, *, score_name: str = "y_score",
                    label_name: str = "y_true") -> tuple[np.ndarray, np.ndarray]:
    """Check and convert one binary evaluation set.

    Parameters
    ----------
    y_true : (n,) array-like of {0, 1} (bool, int or float)
    y_score : (n,) array-like of finite floats (higher = more likely class 1)

    Returns
    -------
    y : (n,) int8, s : (n,) float64

    Raises
    ------
    LengthMismatchError, LabelValueError, NonFiniteScoreError, SingleClassError
        each naming the argument and the reason.
    """
    y = _check_labels(y_true, label_name)
    s = _check_scores(y_score, y.shape[0], score_name)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise SingleClassError(label_name, f"holds a single class ({n_pos} positives of {y.size}); "
                                           "AUROC and AUPRC need both classes")
    return y, s


def _check_method(name: str, value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise MetricsInputError(name, f"{value!r} is not one of {list(allowed)}")
    return value


def _check_indices(indices: Any, n: int, argument: str = "indices") -> np.ndarray:
    idx = np.asarray(indices)
    if idx.ndim != 2:
        raise BootstrapIndicesError(argument, f"must be 2-D (n_boot, n), got shape {idx.shape}")
    if idx.shape[1] != n:
        raise BootstrapIndicesError(argument, f"resamples have {idx.shape[1]} indices but the "
                                              f"evaluation set has {n} samples")
    if not np.issubdtype(idx.dtype, np.integer):
        raise BootstrapIndicesError(argument, f"must be integers, got dtype {idx.dtype}")
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise BootstrapIndicesError(argument, f"values must lie in [0, {n}), got "
                                              f"[{idx.min()}, {idx.max()}]")
    return idx
