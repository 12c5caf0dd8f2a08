"""Public path ``heartbeit_lib.metrics``: the code lives in ``heartbeit_lib.analysis.metrics``; this name stays the same module."""
import sys

from heartbeit_lib.analysis import metrics as _impl

sys.modules[__name__] = _impl
