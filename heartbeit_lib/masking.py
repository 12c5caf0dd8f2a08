"""Public path ``heartbeit_lib.masking``: the code lives in ``heartbeit_lib.mim.masking``; this name stays the same module."""
import sys

from heartbeit_lib.mim import masking as _impl

sys.modules[__name__] = _impl
