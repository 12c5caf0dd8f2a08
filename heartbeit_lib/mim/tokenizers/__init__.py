"""Visual tokenizers for masked image modelling: image batch -> (B, h, w) int64 token ids.

Two kinds share one interface (``tokenize``, ``vocab_size``, ``grid_for``, ``fingerprint``):

``dalle``
    The DALL-E dVAE encoder (Ramesh et al. 2021) used by BEiT and the HeartBEiT paper: vocabulary
    8,192, applied to the *second view* of the image at half the model's resolution (112 x 112 for
    224 x 224 images) after the logit-Laplace pixel map ``x -> (1 - 2 eps) x + eps`` (eps = 0.1);
    its three 2x max-pools give one token per 8 x 8 pixels of the view, i.e. one per 16 x 16 patch
    of the model's image (14 x 14 tokens).  The architecture is re-implemented here (group-based
    ResNet: a 7 x 7 input conv, 4 groups of ``n_blk_per_group`` residual blocks of widths
    1, 2, 4, 8 x ``n_hid``, a 1 x 1 output conv to the vocabulary) with the same parameter names
    as OpenAI's ``dall_e`` package, so its weights copy over key for key.  OpenAI ships them as
    ``encoder.pkl``, a *pickled Python module*: loading it runs the unpickler, which can execute
    arbitrary code, so :func:`load_tokenizer` refuses it unless ``trust_pickle=True``.  With that
    flag the module is unpickled (its ``dall_e`` classes mapped onto local stand-ins, so the
    ``dall_e`` package need not be installed) and its ``state_dict`` copied into our encoder.
    :func:`convert_dalle_pickle` writes that state dict to a plain file, which later loads with
    ``torch.load(weights_only=True)`` (the recommended path).

``ecg_kmeans``
    An ECG-native tokenizer that the project fits itself (the DALL-E weights cannot be shipped and
    were made for natural images): a k-means codebook over the pixels of each 16 x 16 patch of a
    rendered ECG (grey levels in [0, 1], average-pooled by ``pool`` to (16/pool)^2 features);
    a patch's token is its nearest centroid.  :func:`fit_kmeans_tokenizer` fits it
    (scikit-learn ``MiniBatchKMeans``), :func:`codebook_report` measures codebook usage
    (codes used, perplexity) and reconstruction error (patch -> centroid MSE).

Token pre-computation: :func:`precompute_tokens` renders and tokenizes every ECG of a cohort store
once and caches the result as ``<store>/tokens/<key>.npy`` (int16, or int32 for vocabularies over
32,767 codes; (N, h, w) in store order), where ``key`` hashes the tokenizer's weights and the
render settings, so a new tokenizer or image size never reads stale tokens.

Images everywhere: uint8 in [0, 255] or float in [0, 1]; (B, H, W) grey, (B, H, W, C) or
(B, C, H, W) with C in {1, 3}; numpy arrays or torch tensors.  ``tokenize`` returns numpy int64 for
numpy input and a torch int64 tensor (on the tokenizer's device) for tensor input.

Where things are: :mod:`.common` (errors, kinds, image handling), :mod:`.dalle`, :mod:`.kmeans`, :mod:`.cache`
(token pre-computation); :func:`load_tokenizer` here. Every public name is importable from this package.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from heartbeit_lib.mim.tokenizers.common import (KINDS, TokenizerError, TokenizerFileNotFoundError,
                                                 UntrustedPickleError, _HOW_TO_PROVIDE, _missing, to_float_images)
from heartbeit_lib.mim.tokenizers.dalle import DalleEncoder, DalleTokenizer, _load_dalle_state, convert_dalle_pickle
from heartbeit_lib.mim.tokenizers.kmeans import KMeansTokenizer, codebook_report, codebook_usage, fit_kmeans_tokenizer
from heartbeit_lib.mim.tokenizers.cache import precompute_tokens, token_cache_key, token_cache_path

__all__ = [
    "TokenizerError", "TokenizerFileNotFoundError", "UntrustedPickleError",
    "DalleEncoder", "DalleTokenizer", "KMeansTokenizer", "load_tokenizer", "convert_dalle_pickle",
    "fit_kmeans_tokenizer", "codebook_report", "codebook_usage", "to_float_images",
    "token_cache_path", "token_cache_key", "precompute_tokens", "KINDS",
]



def load_tokenizer(kind: str, path: str | os.PathLike | None = None, *, trust_pickle: bool = False,
                   device: str | torch.device = "cpu", **kw) -> DalleTokenizer | KMeansTokenizer:
    """Load a tokenizer by kind from a local weights file.

    Parameters
    ----------
    kind : ``"dalle"`` (DALL-E dVAE; ``path`` = a state-dict file, or OpenAI's pickled ``encoder.pkl``
        with ``trust_pickle=True``) or ``"ecg_kmeans"`` (``path`` = a file written by
        :meth:`KMeansTokenizer.save`).
    trust_pickle : allow full unpickling of a pickled DALL-E module (it can execute code).
    device : where tokenization runs.
    kw : passed to the tokenizer (``view_scale``, ``batch_size``).
    """
    if kind not in KINDS:
        raise TokenizerError(f"tokenizer kind {kind!r} is unknown; choose one of {list(KINDS)}")
    if path is None or str(path) == "":
        raise TokenizerError(f"{kind} tokenizer: no weights path given; to provide them: {_HOW_TO_PROVIDE[kind]}")
    path = Path(path).expanduser()
    if not path.exists():
        raise _missing(path, kind)
    if kind == "ecg_kmeans":
        return KMeansTokenizer.load(path, device=device)
    state, how = _load_dalle_state(path, trust_pickle)
    enc = DalleEncoder.from_state_dict(state, str(path))
    return DalleTokenizer(enc, device=device, source=f"{path} ({how})", **kw)
