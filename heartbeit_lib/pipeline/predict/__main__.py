"""``python -m heartbeit_lib.pipeline.predict`` (also ``python -m heartbeit_lib.predict``): :func:`main`."""
import sys

from heartbeit_lib.pipeline.predict import main

sys.exit(main())
