"""Typed errors of cohort building, tasks and splits (all :class:`ValueError`)."""

from __future__ import annotations


class CohortError(ValueError):
    """A cohort store, task or split could not be built or read (the message says which and why)."""


class TaskError(CohortError):
    """A task file is missing, has unknown keys or an invalid value."""


class SplitError(CohortError):
    """A split cannot be made or used (too few patients, a patient crossing splits, a missing column, an empty
    or one-class split where training or epoch selection needs both classes)."""


class StoreError(CohortError):
    """A store folder is missing, incomplete, or was built with other inputs/parameters."""


class RecordError(CohortError):
    """One input record cannot be stored; :func:`build_store` turns it into a reject row."""


class LabelError(RecordError):
    """The record has no usable label for a labelled task (e.g. an empty LVEF value)."""


class NonFiniteOutputError(RecordError):
    """The signal to be stored holds NaN or inf."""


class AmplitudeRangeError(RecordError):
    """The preprocessed signal exceeds float16's range (+-65,504 uV): a wrong gain or unit."""


class StoredShapeError(RecordError):
    """A signal given as already preprocessed is not (8, 2500)."""


class WorkerDiedError(RecordError):
    """Reading the record killed the worker process (a crash in native code, the OOM killer...)."""
