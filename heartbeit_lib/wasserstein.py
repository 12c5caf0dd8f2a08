"""Public path ``heartbeit_lib.wasserstein``: the code lives in ``heartbeit_lib.analysis.wasserstein``; this name stays the same module."""
import sys

from heartbeit_lib.analysis import wasserstein as _impl

sys.modules[__name__] = _impl
