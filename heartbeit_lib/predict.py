"""Public path ``heartbeit_lib.predict`` (and ``python -m heartbeit_lib.predict``): the code lives in ``heartbeit_lib.pipeline.predict``."""
import sys

from heartbeit_lib.pipeline import predict as _impl

if __name__ == "__main__":
    sys.exit(_impl.main())
sys.modules[__name__] = _impl
