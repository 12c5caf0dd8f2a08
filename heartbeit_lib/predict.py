"""Public path ``heartbeit_lib.predict`` (and ``python -m heartbeit_lib.predict``): the code lives in ``heartbeit_lib.pipeline.predict``."""
import sys

if __name__ == "__main__":
    from heartbeit_lib.pipeline.predict import main

    sys.exit(main())
elif __name__ != "__mp_main__":  # a spawn worker of the store build re-imports this file under that name: it reads
    from heartbeit_lib.pipeline import predict as _impl  # files and needs none of 07 (torch took most of its start)

    sys.modules[__name__] = _impl
