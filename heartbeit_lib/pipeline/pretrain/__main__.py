"""``python -m heartbeit_lib.pipeline.pretrain`` (also ``python -m heartbeit_lib.pretrain``)."""

import sys

from heartbeit_lib.pipeline.pretrain import main

sys.exit(main())
