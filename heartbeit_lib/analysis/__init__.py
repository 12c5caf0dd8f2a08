"""Statistics and algorithms: AUROC/AUPRC with bootstrap CIs (metrics/), image Wasserstein distances
(wasserstein.py), saliency maps, attribution and faithfulness (saliency/).

Nothing here imports ``heartbeit_lib.pipeline``.
"""
