"""1-D convolutional ECG classifiers of the PTB-XL benchmark, in plain torch.

Strodthoff et al., "Deep learning for ECG analysis: benchmarks and insights from PTB-XL" (2021), code
helme/ecg_ptbxl_benchmarking ``code/models/{xresnet1d,inception1d,basic_conv1d}.py`` (fastai v1).
Rebuilt here layer for layer, with the configuration the benchmark trained
(``fastai_model.py``: ``kernel_size=5``, ``lin_ftrs_head=[128]``, ``ps_head=0.5``, concat pooling):

``xresnet1d101``
    stem: 3 x (conv k=5 -> BN -> ReLU) with widths 32, 32, 64 (first stride 2), max-pool 3/2;
    4 stages of bottleneck blocks ``[3, 4, 23, 3]`` (expansion 4, inner width 64, output 256,
    kernel 5 in the middle conv; stride 2 in the first block of stages 2-4, where the identity
    path average-pools by 2); the benchmark's ``block_szs`` keeps every stage at 64 (x4), unlike
    the image ResNet's doubling.
``inception1d``
    InceptionTime: 6 inception blocks (bottleneck 1x1 to 32, parallel convs k=39/19/9 with 32
    filters each + max-pool/1x1 branch, BN, ReLU -> 128 channels), a residual shortcut
    (1x1 conv + BN) every 3 blocks. ``kernel_size=40`` becomes the odd sizes 39, 19, 9.

Both end in the benchmark's head (``create_head1d``): concat pooling ([max, mean] over time),
then BN -> dropout 0.25 -> Linear(2C, 128) -> ReLU -> BN -> dropout 0.5 -> Linear(128, classes)
(fastai's ``bn_drop_lin`` with ``ps=0.5`` halved for the hidden layer).

Input (N, C, T) float32, output (N, num_classes) logits; any T >= 32 (the global pooling makes
the networks length-agnostic, so 2.5 s crops and 10 s records run the same weights).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

FAMILY = "signal"  # model family tag read by downstream code (tables, saliency): "image" or "signal"

XRESNET_LAYERS = {"xresnet1d101": (3, 4, 23, 3)}
XRESNET_STEM = (32, 32, 64)  # stem conv widths
XRESNET_WIDTH = 64            # inner width of every bottleneck (benchmark's block_szs)
EXPANSION = 4                 # bottleneck output = EXPANSION * XRESNET_WIDTH


# ---------------------------------------------------------------- head


class AdaptiveConcatPool1d(nn.Module):
    """(N, C, T) -> (N, 2C, 1): [max over T, mean over T] (fastai's order)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.amax(dim=-1, keepdim=True), x.mean(dim=-1, keepdim=True)], dim=1)


def create_head1d(nf: int, num_classes: int, lin_ftrs: Sequence[int] = (128,), dropout: float = 0.5,
                  concat_pooling: bool = True) -> nn.Sequential:
    """The benchmark's classification head on (N, nf, T) features -> (N, num_classes).

    Per linear layer: BatchNorm1d(in) -> Dropout(p) -> Linear(in, out) [-> ReLU except the last];
    p = ``dropout`` for the last layer and ``dropout / 2`` for hidden ones (fastai's rule).
    """
    sizes = [2 * nf if concat_pooling else nf, *lin_ftrs, num_classes]
    ps = [dropout / 2] * len(lin_ftrs) + [dropout]
    layers: list[nn.Module] = [AdaptiveConcatPool1d() if concat_pooling else nn.AdaptiveAvgPool1d(1), nn.Flatten()]
    for i, (n_in, n_out, p) in enumerate(zip(sizes[:-1], sizes[1:], ps)):
        layers += [nn.BatchNorm1d(n_in), nn.Dropout(p), nn.Linear(n_in, n_out)]
        if i < len(ps) - 1:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


# ---------------------------------------------------------------- xresnet1d


def conv_bn(n_in: int, n_out: int, kernel: int, stride: int = 1, relu: bool = True,
            zero_bn: bool = False) -> nn.Sequential:
    """fastai ``ConvLayer``: Conv1d (no bias, 'same' padding) -> BN -> ReLU.

    ``zero_bn`` starts the BN scale at 0 (last conv of a residual branch, so each block begins as
    the identity); BN biases start at 1e-3 as in fastai's ``_get_norm``.
    """
    conv = nn.Conv1d(n_in, n_out, kernel, stride=stride, padding=(kernel - 1) // 2, bias=False)
    bn = nn.BatchNorm1d(n_out)
    nn.init.constant_(bn.weight, 0.0 if zero_bn else 1.0)
    nn.init.constant_(bn.bias, 1e-3)
    return nn.Sequential(conv, bn, nn.ReLU(inplace=True)) if relu else nn.Sequential(conv, bn)


class Bottleneck1d(nn.Module):
    """1x1 (n_in -> width) -> k (width -> width, stride) -> 1x1 (width -> n_out), plus identity path
    (avg-pool 2 when strided, then 1x1 conv + BN when the channel count changes); ReLU after the sum."""

    def __init__(self, n_in: int, width: int, n_out: int, kernel: int, stride: int = 1):
        super().__init__()
        self.convs = nn.Sequential(conv_bn(n_in, width, 1), conv_bn(width, width, kernel, stride),
                                   conv_bn(width, n_out, 1, relu=False, zero_bn=True))
        idpath: list[nn.Module] = []
        if stride != 1:
            idpath.append(nn.AvgPool1d(2, ceil_mode=True))
        if n_in != n_out:
            idpath.append(conv_bn(n_in, n_out, 1, relu=False))
        self.idpath = nn.Sequential(*idpath)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.convs(x) + self.idpath(x))


class XResNet1d(nn.Sequential):
    """The benchmark's ``XResNet1d`` with bottleneck blocks (expansion 4).

    (N, in_chans, T) -> (N, num_classes); time shrinks by 2 (stem) x 2 (max-pool) x 2^3 (stages).
    """

    family = FAMILY

    def __init__(self, layers: Sequence[int], num_classes: int, in_chans: int = 12, kernel_size: int = 5,
                 stem: Sequence[int] = XRESNET_STEM, width: int = XRESNET_WIDTH,
                 lin_ftrs: Sequence[int] = (128,), dropout: float = 0.5):
        widths = [in_chans, *stem]
        modules: list[nn.Module] = [conv_bn(widths[i], widths[i + 1], kernel_size, stride=2 if i == 0 else 1)
                                    for i in range(len(stem))]
        modules.append(nn.MaxPool1d(3, stride=2, padding=1))
        n_in, n_out = stem[-1], width * EXPANSION
        for stage, n_blocks in enumerate(layers):
            blocks = []
            for b in range(n_blocks):
                blocks.append(Bottleneck1d(n_in, width, n_out, kernel_size, stride=2 if stage > 0 and b == 0 else 1))
                n_in = n_out
            modules.append(nn.Sequential(*blocks))
        modules.append(create_head1d(n_out, num_classes, lin_ftrs, dropout))
        super().__init__(*modules)
        for m in self.modules():  # fastai init_cnn: kaiming-normal conv/linear weights, zero biases
            if isinstance(m, (nn.Conv1d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


# ---------------------------------------------------------------- inception1d


def _conv(n_in: int, n_out: int, kernel: int) -> nn.Conv1d:
    return nn.Conv1d(n_in, n_out, kernel, padding=(kernel - 1) // 2, bias=False)


class InceptionBlock1d(nn.Module):
    """(N, n_in, T) -> (N, (len(kernels) + 1) * filters, T)."""

    def __init__(self, n_in: int, filters: int, kernels: Sequence[int], bottleneck: int = 32):
        super().__init__()
        self.bottleneck = _conv(n_in, bottleneck, 1)
        self.convs = nn.ModuleList([_conv(bottleneck, filters, k) for k in kernels])
        self.conv_bottle = nn.Sequential(nn.MaxPool1d(3, stride=1, padding=1), _conv(n_in, filters, 1))
        self.bn_relu = nn.Sequential(nn.BatchNorm1d((len(kernels) + 1) * filters), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.bottleneck(x)
        return self.bn_relu(torch.cat([c(b) for c in self.convs] + [self.conv_bottle(x)], dim=1))


class Shortcut1d(nn.Module):
    """Residual join: ReLU(out + BN(conv1x1(inp)))."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.conv = _conv(n_in, n_out, 1)
        self.bn = nn.BatchNorm1d(n_out)

    def forward(self, inp: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return torch.relu(out + self.bn(self.conv(inp)))


class Inception1d(nn.Module):
    """The benchmark's ``Inception1d`` (InceptionTime): (N, in_chans, T) -> (N, num_classes)."""

    family = FAMILY

    def __init__(self, num_classes: int, in_chans: int = 12, kernel_size: int = 40, depth: int = 6,
                 bottleneck: int = 32, filters: int = 32, residual: bool = True,
                 lin_ftrs: Sequence[int] = (128,), dropout: float = 0.5):
        super().__init__()
        if kernel_size < 40 or depth % 3:
            raise ValueError(f"inception1d needs kernel_size >= 40 and depth a multiple of 3, "
                             f"got kernel_size={kernel_size}, depth={depth}")
        kernels = [k - 1 if k % 2 == 0 else k for k in (kernel_size, kernel_size // 2, kernel_size // 4)]
        n_out = (len(kernels) + 1) * filters
        self.residual = residual
        self.blocks = nn.ModuleList([InceptionBlock1d(in_chans if d == 0 else n_out, filters, kernels, bottleneck)
                                     for d in range(depth)])
        self.shortcuts = nn.ModuleList([Shortcut1d(in_chans if d == 0 else n_out, n_out) for d in range(depth // 3)])
        self.head = create_head1d(n_out, num_classes, lin_ftrs, dropout)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_chans, T) -> (N, 128, T): the last inception block's output (Grad-CAM target)."""
        res = x
        for d, block in enumerate(self.blocks):
            x = block(x)
            if self.residual and d % 3 == 2:
                x = self.shortcuts[d // 3](res, x)
                res = x
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# ---------------------------------------------------------------- builders


def benchmark_weight_init(model: nn.Module) -> nn.Module:
    """The PTB-XL benchmark's ``weight_init`` (``code/models/basic_conv1d.py``), which ``fastai_model.fit`` applies
    to every model trained from scratch, after the architecture's own init: kaiming-normal conv/linear weights, zero
    biases, and **every** BatchNorm at weight 1, bias 0 (undoing xresnet's zero-initialised last BN of each residual
    branch). Returns ``model`` (changed in place)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        if isinstance(m, nn.BatchNorm1d):
            nn.init.constant_(m.weight, 1.0)
            nn.init.constant_(m.bias, 0.0)
    return model



def xresnet1d101(num_classes: int, in_chans: int = 12, **kw) -> XResNet1d:
    """xresnet1d101 as trained in the PTB-XL benchmark (kernel 5, head [128], dropout 0.5)."""
    return XResNet1d(XRESNET_LAYERS["xresnet1d101"], num_classes, in_chans, **kw)


def inception1d(num_classes: int, in_chans: int = 12, **kw) -> Inception1d:
    """inception1d as trained in the PTB-XL benchmark (kernel 40, depth 6, 32 filters, residual)."""
    return Inception1d(num_classes, in_chans, **kw)
