"""Backbones, their weights and the spec table, below both ``mim/`` (pretraining) and ``classify/`` (fine-tuning).

:mod:`.registry` holds the table of registered names (:class:`~.registry.ModelSpec`: family, weights source and
tag), their sizes, ``create_model``, ``create_backbone``, ``normalization_for`` and the weight-file loaders;
:mod:`.signal_models` the 1-D CNNs of the PTB-XL benchmark (xresnet1d101, inception1d); :mod:`.stmem` the ST-MEM
signal transformer.
"""
