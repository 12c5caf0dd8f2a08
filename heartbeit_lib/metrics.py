"""Moved to ``heartbeit_lib.analysis.metrics``; this old path still works but warns (like timm's moved-module shims)."""
import sys
import warnings

from heartbeit_lib.analysis import metrics as _impl

warnings.warn(f"{__name__} is deprecated, import heartbeit_lib.analysis.metrics instead", FutureWarning, stacklevel=2)
sys.modules[__name__] = _impl
