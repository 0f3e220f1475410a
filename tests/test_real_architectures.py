"""The real CLIP architectures of the paper (random weights: nothing is downloaded) build through
our adapters and give dense features of the documented widths and grids."""

import pytest
import torch

from pixelclip.modeling.clip import create_clip
from pixelclip.modeling.dense import build_dense_encoder


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,quick_gelu,size,channels,stride",
    [
        ("ViT-B-16", True, 320, 512, 16),
        ("ViT-L-14", True, 224, 768, 14),
        ("convnext_base_w_320", False, 64, 640, 32),
        ("convnext_large_d_320", False, 64, 768, 32),
    ],
)
def test_real_architecture_dense_features(name, quick_gelu, size, channels, stride):
    torch.manual_seed(0)
    model = create_clip(name, pretrained="", force_quick_gelu=quick_gelu)
    encoder = build_dense_encoder(model.visual)
    assert (encoder.out_channels, encoder.stride) == (channels, stride)
    with torch.no_grad():
        features = encoder(torch.randn(1, 3, size, size))
    assert features.shape == (1, channels, size // stride, size // stride)
    assert torch.isfinite(features).all()
