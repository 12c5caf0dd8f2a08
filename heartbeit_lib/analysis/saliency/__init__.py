"""Saliency maps of fine-tuned ECG-image classifiers, their attribution to leads and ECG segments,
and faithfulness checks (notebook ``06_saliency``; its glue is :mod:`heartbeit_lib.pipeline.saliency`).

Submodules: :mod:`.maps` (FullGrad, Grad-CAM, attention rollout), :mod:`.attribution` (R peaks, segments,
per-lead / per-segment shares), :mod:`.faithfulness` (deletion / insertion, ROAD), :mod:`.results` (the result
containers) and :mod:`.errors`; their public names are re-exported here.

Methods (:func:`saliency_maps`, one common API for the four model families)
--------------------------------------------------------------------------
``fullgrad``
    FullGrad (Srinivas & Fleuret 2019) as the paper used it: ``pytorch_grad_cam.FullGrad``. It sums
    ``|input gradient x input|`` and, for every hooked layer, ``|bias x gradient|`` of that layer's
    output, each channel min-max scaled and upsampled to the image. pytorch-grad-cam hooks **only
    modules whose type is exactly** ``nn.Conv2d`` **or** ``nn.BatchNorm2d`` **and that have a bias**
    (:func:`fullgrad_hooked_layers`). In a CNN that is every BatchNorm (and EfficientNet's
    squeeze-excitation convolutions); in a timm ViT or BEiT it is **only the patch embedding**
    ``patch_embed.proj``: the biases of the 12 transformer blocks (``nn.Linear``, ``nn.LayerNorm``)
    contribute nothing, so on a ViT "FullGrad" is an input-gradient map plus a 14x14 patch-level
    gradient map of the first layer. We keep it because the paper shows it, and add two better
    founded transformer methods. The per-channel upsampling of pytorch-grad-cam is replaced by an
    exactly equivalent sum-then-upsample (:class:`FastFullGrad`; bilinear resizing is linear), which
    avoids a (B, channels, H, W) array per layer (6.5 GB for ResNet-152's last stage at a batch of
    16); ``tests/analysis/test_saliency.py`` compares it with the library's own FullGrad.
``gradcam``
    Grad-CAM (``pytorch_grad_cam.GradCAM``) on the last stage: ResNet ``layer4[-1]``, EfficientNet
    ``features[-1]``, and for ViT/BEiT ``blocks[-1].norm1`` (as pytorch-grad-cam's ViT example),
    whose token output (B, N, C) is turned into a feature map by :func:`vit_reshape_transform`
    (prefix/CLS tokens dropped, the h x w patch tokens reshaped to (B, C, h, w)).
``rollout``
    Attention rollout (Abnar & Zuidema 2020), transformers only: per block the attention
    probabilities averaged over heads, ``0.5 A + 0.5 I`` renormalised, multiplied through the blocks.
    Captured by forward hooks on each timm attention's ``attn_drop`` (the post-softmax probabilities,
    which in BEiT already include the relative position bias: the captured matrix is exactly what
    multiplies the values). timm's fused attention (``F.scaled_dot_product_attention``) never
    materialises the probabilities, so ``attn.fused_attn`` is switched off for the pass and restored.
    The read-out follows the classifier: the CLS row for ``global_pool="token"`` (timm ViT), the mean
    of the patch-token rows for ``global_pool="avg"`` (timm BEiT / HeartBEiT, which never reads the
    CLS token). Class-agnostic (``target_class`` is ignored).

Signal models (xresnet1d101, inception1d, ST-MEM) get lead x time maps instead (:mod:`.signal_maps`: integrated
gradients for all, Grad-CAM on the last conv block for the CNNs), attributed with
:func:`attribute_signal_maps` to the same lead x segment shares.

Every map is a float32 (H, W) array in [0, 1] (min-max scaled per image), pixel-aligned with the
rendered ECG image the model saw.

Attribution to leads and segments (:func:`attribute_maps`)
----------------------------------------------------------
The rendering geometry (``render.layout_geometry``) says which lead each pixel shows and which
samples each pixel column covers (stack8: 8 bands of H/8 rows, I, II, V1..V6 top to bottom, the full
5 s across the width). R peaks come from :func:`detect_r_peaks` on the preprocessed signal (the library's QRS
detector :func:`heartbeit_lib.signals.detect_qrs`, then the R wave located on lead II); samples are labelled P ``[-250, -80)`` ms, QRS
``[-80, +80)`` ms, ST-T ``[+80, +450)`` ms relative to each R peak (overlaps: QRS wins over P, P over
ST-T) and ``other`` elsewhere. A pixel column that spans several samples (11 at 224 px for 2,500
samples) is split between segments in proportion. Shares of a map sum to 1 over lead x segment.
:func:`area_shares` gives the same attribution of a uniform map: the share expected by area alone.

Faithfulness (:func:`deletion_insertion`, :func:`road_scores`)
--------------------------------------------------------------
Deletion: erase the most salient pixels first (set them to white paper, 1.0 in [0, 1] image space)
and follow the target-class probability; insertion: start from a blank page and draw the most
salient pixels first. Areas under the curves (fraction of pixels 0..1): a faithful map has a low
deletion AUC and a high insertion AUC, compared with a random map (``method="random"``). Caveat: a
blank or half-erased page is far from every training image, and a model may call it positive (the
faithfulness table reports ``prob_blank``, the probability of the all-white page); when it does,
deletion and insertion disagree. ROAD (Rong et al. 2022; ``pytorch_grad_cam.metrics.road``) fills
removed pixels by noisy linear imputation from their neighbours instead, which keeps the images
closer to the data; it solves a sparse linear system per image and threshold (slow at 224 px).
"""

from heartbeit_lib.analysis.saliency.attribution import (FS, SEGMENT_PRIORITY, SEGMENT_WINDOWS_MS, SEGMENTS,
                                                         area_shares, attribute_maps, attribute_signal_maps,
                                                         attribution_frame, attribution_summary, detect_r_peaks,
                                                         segment_codes)
from heartbeit_lib.analysis.saliency.errors import SaliencyError, UnsupportedMethodError
from heartbeit_lib.analysis.saliency.faithfulness import (WHITE, deletion_insertion, faithfulness_summary,
                                                          predict_proba, road_scores)
from heartbeit_lib.analysis.saliency.maps import (METHODS, FastFullGrad, attention_probabilities, attention_rollout,
                                                  fullgrad_hooked_layers, gradcam_target_layers, is_transformer,
                                                  model_family, rollout_from_attentions, saliency_maps, token_grid,
                                                  vit_reshape_transform)
from heartbeit_lib.analysis.saliency.results import RunMaps, SaliencyResult
from heartbeit_lib.analysis.saliency.signal_maps import SIGNAL_METHODS, signal_saliency, to_image, to_store_rate

__all__ = ["FS", "METHODS", "SEGMENTS", "SEGMENT_PRIORITY", "SEGMENT_WINDOWS_MS", "WHITE",
           "FastFullGrad", "RunMaps", "SaliencyError", "SaliencyResult", "UnsupportedMethodError", "area_shares",
           "attention_probabilities", "attention_rollout", "attribute_maps", "attribute_signal_maps",
           "attribution_frame",
           "attribution_summary", "deletion_insertion", "detect_r_peaks", "faithfulness_summary",
           "fullgrad_hooked_layers", "gradcam_target_layers", "is_transformer", "model_family", "predict_proba",
           "road_scores", "rollout_from_attentions", "saliency_maps", "segment_codes", "signal_saliency",
           "SIGNAL_METHODS", "to_image", "to_store_rate", "token_grid", "vit_reshape_transform"]
