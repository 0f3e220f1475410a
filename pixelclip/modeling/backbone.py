"""The dense CLIP image tower as a detectron2 backbone (docs/METHOD.md §2)."""

from __future__ import annotations

import logging

from detectron2.config import configurable
from detectron2.modeling import BACKBONE_REGISTRY, Backbone, ShapeSpec
from torch import Tensor

from .clip import create_clip_from_config
from .dense import DENSE_VARIANTS, DenseCLIPEncoder, build_dense_encoder
from .finetune import FINETUNE_POLICIES, apply_finetune_policy

logger = logging.getLogger(__name__)

__all__ = ["CLIPDenseBackbone"]


@BACKBONE_REGISTRY.register()
class CLIPDenseBackbone(Backbone):
    """CLIP image tower read out densely; one output feature map named "clip".

    Input: CLIP-normalised images (B, 3, H, W), H and W multiples of ``size_divisibility``.
    Output: ``{"clip": (B, D, H / stride, W / stride)}``, not normalised.

    Args:
        encoder: the dense encoder (its ``visual`` is the open_clip image tower).
    """

    @configurable
    def __init__(self, *, encoder: DenseCLIPEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    @classmethod
    def from_config(cls, cfg, input_shape=None) -> dict:
        variant, policy = cfg.MODEL.CLIP.DENSE_VARIANT, cfg.MODEL.CLIP.FINETUNE
        if variant not in DENSE_VARIANTS:
            raise ValueError(
                f"unknown MODEL.CLIP.DENSE_VARIANT {variant!r}; choose from {DENSE_VARIANTS}"
            )
        if policy not in FINETUNE_POLICIES:
            raise ValueError(
                f"unknown MODEL.CLIP.FINETUNE {policy!r}; choose from {FINETUNE_POLICIES}"
            )
        encoder = build_dense_encoder(create_clip_from_config(cfg).visual, variant)
        apply_finetune_policy(encoder, policy)
        # open_clip's switch; the dense read-out honours it only while gradients are recorded,
        # so the momentum teacher (a copy that runs without gradients) is unaffected.
        encoder.visual.set_grad_checkpointing(cfg.MODEL.CLIP.GRAD_CHECKPOINTING)
        return {"encoder": encoder}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"clip": self.encoder(x)}

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {"clip": ShapeSpec(channels=self.encoder.out_channels, stride=self.encoder.stride)}

    @property
    def size_divisibility(self) -> int:
        return self.encoder.stride
