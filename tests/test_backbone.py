"""CLIPDenseBackbone through detectron2's registry and config."""

import copy

import pytest
import torch
from conftest import MODEL_CONFIGS, assert_close_to_float64
from detectron2.config import get_cfg
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone

import pixelclip.modeling.backbone as backbone_module  # registers the backbone
from pixelclip.config import add_pixelclip_config


def _cfg(name, finetune):
    cfg = get_cfg()
    add_pixelclip_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "CLIPDenseBackbone"
    cfg.MODEL.CLIP.MODEL_NAME = name
    cfg.MODEL.CLIP.MODEL_CONFIG = str(MODEL_CONFIGS / f"{name}.json")
    cfg.MODEL.CLIP.PRETRAINED = ""
    cfg.MODEL.CLIP.FINETUNE = finetune
    return cfg


@pytest.mark.parametrize(
    "name, finetune, stride, trainable",
    [("tiny-vit", "attention", 16, 9), ("tiny-convnext", "full", 32, None)],
)
def test_build_backbone(name, finetune, stride, trainable):
    assert BACKBONE_REGISTRY.get("CLIPDenseBackbone") is backbone_module.CLIPDenseBackbone
    backbone = build_backbone(_cfg(name, finetune))
    assert backbone.size_divisibility == stride
    shape = backbone.output_shape()["clip"]
    assert (shape.channels, shape.stride) == (32, stride)
    n_trainable = sum(p.requires_grad for p in backbone.parameters())
    assert n_trainable == (trainable or len(list(backbone.parameters())))
    images = torch.randn(1, 3, 64, 128, generator=torch.Generator().manual_seed(0))
    out = backbone(images)
    assert list(out) == ["clip"]
    assert out["clip"].shape == (1, 32, 64 // stride, 128 // stride)
    with torch.no_grad():  # the same features with and without autograd
        expected = backbone.encoder(images)
        expected64 = copy.deepcopy(backbone.encoder).double()(images.double())
    assert_close_to_float64(out["clip"], expected64, expected)
    assert all(k.startswith("encoder.visual.") for k in backbone.state_dict())


def test_bad_config_values_are_named():
    cfg = _cfg("tiny-vit", "attention")
    cfg.MODEL.CLIP.DENSE_VARIANT = "fancy"
    with pytest.raises(ValueError, match="MODEL.CLIP.DENSE_VARIANT 'fancy'"):
        build_backbone(cfg)
    cfg = _cfg("tiny-convnext", "attention")
    with pytest.raises(ValueError, match="MODEL.CLIP.FINETUNE"):
        build_backbone(cfg)
