"""Public path ``heartbeit_lib.models``: the code lives in ``heartbeit_lib.classify.registry``; this name stays the same module."""
import sys

from heartbeit_lib.classify import registry as _impl

sys.modules[__name__] = _impl
