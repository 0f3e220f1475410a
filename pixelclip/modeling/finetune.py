"""Which parameters of the CLIP image tower train (docs/METHOD.md §7)."""

from __future__ import annotations

import logging

from .dense import ConvNeXtDenseEncoder, DenseCLIPEncoder, ViTDenseEncoder

logger = logging.getLogger(__name__)

__all__ = ["FINETUNE_POLICIES", "apply_finetune_policy"]

FINETUNE_POLICIES = ("attention", "full", "none")
# Attention parameters of an open_clip ResidualAttentionBlock (nn.MultiheadAttention).
_ATTENTION_SUFFIXES = (
    ".attn.in_proj_weight",
    ".attn.in_proj_bias",
    ".attn.out_proj.weight",
    ".attn.out_proj.bias",
)


def apply_finetune_policy(encoder: DenseCLIPEncoder, policy: str) -> list[str]:
    """Set ``requires_grad`` on every image-tower parameter according to ``policy``.

    Policies:
        "attention" (ViT only, the reference for ViT): the in-projection and out-projection
        weights and biases of every block's self-attention, plus ``positional_embedding``.
        "full" (the reference for ConvNeXt): every parameter. "none": no parameter.

    Args:
        encoder: a dense encoder from :func:`pixelclip.modeling.clip.build_dense_encoder`.
        policy: one of :data:`FINETUNE_POLICIES`.

    Returns:
        Names (as in ``encoder.named_parameters()``) of the parameters left trainable.
    """
    if policy not in FINETUNE_POLICIES:
        raise ValueError(f"unknown {policy!r}; choose from {FINETUNE_POLICIES}")
    if policy == "attention" and not isinstance(encoder, ViTDenseEncoder):
        kind = "ConvNeXt" if isinstance(encoder, ConvNeXtDenseEncoder) else type(encoder).__name__
        raise ValueError(
            f"finetune policy 'attention' needs a ViT image tower; {kind} has no attention "
            "layers: use 'full' or 'none' (MODEL.CLIP.FINETUNE)"
        )
    trainable = []
    for name, param in encoder.named_parameters():
        train = policy == "full" or (policy == "attention" and _is_attention_param(name))
        param.requires_grad_(train)
        if train:
            trainable.append(name)
    logger.info("CLIP image tower, policy %r: %d trainable tensors", policy, len(trainable))
    return trainable


def _is_attention_param(name: str) -> bool:
    if name == "visual.positional_embedding":
        return True
    return name.startswith("visual.transformer.resblocks.") and name.endswith(_ATTENTION_SUFFIXES)
