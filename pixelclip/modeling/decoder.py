"""The training-only decoder ("ConvHead") that turns cost maps into mask logits (METHOD §5).

Each of the k cost maps of an image is an independent 1-channel input: the decoder's weights are
shared across clusters, so it learns a cluster-agnostic "cost map -> mask" refinement and the
clusters' identities live only in the prompts. The submodule names reproduce the reference
checkpoint's ``head.*`` keys (docs/REFERENCE_CHECKPOINT.md), so its decoder weights load directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ConvHead", "DoubleConv"]

# GroupNorm uses one group per this many channels (4 groups for 64, 2 for 32).
_CHANNELS_PER_GROUP = 16


class DoubleConv(nn.Module):
    """[conv3x3 (no bias) -> GroupNorm -> ReLU] x 2 at a constant width.

    Kept as a module with a ``double_conv`` Sequential so the state-dict keys are
    ``double_conv.{0,1,3,4}.*`` as in the reference checkpoint.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        groups = channels // _CHANNELS_PER_GROUP
        self.double_conv = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(groups, channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(groups, channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.double_conv(x)


class ConvHead(nn.Module):
    """Cost maps (B, k, h, w) -> mask logits (B, k, 2^n h, 2^n w), n = len(channels).

    With the default ``channels = (64, 32)`` (METHOD §5): conv3x3 1->64 (bias) -> ConvTranspose2d
    2x2/2 64->64 -> DoubleConv(64, GroupNorm 4) -> ConvTranspose2d 2x2/2 64->32 ->
    DoubleConv(32, GroupNorm 2) -> conv3x3 32->1 (bias). Stage i (1-based) is ``up{i}`` then
    ``conv{i}``; the stem is ``conv0`` and the output layer ``proj``.

    Args:
        channels: width of each upsampling stage (MODEL.PIXELCLIP.DECODER_CHANNELS); the stem has
            the first stage's width. Each must be a positive multiple of 16 (GroupNorm groups =
            channels // 16).
    """

    def __init__(self, channels: Sequence[int] = (64, 32)) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        if not channels or any(c <= 0 or c % _CHANNELS_PER_GROUP for c in channels):
            raise ValueError(
                "channels (MODEL.PIXELCLIP.DECODER_CHANNELS) must be a non-empty list of positive "
                f"multiples of {_CHANNELS_PER_GROUP}; got {channels}"
            )
        self.num_stages = len(channels)
        self.conv0 = nn.Conv2d(1, channels[0], kernel_size=3, padding=1)
        width = channels[0]
        for i, out in enumerate(channels, start=1):
            setattr(self, f"up{i}", nn.ConvTranspose2d(width, out, kernel_size=2, stride=2))
            setattr(self, f"conv{i}", DoubleConv(out))
            width = out
        self.proj = nn.Conv2d(width, 1, kernel_size=3, padding=1)

    def forward(self, cost: Tensor, output_size: int | Sequence[int] | None = None) -> Tensor:
        """Decode every cost map independently.

        Args:
            cost: (B, k, h, w) cosine cost maps.
            output_size: if given, the logits are resized bilinearly (align_corners=False) to
                this size (METHOD §5: 80x80 -> MASK_RESOLUTION).

        Returns:
            (B, k, 4h, 4w) logits for the default two stages, or (B, k, *output_size).
        """
        if cost.dim() != 4:
            raise ValueError(f"cost must have shape (B, k, h, w); got {tuple(cost.shape)}")
        num_images, num_clusters, height, width = cost.shape
        x = self.conv0(cost.reshape(num_images * num_clusters, 1, height, width))
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"conv{i}")(getattr(self, f"up{i}")(x))
        x = self.proj(x)
        if output_size is not None:
            x = F.interpolate(x, size=output_size, mode="bilinear", align_corners=False)
        return x.view(num_images, num_clusters, *x.shape[-2:])
