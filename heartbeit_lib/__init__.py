"""HeartBEiT: masked-image-model pretraining of a vision transformer on ECG images.

One module per pipeline stage: ``io`` (readers), ``signals`` (filters), ``cohorts``
(stores, tasks, splits), ``render`` (ECG images), ``tokenizers``, ``masking``,
``models``, ``pretrain``, ``finetune``, ``metrics``, ``wasserstein``, ``saliency``,
``plots``; ``runs`` holds the run-folder and provenance helpers shared by notebooks.
"""

__version__ = "0.1.0"
