"""HeartBEiT: masked-image-model pretraining of a vision transformer on ECG images.

Layers, in the order data flows: ``io`` (readers) -> ``signals`` (filters, QRS) -> ``cohorts`` (tasks,
stores, splits) -> ``render`` (ECG images) -> ``mim`` (masked image modelling) and ``classify``
(model registry, fine-tuning engine) -> ``analysis`` (metrics, calibration, Wasserstein, saliency) ->
``report`` (tables, figures, pages). ``pipeline`` holds one module per notebook (its Config, its
driver) plus run folders, sweeps and the demo; nothing outside it imports it.
"""

__version__ = "0.1.0"
