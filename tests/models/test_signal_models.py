"""1-D signal classifiers (xresnet1d101, inception1d) through the model registry.

Oracle for the parameter counts: arithmetic over the PTB-XL benchmark's layer configuration
(helme/ecg_ptbxl_benchmarking ``code/models/xresnet1d.py``, ``inception1d.py``,
``basic_conv1d.py`` as called from ``fastai_model.py`` with kernel_size=5, lin_ftrs_head=[128]):
a bias-free conv has in*out*k weights, a BatchNorm 2*C, a Linear in*out+out. Exact equality.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from heartbeit_lib.models import registry as models


def conv(n_in, n_out, k):
    return n_in * n_out * k  # every conv in both networks is bias-free (followed by BN)


def bn(c):
    return 2 * c


def lin(n_in, n_out):
    return n_in * n_out + n_out


def head(nf, nc):
    """create_head1d(nf, nc, lin_ftrs=[128], concat pooling): BN(2nf) Lin(2nf,128) BN(128) Lin(128,nc)."""
    return bn(2 * nf) + lin(2 * nf, 128) + bn(128) + lin(128, nc)


def xresnet1d101_params(leads, nc):
    stem = conv(leads, 32, 5) + bn(32) + conv(32, 32, 5) + bn(32) + conv(32, 64, 5) + bn(64)

    def bottleneck(n_in):  # expansion 4: 1x1 n_in->64, k5 64->64, 1x1 64->256 (+1x1 id conv if n_in != 256)
        body = conv(n_in, 64, 1) + bn(64) + conv(64, 64, 5) + bn(64) + conv(64, 256, 1) + bn(256)
        return body + (conv(n_in, 256, 1) + bn(256) if n_in != 256 else 0)

    n_blocks = 3 + 4 + 23 + 3  # block_szs = [16, 64, 64, 64, 64] x expansion 4: only the first block widens
    return stem + bottleneck(64) + (n_blocks - 1) * bottleneck(256) + head(256, nc)


def inception1d_params(leads, nc):
    kss = (39, 19, 9)  # kernel_size 40 -> [40, 20, 10] made odd

    def block(n_in):  # bottleneck 1x1 -> 32, three convs 32->32, maxpool branch 1x1 n_in->32, BN(128)
        return conv(n_in, 32, 1) + sum(conv(32, 32, k) for k in kss) + conv(n_in, 32, 1) + bn(128)

    def shortcut(n_in):
        return conv(n_in, 128, 1) + bn(128)

    return block(leads) + 5 * block(128) + shortcut(leads) + shortcut(128) + head(128, nc)


@pytest.mark.parametrize("name,expected", [("xresnet1d101", xresnet1d101_params), ("inception1d", inception1d_params)])
def test_parameter_count_matches_benchmark_configuration(name, expected):
    m = models.create_model(name, num_classes=71, in_chans=12)
    assert models.count_parameters(m) == expected(12, 71)
    assert models.count_parameters(models.create_model(name, num_classes=2, in_chans=8)) == expected(8, 2)


def test_parameter_counts_are_the_known_totals():
    """The arithmetic itself, pinned (12 leads, 71 classes): 1,880,775 and 516,167."""
    assert xresnet1d101_params(12, 71) == 1_880_775
    assert inception1d_params(12, 71) == 516_167


@pytest.mark.parametrize("name", ["xresnet1d101", "inception1d"])
@pytest.mark.parametrize("shape,nc", [((3, 12, 1000), 71), ((2, 8, 250), 5)])
def test_shapes_and_family(name, shape, nc):
    torch.manual_seed(0)
    m = models.create_model(name, num_classes=nc, in_chans=shape[1]).eval()
    y = m(torch.randn(*shape))
    assert y.shape == (shape[0], nc) and torch.isfinite(y).all()
    assert models.model_family(name) == "signal" and m.family == "signal"


def test_family_of_image_models_and_errors():
    assert models.model_family("heartbeit") == "image"
    assert models.model_family("vit_b16_scratch") == "image"
    with pytest.raises(models.UnknownModelError):
        models.model_family("xresnet1d1O1")
    with pytest.raises(models.WeightsError, match="from scratch"):
        models.create_model("inception1d", weights="x.pt")
    with pytest.raises(models.UnknownModelError, match="size 'micro'"):
        models.create_model("xresnet1d101", size="micro")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["xresnet1d101", "inception1d"])
def test_a_few_steps_reduce_loss_on_separable_batch(name):
    """Two classes that differ by a 10 Hz oscillation on every lead; 12 Adam steps must at least halve
    the cross-entropy (dropout masks fixed by re-seeding before each loss evaluation)."""
    torch.manual_seed(0)
    y = torch.arange(16) % 2
    t = torch.arange(250) / 100.0
    x = 0.3 * torch.randn(16, 8, 250) + y[:, None, None] * torch.sin(2 * torch.pi * 10 * t)
    m = models.create_model(name, num_classes=2, in_chans=8).train()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)

    def loss_now():
        torch.manual_seed(1)
        return F.cross_entropy(m(x), y)

    with torch.no_grad():
        first = loss_now().item()
    for _ in range(12):
        opt.zero_grad()
        loss_now().backward()
        opt.step()
    with torch.no_grad():
        last = loss_now().item()
    assert last < 0.5 * first, (first, last)
