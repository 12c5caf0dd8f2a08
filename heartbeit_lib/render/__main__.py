"""``python -m heartbeit_lib.render export <cohort_run> <out_dir> [--size --layout --split]``."""

import sys

from heartbeit_lib.render.export import main

sys.exit(main())
