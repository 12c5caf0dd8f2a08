"""07 scores image models on grey images with the normalisation folded into the patch embedding
(``ensemble.grey_input_model``). Oracle: the unchanged model on the normalised 3-channel images (what 03 fed it);
tolerance 1e-5 on the logits (float32 rounding of the folded sums)."""

import pytest
import torch

from heartbeit_lib.models import registry
from heartbeit_lib.pipeline.predict.ensemble import grey_input_model

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.mark.parametrize("name", ["vit_b16_scratch", "beit_b16_scratch"])
@pytest.mark.parametrize("norm", [((0.5,) * 3, (0.5,) * 3), IMAGENET])
def test_grey_model_scores_as_the_normalised_images(name, norm):
    torch.manual_seed(0)
    model = registry.create_model(name, num_classes=2, size="micro", img_size=64).eval()
    before = model.patch_embed.proj.weight.clone()
    grey_model = grey_input_model(model, norm)
    g = torch.randint(0, 256, (4, 1, 64, 64), dtype=torch.uint8).float() / 255.0
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in norm)
    with torch.no_grad():
        ref = model((g.expand(-1, 3, -1, -1) - mean) / std)
        got = grey_model(g)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    # the original is untouched (07's pictures use it) and the rest is shared, not copied
    assert model.patch_embed.proj.in_channels == 3 and torch.equal(model.patch_embed.proj.weight, before)
    assert grey_model.patch_embed.proj.in_channels == 1 and grey_model.blocks is model.blocks


def test_no_grey_model_where_the_stem_pads():
    """resnet152's stem pads its input with zeros, which are not normalised: folding would change the borders."""
    model = registry.create_model("resnet152_scratch", num_classes=2, size="micro", img_size=64)
    assert grey_input_model(model, ((0.5,) * 3, (0.5,) * 3)) is None
    assert grey_input_model(torch.nn.Linear(3, 2), ((0.5,) * 3, (0.5,) * 3)) is None
