"""Public path ``heartbeit_lib.pretrain`` (and ``python -m heartbeit_lib.pretrain``): the code lives in ``heartbeit_lib.pipeline.pretrain``."""
import sys

from heartbeit_lib.pipeline import pretrain as _impl

if __name__ == "__main__":
    sys.exit(_impl.main())
sys.modules[__name__] = _impl
