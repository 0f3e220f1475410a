"""Fine-tuning policies of the CLIP image tower (docs/METHOD.md §7): exact trainable names."""

import pytest

from pixelclip.modeling.dense import build_dense_encoder
from pixelclip.modeling.finetune import FINETUNE_POLICIES, apply_finetune_policy

# The tiny ViT has 2 blocks (configs/clip_models/tiny-vit.json).
VIT_ATTENTION = [
    "visual.positional_embedding",
    *[
        f"visual.transformer.resblocks.{i}.attn.{name}"
        for i in range(2)
        for name in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")
    ],
]
VIT_ALL = [
    "visual.class_embedding",
    "visual.positional_embedding",
    "visual.proj",
    "visual.conv1.weight",
    *[f"visual.{ln}.{p}" for ln in ("ln_pre", "ln_post") for p in ("weight", "bias")],
    *[
        f"visual.transformer.resblocks.{i}.{layer}.{p}"
        for i in range(2)
        for layer in ("ln_1", "attn.out_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")
        for p in ("weight", "bias")
    ],
    *[
        f"visual.transformer.resblocks.{i}.attn.in_proj_{p}"
        for i in range(2)
        for p in ("weight", "bias")
    ],
]


def _trainable(encoder):
    return sorted(n for n, p in encoder.named_parameters() if p.requires_grad)


def test_policies_constant():
    assert FINETUNE_POLICIES == ("attention", "full", "none")


def test_vit_policies(tiny_vit):
    encoder = build_dense_encoder(tiny_vit.visual)
    everything = sorted(n for n, _ in encoder.named_parameters())
    assert everything == sorted(VIT_ALL)

    names = apply_finetune_policy(encoder, "attention")
    assert sorted(names) == sorted(VIT_ATTENTION) == _trainable(encoder)

    names = apply_finetune_policy(encoder, "full")
    assert sorted(names) == everything == _trainable(encoder)

    # Switching back must also switch previously trainable parameters off.
    assert apply_finetune_policy(encoder, "none") == []
    assert _trainable(encoder) == []
    assert sorted(apply_finetune_policy(encoder, "attention")) == _trainable(encoder)
    assert len(_trainable(encoder)) == 9


def test_convnext_policies(tiny_convnext):
    encoder = build_dense_encoder(tiny_convnext.visual)
    everything = sorted(n for n, _ in encoder.named_parameters())
    assert all(n.startswith(("visual.trunk.", "visual.head.")) for n in everything)
    assert "visual.head.proj.weight" in everything
    assert sorted(apply_finetune_policy(encoder, "full")) == everything == _trainable(encoder)
    assert apply_finetune_policy(encoder, "none") == [] == _trainable(encoder)
    with pytest.raises(ValueError, match="'attention' needs a ViT.*ConvNeXt.*'full' or 'none'"):
        apply_finetune_policy(encoder, "attention")


def test_unknown_policy(tiny_vit):
    with pytest.raises(ValueError, match=r"unknown 'last'; choose from \('attention'"):
        apply_finetune_policy(build_dense_encoder(tiny_vit.visual), "last")
