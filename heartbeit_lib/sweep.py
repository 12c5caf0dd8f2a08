"""Public path ``heartbeit_lib.sweep`` (and ``python -m heartbeit_lib.sweep``): the code lives in ``heartbeit_lib.pipeline.sweep``."""
import sys

from heartbeit_lib.pipeline import sweep as _impl

if __name__ == "__main__":
    sys.exit(_impl.main())
sys.modules[__name__] = _impl
