"""Moved to ``heartbeit_lib.mim.masking``; this old path still works but warns (like timm's moved-module shims)."""
import sys
import warnings

from heartbeit_lib.mim import masking as _impl

warnings.warn(f"{__name__} is deprecated, import heartbeit_lib.mim.masking instead", FutureWarning, stacklevel=2)
sys.modules[__name__] = _impl
