"""TEMPORARY alias of ``heartbeit_lib.pipeline.finetune`` (the old path of the fine-tuning code).

Only ``analysis/saliency.py`` and ``tests/test_saliency.py`` still import it; delete this file once they use
``heartbeit_lib.classify.checkpoint`` (``load_finetune_run``, ``load_best_weights``) and
``heartbeit_lib.pipeline.finetune``.  It is the one place where a module outside ``pipeline/`` names ``pipeline``.
"""
import sys

from heartbeit_lib.pipeline import finetune as _impl

sys.modules[__name__] = _impl
