"""Moved to ``heartbeit_lib.analysis.wasserstein``; this old path still works but warns (like timm's moved-module shims)."""
import sys
import warnings

from heartbeit_lib.analysis import wasserstein as _impl

warnings.warn(f"{__name__} is deprecated, import heartbeit_lib.analysis.wasserstein instead", FutureWarning, stacklevel=2)
sys.modules[__name__] = _impl
